//! The reservation rules in terms of the vocabulary ([`crate::model`]). Decisions are made by
//! [`protocol`]; this layer orders the steps: the Redis lock before Postgres, the release after
//! the commit, the wallet between a payment's transactions, and database work that runs to
//! its end even if the caller leaves.

use std::num::NonZeroU32;
use std::time::Duration;

use protocol::payment::UseReply;

use crate::lock::{HoldLock, LockError, SeatLocks};
use crate::model::{
    CancelOutcome, Concert, ConcertId, ConcertPage, DEFAULT_MAX_ACTIVE_HOLDS_PER_USER, HoldOutcome,
    HoldRequest, HoldTerms, NewSchedule, OwnerRequest, PageCursor, PageSize, PaymentAttempt,
    Refusal, Reservation, ReservationId, ReservationPage, Schedule, ScheduleId, SchedulePage,
    SchedulePosition, SeatNo, SeatPage, SettleOutcome, Title, UserId,
};
use crate::store::{Store, StoreError};
use crate::wallet_client::{RefundError, Wallet};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("must be between 1 and {seat_count}, the seats of the schedule")]
    SeatOutOfRange { seat_count: i32 },
    #[error("the seat is already held or sold")]
    SeatTaken,
    #[error("the seat is being reserved by a concurrent request, retry")]
    SeatLocked,
    #[error("the performance has begun")]
    PerformanceStarted,
    #[error(
        "the user already holds or is paying for {max} seats of this schedule, the most allowed"
    )]
    HoldLimit { max: u32 },
    #[error("the reservation belongs to another user")]
    NotOwner,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the reservation is not in a state that allows this")]
    InvalidState,
    #[error("insufficient balance")]
    InsufficientBalance,
    #[error("the refund would take the balance past its limit")]
    BalanceLimit,
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ReservationError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => Self::Unavailable(detail),
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<RefundError> for ReservationError {
    fn from(error: RefundError) -> Self {
        match error {
            RefundError::BalanceLimit => Self::BalanceLimit,
            RefundError::Rejected(detail) => Self::Internal(detail),
            RefundError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

impl From<LockError> for ReservationError {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Contended => Self::SeatLocked,
            LockError::Taken => Self::SeatTaken,
            LockError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

impl From<Refusal> for ReservationError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotOwner => Self::NotOwner,
            Refusal::HoldExpired => Self::HoldExpired,
            Refusal::InvalidState => Self::InvalidState,
        }
    }
}

/// The reservation service.
#[derive(Debug, Clone)]
pub struct Reservations {
    store: Store,
    locks: SeatLocks,
    wallet: Wallet,
    hold_terms: HoldTerms,
    /// The waiting rooms, whose slots a payment, a cancellation or an expiry frees.
    admission: Option<crate::admission::Admission>,
}

impl Reservations {
    /// The service, with holds of `hold_ttl` and at most
    /// [`DEFAULT_MAX_ACTIVE_HOLDS_PER_USER`] per user and schedule (see
    /// [`Reservations::with_max_active_holds_per_user`]).
    pub fn new(store: Store, locks: SeatLocks, wallet: Wallet, hold_ttl: Duration) -> Self {
        Self {
            store,
            locks,
            wallet,
            hold_terms: HoldTerms {
                ttl: hold_ttl,
                max_per_user: DEFAULT_MAX_ACTIVE_HOLDS_PER_USER,
            },
            admission: None,
        }
    }

    /// Frees users' waiting room slots when their turns end here.
    pub fn with_admission(mut self, admission: crate::admission::Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// The waiting rooms, if this service has them.
    pub fn admission(&self) -> Option<&crate::admission::Admission> {
        self.admission.as_ref()
    }

    /// A hold the user made at `held_at` is over: if it was of their turn in the schedule's
    /// waiting room, the turn's slot is freed.
    fn end_turn(&self, user_id: i64, schedule_id: i64, held_at: chrono::DateTime<chrono::Utc>) {
        if let Some(admission) = &self.admission {
            admission.release(user_id, schedule_id, held_at);
        }
    }

    /// Lets one user have at most `max` reservations HELD or PAYING on one schedule.
    pub fn with_max_active_holds_per_user(mut self, max: NonZeroU32) -> Self {
        self.hold_terms.max_per_user = max;
        self
    }

    pub async fn create_concert(&self, title: Title) -> Result<Concert, ReservationError> {
        Ok(self.store.create_concert(&title).await?)
    }

    /// Creates the schedule and all its seats in one statement.
    pub async fn create_schedule(
        &self,
        schedule: NewSchedule,
    ) -> Result<Schedule, ReservationError> {
        self.store
            .create_schedule(&schedule)
            .await?
            .ok_or(ReservationError::NotFound("concert"))
    }

    pub async fn concerts(
        &self,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<ConcertPage, ReservationError> {
        Ok(self.store.concerts(page_size, cursor).await?)
    }

    pub async fn schedules(
        &self,
        concert_id: ConcertId,
        page_size: PageSize,
        cursor: Option<PageCursor<SchedulePosition>>,
    ) -> Result<SchedulePage, ReservationError> {
        self.store
            .schedules(concert_id, page_size, cursor)
            .await?
            .ok_or(ReservationError::NotFound("concert"))
    }

    pub async fn seats(
        &self,
        schedule_id: ScheduleId,
        page_size: PageSize,
        cursor: Option<PageCursor<SeatNo>>,
    ) -> Result<SeatPage, ReservationError> {
        self.store
            .seats(schedule_id, page_size, cursor)
            .await?
            .ok_or(ReservationError::NotFound("schedule"))
    }

    /// Holds a seat: the Redis lock first (losers answer at once, without touching Postgres),
    /// then Postgres decides, then the lock is released, or left as the seat's taken mark when
    /// the hold took the seat. Without Redis and with `SEAT_LOCK_FALLBACK=postgres`, the
    /// seat's lock is taken in Postgres, in the transaction that decides.
    pub async fn hold(&self, request: HoldRequest) -> Result<Reservation, ReservationError> {
        let store = self.store.clone();
        let locks = self.locks.clone();
        let terms = self.hold_terms;
        let span = tracing::info_span!(
            "hold_seat",
            user_id = request.user_id.get(),
            schedule_id = request.schedule_id.get(),
            seat_no = request.seat_no.get(),
        );
        // One task from lock to release: a caller that goes away cancels neither the
        // transaction nor the release of the lock.
        let outcome = shared::task::run_to_end(span, async move {
            let lock = locks
                .lock_for_hold(request.schedule_id.get(), request.seat_no.get())
                .await?;
            // Counted from before the transaction, whose clock starts the hold: no more than
            // the hold has left (the mark itself expires at the hold's `expires_at`).
            let started = std::time::Instant::now();
            let held = match &lock {
                HoldLock::Redis(_) => store.hold_seat(request, terms).await,
                HoldLock::Postgres { .. } => {
                    let wait = locks.command_timeout();
                    store
                        .hold_seat_locked_in_postgres(request, terms, wait)
                        .await
                }
            };
            let left = terms.ttl.saturating_sub(started.elapsed());
            let left = i64::try_from(left.as_micros()).unwrap_or(i64::MAX);
            let taken = match &held {
                Ok(HoldOutcome::Held(reservation)) => Some(reservation),
                _ => None,
            };
            let after = protocol::reservation::after_hold(
                taken.map(|reservation| (reservation.id.get(), left)),
            );
            locks
                .finish(lock, after, taken.map(|reservation| reservation.expires_at))
                .await;
            Ok::<_, ReservationError>(held?)
        })
        .await
        .map_err(ReservationError::Internal)??;
        match outcome {
            HoldOutcome::Held(reservation) => Ok(reservation),
            HoldOutcome::ScheduleNotFound => Err(ReservationError::NotFound("schedule")),
            HoldOutcome::SeatOutOfRange { seat_count } => {
                Err(ReservationError::SeatOutOfRange { seat_count })
            }
            HoldOutcome::Taken => Err(ReservationError::SeatTaken),
            HoldOutcome::Locked => Err(ReservationError::SeatLocked),
            HoldOutcome::PerformanceStarted => Err(ReservationError::PerformanceStarted),
            HoldOutcome::HoldLimit { max } => Err(ReservationError::HoldLimit { max }),
        }
    }

    /// Pays a held reservation with wallet points: `HELD -> PAYING` (a new attempt, or the
    /// current one re-sent), the attempt's idempotent `Use`, then `CONFIRMED`; back to `HELD`
    /// when the balance is too low; left `PAYING` (answer `UNAVAILABLE`) when the wallet gives
    /// no outcome, for a retry or the reconciler to finish.
    pub async fn pay(&self, request: OwnerRequest) -> Result<Reservation, ReservationError> {
        let service = self.clone();
        let span = tracing::info_span!(
            "pay_reservation",
            reservation_id = request.reservation_id.get(),
            user_id = request.user_id.get(),
            schedule_id = tracing::field::Empty,
            seat_no = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        // In a task of its own: a caller that goes away does not cut the saga short.
        shared::task::run_to_end(span, async move {
            let payment = match service
                .store
                .begin_pay(request.reservation_id, request.user_id)
                .await?
            {
                crate::model::BeginOutcome::Pay(payment) => payment,
                crate::model::BeginOutcome::Confirmed(reservation) => return Ok(reservation),
                crate::model::BeginOutcome::NotFound => {
                    return Err(ReservationError::NotFound("reservation"));
                }
                crate::model::BeginOutcome::Refused(refusal) => return Err(refusal.into()),
            };
            let span = tracing::Span::current();
            span.record("schedule_id", payment.schedule_id.get());
            span.record("seat_no", payment.seat_no.get());
            span.record("attempt", payment.attempt.get());
            service.drive_payment(payment).await
        })
        .await
        .map_err(ReservationError::Internal)?
    }

    /// Sends the attempt's `Use` (or, for a free seat, nothing) and applies the reply.
    async fn drive_payment(
        &self,
        payment: PaymentAttempt,
    ) -> Result<Reservation, ReservationError> {
        let PaymentAttempt {
            reservation,
            attempt,
            payer,
            price,
            ref keys,
            ..
        } = payment;
        let needs_wallet = protocol::payment::needs_wallet(price.get());
        let reply = if needs_wallet {
            let key = keys.use_key(attempt);
            self.wallet
                .use_points(
                    payer.get(),
                    price.get(),
                    &key,
                    &format!("reservation-{reservation}"),
                )
                .await
        } else {
            UseReply::Debited { transaction_id: 0 }
        };
        let mut settled = self.store.settle_attempt(&payment, reply, false).await?;
        if let SettleOutcome::Refund { payer, use_key } = &settled {
            // Give the money back first: until the refund is done the reservation stays as it
            // is, so a failed refund is retried by the next pay or reconciliation. A free seat
            // took no money.
            if needs_wallet {
                self.wallet
                    .refund(payer.get(), &keys.refund_key(), use_key)
                    .await?;
            }
            settled = self.store.settle_attempt(&payment, reply, true).await?;
        }
        match settled {
            SettleOutcome::Confirmed(reservation) => {
                self.end_turn(
                    reservation.user_id.get(),
                    reservation.schedule_id.get(),
                    reservation.created_at,
                );
                Ok(reservation)
            }
            SettleOutcome::Refused if reply == UseReply::Insufficient => {
                Err(ReservationError::InsufficientBalance)
            }
            SettleOutcome::Refused => Err(ReservationError::Internal(
                "the wallet rejected the payment".to_owned(),
            )),
            SettleOutcome::StillPaying => Err(ReservationError::Unavailable(
                "the wallet gave no outcome; the payment stays pending".to_owned(),
            )),
            SettleOutcome::Refund { .. } | SettleOutcome::Moved => {
                Err(ReservationError::InvalidState)
            }
        }
    }

    /// Drives payments left `PAYING` for longer than `grace` to an end, and finishes
    /// cancellations of paid reservations interrupted for as long; returns how many were
    /// looked at.
    pub async fn reconcile(
        &self,
        grace: Duration,
        batch_size: i64,
    ) -> Result<usize, ReservationError> {
        let stuck = self.store.claim_stuck_payments(grace, batch_size).await?;
        let looked_at = stuck.len();
        for payment in stuck {
            let id = payment.reservation.get();
            let span = tracing::info_span!(
                "reconcile_payment",
                reservation_id = id,
                user_id = payment.payer.get(),
                attempt = payment.attempt.get()
            );
            let driven = tracing::Instrument::instrument(self.drive_payment(payment), span).await;
            match driven {
                Ok(_) => {
                    crate::metrics::payment_reconciled("confirmed");
                    tracing::info!(reservation_id = id, "stuck payment confirmed");
                }
                Err(ReservationError::InsufficientBalance) => {
                    crate::metrics::payment_reconciled("refused");
                    tracing::info!(reservation_id = id, "stuck payment refused by the wallet");
                }
                Err(error) => {
                    crate::metrics::payment_reconciled("unsettled");
                    tracing::warn!(reservation_id = id, %error, "stuck payment still unsettled");
                }
            }
        }
        let cancelling = self
            .store
            .claim_unfinished_cancellations(grace, batch_size)
            .await?;
        for &request in &cancelling {
            let id = request.reservation_id.get();
            // The same cancellation again, as its owner: the refund is idempotent by its key.
            match self.cancel(request).await {
                Ok(_) => {
                    crate::metrics::cancellation_reconciled("finished");
                    tracing::info!(reservation_id = id, "interrupted cancellation finished");
                }
                Err(error) => {
                    crate::metrics::cancellation_reconciled("unfinished");
                    tracing::warn!(reservation_id = id, %error, "interrupted cancellation unfinished");
                }
            }
        }
        Ok(looked_at + cancelling.len())
    }

    /// Cancels a reservation: a hold is released at once; a paid one is refunded first (one
    /// refund however often or concurrently it is cancelled), then released.
    pub async fn cancel(&self, request: OwnerRequest) -> Result<Reservation, ReservationError> {
        let service = self.clone();
        let span = tracing::info_span!(
            "cancel_reservation",
            reservation_id = request.reservation_id.get(),
            user_id = request.user_id.get(),
        );
        shared::task::run_to_end(span, async move {
            let outcome = match service.store.cancel(request, false).await? {
                CancelOutcome::RefundFirst(paid) => {
                    if let (true, Some(use_key)) = (
                        protocol::payment::needs_wallet(paid.price.get()),
                        paid.use_key.as_deref(),
                    ) {
                        service
                            .wallet
                            .refund(paid.payer.get(), &paid.refund_key, use_key)
                            .await?;
                    }
                    service.store.cancel(request, true).await?
                }
                outcome => outcome,
            };
            match outcome {
                CancelOutcome::Cancelled(reservation) => {
                    // The seat is free again: later holds must not find its taken mark.
                    service
                        .locks
                        .clear_taken(
                            reservation.schedule_id.get(),
                            reservation.seat_no.get(),
                            reservation.id.get(),
                        )
                        .await;
                    service.end_turn(
                        reservation.user_id.get(),
                        reservation.schedule_id.get(),
                        reservation.created_at,
                    );
                    Ok(reservation)
                }
                CancelOutcome::NotFound => Err(ReservationError::NotFound("reservation")),
                CancelOutcome::Refused(refusal) => Err(refusal.into()),
                CancelOutcome::RefundFirst(_) => Err(ReservationError::Internal(
                    "a refunded reservation still asks for its refund".to_owned(),
                )),
            }
        })
        .await
        .map_err(ReservationError::Internal)?
    }

    pub async fn reservation(&self, id: ReservationId) -> Result<Reservation, ReservationError> {
        self.store
            .reservation(id)
            .await?
            .ok_or(ReservationError::NotFound("reservation"))
    }

    pub async fn reservations(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<ReservationPage, ReservationError> {
        Ok(self.store.reservations(user_id, page_size, cursor).await?)
    }

    /// Expires one batch of lapsed holds; returns how many.
    pub async fn sweep(&self, batch_size: i64) -> Result<usize, ReservationError> {
        let expired = self.store.expire_lapsed_holds(batch_size).await?;
        for &(user_id, schedule_id, held_at) in &expired {
            self.end_turn(user_id, schedule_id, held_at);
        }
        Ok(expired.len())
    }

    pub fn locks(&self) -> &SeatLocks {
        &self.locks
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
