//! reservation-svc's Postgres rows of one seat, and its transactions on them. Each method is
//! one transaction of `reservation-svc/src/store`, statement for statement: it gathers the same
//! facts, asks the same `protocol` function, and makes the same conditional writes. The
//! conformance tests run these and the real SQL from the same rows and compare the results.

use protocol::payment::{self, AfterUse, BeginPay, PaymentState, UseReply};

use crate::key::Key;
use protocol::reservation::{self, CancelDecision, HoldDecision, Micros, ReservationState};
pub use protocol::reservation::{SeatView, Status};

/// The clock of every transaction. Time is abstract: a hold has either lapsed or not, the
/// performance has either begun or not.
pub const NOW: Micros = 1_000_000;

/// One reservation row, with the columns the protocol reads or writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row {
    pub id: i64,
    pub user_id: i64,
    pub status: Status,
    /// `expires_at <= now()`.
    pub lapsed: bool,
    pub pay_attempt: i32,
    pub payment_transaction_id: Option<i64>,
    pub payment_idempotency_key: Option<Key>,
    /// `cancel_requested_at IS NOT NULL`.
    pub cancel_requested: bool,
}

impl Row {
    fn expires_at(&self) -> Micros {
        if self.lapsed { NOW } else { NOW + 1 }
    }

    pub fn state(&self) -> ReservationState {
        ReservationState {
            id: self.id,
            user_id: self.user_id,
            status: self.status,
            expires_at: self.expires_at(),
        }
    }

    fn payment_state(&self, started: bool) -> PaymentState {
        PaymentState {
            id: self.id,
            user_id: self.user_id,
            status: self.status,
            expires_at: self.expires_at(),
            starts_at: if started { NOW } else { NOW + 100 },
            pay_attempt: self.pay_attempt,
            payment_transaction_id: self.payment_transaction_id,
        }
    }
}

