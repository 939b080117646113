//! The server's own limits: calls beyond the concurrency limit are refused at once while the
//! admitted ones go on, health checks pass whatever the load, and a call past the RPC timeout
//! answers DEADLINE_EXCEEDED. The metrics count the refused and timed-out calls too.

use std::num::NonZeroUsize;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures::future::join_all;
use shared::metrics::RPC_REQUESTS;
use shared::test_support::{http_get, metric_value};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{TestApp, channel, spawn_app_with};

const USE: &str = "/ticketing.wallet.v1.WalletService/Use";

/// Calls that wait for the test's row lock wait for it, not for a database timeout.
const PATIENT: Duration = Duration::from_secs(60);

/// The count of `Use` calls answered with `status`, as the metrics endpoint reports it.
async fn uses_answered(app: &TestApp, status: &str) -> f64 {
    let metrics_addr = app.metrics_addr.expect("metrics served");
    let (code, text) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    metric_value(&text, RPC_REQUESTS, &[("method", USE), ("status", status)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_beyond_the_concurrency_limit_are_refused_at_once_and_the_admitted_ones_complete() {
    const LIMIT: usize = 2;
    let app = spawn_app_with(|config| {
        config.server.max_concurrent_rpcs = NonZeroUsize::new(LIMIT).expect("not zero");
        config.server.rpc_timeout = PATIENT;
        config.db.db_lock_timeout = PATIENT;
        config.db.db_statement_timeout = PATIENT;
        config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    // One user for each admitted call: two calls of one user would share a transaction.
    let users: Vec<i64> = (1..=i64::try_from(LIMIT).expect("small")).collect();
    for &user in &users {
        app.charge(user, 100, "initial").await.expect("charge");
    }
    let refused_before = uses_answered(&app, "RESOURCE_EXHAUSTED").await;

    // Two uses take both places and wait for their wallets' row locks.
    let mut blockers = Vec::new();
    for &user in &users {
        blockers.push(app.lock_wallet(user).await);
    }
    let admitted: Vec<_> = users
        .iter()
        .map(|&user| {
            let app_client = app.client();
            tokio::spawn(async move {
                let mut client = app_client;
                client
                    .r#use(shared::proto::wallet::v1::UseRequest {
                        user_id: user,
                        amount: 10,
                        idempotency_key: format!("admitted-{user}"),
                        reference: String::new(),
                    })
                    .await
            })
        })
        .collect();
    app.until_waiting_for_a_lock(i64::try_from(LIMIT).expect("small"))
        .await;

    // Every further call is answered while the admitted ones still wait: refused, not queued.
    // (Bounded only to turn a queued call's hang into a failure.)
    let keys: Vec<String> = (0..8).map(|i| format!("refused-{i}")).collect();
    let further = keys.iter().map(|key| app.use_points(1, 10, key));
    let refused = tokio::time::timeout(Duration::from_secs(30), join_all(further))
        .await
        .expect("answered while the limit is full");
    for answer in &refused {
        let status = answer.as_ref().expect_err("refused at the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    // Probes still see the server alive.
    let health = HealthClient::new(channel(app.addr).await)
        .check(HealthCheckRequest::default())
        .await
        .expect("a health check is answered at the limit")
        .into_inner()
        .status();
    assert_eq!(health, ServingStatus::Serving);
    assert!(
        admitted.iter().all(|call| !call.is_finished()),
        "the admitted calls still wait for the lock"
    );

    for blocker in &mut blockers {
        blocker.batch_execute("COMMIT").await.expect("release");
    }
    for call in admitted {
        call.await
            .expect("task")
            .expect("an admitted call completes");
    }
    for &user in &users {
        assert_eq!(app.balance(user).await, 100 - 10, "only the admitted use");
        app.assert_ledger_matches_balance(user).await;
    }
    app.use_points(1, 10, "after-the-rush")
        .await
        .expect("the places are given back");
    assert!(uses_answered(&app, "RESOURCE_EXHAUSTED").await >= refused_before + 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_past_the_rpc_timeout_answers_deadline_exceeded_and_its_key_keeps_one_outcome() {
    let app = spawn_app_with(|config| {
        // Ample for any call that is not held up, yet the held-up one outlasts it.
        config.server.rpc_timeout = Duration::from_secs(2);
        config.db.db_lock_timeout = PATIENT;
        config.db.db_statement_timeout = PATIENT;
        config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    app.charge(1, 100, "initial").await.expect("charge");
    let timed_out_before = uses_answered(&app, "DEADLINE_EXCEEDED").await;

    let mut blocker = app.lock_wallet(1).await;
    let status = app
        .use_points(1, 30, "held-up")
        .await
        .expect_err("the row lock outlasts the timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(uses_answered(&app, "DEADLINE_EXCEEDED").await >= timed_out_before + 1.0);

    // The debit had reached the database and finishes there; the key answers it, once.
    blocker.batch_execute("COMMIT").await.expect("release");
    let replayed = app
        .use_points(1, 30, "held-up")
        .await
        .expect("the key's outcome");
    assert_eq!(replayed.balance_after, 70);
    assert_eq!(app.balance(1).await, 70);
    app.assert_ledger_matches_balance(1).await;
}
