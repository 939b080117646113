//! Hot-wallet batching: concurrent movements of one user share transactions, and every answer
//! is still exactly the one the movement gets alone, in some order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures::future::join_all;
use shared::proto::wallet::v1::{UseRequest, WalletTransaction};
use tonic::Code;

use crate::helpers::{TestApp, reason, spawn_app_with};

const CLIENTS: usize = 64;
const ROUNDS: usize = 8;
const START: i64 = 100;
const CHARGE: i64 = 5;
const USE: i64 = 7;
const OVERDRAFT: i64 = 1_000_000;

/// What one client asks for in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Charge,
    Use,
    /// The client's use of the round before, sent again.
    Replay,
    Overdraft,
}

fn ask(round: usize) -> Ask {
    match round % 4 {
        0 => Ask::Charge,
        1 => Ask::Use,
        2 => Ask::Replay,
        _ => Ask::Overdraft,
    }
}

fn key(client: usize, round: usize) -> String {
    match ask(round) {
        Ask::Replay => key(client, round - 1),
        _ => format!("client-{client}-round-{round}"),
    }
}

/// An answer, reduced to what must repeat: the transaction, or the refusal's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Applied(i64),
    Refused(String),
}

#[derive(QueryableByName)]
struct LedgerRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = BigInt)]
    delta: i64,
    #[diesel(sql_type = BigInt)]
    balance_after: i64,
}

async fn ledger_rows(app: &TestApp, user_id: i64) -> Vec<LedgerRow> {
    let mut conn = app.connect_db().await;
    diesel::sql_query(format!(
        // Keys are stored under their caller ('<owner> <key>'): read as the caller sent them.
        "SELECT id, substring(idempotency_key FROM '[^ ]*$') AS idempotency_key, delta, \
                balance_after \
         FROM wallet_transactions WHERE user_id = {user_id} ORDER BY id"
    ))
    .load(&mut conn)
    .await
    .expect("the ledger")
}

async fn refused_keys(app: &TestApp, user_id: i64) -> HashSet<String> {
    #[derive(QueryableByName)]
    struct Refused {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
    }
    let mut conn = app.connect_db().await;
    diesel::sql_query(format!(
        "SELECT substring(idempotency_key FROM '[^ ]*$') AS idempotency_key \
         FROM wallet_refusals WHERE user_id = {user_id}"
    ))
    .load::<Refused>(&mut conn)
    .await
    .expect("the refusals")
    .into_iter()
    .map(|refused| refused.idempotency_key)
    .collect()
}

