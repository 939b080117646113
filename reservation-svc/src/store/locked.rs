//! The statements of a reservation's steps under its seat's lock, each a query type of its own
//! that diesel prepares once per connection (its `update` statements are parsed anew each
//! time): the lock itself with the clock ([`LockReservation`], one statement for what took
//! three), and each conditional write, a write and the seat's move in one statement where they
//! go together.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};

use chrono::{DateTime, Utc};

/// The columns of [`super::models::ReservationRow`], in its order.
pub const RESERVATION_COLUMNS: &str = "id, user_id, schedule_id, seat_no, price, status, \
     expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, \
     refund_requested_at, payment_key_nonce";

/// The SQL types of [`RESERVATION_COLUMNS`].
pub type ReservationSql = (
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
);

/// [`RESERVATION_COLUMNS`] of the row `r`, for statements where another relation has columns
/// of the same names.
pub const RESERVATION_COLUMNS_OF_R: &str = "r.id, r.user_id, r.schedule_id, r.seat_no, r.price, \
     r.status, r.expires_at, r.pay_attempt, r.payment_transaction_id, \
     r.payment_idempotency_key, r.created_at, r.refund_requested_at, r.payment_key_nonce";

/// Pushes `WITH` and the common table expressions that lock reservation `id`'s seat and then
/// read the clock: `target` (the reservation's seat), `seat` (its row, locked) and `clock`
/// (`at`, read over the locked row, so after the lock as [`super::queries::LockSeat`] reads
/// it, and `seat_status`, the seat's as locked, that is its latest). No row when there is no
/// such reservation.
pub fn push_seat_and_clock<'b>(out: &mut AstPass<'_, 'b, Pg>, id: &'b i64) -> QueryResult<()> {
    out.push_sql(
        "WITH target AS MATERIALIZED \
             (SELECT schedule_id, seat_no FROM reservations WHERE id = ",
    );
    out.push_bind_param::<BigInt, _>(id)?;
    out.push_sql(
        "), seat AS MATERIALIZED (SELECT seats.status FROM seats, target \
             WHERE seats.schedule_id = target.schedule_id AND seats.seat_no = target.seat_no \
             FOR UPDATE OF seats), \
         clock AS MATERIALIZED \
             (SELECT clock_timestamp() AS at, seat.status AS seat_status FROM seat)",
    );
    Ok(())
}

/// [`push_seat_and_clock`], then `locked`: the reservation's row (`r.*`), locked, as its last
/// writer committed it (a row locked in READ COMMITTED is read again at its latest version),
/// with `at`, `seat_status` and `starts_at` (its performance's). Its rows exist only once the
/// seat's lock is held: the seat's lock is always taken first, the order every writer follows.
fn push_locked<'b>(out: &mut AstPass<'_, 'b, Pg>, id: &'b i64) -> QueryResult<()> {
    push_seat_and_clock(out, id)?;
    out.push_sql(
        ", locked AS MATERIALIZED (SELECT r.*, clock.at, clock.seat_status, \
                 schedules.starts_at \
             FROM clock, reservations AS r JOIN schedules ON schedules.id = r.schedule_id \
             WHERE r.id = ",
    );
    out.push_bind_param::<BigInt, _>(id)?;
    out.push_sql(" FOR UPDATE OF r)");
    Ok(())
}

/// Locks the reservation's seat, then the reservation (the order every writer follows), and
/// returns the reservation, the clock read once the seat's row was locked, and when its
/// performance begins; no row when there is no such reservation. One statement for what took
/// three ([`push_locked`]).
#[derive(Debug, Clone, Copy, QueryId)]
pub struct LockReservation {
    pub id: i64,
}

impl QueryFragment<Pg> for LockReservation {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        push_locked(&mut out, &self.id)?;
        out.push_sql(" SELECT ");
        out.push_sql(RESERVATION_COLUMNS);
        out.push_sql(", at, starts_at FROM locked");
        Ok(())
    }
}

impl Query for LockReservation {
    type SqlType = (ReservationSql, Timestamptz, Timestamptz);
}

/// `HELD -> PAYING` at a new attempt: `UPDATE reservations SET status = 'PAYING', pay_attempt =
/// <attempt> ... WHERE id = <id> AND status = 'HELD' AND pay_attempt = <from_attempt>`.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct StartAttempt {
    pub id: i64,
    pub from_attempt: i32,
    pub attempt: i32,
    pub now: DateTime<Utc>,
}

impl QueryFragment<Pg> for StartAttempt {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE reservations SET status = 'PAYING', pay_attempt = ");
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND status = 'HELD' AND pay_attempt = ");
        out.push_bind_param::<Integer, _>(&self.from_attempt)?;
        Ok(())
    }
}

