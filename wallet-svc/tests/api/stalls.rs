//! A movement decided while another transaction of the same user stalls: every movement, a
//! refund of a user with no wallet yet included, is decided under the wallet's row lock, so
//! the ledger and the balance never part. Interleavings are forced with locks held by a
//! connection of the test that plays another replica, never left to timing.

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use tonic::Code;

use crate::helpers::{TestApp, reason, spawn_app, spawn_app_with};

const USER: i64 = 7;

/// What another replica commits for a new user: the wallet, a charge of 100 and a use of 30
/// under the key `use-1`.
const FIRST_MOVEMENTS: &str = "\
    INSERT INTO wallets (user_id, balance) VALUES (7, 70); \
    INSERT INTO wallet_transactions \
        (user_id, kind, amount, balance_after, idempotency_key, request_hash) \
    VALUES (7, 'CHARGE', 100, 100, 'charge-1', '\\x01'), \
           (7, 'USE', 30, 70, 'use-1', '\\x02');";

/// Sends the refund of `use-1` (a client compensating a use it saw time out) in a task.
fn send_refund(app: &TestApp) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    let mut client = app.client();
    tokio::spawn(async move {
        client
            .refund(shared::proto::wallet::v1::RefundRequest {
                user_id: USER,
                idempotency_key: "refund-1".to_owned(),
                use_idempotency_key: "use-1".to_owned(),
            })
            .await
            .map(drop)
    })
}

