//! The gRPC server every service runs: health and reflection next to the service, the caller's
//! trace continued, every call counted and timed, the HTTP/2 limits of one connection, what
//! each call goes through before its handler (see [`crate::calls`]), and on shutdown health
//! `NOT_SERVING`, no new calls, and a bounded drain.

use std::future::Future;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::calls::{
    AdmissionLayer, CatchPanicLayer, DecodeErrorsLayer, ReceiveLayer, decode_errors_layer,
};
use crate::connection::Acceptor;
use crate::metrics::RpcMetricsLayer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::security::{Security, SecurityArgs};
use crate::telemetry::ServerTraceLayer;

/// The router type of [`router`], to which a service adds itself.
pub type GrpcRouter = Router<
    Stack<
        CatchPanicLayer,
        Stack<
            DecodeErrorsLayer,
            Stack<
                AdmissionLayer,
                Stack<ReceiveLayer, Stack<RpcMetricsLayer, Stack<ServerTraceLayer, Identity>>>,
            >,
        >,
    >,
>;

/// How long a connection past [`MAX_CONNECTION_AGE`] has for its calls to finish before it is
/// closed, whatever its calls: a stream whose client stopped reading its answer cannot keep
/// the connection, and the memory of that answer, past it.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The most bytes of headers (HPACK-decoded) one request may carry.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// The health name that reports whether the process serves at all, whatever its dependencies
/// do: what a liveness probe asks (restarting a replica does not bring a database back).
pub const LIVENESS: &str = "liveness";

/// Longest life of a client's connection; clients reconnect.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);

/// The services every server offers next to its own.
const STANDARD_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The largest request message tonic decodes (its default), so the most `MAX_REQUEST_BYTES` may
/// be.
const TONIC_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

/// How many calls a server takes at once, how long each may run, and what one connection may
/// do, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Longest a call may run, until its answer has been sent; past it the call is answered
    /// DEADLINE_EXCEEDED (or, once answered, the connection of its unsent answer closed).
    #[arg(long, global = true, env = "RPC_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,

    /// Longest a request's message may take to arrive after its headers; past it the call is
    /// answered DEADLINE_EXCEEDED without having taken a place among the calls in flight.
    #[arg(long, global = true, env = "REQUEST_RECEIVE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_receive_timeout: Duration,

    /// Largest request message in bytes (at most 4 MiB; every request of ours is far under the
    /// default 64 KiB); a larger one is answered RESOURCE_EXHAUSTED.
    #[arg(long, global = true, env = "MAX_REQUEST_BYTES", default_value = "65536", value_parser = clap::value_parser!(u64).range(1..=TONIC_MAX_MESSAGE_BYTES))]
    pub max_request_bytes: u64,

    /// Most calls (HTTP/2 streams) one connection may have open at once; the client is told
    /// so and waits, or its further streams are refused.
    #[arg(
        long,
        global = true,
        env = "MAX_CONCURRENT_STREAMS",
        default_value = "100"
    )]
    pub max_concurrent_streams: NonZeroU32,

    /// Most client connections open at once (TLS handshakes included); one beyond them is
    /// closed at once.
    #[arg(long, global = true, env = "MAX_CONNECTIONS", default_value = "1000")]
    pub max_connections: NonZeroUsize,

    /// Most streaming calls (health Watch, reflection) open at once on the whole server.
    #[arg(
        long,
        global = true,
        env = "MAX_STREAMING_CALLS",
        default_value = "100"
    )]
    pub max_streaming_calls: NonZeroUsize,

    /// Most streaming calls open at once on one connection.
    #[arg(
        long,
        global = true,
        env = "MAX_STREAMING_CALLS_PER_CONNECTION",
        default_value = "4"
    )]
    pub max_streaming_calls_per_connection: NonZeroUsize,

    /// Most calls open at once on the whole server that follow something for long and answer
    /// each change (reservation-svc's WatchPosition); not timed, as many per connection as
    /// HTTP/2 allows.
    #[arg(long, global = true, env = "MAX_WATCH_CALLS", default_value = "20000")]
    pub max_watch_calls: NonZeroUsize,

    /// How long a connection may stay without a call before it is closed (pings do not
    /// count); 0 never closes one.
    #[arg(long, global = true, env = "IDLE_CONNECTION_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub idle_connection_timeout: Duration,

    /// Most bytes one connection's calls may hold in the server at once: requests being
    /// received and answers HTTP/2 has not taken yet. A request over 1 KiB beyond it (health
    /// checks excepted), or an answer over 16 KiB beyond it, is answered RESOURCE_EXHAUSTED.
    #[arg(
        long,
        global = true,
        env = "MAX_BUFFERED_BYTES_PER_CONNECTION",
        default_value = "4194304"
    )]
    pub max_buffered_bytes_per_connection: usize,

    /// Most bytes the calls of all connections may hold in the server at once, as
    /// MAX_BUFFERED_BYTES_PER_CONNECTION counts them.
    #[arg(
        long,
        global = true,
        env = "MAX_BUFFERED_BYTES",
        default_value = "33554432"
    )]
    pub max_buffered_bytes: usize,

    /// Whether the server offers gRPC reflection (what grpcurl's list and describe use).
    #[arg(long, global = true, env = "REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,

    /// How often an HTTP/2 ping checks that a connection's peer is still there.
    #[arg(long, global = true, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a ping's answer may take before the connection is closed.
    #[arg(long, global = true, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Most calls in flight at once; a call beyond them is answered RESOURCE_EXHAUSTED at once,
    /// not queued. Health checks are always answered.
    #[arg(
        long,
        global = true,
        env = "MAX_CONCURRENT_RPCS",
        default_value = "1024"
    )]
    pub max_concurrent_rpcs: NonZeroUsize,
}

