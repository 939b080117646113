//! Prometheus metrics: the process's recorder, the `/metrics` endpoint a service serves on an
//! address of its own, a tower layer that counts and times every gRPC call by method and
//! status, and the Postgres pool's gauges, sampled at each scrape.
//!
//! Until [`install`] runs (a service binds its endpoint), metrics are recorded nowhere, at
//! almost no cost: a service whose endpoint is disabled records nothing.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::Code;
use tower::{Layer, Service};

use crate::db::PgPool;

/// Calls answered, by `method` (the full gRPC path) and `status` (the gRPC code's name as the
/// specification spells it), and by the same under the grpc-ecosystem's names: `grpc_service`,
/// `grpc_method`, `grpc_code` (the code's name as Go spells it: `OK`, `Unavailable`) and
/// `grpc_type` (`unary`, `client_stream`, `server_stream`, `bidi_stream`). Both sets are labels
/// of the same series, so they never disagree and cost no series more.
pub const RPC_REQUESTS: &str = "ticketing_rpc_requests_total";
/// Time from a call's arrival to its answer, with the labels of [`RPC_REQUESTS`].
pub const RPC_DURATION: &str = "ticketing_rpc_duration_seconds";
/// Calls holding a place among the calls in flight (until their answer has been sent).
pub const RPC_IN_FLIGHT: &str = "ticketing_rpc_in_flight";
/// Calls answered without reaching their handler, or whose answer was dropped, by reason:
/// `limit`, `too_large`, `slow_request`, `slow_reader`, `streams`, `buffers`.
pub const RPC_SHED: &str = "ticketing_rpc_shed_total";
/// Streaming calls (health `Watch`, reflection) open.
pub const STREAMS_OPEN: &str = "ticketing_streams_open";
/// Client connections open (TLS handshakes included).
pub const CONNECTIONS_OPEN: &str = "ticketing_connections_open";
/// Bytes the server holds for its clients: requests being received and answers not yet sent.
pub const BUFFERED_BYTES: &str = "ticketing_buffered_bytes";
/// Client connections closed after `IDLE_CONNECTION_TIMEOUT` without a call.
pub const CONNECTIONS_IDLE_CLOSED: &str = "ticketing_connections_idle_closed_total";
/// Client connections closed at once because `MAX_CONNECTIONS` were open.
pub const CONNECTIONS_REFUSED: &str = "ticketing_connections_refused_total";
/// Connections of the Postgres pool, by `state`: `in_use` or `idle`.
pub const DB_POOL_CONNECTIONS: &str = "ticketing_db_pool_connections";
/// Calls waiting for a connection of the Postgres pool.
pub const DB_POOL_WAITING: &str = "ticketing_db_pool_waiting";
/// The most connections the Postgres pool opens.
pub const DB_POOL_MAX_CONNECTIONS: &str = "ticketing_db_pool_max_connections";
/// 1 when the server runs without TLS and caller checks (`INSECURE`), else 0.
pub const INSECURE_MODE: &str = "ticketing_insecure_mode";
/// TLS handshakes that failed or timed out, by connection.
pub const TLS_HANDSHAKE_FAILURES: &str = "ticketing_tls_handshake_failures_total";
/// Connections closed before their handshake because too many were running (from their
/// address, or in all).
pub const TLS_HANDSHAKES_REFUSED: &str = "ticketing_tls_handshakes_refused_total";
/// Certificate, key and JWKS files read again after a change, by what and result.
pub const RELOADS: &str = "ticketing_reloads_total";
/// The `result`s of [`RELOADS`].
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];
/// Always 1, by `version` (the crate's) and `revision` (the source's commit, from
/// `TICKETING_REVISION` at build time, else `unknown`).
pub const BUILD_INFO: &str = "ticketing_build_info";

/// The version [`BUILD_INFO`] reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The revision [`BUILD_INFO`] reports: the commit the binary was built from, when the build
/// said (`TICKETING_REVISION=$(git rev-parse HEAD) cargo build`, or the image's `REVISION`
/// build argument).
pub const REVISION: &str = match option_env!("TICKETING_REVISION") {
    Some(revision) if !revision.is_empty() => revision,
    _ => "unknown",
};

/// Upper bounds of the buckets of [`RPC_DURATION`] and every histogram named
/// `*_duration_seconds` (Redis commands, Postgres transactions), in seconds: from a cached read
/// to the default RPC timeout.
const RPC_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets of any histogram named `*_batch_size`.
const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a scrape's connection may take to send its request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The `method` of a call to a path the server does not offer: a client making up paths must
/// not make up series.
const UNKNOWN_METHOD: &str = "unknown";

