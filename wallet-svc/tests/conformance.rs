//! Conformance of the wallet's store with the protocol model: a generated sequence of charges,
//! uses and refunds (with replays, reused keys, overdrafts and the balance limit) is applied to
//! one user's wallet in real Postgres, in batches of a generated size (one transaction each),
//! and one by one to the model's wallet (`protocol_model::wallet`); each answer, and at the end
//! the balance, the ledger and the recorded refusals, must be the same: a batch does exactly
//! what its movements do one after another.

use std::collections::HashMap;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use protocol::wallet::{MAX_AMOUNT, MAX_BALANCE};
use protocol_model::key::Key;
use protocol_model::wallet::{Outcome, Request, Wallets};
use shared::db::PgPool;
use shared::test_support::TestDatabase;
use wallet_svc::model::{
    IdempotencyKey, KeyScope, MoneyMovement, MovementKind, MovementOutcome, Points, Reference,
    Refusal, UserId, shown_key,
};
use wallet_svc::startup::MIGRATIONS;
use wallet_svc::store::Store;

/// Sequences run; each is a few movements on a wallet of its own.
const CASES: u32 = 300;
/// Few keys, so that replays and reuses are common.
const KEYS: [&str; 3] = ["k1", "k2", "k3"];

#[derive(Debug, Clone)]
enum Step {
    Charge { key: usize, amount: i64 },
    Use { key: usize, amount: i64 },
    Refund { key: usize, use_key: usize },
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![Just(1), Just(3), Just(10), Just(MAX_AMOUNT)]
}

fn step() -> impl Strategy<Value = Step> {
    let key = 0..KEYS.len();
    prop_oneof![
        1 => (key.clone(), amount()).prop_map(|(key, amount)| Step::Charge { key, amount }),
        2 => (key.clone(), amount()).prop_map(|(key, amount)| Step::Use { key, amount }),
        1 => (key.clone(), key).prop_map(|(key, use_key)| Step::Refund { key, use_key }),
    ]
}

/// A starting balance: none (no wallet row yet), a little, or just under the limit.
fn initial() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0), Just(5), Just(MAX_BALANCE - 2)]
}

fn movement(user_id: i64, step: &Step) -> MoneyMovement {
    let key = |at: usize| IdempotencyKey::parse(KEYS[at].to_owned()).expect("a key");
    let points = |amount: i64| Points::parse(amount).expect("points");
    let (at, kind) = match *step {
        Step::Charge { key, amount } => (
            key,
            MovementKind::Charge {
                amount: points(amount),
            },
        ),
        Step::Use { key, amount } => (
            key,
            MovementKind::Use {
                amount: points(amount),
                reference: Reference::parse("conformance".to_owned()).expect("a reference"),
            },
        ),
        Step::Refund { key, use_key: used } => (
            key,
            MovementKind::Refund {
                use_key: IdempotencyKey::parse(KEYS[used].to_owned()).expect("a key"),
            },
        ),
    };
    MoneyMovement {
        user_id: UserId::parse(user_id).expect("a user"),
        key: key(at),
        // Every step is one caller's, whose keys are stored under its identity: the model's
        // keys are those of one caller (a key of another caller is another key altogether).
        scope: KeyScope::of("spiffe://ticketing.local/reservation-svc".to_owned(), true),
        kind,
    }
}

fn request(step: &Step) -> (Key, Request) {
    match *step {
        Step::Charge { key, amount } => (Key::new(KEYS[key]), Request::Charge { amount }),
        Step::Use { key, amount } => (Key::new(KEYS[key]), Request::Use { amount }),
        Step::Refund { key, use_key } => (
            Key::new(KEYS[key]),
            Request::Refund {
                use_key: Key::new(KEYS[use_key]),
            },
        ),
    }
}

/// A wallet's rows as the comparison sees them.
#[derive(Debug, PartialEq, Eq)]
struct Rows {
    balance: i64,
    /// (key, delta, key of the use it refunds)
    ledger: Vec<(String, i64, Option<String>)>,
    /// (key, reason)
    refusals: Vec<(String, String)>,
}

fn model_rows(wallets: &Wallets) -> Rows {
    let ledger = &wallets.ledger;
    let mut refusals: Vec<(String, String)> = wallets
        .refusals
        .iter()
        .map(|refused| {
            let reason = match refused.refusal {
                Refusal::InsufficientBalance => "INSUFFICIENT_BALANCE",
                Refusal::BalanceLimit => "BALANCE_LIMIT",
            };
            (refused.key.to_string(), reason.to_owned())
        })
        .collect();
    refusals.sort();
    Rows {
        balance: wallets.balances[0],
        ledger: ledger
            .iter()
            .map(|entry| {
                let refunded = entry.refund_of.map(|used| ledger[used].key.to_string());
                (entry.key.to_string(), entry.delta, refunded)
            })
            .collect(),
        refusals,
    }
}

