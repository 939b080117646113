//! A payment: its start (`HELD -> PAYING`, a new attempt) and the effect of the wallet's reply
//! to the attempt's `Use`, each decided under the seat's row lock.
//!
//! The common case of each is one statement, its own transaction, of one round trip: the
//! start of a held reservation's payment ([`BeginHeldAttempt`]) and the confirmation of a
//! debit ([`ConfirmDebitedAttempt`]). When it writes nothing, the full transaction decides, of
//! two round trips ([`super::pipeline`]): the lock with `BEGIN`, the decision's write with
//! `COMMIT`. The fast statement decides alike wherever it writes (the conformance tests and
//! `shared/protocol-model/tests/fast_paths.rs` check it), so a change between the two changes
//! no outcome.

use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use protocol::payment::{AfterUse, BeginPay, UseReply};
use protocol::reservation::Status;

use super::locked::{BackToHeld, ConfirmAttempt, RecordRefundDecision, StartAttempt};
use super::models::ReservationRow;
use super::one_statement::{BeginHeldAttempt, ConfirmDebitedAttempt};
use super::pipeline::{begin_locked, commit, commit_with};
use super::seat::{Locked, end_reservation};
use shared::pipeline::Checkout;

use super::{Store, StoreError, micros};
use crate::model::{
    BeginOutcome, PayAttempt, PaymentAttempt, Refusal, ReservationId, SettleOutcome, UserId,
};

impl Store {
    /// Starts (or resumes) a payment: `HELD -> PAYING` with a new attempt, conditionally. A
    /// held reservation's payment begins in one statement; anything else goes to
    /// [`Store::begin_pay_in_transaction`].
    pub async fn begin_pay(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
    ) -> Result<BeginOutcome, StoreError> {
        crate::metrics::db_transaction("begin_pay", async move {
            let mut conn = Checkout::new(self.pool.get().await?);
            let begun = BeginHeldAttempt {
                id: reservation_id.get(),
                user_id: user_id.get(),
            }
            .get_result::<(ReservationRow, DateTime<Utc>)>(&mut *conn)
            .await
            .optional()?;
            if let Some((row, _)) = begun {
                debug_assert_eq!(row.status, Status::Paying.as_str());
                return Ok(BeginOutcome::Pay(payment_attempt(&row, row.pay_attempt)?));
            }
            begin_in_transaction(&mut conn, reservation_id, user_id).await
        })
        .await
    }

    /// [`Store::begin_pay`]'s full transaction, which decides every case: public so that the
    /// conformance tests hold it to the model on the rows the fast statement takes too.
    pub async fn begin_pay_in_transaction(
        &self,
        reservation_id: ReservationId,
        user_id: UserId,
    ) -> Result<BeginOutcome, StoreError> {
        let mut conn = Checkout::new(self.pool.get().await?);
        begin_in_transaction(&mut conn, reservation_id, user_id).await
    }

    /// Applies the reply to `payment`'s `Use` as the protocol decides; `refunded` says that the
    /// refund an earlier call asked for is done. A debit of a payment that can still be
    /// honoured is confirmed in one statement; anything else goes to
    /// [`Store::settle_in_transaction`].
    pub async fn settle_attempt(
        &self,
        payment: &PaymentAttempt,
        reply: UseReply,
        refunded: bool,
    ) -> Result<SettleOutcome, StoreError> {
        crate::metrics::db_transaction("settle_attempt", async move {
            let mut conn = Checkout::new(self.pool.get().await?);
            if let UseReply::Debited { transaction_id } = reply
                && !refunded
            {
                let confirmed = ConfirmDebitedAttempt {
                    id: payment.reservation.get(),
                    attempt: payment.attempt.get(),
                    transaction_id,
                    use_key: payment.keys.use_key(payment.attempt),
                }
                .get_result::<(ReservationRow, DateTime<Utc>, i64)>(&mut *conn)
                .await
                .optional()?;
                if let Some((row, now, sold)) = confirmed {
                    debug_assert_eq!(sold, 1, "a paying reservation's seat reads HELD");
                    debug_assert_eq!(
                        row.payment_keys(),
                        payment.keys,
                        "the keys the attempt was sent under are its reservation's"
                    );
                    return Ok(SettleOutcome::Confirmed(row.into_reservation(now)?));
                }
            }
            settle_in_transaction(
                &mut conn,
                payment.reservation,
                payment.attempt,
                reply,
                refunded,
            )
            .await
        })
        .await
    }

    /// [`Store::settle_attempt`]'s full transaction, which decides every case: public so that
    /// the conformance tests hold it to the model on the rows the fast statement takes too.
    pub async fn settle_in_transaction(
        &self,
        reservation: ReservationId,
        attempt: PayAttempt,
        reply: UseReply,
        refunded: bool,
    ) -> Result<SettleOutcome, StoreError> {
        let mut conn = Checkout::new(self.pool.get().await?);
        settle_in_transaction(&mut conn, reservation, attempt, reply, refunded).await
    }
}

