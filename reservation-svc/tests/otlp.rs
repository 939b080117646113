//! What the services export over OTLP, as a collector receives it: an OTLP/gRPC trace receiver
//! in this test collects the spans of a hold, a payment and a cancel, and of a payment while
//! the wallet is stopped. reservation-svc runs from its binary (its own telemetry set-up, its
//! exporter, its flush on SIGTERM); wallet-svc runs in this process, whose spans this test
//! exports to the same receiver over OTLP.
//!
//! A test binary of its own, since it installs the process-wide tracing subscriber.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use shared::proto::reservation::v1 as pb;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use helpers::{ReplicaProcess, TestWallet, spawn_app_with};

/// A span as received, with the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// The receiver: every span of every export request, in order.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| text(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An attribute's value as text (integers in decimal).
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(text)),
            ..
        } => Some(text.clone()),
        AnyValue {
            value: Some(any_value::Value::IntValue(number)),
            ..
        } => Some(number.to_string()),
        _ => None,
    }
}

fn attribute(received: &Received, key: &str) -> Option<String> {
    text(&received.span.attributes, key)
}

/// The span's status code (unset when it came without a status).
fn status(received: &Received) -> StatusCode {
    received
        .span
        .status
        .as_ref()
        .and_then(|status| StatusCode::try_from(status.code).ok())
        .unwrap_or(StatusCode::Unset)
}

fn is_error(received: &Received) -> bool {
    status(received) == StatusCode::Error
}

/// The one span named `name` of `kind` among `spans`.
fn one<'a>(spans: &'a [Received], name: &str, kind: SpanKind) -> &'a Received {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|received| received.span.name == name && received.span.kind == kind as i32)
        .collect();
    assert_eq!(found.len(), 1, "one {name} ({kind:?}) among {spans:#?}");
    found[0]
}

