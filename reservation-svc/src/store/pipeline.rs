//! Transactions of two round trips ([`shared::pipeline`]): `BEGIN` sent with the statement that
//! locks the seat and reads what the protocol decides on, then the decision's write sent with
//! `COMMIT`.

use diesel::result::Error as DieselError;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::queries::Begin;
use super::seat::{Locked, lock_reservation};

/// Begins a transaction and locks the reservation `id` (with its seat, first) in one round
/// trip: the reservation under its seat's lock, or `None` when there is no such reservation.
/// The transaction stays open: end it with [`commit`] or [`commit_with`].
pub async fn begin_locked(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<Locked>, DieselError> {
    opening(conn)?;
    let shared = &*conn;
    let (begun, locked) =
        futures::join!(Begin.execute(&mut &*shared), lock_reservation(shared, id));
    // On an error the transaction is left open, for the caller to roll back.
    begun?;
    locked
}

pub use shared::pipeline::{closed, commit, commit_with, opening};
