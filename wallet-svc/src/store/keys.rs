//! What a batch knows of the user's keys: the ledger rows and refusals already under them,
//! read once the row lock is held, and the rows the batch decides to write, inserted in one
//! statement.

use std::collections::HashMap;

use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::wallet::{KeyRecord, Recorded, Refusal};

use super::StoreError;
use super::models::TransactionRow;
use super::schema::{wallet_refusals, wallet_transactions};
use crate::model::{MoneyMovement, MovementKind, MovementOutcome, TransactionKind};

/// Where a key's ledger row is: read from the database, or written by this batch (the index of
/// its insert, which happens before the batch commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    Stored(usize),
    New(usize),
}

/// What this batch knows of the user's keys: what the database held, and what the batch wrote.
#[derive(Default)]
pub struct Keys {
    /// Ledger rows read from the database.
    pub rows: Vec<TransactionRow>,
    /// Where each key's ledger row is.
    pub by_key: HashMap<String, Ledger>,
    pub refusals: HashMap<String, (Vec<u8>, Refusal)>,
    /// The refund of each `Use` (by its id) already made.
    pub refunds: HashMap<i64, Ledger>,
    /// Rows this batch decided to write, not inserted yet, and the `Use` each refund gives back.
    pub pending: Vec<(NewRow, Option<i64>)>,
    /// The rows of `pending` once inserted.
    pub inserted: Vec<TransactionRow>,
    /// Keys refused by this batch, to record (their fingerprint and refusal are in `refusals`).
    pub new_refusals: Vec<String>,
}

/// A ledger row to insert.
pub struct NewRow {
    pub kind: TransactionKind,
    pub amount: i64,
    pub balance_after: i64,
    pub key: String,
    pub fingerprint: Vec<u8>,
    pub reference: String,
}

/// A movement's answer, which may name a row not inserted yet.
pub enum Answer {
    Ready(MovementOutcome),
    Applied(Ledger),
    Replayed(Ledger),
}

/// The keys a batch reads: each movement's, and the `Use` key each refund names (as the caller
/// stores it, and unscoped).
pub fn key_names(batch: &[(&MoneyMovement, Vec<u8>)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(batch.len());
    for (movement, _) in batch {
        let scope = &movement.scope;
        names.push(scope.stored(&movement.key));
        names.extend(scope.unscoped(&movement.key));
        if let MovementKind::Refund { use_key } = &movement.kind {
            names.push(scope.stored(use_key));
            names.extend(scope.unscoped(use_key));
        }
    }
    names
}

/// The ledger rows under `names`.
pub async fn rows_under(
    conn: &AsyncPgConnection,
    user_id: i64,
    names: &[String],
) -> QueryResult<Vec<TransactionRow>> {
    wallet_transactions::table
        .filter(wallet_transactions::user_id.eq(user_id))
        .filter(wallet_transactions::idempotency_key.eq_any(names))
        .select(TransactionRow::as_select())
        .load(&mut &*conn)
        .await
}

/// The refusals recorded under `names`: key, fingerprint, reason.
pub async fn refusals_under(
    conn: &AsyncPgConnection,
    user_id: i64,
    names: &[String],
) -> QueryResult<Vec<(String, Vec<u8>, String)>> {
    wallet_refusals::table
        .filter(wallet_refusals::user_id.eq(user_id))
        .filter(wallet_refusals::idempotency_key.eq_any(names))
        .select((
            wallet_refusals::idempotency_key,
            wallet_refusals::request_hash,
            wallet_refusals::reason,
        ))
        .load::<(String, Vec<u8>, String)>(&mut &*conn)
        .await
}

/// Reads what the keys `names` already hold, and the refunds already made of those uses.
pub async fn load_keys(
    conn: &AsyncPgConnection,
    user_id: i64,
    names: &[String],
) -> Result<Keys, StoreError> {
    let (rows, refused) = futures::join!(
        rows_under(conn, user_id, names),
        refusals_under(conn, user_id, names),
    );
    keys_from(conn, rows?, refused?).await
}

/// What the batch knows from the rows and refusals under its keys, with the refunds already
/// made of the uses among them (read when there are any).
pub async fn keys_from(
    conn: &AsyncPgConnection,
    rows: Vec<TransactionRow>,
    refused: Vec<(String, Vec<u8>, String)>,
) -> Result<Keys, StoreError> {
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
            .load::<(TransactionRow, Option<i64>)>(&mut &*conn)
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

impl Keys {
    /// Takes the rows [`insert_pending`] inserted as the pending rows they are, matched by key
    /// (unique per user), not by the order rows come back in.
    pub fn take_inserted(&mut self, rows: Vec<TransactionRow>) -> Result<(), StoreError> {
        let mut inserted: HashMap<String, TransactionRow> = rows
            .into_iter()
            .map(|row| (row.idempotency_key.clone(), row))
            .collect();
        for at in self.inserted.len()..self.pending.len() {
            let (new, _) = &self.pending[at];
            let row = inserted.remove(&new.key).ok_or_else(|| {
                StoreError::Internal(format!("ledger row {:?} not returned", new.key))
            })?;
            self.inserted.push(row);
        }
        Ok(())
    }

    pub fn remember(&mut self, row: TransactionRow, refund_of: Option<i64>) {
        let at = Ledger::Stored(self.rows.len());
        self.by_key.insert(row.idempotency_key.clone(), at);
        if let Some(used) = refund_of {
            self.refunds.insert(used, at);
        }
        self.rows.push(row);
    }

    /// Records a row to insert under its key; it is inserted before the batch commits.
    pub fn write(&mut self, row: NewRow, refund_of: Option<i64>) -> Ledger {
        let at = Ledger::New(self.pending.len());
        self.by_key.insert(row.key.clone(), at);
        if let Some(used) = refund_of {
            self.refunds.insert(used, at);
        }
        self.pending.push((row, refund_of));
        at
    }

    pub fn row(&self, at: Ledger) -> Result<TransactionRow, StoreError> {
        match at {
            Ledger::Stored(at) => self.rows.get(at),
            Ledger::New(at) => self.inserted.get(at),
        }
        .cloned()
        .ok_or_else(|| StoreError::Internal(format!("ledger row {at:?} missing")))
    }

    pub fn fingerprint(&self, at: Ledger) -> Option<&[u8]> {
        match at {
            Ledger::Stored(at) => self.rows.get(at).map(|row| row.request_hash.as_slice()),
            Ledger::New(at) => self
                .pending
                .get(at)
                .map(|(row, _)| row.fingerprint.as_slice()),
        }
    }

    /// What `key` already holds: a ledger row, or a recorded refusal.
    pub fn prior(&self, key: &str) -> Result<Option<KeyRecord<Ledger>>, StoreError> {
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
    pub fn use_of(&self, key: &str) -> Result<Option<TransactionRow>, StoreError> {
        match self.by_key.get(key) {
            Some(&at) => {
                let row = self.row(at)?;
                Ok((row.kind == TransactionKind::Use.as_str()).then_some(row))
            }
            None => Ok(None),
        }
    }
}

pub fn refusal_name(refusal: Refusal) -> &'static str {
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
