//! Postgres access: a batch of one user's money movements (often just one) is one transaction
//! that locks the user's wallet row, reads what their keys already hold, asks
//! [`protocol::wallet::decide`] about each movement in turn, and applies the answers.

mod models;
pub mod schema;

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use protocol::wallet::{Decision, KeyRecord, Movement, Recorded, RefundTarget, Refusal};
use shared::db::PgPool;
pub use shared::db::StoreError;

use crate::domain::{
    MoneyMovement, MovementKind, PageCursor, PageSize, Transaction, TransactionKind,
    TransactionPage, UserId,
};
use models::{NewRefusal, NewTransaction, TransactionRow};
use schema::{wallet_refusals, wallet_transactions, wallets};

/// How a movement ended.
#[derive(Debug)]
pub enum MovementOutcome {
    Applied(Transaction),
    /// The key's first outcome, answered again.
    Replayed(Transaction),
    Refused(Refusal),
    KeyReused,
    UnknownUse,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn balance(&self, user_id: UserId) -> Result<i64, StoreError> {
        let mut conn = self.pool.get().await?;
        let balance = wallets::table
            .find(user_id.get())
            .select(wallets::balance)
            .first::<i64>(&mut conn)
            .await
            .optional()?;
        Ok(balance.unwrap_or(0))
    }

    /// Applies one movement in one transaction under the wallet's row lock.
    pub async fn apply_movement(
        &self,
        movement: &MoneyMovement,
    ) -> Result<MovementOutcome, StoreError> {
        self.apply_movements(movement.user_id, std::slice::from_ref(movement))
            .await?
            .pop()
            .ok_or_else(|| StoreError::Internal("a movement went unanswered".to_owned()))
    }

    /// Applies movements of `user_id`, in order, in one transaction under the wallet's row
    /// lock: each is decided as if alone after the ones before it, with its own key and ledger
    /// row, and answered on its own (one's refusal does not fail the others).
    pub async fn apply_movements(
        &self,
        user_id: UserId,
        movements: &[MoneyMovement],
    ) -> Result<Vec<MovementOutcome>, StoreError> {
        if let Some(other) = movements
            .iter()
            .find(|movement| movement.user_id != user_id)
        {
            return Err(StoreError::Internal(format!(
                "a batch of user {user_id} holds a movement of user {}",
                other.user_id
            )));
        }
        let batch: Vec<(&MoneyMovement, Vec<u8>)> = movements
            .iter()
            .map(|movement| (movement, movement.fingerprint()))
            .collect();
        let mut conn = self.pool.get().await?;
        let applied = conn
            .transaction(async |conn| apply_batch(conn, user_id.get(), &batch).await)
            .await;
        match applied {
            Ok(outcomes) | Err(Abort::Answered(outcomes)) => Ok(outcomes),
            Err(Abort::Store(error)) => Err(error),
        }
    }

    pub async fn transactions(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<TransactionPage, StoreError> {
        let mut conn = self.pool.get().await?;
        let limit = i64::from(page_size.get());
        let mut query = wallet_transactions::table
            .filter(wallet_transactions::user_id.eq(user_id.get()))
            .order(wallet_transactions::id.desc())
            // One row more than asked tells whether another page follows.
            .limit(limit + 1)
            .select(TransactionRow::as_select())
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(wallet_transactions::id.lt(cursor.before_id));
        }
        let rows = query.load(&mut conn).await?;
        let (rows, next) =
            shared::values::page(rows, page_size, user_id, |row: &TransactionRow| row.id);
        let transactions = rows
            .into_iter()
            .map(Transaction::try_from)
            .collect::<Result<_, _>>()?;
        Ok(TransactionPage { transactions, next })
    }
}

/// Where a key's ledger row is: read from the database, or written by this batch (the index of
/// its insert, which happens before the batch commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledger {
    Stored(usize),
    New(usize),
}

