//! `ticketing.admission.v1.AdmissionService`: the waiting rooms over gRPC.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use protocol::admission::{RoomConfig, Standing};
use shared::all_valid;
use shared::auth::Caller;
use shared::error::FieldViolations;
use shared::proto::admission::v1 as pb;
use shared::proto::admission::v1::admission_service_server::AdmissionService;
use shared::values::parse_timestamp;
use tonic::{Request, Response, Status};

use crate::admission::{Admission, RoomSettings, RoomStatus, TicketView};
use crate::model::{ScheduleId, UserId};

/// Serves `ticketing.admission.v1.AdmissionService`.
#[derive(Debug, Clone)]
pub struct AdmissionGrpc {
    admission: Admission,
}

impl AdmissionGrpc {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

/// The user and schedule a request names, the user as the caller may act for.
fn user_and_schedule(
    caller: &Caller,
    user_id: i64,
    schedule_id: i64,
) -> Result<(i64, i64), Status> {
    let user_id = caller.acting_for(user_id)?;
    let mut violations = FieldViolations::new();
    let user = violations.check("user_id", UserId::parse(user_id));
    let schedule = violations.check("schedule_id", ScheduleId::parse(schedule_id));
    let (user, schedule) = all_valid!(violations, user, schedule);
    Ok((user.get(), schedule.get()))
}

/// The settings of a `ConfigureRoom`, every bad one named.
/// The schedule, the settings, and the opening if the request names one (`opens_at_ms` of the
/// settings is then that, else 0 and not read).
fn room_config(
    request: &pb::ConfigureRoomRequest,
) -> Result<(i64, RoomConfig, Option<i64>), Status> {
    let mut violations = FieldViolations::new();
    let schedule = violations.check("schedule_id", ScheduleId::parse(request.schedule_id));
    // Anything out of an i64's range saturates (NaN is 0), and is refused by the bounds.
    let rate_milli_per_s = (request.rate_per_s * 1_000.0).round() as i64;
    // A duration missing or negative reads as -1 ms: out of bounds too.
    let millis = |duration: &Option<prost_types::Duration>| {
        duration.as_ref().map_or(-1, |duration| {
            if duration.seconds < 0 || duration.nanos < 0 {
                return -1;
            }
            duration
                .seconds
                .saturating_mul(1_000)
                .saturating_add(i64::from(duration.nanos / 1_000_000))
        })
    };
    let config = RoomConfig {
        rate_milli_per_s,
        burst: i64::from(request.burst),
        max_active: i64::from(request.max_active),
        claim_window_ms: millis(&request.claim_window),
        token_ttl_ms: millis(&request.token_ttl),
        opens_at_ms: 0,
    };
    for bad in config.check() {
        violations.add(bad.field(), bad.bounds());
    }
    let opens_at = match &request.opens_at {
        Some(at) => violations
            .check("opens_at", parse_timestamp(at))
            .map(|at| Some(at.timestamp_millis())),
        None => Some(None),
    };
    let (schedule, opens_at) = all_valid!(violations, schedule, opens_at);
    Ok((
        schedule.get(),
        RoomConfig {
            opens_at_ms: opens_at.unwrap_or(0),
            ..config
        },
        opens_at,
    ))
}

fn timestamp_ms(ms: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map(shared::proto::timestamp)
}

fn duration_ms(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1_000,
        // Below a second, so it fits.
        nanos: i32::try_from((ms % 1_000) * 1_000_000).unwrap_or(0),
    }
}

impl From<TicketView> for pb::Ticket {
    fn from(view: TicketView) -> Self {
        let (state, number, ahead) = match view.standing {
            Standing::Absent => (pb::TicketState::Expired, 0, 0),
            Standing::BeforeOpening => (pb::TicketState::BeforeOpening, 0, 0),
            Standing::Waiting { number, ahead } => (pb::TicketState::Waiting, number, ahead),
            Standing::Admitted { number, .. } => (pb::TicketState::Admitted, number, 0),
            Standing::Expired { number } => (pb::TicketState::Expired, number, 0),
        };
        let (admission_token, admitted_until) = match view.token {
            Some((token, until)) => (token, timestamp_ms(until)),
            None => (String::new(), None),
        };
        Self {
            schedule_id: view.schedule_id,
            user_id: view.user_id,
            number,
            ahead,
            state: state.into(),
            admission_token,
            admitted_until,
            eta_min_seconds: view.eta_seconds.0,
            eta_max_seconds: view.eta_seconds.1,
            refresh_after_ms: view.refresh_after_ms,
            opens_at: timestamp_ms(view.opens_at_ms),
        }
    }
}

