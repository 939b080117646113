//! The one place a domain error becomes a gRPC status, and where internal errors are logged.

use shared::error::{Reason, status_with_reason};
use tonic::{Code, Status};

use crate::domain::WalletError;

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