/// Installs the process's Prometheus recorder on first use and returns its handle; later calls
/// return the same handle, so every server of a process (tests start many) shares it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".to_owned()),
                    &RPC_DURATION_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Suffix("_batch_size".to_owned()),
                        &BATCH_SIZE_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|error| error.to_string())?;
            describe();
            register_at_zero();
            for what in reloaded_so_far() {
                register_reloads_at_zero(what);
            }
            metrics::gauge!(BUILD_INFO, "version" => VERSION, "revision" => REVISION).set(1.0);
            // Prometheus's process_* series (CPU, memory, file descriptors, threads, start
            // time), sampled at each scrape.
            metrics_process::Collector::default().describe();
            let upkeep = handle.clone();
            // A thread rather than a task: it must outlive any one runtime.
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = spawned {
                // Each scrape folds the samples too; only an unscraped process grows.
                tracing::warn!(%error, "cannot start the metrics upkeep thread");
            }
            Ok(handle)
        })
        .clone()
        .map_err(|error| anyhow::anyhow!("cannot install the metrics recorder: {error}"))
}

fn describe() {
    metrics::describe_counter!(
        RPC_REQUESTS,
        "gRPC calls answered, by method and status code"
    );
    metrics::describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Time from a gRPC call's arrival to its answer, by method and status code"
    );
    metrics::describe_gauge!(
        RPC_IN_FLIGHT,
        "gRPC calls holding a place among the calls in flight, until their answer is sent"
    );
    metrics::describe_counter!(
        RPC_SHED,
        "gRPC calls answered before their handler (limit, too_large, slow_request, streams) \
         or whose answer was still unsent at its deadline (slow_reader)"
    );
    metrics::describe_gauge!(
        STREAMS_OPEN,
        "Streaming calls open (health Watch, reflection)"
    );
    metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        "Client connections open, TLS handshakes included"
    );
    metrics::describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes held for clients: requests being received and answers not yet sent"
    );
    metrics::describe_counter!(
        CONNECTIONS_IDLE_CLOSED,
        "Client connections closed after IDLE_CONNECTION_TIMEOUT without a call"
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed at once because MAX_CONNECTIONS were open"
    );
    metrics::describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Connections of the Postgres pool, in use or idle"
    );
    metrics::describe_gauge!(
        DB_POOL_WAITING,
        "Calls waiting for a Postgres pool connection"
    );
    metrics::describe_gauge!(
        DB_POOL_MAX_CONNECTIONS,
        "The most connections the Postgres pool opens"
    );
    metrics::describe_gauge!(
        INSECURE_MODE,
        "1 when the server runs INSECURE: plaintext, every caller believed"
    );
    metrics::describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed (no trusted client certificate, not TLS) or timed out"
    );
    metrics::describe_counter!(
        TLS_HANDSHAKES_REFUSED,
        "Connections closed before their handshake, too many running from their address or in all"
    );
    metrics::describe_counter!(
        RELOADS,
        "Certificate, key and JWKS files read again after a change, by what and result"
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1, by the build's version and source revision"
    );
}

/// What this process reloads, each `what` of [`RELOADS`] once. A server's TLS and JWKS are
/// loaded before its metrics endpoint installs the recorder: this keeps them for it.
static RELOADED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Lists the reloads of `what`, both results, at zero: a process lists the reloads of what it
/// reloads, and of nothing else. Now when the recorder is installed, else when it is.
pub(crate) fn register_reloads(what: &'static str) {
    let mut reloaded = RELOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if !reloaded.contains(&what) {
        reloaded.push(what);
    }
    // Under the lock: an `install` that has not read the list yet will, and one that has
    // read it installed the recorder first, so this reaches it.
    register_reloads_at_zero(what);
}

fn reloaded_so_far() -> Vec<&'static str> {
    RELOADED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn register_reloads_at_zero(what: &'static str) {
    for result in RELOAD_RESULTS {
        metrics::counter!(RELOADS, "what" => what, "result" => result).increment(0);
    }
}

/// Reasons of [`RPC_SHED`].
pub const SHED_REASONS: [&str; 6] = [
    "limit",
    "too_large",
    "slow_request",
    "slow_reader",
    "streams",
    "buffers",
];