/// A router with tracing, metrics, the limits of `limits`, panic recovery,
/// `grpc.health.v1.Health` and reflection (v1 and v1alpha, since grpcurl 1.8 and ghz ask for
/// v1alpha) already in place. Reflection lists `service_names` (the services this server will
/// add) and the standard ones, and describes the `google.rpc` error details, so grpcurl can
/// show an `ErrorInfo` or a `BadRequest`.
pub fn router(
    service_names: &[&str],
    limits: &ServerArgs,
) -> anyhow::Result<(GrpcRouter, HealthReporter)> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let offered: Vec<&str> = service_names
        .iter()
        .chain(&STANDARD_SERVICES)
        .copied()
        .collect();
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        offered
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(*name))
    };
    let methods = crate::metrics::methods_of(
        &[
            FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        &offered,
    )?;
    let max_request_bytes = usize::try_from(limits.max_request_bytes)?;
    let router = Server::builder()
        // A connection lives for at most this long (then it is asked to go away and its calls
        // finish), so a client certificate that expired or is no longer trusted stops serving
        // within it.
        // It is then closed MAX_CONNECTION_AGE_GRACE later whatever its calls, by the
        // connection itself (`crate::connection::Connection`): tonic's own grace replaces the
        // request to go away with the close instead of following it.
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_concurrent_streams(limits.max_concurrent_streams.get())
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // A request's headers: far more than any of ours, far less than hyper's 16 MiB.
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        // Outermost first: the call's span (the caller's trace continued) covers all that
        // follows; the metrics see every answer, refused and timed-out calls included;
        // a call is received whole before it takes a place, and a timed-out call gives its
        // place back to the limit.
        .layer(crate::telemetry::server_trace_layer())
        .layer(RpcMetricsLayer::new(methods))
        .layer(ReceiveLayer::new(
            limits.request_receive_timeout,
            max_request_bytes,
        ))
        .layer(AdmissionLayer::new(
            limits.max_concurrent_rpcs,
            limits.rpc_timeout,
            limits.max_streaming_calls,
            limits.max_streaming_calls_per_connection,
            limits.max_watch_calls,
        ))
        .layer(decode_errors_layer())
        .layer(CatchPanicLayer)
        .add_service(health_service)
        .add_optional_service(
            limits
                .reflection
                .then(|| reflection().build_v1())
                .transpose()?
                // Its requests stream, past `Receive`: each message is limited here instead.
                .map(|service| service.max_decoding_message_size(max_request_bytes)),
        )
        .add_optional_service(
            limits
                .reflection
                .then(|| reflection().build_v1alpha())
                .transpose()?
                .map(|service| service.max_decoding_message_size(max_request_bytes)),
        );
    Ok((router, health_reporter))
}

