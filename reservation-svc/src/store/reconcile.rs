//! The reconciler's claims: payments left `PAYING`, and cancellations of paid reservations
//! interrupted between their refund and their release. A claim moves the row's timestamp, and
//! replicas claiming at the same time skip each other's rows (`SKIP LOCKED`), so each drives
//! different ones.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::models::stored;
use super::{Store, StoreError};
use crate::model::{
    OwnerRequest, PayAttempt, PaymentAttempt, PaymentKeys, Price, ReservationId, ScheduleId,
    SeatNo, UserId,
};

/// A reservation a claim returned.
#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
}

/// A payment a claim returned.
#[derive(QueryableByName)]
struct ClaimedPayment {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    pay_attempt: i32,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    price: i64,
    #[diesel(sql_type = BigInt)]
    schedule_id: i64,
    #[diesel(sql_type = Integer)]
    seat_no: i32,
    #[diesel(sql_type = Nullable<Text>)]
    payment_key_nonce: Option<String>,
}

impl TryFrom<ClaimedPayment> for PaymentAttempt {
    type Error = StoreError;

    fn try_from(row: ClaimedPayment) -> Result<Self, StoreError> {
        Ok(Self {
            reservation: stored("reservation id", ReservationId::parse(row.id))?,
            attempt: stored("payment attempt", PayAttempt::parse(row.pay_attempt))?,
            payer: stored("user id", UserId::parse(row.user_id))?,
            price: stored("price", Price::parse(row.price))?,
            schedule_id: stored("schedule id", ScheduleId::parse(row.schedule_id))?,
            seat_no: stored("seat number", SeatNo::parse(row.seat_no))?,
            keys: PaymentKeys::new(row.id, row.payment_key_nonce.as_deref()),
        })
    }
}

fn millis(grace: Duration) -> i64 {
    i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Claims up to `batch_size` paid reservations whose cancellation began more than `grace`
    /// ago and never finished (the process stopped between the refund and the release): each
    /// as its owner's cancellation, to run again.
    pub async fn claim_unfinished_cancellations(
        &self,
        grace: Duration,
        batch_size: i64,
    ) -> Result<Vec<OwnerRequest>, StoreError> {
        crate::metrics::db_transaction("claim_unfinished_cancellations", async move {
            let mut conn = self.pool.get().await?;
            let claimed = diesel::sql_query(
                "UPDATE reservations SET cancel_requested_at = now() WHERE id IN ( \
                     SELECT id FROM reservations \
                     WHERE status = 'CONFIRMED' \
                       AND cancel_requested_at < now() - make_interval(secs => $1 / 1000.0) \
                     ORDER BY cancel_requested_at LIMIT $2 FOR UPDATE SKIP LOCKED \
                 ) RETURNING id, user_id",
            )
            .bind::<BigInt, _>(millis(grace))
            .bind::<BigInt, _>(batch_size)
            .load::<Claimed>(&mut conn)
            .await?;
            claimed
                .into_iter()
                .map(|row| {
                    Ok(OwnerRequest {
                        reservation_id: stored("reservation id", ReservationId::parse(row.id))?,
                        user_id: stored("user id", UserId::parse(row.user_id))?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Claims up to `batch_size` reservations left `PAYING` for longer than `grace`: each as
    /// the attempt to drive again.
    pub async fn claim_stuck_payments(
        &self,
        grace: Duration,
        batch_size: i64,
    ) -> Result<Vec<PaymentAttempt>, StoreError> {
        crate::metrics::db_transaction("claim_stuck_payments", async move {
            let mut conn = self.pool.get().await?;
            let claimed = diesel::sql_query(
                "UPDATE reservations SET updated_at = now() WHERE id IN ( \
                     SELECT id FROM reservations \
                     WHERE status = 'PAYING' \
                       AND updated_at < now() - make_interval(secs => $1 / 1000.0) \
                     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED \
                 ) RETURNING id, pay_attempt, user_id, price, schedule_id, seat_no, \
                   payment_key_nonce",
            )
            .bind::<BigInt, _>(millis(grace))
            .bind::<BigInt, _>(batch_size)
            .load::<ClaimedPayment>(&mut conn)
            .await?;
            claimed.into_iter().map(TryInto::try_into).collect()
        })
        .await
    }
}
