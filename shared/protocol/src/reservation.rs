//! The seat-hold lifecycle: who may take a seat (and how many seats of a schedule one user may
//! hold at once), what a seat reads as, and which holds the sweeper may expire. Times are
//! microseconds since the Unix epoch, always passed in.

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// A reservation's state. `Held`, `Paying` and `Confirmed` are active: they own their seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Held,
    Paying,
    Confirmed,
    Cancelled,
    Expired,
}

impl Status {
    /// Whether a reservation in this state owns its seat (the partial unique index's states).
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Held | Self::Paying | Self::Confirmed)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Paying => "PAYING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "HELD" => Some(Self::Held),
            "PAYING" => Some(Self::Paying),
            "CONFIRMED" => Some(Self::Confirmed),
            "CANCELLED" => Some(Self::Cancelled),
            "EXPIRED" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// What a seat reads as to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeatView {
    Available,
    Held,
    Sold,
}

/// The facts of a reservation the lifecycle decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationState {
    pub id: i64,
    pub user_id: i64,
    pub status: Status,
    pub expires_at: Micros,
}

impl ReservationState {
    /// A hold whose time is up: it no longer owns its seat, whether or not the sweeper has
    /// marked it `Expired` yet.
    pub const fn is_lapsed(&self, now: Micros) -> bool {
        matches!(self.status, Status::Held) && self.expires_at <= now
    }

    /// Whether this reservation owns its seat at `now`.
    pub const fn holds_seat(&self, now: Micros) -> bool {
        self.status.is_active() && !self.is_lapsed(now)
    }

    /// Whether it counts against its user's hold limit on its schedule at `now`: a hold whose
    /// time is not up, or a payment under way (past its hold's time too: its money may be on
    /// its way). A sale, a cancellation, an expiry or a lapsed hold does not.
    pub const fn counts_toward_hold_limit(&self, now: Micros) -> bool {
        matches!(self.status, Status::Held | Status::Paying) && self.holds_seat(now)
    }
}

/// How a seat reads at `now`, given its active reservation (if any). A lapsed hold reads as
/// available at once, before any sweeper has run.
pub fn seat_view(active: Option<&ReservationState>, now: Micros) -> SeatView {
    match active {
        Some(reservation) if reservation.holds_seat(now) => match reservation.status {
            Status::Confirmed => SeatView::Sold,
            _ => SeatView::Held,
        },
        _ => SeatView::Available,
    }
}

/// What a hold is decided on, gathered under the seat's row lock and the lock of the user's
/// holds on the schedule, with the clock read once both are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldFacts<'a> {
    /// The seat's active reservation, if it has one.
    pub active: Option<&'a ReservationState>,
    /// When the schedule's performance begins.
    pub starts_at: Micros,
    /// The requesting user's reservations of the schedule that count against the limit at
    /// `now` ([`ReservationState::counts_toward_hold_limit`]).
    pub user_holds: u32,
    /// The most such reservations one user may have on one schedule.
    pub max_user_holds: u32,
}

/// What a hold does, decided under the seat's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldDecision {
    /// Take the seat: first mark `expire_first` (a lapsed hold of this seat) `Expired`, then
    /// move the seat to HELD and insert the new reservation.
    Hold { expire_first: Option<i64> },
    /// Another reservation owns the seat.
    Taken,
    /// The performance has begun: nothing of it is held any more.
    PerformanceStarted,
    /// The user already has as many holds and payments under way on the schedule as they may.
    HoldLimit,
}

/// Decides a hold at `now`. A refusal writes nothing (not even the expiry of a lapsed hold).
/// A seat owned by another reservation is `Taken` whatever else holds, as Redis's taken mark
/// answers before Postgres is asked; then the performance's start; then the user's limit.
pub fn hold(facts: &HoldFacts<'_>, now: Micros) -> HoldDecision {
    let expire_first = match facts.active {
        None => None,
        Some(reservation) if reservation.is_lapsed(now) => Some(reservation.id),
        Some(_) => return HoldDecision::Taken,
    };
    if facts.starts_at <= now {
        HoldDecision::PerformanceStarted
    } else if facts.user_holds >= facts.max_user_holds {
        HoldDecision::HoldLimit
    } else {
        HoldDecision::Hold { expire_first }
    }
}