async fn stored_rows(pool: &PgPool, user_id: i64) -> Rows {
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
        #[diesel(sql_type = BigInt)]
        delta: i64,
        #[diesel(sql_type = Nullable<Text>)]
        refunds: Option<String>,
    }
    #[derive(QueryableByName)]
    struct Refused {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
        #[diesel(sql_type = Text)]
        reason: String,
    }
    #[derive(QueryableByName)]
    struct Balance {
        #[diesel(sql_type = BigInt)]
        balance: i64,
    }
    let mut conn = pool.get().await.expect("a connection");
    let ledger = diesel::sql_query(format!(
        "SELECT t.idempotency_key, t.delta, u.idempotency_key AS refunds \
         FROM wallet_transactions t LEFT JOIN wallet_transactions u ON u.id = t.refund_of \
         WHERE t.user_id = {user_id} ORDER BY t.id"
    ))
    .load::<Entry>(&mut conn)
    .await
    .expect("the ledger");
    let refusals = diesel::sql_query(format!(
        "SELECT idempotency_key, reason FROM wallet_refusals \
         WHERE user_id = {user_id} ORDER BY idempotency_key"
    ))
    .load::<Refused>(&mut conn)
    .await
    .expect("the refusals");
    let balance = diesel::sql_query(format!(
        "SELECT COALESCE((SELECT balance FROM wallets WHERE user_id = {user_id}), 0) AS balance"
    ))
    .get_result::<Balance>(&mut conn)
    .await
    .expect("the balance")
    .balance;
    // Keys are stored under their caller's identity; the model's are the caller's own.
    let shown = |stored: String| shown_key(&stored).to_owned();
    Rows {
        balance,
        ledger: ledger
            .into_iter()
            .map(|entry| {
                let refunds = entry.refunds.map(shown);
                (shown(entry.idempotency_key), entry.delta, refunds)
            })
            .collect(),
        refusals: refusals
            .into_iter()
            .map(|refused| (shown(refused.idempotency_key), refused.reason))
            .collect(),
    }
}

/// Runs `steps` on a fresh wallet of `user_id` in both, the store taking them `batch` at a time
/// in one transaction each; fails at the first differing answer.
async fn run_both(
    store: &Store,
    pool: &PgPool,
    user_id: i64,
    initial: i64,
    steps: &[Step],
    batch: usize,
) -> Result<(Rows, Rows), TestCaseError> {
    if initial > 0 {
        let mut conn = pool.get().await.expect("a connection");
        conn.batch_execute(&format!(
            "INSERT INTO wallets (user_id, balance) VALUES ({user_id}, {initial})"
        ))
        .await
        .expect("the wallet");
    }
    let mut model = Wallets::new(vec![initial]);
    // The model's ledger rows by the ids the database gave them.
    let mut ids: HashMap<usize, i64> = HashMap::new();
    for steps in steps.chunks(batch) {
        let movements: Vec<MoneyMovement> =
            steps.iter().map(|step| movement(user_id, step)).collect();
        let outcomes = store
            .apply_movements(UserId::parse(user_id).expect("a user"), &movements)
            .await
            .expect("the store answers");
        prop_assert_eq!(outcomes.len(), steps.len(), "one answer per movement");
        for (step, actual) in steps.iter().zip(&outcomes) {
            let (key, request) = request(step);
            let expected = model.apply(0, key, request, None, false);
            let same = match (expected, actual) {
                (Outcome::Applied { entry }, MovementOutcome::Applied(transaction)) => {
                    ids.insert(entry, transaction.id).is_none()
                }
                (Outcome::Applied { entry }, MovementOutcome::Replayed(transaction)) => {
                    ids.get(&entry) == Some(&transaction.id)
                }
                (Outcome::Refused(expected), MovementOutcome::Refused(actual)) => {
                    expected == *actual
                }
                (Outcome::Rejected, MovementOutcome::KeyReused | MovementOutcome::UnknownUse) => {
                    true
                }
                _ => false,
            };
            prop_assert!(
                same,
                "{step:?}: the model says {expected:?}, the store {actual:?}"
            );
        }
    }
    Ok((model_rows(&model), stored_rows(pool, user_id).await))
}

#[test]
fn every_wallet_movement_does_what_the_model_does() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let db = runtime.block_on(TestDatabase::create(
        "wallet_conformance",
        MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    ));
    let pool = db.pool("conformance");
    let store = Store::new(pool.clone());
    let users = std::sync::atomic::AtomicI64::new(1);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(initial(), prop::collection::vec(step(), 1..12), 1..=8usize),
            |(initial, steps, batch)| {
                let user_id = users.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (model, stored) =
                    runtime.block_on(run_both(&store, &pool, user_id, initial, &steps, batch))?;
                prop_assert_eq!(model, stored, "rows after {:?}", steps);
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("the wallet store and the model differ: {failure}"));
}
