//! The statements diesel would otherwise parse anew each time, as query types of their own
//! that it prepares once per connection: the hold of an available seat and the statements
//! around it (the transaction's bounds, the lock of a user's holds on a schedule), the seat's
//! lock with its clock, and a seat's move from one status to another.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};

use super::locked::{RESERVATION_COLUMNS, ReservationSql};

pub use shared::pipeline::{Begin, Commit};

/// Serializes the holds of one user on one schedule, in every replica: a transaction-scoped
/// advisory lock, `pg_advisory_xact_lock(<schedule>, <user>)` (the two-key space, apart from
/// the migrations' one-key lock; `pg_locks` shows the pair as `classid`, `objid`), held until
/// the hold's transaction ends. Each id is folded to 32 bits (the low half xor the high one):
/// two pairs that fold alike only share a lock, which costs waiting, never exactness. Every
/// replica must fold alike: a change of this key is deployed with all replicas stopped.
///
/// A hold takes it before its seat's row lock (the seat's advisory lock of [`SeatLock`], which
/// a hold without Redis takes first, never waits), and nothing else takes it, so no lock cycle
/// can form with the writers that lock seats only.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct LockUserHolds {
    schedule_key: i32,
    user_key: i32,
}

impl LockUserHolds {
    pub fn new(user_id: i64, schedule_id: i64) -> Self {
        Self {
            schedule_key: fold(schedule_id),
            user_key: fold(user_id),
        }
    }
}

/// An id folded to 32 bits for an advisory lock's key: the low half xor the high one.
fn fold(id: i64) -> i32 {
    // The low 32 bits of the xor, reinterpreted: a truncation on purpose.
    (id ^ (id >> 32)) as i32
}

impl QueryFragment<Pg> for LockUserHolds {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT pg_advisory_xact_lock(");
        out.push_bind_param::<Integer, _>(&self.schedule_key)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&self.user_key)?;
        out.push_sql(")");
        Ok(())
    }
}

/// `SELECT set_config('lock_timeout', <ms>, true)`: the longest any statement of this
/// transaction waits for a lock (`SET LOCAL`, which takes no parameters, so could not be
/// prepared once per connection).
#[derive(Debug, Clone, QueryId)]
pub struct SetLockTimeout {
    setting: String,
}

impl SetLockTimeout {
    pub fn new(timeout: std::time::Duration) -> Self {
        // At least 1 ms: 0 would mean no limit at all.
        Self {
            setting: format!("{}ms", timeout.as_millis().max(1)),
        }
    }
}

impl QueryFragment<Pg> for SetLockTimeout {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT set_config('lock_timeout', ");
        out.push_bind_param::<Text, _>(&self.setting)?;
        out.push_sql(", true)");
        Ok(())
    }
}

/// The seat's lock in Postgres, for holds while Redis is out of reach: `SELECT
/// seat_lock(<key>, <schedule>, <seat>)`, the migrations' function that, without waiting and
/// reading only what is committed, raises an error with the constraint name [`SEAT_TAKEN`]
/// when an active reservation owns the seat (as the seat's taken mark in Redis refuses a
/// hold), else takes the transaction-scoped advisory lock `<key>`, or raises one with the
/// constraint name [`SEAT_LOCK`] when another transaction has it. The key is the one-key
/// space's `<schedule folded to 32 bits> << 32 | <seat>`, apart from the two-key space of
/// [`LockUserHolds`]; a seat that shares its key with another only shares their lock, which
/// costs a retry, never exactness (Postgres decides under the seat's row lock whatever the
/// lock). Every replica must key alike: a change of this key is deployed with all replicas
/// stopped.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct SeatLock {
    key: i64,
    schedule_id: i64,
    seat_no: i32,
}

/// The constraint name of the error [`SeatLock`] raises when the seat is locked.
pub const SEAT_LOCK: &str = "seat_lock";
/// The constraint name of the error [`SeatLock`] raises when the seat is taken.
pub const SEAT_TAKEN: &str = "seat_taken";

impl SeatLock {
    pub fn new(schedule_id: i64, seat_no: i32) -> Self {
        // The seat number's 32 bits, as they are, below the schedule's.
        let seat = i64::from(seat_no.cast_unsigned());
        Self {
            key: (i64::from(fold(schedule_id)) << 32) | seat,
            schedule_id,
            seat_no,
        }
    }
}

