//! The payment saga of a reservation: `HELD -> PAYING` (a new attempt), one idempotent wallet
//! `Use` per attempt, and what its reply does; cancellation of a paid reservation refunds it.
//!
//! A `Use` key names its attempt (`reservation-{id}-{attempt}`) and the wallet's outcome for a
//! key is final, refusals included, so re-sending the current attempt's `Use` (a retried pay,
//! the reconciler) can only ever learn the first outcome: it can never debit after a refusal
//! sent the reservation back to `HELD`.

use crate::reservation::{Micros, Status};

/// The facts of a reservation the payment decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    pub id: i64,
    pub user_id: i64,
    pub status: Status,
    pub expires_at: Micros,
    /// When the performance begins: past it, a seat can no longer be sold.
    pub starts_at: Micros,
    /// Attempts begun so far; the current one while `Paying`.
    pub pay_attempt: i32,
    /// The `Use` that paid it, once `Confirmed`.
    pub payment_transaction_id: Option<i64>,
    /// While `Paying`: the current attempt's debit came after the performance began and is
    /// being given back. Recorded under the seat's lock before the refund is asked for, so no
    /// later decision (whatever its clock says) can confirm that attempt.
    pub refunding: bool,
}

/// The wallet key of attempt `attempt` of reservation `id`, whose random `nonce` is part of
/// every key of its payments: reservation ids start again at 1 in a recreated database, rewind
/// with a restored backup and repeat in another deployment sharing the wallet, and a key must
/// never meet the wallet's record of another reservation's debit. The empty nonce (a
/// reservation made before nonces existed) keeps the keys it always had.
pub fn use_key(nonce: &str, reservation_id: i64, attempt: i32) -> String {
    keyed(nonce, format!("reservation-{reservation_id}-{attempt}"))
}

/// The wallet key of the refund of reservation `id`: one refund, however often it is asked.
pub fn refund_key(nonce: &str, reservation_id: i64) -> String {
    keyed(nonce, format!("reservation-{reservation_id}-refund"))
}

fn keyed(nonce: &str, key: String) -> String {
    if nonce.is_empty() {
        key
    } else {
        format!("{nonce}:{key}")
    }
}

/// Whether paying `price` takes a wallet `Use`: a free seat is confirmed without one.
pub const fn needs_wallet(price: i64) -> bool {
    price > 0
}

/// What a `PayReservation` by `user_id` does first, under the seat's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BeginPay {
    /// Move `HELD -> PAYING` as attempt `attempt`, then send its `Use`.
    Begin {
        attempt: i32,
    },
    /// Already paying: send the current attempt's `Use` again (same key, same outcome).
    Resume {
        attempt: i32,
    },
    /// Paid already: answer it as it is.
    AlreadyConfirmed,
    NotOwner,
    HoldExpired,
    /// Cancelled or expired.
    InvalidState,
}

pub fn begin_pay(reservation: &PaymentState, user_id: i64, now: Micros) -> BeginPay {
    if reservation.user_id != user_id {
        return BeginPay::NotOwner;
    }
    match reservation.status {
        Status::Held | Status::Paying if reservation.starts_at <= now => BeginPay::InvalidState,
        Status::Paying if reservation.refunding => BeginPay::InvalidState,
        Status::Held if reservation.expires_at <= now => BeginPay::HoldExpired,
        Status::Held => BeginPay::Begin {
            attempt: reservation.pay_attempt + 1,
        },
        Status::Paying => BeginPay::Resume {
            attempt: reservation.pay_attempt,
        },
        Status::Confirmed => BeginPay::AlreadyConfirmed,
        Status::Cancelled | Status::Expired => BeginPay::InvalidState,
    }
}

/// The wallet's answer to an attempt's `Use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UseReply {
    /// Debited, by the wallet transaction `transaction_id`.
    Debited { transaction_id: i64 },
    /// Refused for insufficient balance (final for this key).
    Insufficient,
    /// Refused for any other reason (the key reused for another request, say): final for this
    /// key, nothing debited.
    Rejected,
    /// No answer (unreachable, timed out): the debit may or may not have happened.
    Unknown,
}

