//! A hold: an available seat in one pipelined transaction ([`HoldAvailableSeat`]); any other
//! seat, or a refusal, in one transaction under its row lock, as `protocol::reservation::hold`
//! decides. Both first take the lock of the user's holds on the schedule ([`LockUserHolds`]);
//! a hold without a Redis lock (Redis out of reach, `SEAT_LOCK_FALLBACK=postgres`) takes the
//! seat's lock in Postgres ([`SeatLock`]) before that, in the same transaction.
//!
//! Why the hold limit is exact, across replicas and however many holds race: every hold of a
//! user on a schedule takes [`LockUserHolds`] in a statement of its own, before the statement
//! that counts the user's holds, and keeps it until its transaction ends; a hold that counted
//! below the limit inserts its reservation in that transaction. So the holds of one user on one
//! schedule run their count-and-insert one after another, and each count begins after the
//! lock is granted, that is after the previous holder committed or rolled back: in READ
//! COMMITTED a statement sees what was committed before it began, so the count sees every
//! reservation those holds inserted. Nothing else adds to the count (payments only move HELD to
//! PAYING and back, cancellations, expiries and sales take from it), so a count below the limit
//! stays below it until the insert commits.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::hold_transaction::{
    HoldFailure, hold_in_transaction, is_refused_by, is_second_active_reservation,
};
use super::models::ReservationRow;
use super::pipeline;
use super::queries::{
    Begin, Commit, HoldAvailableSeat, LockUserHolds, SEAT_LOCK, SEAT_TAKEN, SeatLock,
    SetLockTimeout,
};
use shared::pipeline::Checkout;

use super::{Store, StoreError};
use crate::model::{HoldOutcome, HoldRequest, HoldTerms};

impl Store {
    /// Holds a seat under `terms`. A seat that is available is held by one pipelined
    /// transaction (one round trip): the lock of the user's holds, then [`HoldAvailableSeat`],
    /// which locks the seat's row and holds it unless the performance has begun or the user is
    /// at the limit. Any other seat, and every refusal, by one transaction: the lock of the
    /// user's holds, the seat's row lock and clock, its active reservation and the user's
    /// holds, the protocol's decision, the expiry of a lapsed hold, the seat's move AVAILABLE
    /// -> HELD and the insert.
    pub async fn hold_seat(
        &self,
        request: HoldRequest,
        terms: HoldTerms,
    ) -> Result<HoldOutcome, StoreError> {
        crate::metrics::db_transaction(
            "hold_seat",
            async move { self.hold(request, terms, None).await },
        )
        .await
    }

    /// Holds a seat as [`Store::hold_seat`] does, for a hold that has no Redis lock (Redis is
    /// out of reach and `SEAT_LOCK_FALLBACK=postgres`): its pipeline first takes the seat's
    /// lock in Postgres ([`SeatLock`]), without waiting: [`HoldOutcome::Taken`] when an
    /// active reservation owns the seat, [`HoldOutcome::Locked`] when another hold has the
    /// lock, nothing written either way. Each of its transactions waits at most `wait` for any
    /// other lock (`lock_timeout`, past which the hold answers UNAVAILABLE). Both statements
    /// join the pipeline of an available seat's hold: still one round trip. What is decided,
    /// and how, is the same, so holds with either lock, of any replica, may race: Postgres
    /// decides.
    pub async fn hold_seat_locked_in_postgres(
        &self,
        request: HoldRequest,
        terms: HoldTerms,
        wait: std::time::Duration,
    ) -> Result<HoldOutcome, StoreError> {
        crate::metrics::db_transaction("hold_seat_locked_in_postgres", async move {
            self.hold(request, terms, Some(wait)).await
        })
        .await
    }

