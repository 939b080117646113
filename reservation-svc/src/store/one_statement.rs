//! The payment's steps that are one statement, its own transaction, of one round trip: the
//! start of a held reservation's payment and the confirmation of a debit. Each takes the seat's
//! and the reservation's locks as the full transaction does ([`push_locked`]) and writes only
//! when the protocol would decide so on the rows it locked; when it writes nothing, the full
//! transaction (`super::payment`) decides.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};

use super::locked::{RESERVATION_COLUMNS_OF_R, ReservationSql, push_locked};

/// The payment of a held reservation begun in one statement, its own transaction: under the
/// seat's and the reservation's locks ([`push_locked`]), `HELD -> PAYING` at the next attempt
/// when the caller owns it, its hold has not lapsed and its performance has not begun, as
/// `protocol::payment::begin_pay` decides `Begin` (the conformance tests hold the two to the
/// same answers). Returns the begun reservation and the clock; no row when it wrote nothing,
/// and then the full transaction decides.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct BeginHeldAttempt {
    pub id: i64,
    pub user_id: i64,
}

impl QueryFragment<Pg> for BeginHeldAttempt {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        push_locked(&mut out, &self.id)?;
        out.push_sql(
            ", begun AS (UPDATE reservations AS r SET status = 'PAYING', \
                 pay_attempt = locked.pay_attempt + 1, updated_at = locked.at \
             FROM locked WHERE r.id = locked.id AND locked.user_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(
            " AND locked.status = 'HELD' AND locked.expires_at > locked.at \
                 AND locked.starts_at > locked.at \
             RETURNING ",
        );
        out.push_sql(RESERVATION_COLUMNS_OF_R);
        out.push_sql(", locked.at) SELECT * FROM begun");
        Ok(())
    }
}

impl Query for BeginHeldAttempt {
    type SqlType = (ReservationSql, Timestamptz);
}

/// The debit of attempt `attempt` confirmed in one statement, its own transaction: under the
/// seat's and the reservation's locks ([`push_locked`]), when the reservation is that attempt
/// paying with no refund decided, its performance has not begun and its seat is held,
/// `PAYING -> CONFIRMED` with the payment and the seat `HELD -> SOLD`, both or neither, as
/// `protocol::payment::apply_use_reply` decides `Confirm`. Returns the confirmed reservation,
/// the clock and how many seats moved (1); no row when it wrote nothing, and then the full
/// transaction decides.
#[derive(Debug, Clone, QueryId)]
pub struct ConfirmDebitedAttempt {
    pub id: i64,
    pub attempt: i32,
    pub transaction_id: i64,
    /// The key the attempt's `Use` was sent under.
    pub use_key: String,
}

impl QueryFragment<Pg> for ConfirmDebitedAttempt {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        push_locked(&mut out, &self.id)?;
        out.push_sql(
            ", paid AS MATERIALIZED (SELECT id, schedule_id, seat_no, at FROM locked \
                 WHERE status = 'PAYING' AND pay_attempt = ",
        );
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(
            " AND refund_requested_at IS NULL AND starts_at > at AND seat_status = 'HELD'), \
             sold AS (UPDATE seats SET status = 'SOLD' FROM paid \
                 WHERE seats.schedule_id = paid.schedule_id AND seats.seat_no = paid.seat_no \
                 RETURNING 1), \
             confirmed AS (UPDATE reservations AS r SET status = 'CONFIRMED', \
                 payment_transaction_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.transaction_id)?;
        out.push_sql(", payment_idempotency_key = ");
        out.push_bind_param::<Text, _>(&self.use_key)?;
        out.push_sql(", updated_at = paid.at FROM paid WHERE r.id = paid.id RETURNING ");
        out.push_sql(RESERVATION_COLUMNS_OF_R);
        out.push_sql(", paid.at) SELECT *, (SELECT count(*) FROM sold) FROM confirmed");
        Ok(())
    }
}

impl Query for ConfirmDebitedAttempt {
    type SqlType = (ReservationSql, Timestamptz, BigInt);
}
