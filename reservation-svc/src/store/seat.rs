//! What every step does to a seat: lock its row and read the clock ([`lock_reservation`]),
//! move its status, end a reservation and free the seat.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::reservation::{SeatView, Status};

use super::StoreError;
use super::models::{ReservationRow, seat_status};
use super::queries::{LockSeat, MoveSeat};
use super::schema::{reservations, schedules};

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
/// start.
pub async fn lock_reservation(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<Locked>, StoreError> {
    let seat = reservations::table
        .find(id)
        .inner_join(schedules::table.on(schedules::id.eq(reservations::schedule_id)))
        .select((
            reservations::schedule_id,
            reservations::seat_no,
            schedules::starts_at,
        ))
        .first::<(i64, i32, DateTime<Utc>)>(conn)
        .await
        .optional()?;
    let Some((schedule_id, seat_no, starts_at)) = seat else {
        return Ok(None);
    };
    let (_, now) = LockSeat {
        schedule_id,
        seat_no,
    }
    .get_result::<(i64, DateTime<Utc>)>(conn)
    .await?;
    let row = reservations::table
        .find(id)
        .select(ReservationRow::as_select())
        .for_update()
        .first(conn)
        .await?;
    Ok(Some(Locked {
        row,
        now,
        starts_at,
    }))
}

/// Ends a reservation under its seat's lock: `from -> to` (conditional on it still being in
/// `from` at the same attempt) and its seat back to AVAILABLE. Returns the updated row, or
/// `None` when the reservation had moved on.
pub async fn end_reservation(
    conn: &mut AsyncPgConnection,
    row: &ReservationRow,
    from: Status,
    to: Status,
    now: DateTime<Utc>,
) -> Result<Option<ReservationRow>, DieselError> {
    let ended = diesel::update(
        reservations::table
            .find(row.id)
            .filter(reservations::status.eq(from.as_str()))
            .filter(reservations::pay_attempt.eq(row.pay_attempt)),
    )
    .set((
        reservations::status.eq(to.as_str()),
        reservations::updated_at.eq(now),
    ))
    .returning(ReservationRow::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if ended.is_some() {
        let seat_was = if from == Status::Confirmed {
            SeatView::Sold
        } else {
            SeatView::Held
        };
        move_seat(
            conn,
            row.schedule_id,
            row.seat_no,
            seat_was,
            SeatView::Available,
        )
        .await?;
    }
    Ok(ended)
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