/// What this batch knows of the user's keys: what the database held, and what the batch wrote.
#[derive(Default)]
struct Keys {
    /// Ledger rows read from the database.
    rows: Vec<TransactionRow>,
    /// Where each key's ledger row is.
    by_key: HashMap<String, Ledger>,
    refusals: HashMap<String, (Vec<u8>, Refusal)>,
    /// The refund of each `Use` (by its id) already made.
    refunds: HashMap<i64, Ledger>,
    /// Rows this batch decided to write, not inserted yet, and the `Use` each refund gives back.
    pending: Vec<(NewRow, Option<i64>)>,
    /// The rows of `pending` once inserted.
    inserted: Vec<TransactionRow>,
    /// Keys refused by this batch, to record (their fingerprint and refusal are in `refusals`).
    new_refusals: Vec<String>,
}

/// A ledger row to insert.
struct NewRow {
    kind: TransactionKind,
    amount: i64,
    balance_after: i64,
    key: String,
    fingerprint: Vec<u8>,
    reference: String,
}

/// A movement's answer, which may name a row not inserted yet.
enum Answer {
    Ready(MovementOutcome),
    Applied(Ledger),
    Replayed(Ledger),
}

/// Why a batch's transaction rolls back.
enum Abort {
    /// Nothing to write: the batch is answered with these outcomes, and the wallet row the
    /// transaction created to lock is not kept.
    Answered(Vec<MovementOutcome>),
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<diesel::result::Error> for Abort {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Applies `batch` (movements of one user, in order, with their fingerprints) in one
/// transaction: one lock of the wallet row, the keys read in a few queries, each movement decided
/// in turn on the running balance (a later one sees what an earlier one did: its key, its
/// debit), the new ledger rows written in one insert, the balance once.
///
/// Every batch holds the row lock before it reads a key, a first movement of a new user and a
/// batch of refunds included: a key read without it could miss a movement that commits
/// meanwhile and is then decided on a stale balance.
async fn apply_batch(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    batch: &[(&MoneyMovement, Vec<u8>)],
) -> Result<Vec<MovementOutcome>, Abort> {
    let refunds_only = batch
        .iter()
        .all(|(movement, _)| matches!(movement.kind, MovementKind::Refund { .. }));
    let Some(mut balance) = lock_wallet(conn, user_id, refunds_only).await? else {
        // A wallet this transaction had to create holds no use: every refund names none.
        let unknown = batch.iter().map(|_| MovementOutcome::UnknownUse).collect();
        return Err(Abort::Answered(unknown));
    };
    let before = balance;
    let mut keys = load_keys(conn, user_id, batch).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for (movement, fingerprint) in batch {
        let answer = decide_one(
            conn,
            user_id,
            &mut keys,
            &mut balance,
            movement,
            fingerprint,
        )
        .await?;
        answers.push(answer);
    }
    flush(conn, user_id, &mut keys).await?;
    record_refusals(conn, user_id, &keys).await?;
    if before != balance || !keys.pending.is_empty() {
        let updated = SetBalance { user_id, balance }.execute(conn).await?;
        if updated != 1 {
            return Err(StoreError::Internal(format!("wallet {user_id} vanished")).into());
        }
    }
    answers
        .into_iter()
        .map(|answer| match answer {
            Answer::Ready(outcome) => Ok(outcome),
            Answer::Applied(at) => Ok(MovementOutcome::Applied(keys.row(at)?.try_into()?)),
            Answer::Replayed(at) => Ok(MovementOutcome::Replayed(keys.row(at)?.try_into()?)),
        })
        .collect::<Result<_, StoreError>>()
        .map_err(Abort::Store)
}

/// Decides one movement of a batch against what the batch knows, and records what it writes.
async fn decide_one(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    keys: &mut Keys,
    balance: &mut i64,
    movement: &MoneyMovement,
    fingerprint: &[u8],
) -> Result<Answer, StoreError> {
    let (request, refund_of) = match &movement.kind {
        MovementKind::Charge { amount } => (
            Movement::Charge {
                amount: amount.get(),
            },
            None,
        ),
        MovementKind::Use { amount, .. } => (
            Movement::Use {
                amount: amount.get(),
            },
            None,
        ),
        MovementKind::Refund { use_key } => {
            if matches!(keys.by_key.get(use_key.as_str()), Some(Ledger::New(_))) {
                // The Use was made by this batch: its id is needed to name it.
                flush(conn, user_id, keys).await?;
            }
            match keys.use_of(use_key.as_str())? {
                Some(used) => {
                    let target = RefundTarget {
                        amount: used.amount,
                        refunded_by: keys.refunds.get(&used.id).copied(),
                    };
                    (
                        Movement::Refund {
                            target: Some(target),
                        },
                        Some(used.id),
                    )
                }
                None => (Movement::Refund { target: None }, None),
            }
        }
    };
    let prior = keys.prior(movement.key.as_str())?;
    Ok(
        match protocol::wallet::decide(*balance, prior, fingerprint, request) {
            Decision::Apply {
                delta,
                balance_after,
            } => {
                *balance = balance_after;
                let (kind, reference) = match &movement.kind {
                    MovementKind::Charge { .. } => (TransactionKind::Charge, ""),
                    MovementKind::Use { reference, .. } => {
                        (TransactionKind::Use, reference.as_str())
                    }
                    MovementKind::Refund { use_key } => (TransactionKind::Refund, use_key.as_str()),
                };
                let written = keys.write(
                    NewRow {
                        kind,
                        amount: delta.abs(),
                        balance_after,
                        key: movement.key.as_str().to_owned(),
                        fingerprint: fingerprint.to_vec(),
                        reference: reference.to_owned(),
                    },
                    refund_of,
                );
                Answer::Applied(written)
            }
            Decision::Refuse(refusal) => {
                // Written with the batch's other refusals, before it commits.
                keys.refusals.insert(
                    movement.key.as_str().to_owned(),
                    (fingerprint.to_vec(), refusal),
                );
                keys.new_refusals.push(movement.key.as_str().to_owned());
                Answer::Ready(MovementOutcome::Refused(refusal))
            }
            Decision::Replay(at) => Answer::Replayed(at),
            Decision::ReplayRefusal(refusal) => Answer::Ready(MovementOutcome::Refused(refusal)),
            Decision::KeyReused => Answer::Ready(MovementOutcome::KeyReused),
            Decision::UnknownUse => Answer::Ready(MovementOutcome::UnknownUse),
        },
    )
}

/// Reads what the batch's keys (and the keys its refunds name) already hold, and the refunds
/// already made of those uses.
async fn load_keys(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    batch: &[(&MoneyMovement, Vec<u8>)],
) -> Result<Keys, StoreError> {
    let mut names: Vec<&str> = Vec::with_capacity(batch.len());
    for (movement, _) in batch {
        names.push(movement.key.as_str());
        if let MovementKind::Refund { use_key } = &movement.kind {
            names.push(use_key.as_str());
        }
    }
    let rows = wallet_transactions::table
        .filter(wallet_transactions::user_id.eq(user_id))
        .filter(wallet_transactions::idempotency_key.eq_any(&names))
        .select(TransactionRow::as_select())
        .load(conn)
        .await?;
    let refused = wallet_refusals::table
        .filter(wallet_refusals::user_id.eq(user_id))
        .filter(wallet_refusals::idempotency_key.eq_any(&names))
        .select((
            wallet_refusals::idempotency_key,
            wallet_refusals::request_hash,
            wallet_refusals::reason,
        ))
        .load::<(String, Vec<u8>, String)>(conn)
        .await?;
    let uses: Vec<i64> = rows
        .iter()
        .filter(|row| row.kind == TransactionKind::Use.as_str())
        .map(|row| row.id)
        .collect();
    let refunds = if uses.is_empty() {
        Vec::new()
    } else {
        wallet_transactions::table
            .filter(wallet_transactions::refund_of.eq_any(&uses))
            .select((TransactionRow::as_select(), wallet_transactions::refund_of))
            .load::<(TransactionRow, Option<i64>)>(conn)
            .await?
    };
    let mut keys = Keys::default();
    for row in rows {
        keys.remember(row, None);
    }
    for (row, refund_of) in refunds {
        if !keys.by_key.contains_key(&row.idempotency_key) {
            keys.remember(row, refund_of);
        } else if let (Some(used), Some(&at)) = (refund_of, keys.by_key.get(&row.idempotency_key)) {
            keys.refunds.insert(used, at);
        }
    }
    for (key, fingerprint, reason) in refused {
        let refusal = parse_refusal(&reason)
            .ok_or_else(|| StoreError::Internal(format!("unknown refusal {reason:?}")))?;
        keys.refusals.insert(key, (fingerprint, refusal));
    }
    Ok(keys)
}

/// Records the batch's refusals under their keys, in one statement.
async fn record_refusals(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    keys: &Keys,
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(keys.new_refusals.len());
    for key in &keys.new_refusals {
        let (fingerprint, refusal) = keys
            .refusals
            .get(key)
            .ok_or_else(|| StoreError::Internal(format!("refusal of {key:?} lost")))?;
        values.push(NewRefusal {
            user_id,
            idempotency_key: key,
            request_hash: fingerprint,
            reason: refusal_name(*refusal),
        });
    }
    if !values.is_empty() {
        diesel::insert_into(wallet_refusals::table)
            .values(values)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// `UPDATE wallets SET balance = ..., updated_at = now() WHERE user_id = ...`, as a query type
/// of its own: diesel's update statements are parsed anew each time, this one is prepared once
/// per connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct SetBalance {
    user_id: i64,
    balance: i64,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for SetBalance {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("UPDATE wallets SET balance = ");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.balance)?;
        out.push_sql(", updated_at = now() WHERE user_id = ");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.user_id)?;
        Ok(())
    }
}

/// Inserts the rows the batch has decided so far, in one statement.
async fn flush(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    keys: &mut Keys,
) -> Result<(), StoreError> {
    let first = keys.inserted.len();
    let pending = &keys.pending[first..];
    if pending.is_empty() {
        return Ok(());
    }
    let values: Vec<NewTransaction<'_>> = pending
        .iter()
        .map(|(row, refund_of)| NewTransaction {
            user_id,
            kind: row.kind.as_str(),
            amount: row.amount,
            balance_after: row.balance_after,
            idempotency_key: &row.key,
            request_hash: &row.fingerprint,
            reference: &row.reference,
            refund_of: *refund_of,
        })
        .collect();
    // One row (every movement of a user without contention) is a statement diesel prepares
    // once per connection; a multi-row insert is parsed each time.
    let rows = match values.as_slice() {
        [one] => {
            diesel::insert_into(wallet_transactions::table)
                .values(one)
                .returning(TransactionRow::as_returning())
                .get_results::<TransactionRow>(conn)
                .await?
        }
        _ => {
            diesel::insert_into(wallet_transactions::table)
                .values(values)
                .returning(TransactionRow::as_returning())
                .get_results::<TransactionRow>(conn)
                .await?
        }
    };
    let mut inserted: HashMap<String, TransactionRow> = rows
        .into_iter()
        .map(|row| (row.idempotency_key.clone(), row))
        .collect();
    // Matched by key (unique per user), not by the order rows come back in.
    for at in first..keys.pending.len() {
        let (new, _) = &keys.pending[at];
        let row = inserted.remove(&new.key).ok_or_else(|| {
            StoreError::Internal(format!("ledger row {:?} not returned", new.key))
        })?;
        keys.inserted.push(row);
    }
    Ok(())
}

impl Keys {
    fn remember(&mut self, row: TransactionRow, refund_of: Option<i64>) {
        let at = Ledger::Stored(self.rows.len());
        self.by_key.insert(row.idempotency_key.clone(), at);
        if let Some(used) = refund_of {
            self.refunds.insert(used, at);
        }
        self.rows.push(row);
    }

