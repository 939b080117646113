//! A hold's full transaction, for a seat that is not simply available and for every refusal:
//! the lock of the user's holds, the seat's row lock and clock, its active reservation and the
//! user's holds, `protocol::reservation::hold`'s decision, the expiry of a lapsed hold, the
//! seat's move AVAILABLE -> HELD and the insert; and how a hold's errors read.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::reservation::{HoldDecision, HoldFacts, SeatView, Status};

use super::models::{ACTIVE_STATUSES, NewReservation, ReservationRow};
use super::queries::{LockSeat, LockUserHolds, SEAT_LOCK, SEAT_TAKEN};
use super::schema::{reservations, schedules};
use super::seat::{end_reservation, move_seat};
use super::{StoreError, micros};
use crate::model::{HoldOutcome, HoldRequest};

/// The index that allows one active reservation per seat.
const ONE_ACTIVE_RESERVATION_PER_SEAT: &str = "one_active_reservation_per_seat";

/// Why a hold's transaction rolled back.
pub enum HoldFailure {
    Taken,
    /// The seat's lock in Postgres is another transaction's.
    Locked,
    Store(StoreError),
}

impl From<DieselError> for HoldFailure {
    fn from(error: DieselError) -> Self {
        if is_second_active_reservation(&error) {
            Self::Taken
        } else if is_refused_by(&error, SEAT_LOCK) {
            Self::Locked
        } else if is_refused_by(&error, SEAT_TAKEN) {
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

/// Whether `error` is [`SeatLock`] refusing the hold for `reason` ([`SEAT_LOCK`] or
/// [`SEAT_TAKEN`]).
pub fn is_refused_by(error: &DieselError, reason: &str) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(_, info) if info.constraint_name() == Some(reason)
    )
}

/// Whether `error` is the partial unique index refusing a second active reservation of a seat.
pub fn is_second_active_reservation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(ONE_ACTIVE_RESERVATION_PER_SEAT)
    )
}

pub async fn hold_in_transaction(
    conn: &mut AsyncPgConnection,
    request: HoldRequest,
    hold_ttl: chrono::Duration,
    max_user_holds: u32,
) -> Result<HoldOutcome, HoldFailure> {
    let user_id = request.user_id.get();
    let schedule_id = request.schedule_id.get();
    let seat_no = request.seat_no.get();
    // The lock of the user's holds in a statement of its own, before the one that counts them
    // (see the module's documentation); the schedule's row is read beside it.
    let (user_locked, schedule) = futures::join!(
        LockUserHolds::new(user_id, schedule_id).execute(&mut &*conn),
        schedules::table
            .find(schedule_id)
            .select((schedules::seat_count, schedules::starts_at))
            .first::<(i32, DateTime<Utc>)>(&mut &*conn),
    );
    user_locked?;
    let Some((seat_count, starts_at)) = schedule.optional()? else {
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
    let (active, user_holds) = futures::join!(
        reservations::table
            .filter(reservations::schedule_id.eq(schedule_id))
            .filter(reservations::seat_no.eq(seat_no))
            .filter(reservations::status.eq_any(ACTIVE_STATUSES))
            .select(ReservationRow::as_select())
            .first(&mut &*conn),
        // `ReservationState::counts_toward_hold_limit`, at the decision's clock.
        reservations::table
            .filter(reservations::user_id.eq(user_id))
            .filter(reservations::schedule_id.eq(schedule_id))
            .filter(
                reservations::status
                    .eq(Status::Paying.as_str())
                    .or(reservations::status
                        .eq(Status::Held.as_str())
                        .and(reservations::expires_at.gt(now))),
            )
            .count()
            .get_result::<i64>(&mut &*conn),
    );
    let active = active.optional()?;
    let state = active.as_ref().map(ReservationRow::state).transpose()?;
    let decision = protocol::reservation::hold(
        &HoldFacts {
            active: state.as_ref(),
            starts_at: micros(starts_at),
            user_holds: u32::try_from(user_holds?).unwrap_or(u32::MAX),
            max_user_holds,
        },
        micros(now),
    );
    let expire_first = match decision {
        HoldDecision::Hold { expire_first } => expire_first,
        HoldDecision::Taken => return Ok(HoldOutcome::Taken),
        HoldDecision::PerformanceStarted => return Ok(HoldOutcome::PerformanceStarted),
        HoldDecision::HoldLimit => {
            return Ok(HoldOutcome::HoldLimit {
                max: max_user_holds,
            });
        }
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
            user_id,
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