impl QueryFragment<Pg> for SeatLock {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT seat_lock(");
        out.push_bind_param::<BigInt, _>(&self.key)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        out.push_sql(")");
        Ok(())
    }
}

/// The hold of an available seat in one statement: it locks the seat's row, reads the clock,
/// and the seat moves AVAILABLE -> HELD and the reservation is inserted when the performance
/// has not begun and the user has fewer than `max_user_holds` reservations of the schedule
/// HELD (and not lapsed) or PAYING; otherwise nothing happens and no row comes back.
/// `Store::hold_seat` runs it in a transaction right after [`LockUserHolds`], a statement of
/// its own (so this statement's count sees every hold committed before it got that lock), the
/// four statements pipelined: one round trip.
///
/// It decides nothing the protocol would not: every writer keeps a seat's row and its active
/// reservation in step under the seat's row lock, so a row that reads AVAILABLE has no active
/// reservation, and for that, before the start and below the limit,
/// `protocol::reservation::hold` takes the seat with nothing to expire (its counting rule is
/// `ReservationState::counts_toward_hold_limit`). The clock is read once, as [`LockSeat`]
/// reads it: by an outer query over the one that locks the seat's row, so after the lock, and
/// it is both the decision's time and the hold's. The `UPDATE` then re-reads the row as its
/// last writer committed it (its own snapshot may be older than the lock). The partial unique
/// index still refuses a second active reservation should the row and the reservations ever
/// disagree. A query type of its own (not `sql_query`) so that diesel prepares it once per
/// connection.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct HoldAvailableSeat {
    pub user_id: i64,
    pub schedule_id: i64,
    pub seat_no: i32,
    pub hold_ttl_micros: i64,
    pub max_user_holds: i64,
}

impl QueryFragment<Pg> for HoldAvailableSeat {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM \
             (SELECT 1 FROM seats WHERE schedule_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(" AND seat_no = ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        out.push_sql(
            " FOR UPDATE) AS locked), \
             held AS (UPDATE seats SET status = 'HELD' FROM clock \
             WHERE seats.status = 'AVAILABLE' AND seats.schedule_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(" AND seats.seat_no = ");
        out.push_bind_param::<Integer, _>(&self.seat_no)?;
        out.push_sql(" AND clock.at < (SELECT starts_at FROM schedules WHERE id = ");
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        // The user's holds as `counts_toward_hold_limit` counts them, at the decision's clock.
        out.push_sql(") AND (SELECT count(*) FROM reservations AS mine WHERE mine.user_id = ");
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(" AND mine.schedule_id = ");
        out.push_bind_param::<BigInt, _>(&self.schedule_id)?;
        out.push_sql(
            " AND (mine.status = 'PAYING' \
               OR (mine.status = 'HELD' AND mine.expires_at > clock.at))) < ",
        );
        out.push_bind_param::<BigInt, _>(&self.max_user_holds)?;
        out.push_sql(
            " RETURNING seats.schedule_id, seats.seat_no, seats.price, clock.at), \
             inserted AS (INSERT INTO reservations \
                 (user_id, schedule_id, seat_no, price, status, expires_at) \
             SELECT ",
        );
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(", schedule_id, seat_no, price, 'HELD', at + ");
        out.push_bind_param::<BigInt, _>(&self.hold_ttl_micros)?;
        out.push_sql(
            " * interval '1 microsecond' FROM held \
             RETURNING ",
        );
        out.push_sql(RESERVATION_COLUMNS);
        out.push_sql(") SELECT inserted.*, held.at FROM inserted, held");
        Ok(())
    }
}

impl Query for HoldAvailableSeat {
    type SqlType = (ReservationSql, Timestamptz);
}

/// `UPDATE seats SET status = <to> WHERE (schedule_id, seat_no) = ... AND status = <from>`, as
/// a query type of its own: diesel's update statements are parsed anew each time, this one is
/// prepared once per connection.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct MoveSeat {
    pub schedule_id: i64,
    pub seat_no: i32,
    pub from: &'static str,
    pub to: &'static str,
}

impl QueryFragment<Pg> for MoveSeat {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
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
#[derive(Debug, Clone, Copy, QueryId)]
pub struct LockSeat {
    pub schedule_id: i64,
    pub seat_no: i32,
}

impl QueryFragment<Pg> for LockSeat {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
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

impl Query for LockSeat {
    type SqlType = (BigInt, Timestamptz);
}
