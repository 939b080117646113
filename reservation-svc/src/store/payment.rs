//! A payment: its start (`HELD -> PAYING`, a new attempt) and the effect of the wallet's reply
//! to the attempt's `Use`, each one transaction under the seat's row lock.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::payment::{AfterUse, BeginPay, UseReply};
use protocol::reservation::Status;

use super::locked::{BackToHeld, ConfirmAttempt, RecordRefundDecision, StartAttempt};
use super::models::ReservationRow;
use super::seat::{Locked, end_reservation, lock_reservation};
use super::{Store, StoreError, micros};
use crate::model::{
    BeginOutcome, PayAttempt, PaymentAttempt, Refusal, ReservationId, SettleOutcome, UserId,
};

impl Store {
    /// Starts (or resumes) a payment: `HELD -> PAYING` with a new attempt, conditionally.
    pub async fn begin_pay(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
    ) -> Result<BeginOutcome, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.build_transaction()
            .read_committed()
            .run(async |conn| begin_in_transaction(conn, reservation_id, user_id).await)
            .await
    }

    /// Applies the reply to the attempt's `Use` as the protocol decides; `refunded` says that
    /// the refund an earlier call asked for is done.
    pub async fn settle_attempt(
        &self,
        reservation: ReservationId,
        attempt: PayAttempt,
        reply: UseReply,
        refunded: bool,
    ) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.build_transaction()
            .read_committed()
            .run(async |conn| {
                settle_in_transaction(conn, reservation, attempt, reply, refunded).await
            })
            .await
    }
}

async fn begin_in_transaction(
    conn: &mut AsyncPgConnection,
    reservation_id: ReservationId,
    user_id: UserId,
) -> Result<BeginOutcome, StoreError> {
    let Some(locked) = lock_reservation(conn, reservation_id.get()).await? else {
        return Ok(BeginOutcome::NotFound);
    };
    let state = locked.payment_state()?;
    let Locked { row, now, .. } = locked;
    let attempt = match protocol::payment::begin_pay(&state, user_id.get(), micros(now)) {
        BeginPay::Begin { attempt } => {
            let begun = StartAttempt {
                id: row.id,
                from_attempt: row.pay_attempt,
                attempt,
                now,
            }
            .execute(conn)
            .await?;
            debug_assert_eq!(begun, 1, "a held reservation under its seat's lock");
            attempt
        }
        BeginPay::Resume { attempt } => attempt,
        BeginPay::AlreadyConfirmed => {
            return Ok(BeginOutcome::Confirmed(row.into_reservation(now)?));
        }
        BeginPay::NotOwner => return Ok(BeginOutcome::Refused(Refusal::NotOwner)),
        BeginPay::HoldExpired => return Ok(BeginOutcome::Refused(Refusal::HoldExpired)),
        BeginPay::InvalidState => return Ok(BeginOutcome::Refused(Refusal::InvalidState)),
    };
    Ok(BeginOutcome::Pay(PaymentAttempt {
        reservation: row.reservation_id()?,
        attempt: PayAttempt::parse(attempt)
            .map_err(|error| StoreError::Internal(format!("attempt {attempt}: {error}")))?,
        payer: row.owner()?,
        price: row.price()?,
        schedule_id: row.schedule_id()?,
        seat_no: row.seat_no()?,
        keys: row.payment_keys(),
    }))
}

async fn settle_in_transaction(
    conn: &mut AsyncPgConnection,
    reservation: ReservationId,
    pay_attempt: PayAttempt,
    reply: UseReply,
    refunded: bool,
) -> Result<SettleOutcome, StoreError> {
    let id = reservation.get();
    let attempt = pay_attempt.get();
    let Some(locked) = lock_reservation(conn, id).await? else {
        return Ok(SettleOutcome::Moved);
    };
    let state = locked.payment_state()?;
    let Locked { row, now, .. } = locked;
    let use_key = row.payment_keys().use_key(pay_attempt);
    // Every write below is conditional on this very attempt still paying.
    let decision =
        protocol::payment::apply_use_reply(&state, attempt, reply, refunded, micros(now));
    match decision {
        AfterUse::Confirm { transaction_id } => {
            let (row, sold) = ConfirmAttempt {
                id,
                attempt,
                transaction_id,
                use_key,
                now,
            }
            .get_result::<(ReservationRow, i64)>(conn)
            .await?;
            debug_assert_eq!(sold, 1, "a paying reservation's seat reads HELD");
            Ok(SettleOutcome::Confirmed(row.into_reservation(now)?))
        }
        AfterUse::BackToHeld => {
            BackToHeld { id, attempt, now }.execute(conn).await?;
            Ok(SettleOutcome::Refused)
        }
        AfterUse::Expire => {
            end_reservation(conn, &row, Status::Paying, Status::Expired, now).await?;
            Ok(SettleOutcome::Refused)
        }
        AfterUse::ExpireRefunded => {
            end_reservation(conn, &row, Status::Paying, Status::Expired, now).await?;
            Ok(SettleOutcome::Moved)
        }
        AfterUse::StayPaying => Ok(SettleOutcome::StillPaying),
        AfterUse::Settled => Ok(SettleOutcome::Confirmed(row.into_reservation(now)?)),
        AfterUse::DecideRefund => {
            // Recorded before the refund is asked for: from now on no settle of this attempt
            // confirms it, whatever its clock reads.
            RecordRefundDecision { id, attempt, now }
                .execute(conn)
                .await?;
            Ok(SettleOutcome::Refund {
                payer: row.owner()?,
                use_key,
            })
        }
        AfterUse::Refund => Ok(SettleOutcome::Refund {
            payer: row.owner()?,
            use_key,
        }),
        AfterUse::Nothing => Ok(SettleOutcome::Moved),
    }
}
