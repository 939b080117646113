//! Rows as diesel reads and writes them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use protocol::payment::PaymentState;
use protocol::reservation::{ReservationState, Status};

use super::StoreError;
use super::schema::{concerts, reservations};
use crate::model::{
    Concert, ConcertId, InvalidValue, PaymentKeys, Price, Reservation, ReservationId, Schedule,
    ScheduleId, Seat, SeatCount, SeatNo, SeatView, UserId,
};

/// A value read back from a column whose constraints make it valid; one that is not means the
/// database was changed behind the service's back.
pub fn stored<T>(column: &str, parsed: Result<T, InvalidValue>) -> Result<T, StoreError> {
    parsed.map_err(|error| StoreError::Internal(format!("stored {column}: {error}")))
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = concerts, check_for_backend(diesel::pg::Pg))]
pub struct ConcertRow {
    pub id: i64,
    pub title: String,
}

impl TryFrom<ConcertRow> for Concert {
    type Error = StoreError;

    fn try_from(row: ConcertRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: stored("concert id", ConcertId::parse(row.id))?,
            title: row.title,
        })
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

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: stored("schedule id", ScheduleId::parse(row.id))?,
            concert_id: stored("concert id", ConcertId::parse(row.concert_id))?,
            starts_at: row.starts_at,
            seat_count: stored("seat count", SeatCount::parse(row.seat_count))?,
            seat_price: stored("seat price", Price::parse(row.seat_price))?,
            available_seats: row.available_seats,
        })
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

impl SeatRow {
    /// The seat as it reads at the time of the read.
    pub fn into_seat(self) -> Result<Seat, StoreError> {
        let active = match (
            self.reservation_id,
            self.user_id,
            self.status,
            self.expires_at,
        ) {
            (Some(id), Some(user_id), Some(status), Some(expires_at)) => {
                Some(protocol::reservation::ReservationState {
                    id,
                    user_id,
                    status: parse_status(&status)?,
                    expires_at: expires_at.timestamp_micros(),
                })
            }
            _ => None,
        };
        Ok(Seat {
            seat_no: stored("seat number", SeatNo::parse(self.seat_no))?,
            price: stored("seat price", Price::parse(self.price))?,
            status: protocol::reservation::seat_view(active.as_ref(), self.now.timestamp_micros()),
        })
    }
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
    pub payment_key_nonce: Option<String>,
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

    /// The wallet keys of this reservation's payments.
    pub fn payment_keys(&self) -> PaymentKeys {
        PaymentKeys::new(self.id, self.payment_key_nonce.as_deref())
    }

    pub fn reservation_id(&self) -> Result<ReservationId, StoreError> {
        stored("reservation id", ReservationId::parse(self.id))
    }

    pub fn owner(&self) -> Result<UserId, StoreError> {
        stored("user id", UserId::parse(self.user_id))
    }

    pub fn price(&self) -> Result<Price, StoreError> {
        stored("price", Price::parse(self.price))
    }

    pub fn schedule_id(&self) -> Result<ScheduleId, StoreError> {
        stored("schedule id", ScheduleId::parse(self.schedule_id))
    }

    pub fn seat_no(&self) -> Result<SeatNo, StoreError> {
        stored("seat number", SeatNo::parse(self.seat_no))
    }

    /// The reservation as of `now` (a lapsed hold reads as expired).
    pub fn into_reservation(self, now: DateTime<Utc>) -> Result<Reservation, StoreError> {
        let status = protocol::reservation::status_at(&self.state()?, now.timestamp_micros());
        Ok(Reservation {
            id: self.reservation_id()?,
            user_id: self.owner()?,
            schedule_id: self.schedule_id()?,
            seat_no: self.seat_no()?,
            price: self.price()?,
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

/// The reservation states that own their seat (`Status::is_active`), as the partial unique
/// index names them.
pub const ACTIVE_STATUSES: [&str; 3] = [
    Status::Held.as_str(),
    Status::Paying.as_str(),
    Status::Confirmed.as_str(),
];

/// [`ACTIVE_STATUSES`] as an SQL list, for statements written out in full.
pub const ACTIVE_STATUSES_SQL: &str = "('HELD', 'PAYING', 'CONFIRMED')";

/// The seats column's name of a seat state.
pub const fn seat_status(view: SeatView) -> &'static str {
    match view {
        SeatView::Available => "AVAILABLE",
        SeatView::Held => "HELD",
        SeatView::Sold => "SOLD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_statuses_are_the_protocols() {
        let all = [
            Status::Held,
            Status::Paying,
            Status::Confirmed,
            Status::Cancelled,
            Status::Expired,
        ];
        let active: Vec<&str> = all
            .iter()
            .filter(|status| status.is_active())
            .map(|status| status.as_str())
            .collect();
        assert_eq!(active, ACTIVE_STATUSES);
        let quoted: Vec<String> = active.iter().map(|name| format!("'{name}'")).collect();
        assert_eq!(ACTIVE_STATUSES_SQL, format!("({})", quoted.join(", ")));
    }

    /// The statements are written out in full, status names and all, to be read as SQL; every
    /// name in quotes in the stores' sources must be one the protocol gives a reservation
    /// (`Status::as_str`) or a seat ([`seat_status`]).
    #[test]
    fn every_status_the_stores_sql_names_is_the_protocols() {
        let mut known: Vec<&str> = [
            Status::Held,
            Status::Paying,
            Status::Confirmed,
            Status::Cancelled,
            Status::Expired,
        ]
        .iter()
        .map(|status| status.as_str())
        .collect();
        known.extend([SeatView::Available, SeatView::Held, SeatView::Sold].map(seat_status));
        let store = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        let mut named = 0;
        for entry in std::fs::read_dir(&store).expect("the store's sources") {
            let path = entry.expect("a source").path();
            let text = std::fs::read_to_string(&path).expect("a readable source");
            // Every run of capitals and underscores between two single quotes (whichever
            // quote opens a literal, the text between a closing and an opening one is not
            // such a run in SQL).
            let segments: Vec<&str> = text.split('\'').collect();
            for &quoted in segments
                .iter()
                .skip(1)
                .take(segments.len().saturating_sub(2))
            {
                if quoted.len() >= 2 && quoted.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    assert!(
                        known.contains(&quoted),
                        "{} names {quoted:?}, no status of the protocol",
                        path.display()
                    );
                    named += 1;
                }
            }
        }
        assert!(named > 10, "the stores' SQL names statuses ({named} found)");
    }
}
