//! The one place a domain error (the reservations' and the waiting rooms') becomes a gRPC
//! status, and where internal errors are logged.

use shared::error::{Reason, invalid_field, status_with_reason};
use tonic::{Code, Status};

use crate::admission::{AdmissionError, TokenRefusal};
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

impl From<AdmissionError> for Status {
    fn from(error: AdmissionError) -> Self {
        match error {
            AdmissionError::NotFound(what) => ReservationError::NotFound(what).into(),
            AdmissionError::Disabled => Status::failed_precondition(error.to_string()),
            AdmissionError::Unavailable(detail) => ReservationError::Unavailable(detail).into(),
            AdmissionError::Internal(detail) => ReservationError::Internal(detail).into(),
        }
    }
}

impl From<TokenRefusal> for Status {
    fn from(refusal: TokenRefusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            TokenRefusal::Missing | TokenRefusal::Expired => {
                status_with_reason(Code::FailedPrecondition, Reason::AdmissionRequired, message)
            }
            TokenRefusal::Invalid(_) => {
                status_with_reason(Code::PermissionDenied, Reason::AdmissionInvalid, message)
            }
        }
    }
}
