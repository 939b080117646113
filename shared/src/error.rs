//! The contract's error model: a gRPC code, and for business refusals a
//! `google.rpc.ErrorInfo` whose `reason` clients switch on; malformed input carries a
//! `google.rpc.BadRequest` with one field violation per bad field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// `ErrorInfo.domain` of every error this system returns.
pub const ERROR_DOMAIN: &str = "ticketing";

/// The `ErrorInfo.reason` values of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    SeatTaken,
    SeatLocked,
    HoldExpired,
    HoldLimit,
    PerformanceStarted,
    InvalidState,
    InsufficientBalance,
    BalanceLimit,
    IdempotencyKeyReused,
    UnknownUse,
    /// No bearer token with a call that needs one.
    TokenMissing,
    /// A token that does not verify: malformed, unknown key, bad signature, wrong issuer or
    /// audience, not yet valid.
    TokenInvalid,
    /// A token past its `exp`.
    TokenExpired,
    /// A call only an admin may make.
    AdminOnly,
    /// A call for a user other than the caller, by a caller who is not an admin.
    OtherUser,
    /// A `Use` or `Refund` from a caller that is not a payment service.
    PaymentServiceOnly,
    /// Too many of one user's wallet requests are waiting; retry after the `RetryInfo` delay.
    UserBusy,
    /// A hold on a schedule with a waiting room, without an admission token or with one
    /// that has expired.
    AdmissionRequired,
    /// An admission token that does not verify, or is another user's or schedule's.
    AdmissionInvalid,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SeatTaken => "SEAT_TAKEN",
            Self::SeatLocked => "SEAT_LOCKED",
            Self::HoldExpired => "HOLD_EXPIRED",
            Self::HoldLimit => "HOLD_LIMIT",
            Self::PerformanceStarted => "PERFORMANCE_STARTED",
            Self::InvalidState => "INVALID_STATE",
            Self::InsufficientBalance => "INSUFFICIENT_BALANCE",
            Self::BalanceLimit => "BALANCE_LIMIT",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::UnknownUse => "UNKNOWN_USE",
            Self::TokenMissing => "TOKEN_MISSING",
            Self::TokenInvalid => "TOKEN_INVALID",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::AdminOnly => "ADMIN_ONLY",
            Self::OtherUser => "OTHER_USER",
            Self::PaymentServiceOnly => "PAYMENT_SERVICE_ONLY",
            Self::UserBusy => "USER_BUSY",
            Self::AdmissionRequired => "ADMISSION_REQUIRED",
            Self::AdmissionInvalid => "ADMISSION_INVALID",
        }
    }
}

/// A status with an `ErrorInfo` naming `reason`.
pub fn status_with_reason(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(
        reason.as_str(),
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    Status::with_error_details(code, message, details)
}

/// A status with an `ErrorInfo` naming `reason` and a `RetryInfo` saying when to try again.
pub fn status_with_retry(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    retry_after: std::time::Duration,
) -> Status {
    let mut details = ErrorDetails::with_error_info(
        reason.as_str(),
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// The `ErrorInfo.reason` of a status, if it has one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The fields named by a status's `BadRequest`, in order.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Yields the parsed values (each an `Option` from [`FieldViolations::check`]) when every
/// field parsed, else returns the violations as an `INVALID_ARGUMENT` status.
#[macro_export]
macro_rules! all_valid {
    ($violations:ident, $($value:ident),+) => {
        match ($($value),+) {
            ($(Some($value)),+) if $violations.is_empty() => ($($value),+),
            _ => return Err($violations.into_status()),
        }
    };
}

/// Collects every problem of a request, so one answer names all bad fields.
#[derive(Debug, Default)]
pub struct FieldViolations(Vec<FieldViolation>);

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of a parse, and yields its value when there was none.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `INVALID_ARGUMENT` naming every violation.
    pub fn into_status(self) -> Status {
        let message = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {message}"),
            ErrorDetails::with_bad_request(self.0),
        )
    }
}

/// `INVALID_ARGUMENT` for one bad field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut violations = FieldViolations::new();
    violations.add(field, description);
    violations.into_status()
}

/// A keyset listing as requests name it: its name in page tokens, the request field naming
/// its owner (empty for a listing of everything) and its page sizes.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    pub name: &'static str,
    pub owner_field: &'static str,
    pub sizes: crate::values::PageLimits,
}

/// A page of a listing, parsed from a request's owner (`user_id`, `concert_id`...),
/// `page_size` and `page_token`: every bad field named at once, and a token judged against its
/// listing and owner.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<O, P = i64> {
    pub owner: O,
    pub page_size: crate::values::PageSize,
    pub cursor: Option<crate::values::PageCursor<P>>,
}

impl<O, P: crate::values::Position> PageRequest<O, P> {
    /// `owner` is the request's owner field, parsed into `O` by `parse_owner`.
    pub fn parse(
        listing: &Listing,
        owner: (
            i64,
            impl FnOnce(i64) -> Result<O, crate::values::InvalidValue>,
        ),
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Status> {
        use crate::values::{PageCursor, PageSize};
        let (owner_id, parse_owner) = owner;
        let mut violations = FieldViolations::new();
        let owner = violations.check(listing.owner_field, parse_owner(owner_id));
        let page_size = violations.check(
            "page_size",
            PageSize::parse_within(page_size, listing.sizes),
        );
        // A token can only be judged against a valid owner.
        let cursor = match owner {
            Some(_) => violations.check(
                "page_token",
                PageCursor::decode(page_token, listing.name, owner_id),
            ),
            None => Some(None),
        };
        let (owner, page_size, cursor) = all_valid!(violations, owner, page_size, cursor);
        Ok(Self {
            owner,
            page_size,
            cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_round_trip_through_status_details() {
        let status = status_with_reason(Code::FailedPrecondition, Reason::BalanceLimit, "too much");
        assert_eq!(reason_of(&status).as_deref(), Some("BALANCE_LIMIT"));
    }

    #[test]
    fn every_violation_is_named_in_the_bad_request() {
        let mut violations = FieldViolations::new();
        violations.add("amount", "must be positive");
        violations.add("idempotency_key", "must not be empty");
        let status = violations.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["amount", "idempotency_key"]);
    }
}
