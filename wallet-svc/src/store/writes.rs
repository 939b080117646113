//! What a batch writes of its keys before it commits: the ledger rows it decided, in one
//! insert (also mid-batch, when a refund must name a `Use` the batch itself made), and its
//! refusals, in another.

use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::StoreError;
use super::keys::{Keys, refusal_name};
use super::models::{NewRefusal, NewTransaction, TransactionRow};
use super::schema::{wallet_refusals, wallet_transactions};

/// Records the batch's refusals under their keys, in one statement.
pub async fn record_refusals(
    conn: &AsyncPgConnection,
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
            .execute(&mut &*conn)
            .await?;
    }
    Ok(())
}

/// Inserts the rows the batch has decided so far, in one statement.
pub async fn flush(
    conn: &AsyncPgConnection,
    user_id: i64,
    keys: &mut Keys,
) -> Result<(), StoreError> {
    let rows = insert_pending(conn, user_id, keys).await?;
    keys.take_inserted(rows)
}

/// Inserts the rows the batch has decided and not inserted yet, in one statement, and returns
/// them as inserted (for [`Keys::take_inserted`]).
pub async fn insert_pending(
    conn: &AsyncPgConnection,
    user_id: i64,
    keys: &Keys,
) -> QueryResult<Vec<TransactionRow>> {
    let pending = &keys.pending[keys.inserted.len()..];
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
    match values.as_slice() {
        [] => Ok(Vec::new()),
        [one] => {
            diesel::insert_into(wallet_transactions::table)
                .values(one)
                .returning(TransactionRow::as_returning())
                .get_results::<TransactionRow>(&mut &*conn)
                .await
        }
        _ => {
            diesel::insert_into(wallet_transactions::table)
                .values(values)
                .returning(TransactionRow::as_returning())
                .get_results::<TransactionRow>(&mut &*conn)
                .await
        }
    }
}
