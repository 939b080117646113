//! The statements diesel would otherwise parse anew each time, as query types of their own
//! that it prepares once per connection: the hold of an available seat, the seat's lock with
//! its clock, and a seat's move from one status to another.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

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
#[derive(Debug, Clone, Copy, QueryId)]
pub struct HoldAvailableSeat {
    pub user_id: i64,
    pub schedule_id: i64,
    pub seat_no: i32,
    pub hold_ttl_micros: i64,
}

impl QueryFragment<Pg> for HoldAvailableSeat {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
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
             refund_requested_at, payment_key_nonce) \
             SELECT inserted.*, held.at FROM inserted, held",
        );
        Ok(())
    }
}

impl Query for HoldAvailableSeat {
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
            Nullable<BigInt>,
            Nullable<Text>,
            Timestamptz,
            Nullable<Timestamptz>,
            Nullable<Text>,
        ),
        Timestamptz,
    );
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
