//! The gRPC adapter: parse the request, call the domain, convert the answer.

mod admission;
mod convert;

pub use admission::AdmissionGrpc;

use shared::auth::Caller;
use shared::proto::reservation::v1 as pb;
use shared::proto::reservation::v1::reservation_service_server::ReservationService;
use tonic::{Request, Response, Status};

use crate::domain::{ReservationError, Reservations};
use convert::ById;
use shared::error::PageRequest;

/// Serves `ticketing.reservation.v1.ReservationService`.
#[derive(Debug, Clone)]
pub struct ReservationGrpc {
    reservations: Reservations,
}

impl ReservationGrpc {
    pub fn new(reservations: Reservations) -> Self {
        Self { reservations }
    }
}

#[tonic::async_trait]
impl ReservationService for ReservationGrpc {
    async fn create_concert(
        &self,
        request: Request<pb::CreateConcertRequest>,
    ) -> Result<Response<pb::Concert>, Status> {
        Caller::of(&request)?.require_admin()?;
        let title = convert::title(request.into_inner())?;
        let concert = self.reservations.create_concert(title).await?;
        Ok(Response::new(concert.into()))
    }

    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Caller::of(&request)?.require_admin()?;
        let schedule = request.into_inner().try_into()?;
        let created = self.reservations.create_schedule(schedule).await?;
        Ok(Response::new(created.into()))
    }

    async fn list_concerts(
        &self,
        request: Request<pb::ListConcertsRequest>,
    ) -> Result<Response<pb::ListConcertsResponse>, Status> {
        let PageRequest {
            page_size, cursor, ..
        } = convert::list_concerts(request.get_ref())?;
        let page = self.reservations.concerts(page_size, cursor).await?;
        Ok(Response::new(convert::concert_page(page)))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let PageRequest {
            owner: concert_id,
            page_size,
            cursor,
        } = convert::list_schedules(request.get_ref())?;
        let page = self
            .reservations
            .schedules(concert_id, page_size, cursor)
            .await?;
        Ok(Response::new(convert::schedule_page(page)))
    }

    async fn list_seats(
        &self,
        request: Request<pb::ListSeatsRequest>,
    ) -> Result<Response<pb::ListSeatsResponse>, Status> {
        let PageRequest {
            owner: schedule_id,
            page_size,
            cursor,
        } = convert::list_seats(request.get_ref())?;
        let page = self
            .reservations
            .seats(schedule_id, page_size, cursor)
            .await?;
        Ok(Response::new(convert::seat_page(page)))
    }

    async fn hold_seat(
        &self,
        request: Request<pb::HoldSeatRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let token = admission::hold_token(&request);
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let hold: crate::model::HoldRequest = request.try_into()?;
        if let Some(admission) = self.reservations.admission() {
            admission.check_hold(token.as_deref(), hold.user_id.get(), hold.schedule_id.get())?;
        }
        let reservation = self.reservations.hold(hold).await?;
        Ok(Response::new(reservation.into()))
    }

    async fn pay_reservation(
        &self,
        request: Request<pb::PayReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let pay = request.try_into()?;
        let reservation = self.reservations.pay(pay).await?;
        Ok(Response::new(reservation.into()))
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let cancel = request.try_into()?;
        let reservation = self.reservations.cancel(cancel).await?;
        Ok(Response::new(reservation.into()))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = Caller::of(&request)?;
        let ById(reservation_id) = request.into_inner().try_into()?;
        let reservation = self.reservations.reservation(reservation_id).await?;
        // Someone else's reservation is answered as one that does not exist.
        if !caller.may_see(reservation.user_id.get()) {
            return Err(ReservationError::NotFound("reservation").into());
        }
        Ok(Response::new(reservation.into()))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let PageRequest {
            owner: user_id,
            page_size,
            cursor,
        } = convert::list_reservations(&request)?;
        let page = self
            .reservations
            .reservations(user_id, page_size, cursor)
            .await?;
        Ok(Response::new(convert::reservation_page(page)))
    }
}
