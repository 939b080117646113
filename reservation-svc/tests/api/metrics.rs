//! What reservation-svc counts on its `/metrics` endpoint: seat lock outcomes, the holds its
//! sweeper expired, the payments its reconciler drove, and its calls. Other tests of this
//! process count into the same registry, so counts are compared with their value before,
//! never expected equal.

use std::future::Future;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use reservation_svc::metrics::{PAYMENTS_RECONCILED, RESERVATIONS_EXPIRED, SEAT_LOCKS};
use secrecy::ExposeSecret as _;
use shared::metrics::{DB_POOL_CONNECTIONS, RPC_REQUESTS};
use shared::test_support::{http_get, metric_value};
use tonic::Code;

use crate::helpers::{RedisServer, TestApp, TestWallet, redis, spawn_app_with};

const HOLD_SEAT: &str = "/ticketing.reservation.v1.ReservationService/HoldSeat";

fn serving_metrics(config: &mut reservation_svc::config::Config) {
    config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"));
}

async fn scrape(app: &TestApp) -> String {
    let (code, text) = http_get(app.metrics_addr.expect("metrics served"), "/metrics").await;
    assert_eq!(code, 200, "{text}");
    text
}

/// Scrapes every 100 ms until `reached` holds for the text, for up to ten seconds.
async fn scrape_until(app: &TestApp, reached: impl Fn(&str) -> bool) -> String {
    let mut text = scrape(app).await;
    for _ in 0..100 {
        if reached(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(app).await;
    }
    text
}

fn seat_locks(text: &str, outcome: &str) -> f64 {
    metric_value(text, SEAT_LOCKS, &[("outcome", outcome)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seat_lock_outcomes_expired_holds_and_calls_are_counted() {
    let app = spawn_app_with(|config| {
        serving_metrics(config);
        config.seat_hold_ttl = Duration::from_millis(300);
        config.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let before = scrape(&app).await;
    let schedule_id = app.schedule_with_seats(5).await;

    let held = app.hold(1, schedule_id, 1).await.expect("hold");
    // Another request holds seat 2's lock: the hold is refused before Postgres.
    redis(app.config.redis_url.expose_secret())
        .await
        .set::<(), _, _>(
            app.seat_key(schedule_id, 2),
            "another-request",
            None,
            None,
            false,
        )
        .await
        .expect("take the lock");
    let locked = app.hold(2, schedule_id, 2).await.expect_err("locked");
    assert_eq!(locked.code(), Code::Aborted, "{locked:?}");

    let expired_before = metric_value(&before, RESERVATIONS_EXPIRED, &[]);
    let after = scrape_until(&app, |text| {
        metric_value(text, RESERVATIONS_EXPIRED, &[]) > expired_before
    })
    .await;
    assert_eq!(app.reservations_in(schedule_id, 1, "EXPIRED").await, 1);
    assert_eq!(
        app.reservation(held.id).await.status(),
        shared::proto::reservation::v1::ReservationStatus::Expired
    );
    assert!(metric_value(&after, RESERVATIONS_EXPIRED, &[]) >= expired_before + 1.0);
    for outcome in ["acquired", "contended"] {
        assert!(
            seat_locks(&after, outcome) >= seat_locks(&before, outcome) + 1.0,
            "{outcome}:\n{after}"
        );
    }
    let aborted = |text: &str| {
        metric_value(
            text,
            RPC_REQUESTS,
            &[("method", HOLD_SEAT), ("status", "ABORTED")],
        )
    };
    assert!(aborted(&after) >= aborted(&before) + 1.0, "{after}");
    assert!(after.contains(&format!("{DB_POOL_CONNECTIONS}{{state=\"in_use\"}}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_without_redis_counts_as_redis_unavailable() {
    let mut own_redis = RedisServer::start();
    let app = spawn_app_with(|config| {
        serving_metrics(config);
        config.redis_url = own_redis.url().into();
    })
    .await;
    let schedule_id = app.schedule_with_seats(5).await;
    let before = scrape(&app).await;

    own_redis.stop();
    let refused = bounded(app.hold(1, schedule_id, 1))
        .await
        .expect_err("no Redis, no hold");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    let after = scrape(&app).await;
    assert!(
        seat_locks(&after, "redis_unavailable") >= seat_locks(&before, "redis_unavailable") + 1.0,
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_the_reconciler_confirms_is_counted() {
    let wallet = TestWallet::start().await;
    let endpoint = wallet.endpoint();
    let app = spawn_app_with(|config| {
        serving_metrics(config);
        config.wallet_endpoint = endpoint;
        config.reconcile_interval = Duration::from_millis(100);
        config.reconcile_grace = Duration::from_millis(500);
    })
    .await;
    let schedule_id = app.schedule_with_seats(5).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 3).await.expect("hold");
    let confirmed =
        |text: &str| metric_value(text, PAYMENTS_RECONCILED, &[("outcome", "confirmed")]);
    let before = confirmed(&scrape(&app).await);
    // A replica began attempt 1 and died before it asked the wallet.
    app.execute(&format!(
        "UPDATE reservations SET status = 'PAYING', pay_attempt = 1 WHERE id = {}",
        held.id
    ))
    .await;

    let after = confirmed(&scrape_until(&app, |text| confirmed(text) > before).await);

    assert!(after >= before + 1.0);
    assert_eq!(app.reservations_in(schedule_id, 3, "CONFIRMED").await, 1);
    assert_eq!(wallet.balance(1).await, 900);
}

/// Bounded only to turn a hang into a failure.
async fn bounded<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered, not hung")
}