/// Registers the series of this module that have no per-server labels, at zero, so that a
/// fresh process lists them (an alert's rate is then 0, not absent). Calls are registered by
/// [`RpcMetricsLayer::new`], with the methods they know.
fn register_at_zero() {
    for reason in SHED_REASONS {
        metrics::counter!(RPC_SHED, "reason" => reason).increment(0);
    }
    for counter in [
        CONNECTIONS_IDLE_CLOSED,
        CONNECTIONS_REFUSED,
        TLS_HANDSHAKE_FAILURES,
        TLS_HANDSHAKES_REFUSED,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for gauge in [
        RPC_IN_FLIGHT,
        STREAMS_OPEN,
        CONNECTIONS_OPEN,
        BUFFERED_BYTES,
        DB_POOL_WAITING,
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
    for state in ["in_use", "idle"] {
        metrics::gauge!(DB_POOL_CONNECTIONS, "state" => state).increment(0.0);
    }
}

/// Records the pool's connections in use and idle, and the calls waiting for one.
pub fn record_pool(pool: &PgPool) {
    let status = pool.status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(DB_POOL_WAITING).set(status.waiting as f64);
    metrics::gauge!(DB_POOL_MAX_CONNECTIONS).set(status.max_size as f64);
}

/// Parses a metrics address flag: empty means no endpoint.
pub fn parse_metrics_addr(value: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
    match value.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some),
    }
}

/// A service's `/metrics` endpoint: bound when the service is built, so a taken port fails
/// the start-up, and served by [`MetricsEndpoint::serve`].
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// Installs the recorder (see [`install`]) and binds `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let handle = install()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        Ok(Self { listener, handle })
    }

    /// The address bound, with the port chosen when asked for port 0.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers `GET /metrics` with the Prometheus text format until the task is dropped.
    /// `before_render` runs at each scrape, to sample what is read rather than counted (the
    /// pool's gauges).
    pub async fn serve(self, before_render: impl Fn() + Send + Sync + 'static) {
        let scrape = Arc::new(Scrape {
            handle: self.handle,
            process: metrics_process::Collector::default(),
            before_render: Box::new(before_render),
        });
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: give the process a moment.
                    tracing::warn!(%error, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = scrape.answer(&request);
                    std::future::ready(Ok::<_, Infallible>(response))
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "metrics connection ended with an error");
                }
            });
        }
    }
}

struct Scrape {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    before_render: Box<dyn Fn() + Send + Sync>,
}

impl Scrape {
    fn answer<B>(&self, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
        if request.uri().path() != "/metrics" {
            return plain_text(http::StatusCode::NOT_FOUND, "metrics are at /metrics\n");
        }
        if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            return plain_text(http::StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        self.process.collect();
        (self.before_render)();
        let mut response = http::Response::new(Full::new(Bytes::from(self.handle.render())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

fn plain_text(status: http::StatusCode, text: &'static str) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A method a server offers, with the labels its calls are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcMethod {
    /// The full path, `/package.Service/Method`.
    pub path: &'static str,
    /// `package.Service`.
    pub service: &'static str,
    /// `Method`.
    pub method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub kind: &'static str,
}

impl RpcMethod {
    /// The labels of a call to a path the server does not offer: a client making up paths must
    /// not make up series.
    const UNKNOWN: Self = Self {
        path: UNKNOWN_METHOD,
        service: UNKNOWN_METHOD,
        method: UNKNOWN_METHOD,
        kind: UNKNOWN_METHOD,
    };
}

/// The one `&'static str` of each distinct label value: a process offers a fixed set of
/// methods, so each is kept once however many servers (tests start many) are built.
fn intern(value: String) -> &'static str {
    static INTERNED: OnceLock<std::sync::Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut interned = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match interned.get(value.as_str()) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(value.into_boxed_str());
            interned.insert(kept);
            kept
        }
    }
}

/// Every method of `services` described in `descriptor_sets` (encoded `FileDescriptorSet`s).
pub fn methods_of(descriptor_sets: &[&[u8]], services: &[&str]) -> anyhow::Result<Vec<RpcMethod>> {
    let mut methods = Vec::new();
    for encoded in descriptor_sets {
        let set = prost_types::FileDescriptorSet::decode(*encoded)
            .context("cannot decode a file descriptor set")?;
        for file in &set.file {
            for service in &file.service {
                let name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                if services.contains(&name.as_str()) {
                    let service_name = intern(name);
                    methods.extend(service.method.iter().map(|method| RpcMethod {
                        path: intern(format!("/{service_name}/{}", method.name())),
                        service: service_name,
                        method: intern(method.name().to_owned()),
                        kind: match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        },
                    }));
                }
            }
        }
    }
    Ok(methods)
}

/// The codes whose series every method has from the start, at zero: those an alert or a ratio
/// watches (the server's failures, overload, refusals of callers), so that a rate over them is
/// 0 rather than absent before the first one.
pub const CODES_AT_ZERO: [Code; 10] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Internal,
    Code::Unavailable,
    Code::Unauthenticated,
];

/// Registers, at zero, the calls of every one of `methods` with each of [`CODES_AT_ZERO`], and
/// their durations with `OK`.
fn register_rpc_series(methods: &[RpcMethod]) {
    for method in methods {
        for code in CODES_AT_ZERO {
            metrics::counter!(RPC_REQUESTS, &rpc_labels(method, code)).increment(0);
        }
        // Registered, so that it renders with empty buckets.
        let _ = metrics::histogram!(RPC_DURATION, &rpc_labels(method, Code::Ok));
    }
}

