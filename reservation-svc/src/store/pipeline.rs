//! Transactions of two round trips: `BEGIN` sent with the statement that locks the seat and
//! reads what the protocol decides on, then the decision's write sent with `COMMIT` (diesel's
//! transaction manager sends `BEGIN` and `COMMIT` each as a round trip of its own).
//!
//! diesel's transaction manager is told of each such transaction, before its `BEGIN` goes out
//! and once its `COMMIT` has come back: a connection left inside one (an error between the
//! two, a future dropped halfway) then reads as broken to the pool, which closes it (Postgres
//! rolls the transaction back) instead of handing it to the next caller.

use chrono::{DateTime, Utc};
use diesel::connection::TransactionDepthChange;
use diesel::result::{Error as DieselError, OptionalExtension, QueryResult};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};

use super::locked::LockReservation;
use super::models::ReservationRow;
use super::queries::{Begin, Commit};
use super::seat::Locked;

/// Begins a transaction and locks the reservation `id` (with its seat, first) in one round
/// trip: the reservation under its seat's lock, or `None` when there is no such reservation.
/// The transaction stays open: end it with [`commit`] or [`commit_with`].
pub async fn begin_locked(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<Locked>, DieselError> {
    opening(conn)?;
    let shared = &*conn;
    let (begun, locked) = futures::join!(
        Begin.execute(&mut &*shared),
        LockReservation { id }
            .get_result::<(ReservationRow, DateTime<Utc>, DateTime<Utc>)>(&mut &*shared),
    );
    // On an error the transaction is left open: the pool closes the connection.
    begun?;
    Ok(locked.optional()?.map(|(row, now, starts_at)| Locked {
        row,
        now,
        starts_at,
    }))
}

/// Ends the transaction [`begin_locked`] began, writing nothing more.
pub async fn commit(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    Commit.execute(&mut &*conn).await?;
    closed(conn)
}

/// Sends `write` and `COMMIT` together, ending the transaction [`begin_locked`] began, and
/// returns what `write` answered. Should `write` fail, `COMMIT` rolls back (Postgres ends a
/// failed transaction so) and its error is returned.
pub async fn commit_with<T>(
    conn: &mut AsyncPgConnection,
    write: impl AsyncFnOnce(&AsyncPgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    let shared = &*conn;
    // `join!` polls in order: the write goes out first.
    let (written, committed) = futures::join!(write(shared), Commit.execute(&mut &*shared));
    committed?;
    closed(conn)?;
    written
}

/// Tells diesel's transaction manager that a transaction of ours is about to begin on `conn`
/// (call it before its `BEGIN` is sent).
pub fn opening(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    change_depth(conn, TransactionDepthChange::IncreaseDepth)
}

/// Tells diesel's transaction manager that our transaction on `conn` has ended (its `COMMIT`
/// or `ROLLBACK` came back).
pub fn closed(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    change_depth(conn, TransactionDepthChange::DecreaseDepth)
}

fn change_depth(conn: &mut AsyncPgConnection, change: TransactionDepthChange) -> QueryResult<()> {
    <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(conn)
        .transaction_state()?
        .change_transaction_depth(change)
}
