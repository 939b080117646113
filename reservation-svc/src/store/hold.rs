//! A hold: an available seat in one statement ([`HoldAvailableSeat`]); any other seat in one
//! transaction under its row lock, as `protocol::reservation::hold` decides.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::reservation::{HoldDecision, SeatView, Status};

use super::models::{ACTIVE_STATUSES, NewReservation, ReservationRow};
use super::queries::{HoldAvailableSeat, LockSeat};
use super::schema::{reservations, schedules};
use super::seat::{end_reservation, move_seat};
use super::{Store, StoreError, micros};
use crate::model::{HoldOutcome, HoldRequest};

/// The index that allows one active reservation per seat.
const ONE_ACTIVE_RESERVATION_PER_SEAT: &str = "one_active_reservation_per_seat";

/// Why a hold's transaction rolled back.
enum HoldFailure {
    Taken,
    Store(StoreError),
}

impl From<DieselError> for HoldFailure {
    fn from(error: DieselError) -> Self {
        if is_second_active_reservation(&error) {
            Self::Taken
        } else {
            Self::Store(error.into())
        }
    }
}

impl From<StoreError> for HoldFailure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// Whether `error` is the partial unique index refusing a second active reservation of a seat.
fn is_second_active_reservation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(ONE_ACTIVE_RESERVATION_PER_SEAT)
    )
}

impl Store {
    /// A seat that is available is held by one statement ([`HoldAvailableSeat`]); any other
    /// seat by one transaction: lock the seat's row, let the protocol decide, expire a lapsed
    /// hold if there is one, move the seat AVAILABLE -> HELD, insert the reservation.
    pub async fn hold_seat(
        &self,
        request: HoldRequest,
        hold_ttl: Duration,
    ) -> Result<HoldOutcome, StoreError> {
        let hold_ttl = chrono::Duration::from_std(hold_ttl)
            .map_err(|error| StoreError::Internal(error.to_string()))?;
        let mut conn = self.pool.get().await?;
        let hold_available = HoldAvailableSeat {
            user_id: request.user_id.get(),
            schedule_id: request.schedule_id.get(),
            seat_no: request.seat_no.get(),
            hold_ttl_micros: hold_ttl.num_microseconds().unwrap_or(i64::MAX),
        };
        match hold_available
            .get_result::<(ReservationRow, DateTime<Utc>)>(&mut conn)
            .await
            .optional()
        {
            Ok(Some((row, now))) => return Ok(HoldOutcome::Held(row.into_reservation(now)?)),
            // Not an available seat (or no such seat): the transaction below tells which.
            Ok(None) => {}
            // An active reservation of a seat whose row reads AVAILABLE: the two disagree, so
            // the transaction below decides from the reservation, as the protocol says.
            Err(error) if is_second_active_reservation(&error) => {}
            Err(error) => return Err(error.into()),
        }
        let outcome = conn
            .build_transaction()
            .read_committed()
            .run::<_, HoldFailure, _>(async |conn| {
                hold_in_transaction(conn, request, hold_ttl).await
            })
            .await;
        match outcome {
            Ok(outcome) => Ok(outcome),
            Err(HoldFailure::Taken) => Ok(HoldOutcome::Taken),
            Err(HoldFailure::Store(error)) => Err(error),
        }
    }
}

async fn hold_in_transaction(
    conn: &mut AsyncPgConnection,
    request: HoldRequest,
    hold_ttl: chrono::Duration,
) -> Result<HoldOutcome, HoldFailure> {
    let schedule_id = request.schedule_id.get();
    let seat_no = request.seat_no.get();
    let seat_count = schedules::table
        .find(schedule_id)
        .select(schedules::seat_count)
        .first::<i32>(conn)
        .await
        .optional()?;
    let Some(seat_count) = seat_count else {
        return Ok(HoldOutcome::ScheduleNotFound);
    };
    if seat_no > seat_count {
        return Ok(HoldOutcome::SeatOutOfRange { seat_count });
    }

    let (price, now) = LockSeat {
        schedule_id,
        seat_no,
    }
    .get_result::<(i64, DateTime<Utc>)>(conn)
    .await?;
    let active = reservations::table
        .filter(reservations::schedule_id.eq(schedule_id))
        .filter(reservations::seat_no.eq(seat_no))
        .filter(reservations::status.eq_any(ACTIVE_STATUSES))
        .select(ReservationRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let state = active.as_ref().map(ReservationRow::state).transpose()?;

    let HoldDecision::Hold { expire_first } =
        protocol::reservation::hold(state.as_ref(), micros(now))
    else {
        return Ok(HoldOutcome::Taken);
    };
    if let (Some(lapsed), Some(row)) = (expire_first, &active)
        && lapsed == row.id
    {
        end_reservation(conn, row, Status::Held, Status::Expired, now).await?;
    }
    let moved = move_seat(
        conn,
        schedule_id,
        seat_no,
        SeatView::Available,
        SeatView::Held,
    )
    .await?;
    if moved != 1 {
        // The seat row says taken though no reservation owns it: roll back, write nothing.
        return Err(HoldFailure::Taken);
    }
    let row = diesel::insert_into(reservations::table)
        .values(NewReservation {
            user_id: request.user_id.get(),
            schedule_id,
            seat_no,
            price,
            status: Status::Held.as_str(),
            expires_at: now + hold_ttl,
        })
        .returning(ReservationRow::as_returning())
        .get_result(conn)
        .await?;
    Ok(HoldOutcome::Held(row.into_reservation(now)?))
}