    /// Records a row to insert under its key; it is inserted before the batch commits.
    fn write(&mut self, row: NewRow, refund_of: Option<i64>) -> Ledger {
        let at = Ledger::New(self.pending.len());
        self.by_key.insert(row.key.clone(), at);
        if let Some(used) = refund_of {
            self.refunds.insert(used, at);
        }
        self.pending.push((row, refund_of));
        at
    }

    fn row(&self, at: Ledger) -> Result<TransactionRow, StoreError> {
        match at {
            Ledger::Stored(at) => self.rows.get(at),
            Ledger::New(at) => self.inserted.get(at),
        }
        .cloned()
        .ok_or_else(|| StoreError::Internal(format!("ledger row {at:?} missing")))
    }

    fn fingerprint(&self, at: Ledger) -> Option<&[u8]> {
        match at {
            Ledger::Stored(at) => self.rows.get(at).map(|row| row.request_hash.as_slice()),
            Ledger::New(at) => self
                .pending
                .get(at)
                .map(|(row, _)| row.fingerprint.as_slice()),
        }
    }

    /// What `key` already holds: a ledger row, or a recorded refusal.
    fn prior(&self, key: &str) -> Result<Option<KeyRecord<Ledger>>, StoreError> {
        if let Some(&at) = self.by_key.get(key) {
            let fingerprint = self
                .fingerprint(at)
                .ok_or_else(|| StoreError::Internal(format!("ledger row {at:?} missing")))?;
            return Ok(Some(KeyRecord {
                request_fingerprint: fingerprint.to_vec(),
                outcome: Recorded::Applied(at),
            }));
        }
        Ok(self
            .refusals
            .get(key)
            .map(|(fingerprint, refusal)| KeyRecord {
                request_fingerprint: fingerprint.clone(),
                outcome: Recorded::Refused(*refusal),
            }))
    }

