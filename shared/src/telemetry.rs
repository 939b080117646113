//! Logs and traces: `tracing` with `RUST_LOG` filtering, and an OpenTelemetry OTLP exporter
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context travels in gRPC metadata, so
//! one call is one trace across services.

use std::io::IsTerminal;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic_tracing_opentelemetry::middleware::server::{OtelGrpcLayer, OtelGrpcService};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and stops the trace exporter when dropped, at the end of `main`.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); spans go to the OTLP
/// collector at `OTEL_EXPORTER_OTLP_ENDPOINT` only when that variable is set.
pub fn init(service_name: &'static str) -> anyhow::Result<TelemetryGuard> {
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
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build();
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

/// The layer that gives every incoming call its SERVER span, as the OpenTelemetry RPC
/// conventions name it: `{rpc.service}/{rpc.method}`, with `rpc.system`, `rpc.service`,
/// `rpc.method`, `rpc.grpc.status_code`, `server.address` and `server.port`, and an error
/// status for the codes that are a server's fault (`UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`). The span continues the caller's
/// trace when its metadata carries a `traceparent`. Health checks and reflection get none.
#[derive(Debug, Clone)]
pub struct ServerTraceLayer(OtelGrpcLayer);

/// The [`ServerTraceLayer`] every server runs.
pub fn server_trace_layer() -> ServerTraceLayer {
    ServerTraceLayer(OtelGrpcLayer::default().filter(is_traced))
}

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = HostFromAuthority<OtelGrpcService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        HostFromAuthority(self.0.layer(inner))
    }
}

/// Gives a request without a `Host` header (every HTTP/2 request: it has `:authority`) one
/// of its URI's authority, where the span layer reads `server.address` and `server.port`.
#[derive(Debug, Clone)]
pub struct HostFromAuthority<S>(S);

impl<S, B> tower::Service<http::Request<B>> for HostFromAuthority<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(http::header::HOST)
            && let Some(host) = request
                .uri()
                .authority()
                .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        self.0.call(request)
    }
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