impl From<RoomSettings> for pb::Room {
    fn from(room: RoomSettings) -> Self {
        let config = room.config;
        Self {
            schedule_id: room.schedule_id,
            rate_per_s: config.rate_milli_per_s as f64 / 1_000.0,
            burst: i32::try_from(config.burst).unwrap_or(i32::MAX),
            max_active: i32::try_from(config.max_active).unwrap_or(i32::MAX),
            claim_window: Some(duration_ms(config.claim_window_ms)),
            token_ttl: Some(duration_ms(config.token_ttl_ms)),
            opens_at: timestamp_ms(config.opens_at_ms),
        }
    }
}

impl From<RoomStatus> for pb::RoomStatus {
    fn from(status: RoomStatus) -> Self {
        let counters = status.report.counters;
        Self {
            room: Some(status.settings.into()),
            opened: counters.opened,
            waiting: counters.waiting,
            active: counters.active,
            served: counters.served,
            issued: counters.issued,
            admitted_per_minute: status.report.admitted_last_minute,
        }
    }
}

type TicketStream = Pin<Box<dyn Stream<Item = Result<pb::Ticket, Status>> + Send>>;

#[tonic::async_trait]
impl AdmissionService for AdmissionGrpc {
    async fn enter(
        &self,
        request: Request<pb::EnterRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let (user, schedule) = user_and_schedule(&caller, request.user_id, request.schedule_id)?;
        let ticket = self.admission.enter(user, schedule).await?;
        Ok(Response::new(ticket.into()))
    }

    async fn get_position(
        &self,
        request: Request<pb::GetPositionRequest>,
    ) -> Result<Response<pb::Ticket>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let (user, schedule) = user_and_schedule(&caller, request.user_id, request.schedule_id)?;
        let ticket = self.admission.position(user, schedule).await?;
        Ok(Response::new(ticket.into()))
    }

    type WatchPositionStream = TicketStream;

    async fn watch_position(
        &self,
        request: Request<pb::WatchPositionRequest>,
    ) -> Result<Response<Self::WatchPositionStream>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let (user, schedule) = user_and_schedule(&caller, request.user_id, request.schedule_id)?;
        let tickets = self
            .admission
            .watch(user, schedule)?
            .map(|ticket| ticket.map(pb::Ticket::from).map_err(Status::from));
        Ok(Response::new(Box::pin(tickets)))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let (user, schedule) = user_and_schedule(&caller, request.user_id, request.schedule_id)?;
        let left = self.admission.leave(user, schedule).await?;
        Ok(Response::new(pb::LeaveResponse { left }))
    }

    async fn configure_room(
        &self,
        request: Request<pb::ConfigureRoomRequest>,
    ) -> Result<Response<pb::Room>, Status> {
        Caller::of(&request)?.require_admin()?;
        let (schedule, config, opens_at) = room_config(request.get_ref())?;
        let room = self.admission.configure(schedule, config, opens_at).await?;
        Ok(Response::new(room.into()))
    }

    async fn get_room_status(
        &self,
        request: Request<pb::GetRoomStatusRequest>,
    ) -> Result<Response<pb::RoomStatus>, Status> {
        Caller::of(&request)?.require_admin()?;
        let schedule = ScheduleId::parse(request.get_ref().schedule_id)
            .map_err(|error| shared::error::invalid_field("schedule_id", error.to_string()))?;
        let status = self.admission.status(schedule.get()).await?;
        Ok(Response::new(status.into()))
    }
}

/// The admission token of a HoldSeat call, from its metadata.
/// A value that is not text is no token: it is checked as an empty one, and refused.
pub fn hold_token<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(crate::admission::TOKEN_METADATA)
        .map(|value| value.to_str().unwrap_or_default().to_owned())
}
