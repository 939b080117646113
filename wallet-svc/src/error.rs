//! The one place a domain error becomes a gRPC status, and where internal errors are logged.

use shared::error::{Reason, status_with_reason};
use tonic::{Code, Status};

use crate::domain::WalletError;

/// When a client told `USER_BUSY` should try again: about a batch's time, by when the user's
/// queue has moved.
const USER_BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

impl From<WalletError> for Status {
    fn from(error: WalletError) -> Self {
        let message = error.to_string();
        match error {
            WalletError::InsufficientBalance => status_with_reason(
                Code::FailedPrecondition,
                Reason::InsufficientBalance,
                message,
            ),
            WalletError::BalanceLimit => {
                status_with_reason(Code::FailedPrecondition, Reason::BalanceLimit, message)
            }
            WalletError::KeyReused => {
                status_with_reason(Code::AlreadyExists, Reason::IdempotencyKeyReused, message)
            }
            WalletError::UnknownUse => {
                status_with_reason(Code::NotFound, Reason::UnknownUse, message)
            }
            WalletError::UserBusy => shared::error::status_with_retry(
                Code::ResourceExhausted,
                Reason::UserBusy,
                message,
                USER_BUSY_RETRY,
            ),
            WalletError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Status::unavailable("the database is unavailable, retry later")
            }
            WalletError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
