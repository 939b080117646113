//! One payment is one trace across both services: reservation-svc's wallet client carries the
//! W3C trace context in the gRPC metadata, and wallet-svc's server continues it.
//!
//! A test binary of its own, since it installs the process-wide tracing subscriber.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use opentelemetry::trace::TracerProvider as _;
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

    let wallet = TestWallet::start().await;
    let endpoint = wallet.endpoint();
    let app = spawn_app_with(|config| config.wallet_endpoint = endpoint).await;
    let schedule_id = app.schedule_with_seats(5).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");
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
    let server_span = |method: &str| {
        spans
            .iter()
            .find(|span| attribute(span, "rpc.method").as_deref() == Some(method))
            .unwrap_or_else(|| panic!("no server span of {method} among {spans:#?}"))
    };
    let pay = server_span("/ticketing.reservation.v1.ReservationService/PayReservation");
    let debit = server_span("/ticketing.wallet.v1.WalletService/Use");
    assert_eq!(
        debit.span_context.trace_id(),
        pay.span_context.trace_id(),
        "wallet-svc's span continues the payment's trace"
    );
    let saga = spans
        .iter()
        .find(|span| span.name == "pay_reservation")
        .expect("the payment's own span");
    assert_eq!(attribute(saga, "reservation_id"), Some(held.id.to_string()));
    assert_eq!(attribute(saga, "user_id").as_deref(), Some("1"));
    assert_eq!(
        attribute(saga, "schedule_id"),
        Some(schedule_id.to_string())
    );
    assert_eq!(attribute(saga, "seat_no").as_deref(), Some("1"));
    let movement = spans
        .iter()
        .find(|span| span.name == "apply_movement")
        .expect("wallet-svc's span of the debit");
    assert_eq!(
        movement.span_context.trace_id(),
        pay.span_context.trace_id()
    );
    assert_eq!(attribute(movement, "user_id").as_deref(), Some("1"));
}
