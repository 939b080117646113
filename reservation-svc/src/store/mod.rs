//! Postgres access. Every change of a seat or of its reservations first locks the seat's row
//! (`SELECT ... FOR UPDATE`), so holds, cancellations and the sweeper of any replica serialize
//! per seat and always take their locks in the same order: seat, then reservation. The partial
//! unique index on active reservations backs that up.

mod models;
pub mod schema;

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use protocol::payment::{AfterUse, BeginPay, UseReply};
use protocol::reservation::{CancelDecision, HoldDecision, SeatView, Status};
use shared::db::PgPool;
pub use shared::db::StoreError;

use crate::domain::{
    Concert, ConcertId, HoldRequest, NewSchedule, OwnerRequest, PageCursor, PageSize, Reservation,
    ReservationId, ReservationPage, Schedule, ScheduleId, Seat, Title, UserId,
};
use models::{ConcertRow, NewReservation, ReservationRow, ScheduleRow, SeatRow, parse_status};
use schema::{concerts, payment_key_namespace, reservations, schedules};

/// The index that allows one active reservation per seat.
const ONE_ACTIVE_RESERVATION_PER_SEAT: &str = "one_active_reservation_per_seat";
const ACTIVE: [&str; 3] = ["HELD", "PAYING", "CONFIRMED"];

/// How a hold ended.
#[derive(Debug)]
pub enum HoldOutcome {
    Held(Reservation),
    ScheduleNotFound,
    SeatOutOfRange { seat_count: i32 },
    Taken,
}

/// How a cancellation ended.
#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(Reservation),
    NotFound,
    /// Paid: refund it, then cancel again with the refund done.
    RefundFirst(PaidReservation),
    Refused(CancelDecision),
}

/// How the start of a payment ended.
#[derive(Debug)]
pub enum BeginOutcome {
    /// Send the `Use` of this attempt for `price` points on behalf of `user_id`.
    Pay {
        attempt: i32,
        price: i64,
        user_id: i64,
        schedule_id: i64,
        seat_no: i32,
    },
    Confirmed(Reservation),
    NotFound,
    Refused(BeginPay),
}

/// What the reply to an attempt's `Use` did.
#[derive(Debug)]
pub enum SettleOutcome {
    Confirmed(Reservation),
    /// Refused for insufficient balance: back to `HELD`, or `EXPIRED` if the hold ran out.
    Refused,
    StillPaying,
    /// The reservation moved on without this debit: refund the `Use` made under `use_key`.
    Refund {
        user_id: i64,
        use_key: String,
    },
    /// The reservation moved on; nothing was debited.
    Moved,
}

/// A payment left `PAYING`, claimed by the reconciler.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct StuckPayment {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Integer)]
    pub pay_attempt: i32,
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = BigInt)]
    pub price: i64,
}

/// A paid reservation that a cancellation must refund first.
#[derive(Debug)]
pub struct PaidReservation {
    pub user_id: i64,
    pub price: i64,
    pub use_key: Option<String>,
}

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

/// Whether `error` is the partial unique index refusing a second active reservation of a seat.
fn is_second_active_reservation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(ONE_ACTIVE_RESERVATION_PER_SEAT)
    )
}

impl From<StoreError> for HoldFailure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The namespace of this database's wallet keys ([`Store::payment_key_namespace`]).
    key_namespace: std::sync::Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .field("key_namespace", &self.key_namespace)
            .finish()
    }
}

