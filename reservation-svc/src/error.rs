//! The one place a domain error becomes a gRPC status, and where internal errors are logged.

use shared::error::{Reason, invalid_field, status_with_reason};
use tonic::{Code, Status};

use crate::domain::ReservationError;

impl From<ReservationError> for Status {
    fn from(error: ReservationError) -> Self {
        let message = error.to_string();
        match error {
            ReservationError::NotFound(_) => Status::not_found(message),
            ReservationError::SeatOutOfRange { .. } => invalid_field("seat_no", message),
            ReservationError::SeatTaken => {
                status_with_reason(Code::AlreadyExists, Reason::SeatTaken, message)
            }
            ReservationError::SeatLocked => {
                status_with_reason(Code::Aborted, Reason::SeatLocked, message)
            }
            ReservationError::PerformanceStarted => status_with_reason(
                Code::FailedPrecondition,
                Reason::PerformanceStarted,
                message,
            ),
            ReservationError::HoldLimit { .. } => {
                status_with_reason(Code::FailedPrecondition, Reason::HoldLimit, message)
            }
            // Someone else's reservation is answered as one that does not exist, so that
            // reservation ids reveal nothing.
            ReservationError::NotOwner => Status::not_found("reservation not found"),
            ReservationError::HoldExpired => {
                status_with_reason(Code::FailedPrecondition, Reason::HoldExpired, message)
            }
            ReservationError::InvalidState => {
                status_with_reason(Code::FailedPrecondition, Reason::InvalidState, message)
            }
            ReservationError::BalanceLimit => {
                status_with_reason(Code::FailedPrecondition, Reason::BalanceLimit, message)
            }
            ReservationError::InsufficientBalance => status_with_reason(
                Code::FailedPrecondition,
                Reason::InsufficientBalance,
                message,
            ),
            ReservationError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                Status::unavailable("a dependency is unavailable, retry later")
            }
            ReservationError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