/// What the reply to attempt `attempt` does, decided under the seat's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterUse {
    /// `PAYING -> CONFIRMED`, seat SOLD, recording the payment.
    Confirm { transaction_id: i64 },
    /// `PAYING -> HELD`, keeping the original expiry: the user may top up and pay again.
    BackToHeld,
    /// `PAYING -> EXPIRED`, seat free: refused, and the hold has run out meanwhile.
    Expire,
    /// Leave it `PAYING`: the outcome is unknown; a retry or the reconciler re-sends the `Use`.
    StayPaying,
    /// This attempt is already settled the same way (a concurrent pay confirmed it): nothing
    /// to write.
    Settled,
    /// The current attempt's debit can no longer be honoured (the performance has begun):
    /// record on the reservation that it is being refunded (still `PAYING`, its seat kept),
    /// then give the money back. Once recorded, no decision confirms the attempt.
    DecideRefund,
    /// The reservation moved on without this debit, or its refund is already decided: give
    /// the money back. Nothing is written before the refund is done, so a failed refund
    /// leaves the payment to be driven again.
    Refund,
    /// The refund of a payment that could not be honoured is done: `PAYING -> EXPIRED`, seat
    /// free.
    ExpireRefunded,
    /// The reservation moved on and nothing was debited: nothing to do.
    Nothing,
}

