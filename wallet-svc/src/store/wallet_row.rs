//! The user's wallet row: created when a batch finds it missing, locked (`FOR UPDATE`) by
//! every batch before it reads a key, its balance set once per batch.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::StoreError;
use super::schema::wallets;

/// Creates the user's wallet row, which the transaction found missing, and locks it until the
/// transaction ends: its balance. A concurrent first movement of the same user may be inserting
/// it: the insert waits for that transaction to end and then does nothing, and the lock below
/// sees its row. Either way, from here on this transaction holds the row's lock. `None` when
/// `refunds_only` and this transaction created it: a new wallet has no use to refund, so the
/// caller answers and rolls back.
pub async fn create_wallet(
    conn: &AsyncPgConnection,
    user_id: i64,
    refunds_only: bool,
) -> Result<Option<i64>, StoreError> {
    let created = diesel::insert_into(wallets::table)
        .values(wallets::user_id.eq(user_id))
        .on_conflict_do_nothing()
        .execute(&mut &*conn)
        .await?;
    if created == 1 && refunds_only {
        return Ok(None);
    }
    Ok(Some(
        LockWallet { user_id }
            .get_result::<i64>(&mut &*conn)
            .await?,
    ))
}

/// `SELECT balance FROM wallets WHERE user_id = ... FOR UPDATE`: locks the user's wallet row
/// until the transaction ends, and reads its balance. A query type of its own, prepared once
/// per connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub struct LockWallet {
    pub user_id: i64,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for LockWallet {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("SELECT balance FROM wallets WHERE user_id = ");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.user_id)?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}

impl diesel::query_builder::Query for LockWallet {
    type SqlType = diesel::sql_types::BigInt;
}

/// `UPDATE wallets SET balance = ..., updated_at = now() WHERE user_id = ...`, as a query type
/// of its own: diesel's update statements are parsed anew each time, this one is prepared once
/// per connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub struct SetBalance {
    pub user_id: i64,
    pub balance: i64,
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
