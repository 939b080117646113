//! reservation-svc's Postgres rows of one seat, and its transactions on them. Each method is
//! one transaction of `reservation-svc/src/store`, statement for statement: it gathers the same
//! facts, asks the same `protocol` function, and makes the same conditional writes. The
//! conformance tests run these and the real SQL from the same rows and compare the results.
//!
//! Every deciding transaction reads the clock once it holds the seat's lock (`LockSeat`: the
//! clock is read in an outer query over the locking one), so it decides on the facts of that
//! moment ([`ClockRead::UnderLock`]). Its `_at` variant takes when the clock was read, which
//! lets the model seed the bug of a clock read before the lock (Postgres `now()`, the
//! transaction's start): [`ClockRead::Before`].

use protocol::payment::{self, AfterUse, BeginPay, PaymentState, UseReply};

use crate::key::Key;
use protocol::reservation::{
    self, CancelDecision, HoldDecision, HoldFacts, Micros, ReservationState,
};
pub use protocol::reservation::{SeatView, Status};

/// The clock of every transaction. Time is abstract: a hold has either lapsed or not, the
/// performance has either begun or not; a transaction decides with a [`Clock`] reading of those
/// facts, which the store turns into timestamps around `NOW`.
pub const NOW: Micros = 1_000_000;

/// The random nonce of every reservation's wallet keys (`protocol::payment::use_key`).
pub const KEY_NONCE: &str = "0123456789abcdef0123456789abcdef";

/// When a deciding transaction read its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockRead {
    /// In the deciding statement, under the seat's lock: it sees the facts of this very moment.
    UnderLock,
    /// Before the seat's lock (a seeded bug): it sees what it read then.
    Before(Clock),
}

/// What a clock read, in abstract time: whether the performance had begun, and which
/// reservations' holds had lapsed. Both only ever become true, so readings taken at different
/// moments are ordered by inclusion. Only the model's seeded clock bug keeps one
/// ([`SeatRows::clock`]), in the state of the process that read it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Clock {
    pub started: bool,
    /// Bit `id - 1` for each lapsed reservation `id`: small, as it is part of a process's
    /// state. The model's configurations make a few reservations of their seat, far from 16
    /// (an id past 16 reads as not lapsed).
    lapsed: u16,
}

impl Clock {
    fn bit(id: i64) -> u16 {
        id.checked_sub(1)
            .and_then(|at| u32::try_from(at).ok())
            .and_then(|at| 1_u16.checked_shl(at))
            .unwrap_or(0)
    }

    /// Whether reservation `id`'s hold had lapsed.
    pub fn has_lapsed(self, id: i64) -> bool {
        self.lapsed & Self::bit(id) != 0
    }

    /// Whether this reading is later than `earlier`: it saw something `earlier` had not.
    pub fn is_after(self, earlier: Self) -> bool {
        (self.started && !earlier.started) || self.lapsed & !earlier.lapsed != 0
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lapsed: Vec<i64> = (1..=16).filter(|&id| self.has_lapsed(id)).collect();
        f.debug_struct("Clock")
            .field("started", &self.started)
            .field("lapsed", &lapsed)
            .finish()
    }
}

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
    /// `refund_requested_at IS NOT NULL`: the current attempt's debit is being given back.
    pub refunding: bool,
}

impl Row {
    /// `expires_at`, as a clock that reads `NOW` sees it: past once lapsed, as of `read`.
    fn expires_at(&self, read: ClockRead) -> Micros {
        let lapsed = match read {
            ClockRead::UnderLock => self.lapsed,
            ClockRead::Before(clock) => clock.has_lapsed(self.id),
        };
        if lapsed { NOW } else { NOW + 1 }
    }

    /// The reservation's facts, as a clock read now sees them.
    pub fn state(&self) -> ReservationState {
        self.state_at(ClockRead::UnderLock)
    }

    /// The reservation's facts as a transaction whose clock was read at `read` sees them.
    fn state_at(&self, read: ClockRead) -> ReservationState {
        ReservationState {
            id: self.id,
            user_id: self.user_id,
            status: self.status,
            expires_at: self.expires_at(read),
        }
    }