/// Decides what the reply to attempt `attempt` does; `refunded` says whether the refund that an
/// earlier decision asked for has been made.
pub fn apply_use_reply(
    reservation: &PaymentState,
    attempt: i32,
    reply: UseReply,
    refunded: bool,
    now: Micros,
) -> AfterUse {
    let current = reservation.status == Status::Paying && reservation.pay_attempt == attempt;
    let started = reservation.starts_at <= now;
    let refunding = current && reservation.refunding;
    match (current, reply) {
        (true, UseReply::Debited { .. }) if (started || refunding) && refunded => {
            AfterUse::ExpireRefunded
        }
        (true, UseReply::Debited { .. }) if refunding => AfterUse::Refund,
        (true, UseReply::Debited { .. }) if started => AfterUse::DecideRefund,
        // The debit is known to have happened: only its own answer (or the reconciler, which
        // asks again) may end the attempt, never a refusal from somewhere else.
        (true, UseReply::Insufficient | UseReply::Rejected) if refunding => AfterUse::StayPaying,
        (true, UseReply::Debited { transaction_id }) => AfterUse::Confirm { transaction_id },
        (true, UseReply::Insufficient | UseReply::Rejected)
            if reservation.expires_at <= now || started =>
        {
            AfterUse::Expire
        }
        (true, UseReply::Insufficient | UseReply::Rejected) => AfterUse::BackToHeld,
        (true, UseReply::Unknown) => AfterUse::StayPaying,
        (false, UseReply::Debited { transaction_id })
            if reservation.status == Status::Confirmed
                && reservation.payment_transaction_id == Some(transaction_id) =>
        {
            AfterUse::Settled
        }
        (false, UseReply::Debited { .. }) => AfterUse::Refund,
        (false, UseReply::Insufficient | UseReply::Rejected | UseReply::Unknown) => {
            AfterUse::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_000;

    fn state(status: Status, pay_attempt: i32) -> PaymentState {
        PaymentState {
            id: 42,
            user_id: 1,
            status,
            expires_at: NOW + 1,
            starts_at: NOW + 100,
            pay_attempt,
            payment_transaction_id: None,
            refunding: false,
        }
    }

    #[test]
    fn keys_name_the_attempt_and_the_refund() {
        assert_eq!(use_key("", 42, 3), "reservation-42-3");
        assert_eq!(refund_key("", 42), "reservation-42-refund");
        assert_eq!(use_key("3f9a", 42, 3), "3f9a:reservation-42-3");
        assert_eq!(refund_key("3f9a", 42), "3f9a:reservation-42-refund");
    }

    #[test]
    fn a_pay_begins_a_new_attempt_or_resumes_the_current_one() {
        assert_eq!(
            begin_pay(&state(Status::Held, 0), 1, NOW),
            BeginPay::Begin { attempt: 1 }
        );
        assert_eq!(
            begin_pay(&state(Status::Held, 2), 1, NOW),
            BeginPay::Begin { attempt: 3 }
        );
        assert_eq!(
            begin_pay(&state(Status::Paying, 2), 1, NOW),
            BeginPay::Resume { attempt: 2 }
        );
        assert_eq!(
            begin_pay(&state(Status::Confirmed, 1), 1, NOW),
            BeginPay::AlreadyConfirmed
        );
        assert_eq!(
            begin_pay(&state(Status::Held, 0), 2, NOW),
            BeginPay::NotOwner
        );
        let lapsed = PaymentState {
            expires_at: NOW,
            ..state(Status::Held, 0)
        };
        assert_eq!(begin_pay(&lapsed, 1, NOW), BeginPay::HoldExpired);
        for status in [Status::Cancelled, Status::Expired] {
            assert_eq!(begin_pay(&state(status, 1), 1, NOW), BeginPay::InvalidState);
        }
    }

    #[test]
    fn the_current_attempts_reply_settles_the_payment() {
        let paying = state(Status::Paying, 2);
        let debited = UseReply::Debited { transaction_id: 9 };
        assert_eq!(
            apply_use_reply(&paying, 2, debited, false, NOW),
            AfterUse::Confirm { transaction_id: 9 }
        );
        assert_eq!(
            apply_use_reply(&paying, 2, UseReply::Insufficient, false, NOW),
            AfterUse::BackToHeld
        );
        assert_eq!(
            apply_use_reply(&paying, 2, UseReply::Rejected, false, NOW),
            AfterUse::BackToHeld,
            "a final refusal of any kind frees the payment, never leaves it paying"
        );
        assert_eq!(
            apply_use_reply(&paying, 2, UseReply::Unknown, false, NOW),
            AfterUse::StayPaying
        );
        let lapsed = PaymentState {
            expires_at: NOW,
            ..paying
        };
        assert_eq!(
            apply_use_reply(&lapsed, 2, UseReply::Insufficient, false, NOW),
            AfterUse::Expire
        );
        assert_eq!(
            apply_use_reply(&lapsed, 2, debited, false, NOW),
            AfterUse::Confirm { transaction_id: 9 },
            "a paying reservation owns its seat past the hold's expiry"
        );
    }

    #[test]
    fn a_debit_for_a_performance_that_has_begun_is_refunded_before_the_reservation_expires() {
        let started = PaymentState {
            starts_at: NOW,
            ..state(Status::Paying, 1)
        };
        let debited = UseReply::Debited { transaction_id: 9 };
        assert_eq!(
            apply_use_reply(&started, 1, debited, false, NOW),
            AfterUse::DecideRefund
        );
        let refunding = PaymentState {
            refunding: true,
            ..started.clone()
        };
        assert_eq!(
            apply_use_reply(&refunding, 1, debited, false, NOW),
            AfterUse::Refund
        );
        assert_eq!(
            apply_use_reply(&started, 1, debited, true, NOW),
            AfterUse::ExpireRefunded
        );
        assert_eq!(
            apply_use_reply(&started, 1, UseReply::Insufficient, false, NOW),
            AfterUse::Expire
        );
        assert_eq!(begin_pay(&started, 1, NOW), BeginPay::InvalidState);
    }

    #[test]
    fn a_recorded_refund_decision_holds_whatever_a_later_clock_says() {
        // Decided after the start; a later decision whose clock reads before it (a clock read
        // too early, a clock stepped back) must still not confirm.
        let refunding = PaymentState {
            refunding: true,
            ..state(Status::Paying, 1)
        };
        let debited = UseReply::Debited { transaction_id: 9 };
        assert_eq!(
            apply_use_reply(&refunding, 1, debited, false, NOW),
            AfterUse::Refund
        );
        assert_eq!(
            apply_use_reply(&refunding, 1, debited, true, NOW),
            AfterUse::ExpireRefunded
        );
        assert_eq!(begin_pay(&refunding, 1, NOW), BeginPay::InvalidState);
        assert_eq!(
            apply_use_reply(&refunding, 1, UseReply::Insufficient, false, NOW),
            AfterUse::StayPaying,
            "a debit being refunded is never ended by a refusal"
        );
    }

    #[test]
    fn a_reply_to_a_settled_or_abandoned_attempt_changes_nothing_or_refunds() {
        let confirmed = PaymentState {
            payment_transaction_id: Some(9),
            ..state(Status::Confirmed, 2)
        };
        let debited = UseReply::Debited { transaction_id: 9 };
        assert_eq!(
            apply_use_reply(&confirmed, 2, debited, false, NOW),
            AfterUse::Settled
        );
        let cancelled = state(Status::Cancelled, 2);
        assert_eq!(
            apply_use_reply(&cancelled, 2, debited, false, NOW),
            AfterUse::Refund
        );
        let next_attempt = state(Status::Paying, 3);
        assert_eq!(
            apply_use_reply(&next_attempt, 2, debited, false, NOW),
            AfterUse::Refund
        );
        assert_eq!(
            apply_use_reply(&next_attempt, 2, UseReply::Insufficient, false, NOW),
            AfterUse::Nothing
        );
    }
}