/// One client: its rounds in order, each answered before the next.
async fn client(app: &TestApp, client: usize) -> Vec<(usize, Answer)> {
    let mut answers = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let key = key(client, round);
        let answered = match ask(round) {
            Ask::Charge => app.charge(1, CHARGE, &key).await,
            Ask::Use | Ask::Replay => app.use_points(1, USE, &key).await,
            Ask::Overdraft => app.use_points(1, OVERDRAFT, &key).await,
        };
        let answer = match answered {
            Ok(transaction) => Answer::Applied(transaction.id),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                Answer::Refused(reason(&status))
            }
        };
        answers.push((round, answer));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_mixing_charges_uses_replays_and_overdrafts_get_exact_answers() {
    // With batching (the default) and without: the same exact outcome.
    for max_batch in [64, 1] {
        let app = spawn_app_with(|config| config.max_batch = max_batch).await;
        app.charge(1, START, "start").await.expect("charge");

        let clients = (0..CLIENTS).map(|c| {
            let app = &app;
            async move { (c, client(app, c).await) }
        });
        let answers = join_all(clients).await;

        let mut by_key: HashMap<String, Answer> = HashMap::new();
        let (mut charges, mut uses) = (0, 0);
        for (c, rounds) in &answers {
            for (round, answer) in rounds {
                let key = key(*c, *round);
                match (ask(*round), answer) {
                    (Ask::Charge, Answer::Applied(_)) => charges += 1,
                    (Ask::Charge, refused) => panic!("a charge refused: {refused:?}"),
                    (Ask::Use, Answer::Applied(_)) => uses += 1,
                    (Ask::Use, Answer::Refused(reason)) => {
                        assert_eq!(reason, "INSUFFICIENT_BALANCE");
                    }
                    (Ask::Replay, _) => {
                        assert_eq!(Some(answer), by_key.get(&key), "a replay of {key}");
                        continue;
                    }
                    (Ask::Overdraft, answer) => assert_eq!(
                        answer,
                        &Answer::Refused("INSUFFICIENT_BALANCE".to_owned()),
                        "an overdraft"
                    ),
                }
                assert!(by_key.insert(key, answer.clone()).is_none());
            }
        }
        assert_eq!(charges, CLIENTS * ROUNDS / 4, "batch {max_batch}");

        // The ledger holds exactly the applied movements, each once, and its running balance
        // never dips below zero or skips a step.
        let ledger = ledger_rows(&app, 1).await;
        assert_eq!(ledger.len(), 1 + charges + uses, "batch {max_batch}");
        let mut balance = 0;
        for row in &ledger {
            balance += row.delta;
            assert_eq!(
                row.balance_after, balance,
                "row {} of batch {max_batch}",
                row.id
            );
            assert!(balance >= 0);
            if row.idempotency_key != "start" {
                assert_eq!(
                    by_key.get(&row.idempotency_key),
                    Some(&Answer::Applied(row.id)),
                    "the answer names the ledger row"
                );
            }
        }
        let expected = START + CHARGE * i64::try_from(charges).expect("small")
            - USE * i64::try_from(uses).expect("small");
        assert_eq!(app.balance(1).await, expected, "batch {max_batch}");
        app.assert_ledger_matches_balance(1).await;
        let refused: HashSet<String> = by_key
            .iter()
            .filter(|(_, answer)| matches!(answer, Answer::Refused(_)))
            .map(|(key, _)| key.clone())
            .collect();
        assert_eq!(refused_keys(&app, 1).await, refused, "batch {max_batch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_queued_behind_a_users_transaction_wait_in_the_process_not_on_the_row_lock() {
    let app = spawn_app_with(|_| {}).await;
    app.charge(1, 100, "start").await.expect("charge");

    let mut blocker = app.lock_wallet(1).await;
    let uses: Vec<_> = (0..10)
        .map(|i| {
            let mut client = app.client();
            tokio::spawn(async move {
                client
                    .r#use(shared::proto::wallet::v1::UseRequest {
                        user_id: 1,
                        amount: 10,
                        idempotency_key: format!("queued-{i}"),
                        reference: String::new(),
                    })
                    .await
            })
        })
        .collect();
    app.until_waiting_for_a_lock(1).await;
    // Give the other nine time to arrive: they queue behind the first, never reaching
    // Postgres while its transaction runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sessions_waiting_for_a_lock().await, 1);

    blocker.batch_execute("COMMIT").await.expect("release");
    for call in uses {
        call.await.expect("task").expect("a use completes");
    }
    assert_eq!(app.balance(1).await, 0);
    app.assert_ledger_matches_balance(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_fails_answers_every_request_unavailable_and_writes_nothing() {
    let app = spawn_app_with(|config| {
        config.db.db_lock_timeout = Duration::from_millis(300);
    })
    .await;
    app.charge(1, 100, "start").await.expect("charge");
    let written = app.rows_written().await;

    // The row lock outlasts the lock timeout: every transaction of the user fails.
    let mut blocker = app.lock_wallet(1).await;
    let uses = (0..10).map(|i| {
        let app = &app;
        async move { app.use_points(1, 10, &format!("failed-{i}")).await }
    });
    for answer in join_all(uses).await {
        let status = answer.expect_err("the wallet is locked");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(app.rows_written().await, written, "nothing written");

    blocker.batch_execute("COMMIT").await.expect("release");
    app.use_points(1, 10, "failed-0")
        .await
        .expect("the same key, now applied");
    assert_eq!(app.balance(1).await, 90);
    app.assert_ledger_matches_balance(1).await;
}

/// A `Use` of `amount` points of user 1 under `key`, in a task of its own.
fn spawn_use(
    app: &TestApp,
    amount: i64,
    key: &str,
) -> tokio::task::JoinHandle<Result<WalletTransaction, tonic::Status>> {
    let mut client = app.client();
    let request = UseRequest {
        user_id: 1,
        amount,
        idempotency_key: key.to_owned(),
        reference: String::new(),
    };
    tokio::spawn(async move { client.r#use(request).await.map(tonic::Response::into_inner) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_replays_of_one_key_join_it_and_all_hear_its_answer() {
    // A queue of 2 × 4 = 8 places: the replays fit only by joining the first.
    let app = spawn_app_with(|config| config.max_batch = 2).await;
    app.charge(1, 100, "start").await.expect("charge");

    // The first request waits on the row lock; the 499 identical ones join it in the process.
    let mut blocker = app.lock_wallet(1).await;
    let replays: Vec<_> = (0..500).map(|_| spawn_use(&app, 10, "one-key")).collect();
    app.until_waiting_for_a_lock(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.expect("release");

    let mut transactions = HashSet::new();
    for replay in replays {
        let answer = replay.await.expect("task").expect("every replay succeeds");
        transactions.insert(answer.id);
    }
    assert_eq!(transactions.len(), 1, "one transaction, heard by all");
    assert_eq!(app.balance(1).await, 90, "spent once");
    app.assert_ledger_matches_balance(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_user_busy_with_retry_info_and_writes_nothing_of_those() {
    // A queue of at most 2 × 4 = 8 requests behind the user's transaction in flight.
    let app = spawn_app_with(|config| config.max_batch = 2).await;
    app.charge(1, 100, "start").await.expect("charge");

    let mut blocker = app.lock_wallet(1).await;
    let first = spawn_use(&app, 1, "busy-first");
    app.until_waiting_for_a_lock(1).await;
    // Thirteen more while the first waits: eight queue, five find the queue full and are
    // answered at once.
    let mut calls: Vec<_> = (0..13)
        .map(|i| spawn_use(&app, 1, &format!("busy-{i}")))
        .collect();
    let mut refused = Vec::new();
    for _ in 0..1000 {
        let (done, waiting): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .partition(tokio::task::JoinHandle::is_finished);
        calls = waiting;
        for call in done {
            refused.push(
                call.await
                    .expect("task")
                    .expect_err("only the refused answer now"),
            );
        }
        if refused.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The queued ones still wait for the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(calls.iter().all(|call| !call.is_finished()), "eight wait");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(status), "USER_BUSY");
        let retry = tonic_types::StatusExt::get_details_retry_info(status).expect("RetryInfo");
        assert!(
            retry
                .retry_delay
                .is_some_and(|delay| delay > Duration::ZERO)
        );
    }

    blocker.batch_execute("COMMIT").await.expect("release");
    first.await.expect("task").expect("the first applies");
    for call in calls {
        call.await.expect("task").expect("a queued use applies");
    }
    assert_eq!(
        app.balance(1).await,
        100 - 9,
        "the refused ones spent nothing"
    );
    app.assert_ledger_matches_balance(1).await;
}