/// `begin`, rolled back when it fails with its transaction open.
async fn begin_in_transaction(
    conn: &mut AsyncPgConnection,
    reservation_id: ReservationId,
    user_id: UserId,
) -> Result<BeginOutcome, StoreError> {
    let begun = begin(conn, reservation_id, user_id).await;
    if begun.is_err() {
        shared::pipeline::roll_back_if_open(conn).await;
    }
    begun
}

/// `settle`, rolled back when it fails with its transaction open.
async fn settle_in_transaction(
    conn: &mut AsyncPgConnection,
    reservation: ReservationId,
    attempt: PayAttempt,
    reply: UseReply,
    refunded: bool,
) -> Result<SettleOutcome, StoreError> {
    let settled = settle(conn, reservation, attempt, reply, refunded).await;
    if settled.is_err() {
        shared::pipeline::roll_back_if_open(conn).await;
    }
    settled
}

/// The payment of attempt `attempt` of the reservation `row`.
fn payment_attempt(row: &ReservationRow, attempt: i32) -> Result<PaymentAttempt, StoreError> {
    Ok(PaymentAttempt {
        reservation: row.reservation_id()?,
        attempt: PayAttempt::parse(attempt)
            .map_err(|error| StoreError::Internal(format!("attempt {attempt}: {error}")))?,
        payer: row.owner()?,
        price: row.price()?,
        schedule_id: row.schedule_id()?,
        seat_no: row.seat_no()?,
        keys: row.payment_keys(),
    })
}

async fn begin(
    conn: &mut AsyncPgConnection,
    reservation_id: ReservationId,
    user_id: UserId,
) -> Result<BeginOutcome, StoreError> {
    let Some(locked) = begin_locked(conn, reservation_id.get()).await? else {
        commit(conn).await?;
        return Ok(BeginOutcome::NotFound);
    };
    let state = locked.payment_state()?;
    let Locked { row, now, .. } = locked;
    let decision = protocol::payment::begin_pay(&state, user_id.get(), micros(now));
    if !matches!(decision, BeginPay::Begin { .. }) {
        // Nothing to write: the transaction ends here.
        commit(conn).await?;
    }
    let attempt = match decision {
        BeginPay::Begin { attempt } => {
            let start = StartAttempt {
                id: row.id,
                from_attempt: row.pay_attempt,
                attempt,
                now,
            };
            let begun = commit_with(conn, async |conn| start.execute(&mut &*conn).await).await?;
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
    Ok(BeginOutcome::Pay(payment_attempt(&row, attempt)?))
}

async fn settle(
    conn: &mut AsyncPgConnection,
    reservation: ReservationId,
    pay_attempt: PayAttempt,
    reply: UseReply,
    refunded: bool,
) -> Result<SettleOutcome, StoreError> {
    let id = reservation.get();
    let attempt = pay_attempt.get();
    let Some(locked) = begin_locked(conn, id).await? else {
        commit(conn).await?;
        return Ok(SettleOutcome::Moved);
    };
    let state = locked.payment_state()?;
    let Locked { row, now, .. } = locked;
    let use_key = row.payment_keys().use_key(pay_attempt);
    let decision =
        protocol::payment::apply_use_reply(&state, attempt, reply, refunded, micros(now));
    let writes = matches!(
        decision,
        AfterUse::Confirm { .. }
            | AfterUse::BackToHeld
            | AfterUse::Expire
            | AfterUse::ExpireRefunded
            | AfterUse::DecideRefund
    );
    if !writes {
        // Nothing to write: the transaction ends here.
        commit(conn).await?;
    }
    // Every write below is conditional on this very attempt still paying, and sent with
    // `COMMIT`.
    match decision {
        AfterUse::Confirm { transaction_id } => {
            let confirm = ConfirmAttempt {
                id,
                attempt,
                transaction_id,
                use_key,
                now,
            };
            let (row, sold) = commit_with(conn, async |conn| {
                confirm
                    .get_result::<(ReservationRow, i64)>(&mut &*conn)
                    .await
            })
            .await?;
            debug_assert_eq!(sold, 1, "a paying reservation's seat reads HELD");
            Ok(SettleOutcome::Confirmed(row.into_reservation(now)?))
        }
        AfterUse::BackToHeld => {
            let back = BackToHeld { id, attempt, now };
            commit_with(conn, async |conn| back.execute(&mut &*conn).await).await?;
            Ok(SettleOutcome::Refused)
        }
        AfterUse::Expire | AfterUse::ExpireRefunded => {
            let ended = &row;
            commit_with(conn, async |conn| {
                end_reservation(conn, ended, Status::Paying, Status::Expired, now).await
            })
            .await?;
            Ok(if decision == AfterUse::Expire {
                SettleOutcome::Refused
            } else {
                SettleOutcome::Moved
            })
        }
        AfterUse::StayPaying => Ok(SettleOutcome::StillPaying),
        AfterUse::Settled => Ok(SettleOutcome::Confirmed(row.into_reservation(now)?)),
        AfterUse::DecideRefund => {
            // Recorded before the refund is asked for: from now on no settle of this attempt
            // confirms it, whatever its clock reads.
            let record = RecordRefundDecision { id, attempt, now };
            commit_with(conn, async |conn| record.execute(&mut &*conn).await).await?;
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