fn rpc_labels(method: &RpcMethod, code: Code) -> [(&'static str, &'static str); 6] {
    [
        ("method", method.path),
        ("status", code_name(code)),
        ("grpc_service", method.service),
        ("grpc_method", method.method),
        ("grpc_code", go_code_name(code)),
        ("grpc_type", method.kind),
    ]
}

/// Counts and times every call by method and gRPC status, including the calls that layers
/// inside it answer themselves (refused at the concurrency limit, timed out, panicked). A call
/// whose client goes away before the answer counts as `CANCELLED`.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    methods: Arc<HashMap<&'static str, RpcMethod>>,
}

impl RpcMetricsLayer {
    /// Labels a call with its method when it is one of `methods` (see [`methods_of`]), and
    /// `unknown` otherwise; registers every method's series at zero (see [`CODES_AT_ZERO`]).
    pub fn new(methods: impl IntoIterator<Item = RpcMethod>) -> Self {
        let methods: Vec<RpcMethod> = methods.into_iter().collect();
        register_rpc_series(&methods);
        Self {
            methods: Arc::new(methods.into_iter().map(|m| (m.path, m)).collect()),
        }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    methods: Arc<HashMap<&'static str, RpcMethod>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self
            .methods
            .get(request.uri().path())
            .copied()
            .unwrap_or(RpcMethod::UNKNOWN);
        let mut call = CallRecord {
            method,
            started: Instant::now(),
            code: Code::Cancelled,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            // Through a method, so that the future owns the whole record and its drop.
            call.answered(match &answered {
                Ok(response) => code_of(response),
                Err(_) => Code::Unknown,
            });
            answered
        })
    }
}

/// One call, recorded when dropped: with the code of its answer, or as cancelled when the
/// call was dropped before it had one.
struct CallRecord {
    method: RpcMethod,
    started: Instant,
    code: Code,
}

impl CallRecord {
    fn answered(&mut self, code: Code) {
        self.code = code;
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let labels = rpc_labels(&self.method, self.code);
        metrics::histogram!(RPC_DURATION, &labels).record(self.started.elapsed().as_secs_f64());
        metrics::counter!(RPC_REQUESTS, &labels).increment(1);
    }
}

/// The gRPC code of an answer. A handler's error is a "trailers-only" answer whose headers
/// carry `grpc-status`; a success carries it in the trailers, after the body, so a plain
/// HTTP 200 without it is a success.
fn code_of<B>(response: &http::Response<B>) -> Code {
    match response.headers().get("grpc-status") {
        Some(value) => Code::from_bytes(value.as_bytes()),
        None if response.status() == http::StatusCode::OK => Code::Ok,
        None => Code::Unknown,
    }
}

/// The code's name as the gRPC specification spells it (and `ticketing_rpc_requests_total`
/// counts it).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code's name as grpc-go spells it (`Code.String()`), the `grpc_code` the grpc-ecosystem's
/// dashboards and alerts expect.
pub fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_specification_s() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }

    #[test]
    fn an_error_answer_is_read_from_its_headers_and_a_plain_200_is_ok() {
        let refused: http::Response<()> = tonic::Status::aborted("locked").into_http();
        assert_eq!(code_of(&refused), Code::Aborted);
        assert_eq!(code_of(&http::Response::new(())), Code::Ok);
    }

    #[test]
    fn the_methods_of_the_offered_services_are_known_and_no_others() {
        let methods = methods_of(
            &[crate::proto::FILE_DESCRIPTOR_SET],
            &["ticketing.wallet.v1.WalletService"],
        )
        .expect("descriptor sets decode");
        assert!(methods.contains(&RpcMethod {
            path: "/ticketing.wallet.v1.WalletService/Charge",
            service: "ticketing.wallet.v1.WalletService",
            method: "Charge",
            kind: "unary",
        }));
        assert!(
            methods
                .iter()
                .all(|m| m.path.starts_with("/ticketing.wallet.v1.WalletService/"))
        );
        let health = methods_of(
            &[tonic_health::pb::FILE_DESCRIPTOR_SET],
            &["grpc.health.v1.Health"],
        )
        .expect("descriptor sets decode");
        let watch = health.iter().find(|m| m.method == "Watch").expect("Watch");
        assert_eq!(watch.kind, "server_stream");
    }

    #[test]
    fn an_empty_metrics_address_means_no_endpoint() {
        assert_eq!(parse_metrics_addr(""), Ok(None));
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9091"),
            Ok(Some(SocketAddr::from(([0, 0, 0, 0], 9091))))
        );
        assert!(parse_metrics_addr("nowhere").is_err());
    }
}
