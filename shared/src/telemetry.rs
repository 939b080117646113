//! Logs and traces: `tracing` with `RUST_LOG` filtering, and an OpenTelemetry OTLP exporter
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context travels in gRPC metadata, so
//! one call is one trace across services.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_opentelemetry_instrumentation_sdk::{self as otel_sdk, http as otel_http};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter; [`TelemetryGuard::shutdown`] flushes and stops it at the end of
/// `main`.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

/// How long the guard's drop, on a path that did not call [`TelemetryGuard::shutdown`] (an
/// error at start-up), waits for the exporter.
const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

impl TelemetryGuard {
    /// Exports the spans still queued and stops the exporter, waiting at most `within`. The
    /// SDK's shutdown blocks, so it runs on a thread of its own while this task only waits
    /// for its answer: the runtime keeps running (the export itself needs it), and a
    /// collector that never answers holds the process no longer than `within`; what it has
    /// not taken by then is dropped.
    pub async fn shutdown(mut self, within: Duration) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if let Err(error) = std::thread::Builder::new()
            .name("trace-shutdown".to_owned())
            .spawn(move || {
                let _ = done_tx.send(provider.shutdown_with_timeout(within));
            })
        {
            tracing::warn!(%error, "cannot start the trace exporter's shutdown");
            return;
        }
        match tokio::time::timeout(within, done_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "trace exporter shutdown failed"),
            Ok(Err(_)) => tracing::warn!("trace exporter shutdown ended without an answer"),
            Err(_) => tracing::warn!(
                ?within,
                "trace exporter did not finish in time, unsent spans are dropped"
            ),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Only when `shutdown` was not called: a short, bounded wait, on a thread of its own.
        if let Some(provider) = self.provider.take() {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("trace-shutdown".to_owned())
                .spawn(move || {
                    let _ = done_tx.send(provider.shutdown_with_timeout(DROP_FLUSH_TIMEOUT));
                });
            if spawned.is_ok() && done_rx.recv_timeout(DROP_FLUSH_TIMEOUT).is_err() {
                eprintln!("trace exporter did not finish in time, unsent spans are dropped");
            }
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); spans go to the OTLP
/// collector at `OTEL_EXPORTER_OTLP_ENDPOINT` only when that variable is set, as the service
/// `service_name` (unless `OTEL_SERVICE_NAME`, or a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, names it otherwise) of version `version`.
pub fn init(service_name: &'static str, version: &'static str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a log file cost time and read badly.
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            let detected = Resource::builder_empty()
                .with_detectors(&[
                    Box::new(TelemetryResourceDetector),
                    Box::new(EnvResourceDetector::new()),
                ])
                .build();
            let resource = resource(
                service_name,
                version,
                &detected,
                std::env::var("OTEL_SERVICE_NAME").ok(),
            );
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        _ => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .boxed()
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard { provider })
}

/// The traces' resource: `service.name` is `default_name` unless the environment names the
/// service (`OTEL_SERVICE_NAME`, the `service_name_env` given, wins over a `service.name` among
/// the `detected` attributes of `OTEL_RESOURCE_ATTRIBUTES`), `service.version` is the build's
/// `version`, and every detected attribute is kept.
fn resource(
    default_name: &'static str,
    version: &'static str,
    detected: &Resource,
    service_name_env: Option<String>,
) -> Resource {
    let builder = Resource::builder_empty()
        .with_service_name(default_name)
        .with_attribute(KeyValue::new(SERVICE_VERSION, version))
        .with_attributes(
            detected
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        );
    match service_name_env {
        Some(name) if !name.trim().is_empty() => builder.with_service_name(name),
        _ => builder,
    }
    .build()
}

/// The resource attribute of the build's version.
const SERVICE_VERSION: &str = "service.version";

/// The layer that gives every incoming call its SERVER span, as the OpenTelemetry RPC
/// conventions name it: `{rpc.service}/{rpc.method}`, with `rpc.system`, `rpc.service`,
/// `rpc.method`, `rpc.grpc.status_code`, `server.address` and `server.port`, and an error
/// status for the codes that are a server's fault (`UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`); any other answer leaves the status
/// unset, as the conventions ask of a server (the instrumentation crate's own layer marks them
/// `OK`, which a later record cannot undo). The span continues the caller's trace when its
/// metadata carries a `traceparent`. Health checks and reflection get none.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

