//! The gRPC server every service runs: health and reflection next to the service, a panic in a
//! handler answered as `INTERNAL` instead of tearing down the connection, the caller's trace
//! continued, every call counted and timed, a limit on calls in flight and on each call's
//! time, and on shutdown health `NOT_SERVING`, no new calls, and a bounded drain.

use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};

use crate::metrics::RpcMetricsLayer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::security::{Security, SecurityArgs};

/// The router type of [`router`], to which a service adds itself.
pub type GrpcRouter = Router<
    Stack<
        CatchPanicLayer,
        Stack<RpcTimeoutLayer, Stack<CallLimitLayer, Stack<RpcMetricsLayer, Identity>>>,
    >,
>;

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

/// Calls under this path are never refused at the concurrency limit, so that probes still
/// see a busy server as alive.
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// How many calls a server takes at once and how long each may run, as flags and environment
/// variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Longest a call may run; past it the call is answered DEADLINE_EXCEEDED.
    #[arg(long, global = true, env = "RPC_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,

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
    let router = Server::builder()
        // A connection lives for at most this long (then it is asked to go away and its calls
        // finish), so a client certificate that expired or is no longer trusted stops serving
        // within it.
        .max_connection_age(MAX_CONNECTION_AGE)
        .trace_fn(crate::telemetry::grpc_request_span)
        // Outermost first: the metrics see every answer, refused and timed-out calls included,
        // and a timed-out call gives its place back to the limit.
        .layer(RpcMetricsLayer::new(methods))
        .layer(CallLimitLayer::new(limits.max_concurrent_rpcs))
        .layer(RpcTimeoutLayer::new(limits.rpc_timeout))
        .layer(CatchPanicLayer)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((router, health_reporter))
}

/// The health name that is SERVING when the server runs without TLS and caller checks.
pub const INSECURE: &str = "insecure";

/// Serves `router` on `listener` (over TLS unless `security` is insecure) until `shutdown`
/// completes, then reports `NOT_SERVING`, stops accepting, and waits up to `drain_deadline`
/// for calls in flight.
pub async fn serve(
    router: GrpcRouter,
    listener: TcpListener,
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
            router.serve_with_incoming_shutdown(crate::tls::accept(listener, tls.clone()), stop),
        ),
        Security::Insecure => {
            // A failed accept (out of file descriptors, say) is retried after a pause.
            let incoming = futures::StreamExt::filter_map(
                TcpListenerStream::new(listener),
                |accepted| async {
                    match accepted {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            Some(Ok::<_, std::io::Error>(stream))
                        }
                        Err(error) => {
                            tracing::debug!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            None
                        }
                    }
                },
            );
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Answers a call beyond the limit of calls in flight with `RESOURCE_EXHAUSTED` at once,
/// rather than queueing it behind calls that may be slow: a client can retry elsewhere, and a
/// server under more load than it can take keeps answering the calls it took. Health checks
/// pass whatever the load. The limit is the server's, shared by all its connections; a call
/// holds its place until its answer's headers are sent.
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    places: Arc<Semaphore>,
}

impl CallLimitLayer {
    /// A limit of `max_in_flight` calls at once, for every connection of the server.
    pub fn new(max_in_flight: NonZeroUsize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(
                max_in_flight.get().min(Semaphore::MAX_PERMITS),
            )),
        }
    }
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit {
            inner,
            places: self.places.clone(),
        }
    }
}

/// See [`CallLimitLayer`].
#[derive(Debug, Clone)]
pub struct CallLimit<S> {
    inner: S,
    places: Arc<Semaphore>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            tracing::debug!(method = request.uri().path(), "call refused at the limit");
            let refused = tonic::Status::resource_exhausted(
                "the server is at its limit of calls in flight, retry later",
            );
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            drop(place);
            answered
        })
    }
}

/// Answers a call still running after `timeout` with `DEADLINE_EXCEEDED` and drops it (tonic's
/// own server timeout answers `CANCELLED`). The time runs until the answer's headers: the whole
/// of a unary call. The handlers run their database work in tasks of their own, so the work a
/// dropped call started ends cleanly, as when a client goes away.
#[derive(Debug, Clone, Copy)]
pub struct RpcTimeoutLayer {
    timeout: Duration,
}

impl RpcTimeoutLayer {
    /// Calls may run for `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for RpcTimeoutLayer {
    type Service = RpcTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`RpcTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct RpcTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcTimeout<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let timeout = self.timeout;
        let answer = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(answered) => answered,
                Err(_elapsed) => {
                    tracing::warn!(method, ?timeout, "call timed out");
                    let timed_out = tonic::Status::deadline_exceeded(
                        "the call took longer than the server allows",
                    );
                    Ok(timed_out.into_http())
                }
            }
        })
    }
}

/// Turns a panic in a handler into an `INTERNAL` answer for that call alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// See [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CatchPanic<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let future = match call {
            Ok(future) => future,
            Err(panic) => {
                return Box::pin(std::future::ready(Ok(panic_response(&method, &*panic))));
            }
        };
        Box::pin(
            AssertUnwindSafe(future)
                .catch_unwind()
                .map(move |outcome| match outcome {
                    Ok(result) => result,
                    Err(panic) => Ok(panic_response(&method, &*panic)),
                }),
        )
    }
}

fn panic_response<B: Default>(
    method: &str,
    panic: &(dyn std::any::Any + Send),
) -> http::Response<B> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(method, panic = %message, "handler panicked");
    tonic::Status::internal("internal error").into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Panics;

    impl Service<http::Request<()>> for Panics {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async { panic!("boom") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let mut service = CatchPanicLayer.layer(Panics);
        let response = service
            .call(http::Request::new(()))
            .await
            .unwrap_or_else(|never| match never {});
        let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status set");
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    /// Answers once `gate` gives it a permit.
    #[derive(Clone)]
    struct Waits {
        gate: Arc<Semaphore>,
    }

    impl Service<http::Request<()>> for Waits {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.gate.clone();
            Box::pin(async move {
                let _passed = gate.acquire().await;
                Ok(http::Response::new(tonic::body::Body::default()))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.uri_mut() = path.parse().expect("a path");
        request
    }

    fn code(response: &http::Response<tonic::body::Body>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code())
    }

    #[tokio::test]
    async fn a_call_beyond_the_limit_is_refused_at_once_but_a_health_check_passes() {
        let gate = Arc::new(Semaphore::new(0));
        let limit = CallLimitLayer::new(NonZeroUsize::MIN);
        let mut service = limit.layer(Waits { gate: gate.clone() });
        let admitted = tokio::spawn(service.call(request("/pkg.Service/Slow")));

        let refused = service
            .call(request("/pkg.Service/Slow"))
            .now_or_never()
            .expect("answered without waiting")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&refused), tonic::Code::ResourceExhausted);
        let health = tokio::spawn(service.call(request("/grpc.health.v1.Health/Check")));

        gate.add_permits(2);
        let answered = admitted
            .await
            .expect("task")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&answered), tonic::Code::Ok);
        let checked = health
            .await
            .expect("task")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&checked), tonic::Code::Ok);
    }

    #[tokio::test]
    async fn a_call_past_the_timeout_answers_deadline_exceeded() {
        let closed = Arc::new(Semaphore::new(0));
        let mut service =
            RpcTimeoutLayer::new(Duration::from_millis(20)).layer(Waits { gate: closed });
        let response = service
            .call(request("/pkg.Service/Slow"))
            .await
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&response), tonic::Code::DeadlineExceeded);
    }
}
