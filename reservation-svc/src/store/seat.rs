//! What every step does to a seat: lock its row and read the clock ([`lock_reservation`]),
//! move its status, end a reservation and free the seat.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::reservation::{SeatView, Status};

use super::StoreError;
use super::locked::{EndReservation, LockReservation};
use super::models::{ReservationRow, seat_status};
use super::queries::MoveSeat;

/// A reservation under its seat's row lock.
pub struct Locked {
    pub row: ReservationRow,
    /// The clock, read once the seat's row was locked.
    pub now: DateTime<Utc>,
    /// When its performance begins.
    pub starts_at: DateTime<Utc>,
}

impl Locked {
    pub fn payment_state(&self) -> Result<protocol::payment::PaymentState, StoreError> {
        self.row.payment_state(self.starts_at)
    }
}

/// Locks the reservation's seat, then the reservation (the order every writer follows), and
/// returns the reservation with the clock read under the seat's lock and its performance's
/// start: one statement, [`LockReservation`].
pub async fn lock_reservation(
    conn: &AsyncPgConnection,
    id: i64,
) -> Result<Option<Locked>, DieselError> {
    let locked = LockReservation { id }
        .get_result::<(ReservationRow, DateTime<Utc>, DateTime<Utc>)>(&mut &*conn)
        .await
        .optional()?;
    Ok(locked.map(|(row, now, starts_at)| Locked {
        row,
        now,
        starts_at,
    }))
}

/// Ends a reservation under its seat's lock: `from -> to` (conditional on it still being in
/// `from` at the same attempt) and its seat back to AVAILABLE, in one statement
/// ([`EndReservation`]). Returns the updated row, or `None` when the reservation had moved on.
pub async fn end_reservation(
    conn: &AsyncPgConnection,
    row: &ReservationRow,
    from: Status,
    to: Status,
    now: DateTime<Utc>,
) -> Result<Option<ReservationRow>, DieselError> {
    let seat_was = if from == Status::Confirmed {
        SeatView::Sold
    } else {
        SeatView::Held
    };
    EndReservation {
        id: row.id,
        attempt: row.pay_attempt,
        from: from.as_str(),
        to: to.as_str(),
        seat_was: seat_status(seat_was),
        now,
    }
    .get_result(&mut &*conn)
    .await
    .optional()
}

/// Moves a seat from `from` to `to`; returns 1 when it was in `from`, else 0.
pub async fn move_seat(
    conn: &mut AsyncPgConnection,
    schedule_id: i64,
    seat_no: i32,
    from: SeatView,
    to: SeatView,
) -> Result<usize, DieselError> {
    MoveSeat {
        schedule_id,
        seat_no,
        from: seat_status(from),
        to: seat_status(to),
    }
    .execute(conn)
    .await
}