/// The [`ServerTraceLayer`] every server runs.
pub fn server_trace_layer() -> ServerTraceLayer {
    ServerTraceLayer
}

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace(inner)
    }
}

/// The service of [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S>(S);

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ServerTraceFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !is_traced(request.uri().path()) {
            return ServerTraceFuture {
                inner: self.0.call(request),
                span: tracing::Span::none(),
                remote_context: None,
            };
        }
        // An HTTP/2 request has no `Host` header but an `:authority`, where the span's
        // `server.address` and `server.port` are read from.
        if !request.headers().contains_key(http::header::HOST)
            && let Some(host) = request
                .uri()
                .authority()
                .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        let span = otel_http::grpc_server::make_span_from_request(&request);
        // The caller's context, kept to be attached while the call runs when the span cannot
        // hold it (no OpenTelemetry layer, say), so outgoing calls still carry its trace.
        let remote_context =
            otel_sdk::set_parent_or_fallback(&span, otel_http::extract_context(request.headers()));
        let inner = {
            let _attached = remote_context.clone().map(opentelemetry::Context::attach);
            let _entered = span.enter();
            self.0.call(request)
        };
        ServerTraceFuture {
            inner,
            span,
            remote_context,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a call of [`ServerTrace`], which records its outcome on the call's span.
    pub struct ServerTraceFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        remote_context: Option<opentelemetry::Context>,
    }
}

impl<F, ResponseBody, E> std::future::Future for ServerTraceFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResponseBody>, E>>,
    E: std::fmt::Display,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let _attached = this
            .remote_context
            .as_ref()
            .map(|context| context.clone().attach());
        let _entered = this.span.enter();
        let answer = std::task::ready!(this.inner.poll(cx));
        record_server_outcome(this.span, &answer);
        std::task::Poll::Ready(answer)
    }
}