/// Checks `span` is a span of the RPC conventions for `service`/`method`.
fn assert_rpc(received: &Received, service: &str, method: &str, code: &str) {
    assert_eq!(received.span.name, format!("{service}/{method}"));
    assert_eq!(attribute(received, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(received, "rpc.service").as_deref(), Some(service));
    assert_eq!(attribute(received, "rpc.method").as_deref(), Some(method));
    assert_eq!(
        attribute(received, "rpc.grpc.status_code").as_deref(),
        Some(code),
        "{received:#?}"
    );
    assert_eq!(
        attribute(received, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        attribute(received, "server.port").is_some(),
        "{received:#?}"
    );
}

/// Checks `received` is a Postgres span of the database conventions, of the database named
/// `database` at the URL `database_url`.
fn assert_postgres(received: &Received, database: &str, database_url: &str) {
    let server = shared::telemetry::PostgresTarget::of_url(database_url);
    assert_eq!(
        attribute(received, "db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(
        attribute(received, "db.namespace").as_deref(),
        Some(database),
        "{received:#?}"
    );
    assert_eq!(
        attribute(received, "server.address"),
        Some(server.address.expect("the test database's host")),
        "{received:#?}"
    );
    assert_eq!(
        attribute(received, "server.port"),
        Some(server.port.expect("the test database's port").to_string()),
        "{received:#?}"
    );
    for credential in ["db.user", "user", "password"] {
        assert_eq!(attribute(received, credential), None, "{received:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_services_export_is_one_tree_per_call() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let receiver_addr = listener.local_addr().expect("receiver address");
    let _receiving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{receiver_addr}");

    // This process's spans (wallet-svc's) go to the receiver over OTLP too.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&endpoint)
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("wallet-svc")
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("wallet-svc")))
        .init();

    let mut wallet = TestWallet::start().await;
    let wallet_endpoint = wallet.endpoint();
    // For the schedule and the top-up: its spans are not looked at.
    let app = spawn_app_with(|config| config.wallet_endpoint = wallet_endpoint).await;
    let schedule_id = app.schedule_with_seats(5).await;
    wallet.charge(1, 1_000, "top-up").await;
    let replica = ReplicaProcess::start(
        &app.config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "reservation-eu"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let mut client = replica.client().await;

    let held = client
        .hold_seat(pb::HoldSeatRequest {
            user_id: 1,
            schedule_id,
            seat_no: 1,
        })
        .await
        .expect("hold")
        .into_inner();
    client
        .pay_reservation(pb::PayReservationRequest {
            reservation_id: held.id,
            user_id: 1,
        })
        .await
        .expect("pay");
    client
        .cancel_reservation(pb::CancelReservationRequest {
            reservation_id: held.id,
            user_id: 1,
        })
        .await
        .expect("cancel");
    let unpaid = client
        .hold_seat(pb::HoldSeatRequest {
            user_id: 1,
            schedule_id,
            seat_no: 2,
        })
        .await
        .expect("hold")
        .into_inner();
    wallet.stop().await;
    let refused = client
        .pay_reservation(pb::PayReservationRequest {
            reservation_id: unpaid.id,
            user_id: 1,
        })
        .await
        .expect_err("no wallet");
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    // Its last spans go out on SIGTERM, with the drain.
    let exited = replica.terminate().await;
    assert!(exited.success(), "{exited:?}");
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("flush task")
        .expect("flush");
    let spans = receiver.spans();

    let reservation = "ticketing.reservation.v1.ReservationService";
    let wallet_service = "ticketing.wallet.v1.WalletService";
    let served: Vec<Received> = spans
        .iter()
        .filter(|received| received.service == "reservation-eu")
        .cloned()
        .collect();
    assert!(!served.is_empty(), "OTEL_SERVICE_NAME names it: {spans:#?}");
    assert!(
        served
            .iter()
            .all(|received| !received.span.name.starts_with("grpc.")),
        "no health checks"
    );
    let trace_of = |root: &Received| -> Vec<Received> {
        spans
            .iter()
            .filter(|received| received.span.trace_id == root.span.trace_id)
            .cloned()
            .collect()
    };
    let by_id = |trace: &[Received]| -> HashMap<Vec<u8>, Received> {
        trace
            .iter()
            .map(|received| (received.span.span_id.clone(), received.clone()))
            .collect()
    };

    // The payment: one trace, SERVER -> steps -> CLIENT -> wallet's SERVER -> its batch.
    let pays: Vec<&Received> = served
        .iter()
        .filter(|received| received.span.name == format!("{reservation}/PayReservation"))
        .collect();
    assert_eq!(pays.len(), 2, "{served:#?}");
    let pay = pays
        .iter()
        .find(|received| !is_error(received))
        .expect("the paid one");
    assert_eq!(pay.span.kind, SpanKind::Server as i32);
    assert!(pay.span.parent_span_id.is_empty(), "a root");
    assert_rpc(pay, reservation, "PayReservation", "0");
    // A server's success is no status of its own: unset, as the RPC conventions ask.
    assert_eq!(status(pay), StatusCode::Unset, "{pay:#?}");
    let trace = trace_of(pay);
    let spans_of = by_id(&trace);
    let use_client = one(&trace, &format!("{wallet_service}/Use"), SpanKind::Client);
    assert_eq!(use_client.service, "reservation-eu");
    assert_rpc(use_client, wallet_service, "Use", "0");
    let use_server = one(&trace, &format!("{wallet_service}/Use"), SpanKind::Server);
    assert_eq!(use_server.service, "wallet-svc");
    assert_rpc(use_server, wallet_service, "Use", "0");
    assert_eq!(status(use_server), StatusCode::Unset, "{use_server:#?}");
    assert_eq!(use_server.span.parent_span_id, use_client.span.span_id);
    let batch = one(&trace, "apply_batch", SpanKind::Client);
    assert_postgres(batch, wallet.db.name(), wallet.db.url());
    // Every span of the payment's trace leads up to its server span.
    for received in &trace {
        let mut at = received;
        while !at.span.parent_span_id.is_empty() {
            at = spans_of
                .get(&at.span.parent_span_id)
                .unwrap_or_else(|| panic!("the parent of {at:#?} is in the trace"));
        }
        assert_eq!(at.span.span_id, pay.span.span_id, "{received:#?}");
    }
    for step in ["begin_pay", "settle_attempt"] {
        let span = one(&trace, step, SpanKind::Client);
        assert_eq!(attribute(span, "db.operation.name").as_deref(), Some(step));
        assert_postgres(span, app.db.name(), app.db.url());
    }

    // The hold: the seat's lock in Redis and its transaction in Postgres.
    let hold = served
        .iter()
        .find(|received| received.span.name == format!("{reservation}/HoldSeat"))
        .expect("the hold");
    assert_rpc(hold, reservation, "HoldSeat", "0");
    assert_eq!(status(hold), StatusCode::Unset, "{hold:#?}");
    let trace = trace_of(hold);
    assert_eq!(
        attribute(one(&trace, "acquire", SpanKind::Client), "db.system.name").as_deref(),
        Some("redis")
    );
    assert_postgres(
        one(&trace, "hold_seat", SpanKind::Client),
        app.db.name(),
        app.db.url(),
    );

    // The cancel: its refund is one more client call in its trace.
    let cancel = served
        .iter()
        .find(|received| received.span.name == format!("{reservation}/CancelReservation"))
        .expect("the cancel");
    assert_rpc(cancel, reservation, "CancelReservation", "0");
    assert_eq!(status(cancel), StatusCode::Unset, "{cancel:#?}");
    let trace = trace_of(cancel);
    let refund = one(
        &trace,
        &format!("{wallet_service}/Refund"),
        SpanKind::Client,
    );
    assert_rpc(refund, wallet_service, "Refund", "0");
    one(
        &trace,
        &format!("{wallet_service}/Refund"),
        SpanKind::Server,
    );

    // The payment with the wallet stopped: UNAVAILABLE, an error on both of reservation-svc's
    // spans.
    let failed = pays
        .iter()
        .find(|received| is_error(received))
        .expect("the failed payment is an error");
    assert_rpc(failed, reservation, "PayReservation", "14");
    assert_eq!(status(failed), StatusCode::Error, "{failed:#?}");
    let trace = trace_of(failed);
    let use_client = one(&trace, &format!("{wallet_service}/Use"), SpanKind::Client);
    assert!(is_error(use_client), "{use_client:#?}");
    assert_ne!(
        attribute(use_client, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
}
