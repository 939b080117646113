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

/// The series a fresh process lists at zero before any call, hold or round of background
/// work: what the alerts of deploy/prometheus watch must be 0, not absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_process_lists_its_series_at_zero() {
    use reservation_svc::metrics::{
        BACKGROUND_FAILURES, BACKGROUND_TASKS, CANCELLATION_OUTCOMES, CANCELLATIONS_RECONCILED,
        PAYMENT_OUTCOMES, SEAT_LOCK_MODE, SEAT_LOCK_OUTCOMES, SEAT_LOCK_SWITCHES,
    };
    use shared::metrics::{
        CONNECTIONS_IDLE_CLOSED, CONNECTIONS_REFUSED, RPC_DURATION, RPC_SHED, SHED_REASONS,
        TLS_HANDSHAKE_FAILURES, TLS_HANDSHAKES_REFUSED,
    };

    let app = spawn_app_with(|_| {}).await;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::helpers::restartable_port()));
    let metrics_addr = metrics.to_string();
    let _process = crate::helpers::ReplicaProcess::start(
        &app.config,
        &[
            ("RESERVATION_METRICS_ADDR", metrics_addr.as_str()),
            // No round of background work in the test's time.
            ("SWEEP_INTERVAL", "1h"),
            ("RECONCILE_INTERVAL", "1h"),
            // The seat locks' mode and switches are published with the fallback.
            ("SEAT_LOCK_FALLBACK", "postgres"),
        ],
    )
    .await;
    let (code, text) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200, "{text}");

    let mut expected: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for method in [
        "HoldSeat",
        "PayReservation",
        "CancelReservation",
        "ListSeats",
    ] {
        for code in [
            "OK",
            "Unavailable",
            "Internal",
            "ResourceExhausted",
            "DeadlineExceeded",
        ] {
            expected.push((
                RPC_REQUESTS,
                vec![
                    (
                        "grpc_service",
                        "ticketing.reservation.v1.ReservationService",
                    ),
                    ("grpc_method", method),
                    ("grpc_code", code),
                    ("grpc_type", "unary"),
                ],
            ));
        }
        expected.push((
            "ticketing_rpc_duration_seconds_count",
            vec![("grpc_method", method), ("status", "OK")],
        ));
    }
    expected.push((
        RPC_REQUESTS,
        vec![("method", HOLD_SEAT), ("status", "UNAVAILABLE")],
    ));
    expected.extend(SEAT_LOCK_OUTCOMES.map(|outcome| (SEAT_LOCKS, vec![("outcome", outcome)])));
    expected
        .extend(PAYMENT_OUTCOMES.map(|outcome| (PAYMENTS_RECONCILED, vec![("outcome", outcome)])));
    expected.extend(
        CANCELLATION_OUTCOMES.map(|outcome| (CANCELLATIONS_RECONCILED, vec![("outcome", outcome)])),
    );
    expected.extend(BACKGROUND_TASKS.map(|task| (BACKGROUND_FAILURES, vec![("task", task)])));
    expected.extend(["redis", "postgres"].map(|to| (SEAT_LOCK_SWITCHES, vec![("to", to)])));
    expected.push((SEAT_LOCK_MODE, vec![("mode", "postgres")]));
    expected.push((RESERVATIONS_EXPIRED, vec![]));
    // `clock` is the health check's, which runs from the start.
    for command in ["acquire", "release", "mark", "clear"] {
        expected.push((
            "ticketing_redis_command_duration_seconds_count",
            vec![("command", command), ("result", "ok")],
        ));
    }
    // The sweeper's and the reconciler's steps run from the start, each on its own clock:
    // listed, at whatever count they have reached (below).
    let background = [
        "expire_lapsed_holds",
        "claim_stuck_payments",
        "claim_unfinished_cancellations",
    ];
    for step in reservation_svc::metrics::DB_STEPS {
        if !background.contains(&step) {
            expected.push((
                "ticketing_db_transaction_duration_seconds_count",
                vec![("step", step), ("result", "ok")],
            ));
        }
    }
    expected.extend(SHED_REASONS.map(|reason| (RPC_SHED, vec![("reason", reason)])));
    for name in [
        CONNECTIONS_IDLE_CLOSED,
        CONNECTIONS_REFUSED,
        TLS_HANDSHAKE_FAILURES,
        TLS_HANDSHAKES_REFUSED,
    ] {
        expected.push((name, vec![]));
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(name, labels)| {
            shared::test_support::listed_metric(&text, name, labels) != Some(0.0)
        })
        .map(|(name, labels)| format!("{name}{labels:?}"))
        .collect();
    assert!(missing.is_empty(), "not listed at 0: {missing:#?}\n{text}");
    for step in background {
        assert!(
            reservation_svc::metrics::DB_STEPS.contains(&step),
            "{step} is a step"
        );
        let listed = shared::test_support::listed_metric(
            &text,
            "ticketing_db_transaction_duration_seconds_count",
            &[("step", step), ("result", "ok")],
        );
        assert!(listed.is_some(), "{step} not listed\n{text}");
    }
    assert!(text.contains(&format!("{RPC_DURATION}_bucket{{")), "{text}");
    // The process's own series, and the build's.
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            shared::test_support::listed_metric(&text, name, &[]).is_some_and(|value| value >= 0.0),
            "{name}:\n{text}"
        );
    }
    assert_eq!(
        shared::test_support::listed_metric(
            &text,
            shared::metrics::BUILD_INFO,
            &[("version", shared::metrics::VERSION)]
        ),
        Some(1.0),
        "{text}"
    );
    // It reloads no file, so lists no reload.
    assert_eq!(
        shared::test_support::listed_metric(&text, shared::metrics::RELOADS, &[]),
        None,
        "{text}"
    );
}

/// A secure process lists the reloads of what it reloads, both results, at zero before any
/// change: its TLS certificate and key, the JWKS, and the files of its calls to wallet-svc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_secure_process_lists_its_reloads_at_zero() {
    const IDENTITY: &str = "spiffe://ticketing.local/reservation-svc";
    let app = spawn_app_with(|_| {}).await;
    let setup = shared::test_pki::SecureSetup::new();
    let mut env = shared::test_pki::environment(&setup.server("reservation", IDENTITY, false));
    let wallet_files = setup.client("reservation-client", Some(IDENTITY));
    let (wallet_cert, wallet_key) = wallet_files.identity.expect("a client certificate");
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::helpers::restartable_port()));
    env.extend([
        ("RESERVATION_METRICS_ADDR", metrics.to_string()),
        // Never called: the channel connects at its first call.
        ("WALLET_ENDPOINT", "https://localhost:1".to_owned()),
        ("WALLET_TLS_CA_FILE", wallet_files.ca.display().to_string()),
        ("WALLET_TLS_CERT_FILE", wallet_cert.display().to_string()),
        ("WALLET_TLS_KEY_FILE", wallet_key.display().to_string()),
    ]);
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let _process = crate::helpers::ReplicaProcess::start(&app.config, &env).await;
    let (code, text) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200, "{text}");

    shared::test_support::assert_reloads_listed_at_zero(
        &text,
        &[
            "server TLS certificate and key",
            "JWKS",
            "client TLS CA, certificate and key",
        ],
    );
}