diesel::define_sql_function! {
    /// The transaction's clock, for reads: `now()`, when the transaction began. Decisions never
    /// use it: theirs is read after the seat's row is locked ([`LockSeat`]). (A function rather
    /// than an SQL literal, which would keep diesel from preparing the statements that read it
    /// once per connection.)
    #[sql_name = "now"]
    fn db_now() -> Timestamptz;
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

impl Store {
    /// A store whose payments use the wallet keys of `key_namespace`, the one
    /// [`Store::payment_key_namespace`] reads from the database.
    pub fn new(pool: PgPool, key_namespace: &str) -> Self {
        Self {
            pool,
            key_namespace: key_namespace.into(),
        }
    }

    /// Opens a store on `pool` with the database's payment key namespace.
    pub async fn open(pool: PgPool) -> Result<Self, StoreError> {
        let namespace = Self::payment_key_namespace(&pool).await?;
        Ok(Self::new(pool, &namespace))
    }

    /// The namespace of this database's wallet keys, given once, at random, by the first
    /// service to ask (an empty one for a database that took payments before namespaces
    /// existed; see the migration that made them).
    pub async fn payment_key_namespace(pool: &PgPool) -> Result<String, StoreError> {
        let mut conn = pool.get().await?;
        let fresh = format!("{:016x}", rand::random::<u64>());
        diesel::insert_into(payment_key_namespace::table)
            .values(payment_key_namespace::namespace.eq(&fresh))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
        Ok(payment_key_namespace::table
            .select(payment_key_namespace::namespace)
            .first::<String>(&mut conn)
            .await?)
    }

    /// The namespace of this store's wallet keys.
    pub fn key_namespace(&self) -> &str {
        &self.key_namespace
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn create_concert(&self, title: &Title) -> Result<Concert, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = diesel::insert_into(concerts::table)
            .values(concerts::title.eq(title.as_str()))
            .returning(ConcertRow::as_returning())
            .get_result(&mut conn)
            .await?;
        Ok(row.into())
    }

    /// Creates the schedule and its seats `1..=seat_count` in one statement; `None` when the
    /// concert does not exist.
    pub async fn create_schedule(
        &self,
        schedule: &NewSchedule,
    ) -> Result<Option<Schedule>, StoreError> {
        let mut conn = self.pool.get().await?;
        let row = diesel::sql_query(
            "WITH concert AS (SELECT id FROM concerts WHERE id = $1), \
             schedule AS ( \
                 INSERT INTO schedules (concert_id, starts_at, seat_count, seat_price) \
                 SELECT id, $2, $3, $4 FROM concert RETURNING * \
             ), \
             created_seats AS ( \
                 INSERT INTO seats (schedule_id, seat_no, price) \
                 SELECT schedule.id, seat_no, schedule.seat_price \
                 FROM schedule, generate_series(1, schedule.seat_count) AS seat_no \
             ) \
             SELECT id, concert_id, starts_at, seat_count, seat_price, \
                    seat_count AS available_seats \
             FROM schedule",
        )
        .bind::<BigInt, _>(schedule.concert_id.get())
        .bind::<Timestamptz, _>(schedule.starts_at)
        .bind::<Integer, _>(schedule.seat_count.get())
        .bind::<BigInt, _>(schedule.seat_price.get())
        .get_result::<ScheduleRow>(&mut conn)
        .await
        .optional()?;
        Ok(row.map(Into::into))
    }

    pub async fn concerts(&self) -> Result<Vec<Concert>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = concerts::table
            .order(concerts::id)
            .select(ConcertRow::as_select())
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
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
        let rows = diesel::sql_query(
            "SELECT s.id, s.concert_id, s.starts_at, s.seat_count, s.seat_price, \
                    s.seat_count - ( \
                        SELECT COUNT(*) FROM reservations r \
                        WHERE r.schedule_id = s.id \
                          AND r.status IN ('HELD', 'PAYING', 'CONFIRMED') \
                          AND NOT (r.status = 'HELD' AND r.expires_at <= now()) \
                    )::INTEGER AS available_seats \
             FROM schedules s WHERE s.concert_id = $1 ORDER BY s.starts_at, s.id",
        )
        .bind::<BigInt, _>(concert_id.get())
        .load::<ScheduleRow>(&mut conn)
        .await?;
        Ok(Some(rows.into_iter().map(Into::into).collect()))
    }

    /// Every seat of the schedule as it reads now; `None` for an unknown schedule.
    pub async fn seats(&self, schedule_id: ScheduleId) -> Result<Option<Vec<Seat>>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = diesel::sql_query(
            "SELECT s.seat_no, s.price, r.id AS reservation_id, r.user_id, r.status, r.expires_at, \
                    now() AS now \
             FROM seats s \
             LEFT JOIN reservations r \
               ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
              AND r.status IN ('HELD', 'PAYING', 'CONFIRMED') \
             WHERE s.schedule_id = $1 ORDER BY s.seat_no",
        )
        .bind::<BigInt, _>(schedule_id.get())
        .load::<SeatRow>(&mut conn)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.into_iter()
            .map(|row| {
                let active = match (row.reservation_id, row.user_id, row.status, row.expires_at) {
                    (Some(id), Some(user_id), Some(status), Some(expires_at)) => {
                        Some(protocol::reservation::ReservationState {
                            id,
                            user_id,
                            status: parse_status(&status)?,
                            expires_at: micros(expires_at),
                        })
                    }
                    _ => None,
                };
                Ok(Seat {
                    seat_no: row.seat_no,
                    price: row.price,
                    status: protocol::reservation::seat_view(active.as_ref(), micros(row.now)),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

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
            .transaction::<_, HoldFailure, _>(async |conn| hold_seat(conn, request, hold_ttl).await)
            .await;
        match outcome {
            Ok(outcome) => Ok(outcome),
            Err(HoldFailure::Taken) => Ok(HoldOutcome::Taken),
            Err(HoldFailure::Store(error)) => Err(error),
        }
    }

    /// Cancels a reservation as the protocol decides, under the seat's row lock. A paid one is
    /// released only when `refunded` says its refund is done.
    pub async fn cancel(
        &self,
        request: OwnerRequest,
        refunded: bool,
    ) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.transaction(async |conn| cancel(conn, request, refunded).await)
            .await
    }

    /// Starts (or resumes) a payment: `HELD -> PAYING` with a new attempt, conditionally.
    pub async fn begin_pay(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
    ) -> Result<BeginOutcome, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.transaction(async |conn| {
            let Some(locked) = lock_reservation(conn, reservation_id.get()).await? else {
                return Ok(BeginOutcome::NotFound);
            };
            let state = locked.payment_state()?;
            let Locked { row, now, .. } = locked;
            match protocol::payment::begin_pay(&state, user_id.get(), micros(now)) {
                BeginPay::Begin { attempt } => {
                    diesel::update(
                        reservations::table
                            .find(row.id)
                            .filter(reservations::status.eq(Status::Held.as_str()))
                            .filter(reservations::pay_attempt.eq(row.pay_attempt)),
                    )
                    .set((
                        reservations::status.eq(Status::Paying.as_str()),
                        reservations::pay_attempt.eq(attempt),
                        reservations::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                    Ok(BeginOutcome::Pay {
                        attempt,
                        price: row.price,
                        user_id: row.user_id,
                        schedule_id: row.schedule_id,
                        seat_no: row.seat_no,
                    })
                }
                BeginPay::Resume { attempt } => Ok(BeginOutcome::Pay {
                    attempt,
                    price: row.price,
                    user_id: row.user_id,
                    schedule_id: row.schedule_id,
                    seat_no: row.seat_no,
                }),
                BeginPay::AlreadyConfirmed => {
                    Ok(BeginOutcome::Confirmed(row.into_reservation(now)?))
                }
                refused => Ok(BeginOutcome::Refused(refused)),
            }
        })
        .await
    }

    /// Applies the reply to attempt `attempt`'s `Use` as the protocol decides; `refunded` says
    /// that the refund an earlier call asked for is done.
    pub async fn settle_attempt(
        &self,
        reservation_id: i64,
        attempt: i32,
        reply: UseReply,
        refunded: bool,
    ) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.pool.get().await?;
        let namespace = &*self.key_namespace;
        conn.transaction(async |conn| {
            settle_attempt(conn, namespace, reservation_id, attempt, reply, refunded).await
        })
        .await
    }

    /// Claims up to `batch_size` paid reservations whose cancellation began more than `grace`
    /// ago and never finished (the process stopped between the refund and the release), for
    /// the reconciler. Returns (reservation id, owner).
    pub async fn claim_unfinished_cancellations(
        &self,
        grace: Duration,
        batch_size: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = BigInt)]
            id: i64,
            #[diesel(sql_type = BigInt)]
            user_id: i64,
        }
        let mut conn = self.pool.get().await?;
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let claimed = diesel::sql_query(
            "UPDATE reservations SET cancel_requested_at = now() WHERE id IN ( \
                 SELECT id FROM reservations \
                 WHERE status = 'CONFIRMED' \
                   AND cancel_requested_at < now() - make_interval(secs => $1 / 1000.0) \
                 ORDER BY cancel_requested_at LIMIT $2 FOR UPDATE SKIP LOCKED \
             ) RETURNING id, user_id",
        )
        .bind::<BigInt, _>(grace_ms)
        .bind::<BigInt, _>(batch_size)
        .load::<Claimed>(&mut conn)
        .await?;
        Ok(claimed.into_iter().map(|c| (c.id, c.user_id)).collect())
    }

    /// Claims up to `batch_size` reservations left `PAYING` for longer than `grace`, for the
    /// reconciler: a claim moves the reservation's `updated_at`, and replicas claiming at the
    /// same time skip each other's rows (`SKIP LOCKED`), so each drives different payments.
    pub async fn claim_stuck_payments(
        &self,
        grace: Duration,
        batch_size: i64,
    ) -> Result<Vec<StuckPayment>, StoreError> {
        let mut conn = self.pool.get().await?;
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        Ok(diesel::sql_query(
            "UPDATE reservations SET updated_at = now() WHERE id IN ( \
                 SELECT id FROM reservations \
                 WHERE status = 'PAYING' \
                   AND updated_at < now() - make_interval(secs => $1 / 1000.0) \
                 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED \
             ) RETURNING id, pay_attempt, user_id, price",
        )
        .bind::<BigInt, _>(grace_ms)
        .bind::<BigInt, _>(batch_size)
        .load::<StuckPayment>(&mut conn)
        .await?)
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

    pub async fn reservations(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<ReservationPage, StoreError> {
        let mut conn = self.pool.get().await?;
        let size = usize::from(page_size.get());
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
        let mut rows = query
            .load::<(ReservationRow, DateTime<Utc>)>(&mut conn)
            .await?;
        let more = rows.len() > size;
        rows.truncate(size);
        let next = match rows.last() {
            Some((last, _)) if more => Some(PageCursor {
                owner: user_id.get(),
                before_id: last.id,
            }),
            _ => None,
        };
        let reservations = rows
            .into_iter()
            .map(|(row, now)| row.into_reservation(now))
            .collect::<Result<_, _>>()?;
        Ok(ReservationPage { reservations, next })
    }

    /// Expires up to `batch_size` lapsed holds and frees their seats, in one transaction.
    /// Seats another transaction holds are skipped (`SKIP LOCKED`), so any number of sweepers
    /// work side by side, each on different seats, and a hold or payment in progress is never
    /// waited for.
    pub async fn expire_lapsed_holds(&self, batch_size: i64) -> Result<usize, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.transaction(async |conn| expire_lapsed_holds(conn, batch_size).await)
            .await
    }
}