    /// The `Use` made under `key`, once inserted.
    fn use_of(&self, key: &str) -> Result<Option<TransactionRow>, StoreError> {
        match self.by_key.get(key) {
            Some(&at) => {
                let row = self.row(at)?;
                Ok((row.kind == TransactionKind::Use.as_str()).then_some(row))
            }
            None => Ok(None),
        }
    }
}

/// Locks the user's wallet row until the transaction ends and returns its balance, creating
/// the row first when it does not exist yet. `None` when `refunds_only` and this transaction
/// created it: a new wallet has no use to refund, so the caller answers and rolls back.
async fn lock_wallet(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    refunds_only: bool,
) -> Result<Option<i64>, StoreError> {
    let locked = || {
        wallets::table
            .find(user_id)
            .select(wallets::balance)
            .for_update()
    };
    if let Some(balance) = locked().first::<i64>(conn).await.optional()? {
        return Ok(Some(balance));
    }
    // A concurrent first movement of the same user may be inserting it: the insert waits for
    // that transaction to end and then does nothing, and the lock below sees its row. Either
    // way, from here on this transaction holds the row's lock.
    let created = diesel::insert_into(wallets::table)
        .values(wallets::user_id.eq(user_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if created == 1 && refunds_only {
        return Ok(None);
    }
    Ok(Some(locked().first::<i64>(conn).await?))
}

fn refusal_name(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::InsufficientBalance => "INSUFFICIENT_BALANCE",
        Refusal::BalanceLimit => "BALANCE_LIMIT",
    }
}

fn parse_refusal(name: &str) -> Option<Refusal> {
    match name {
        "INSUFFICIENT_BALANCE" => Some(Refusal::InsufficientBalance),
        "BALANCE_LIMIT" => Some(Refusal::BalanceLimit),
        _ => None,
    }
}
