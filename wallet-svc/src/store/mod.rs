//! Postgres access: a batch of one user's money movements (often just one) is one transaction
//! that locks the user's wallet row, reads what their keys already hold, asks
//! [`protocol::wallet::decide`] about each movement in turn, and applies the answers.

mod batch;
mod keys;
mod models;
pub mod schema;
mod single_use;
mod wallet_row;
mod writes;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::PgPool;
pub use shared::db::StoreError;

use crate::model::{
    MoneyMovement, MovementOutcome, Page, PageCursor, PageSize, Transaction, TransactionPage,
    UserId,
};
use batch::{Abort, apply_batch};
use models::TransactionRow;
use schema::{wallet_transactions, wallets};

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
        let mut conn = shared::pipeline::Checkout::new(self.pool.get().await?);
        let applied = apply_batch(&mut conn, user_id.get(), &batch).await;
        if matches!(applied, Err(Abort::Store(_))) {
            shared::pipeline::roll_back_if_open(&mut conn).await;
        }
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
        let mut query = wallet_transactions::table
            .filter(wallet_transactions::user_id.eq(user_id.get()))
            .order(wallet_transactions::id.desc())
            .limit(page_size.query_limit())
            .select(TransactionRow::as_select())
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(wallet_transactions::id.lt(cursor.last));
        }
        let rows = query.load(&mut conn).await?;
        let transactions = rows
            .into_iter()
            .map(Transaction::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Page::cut(
            transactions,
            page_size,
            user_id.get(),
            |transaction: &Transaction| transaction.id,
        ))
    }
}
