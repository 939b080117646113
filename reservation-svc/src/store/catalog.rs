//! The catalog (concerts, schedules and their seats) and the reads of reservations: single
//! statements, outside explicit transactions.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Timestamptz};
use diesel_async::RunQueryDsl;

use super::models::{ACTIVE_STATUSES_SQL, ConcertRow, ReservationRow, ScheduleRow, SeatRow};
use super::schema::{concerts, reservations, schedules};
use super::{Store, StoreError, db_now};
use crate::model::{
    Concert, ConcertId, ConcertPage, NewSchedule, Page, PageCursor, PageSize, Reservation,
    ReservationId, ReservationPage, Schedule, ScheduleId, SchedulePage, SchedulePosition, Seat,
    SeatNo, SeatPage, Title, UserId,
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

    /// A page of the concerts, oldest first, after the cursor's id.
    pub async fn concerts(
        &self,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<ConcertPage, StoreError> {
        let mut conn = self.pool.get().await?;
        let after = cursor.map_or(0, |cursor| cursor.last);
        let rows = concerts::table
            .filter(concerts::id.gt(after))
            .order(concerts::id)
            .limit(page_size.query_limit())
            .select(ConcertRow::as_select())
            .load(&mut conn)
            .await?;
        let concerts = rows
            .into_iter()
            .map(Concert::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Page::cut(concerts, page_size, 0, |concert: &Concert| {
            concert.id.get()
        }))
    }

    /// A page of the concert's schedules, by start then id, after the cursor's, with their seats
    /// available right now; `None` for an unknown concert. Available = seats minus reservations
    /// that own their seat at `now()` (a lapsed hold does not, as
    /// `protocol::reservation::ReservationState::holds_seat` says).
    pub async fn schedules(
        &self,
        concert_id: ConcertId,
        page_size: PageSize,
        cursor: Option<PageCursor<SchedulePosition>>,
    ) -> Result<Option<SchedulePage>, StoreError> {
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
        let after = cursor.map(|cursor| cursor.last);
        let rows = diesel::sql_query(format!(
            "SELECT s.id, s.concert_id, s.starts_at, s.seat_count, s.seat_price, \
                    s.seat_count - ( \
                        SELECT COUNT(*) FROM reservations r \
                        WHERE r.schedule_id = s.id \
                          AND r.status IN {ACTIVE_STATUSES_SQL} \
                          AND NOT (r.status = 'HELD' AND r.expires_at <= now()) \
                    )::INTEGER AS available_seats \
             FROM schedules s \
             WHERE s.concert_id = $1 \
               AND ($2::timestamptz IS NULL OR (s.starts_at, s.id) > ($2, $3)) \
             ORDER BY s.starts_at, s.id LIMIT $4"
        ))
        .bind::<BigInt, _>(concert_id.get())
        .bind::<Nullable<Timestamptz>, _>(after.map(|after| after.starts_at))
        .bind::<BigInt, _>(after.map_or(0, |after| after.id.get()))
        .bind::<BigInt, _>(page_size.query_limit())
        .load::<ScheduleRow>(&mut conn)
        .await?;
        let schedules = rows
            .into_iter()
            .map(Schedule::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Some(Page::cut(
            schedules,
            page_size,
            concert_id.get(),
            |schedule: &Schedule| SchedulePosition {
                starts_at: schedule.starts_at,
                id: schedule.id,
            },
        )))
    }

    /// A page of the schedule's seats, by number after the cursor's, as they read now; `None`
    /// for an unknown schedule.
    pub async fn seats(
        &self,
        schedule_id: ScheduleId,
        page_size: PageSize,
        cursor: Option<PageCursor<SeatNo>>,
    ) -> Result<Option<SeatPage>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = diesel::sql_query(format!(
            "SELECT s.seat_no, s.price, r.id AS reservation_id, r.user_id, r.status, \
                    r.expires_at, now() AS now \
             FROM seats s \
             LEFT JOIN reservations r \
               ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
              AND r.status IN {ACTIVE_STATUSES_SQL} \
             WHERE s.schedule_id = $1 AND s.seat_no > $2 \
             ORDER BY s.seat_no LIMIT $3"
        ))
        .bind::<BigInt, _>(schedule_id.get())
        .bind::<Integer, _>(cursor.map_or(0, |cursor| cursor.last.get()))
        .bind::<BigInt, _>(page_size.query_limit())
        .load::<SeatRow>(&mut conn)
        .await?;
        // A schedule has at least one seat, so only a page past its last seat can be empty.
        if rows.is_empty() {
            let exists = schedules::table
                .find(schedule_id.get())
                .select(schedules::id)
                .first::<i64>(&mut conn)
                .await
                .optional()?;
            if exists.is_none() {
                return Ok(None);
            }
        }
        let seats = rows
            .into_iter()
            .map(SeatRow::into_seat)
            .collect::<Result<_, _>>()?;
        Ok(Some(Page::cut(
            seats,
            page_size,
            schedule_id.get(),
            |seat: &Seat| seat.seat_no,
        )))
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
            .limit(page_size.query_limit())
            .select((ReservationRow::as_select(), db_now()))
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(reservations::id.lt(cursor.last));
        }
        let rows = query
            .load::<(ReservationRow, DateTime<Utc>)>(&mut conn)
            .await?;
        let reservations = rows
            .into_iter()
            .map(|(row, now)| row.into_reservation(now))
            .collect::<Result<_, _>>()?;
        Ok(Page::cut(
            reservations,
            page_size,
            user_id.get(),
            |reservation: &Reservation| reservation.id.get(),
        ))
    }
}
