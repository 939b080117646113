//! Postgres access, one file per step: the catalog and its reads, a hold, a payment, a
//! cancellation, the sweep of lapsed holds, the reconciler's claims. Every change of a seat
//! or of its reservations first locks the seat's row ([`seat::lock_reservation`],
//! [`queries::LockSeat`]) and takes its clock only then, so holds, payments, cancellations and
//! the sweeper of any replica serialize per seat, see time move forward in that order, and
//! take their locks in the same order: seat, then reservation. The partial unique index on
//! active reservations backs that up.

mod cancel;
mod catalog;
mod hold;
mod models;
mod payment;
mod queries;
mod reconcile;
pub mod schema;
mod seat;
mod sweep;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::PgPool;
pub use shared::db::StoreError;

use schema::payment_key_namespace;

/// The statement that creates a schedule with its seats (`$1` concert, `$2` starts_at, `$3`
/// seat_count, `$4` seat_price), for tools that set up the same rows (the benchmark).
pub const CREATE_SCHEDULE_SQL: &str = include_str!("create_schedule.sql");

/// Reads this database's payments from, and writes them to, Postgres.
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
