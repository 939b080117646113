//! The catalog (concerts, schedules and their seats) and the reads of reservations: single
//! statements, outside explicit transactions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Timestamptz};
use diesel_async::RunQueryDsl;

use super::models::{ACTIVE_STATUSES_SQL, ConcertRow, ReservationRow, ScheduleRow, SeatRow};
use super::schema::{concerts, reservations};
use super::{Store, StoreError, db_now};
use crate::model::{
    Concert, ConcertId, NewSchedule, PageCursor, PageSize, Reservation, ReservationId,
    ReservationPage, Schedule, ScheduleId, Seat, Title, UserId,
};

impl Store {
    pub async fn create_concert(&self, title: &Title) -> Result<Concert, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = diesel::insert_into(concerts::table)
            .values(concerts::title.eq(title.as_str()))
            .returning(ConcertRow::as_returning())
            .get_result(&mut conn)
            .await?;
        row.try_into()
    }

    /// Creates the schedule and its seats `1..=seat_count` in one statement; `None` when the
    /// concert does not exist.
    pub async fn create_schedule(
        &self,
        schedule: &NewSchedule,
    ) -> Result<Option<Schedule>, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = diesel::sql_query(super::CREATE_SCHEDULE_SQL)
            .bind::<BigInt, _>(schedule.concert_id.get())
            .bind::<Timestamptz, _>(schedule.starts_at)
            .bind::<Integer, _>(schedule.seat_count.get())
            .bind::<BigInt, _>(schedule.seat_price.get())
            .get_result::<ScheduleRow>(&mut conn)
            .await
            .optional()?;
        row.map(TryInto::try_into).transpose()
    }

    pub async fn concerts(&self) -> Result<Vec<Concert>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = concerts::table
            .order(concerts::id)
            .select(ConcertRow::as_select())
            .load(&mut conn)
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The concert's schedules with their seats available right now; `None` for an unknown
    /// concert. Available = seats minus reservations that own their seat at `now()` (a lapsed
    /// hold does not, as `protocol::reservation::ReservationState::holds_seat` says).
    pub async fn schedules(
        &self,
        concert_id: ConcertId,
    ) -> Result<Option<Vec<Schedule>>, StoreError> {
        let mut conn = self.pool.get().await?;
        let exists = concerts::table
            .find(concert_id.get())
            .select(concerts::id)
            .first::<i64>(&mut conn)
            .await
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = diesel::sql_query(format!(
            "SELECT s.id, s.concert_id, s.starts_at, s.seat_count, s.seat_price, \
                    s.seat_count - ( \
                        SELECT COUNT(*) FROM reservations r \
                        WHERE r.schedule_id = s.id \
                          AND r.status IN {ACTIVE_STATUSES_SQL} \
                          AND NOT (r.status = 'HELD' AND r.expires_at <= now()) \
                    )::INTEGER AS available_seats \
             FROM schedules s WHERE s.concert_id = $1 ORDER BY s.starts_at, s.id"
        ))
        .bind::<BigInt, _>(concert_id.get())
        .load::<ScheduleRow>(&mut conn)
        .await?;
        rows.into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Every seat of the schedule as it reads now; `None` for an unknown schedule.
    pub async fn seats(&self, schedule_id: ScheduleId) -> Result<Option<Vec<Seat>>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = diesel::sql_query(format!(
            "SELECT s.seat_no, s.price, r.id AS reservation_id, r.user_id, r.status, \
                    r.expires_at, now() AS now \
             FROM seats s \
             LEFT JOIN reservations r \
               ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
              AND r.status IN {ACTIVE_STATUSES_SQL} \
             WHERE s.schedule_id = $1 ORDER BY s.seat_no"
        ))
        .bind::<BigInt, _>(schedule_id.get())
        .load::<SeatRow>(&mut conn)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.into_iter()
            .map(SeatRow::into_seat)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub async fn reservation(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = reservations::table
            .find(id.get())
            .select((ReservationRow::as_select(), db_now()))
            .first::<(ReservationRow, DateTime<Utc>)>(&mut conn)
            .await
            .optional()?;
        row.map(|(row, now)| row.into_reservation(now)).transpose()
    }

    /// A page of the user's reservations, newest first, below the cursor's id.
    pub async fn reservations(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<ReservationPage, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut query = reservations::table
            .filter(reservations::user_id.eq(user_id.get()))
            .order(reservations::id.desc())
            // One row more than asked tells whether another page follows.
            .limit(i64::from(page_size.get()) + 1)
            .select((ReservationRow::as_select(), db_now()))
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(reservations::id.lt(cursor.before_id));
        }
        let rows = query
            .load::<(ReservationRow, DateTime<Utc>)>(&mut conn)
            .await?;
        let (rows, next) = shared::values::page(rows, page_size, user_id, |(row, _)| row.id);
        let reservations = rows
            .into_iter()
            .map(|(row, now)| row.into_reservation(now))
            .collect::<Result<_, _>>()?;
        Ok(ReservationPage { reservations, next })
    }
}
