//! Requests parsed into domain values (every bad field reported at once, as `INVALID_ARGUMENT`
//! with a `BadRequest`), and domain values turned into messages.

use chrono::{DateTime, Utc};
use shared::all_valid;
use shared::error::{FieldViolations, Listing, PageRequest, invalid_field};
use shared::proto::reservation::v1 as pb;
use shared::proto::timestamp;
use shared::values::{InvalidValue, parse_timestamp};
use tonic::Status;

use crate::model::{
    CONCERTS_LISTING, Concert, ConcertId, ConcertPage, HoldRequest, NewSchedule, OwnerRequest,
    Page, Position, Price, RESERVATIONS_LISTING, Reservation, ReservationId, ReservationPage,
    SCHEDULES_LISTING, SEATS_LISTING, Schedule, ScheduleId, SchedulePage, SchedulePosition, Seat,
    SeatCount, SeatNo, SeatPage, SeatView, Status as ReservationStatus, Title, UserId,
};

/// A request that names one thing by its id.
pub struct ById<T>(pub T);

fn one_id<T>(field: &str, parsed: Result<T, InvalidValue>) -> Result<ById<T>, Status> {
    parsed
        .map(ById)
        .map_err(|error| invalid_field(field, error.to_string()))
}

pub fn title(request: pb::CreateConcertRequest) -> Result<Title, Status> {
    Title::parse(request.title).map_err(|error| invalid_field("title", error.to_string()))
}

pub fn list_concerts(request: &pb::ListConcertsRequest) -> Result<PageRequest<()>, Status> {
    PageRequest::parse(
        &CONCERTS_LISTING,
        (0, |_| Ok(())),
        request.page_size,
        &request.page_token,
    )
}

pub fn list_schedules(
    request: &pb::ListSchedulesRequest,
) -> Result<PageRequest<ConcertId, SchedulePosition>, Status> {
    PageRequest::parse(
        &SCHEDULES_LISTING,
        (request.concert_id, ConcertId::parse),
        request.page_size,
        &request.page_token,
    )
}

pub fn list_seats(
    request: &pb::ListSeatsRequest,
) -> Result<PageRequest<ScheduleId, SeatNo>, Status> {
    PageRequest::parse(
        &SEATS_LISTING,
        (request.schedule_id, ScheduleId::parse),
        request.page_size,
        &request.page_token,
    )
}

pub fn list_reservations(
    request: &pb::ListReservationsRequest,
) -> Result<PageRequest<UserId>, Status> {
    PageRequest::parse(
        &RESERVATIONS_LISTING,
        (request.user_id, UserId::parse),
        request.page_size,
        &request.page_token,
    )
}

impl TryFrom<pb::GetReservationRequest> for ById<ReservationId> {
    type Error = Status;

    fn try_from(request: pb::GetReservationRequest) -> Result<Self, Status> {
        one_id(
            "reservation_id",
            ReservationId::parse(request.reservation_id),
        )
    }
}

/// A performance's start: required, and a timestamp as [`parse_timestamp`] reads every one.
fn starts_at(value: Option<prost_types::Timestamp>) -> Result<DateTime<Utc>, InvalidValue> {
    parse_timestamp(&value.ok_or(InvalidValue("is required"))?)
}

impl TryFrom<pb::CreateScheduleRequest> for NewSchedule {
    type Error = Status;

    fn try_from(request: pb::CreateScheduleRequest) -> Result<Self, Status> {
        let mut violations = FieldViolations::new();
        let concert_id = violations.check("concert_id", ConcertId::parse(request.concert_id));
        let starts_at = violations.check("starts_at", starts_at(request.starts_at));
        let seat_count = violations.check("seat_count", SeatCount::parse(request.seat_count));
        let seat_price = violations.check("seat_price", Price::parse(request.seat_price));
        let (concert_id, starts_at, seat_count, seat_price) =
            all_valid!(violations, concert_id, starts_at, seat_count, seat_price);
        Ok(Self {
            concert_id,
            starts_at,
            seat_count,
            seat_price,
        })
    }
}

impl TryFrom<pb::HoldSeatRequest> for HoldRequest {
    type Error = Status;

    fn try_from(request: pb::HoldSeatRequest) -> Result<Self, Status> {
        let mut violations = FieldViolations::new();
        let user_id = violations.check("user_id", UserId::parse(request.user_id));
        let schedule_id = violations.check("schedule_id", ScheduleId::parse(request.schedule_id));
        let seat_no = violations.check("seat_no", SeatNo::parse(request.seat_no));
        let (user_id, schedule_id, seat_no) = all_valid!(violations, user_id, schedule_id, seat_no);
        Ok(Self {
            user_id,
            schedule_id,
            seat_no,
        })
    }
}