    /// A hold, with the seat's lock in Postgres and a `lock_timeout` of `postgres_lock` when set.
    async fn hold(
        &self,
        request: HoldRequest,
        terms: HoldTerms,
        postgres_lock: Option<std::time::Duration>,
    ) -> Result<HoldOutcome, StoreError> {
        let hold_ttl = chrono::Duration::from_std(terms.ttl)
            .map_err(|error| StoreError::Internal(error.to_string()))?;
        let max_user_holds = terms.max_per_user.get();
        let mut conn = Checkout::new(self.pool.get().await?);
        let user_id = request.user_id.get();
        let schedule_id = request.schedule_id.get();
        let seat_no = request.seat_no.get();
        let hold_available = HoldAvailableSeat {
            user_id,
            schedule_id,
            seat_no,
            hold_ttl_micros: hold_ttl.num_microseconds().unwrap_or(i64::MAX),
            max_user_holds: i64::from(max_user_holds),
        };
        // Sent together and run by Postgres one after another, in this order (requests go out
        // in the order they are first polled, and `join!` polls in order). `join!`, not
        // `try_join!`: every statement, `COMMIT` included, is sent whatever the others answer,
        // so the connection always leaves the transaction. Outside diesel's transaction
        // manager, which would send `BEGIN` and `COMMIT` each as a round trip of its own.
        pipeline::opening(&mut conn)?;
        let conn_ref = &*conn;
        let (begun, user_locked, held, committed) = match postgres_lock {
            None => {
                futures::join!(
                    Begin.execute(&mut &*conn_ref),
                    LockUserHolds::new(user_id, schedule_id).execute(&mut &*conn_ref),
                    hold_available.get_result::<(ReservationRow, DateTime<Utc>)>(&mut &*conn_ref),
                    Commit.execute(&mut &*conn_ref),
                )
            }
            Some(wait) => {
                let (begun, timeout_set, seat_locked, user_locked, held, committed) = futures::join!(
                    Begin.execute(&mut &*conn_ref),
                    SetLockTimeout::new(wait).execute(&mut &*conn_ref),
                    SeatLock::new(schedule_id, seat_no).execute(&mut &*conn_ref),
                    LockUserHolds::new(user_id, schedule_id).execute(&mut &*conn_ref),
                    hold_available.get_result::<(ReservationRow, DateTime<Utc>)>(&mut &*conn_ref),
                    Commit.execute(&mut &*conn_ref),
                );
                (
                    begun.and(timeout_set).and(seat_locked),
                    user_locked,
                    held,
                    committed,
                )
            }
        };
        // Unless `COMMIT` failed (and the pool then closes the connection), the transaction
        // is over, whatever the other statements answered.
        if committed.is_ok() {
            pipeline::closed(&mut conn)?;
        }
        // The first error is the cause; the statements after it failed for it.
        match begun {
            Err(error) if is_refused_by(&error, SEAT_LOCK) => return Ok(HoldOutcome::Locked),
            Err(error) if is_refused_by(&error, SEAT_TAKEN) => return Ok(HoldOutcome::Taken),
            begun => begun?,
        };
        user_locked?;
        match held.optional() {
            Ok(Some((row, now))) => {
                committed?;
                return Ok(HoldOutcome::Held(row.into_reservation(now)?));
            }
            // Not an available seat (or no such seat), the performance begun, or the user at
            // the limit: the transaction below tells which.
            Ok(None) => {}
            // An active reservation of a seat whose row reads AVAILABLE: the two disagree, so
            // the transaction below decides from the reservation, as the protocol says.
            Err(error) if is_second_active_reservation(&error) => {}
            Err(error) => return Err(error.into()),
        }
        committed?;
        let outcome = conn
            .build_transaction()
            .read_committed()
            .run::<_, HoldFailure, _>(async |conn| {
                // No seat lock of Postgres here: the seat's row lock decides, and a hold that
                // is not first refused by the seat's taken reservation reaches it only once
                // the seat's lock (or Redis's) let it through the pipeline above.
                if let Some(wait) = postgres_lock {
                    SetLockTimeout::new(wait).execute(conn).await?;
                }
                hold_in_transaction(conn, request, hold_ttl, max_user_holds).await
            })
            .await;
        match outcome {
            Ok(outcome) => Ok(outcome),
            Err(HoldFailure::Taken) => Ok(HoldOutcome::Taken),
            Err(HoldFailure::Locked) => Ok(HoldOutcome::Locked),
            Err(HoldFailure::Store(error)) => Err(error),
        }
    }
}
