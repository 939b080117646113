//! The payment's steps that are one statement, its own transaction, of one round trip: the
//! start of a held reservation's payment and the confirmation of a debit. Each locks the seat's
//! row and reads the clock ([`push_seat_and_clock`]), then updates the reservation where its
//! row meets what the protocol would decide on; when it writes nothing, the full transaction
//! (`super::payment`) decides.
//!
//! Why a condition on the reservation reads its latest row, though the statement's snapshot was
//! taken before it waited for the seat: the conditions are on the `UPDATE`'s own row, and in
//! READ COMMITTED an `UPDATE` that finds its row changed since the snapshot evaluates its
//! conditions again on the latest version (and skips the row if they no longer hold). Every
//! writer of a reservation's status, attempt, expiry or refund decision holds its seat's lock,
//! so once the seat is locked those stay as that version has them (the reconciler's claims,
//! which touch only `updated_at` and `cancel_requested_at`, take no seat lock and never wait). The seat's status is read by the locking read itself (its latest version), and
//! the performance's start from `schedules`, which a payment never changes. The reservation's
//! row is locked by the `UPDATE`, after the seat's, whose row its rows need: the order every
//! writer follows.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};

use super::locked::{RESERVATION_COLUMNS_OF_R, ReservationSql, push_seat_and_clock};

/// The payment of a held reservation begun in one statement, its own transaction: under the
/// seat's lock, `HELD -> PAYING` at the next attempt when the caller owns it, its hold has not
/// lapsed and its performance has not begun, as `protocol::payment::begin_pay` decides `Begin`
/// (the conformance tests hold the two to the same answers). Returns the begun reservation and
/// the clock; no row when it wrote nothing, and then the full transaction decides.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct BeginHeldAttempt {
    pub id: i64,
    pub user_id: i64,
}

impl QueryFragment<Pg> for BeginHeldAttempt {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        push_seat_and_clock(&mut out, &self.id)?;
        out.push_sql(
            " UPDATE reservations AS r SET status = 'PAYING', pay_attempt = r.pay_attempt + 1, \
                 updated_at = clock.at \
             FROM clock, schedules WHERE r.id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND r.user_id = ");
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(
            " AND r.status = 'HELD' AND r.expires_at > clock.at \
                 AND schedules.id = r.schedule_id AND schedules.starts_at > clock.at \
             RETURNING ",
        );
        out.push_sql(RESERVATION_COLUMNS_OF_R);
        out.push_sql(", clock.at");
        Ok(())
    }
}

impl Query for BeginHeldAttempt {
    type SqlType = (ReservationSql, Timestamptz);
}

/// The debit of attempt `attempt` confirmed in one statement, its own transaction: under the
/// seat's lock, when the reservation is that attempt paying with no refund decided, its
/// performance has not begun and its seat is held, `PAYING -> CONFIRMED` with the payment and
/// the seat `HELD -> SOLD`, both or neither, as `protocol::payment::apply_use_reply` decides
/// `Confirm`. Returns the confirmed reservation, the clock and how many seats moved (1); no row
/// when it wrote nothing, and then the full transaction decides.
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
        push_seat_and_clock(&mut out, &self.id)?;
        out.push_sql(
            ", confirmed AS (UPDATE reservations AS r SET status = 'CONFIRMED', \
                 payment_transaction_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.transaction_id)?;
        out.push_sql(", payment_idempotency_key = ");
        out.push_bind_param::<Text, _>(&self.use_key)?;
        out.push_sql(", updated_at = clock.at FROM clock, schedules WHERE r.id = ");
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" AND r.status = 'PAYING' AND r.pay_attempt = ");
        out.push_bind_param::<Integer, _>(&self.attempt)?;
        out.push_sql(
            " AND r.refund_requested_at IS NULL AND clock.seat_status = 'HELD' \
                 AND schedules.id = r.schedule_id AND schedules.starts_at > clock.at \
             RETURNING ",
        );
        out.push_sql(RESERVATION_COLUMNS_OF_R);
        out.push_sql(
            ", clock.at), \
             sold AS (UPDATE seats SET status = 'SOLD' FROM confirmed \
                 WHERE seats.schedule_id = confirmed.schedule_id \
                 AND seats.seat_no = confirmed.seat_no RETURNING 1) \
             SELECT *, (SELECT count(*) FROM sold) FROM confirmed",
        );
        Ok(())
    }
}

impl Query for ConfirmDebitedAttempt {
    type SqlType = (ReservationSql, Timestamptz, BigInt);
}
