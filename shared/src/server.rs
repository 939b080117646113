//! The gRPC server every service runs: health and reflection next to the service, a panic in a
//! handler answered as `INTERNAL` instead of tearing down the connection, the caller's trace
//! continued, every call counted and timed, and on shutdown health `NOT_SERVING`, no new calls,
//! and a bounded drain.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};

use crate::metrics::RpcMetricsLayer;
use crate::proto::FILE_DESCRIPTOR_SET;

/// The router type of [`router`], to which a service adds itself.
pub type GrpcRouter = Router<Stack<CatchPanicLayer, Stack<RpcMetricsLayer, Identity>>>;

/// The services every server offers next to its own.
const STANDARD_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A router with tracing, metrics, panic recovery, `grpc.health.v1.Health` and reflection (v1
/// and v1alpha, since grpcurl 1.8 and ghz ask for v1alpha) already in place. Reflection lists
/// `service_names` (the services this server will add) and the standard ones, and describes
/// the `google.rpc` error details, so grpcurl can show an `ErrorInfo` or a `BadRequest`.
pub fn router(service_names: &[&str]) -> anyhow::Result<(GrpcRouter, HealthReporter)> {
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
        .trace_fn(crate::telemetry::grpc_request_span)
        // Outermost first: the metrics see every answer, a panicked call's included.
        .layer(RpcMetricsLayer::new(methods))
        .layer(CatchPanicLayer)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((router, health_reporter))
}

/// Serves `router` on `listener` until `shutdown` completes, then reports `NOT_SERVING`, stops
/// accepting, and waits up to `drain_deadline` for calls in flight.
pub async fn serve(
    router: GrpcRouter,
    listener: TcpListener,
    health: HealthReporter,
    service_names: &[&str],
    shutdown: impl Future<Output = ()>,
    drain_deadline: Duration,
) -> anyhow::Result<()> {
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));
    set_status(&health, service_names, ServingStatus::Serving).await;

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

/// Asks the gRPC health service at `addr` about the whole server: `Ok(())` when it is SERVING.
/// Container health checks run this through a service's `health-check` subcommand.
pub async fn check_health(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus as Reported;
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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
}
