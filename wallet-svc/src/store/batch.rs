//! One batch of a user's movements, in one transaction under the wallet's row lock: lock (or
//! create and lock) the row, read the keys, decide each movement in turn, write the ledger
//! rows, the refusals and the balance.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::wallet::{Decision, Movement, RefundTarget};

use super::StoreError;
use shared::pipeline::{self, Begin};

use super::keys::{
    Answer, Keys, Ledger, NewRow, key_names, keys_from, load_keys, refusals_under, rows_under,
};
use super::single_use::use_if_fresh;
use super::wallet_row::{LockWallet, SetBalance, create_wallet};
use super::writes::{flush, insert_pending, record_refusals};
use crate::model::{MoneyMovement, MovementKind, MovementOutcome, TransactionKind};

/// Why a batch's transaction rolls back.
pub enum Abort {
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
///
/// A batch of one `Use` under a fresh key that the balance covers takes one round trip
/// ([`super::single_use`]); when that writes nothing, the full transaction decides.
///
/// Two round trips for a wallet that exists ([`shared::pipeline`]): `BEGIN`, the row's lock and
/// the reads of the keys sent together (Postgres runs them in order, so the reads begin once
/// the lock is held), then the writes sent with `COMMIT`. For a wallet not there yet, the keys
/// read beside the lock are dropped and read again once the created row is locked.
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    batch: &[(&MoneyMovement, Vec<u8>)],
) -> Result<Vec<MovementOutcome>, Abort> {
    if let [(movement, fingerprint)] = batch
        && let MovementKind::Use { amount, reference } = &movement.kind
        && let Some(row) = use_if_fresh(
            conn,
            user_id,
            movement,
            amount.get(),
            reference.as_str(),
            fingerprint,
        )
        .await?
    {
        return Ok(vec![MovementOutcome::Applied(row.try_into()?)]);
    }
    let refunds_only = batch
        .iter()
        .all(|(movement, _)| matches!(movement.kind, MovementKind::Refund { .. }));
    let names = key_names(batch);
    pipeline::opening(conn)?;
    let shared = &*conn;
    let (begun, locked, rows, refused) = futures::join!(
        Begin.execute(&mut &*shared),
        LockWallet { user_id }.get_result::<i64>(&mut &*shared),
        rows_under(shared, user_id, &names),
        refusals_under(shared, user_id, &names),
    );
    // On an error the transaction is left open: the pool closes the connection.
    begun?;
    let (mut balance, mut keys) = match locked.optional()? {
        Some(balance) => (balance, keys_from(conn, rows?, refused?).await?),
        None => {
            let Some(balance) = create_wallet(conn, user_id, refunds_only).await? else {
                // A wallet this transaction had to create holds no use: every refund names
                // none. The row is not kept.
                pipeline::rollback(conn).await?;
                let unknown = batch.iter().map(|_| MovementOutcome::UnknownUse).collect();
                return Err(Abort::Answered(unknown));
            };
            (balance, load_keys(conn, user_id, &names).await?)
        }
    };
    let before = balance;
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
    let set_balance =
        (before != balance || !keys.pending.is_empty()).then_some(SetBalance { user_id, balance });
    let written = pipeline::commit_with(conn, async |conn| {
        let (inserted, refusals, updated) = futures::join!(
            insert_pending(conn, user_id, &keys),
            record_refusals(conn, user_id, &keys),
            async {
                match set_balance {
                    Some(set) => set.execute(&mut &*conn).await.map(Some),
                    None => Ok(None),
                }
            },
        );
        Ok((inserted, refusals, updated))
    })
    .await?;
    let (inserted, refusals, updated) = written;
    keys.take_inserted(inserted?)?;
    refusals?;
    if updated? == Some(0) {
        return Err(StoreError::Internal(format!("wallet {user_id} vanished")).into());
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
    conn: &AsyncPgConnection,
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
            // The caller's own Use under that key, else (for a payment service) one made
            // before keys had owners.
            let scope = &movement.scope;
            let use_key = std::iter::once(scope.stored(use_key))
                .chain(scope.unscoped(use_key))
                .find(|key| keys.by_key.contains_key(key))
                .unwrap_or_else(|| scope.stored(use_key));
            if matches!(keys.by_key.get(&use_key), Some(Ledger::New(_))) {
                // The Use was made by this batch: its id is needed to name it.
                flush(conn, user_id, keys).await?;
            }
            match keys.use_of(&use_key)? {
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
    let key = movement.scope.stored(&movement.key);
    let prior = match keys.prior(&key)? {
        Some(prior) => Some(prior),
        None => match movement.scope.unscoped(&movement.key) {
            Some(unscoped) => keys.prior(&unscoped)?,
            None => None,
        },
    };
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
                        key,
                        fingerprint: fingerprint.to_vec(),
                        reference: reference.to_owned(),
                    },
                    refund_of,
                );
                Answer::Applied(written)
            }
            Decision::Refuse(refusal) => {
                // Written with the batch's other refusals, before it commits.
                keys.refusals
                    .insert(key.clone(), (fingerprint.to_vec(), refusal));
                keys.new_refusals.push(key);
                Answer::Ready(MovementOutcome::Refused(refusal))
            }
            Decision::Replay(at) => Answer::Replayed(at),
            Decision::ReplayRefusal(refusal) => Answer::Ready(MovementOutcome::Refused(refusal)),
            Decision::KeyReused => Answer::Ready(MovementOutcome::KeyReused),
            Decision::UnknownUse => Answer::Ready(MovementOutcome::UnknownUse),
            Decision::Overflow => {
                return Err(StoreError::Internal(format!(
                    "the balance of user {user_id} cannot hold the refund"
                )));
            }
        },
    )
}