/// Records the answer of a call on its SERVER span: its gRPC code, and an error status only
/// for a code that is the server's fault. A success is left unset: the conventions keep `OK`
/// for an operator's or an application's explicit word, not for every answered call.
fn record_server_outcome<B, E: std::fmt::Display>(
    span: &tracing::Span,
    answer: &Result<http::Response<B>, E>,
) {
    match answer {
        Ok(response) => {
            let code = grpc_code(response);
            span.record("rpc.grpc.status_code", code);
            if otel_http::grpc::status_is_error(code, true) {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(error) => {
            span.record("rpc.grpc.status_code", tonic::Code::Unknown as u16);
            span.record("otel.status_code", "ERROR");
            span.record("exception.message", error.to_string());
        }
    }
}

/// The gRPC code of `response` as far as its headers tell: `grpc-status` when the answer has
/// no body (an error, mostly), else the code gRPC gives its HTTP status; a 200 without it is
/// `OK` (the code of a full answer comes in its trailers, after the span's end).
fn grpc_code<B>(response: &http::Response<B>) -> u16 {
    use http::StatusCode;
    use tonic::Code;

    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u16>().ok())
    {
        return code;
    }
    let code = match response.status() {
        StatusCode::OK => Code::Ok,
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    code as u16
}

/// Whether a call to `path` gets a span: not health checks (every probe, every few seconds)
/// nor reflection (grpcurl's `list` and `describe`), which would fill a trace store with noise.
fn is_traced(path: &str) -> bool {
    !(path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection."))
}

/// A CLIENT span of one outgoing unary gRPC call to `path` (`/package.Service/Method`) at
/// `server`, named and attributed as the OpenTelemetry RPC conventions ask. Enter it (or
/// instrument the call with it) while the call's metadata is written, so the server's span
/// becomes its child, and end it with [`record_client_outcome`].
pub fn grpc_client_span(path: &str, server: &http::Uri) -> tracing::Span {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let port = server.port_u16().or(match server.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    tracing::info_span!(
        "grpc client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = server.host().unwrap_or_default(),
        server.port = port,
    )
}

/// Records the answer of the call of `span` (from [`grpc_client_span`]): its gRPC code, and
/// for a client any code but `OK` is an error (the conventions' rule for CLIENT spans).
pub fn record_client_outcome(span: &tracing::Span, outcome: Result<(), &tonic::Status>) {
    match outcome {
        Ok(()) => {
            span.record("rpc.grpc.status_code", i64::from(tonic::Code::Ok as i32));
        }
        Err(status) => {
            span.record("rpc.grpc.status_code", i64::from(status.code() as i32));
            span.record("otel.status_code", "ERROR");
            span.record(
                "otel.status_description",
                format!("{:?}: {}", status.code(), status.message()),
            );
        }
    }
}

/// A CLIENT span of one command sent to Redis: `script`, a Lua script of the seat lock
/// (`acquire`, `release`, `mark`, `clear`, ...) sent with `EVALSHA`. Keys and tokens are not
/// recorded. Disabled (and so neither recorded nor exported) outside a traced call: a command
/// of a background check starts no trace of its own.
pub fn redis_span(script: &'static str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "redis",
        otel.name = script,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        db.query.summary = script,
    )
}

/// A CLIENT span of one step of a store in Postgres (a transaction, or a single statement),
/// named by the step, with the database and server of [`postgres_target`]. No statement's
/// values are recorded.
pub fn postgres_span(step: &'static str) -> tracing::Span {
    let target = postgres_target();
    tracing::info_span!(
        "postgres",
        otel.name = step,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = step,
        db.namespace = target.namespace.as_deref(),
        server.address = target.address.as_deref(),
        server.port = target.port,
    )
}

/// The database and server a process's Postgres spans name, as the conventions' `db.namespace`,
/// `server.address` and `server.port`. Only these are kept of a connection URL: never its user
/// or password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresTarget {
    /// The database's name. The schema, which the conventions would add, is not in the URL
    /// (the services use the default one).
    pub namespace: Option<String>,
    /// The first host the URL names (libpq tries them in order): a name, an address, or the
    /// directory of a Unix socket.
    pub address: Option<String>,
    /// That host's port, 5432 unless the URL says otherwise; none for a Unix socket.
    pub port: Option<u16>,
}

/// Postgres's port when a connection URL names none.
const POSTGRES_DEFAULT_PORT: u16 = 5432;

impl PostgresTarget {
    /// The target of `database_url`, in either of libpq's forms (a `postgres://` URL or
    /// `key=value` words), read by the parser that opens the pool's connections. A URL that
    /// does not parse names nothing: the pool refuses it anyway.
    pub fn of_url(database_url: &str) -> Self {
        use tokio_postgres::config::Host;

        let Ok(config) = database_url.parse::<tokio_postgres::Config>() else {
            return Self::default();
        };
        let namespace = config.get_dbname().map(str::to_owned);
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(POSTGRES_DEFAULT_PORT);
        let (address, port) = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => (Some(host.clone()), Some(port)),
            Some(Host::Unix(directory)) => (Some(directory.display().to_string()), None),
            None => match config.get_hostaddrs().first() {
                Some(address) => (Some(address.to_string()), Some(port)),
                None => (None, None),
            },
        };
        Self {
            namespace,
            address,
            port,
        }
    }
}

static POSTGRES_TARGET: OnceLock<PostgresTarget> = OnceLock::new();

/// Names the database of `database_url` in this process's Postgres spans from now on. A
/// process has one database: the first call sets it, later ones change nothing.
pub fn set_postgres_target(database_url: &str) {
    let _ = POSTGRES_TARGET.set(PostgresTarget::of_url(database_url));
}

/// The database and server this process's Postgres spans name: nothing until
/// [`set_postgres_target`].
pub fn postgres_target() -> &'static PostgresTarget {
    static UNSET: PostgresTarget = PostgresTarget {
        namespace: None,
        address: None,
        port: None,
    };
    POSTGRES_TARGET.get().unwrap_or(&UNSET)
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_otlp::WithExportConfig as _;

    use super::*;

    fn attribute(resource: &Resource, key: &'static str) -> Option<String> {
        resource
            .get(&opentelemetry::Key::from_static_str(key))
            .map(|value| value.to_string())
    }

    fn detected(attributes: &[(&'static str, &'static str)]) -> Resource {
        Resource::builder_empty()
            .with_attributes(
                attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(*key, *value)),
            )
            .build()
    }

    #[test]
    fn the_service_is_named_by_the_environment_before_its_default() {
        let none = resource("wallet-svc", "1.2.3", &detected(&[]), None);
        assert_eq!(
            attribute(&none, "service.name").as_deref(),
            Some("wallet-svc")
        );
        assert_eq!(
            attribute(&none, "service.version").as_deref(),
            Some("1.2.3")
        );

        let attributes = detected(&[("service.name", "wallet-eu"), ("k8s.pod.name", "wallet-0")]);
        let from_attributes = resource("wallet-svc", "1.2.3", &attributes, None);
        assert_eq!(
            attribute(&from_attributes, "service.name").as_deref(),
            Some("wallet-eu")
        );
        assert_eq!(
            attribute(&from_attributes, "k8s.pod.name").as_deref(),
            Some("wallet-0")
        );

        let named = resource(
            "wallet-svc",
            "1.2.3",
            &attributes,
            Some("wallet-canary".to_owned()),
        );
        assert_eq!(
            attribute(&named, "service.name").as_deref(),
            Some("wallet-canary")
        );
        assert_eq!(
            attribute(&named, "service.version").as_deref(),
            Some("1.2.3")
        );
        let blank = resource("wallet-svc", "1.2.3", &detected(&[]), Some(" ".to_owned()));
        assert_eq!(
            attribute(&blank, "service.name").as_deref(),
            Some("wallet-svc")
        );
    }

    #[test]
    fn a_postgres_target_is_the_database_host_and_port_and_never_the_credentials() {
        let target = PostgresTarget::of_url(
            "postgres://ticketing:s3cret@db.internal:5433/wallet?sslmode=require",
        );
        assert_eq!(
            target,
            PostgresTarget {
                namespace: Some("wallet".to_owned()),
                address: Some("db.internal".to_owned()),
                port: Some(5433),
            }
        );
        let shown = format!("{target:?}");
        assert!(
            !shown.contains("ticketing") && !shown.contains("s3cret"),
            "{shown}"
        );

        let default_port = PostgresTarget::of_url("postgresql://db/reservation");
        assert_eq!(default_port.address.as_deref(), Some("db"));
        assert_eq!(default_port.port, Some(5432));

        let first_host = PostgresTarget::of_url("postgres://u@[::1]:6432,db-2:6433/wallet");
        assert_eq!(first_host.address.as_deref(), Some("::1"));
        assert_eq!(first_host.port, Some(6432));

        let words = PostgresTarget::of_url(
            "host=/var/run/postgresql port=5433 dbname=wallet user=ticketing password=s3cret",
        );
        assert_eq!(
            words,
            PostgresTarget {
                namespace: Some("wallet".to_owned()),
                address: Some("/var/run/postgresql".to_owned()),
                port: None,
            }
        );

        let no_database = PostgresTarget::of_url("postgres://ticketing:s3cret@db");
        assert_eq!(no_database.namespace, None);
        assert_eq!(
            PostgresTarget::of_url("not a url"),
            PostgresTarget::default()
        );
    }

    #[tokio::test]
    async fn a_collector_that_never_answers_holds_the_shutdown_no_longer_than_its_bound() {
        // Accepts connections and never reads or answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{addr}"))
            .build()
            .expect("exporter");
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        {
            use opentelemetry::trace::{Tracer as _, TracerProvider as _};
            let tracer = provider.tracer("test");
            for _ in 0..10 {
                tracer.in_span("unsent", |_| {});
            }
        }
        let guard = TelemetryGuard {
            provider: Some(provider),
        };
        let bound = Duration::from_millis(500);
        let started = std::time::Instant::now();
        guard.shutdown(bound).await;
        // The bound, and some room for a slow machine; the SDK's own wait is 5 s and more.
        assert!(
            started.elapsed() < bound + Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
