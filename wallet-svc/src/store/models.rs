//! Rows as diesel reads and writes them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::StoreError;
use super::schema::{wallet_refusals, wallet_transactions};
use crate::model::{Transaction, TransactionKind, shown_key};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = wallet_transactions, check_for_backend(diesel::pg::Pg))]
pub struct TransactionRow {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<TransactionRow> for Transaction {
    type Error = StoreError;

    fn try_from(row: TransactionRow) -> Result<Self, Self::Error> {
        let kind = TransactionKind::parse(&row.kind).ok_or_else(|| {
            StoreError::Internal(format!("unknown transaction kind {:?}", row.kind))
        })?;
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            kind,
            amount: row.amount,
            balance_after: row.balance_after,
            idempotency_key: shown_key(&row.idempotency_key).to_owned(),
            reference: row.reference,
            created_at: row.created_at,
        })
    }
}

/// `refund_of` is written as a bound NULL rather than `DEFAULT`, which keeps a one-row insert
/// a statement diesel prepares once per connection.
#[derive(Debug, Insertable)]
#[diesel(table_name = wallet_transactions, treat_none_as_default_value = false)]
pub struct NewTransaction<'a> {
    pub user_id: i64,
    pub kind: &'a str,
    pub amount: i64,
    pub balance_after: i64,
    pub idempotency_key: &'a str,
    pub request_hash: &'a [u8],
    pub reference: &'a str,
    pub refund_of: Option<i64>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = wallet_refusals)]
pub struct NewRefusal<'a> {
    pub user_id: i64,
    pub idempotency_key: &'a str,
    pub request_hash: &'a [u8],
    pub reason: &'a str,
}
