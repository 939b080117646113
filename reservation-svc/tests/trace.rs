//! One payment is one trace across both services: reservation-svc's wallet client carries the
//! W3C trace context in the gRPC metadata, and wallet-svc's server continues it.
//!
//! A test binary of its own, since it installs the process-wide tracing subscriber.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use shared::proto::reservation::v1 as pb;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use helpers::{TestWallet, spawn_app_with};

/// The value of a span attribute, as text.
fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_is_one_trace_across_both_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let mut wallet = TestWallet::start().await;
    let endpoint = wallet.endpoint();
    let app = spawn_app_with(|config| config.wallet_endpoint = endpoint).await;
    let schedule_id = app.schedule_with_seats(5).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let hold = spans
        .iter()
        .find(|span| span.name == "ticketing.reservation.v1.ReservationService/HoldSeat")
        .expect("the hold's span");
    for (step, system) in [
        ("acquire", "redis"),
        ("hold_seat", "postgresql"),
        ("mark", "redis"),
    ] {
        let span = spans
            .iter()
            .find(|span| span.name == step)
            .unwrap_or_else(|| panic!("no span {step} among {spans:#?}"));
        assert_eq!(span.span_kind, SpanKind::Client, "{step}");
        assert_eq!(attribute(span, "db.system.name").as_deref(), Some(system));
        assert_eq!(span.span_context.trace_id(), hold.span_context.trace_id());
    }
    exporter.reset();

    app.client()
        .pay_reservation(pb::PayReservationRequest {
            reservation_id: held.id,
            user_id: 1,
        })
        .await
        .expect("pay");
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("spans");
    let span_named = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no span {name} among {spans:#?}"))
    };
    let pay = span_named("ticketing.reservation.v1.ReservationService/PayReservation");
    assert_eq!(pay.span_kind, SpanKind::Server);
    assert_eq!(attribute(pay, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(pay, "rpc.service").as_deref(),
        Some("ticketing.reservation.v1.ReservationService")
    );
    assert_eq!(
        attribute(pay, "rpc.method").as_deref(),
        Some("PayReservation")
    );
    assert_eq!(attribute(pay, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(
        attribute(pay, "server.port"),
        Some(app.addr.port().to_string())
    );
    assert!(attribute(pay, "server.address").is_some());
    assert_ne!(pay.status, Status::error(""));

    let use_client = spans
        .iter()
        .find(|span| {
            span.name == "ticketing.wallet.v1.WalletService/Use"
                && span.span_kind == SpanKind::Client
        })
        .expect("reservation-svc's client span of the debit");
    assert_eq!(attribute(use_client, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(use_client, "rpc.method").as_deref(), Some("Use"));
    assert_eq!(
        attribute(use_client, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        attribute(use_client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    let use_server = spans
        .iter()
        .find(|span| {
            span.name == "ticketing.wallet.v1.WalletService/Use"
                && span.span_kind == SpanKind::Server
        })
        .expect("wallet-svc's server span of the debit");
    assert_eq!(
        use_server.parent_span_id,
        use_client.span_context.span_id(),
        "wallet-svc's span is the child of the client's"
    );
    for span in [use_client, use_server] {
        assert_eq!(
            span.span_context.trace_id(),
            pay.span_context.trace_id(),
            "one payment, one trace"
        );
    }
    let saga = span_named("pay_reservation");
    assert_eq!(attribute(saga, "reservation_id"), Some(held.id.to_string()));
    assert_eq!(attribute(saga, "user_id").as_deref(), Some("1"));
    assert_eq!(
        attribute(saga, "schedule_id"),
        Some(schedule_id.to_string())
    );
    assert_eq!(attribute(saga, "seat_no").as_deref(), Some("1"));
    let movement = span_named("apply_movement");
    assert_eq!(
        movement.span_context.trace_id(),
        pay.span_context.trace_id()
    );
    assert_eq!(attribute(movement, "user_id").as_deref(), Some("1"));
    // Every round trip of the payment is in its trace: both of reservation-svc's steps and
    // the wallet's batched transaction.
    for step in ["begin_pay", "settle_attempt", "apply_batch"] {
        let span = span_named(step);
        assert_eq!(span.span_kind, SpanKind::Client, "{step}");
        assert_eq!(
            attribute(span, "db.system.name").as_deref(),
            Some("postgresql"),
            "{step}"
        );
        assert_eq!(
            attribute(span, "db.operation.name").as_deref(),
            Some(step),
            "{step}"
        );
        assert_eq!(
            span.span_context.trace_id(),
            pay.span_context.trace_id(),
            "{step} is in the payment's trace"
        );
    }

    // With the wallet stopped the payment is UNAVAILABLE: an error on both sides.
    wallet.stop().await;
    let second = app.hold(1, schedule_id, 2).await.expect("hold");
    exporter.reset();
    let refused = app
        .client()
        .pay_reservation(pb::PayReservationRequest {
            reservation_id: second.id,
            user_id: 1,
        })
        .await
        .expect_err("no wallet");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let pay = spans
        .iter()
        .find(|span| span.name == "ticketing.reservation.v1.ReservationService/PayReservation")
        .expect("the failed payment's span");
    assert_eq!(
        attribute(pay, "rpc.grpc.status_code").as_deref(),
        Some("14")
    );
    assert!(matches!(pay.status, Status::Error { .. }), "{pay:#?}");
    let use_client = spans
        .iter()
        .find(|span| span.name == "ticketing.wallet.v1.WalletService/Use")
        .expect("the client span of the failed debit");
    assert_eq!(use_client.span_kind, SpanKind::Client);
    assert!(
        matches!(use_client.status, Status::Error { .. }),
        "{use_client:#?}"
    );
    assert_ne!(
        attribute(use_client, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        use_client.span_context.trace_id(),
        pay.span_context.trace_id()
    );

    // Health checks and reflection leave no spans.
    exporter.reset();
    let channel = helpers::channel(app.addr).await;
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection")
        .into_inner();
    answers.message().await.expect("reflection answer");
    drop(answers);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    assert!(
        spans.iter().all(|span| !span.name.starts_with("grpc.")),
        "{spans:#?}"
    );
}
