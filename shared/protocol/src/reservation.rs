//! The seat-hold lifecycle: who may take a seat, what a seat reads as, and which holds the
//! sweeper may expire. Times are microseconds since the Unix epoch, always passed in.

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

/// What a hold does, decided under the seat's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldDecision {
    /// Take the seat: first mark `expire_first` (a lapsed hold of this seat) `Expired`, then
    /// move the seat to HELD and insert the new reservation.
    Hold { expire_first: Option<i64> },
    /// Another reservation owns the seat.
    Taken,
}

/// Decides a hold of a seat whose active reservation (if any) is `active`.
pub fn hold(active: Option<&ReservationState>, now: Micros) -> HoldDecision {
    match active {
        None => HoldDecision::Hold { expire_first: None },
        Some(reservation) if reservation.is_lapsed(now) => HoldDecision::Hold {
            expire_first: Some(reservation.id),
        },
        Some(_) => HoldDecision::Taken,
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

    #[test]
    fn a_free_seat_is_held() {
        assert_eq!(hold(None, NOW), HoldDecision::Hold { expire_first: None });
    }

    #[test]
    fn a_lapsed_hold_is_expired_and_the_seat_taken_over() {
        let lapsed = reservation(Status::Held, NOW);
        assert_eq!(
            hold(Some(&lapsed), NOW),
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
            assert_eq!(hold(Some(&owner), NOW), HoldDecision::Taken, "{status:?}");
        }
        // Paying and confirmed reservations keep the seat past the hold's expiry.
        for status in [Status::Paying, Status::Confirmed] {
            let owner = reservation(status, NOW - 1);
            assert_eq!(hold(Some(&owner), NOW), HoldDecision::Taken, "{status:?}");
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