/// What a hold leaves in the seat's Redis key once its transaction has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterHold {
    /// The hold took the seat: the key becomes the seat's taken mark, naming `reservation`,
    /// for `for_micros`, at most what is left of the hold. Until it goes (it lapses with the
    /// hold; cancelling the reservation deletes it) later holds of the seat are refused by
    /// Redis alone, without reaching Postgres. A mark that outlives its reservation only
    /// refuses holds until it lapses: Postgres, not the mark, decides who gets a seat.
    MarkTaken {
        reservation: i64,
        for_micros: Micros,
    },
    /// Release the lock (compare-and-delete): the seat was not taken by this hold, or its hold
    /// has no time left to mark.
    Release,
}

/// Decides [`AfterHold`]: `held` is the reservation the hold inserted, if any, and how long it
/// has left, counted from before its transaction began (so never more than it really has).
pub fn after_hold(held: Option<(i64, Micros)>) -> AfterHold {
    match held {
        Some((reservation, left)) if left > 0 => AfterHold::MarkTaken {
            reservation,
            for_micros: left,
        },
        _ => AfterHold::Release,
    }
}

/// Whether the sweeper expires this reservation (freeing its seat). Only a lapsed `Held`:
/// never one that is paying, whose money may be on its way.
pub fn sweepable(reservation: &ReservationState, now: Micros) -> bool {
    reservation.is_lapsed(now)
}

/// A reservation's status as of `now`: a lapsed hold reads as `Expired` before the sweeper
/// has marked it.
pub fn status_at(reservation: &ReservationState, now: Micros) -> Status {
    if reservation.is_lapsed(now) {
        Status::Expired
    } else {
        reservation.status
    }
}

/// What a cancellation by `user_id` does, decided under the seat's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelDecision {
    /// Mark it `Cancelled` and free the seat.
    Release,
    /// Already cancelled: answer it as it is.
    AlreadyCancelled,
    /// Paid: refund the payment, then cancel and free the seat.
    RefundThenRelease,
    NotOwner,
    HoldExpired,
    /// Paying (retry once the payment settles) or expired.
    InvalidState,
}

