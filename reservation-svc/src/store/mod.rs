//! Postgres access, one file per step: the catalog and its reads, a hold, a payment, a
//! cancellation, the sweep of lapsed holds, the reconciler's claims, the waiting rooms' settings. Every change of a seat
//! or of its reservations first locks the seat's row ([`seat::lock_reservation`],
//! [`queries::LockSeat`]) and takes its clock only then, so holds, payments, cancellations and
//! the sweeper of any replica serialize per seat, see time move forward in that order, and
//! take their locks in the same order: seat, then reservation. The partial unique index on
//! active reservations backs that up.

mod cancel;
mod catalog;
mod hold;
mod hold_transaction;
mod locked;
mod models;
mod one_statement;
mod payment;
mod pipeline;
mod queries;
mod reconcile;
mod rooms;
pub mod schema;
mod seat;
mod sweep;

use chrono::{DateTime, Utc};
use shared::db::PgPool;
pub use shared::db::StoreError;

/// The statement that creates a schedule with its seats (`$1` concert, `$2` starts_at, `$3`
/// seat_count, `$4` seat_price), for tools that set up the same rows (the benchmark).
pub const CREATE_SCHEDULE_SQL: &str = include_str!("create_schedule.sql");

/// Reads and writes the service's rows in Postgres.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

diesel::define_sql_function! {
    /// The transaction's clock, for reads: `now()`, when the transaction began. Decisions never
    /// use it: theirs is read after the seat's row is locked ([`queries::LockSeat`]). (A
    /// function rather than an SQL literal, which would keep diesel from preparing the
    /// statements that read it once per connection.)
    #[sql_name = "now"]
    fn db_now() -> diesel::sql_types::Timestamptz;
}

/// A time as the protocol counts it: microseconds since the Unix epoch.
fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}