/// The health name that is SERVING when the server runs without TLS and caller checks.
pub const INSECURE: &str = "insecure";

/// Serves `router` on the connections of `acceptor` (over TLS unless `security` is insecure) until `shutdown`
/// completes, then reports `NOT_SERVING`, stops accepting, and waits up to `drain_deadline`
/// for calls in flight.
pub async fn serve(
    router: GrpcRouter,
    acceptor: Acceptor,
    security: &Security,
    health: HealthReporter,
    service_names: &[&str],
    shutdown: impl Future<Output = ()>,
    drain_deadline: Duration,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async {
        let _ = stop_rx.await;
    };
    let mut server = match security {
        Security::Secure { tls, .. } => tokio::spawn(
            router.serve_with_incoming_shutdown(crate::tls::accept(acceptor, tls.clone()), stop),
        ),
        Security::Insecure => {
            tokio::spawn(router.serve_with_incoming_shutdown(acceptor.plaintext(), stop))
        }
    };
    metrics::gauge!(crate::metrics::INSECURE_MODE).set(if security.is_insecure() {
        1.0
    } else {
        0.0
    });
    if security.is_insecure() {
        health
            .set_service_status(INSECURE, ServingStatus::Serving)
            .await;
    }
    set_status(&health, service_names, ServingStatus::Serving).await;
    health
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;

    tokio::select! {
        finished = &mut server => {
            // The server stopped without being asked to.
            finished??;
            return Ok(());
        }
        () = shutdown => {}
    }

    set_status(&health, service_names, ServingStatus::NotServing).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain_deadline, &mut server).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(
                ?drain_deadline,
                "drain deadline passed, abandoning calls in flight"
            );
            server.abort();
        }
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Asks the gRPC health service at `addr` about `service` (empty: the whole server): `Ok(())`
/// when it is SERVING.
/// Container health checks run this through a service's `health-check` subcommand. A server
/// with TLS is asked over TLS, presenting the server's own certificate when clients must
/// have one (the probe runs next to the server and does not verify it).
pub async fn check_health(
    addr: std::net::SocketAddr,
    security: &SecurityArgs,
    service: &str,
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus as Reported;
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let timeout = Duration::from_secs(2);
    let channel = match security.server_files() {
        Some(files) if !security.insecure => {
            let config = crate::tls::probe_config(&files)?;
            crate::tls::channel(&format!("https://{host}"), config, timeout)?
        }
        _ => tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy(),
    };
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner()
        .status();
    anyhow::ensure!(status == Reported::Serving, "health is {status:?}");
    Ok(())
}

/// Keeps the health of `service_names` in step with their dependencies: every `interval`,
/// `check` says whether they answer (or what does not), and health flips between SERVING and
/// NOT_SERVING when that changes. Runs until its task is dropped.
pub async fn watch_dependencies<F, Fut>(
    health: HealthReporter,
    service_names: &'static [&'static str],
    interval: Duration,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        ticks.tick().await;
        let checked = check().await;
        if checked.is_ok() == serving {
            continue;
        }
        serving = checked.is_ok();
        let status = match checked {
            Ok(()) => {
                tracing::info!("dependencies reachable again");
                ServingStatus::Serving
            }
            Err(unreachable) => {
                tracing::warn!(%unreachable, "a dependency is unreachable");
                ServingStatus::NotServing
            }
        };
        set_status(&health, service_names, status).await;
    }
}

/// Sets the status of the whole server (the empty name) and of each named service.
pub async fn set_status(health: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in service_names {
        health.set_service_status(*name, status).await;
    }
}