pub fn cancel(reservation: &ReservationState, user_id: i64, now: Micros) -> CancelDecision {
    if reservation.user_id != user_id {
        return CancelDecision::NotOwner;
    }
    match reservation.status {
        Status::Held if reservation.is_lapsed(now) => CancelDecision::HoldExpired,
        Status::Held => CancelDecision::Release,
        Status::Cancelled => CancelDecision::AlreadyCancelled,
        Status::Confirmed => CancelDecision::RefundThenRelease,
        Status::Paying | Status::Expired => CancelDecision::InvalidState,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_000_000;

    fn reservation(status: Status, expires_at: Micros) -> ReservationState {
        ReservationState {
            id: 7,
            user_id: 1,
            status,
            expires_at,
        }
    }

    /// A hold of a seat whose active reservation is `active`, before the performance, by a
    /// user with no other hold.
    fn facts(active: Option<&ReservationState>) -> HoldFacts<'_> {
        HoldFacts {
            active,
            starts_at: NOW + 1,
            user_holds: 0,
            max_user_holds: 4,
        }
    }

    #[test]
    fn a_free_seat_is_held() {
        assert_eq!(
            hold(&facts(None), NOW),
            HoldDecision::Hold { expire_first: None }
        );
    }

    #[test]
    fn a_lapsed_hold_is_expired_and_the_seat_taken_over() {
        let lapsed = reservation(Status::Held, NOW);
        assert_eq!(
            hold(&facts(Some(&lapsed)), NOW),
            HoldDecision::Hold {
                expire_first: Some(7)
            }
        );
        assert_eq!(seat_view(Some(&lapsed), NOW), SeatView::Available);
    }

    #[test]
    fn a_live_hold_a_payment_or_a_sale_keeps_the_seat() {
        for status in [Status::Held, Status::Paying, Status::Confirmed] {
            let owner = reservation(status, NOW + 1);
            assert_eq!(
                hold(&facts(Some(&owner)), NOW),
                HoldDecision::Taken,
                "{status:?}"
            );
        }
        // Paying and confirmed reservations keep the seat past the hold's expiry.
        for status in [Status::Paying, Status::Confirmed] {
            let owner = reservation(status, NOW - 1);
            assert_eq!(
                hold(&facts(Some(&owner)), NOW),
                HoldDecision::Taken,
                "{status:?}"
            );
        }
    }

    #[test]
    fn nothing_is_held_once_the_performance_has_begun() {
        let lapsed = reservation(Status::Held, NOW);
        for active in [None, Some(&lapsed)] {
            let started = HoldFacts {
                starts_at: NOW,
                ..facts(active)
            };
            assert_eq!(hold(&started, NOW), HoldDecision::PerformanceStarted);
        }
        // A seat that is taken reads as taken, as Redis's mark answers it.
        let owner = reservation(Status::Held, NOW + 1);
        let started = HoldFacts {
            starts_at: NOW - 1,
            ..facts(Some(&owner))
        };
        assert_eq!(hold(&started, NOW), HoldDecision::Taken);
    }

    #[test]
    fn a_user_at_the_limit_holds_nothing_more_of_the_schedule() {
        let lapsed = reservation(Status::Held, NOW);
        for active in [None, Some(&lapsed)] {
            let below = HoldFacts {
                user_holds: 3,
                ..facts(active)
            };
            assert!(matches!(hold(&below, NOW), HoldDecision::Hold { .. }));
            let at = HoldFacts {
                user_holds: 4,
                ..facts(active)
            };
            assert_eq!(hold(&at, NOW), HoldDecision::HoldLimit);
            // The start comes first: past it the limit no longer matters.
            let started = HoldFacts {
                starts_at: NOW,
                ..at
            };
            assert_eq!(hold(&started, NOW), HoldDecision::PerformanceStarted);
        }
    }

    #[test]
    fn live_holds_and_payments_count_toward_the_limit() {
        assert!(reservation(Status::Held, NOW + 1).counts_toward_hold_limit(NOW));
        assert!(reservation(Status::Paying, NOW + 1).counts_toward_hold_limit(NOW));
        // A payment under way counts past its hold's time too.
        assert!(reservation(Status::Paying, NOW).counts_toward_hold_limit(NOW));
        assert!(!reservation(Status::Held, NOW).counts_toward_hold_limit(NOW));
        for status in [Status::Confirmed, Status::Cancelled, Status::Expired] {
            assert!(
                !reservation(status, NOW + 1).counts_toward_hold_limit(NOW),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_hold_that_took_the_seat_marks_it_taken_for_the_time_it_has_left() {
        assert_eq!(
            after_hold(Some((7, 300_000_000))),
            AfterHold::MarkTaken {
                reservation: 7,
                for_micros: 300_000_000
            }
        );
        // Nothing left to mark (the transaction outlasted the hold), or nothing taken.
        assert_eq!(after_hold(Some((7, 0))), AfterHold::Release);
        assert_eq!(after_hold(Some((7, -5))), AfterHold::Release);
        assert_eq!(after_hold(None), AfterHold::Release);
    }

    #[test]
    fn seats_read_as_their_owner_makes_them() {
        assert_eq!(seat_view(None, NOW), SeatView::Available);
        assert_eq!(
            seat_view(Some(&reservation(Status::Held, NOW + 1)), NOW),
            SeatView::Held
        );
        assert_eq!(
            seat_view(Some(&reservation(Status::Paying, NOW - 1)), NOW),
            SeatView::Held
        );
        assert_eq!(
            seat_view(Some(&reservation(Status::Confirmed, 0)), NOW),
            SeatView::Sold
        );
    }

    #[test]
    fn only_the_owner_cancels_and_only_a_live_hold_is_released() {
        let held = reservation(Status::Held, NOW + 1);
        assert_eq!(cancel(&held, 2, NOW), CancelDecision::NotOwner);
        assert_eq!(cancel(&held, 1, NOW), CancelDecision::Release);
        assert_eq!(
            cancel(&reservation(Status::Held, NOW), 1, NOW),
            CancelDecision::HoldExpired
        );
        assert_eq!(
            cancel(&reservation(Status::Cancelled, 0), 1, NOW),
            CancelDecision::AlreadyCancelled
        );
        assert_eq!(
            cancel(&reservation(Status::Confirmed, 0), 1, NOW),
            CancelDecision::RefundThenRelease
        );
        for status in [Status::Paying, Status::Expired] {
            assert_eq!(
                cancel(&reservation(status, NOW + 1), 1, NOW),
                CancelDecision::InvalidState
            );
        }
    }

    #[test]
    fn a_lapsed_hold_reads_as_expired() {
        assert_eq!(
            status_at(&reservation(Status::Held, NOW), NOW),
            Status::Expired
        );
        assert_eq!(
            status_at(&reservation(Status::Held, NOW + 1), NOW),
            Status::Held
        );
        assert_eq!(
            status_at(&reservation(Status::Paying, 0), NOW),
            Status::Paying
        );
    }

    #[test]
    fn the_sweeper_expires_lapsed_holds_only() {
        assert!(sweepable(&reservation(Status::Held, NOW), NOW));
        assert!(!sweepable(&reservation(Status::Held, NOW + 1), NOW));
        assert!(!sweepable(&reservation(Status::Paying, 0), NOW));
        assert!(!sweepable(&reservation(Status::Confirmed, 0), NOW));
    }
}