/// Waits until the refund has answered or waits for a lock.
async fn until_answered_or_waiting(
    app: &TestApp,
    refund: &tokio::task::JoinHandle<Result<(), tonic::Status>>,
) {
    for _ in 0..1000 {
        if refund.is_finished() || app.sessions_waiting_for_a_lock().await >= 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the refund neither answered nor waited");
}

/// The refund's answer must agree with the rows: applied on the use's balance (70 + 30), or
/// refused as an unknown use with the other replica's rows untouched.
async fn assert_consistent(app: &TestApp, answer: Result<(), tonic::Status>) {
    let ledger = app.assert_ledger_matches_balance(USER).await;
    match answer {
        Ok(()) => assert_eq!(ledger.balance, 100, "refunded on top of the use"),
        Err(status) => {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert_eq!(reason(&status), "UNKNOWN_USE");
            assert_eq!(ledger.balance, 70, "nothing written by the refusal");
            assert_eq!(ledger.rows, 2);
        }
    }
}

async fn begin(app: &TestApp, sql: &str) -> AsyncPgConnection {
    let mut replica = app.connect_db().await;
    replica
        .batch_execute(&format!("BEGIN; {sql}"))
        .await
        .expect("the other replica's transaction");
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_stalls_before_reading_its_keys_never_sees_a_use_without_the_row_lock() {
    // Reproduces a stall between the refund's look for the wallet row (none yet) and its read
    // of the keys: the ledger's table lock holds that read back while the other replica
    // creates the wallet and commits a use. Without the row lock, the refund was decided on
    // balance 0 and written to the ledger while the balance stayed 70.
    for round in 0..3 {
        let app = spawn_app().await;
        let mut replica = begin(
            &app,
            "LOCK TABLE wallet_transactions IN ACCESS EXCLUSIVE MODE",
        )
        .await;
        let refund = send_refund(&app);
        until_answered_or_waiting(&app, &refund).await;
        replica
            .batch_execute(&format!("{FIRST_MOVEMENTS} COMMIT"))
            .await
            .expect("commit the other replica's movements");
        let answer = refund.await.expect("the refund task");
        assert_consistent(&app, answer).await;
        // Whatever it answered, a retry of the refund now finds the use.
        let retried = app.refund(USER, "refund-1", "use-1").await;
        assert!(retried.is_ok(), "round {round}: {retried:?}");
        assert_eq!(app.assert_ledger_matches_balance(USER).await.balance, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waits_for_a_wallet_being_created_and_then_finds_its_use() {
    for _ in 0..3 {
        let app = spawn_app().await;
        // The other replica has created the wallet and made the use, not committed yet.
        let mut replica = begin(&app, FIRST_MOVEMENTS).await;
        let refund = send_refund(&app);
        until_answered_or_waiting(&app, &refund).await;
        replica
            .batch_execute("COMMIT")
            .await
            .expect("commit the other replica's movements");
        let answer = refund.await.expect("the refund task");
        assert!(
            answer.is_ok(),
            "waited for the wallet, then refunded: {answer:?}"
        );
        assert_consistent(&app, answer).await;
    }
}

#[tokio::test]
async fn a_refund_of_a_user_without_a_wallet_writes_nothing() {
    let app = spawn_app().await;
    let written = app.rows_written().await;
    let refused = app
        .refund(USER, "refund-1", "use-1")
        .await
        .expect_err("no wallet, no use");
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(reason(&refused), "UNKNOWN_USE");
    assert_eq!(app.rows_written().await, written, "no wallet left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_use_that_found_no_wallet_row_to_lock_never_writes_in_its_round_trip() {
    // A lone use goes in one round trip: the row's lock, then the conditional write. Here the
    // lock finds no row (another replica's insert of the wallet is not committed), the write
    // is held back (a lock on the refusals' table) while that replica commits the wallet and
    // a third transaction takes the row's lock to charge again. Had the write gone on without
    // the lock, it would have decided on the balance it saw (100) and overwritten the third's
    // (200): balance 50 against a ledger of 150. It writes nothing, and the full transaction
    // decides under the lock.
    for round in 0..3 {
        // One connection, so that its statements are prepared by the warm-up below and the
        // held-back write waits at its table lock, after the row's lock statement has run.
        let app = spawn_app_with(|config| config.db.db_pool_size = 1).await;
        app.charge(USER + 1, 10, "warm-up-charge")
            .await
            .expect("warm-up charge");
        app.use_points(USER + 1, 1, "warm-up-use")
            .await
            .expect("warm-up use");
        let mut refusals = begin(&app, "LOCK TABLE wallet_refusals IN ACCESS EXCLUSIVE MODE").await;
        let mut creating = begin(
            &app,
            "INSERT INTO wallets (user_id, balance) VALUES (7, 100); \
             INSERT INTO wallet_transactions \
                 (user_id, kind, amount, balance_after, idempotency_key, request_hash) \
             VALUES (7, 'CHARGE', 100, 100, 'charge-1', '\\x01');",
        )
        .await;
        let using = {
            let app_client = app.client();
            tokio::spawn(async move {
                let mut client = app_client;
                client
                    .r#use(shared::proto::wallet::v1::UseRequest {
                        user_id: USER,
                        amount: 50,
                        idempotency_key: "use-1".to_owned(),
                        reference: "order-1".to_owned(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            })
        };
        app.until_waiting_for_a_lock(1).await;
        creating
            .batch_execute("COMMIT")
            .await
            .expect("commit the wallet");
        let mut charging = begin(
            &app,
            "SELECT * FROM wallets WHERE user_id = 7 FOR UPDATE; \
             INSERT INTO wallet_transactions \
                 (user_id, kind, amount, balance_after, idempotency_key, request_hash) \
             VALUES (7, 'CHARGE', 100, 200, 'charge-2', '\\x02'); \
             UPDATE wallets SET balance = 200 WHERE user_id = 7;",
        )
        .await;
        refusals
            .batch_execute("COMMIT")
            .await
            .expect("release the refusals");
        // The full transaction now waits for the charging replica's row lock.
        app.until_waiting_for_a_lock(1).await;
        charging
            .batch_execute("COMMIT")
            .await
            .expect("commit the second charge");
        let used = using
            .await
            .expect("the use task")
            .unwrap_or_else(|status| panic!("round {round}: {status:?}"));
        assert_eq!(used.balance_after, 150, "round {round}");
        let ledger = app.assert_ledger_matches_balance(USER).await;
        assert_eq!(ledger.balance, 150, "round {round}");
        assert_eq!(ledger.rows, 3, "round {round}");
    }
}
