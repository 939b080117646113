//! The wallet's rules, in terms of valid values. The decisions themselves are
//! [`protocol::wallet::decide`]; this layer names the operations, fingerprints requests and keeps
//! database work running to its end even when the caller goes away.

mod batching;

pub use batching::BATCH_SIZE;

use std::sync::Arc;

use crate::model::{
    MAX_BALANCE, MoneyMovement, MovementOutcome, PageCursor, PageSize, Refusal, Transaction,
    TransactionPage, UserId,
};
use crate::store::{Store, StoreError};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("insufficient balance")]
    InsufficientBalance,
    #[error("the balance would pass the limit of {MAX_BALANCE} points")]
    BalanceLimit,
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error("the user has no use with that idempotency key")]
    UnknownUse,
    #[error("too many requests of this user are waiting, retry later")]
    UserBusy,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for WalletError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => Self::Unavailable(detail),
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

/// The wallet service: balances, movements and the ledger.
#[derive(Debug, Clone)]
pub struct Wallets {
    store: Store,
    /// Coalesces concurrent movements of one user into one transaction; `None` gives each
    /// movement a transaction of its own.
    batcher: Option<Arc<batching::Batcher>>,
}

impl Wallets {
    /// `max_batch` bounds how many movements of one user share a transaction (1 turns
    /// batching off); a batch's transaction may take up to `batch_deadline`.
    pub fn new(store: Store, max_batch: usize, batch_deadline: std::time::Duration) -> Self {
        let batcher = (max_batch > 1).then(|| {
            Arc::new(batching::Batcher::new(
                store.clone(),
                max_batch,
                batch_deadline,
            ))
        });
        Self { store, batcher }
    }

    /// The user's balance; 0 for a user never seen.
    pub async fn balance(&self, user_id: UserId) -> Result<i64, WalletError> {
        Ok(self.store.balance(user_id).await?)
    }

    /// Applies a movement once per key: a replay answers the first outcome, refusals included.
    pub async fn apply(&self, movement: MoneyMovement) -> Result<Transaction, WalletError> {
        let store = self.store.clone();
        let span = tracing::info_span!(
            "apply_movement",
            user_id = movement.user_id.get(),
            idempotency_key = movement.key.as_str(),
        );
        let outcome = match &self.batcher {
            Some(batcher) => tracing::Instrument::instrument(batcher.apply(movement), span).await?,
            None => {
                // In a task of its own, the transaction commits or rolls back on its own terms
                // even if the caller cancels its call; a dropped future would leave that to the
                // pool.
                let applying = async move { store.apply_movement(&movement).await };
                shared::task::run_to_end(span, applying)
                    .await
                    .map_err(WalletError::Internal)??
            }
        };
        match outcome {
            MovementOutcome::Applied(transaction) | MovementOutcome::Replayed(transaction) => {
                Ok(transaction)
            }
            MovementOutcome::Refused(Refusal::InsufficientBalance) => {
                Err(WalletError::InsufficientBalance)
            }
            MovementOutcome::Refused(Refusal::BalanceLimit) => Err(WalletError::BalanceLimit),
            MovementOutcome::KeyReused => Err(WalletError::KeyReused),
            MovementOutcome::UnknownUse => Err(WalletError::UnknownUse),
        }
    }

    /// A page of the user's ledger, newest first.
    pub async fn transactions(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<TransactionPage, WalletError> {
        Ok(self.store.transactions(user_id, page_size, cursor).await?)
    }
}