    /// The payment's facts as a transaction whose clock was read at `read` sees them;
    /// `started` is whether the performance has begun now.
    fn payment_state(&self, read: ClockRead, started: bool) -> PaymentState {
        let started = match read {
            ClockRead::UnderLock => started,
            ClockRead::Before(clock) => clock.started,
        };
        PaymentState {
            id: self.id,
            user_id: self.user_id,
            status: self.status,
            expires_at: self.expires_at(read),
            starts_at: if started { NOW } else { NOW + 100 },
            pay_attempt: self.pay_attempt,
            payment_transaction_id: self.payment_transaction_id,
            refunding: self.refunding,
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
    PerformanceStarted,
    HoldLimit,
}

impl HoldOutcome {
    /// The answer to a hold the protocol refused.
    fn refused(decision: HoldDecision) -> Self {
        match decision {
            HoldDecision::PerformanceStarted => Self::PerformanceStarted,
            HoldDecision::HoldLimit => Self::HoldLimit,
            HoldDecision::Taken | HoldDecision::Hold { .. } => Self::Taken,
        }
    }
}

/// The hold limit as a transaction on one seat sees it: the requesting user's reservations of
/// the schedule's other seats that count against it
/// ([`ReservationState::counts_toward_hold_limit`]), and the limit. The user's reservations of
/// this seat are counted from its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserHolds {
    pub elsewhere: u32,
    pub max: u32,
}

impl UserHolds {
    /// The model's seat as its schedule's only one, under the service's default limit.
    pub const ONE_SEAT: Self = Self {
        elsewhere: 0,
        max: 4,
    };
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

