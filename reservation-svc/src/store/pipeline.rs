//! Transactions of two round trips ([`shared::pipeline`]): `BEGIN` sent with the statement that
//! locks the seat and reads what the protocol decides on, then the decision's write sent with
//! `COMMIT`.

use chrono::{DateTime, Utc};
use diesel::result::{Error as DieselError, OptionalExtension};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::locked::LockReservation;
use super::models::ReservationRow;
use super::queries::Begin;
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

pub use shared::pipeline::{closed, commit, commit_with, opening};