/// One seat's row and every reservation of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeatRows {
    pub seat: SeatView,
    pub price: i64,
    /// The performance has begun (`schedules.starts_at <= now()`).
    pub started: bool,
    pub reservations: Vec<Row>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldOutcome {
    Held { id: i64 },
    Taken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BeginOutcome {
    Pay { attempt: i32 },
    Confirmed,
    NotFound,
    Refused(BeginPay),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SettleOutcome {
    Confirmed,
    Refused,
    StillPaying,
    Refund { use_key: Key },
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// `use_key` is the key of the `Use` that paid it.
    RefundFirst {
        use_key: Option<Key>,
    },
    Refused(CancelDecision),
}

/// Seeded bugs: each one changes one transaction the way a plausible mistake would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StoreBugs {
    /// The sweeper also expires lapsed `PAYING` reservations.
    pub sweeper_expires_paying: bool,
    /// A refusal sends a `PAYING` reservation back to `HELD` whatever attempt it answers.
    pub back_to_held_any_attempt: bool,
}

impl SeatRows {
    pub fn new(price: i64) -> Self {
        Self {
            seat: SeatView::Available,
            price,
            started: false,
            reservations: Vec::new(),
        }
    }

    pub fn row(&self, id: i64) -> Option<&Row> {
        self.reservations.iter().find(|row| row.id == id)
    }

    fn row_mut(&mut self, id: i64) -> Option<&mut Row> {
        self.reservations.iter_mut().find(|row| row.id == id)
    }

    /// The reservation the partial unique index lets own the seat.
    pub fn active(&self) -> Option<&Row> {
        self.reservations.iter().find(|row| row.status.is_active())
    }

    /// `hold_seat`: lock the seat, read its active reservation, decide, expire a lapsed hold,
    /// move the seat `AVAILABLE -> HELD` (rolling back if it was not available), insert.
    pub fn hold(&mut self, user_id: i64) -> HoldOutcome {
        let before = self.clone();
        let active = self.active().cloned();
        let HoldDecision::Hold { expire_first } =
            reservation::hold(active.as_ref().map(Row::state).as_ref(), NOW)
        else {
            return HoldOutcome::Taken;
        };
        if let (Some(lapsed), Some(row)) = (expire_first, &active)
            && lapsed == row.id
        {
            self.end_reservation(row.id, row.pay_attempt, Status::Held, Status::Expired);
        }
        if !self.set_seat(SeatView::Available, SeatView::Held) {
            *self = before;
            return HoldOutcome::Taken;
        }
        match self.insert_held(user_id, true) {
            Some(id) => HoldOutcome::Held { id },
            None => {
                *self = before;
                HoldOutcome::Taken
            }
        }
    }

    /// `HoldAvailableSeat`: one statement that moves the seat `AVAILABLE -> HELD` and inserts
    /// the reservation, or does nothing (`None`) when the seat's row does not read AVAILABLE
    /// or the partial unique index refuses; the caller then runs [`SeatRows::hold`].
    pub fn hold_available(&mut self, user_id: i64) -> Option<HoldOutcome> {
        let before = self.clone();
        if !self.set_seat(SeatView::Available, SeatView::Held) {
            return None;
        }
        match self.insert_held(user_id, true) {
            Some(id) => Some(HoldOutcome::Held { id }),
            None => {
                *self = before;
                None
            }
        }
    }

    /// `Store::hold_seat` as one call: the one-statement hold of an available seat, else the
    /// full transaction.
    pub fn hold_seat(&mut self, user_id: i64) -> HoldOutcome {
        match self.hold_available(user_id) {
            Some(outcome) => outcome,
            None => self.hold(user_id),
        }
    }

    /// The first half of a hold written as a plain `SELECT` and decision, without the seat's
    /// row lock: what a hold that trusts its Redis lock alone would do.
    pub fn hold_read(&self) -> HoldDecision {
        reservation::hold(self.active().map(Row::state).as_ref(), NOW)
    }

    /// The second half of that hold: an unconditional insert (no partial unique index, no
    /// conditional seat update).
    pub fn hold_write_unguarded(&mut self, decision: HoldDecision, user_id: i64) -> HoldOutcome {
        let HoldDecision::Hold { expire_first } = decision else {
            return HoldOutcome::Taken;
        };
        if let Some(lapsed) = expire_first
            && let Some(row) = self.row_mut(lapsed)
        {
            row.status = Status::Expired;
        }
        self.seat = SeatView::Held;
        match self.insert_held(user_id, false) {
            Some(id) => HoldOutcome::Held { id },
            None => HoldOutcome::Taken,
        }
    }

    /// Inserts a new `HELD` reservation; with `unique_index`, fails as the partial unique index
    /// would when the seat already has an active reservation.
    fn insert_held(&mut self, user_id: i64, unique_index: bool) -> Option<i64> {
        if unique_index && self.active().is_some() {
            return None;
        }
        let id = self
            .reservations
            .iter()
            .map(|row| row.id)
            .max()
            .unwrap_or(0)
            + 1;
        self.reservations.push(Row {
            id,
            user_id,
            status: Status::Held,
            lapsed: false,
            pay_attempt: 0,
            payment_transaction_id: None,
            payment_idempotency_key: None,
            cancel_requested: false,
        });
        Some(id)
    }

    /// `begin_pay`: lock the seat and the reservation, decide, `HELD -> PAYING` as a new
    /// attempt (conditional on status and attempt).
    pub fn begin_pay(&mut self, id: i64, user_id: i64) -> BeginOutcome {
        let started = self.started;
        let Some(row) = self.row_mut(id) else {
            return BeginOutcome::NotFound;
        };
        match payment::begin_pay(&row.payment_state(started), user_id, NOW) {
            BeginPay::Begin { attempt } => {
                if row.status == Status::Held {
                    row.status = Status::Paying;
                    row.pay_attempt = attempt;
                }
                BeginOutcome::Pay { attempt }
            }
            BeginPay::Resume { attempt } => BeginOutcome::Pay { attempt },
            BeginPay::AlreadyConfirmed => BeginOutcome::Confirmed,
            refused => BeginOutcome::Refused(refused),
        }
    }

    /// `settle_attempt`: lock, decide what the reply to `attempt` does, write it conditionally
    /// on this very attempt still paying.
    pub fn settle(
        &mut self,
        id: i64,
        attempt: i32,
        reply: UseReply,
        refunded: bool,
        bugs: StoreBugs,
    ) -> SettleOutcome {
        let started = self.started;
        let Some(row) = self.row(id).cloned() else {
            return SettleOutcome::Moved;
        };
        let state = row.payment_state(started);
        let mut decision = payment::apply_use_reply(&state, attempt, reply, refunded, NOW);
        let mut paying_attempt = attempt;
        if bugs.back_to_held_any_attempt
            && row.status == Status::Paying
            && matches!(reply, UseReply::Insufficient | UseReply::Rejected)
        {
            decision = payment::apply_use_reply(&state, row.pay_attempt, reply, refunded, NOW);
            paying_attempt = row.pay_attempt;
        }
        let paying = |row: &Row| row.status == Status::Paying && row.pay_attempt == paying_attempt;
        match decision {
            AfterUse::Confirm { transaction_id } => {
                if let Some(row) = self.row_mut(id).filter(|row| paying(row)) {
                    row.status = Status::Confirmed;
                    row.payment_transaction_id = Some(transaction_id);
                    row.payment_idempotency_key = Some(Key::new(&payment::use_key(id, attempt)));
                }
                self.set_seat(SeatView::Held, SeatView::Sold);
                SettleOutcome::Confirmed
            }
            AfterUse::BackToHeld => {
                if let Some(row) = self.row_mut(id).filter(|row| paying(row)) {
                    row.status = Status::Held;
                }
                SettleOutcome::Refused
            }
            AfterUse::Expire | AfterUse::ExpireRefunded => {
                self.end_reservation(id, row.pay_attempt, Status::Paying, Status::Expired);
                if decision == AfterUse::ExpireRefunded {
                    SettleOutcome::Moved
                } else {
                    SettleOutcome::Refused
                }
            }
            AfterUse::StayPaying => SettleOutcome::StillPaying,
            AfterUse::Settled => SettleOutcome::Confirmed,
            AfterUse::Refund => SettleOutcome::Refund {
                use_key: Key::new(&payment::use_key(id, attempt)),
            },
            AfterUse::Nothing => SettleOutcome::Moved,
        }
    }

    /// `cancel`: lock, decide; a paid reservation records the cancellation's start and asks
    /// for its refund first, and is released only once `refunded`.
    pub fn cancel(&mut self, id: i64, user_id: i64, refunded: bool) -> CancelOutcome {
        let Some(row) = self.row(id).cloned() else {
            return CancelOutcome::NotFound;
        };
        let released_from = match reservation::cancel(&row.state(), user_id, NOW) {
            CancelDecision::Release => Status::Held,
            CancelDecision::RefundThenRelease if refunded => Status::Confirmed,
            CancelDecision::RefundThenRelease => {
                if let Some(row) = self.row_mut(id) {
                    row.cancel_requested = true;
                }
                return CancelOutcome::RefundFirst {
                    use_key: row.payment_idempotency_key,
                };
            }
            CancelDecision::AlreadyCancelled => return CancelOutcome::Cancelled,
            refused => return CancelOutcome::Refused(refused),
        };
        self.end_reservation(id, row.pay_attempt, released_from, Status::Cancelled);
        CancelOutcome::Cancelled
    }

    /// `expire_lapsed_holds`: every lapsed hold the protocol lets the sweeper take is expired
    /// and its seat freed.
    pub fn sweep(&mut self, bugs: StoreBugs) -> usize {
        let sweepable: Vec<(i64, i32, Status)> = self
            .reservations
            .iter()
            .filter(|row| Self::sweepable(row, bugs))
            .map(|row| (row.id, row.pay_attempt, row.status))
            .collect();
        sweepable
            .iter()
            .filter(|&&(id, attempt, status)| {
                self.end_reservation(id, attempt, status, Status::Expired)
            })
            .count()
    }

    /// Whether the sweeper has anything to expire.
    pub fn has_lapsed_holds(&self, bugs: StoreBugs) -> bool {
        self.reservations
            .iter()
            .any(|row| Self::sweepable(row, bugs))
    }

    fn sweepable(row: &Row, bugs: StoreBugs) -> bool {
        reservation::sweepable(&row.state(), NOW)
            || (bugs.sweeper_expires_paying && row.status == Status::Paying && row.lapsed)
    }

    /// Reservations the reconciler drives: `PAYING` ones, with their current attempt.
    pub fn stuck_payments(&self) -> Vec<(i64, i32)> {
        self.reservations
            .iter()
            .filter(|row| row.status == Status::Paying)
            .map(|row| (row.id, row.pay_attempt))
            .collect()
    }

    /// Paid reservations whose cancellation began and did not finish.
    pub fn unfinished_cancellations(&self) -> Vec<(i64, i64)> {
        self.reservations
            .iter()
            .filter(|row| row.status == Status::Confirmed && row.cancel_requested)
            .map(|row| (row.id, row.user_id))
            .collect()
    }

    /// `end_reservation`: `from -> to` conditional on status and attempt, and the seat freed.
    fn end_reservation(&mut self, id: i64, attempt: i32, from: Status, to: Status) -> bool {
        let Some(row) = self
            .row_mut(id)
            .filter(|row| row.status == from && row.pay_attempt == attempt)
        else {
            return false;
        };
        row.status = to;
        let seat_was = if from == Status::Confirmed {
            SeatView::Sold
        } else {
            SeatView::Held
        };
        self.set_seat(seat_was, SeatView::Available);
        true
    }

    /// `set_seat_status`: `from -> to` if the seat is in `from`.
    fn set_seat(&mut self, from: SeatView, to: SeatView) -> bool {
        let moved = self.seat == from;
        if moved {
            self.seat = to;
        }
        moved
    }
}
