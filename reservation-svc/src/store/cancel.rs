//! A cancellation: one transaction under the seat's row lock; a paid reservation is released
//! only once its refund is done.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::reservation::{CancelDecision, Status};

use super::schema::reservations;
use super::seat::{Locked, end_reservation, lock_reservation};
use shared::pipeline::Checkout;

use super::{Store, StoreError, micros};
use crate::model::{CancelOutcome, OwnerRequest, PaidReservation, Refusal};

impl Store {
    /// Cancels a reservation as the protocol decides, under the seat's row lock. A paid one is
    /// released only when `refunded` says its refund is done.
    pub async fn cancel(
        &self,
        request: OwnerRequest,
        refunded: bool,
    ) -> Result<CancelOutcome, StoreError> {
        crate::metrics::db_transaction("cancel", async move {
            let mut conn = Checkout::new(self.pool.get().await?);
            conn.build_transaction()
                .read_committed()
                .run(async |conn| cancel_in_transaction(conn, request, refunded).await)
                .await
        })
        .await
    }
}

async fn cancel_in_transaction(
    conn: &mut AsyncPgConnection,
    request: OwnerRequest,
    refunded: bool,
) -> Result<CancelOutcome, StoreError> {
    let id = request.reservation_id.get();
    let Some(Locked { row, now, .. }) = lock_reservation(conn, id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    let decision = protocol::reservation::cancel(&row.state()?, request.user_id.get(), micros(now));
    let released_from = match decision {
        CancelDecision::Release => Status::Held,
        CancelDecision::RefundThenRelease if refunded => Status::Confirmed,
        CancelDecision::RefundThenRelease => {
            // Recorded before the refund is asked for: should this cancellation stop between
            // the refund and the release, the reconciler finds it and finishes it.
            diesel::update(reservations::table.find(id))
                .filter(reservations::cancel_requested_at.is_null())
                .set(reservations::cancel_requested_at.eq(now))
                .execute(conn)
                .await?;
            return Ok(CancelOutcome::RefundFirst(PaidReservation {
                payer: row.owner()?,
                price: row.price()?,
                refund_key: row.payment_keys().refund_key(),
                use_key: row.payment_idempotency_key,
            }));
        }
        CancelDecision::AlreadyCancelled => {
            return Ok(CancelOutcome::Cancelled(row.into_reservation(now)?));
        }
        CancelDecision::NotOwner => return Ok(CancelOutcome::Refused(Refusal::NotOwner)),
        CancelDecision::HoldExpired => return Ok(CancelOutcome::Refused(Refusal::HoldExpired)),
        CancelDecision::InvalidState => return Ok(CancelOutcome::Refused(Refusal::InvalidState)),
    };
    let cancelled = end_reservation(conn, &row, released_from, Status::Cancelled, now)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("reservation {id} changed under its lock")))?;
    Ok(CancelOutcome::Cancelled(cancelled.into_reservation(now)?))
}