async fn hold_seat(
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
        .filter(reservations::status.eq_any(ACTIVE))
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
    let moved = set_seat_status(
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

/// The hold of an available seat in one statement, run outside an explicit transaction (so
/// one round trip, where the full transaction takes seven): the seat moves AVAILABLE -> HELD
/// and the reservation is inserted, or, when the seat's row does not read AVAILABLE, nothing
/// happens and no row comes back.
///
/// It decides nothing the protocol would not: every writer keeps a seat's row and its active
/// reservation in step under the seat's row lock, so a row that reads AVAILABLE has no active
/// reservation, and for that `protocol::reservation::hold` takes the seat with nothing to
/// expire. The `UPDATE` takes the row lock and re-reads the status after waiting for it; the
/// partial unique index still refuses a second active reservation should the two ever
/// disagree. A query type of its own (not `sql_query`) so that diesel prepares it once per
/// connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct HoldAvailableSeat {
    user_id: i64,
    schedule_id: i64,
    seat_no: i32,
    hold_ttl_micros: i64,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for HoldAvailableSeat {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql(
            "WITH held AS (UPDATE seats SET status = 'HELD' WHERE status = 'AVAILABLE' \
             AND schedule_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(" AND seat_no = ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        // The clock is read in RETURNING, after the UPDATE has the seat's row lock.
        out.push_sql(
            " RETURNING schedule_id, seat_no, price, clock_timestamp() AS at), \
             inserted AS (INSERT INTO reservations \
                 (user_id, schedule_id, seat_no, price, status, expires_at) \
             SELECT ",
        );
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(", schedule_id, seat_no, price, 'HELD', at + ");
        out.push_bind_param::<BigInt, _>(&self.hold_ttl_micros)?;
        out.push_sql(
            " * interval '1 microsecond' FROM held \
             RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, \
             pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, \
             refund_requested_at) \
             SELECT inserted.*, held.at FROM inserted, held",
        );
        Ok(())
    }
}

impl diesel::query_builder::Query for HoldAvailableSeat {
    type SqlType = (
        (
            BigInt,
            BigInt,
            BigInt,
            Integer,
            BigInt,
            Text,
            Timestamptz,
            Integer,
            diesel::sql_types::Nullable<BigInt>,
            diesel::sql_types::Nullable<Text>,
            Timestamptz,
            diesel::sql_types::Nullable<Timestamptz>,
        ),
        Timestamptz,
    );
}

/// Locks the reservation's seat, then the reservation (the order every writer follows), and
/// returns the reservation with the clock read under the seat's lock and its performance's
/// start.
async fn lock_reservation(
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

/// A reservation under its seat's row lock.
struct Locked {
    row: ReservationRow,
    /// The clock, read once the seat's row was locked.
    now: DateTime<Utc>,
    /// When its performance begins.
    starts_at: DateTime<Utc>,
}

impl Locked {
    fn payment_state(&self) -> Result<protocol::payment::PaymentState, StoreError> {
        self.row.payment_state(self.starts_at)
    }
}

async fn cancel(
    conn: &mut AsyncPgConnection,
    request: OwnerRequest,
    refunded: bool,
) -> Result<CancelOutcome, StoreError> {
    let id = request.reservation_id.get();
    let Some(Locked { row, now, .. }) = lock_reservation(conn, id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    let decision = protocol::reservation::cancel(&row.state()?, request.user_id.get(), micros(now));
    let released_from = match decision {
        CancelDecision::Release => Status::Held,
        CancelDecision::RefundThenRelease if refunded => Status::Confirmed,
        CancelDecision::RefundThenRelease => {
            // Recorded before the refund is asked for: should this cancellation stop between
            // the refund and the release, the reconciler finds it and finishes it.
            diesel::update(reservations::table.find(id))
                .filter(reservations::cancel_requested_at.is_null())
                .set(reservations::cancel_requested_at.eq(now))
                .execute(conn)
                .await?;
            return Ok(CancelOutcome::RefundFirst(PaidReservation {
                user_id: row.user_id,
                price: row.price,
                use_key: row.payment_idempotency_key,
            }));
        }
        CancelDecision::AlreadyCancelled => {
            return Ok(CancelOutcome::Cancelled(row.into_reservation(now)?));
        }
        refused => return Ok(CancelOutcome::Refused(refused)),
    };
    let cancelled = end_reservation(conn, &row, released_from, Status::Cancelled, now)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("reservation {id} changed under its lock")))?;
    Ok(CancelOutcome::Cancelled(cancelled.into_reservation(now)?))
}

/// Ends a reservation under its seat's lock: `from -> to` (conditional on it still being in
/// `from` at the same attempt) and its seat back to AVAILABLE. Returns the updated row, or
/// `None` when the reservation had moved on.
async fn end_reservation(
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
        set_seat_status(
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

async fn settle_attempt(
    conn: &mut AsyncPgConnection,
    namespace: &str,
    reservation_id: i64,
    attempt: i32,
    reply: UseReply,
    refunded: bool,
) -> Result<SettleOutcome, StoreError> {
    let Some(locked) = lock_reservation(conn, reservation_id).await? else {
        return Ok(SettleOutcome::Moved);
    };
    let state = locked.payment_state()?;
    let Locked { row, now, .. } = locked;
    let (schedule_id, seat_no) = (row.schedule_id, row.seat_no);
    // Every write below is conditional on this very attempt still paying.
    let paying = reservations::table
        .find(reservation_id)
        .filter(reservations::status.eq(Status::Paying.as_str()))
        .filter(reservations::pay_attempt.eq(attempt));
    let decision =
        protocol::payment::apply_use_reply(&state, attempt, reply, refunded, micros(now));
    match decision {
        AfterUse::Confirm { transaction_id } => {
            let row = diesel::update(paying)
                .set((
                    reservations::status.eq(Status::Confirmed.as_str()),
                    reservations::payment_transaction_id.eq(transaction_id),
                    reservations::payment_idempotency_key.eq(protocol::payment::use_key(
                        namespace,
                        reservation_id,
                        attempt,
                    )),
                    reservations::updated_at.eq(now),
                ))
                .returning(ReservationRow::as_returning())
                .get_result(conn)
                .await?;
            set_seat_status(conn, schedule_id, seat_no, SeatView::Held, SeatView::Sold).await?;
            Ok(SettleOutcome::Confirmed(row.into_reservation(now)?))
        }
        AfterUse::BackToHeld => {
            diesel::update(paying)
                .set((
                    reservations::status.eq(Status::Held.as_str()),
                    reservations::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            Ok(SettleOutcome::Refused)
        }
        AfterUse::Expire | AfterUse::ExpireRefunded => {
            end_reservation(conn, &row, Status::Paying, Status::Expired, now).await?;
            if decision == AfterUse::ExpireRefunded {
                Ok(SettleOutcome::Moved)
            } else {
                Ok(SettleOutcome::Refused)
            }
        }
        AfterUse::StayPaying => Ok(SettleOutcome::StillPaying),
        AfterUse::Settled => Ok(SettleOutcome::Confirmed(row.into_reservation(now)?)),
        AfterUse::DecideRefund => {
            // Recorded before the refund is asked for: from now on no settle of this attempt
            // confirms it, whatever its clock reads.
            diesel::update(paying)
                .filter(reservations::refund_requested_at.is_null())
                .set(reservations::refund_requested_at.eq(now))
                .execute(conn)
                .await?;
            Ok(SettleOutcome::Refund {
                user_id: row.user_id,
                use_key: protocol::payment::use_key(namespace, reservation_id, attempt),
            })
        }
        AfterUse::Refund => Ok(SettleOutcome::Refund {
            user_id: row.user_id,
            use_key: protocol::payment::use_key(namespace, reservation_id, attempt),
        }),
        AfterUse::Nothing => Ok(SettleOutcome::Moved),
    }
}

async fn expire_lapsed_holds(
    conn: &mut AsyncPgConnection,
    batch_size: i64,
) -> Result<usize, StoreError> {
    #[derive(QueryableByName)]
    struct Lapsed {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        user_id: i64,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Timestamptz)]
        expires_at: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
    }
    // Locks the seats (never the reservations first), in the order every writer uses, and
    // reads the clock once they are locked (in the outer query, as `LockSeat` does).
    let candidates = diesel::sql_query(
        "SELECT locked.*, clock_timestamp() AS now FROM ( \
             SELECT r.id, r.user_id, r.status, r.expires_at \
             FROM reservations r \
             JOIN seats s ON s.schedule_id = r.schedule_id AND s.seat_no = r.seat_no \
             WHERE r.status = 'HELD' AND r.expires_at <= clock_timestamp() \
             ORDER BY r.expires_at \
             LIMIT $1 \
             FOR UPDATE OF s SKIP LOCKED \
         ) AS locked",
    )
    .bind::<BigInt, _>(batch_size)
    .load::<Lapsed>(conn)
    .await?;
    let Some(now) = <[Lapsed]>::first(&candidates).map(|candidate| candidate.now) else {
        return Ok(0);
    };
    let mut sweepable = Vec::with_capacity(candidates.len());
    for candidate in &candidates {
        let state = protocol::reservation::ReservationState {
            id: candidate.id,
            user_id: candidate.user_id,
            status: parse_status(&candidate.status)?,
            expires_at: micros(candidate.expires_at),
        };
        if protocol::reservation::sweepable(&state, micros(candidate.now)) {
            sweepable.push(candidate.id);
        }
    }
    if sweepable.is_empty() {
        return Ok(0);
    }
    // Conditional on still being a lapsed hold: the candidate list was read from a snapshot
    // that may predate a commit on one of these seats.
    let expired = diesel::sql_query(
        "WITH expired AS ( \
             UPDATE reservations SET status = 'EXPIRED', updated_at = $2 \
             WHERE id = ANY($1) AND status = 'HELD' AND expires_at <= $2 \
             RETURNING schedule_id, seat_no \
         ) \
         UPDATE seats SET status = 'AVAILABLE' FROM expired \
         WHERE seats.schedule_id = expired.schedule_id AND seats.seat_no = expired.seat_no \
           AND seats.status = 'HELD'",
    )
    .bind::<Array<BigInt>, _>(&sweepable)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(expired)
}

/// Moves a seat from `from` to `to`; returns 1 when it was in `from`, else 0.
async fn set_seat_status(
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

/// `UPDATE seats SET status = <to> WHERE (schedule_id, seat_no) = ... AND status = <from>`, as
/// a query type of its own: diesel's update statements are parsed anew each time, this one is
/// prepared once per connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct MoveSeat {
    schedule_id: i64,
    seat_no: i32,
    from: &'static str,
    to: &'static str,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for MoveSeat {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql("UPDATE seats SET status = ");
        out.push_bind_param::<Text, _>(&self.to)?;
        out.push_sql(" WHERE schedule_id = ");
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(" AND seat_no = ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        out.push_sql(" AND status = ");
        out.push_bind_param::<Text, _>(&self.from)?;
        Ok(())
    }
}

/// Locks a seat's row and then reads the clock: `SELECT price, clock_timestamp() FROM (SELECT
/// price FROM seats WHERE ... FOR UPDATE)`. Every decision on a seat takes its time from here.
///
/// Neither `now()` (when the transaction began) nor a `clock_timestamp()` beside the
/// `FOR UPDATE` would do: Postgres computes a locking query's output before it waits for the
/// row, so either can be older than a decision that held the lock meanwhile and committed,
/// and time would run backwards between two decisions on the seat. The outer query reads the
/// clock only once the inner one returns the locked row, so each decision's clock is later
/// than that of every decision before it on the seat. A query type of its own, prepared once
/// per connection.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct LockSeat {
    schedule_id: i64,
    seat_no: i32,
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for LockSeat {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql(
            "SELECT price, clock_timestamp() FROM \
             (SELECT price FROM seats WHERE schedule_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(" AND seat_no = ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        out.push_sql(" FOR UPDATE) AS locked");
        Ok(())
    }
}

impl diesel::query_builder::Query for LockSeat {
    type SqlType = (BigInt, Timestamptz);
}

const fn seat_status(view: SeatView) -> &'static str {
    match view {
        SeatView::Available => "AVAILABLE",
        SeatView::Held => "HELD",
        SeatView::Sold => "SOLD",
    }
}