    /// What a clock read now says: the facts of this very moment (within [`Clock`]'s bounds).
    pub fn clock(&self) -> Clock {
        Clock {
            started: self.started,
            lapsed: self
                .reservations
                .iter()
                .filter(|row| row.lapsed)
                .fold(0, |lapsed, row| lapsed | Clock::bit(row.id)),
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

    /// Whether the performance had begun, as a clock read at `read` saw it.
    fn started_at(&self, read: ClockRead) -> bool {
        match read {
            ClockRead::UnderLock => self.started,
            ClockRead::Before(clock) => clock.started,
        }
    }

    /// The requesting user's reservations that count against the hold limit, as a clock read
    /// at `read` sees them: those elsewhere and theirs of this seat.
    fn user_holds(&self, user_id: i64, read: ClockRead, holds: UserHolds) -> u32 {
        let here = self
            .reservations
            .iter()
            .filter(|row| {
                row.user_id == user_id && row.state_at(read).counts_toward_hold_limit(NOW)
            })
            .count();
        holds
            .elsewhere
            .saturating_add(u32::try_from(here).unwrap_or(u32::MAX))
    }

    /// The protocol's hold decision on the rows, as a clock read at `read` sees them.
    fn decide_hold(&self, user_id: i64, read: ClockRead, holds: UserHolds) -> HoldDecision {
        let active = self.active().map(|row| row.state_at(read));
        reservation::hold(
            &HoldFacts {
                active: active.as_ref(),
                starts_at: if self.started_at(read) {
                    NOW
                } else {
                    NOW + 100
                },
                user_holds: self.user_holds(user_id, read, holds),
                max_user_holds: holds.max,
            },
            NOW,
        )
    }

    /// `hold_seat`'s full transaction: lock the user's holds of the schedule, then the seat,
    /// read the clock, the seat's active reservation and the user's holds, decide, expire a
    /// lapsed hold, move the seat `AVAILABLE -> HELD` (rolling back if it was not available),
    /// insert.
    pub fn hold(&mut self, user_id: i64, holds: UserHolds) -> HoldOutcome {
        self.hold_at(user_id, ClockRead::UnderLock, holds)
    }

    /// [`SeatRows::hold`], deciding with the clock read at `read`.
    pub fn hold_at(&mut self, user_id: i64, read: ClockRead, holds: UserHolds) -> HoldOutcome {
        let before = self.clone();
        let active = self.active().cloned();
        let expire_first = match self.decide_hold(user_id, read, holds) {
            HoldDecision::Hold { expire_first } => expire_first,
            refused => return HoldOutcome::refused(refused),
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

    /// `HoldAvailableSeat` in its transaction, after the lock of the user's holds: one
    /// statement that locks the seat, reads the clock, moves the seat `AVAILABLE -> HELD` and
    /// inserts the reservation when the performance has not begun and the user is below the
    /// limit, or does nothing (`None`) when any of that is not so or the partial unique index
    /// refuses; the caller then runs [`SeatRows::hold`].
    pub fn hold_available(
        &mut self,
        user_id: i64,
        read: ClockRead,
        holds: UserHolds,
    ) -> Option<HoldOutcome> {
        if self.started_at(read) || self.user_holds(user_id, read, holds) >= holds.max {
            return None;
        }
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

    /// `Store::hold_seat` as one call: the hold of an available seat, else the full
    /// transaction.
    pub fn hold_seat(&mut self, user_id: i64, holds: UserHolds) -> HoldOutcome {
        self.hold_seat_at(user_id, ClockRead::UnderLock, holds)
    }

    /// [`SeatRows::hold_seat`], both transactions deciding with the clock read at `read`.
    pub fn hold_seat_at(&mut self, user_id: i64, read: ClockRead, holds: UserHolds) -> HoldOutcome {
        match self.hold_available(user_id, read, holds) {
            Some(outcome) => outcome,
            None => self.hold_at(user_id, read, holds),
        }
    }

    /// The first half of a hold written as a plain `SELECT` and decision, without the seat's
    /// row lock: what a hold that trusts its Redis lock alone would do.
    pub fn hold_read(&self, user_id: i64, holds: UserHolds) -> HoldDecision {
        self.decide_hold(user_id, ClockRead::UnderLock, holds)
    }

    /// The second half of that hold: an unconditional insert (no partial unique index, no
    /// conditional seat update).
    pub fn hold_write_unguarded(&mut self, decision: HoldDecision, user_id: i64) -> HoldOutcome {
        let HoldDecision::Hold { expire_first } = decision else {
            return HoldOutcome::refused(decision);
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
            refunding: false,
        });
        Some(id)
    }

    /// `begin_pay`: lock the seat and the reservation, read the clock, decide, `HELD -> PAYING`
    /// as a new attempt (conditional on status and attempt).
    pub fn begin_pay(&mut self, id: i64, user_id: i64) -> BeginOutcome {
        self.begin_pay_at(id, user_id, ClockRead::UnderLock)
    }

    /// [`SeatRows::begin_pay`], deciding with the clock read at `read`: the statement that
    /// begins the payment of a held reservation, else the full transaction.
    pub fn begin_pay_at(&mut self, id: i64, user_id: i64, read: ClockRead) -> BeginOutcome {
        match self.begin_held_attempt(id, user_id, read) {
            Some(attempt) => BeginOutcome::Pay { attempt },
            None => self.begin_pay_in_transaction_at(id, user_id, read),
        }
    }

    /// `BeginHeldAttempt`, the one statement `begin_pay` starts with: it locks the seat, reads
    /// the clock, and updates the reservation `HELD -> PAYING` at the next attempt when
    /// the caller owns it, its hold has not lapsed and the performance has not begun; otherwise
    /// it writes nothing (`None`) and the full transaction decides. Written apart from
    /// `protocol::payment::begin_pay`, as the SQL is: the tests check that the two agree.
    pub fn begin_held_attempt(&mut self, id: i64, user_id: i64, read: ClockRead) -> Option<i32> {
        let started = self.started_at(read);
        let row = self.row_mut(id)?;
        if row.user_id != user_id
            || row.status != Status::Held
            || row.expires_at(read) <= NOW
            || started
        {
            return None;
        }
        row.status = Status::Paying;
        row.pay_attempt += 1;
        Some(row.pay_attempt)
    }

    /// `begin_pay`'s full transaction: lock, read the clock, decide, write conditionally.
    pub fn begin_pay_in_transaction_at(
        &mut self,
        id: i64,
        user_id: i64,
        read: ClockRead,
    ) -> BeginOutcome {
        let started = self.started;
        let Some(row) = self.row_mut(id) else {
            return BeginOutcome::NotFound;
        };
        match payment::begin_pay(&row.payment_state(read, started), user_id, NOW) {
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

    /// `settle_attempt`: lock, read the clock, decide what the reply to `attempt` does, write
    /// it conditionally on this very attempt still paying. A debit that comes after the
    /// performance began records the refund decision (`refund_requested_at`) before the refund
    /// is asked for.
    pub fn settle(
        &mut self,
        id: i64,
        attempt: i32,
        reply: UseReply,
        refunded: bool,
        bugs: StoreBugs,
    ) -> SettleOutcome {
        self.settle_at(id, attempt, reply, refunded, bugs, ClockRead::UnderLock)
    }

    /// [`SeatRows::settle`], deciding with the clock read at `read`: for a debit, the
    /// statement that confirms it, else the full transaction.
    pub fn settle_at(
        &mut self,
        id: i64,
        attempt: i32,
        reply: UseReply,
        refunded: bool,
        bugs: StoreBugs,
        read: ClockRead,
    ) -> SettleOutcome {
        if let UseReply::Debited { transaction_id } = reply
            && !refunded
            && self.confirm_debited_attempt(id, attempt, transaction_id, read)
        {
            return SettleOutcome::Confirmed;
        }
        self.settle_in_transaction_at(id, attempt, reply, refunded, bugs, read)
    }

    /// `ConfirmDebitedAttempt`, the one statement the settle of a debit starts with: it locks
    /// the seat, reads the clock, and when the debit is attempt
    /// `attempt`'s, still paying with no refund decided, the performance not begun and the seat
    /// held, moves it `PAYING -> CONFIRMED` with the payment and the seat `HELD -> SOLD`;
    /// otherwise it writes nothing (`false`) and the full transaction decides. Written apart
    /// from `protocol::payment::apply_use_reply`, as the SQL is.
    pub fn confirm_debited_attempt(
        &mut self,
        id: i64,
        attempt: i32,
        transaction_id: i64,
        read: ClockRead,
    ) -> bool {
        let started = self.started_at(read);
        let seat_held = self.seat == SeatView::Held;
        let Some(row) = self.row_mut(id) else {
            return false;
        };
        if row.status != Status::Paying
            || row.pay_attempt != attempt
            || row.refunding
            || started
            || !seat_held
        {
            return false;
        }
        row.status = Status::Confirmed;
        row.payment_transaction_id = Some(transaction_id);
        row.payment_idempotency_key = Some(Key::new(&payment::use_key(KEY_NONCE, id, attempt)));
        self.seat = SeatView::Sold;
        true
    }

    /// `settle_attempt`'s full transaction: lock, read the clock, decide what the reply does,
    /// write it conditionally on this very attempt still paying.
    pub fn settle_in_transaction_at(
        &mut self,
        id: i64,
        attempt: i32,
        reply: UseReply,
        refunded: bool,
        bugs: StoreBugs,
        read: ClockRead,
    ) -> SettleOutcome {
        let Some(row) = self.row(id).cloned() else {
            return SettleOutcome::Moved;
        };
        let state = row.payment_state(read, self.started);
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
                    row.payment_idempotency_key =
                        Some(Key::new(&payment::use_key(KEY_NONCE, id, attempt)));
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
            AfterUse::DecideRefund => {
                if let Some(row) = self.row_mut(id).filter(|row| paying(row)) {
                    row.refunding = true;
                }
                SettleOutcome::Refund {
                    use_key: Key::new(&payment::use_key(KEY_NONCE, id, attempt)),
                }
            }
            AfterUse::Refund => SettleOutcome::Refund {
                use_key: Key::new(&payment::use_key(KEY_NONCE, id, attempt)),
            },
            AfterUse::Nothing => SettleOutcome::Moved,
        }
    }

    /// `cancel`: lock, read the clock, decide; a paid reservation records the cancellation's
    /// start and asks for its refund first, and is released only once `refunded`.
    pub fn cancel(&mut self, id: i64, user_id: i64, refunded: bool) -> CancelOutcome {
        self.cancel_at(id, user_id, refunded, ClockRead::UnderLock)
    }

    /// [`SeatRows::cancel`], deciding with the clock read at `read`.
    pub fn cancel_at(
        &mut self,
        id: i64,
        user_id: i64,
        refunded: bool,
        read: ClockRead,
    ) -> CancelOutcome {
        let Some(row) = self.row(id).cloned() else {
            return CancelOutcome::NotFound;
        };
        let released_from = match reservation::cancel(&row.state_at(read), user_id, NOW) {
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