/// Pushes `WHERE id = <id> AND status = 'PAYING' AND pay_attempt = <attempt>`: every write of a
/// settle is conditional on that very attempt still paying.
fn where_paying<'b>(
    out: &mut AstPass<'_, 'b, Pg>,
    id: &'b i64,
    attempt: &'b i32,
) -> QueryResult<()> {
    out.push_sql(" WHERE id = ");
    out.push_bind_param::<BigInt, _>(id)?;
    out.push_sql(" AND status = 'PAYING' AND pay_attempt = ");
    out.push_bind_param::<Integer, _>(attempt)?;
    Ok(())
}

/// `PAYING -> CONFIRMED` for the attempt whose `Use` succeeded, and its seat `HELD -> SOLD`, in
/// one statement that writes both or neither: the seat moves only while the reservation is
/// that attempt paying, and the reservation only with its seat. Returns the confirmed
/// reservation and how many seats moved (1); no row when nothing was written.
#[derive(Debug, Clone, QueryId)]
pub struct ConfirmAttempt {
    pub id: i64,
    pub attempt: i32,
    pub transaction_id: i64,
    pub use_key: String,
    pub now: DateTime<Utc>,
}

impl QueryFragment<Pg> for ConfirmAttempt {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "WITH sold AS (UPDATE seats SET status = 'SOLD' FROM reservations AS paying \
                 WHERE paying.id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND paying.status = 'PAYING' AND paying.pay_attempt = ");
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(
            " AND seats.schedule_id = paying.schedule_id AND seats.seat_no = paying.seat_no \
                 AND seats.status = 'HELD' RETURNING 1), \
             confirmed AS (UPDATE reservations SET status = 'CONFIRMED', \
                 payment_transaction_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.transaction_id)?;
        out.push_sql(", payment_idempotency_key = ");
        out.push_bind_param::<Text, _>(&self.use_key)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        where_paying(&mut out, &self.id, &self.attempt)?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM sold) RETURNING ");
        out.push_sql(RESERVATION_COLUMNS);
        out.push_sql(") SELECT confirmed.*, (SELECT count(*) FROM sold) FROM confirmed");
        Ok(())
    }
}

impl Query for ConfirmAttempt {
    type SqlType = (ReservationSql, BigInt);
}

/// `PAYING -> HELD`: the attempt's `Use` was refused for the balance.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct BackToHeld {
    pub id: i64,
    pub attempt: i32,
    pub now: DateTime<Utc>,
}

impl QueryFragment<Pg> for BackToHeld {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE reservations SET status = 'HELD', updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        where_paying(&mut out, &self.id, &self.attempt)
    }
}

/// Records, once, that the attempt's debit is to be refunded.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct RecordRefundDecision {
    pub id: i64,
    pub attempt: i32,
    pub now: DateTime<Utc>,
}

impl QueryFragment<Pg> for RecordRefundDecision {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE reservations SET refund_requested_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        where_paying(&mut out, &self.id, &self.attempt)?;
        out.push_sql(" AND refund_requested_at IS NULL");
        Ok(())
    }
}

/// Ends a reservation, `from -> to` (conditional on it still being in `from` at the same
/// attempt), and frees its seat (`seat_was -> AVAILABLE`), in one statement; returns the ended
/// reservation, or no row when it had moved on (and then the seat is left alone).
#[derive(Debug, Clone, Copy, QueryId)]
pub struct EndReservation {
    pub id: i64,
    pub attempt: i32,
    pub from: &'static str,
    pub to: &'static str,
    pub seat_was: &'static str,
    pub now: DateTime<Utc>,
}

impl QueryFragment<Pg> for EndReservation {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH ended AS (UPDATE reservations SET status = ");
        out.push_bind_param::<Text, _>(&self.to)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.now)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND status = ");
        out.push_bind_param::<Text, _>(&self.from)?;
        out.push_sql(" AND pay_attempt = ");
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(" RETURNING ");
        out.push_sql(RESERVATION_COLUMNS);
        out.push_sql(
            "), freed AS (UPDATE seats SET status = 'AVAILABLE' FROM ended \
                 WHERE seats.schedule_id = ended.schedule_id \
                 AND seats.seat_no = ended.seat_no AND seats.status = ",
        );
        out.push_bind_param::<Text, _>(&self.seat_was)?;
        out.push_sql(") SELECT * FROM ended");
        Ok(())
    }
}

impl Query for EndReservation {
    type SqlType = ReservationSql;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_of_r_are_the_reservation_columns() {
        let prefixed: Vec<String> = RESERVATION_COLUMNS
            .split(", ")
            .map(|column| format!("r.{column}"))
            .collect();
        assert_eq!(RESERVATION_COLUMNS_OF_R, prefixed.join(", "));
    }
}