fn owner_request(reservation_id: i64, user_id: i64) -> Result<OwnerRequest, Status> {
    let mut violations = FieldViolations::new();
    let reservation_id = violations.check("reservation_id", ReservationId::parse(reservation_id));
    let user_id = violations.check("user_id", UserId::parse(user_id));
    let (reservation_id, user_id) = all_valid!(violations, reservation_id, user_id);
    Ok(OwnerRequest {
        reservation_id,
        user_id,
    })
}

impl TryFrom<pb::PayReservationRequest> for OwnerRequest {
    type Error = Status;

    fn try_from(request: pb::PayReservationRequest) -> Result<Self, Status> {
        owner_request(request.reservation_id, request.user_id)
    }
}

impl TryFrom<pb::CancelReservationRequest> for OwnerRequest {
    type Error = Status;

    fn try_from(request: pb::CancelReservationRequest) -> Result<Self, Status> {
        owner_request(request.reservation_id, request.user_id)
    }
}

impl From<Concert> for pb::Concert {
    fn from(concert: Concert) -> Self {
        Self {
            id: concert.id.get(),
            title: concert.title,
        }
    }
}

impl From<Schedule> for pb::Schedule {
    fn from(schedule: Schedule) -> Self {
        Self {
            id: schedule.id.get(),
            concert_id: schedule.concert_id.get(),
            starts_at: Some(timestamp(schedule.starts_at)),
            seat_count: schedule.seat_count.get(),
            seat_price: schedule.seat_price.get(),
            available_seats: schedule.available_seats,
        }
    }
}

fn seat_status(view: SeatView) -> pb::SeatStatus {
    match view {
        SeatView::Available => pb::SeatStatus::Available,
        SeatView::Held => pb::SeatStatus::Held,
        SeatView::Sold => pb::SeatStatus::Sold,
    }
}

impl From<Seat> for pb::Seat {
    fn from(seat: Seat) -> Self {
        Self {
            seat_no: seat.seat_no.get(),
            price: seat.price.get(),
            status: seat_status(seat.status).into(),
        }
    }
}

fn reservation_status(status: ReservationStatus) -> pb::ReservationStatus {
    match status {
        ReservationStatus::Held => pb::ReservationStatus::Held,
        ReservationStatus::Paying => pb::ReservationStatus::Paying,
        ReservationStatus::Confirmed => pb::ReservationStatus::Confirmed,
        ReservationStatus::Cancelled => pb::ReservationStatus::Cancelled,
        ReservationStatus::Expired => pb::ReservationStatus::Expired,
    }
}

impl From<Reservation> for pb::Reservation {
    fn from(reservation: Reservation) -> Self {
        Self {
            id: reservation.id.get(),
            user_id: reservation.user_id.get(),
            schedule_id: reservation.schedule_id.get(),
            seat_no: reservation.seat_no.get(),
            price: reservation.price.get(),
            status: reservation_status(reservation.status).into(),
            expires_at: Some(timestamp(reservation.expires_at)),
            payment_transaction_id: reservation.payment_transaction_id.unwrap_or_default(),
            created_at: Some(timestamp(reservation.created_at)),
        }
    }
}

/// The token of the page after `page` in `listing`; empty when it was the last.
fn next_page_token<T, P: Position>(page: &Page<T, P>, listing: &Listing) -> String {
    page.next
        .map(|cursor| cursor.encode(listing.name))
        .unwrap_or_default()
}

pub fn concert_page(page: ConcertPage) -> pb::ListConcertsResponse {
    pb::ListConcertsResponse {
        next_page_token: next_page_token(&page, &CONCERTS_LISTING),
        concerts: page.rows.into_iter().map(Into::into).collect(),
    }
}

pub fn schedule_page(page: SchedulePage) -> pb::ListSchedulesResponse {
    pb::ListSchedulesResponse {
        next_page_token: next_page_token(&page, &SCHEDULES_LISTING),
        schedules: page.rows.into_iter().map(Into::into).collect(),
    }
}

pub fn seat_page(page: SeatPage) -> pb::ListSeatsResponse {
    pb::ListSeatsResponse {
        next_page_token: next_page_token(&page, &SEATS_LISTING),
        seats: page.rows.into_iter().map(Into::into).collect(),
    }
}

pub fn reservation_page(page: ReservationPage) -> pb::ListReservationsResponse {
    pb::ListReservationsResponse {
        next_page_token: next_page_token(&page, &RESERVATIONS_LISTING),
        reservations: page.rows.into_iter().map(Into::into).collect(),
    }
}
