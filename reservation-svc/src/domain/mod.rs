//! The reservation rules in terms of valid values. Decisions are made by
//! [`protocol::reservation`]; this layer orders the steps: the Redis lock before Postgres, the
//! release after the commit, and database work that runs to its end even if the caller leaves.

mod types;

use std::time::Duration;

use chrono::{DateTime, Utc};
pub use types::*;

use crate::lock::{LockError, SeatLocks};
use crate::store::{CancelOutcome, HoldOutcome, Store, StoreError};
use protocol::reservation::CancelDecision;

#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub concert_id: ConcertId,
    pub starts_at: DateTime<Utc>,
    pub seat_count: SeatCount,
    pub seat_price: Price,
}

#[derive(Debug, Clone, Copy)]
pub struct HoldRequest {
    pub user_id: UserId,
    pub schedule_id: ScheduleId,
    pub seat_no: SeatNo,
}

#[derive(Debug, Clone, Copy)]
pub struct CancelRequest {
    pub reservation_id: ReservationId,
    pub user_id: UserId,
}

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
    #[error("the reservation belongs to another user")]
    NotOwner,
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the reservation is not in a state that allows this")]
    InvalidState,
    #[error("payment is not offered by this version of the service")]
    PaymentUnsupported,
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

impl From<LockError> for ReservationError {
    fn from(error: LockError) -> Self {
        match error {
            LockError::Contended => Self::SeatLocked,
            LockError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

/// The reservation service.
#[derive(Debug, Clone)]
pub struct Reservations {
    store: Store,
    locks: SeatLocks,
    hold_ttl: Duration,
}

impl Reservations {
    pub fn new(store: Store, locks: SeatLocks, hold_ttl: Duration) -> Self {
        Self {
            store,
            locks,
            hold_ttl,
        }
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

    pub async fn concerts(&self) -> Result<Vec<Concert>, ReservationError> {
        Ok(self.store.concerts().await?)
    }

    pub async fn schedules(
        &self,
        concert_id: ConcertId,
    ) -> Result<Vec<Schedule>, ReservationError> {
        self.store
            .schedules(concert_id)
            .await?
            .ok_or(ReservationError::NotFound("concert"))
    }

    pub async fn seats(&self, schedule_id: ScheduleId) -> Result<Vec<Seat>, ReservationError> {
        self.store
            .seats(schedule_id)
            .await?
            .ok_or(ReservationError::NotFound("schedule"))
    }

    /// Holds a seat: the Redis lock first (losers answer at once, without touching Postgres),
    /// then one Postgres transaction that decides, then the release.
    pub async fn hold(&self, request: HoldRequest) -> Result<Reservation, ReservationError> {
        let store = self.store.clone();
        let locks = self.locks.clone();
        let hold_ttl = self.hold_ttl;
        // One task from lock to release: a caller that goes away cancels neither the
        // transaction nor the release of the lock.
        let outcome = tokio::spawn(async move {
            let lock = locks
                .acquire(request.schedule_id.get(), request.seat_no.get())
                .await?;
            let held = store.hold_seat(request, hold_ttl).await;
            locks.release(lock).await;
            Ok::<_, ReservationError>(held?)
        })
        .await
        .map_err(|join_error| ReservationError::Internal(join_error.to_string()))??;
        match outcome {
            HoldOutcome::Held(reservation) => Ok(reservation),
            HoldOutcome::ScheduleNotFound => Err(ReservationError::NotFound("schedule")),
            HoldOutcome::SeatOutOfRange { seat_count } => {
                Err(ReservationError::SeatOutOfRange { seat_count })
            }
            HoldOutcome::Taken => Err(ReservationError::SeatTaken),
        }
    }

    /// Cancels a held reservation and frees its seat at once.
    pub async fn cancel(&self, request: CancelRequest) -> Result<Reservation, ReservationError> {
        let store = self.store.clone();
        let outcome = tokio::spawn(async move { store.cancel(request).await })
            .await
            .map_err(|join_error| ReservationError::Internal(join_error.to_string()))??;
        match outcome {
            CancelOutcome::Cancelled(reservation) => Ok(reservation),
            CancelOutcome::NotFound => Err(ReservationError::NotFound("reservation")),
            CancelOutcome::Refused(decision) => Err(match decision {
                CancelDecision::NotOwner => ReservationError::NotOwner,
                CancelDecision::HoldExpired => ReservationError::HoldExpired,
                CancelDecision::InvalidState => ReservationError::InvalidState,
                // Refunds come with payments, which this version does not take: no
                // reservation can be confirmed yet.
                CancelDecision::RefundThenRelease => ReservationError::PaymentUnsupported,
                CancelDecision::Release | CancelDecision::AlreadyCancelled => {
                    ReservationError::Internal(format!("{decision:?} reported as refused"))
                }
            }),
        }
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
        Ok(self.store.expire_lapsed_holds(batch_size).await?)
    }

    pub fn locks(&self) -> &SeatLocks {
        &self.locks
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
