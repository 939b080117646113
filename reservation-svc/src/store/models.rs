//! Rows as diesel reads and writes them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use protocol::payment::PaymentState;
use protocol::reservation::{ReservationState, Status};

use super::StoreError;
use super::schema::{concerts, reservations};
use crate::domain::{Concert, Reservation, Schedule};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = concerts, check_for_backend(diesel::pg::Pg))]
pub struct ConcertRow {
    pub id: i64,
    pub title: String,
}

impl From<ConcertRow> for Concert {
    fn from(row: ConcertRow) -> Self {
        Self {
            id: row.id,
            title: row.title,
        }
    }
}

#[derive(Debug, Clone, QueryableByName)]
pub struct ScheduleRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub concert_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub starts_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub seat_count: i32,
    #[diesel(sql_type = BigInt)]
    pub seat_price: i64,
    #[diesel(sql_type = Integer)]
    pub available_seats: i32,
}

impl From<ScheduleRow> for Schedule {
    fn from(row: ScheduleRow) -> Self {
        Self {
            id: row.id,
            concert_id: row.concert_id,
            starts_at: row.starts_at,
            seat_count: row.seat_count,
            seat_price: row.seat_price,
            available_seats: row.available_seats,
        }
    }
}

/// A seat with its active reservation's status and expiry, if it has one.
#[derive(Debug, Clone, QueryableByName)]
pub struct SeatRow {
    #[diesel(sql_type = Integer)]
    pub seat_no: i32,
    #[diesel(sql_type = BigInt)]
    pub price: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub reservation_id: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub user_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub status: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The database's clock at the read.
    #[diesel(sql_type = Timestamptz)]
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = reservations, check_for_backend(diesel::pg::Pg))]
pub struct ReservationRow {
    pub id: i64,
    pub user_id: i64,
    pub schedule_id: i64,
    pub seat_no: i32,
    pub price: i64,
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub pay_attempt: i32,
    pub payment_transaction_id: Option<i64>,
    pub payment_idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub refund_requested_at: Option<DateTime<Utc>>,
}

impl ReservationRow {
    /// The facts the payment decisions depend on; `starts_at` is the performance's start.
    pub fn payment_state(&self, starts_at: DateTime<Utc>) -> Result<PaymentState, StoreError> {
        Ok(PaymentState {
            id: self.id,
            user_id: self.user_id,
            status: parse_status(&self.status)?,
            expires_at: self.expires_at.timestamp_micros(),
            starts_at: starts_at.timestamp_micros(),
            pay_attempt: self.pay_attempt,
            payment_transaction_id: self.payment_transaction_id,
            refunding: self.refund_requested_at.is_some(),
        })
    }

    /// The facts the protocol decides on.
    pub fn state(&self) -> Result<ReservationState, StoreError> {
        Ok(ReservationState {
            id: self.id,
            user_id: self.user_id,
            status: parse_status(&self.status)?,
            expires_at: self.expires_at.timestamp_micros(),
        })
    }

    /// The reservation as of `now` (a lapsed hold reads as expired).
    pub fn into_reservation(self, now: DateTime<Utc>) -> Result<Reservation, StoreError> {
        let status = protocol::reservation::status_at(&self.state()?, now.timestamp_micros());
        Ok(Reservation {
            id: self.id,
            user_id: self.user_id,
            schedule_id: self.schedule_id,
            seat_no: self.seat_no,
            price: self.price,
            status,
            expires_at: self.expires_at,
            payment_transaction_id: self.payment_transaction_id,
            created_at: self.created_at,
        })
    }
}

pub fn parse_status(value: &str) -> Result<Status, StoreError> {
    Status::parse(value)
        .ok_or_else(|| StoreError::Internal(format!("unknown reservation status {value:?}")))
}

#[derive(Debug, Insertable)]
#[diesel(table_name = reservations)]
pub struct NewReservation {
    pub user_id: i64,
    pub schedule_id: i64,
    pub seat_no: i32,
    pub price: i64,
    pub status: &'static str,
    pub expires_at: DateTime<Utc>,
}
