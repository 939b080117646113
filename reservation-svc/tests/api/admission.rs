//! The waiting rooms through the API: tokens that HoldSeat asks for, one number per user across
//! replicas, numbers 1..=n, the order of entrants before the opening, slots freed by a claim
//! window's end, a leave and a cancel, and a Redis that goes away and comes back.

use std::time::{Duration, Instant};

use shared::proto::admission::v1 as adm;
use shared::proto::admission::v1::admission_service_client::AdmissionServiceClient;
use shared::proto::reservation::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, channel, reason, spawn_app_with, start};

pub type Admission = AdmissionServiceClient<Channel>;

pub async fn admission(addr: std::net::SocketAddr) -> Admission {
    AdmissionServiceClient::new(channel(addr).await)
}

/// A JWKS of one fresh admission key, in a file of its own, for replicas that must accept each
/// other's tokens.
pub fn keys_file() -> std::path::PathBuf {
    use base64::Engine as _;
    let secret: [u8; 32] = rand::random();
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"test","alg":"HS256","k":"{k}"}}]}}"#);
    let path = std::env::temp_dir().join(format!(
        "admission-keys-{:016x}.json",
        rand::random::<u64>()
    ));
    std::fs::write(&path, jwks).expect("write the admission keys");
    path
}

/// Room settings: `rate` admissions a second, at most `max_active` at once, opening now.
pub fn room(schedule_id: i64, rate: f64, max_active: i32) -> adm::ConfigureRoomRequest {
    adm::ConfigureRoomRequest {
        schedule_id,
        rate_per_s: rate,
        burst: 1,
        max_active,
        claim_window: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        token_ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        opens_at: None,
    }
}

pub async fn configure(client: &mut Admission, request: adm::ConfigureRoomRequest) -> adm::Room {
    client
        .configure_room(request)
        .await
        .expect("configure the room")
        .into_inner()
}

pub async fn enter(client: &mut Admission, user_id: i64, schedule_id: i64) -> adm::Ticket {
    client
        .enter(adm::EnterRequest {
            schedule_id,
            user_id,
        })
        .await
        .expect("enter")
        .into_inner()
}

pub async fn position(
    client: &mut Admission,
    user_id: i64,
    schedule_id: i64,
) -> Result<adm::Ticket, tonic::Status> {
    client
        .get_position(adm::GetPositionRequest {
            schedule_id,
            user_id,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Asks for the user's position until their turn comes (the replicas tick every half second).
pub async fn admitted(client: &mut Admission, user_id: i64, schedule_id: i64) -> adm::Ticket {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ticket = position(client, user_id, schedule_id)
            .await
            .expect("position");
        if ticket.state() == adm::TicketState::Admitted {
            return ticket;
        }
        assert!(Instant::now() < deadline, "never admitted: {ticket:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hold with `token` as the call's admission token.
pub async fn hold_with(
    app: &TestApp,
    token: Option<&str>,
    user_id: i64,
    schedule_id: i64,
    seat_no: i32,
) -> Result<pb::Reservation, tonic::Status> {
    let mut request = tonic::Request::new(pb::HoldSeatRequest {
        user_id,
        schedule_id,
        seat_no,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "x-admission-token",
            token.parse().expect("a token is metadata"),
        );
    }
    app.client()
        .hold_seat(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_schedule_with_a_room_holds_only_with_its_users_own_admission_token() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(10).await;
    let other = app.schedule_with_seats(10).await;
    let open = app.schedule_with_seats(10).await;
    configure(&mut rooms, room(schedule, 100.0, 100)).await;
    configure(&mut rooms, room(other, 100.0, 100)).await;

    // A schedule without a room holds as before.
    hold_with(&app, None, 1, open, 1)
        .await
        .expect("no room, no token");

    let before = app.rows_written().await;
    let refused = hold_with(&app, None, 1, schedule, 1)
        .await
        .expect_err("a room's schedule needs a token");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "ADMISSION_REQUIRED");

    let ticket = enter(&mut rooms, 1, schedule).await;
    assert_eq!(ticket.number, 1);
    let ticket = admitted(&mut rooms, 1, schedule).await;
    assert!(!ticket.admission_token.is_empty());
    assert!(ticket.admitted_until.is_some());
    let token = ticket.admission_token;

    for (user, schedule_id, why) in [
        (2, schedule, "another user's token"),
        (1, other, "another schedule's token"),
    ] {
        let refused = hold_with(&app, Some(&token), user, schedule_id, 1)
            .await
            .expect_err(why);
        assert_eq!(refused.code(), Code::PermissionDenied, "{why}");
        assert_eq!(reason(&refused), "ADMISSION_INVALID", "{why}");
    }
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    for bad in [forged.as_str(), "not-a-token", ""] {
        let refused = hold_with(&app, Some(bad), 1, schedule, 1)
            .await
            .expect_err("a forged token");
        assert_eq!(refused.code(), Code::PermissionDenied, "{bad:?}");
        assert_eq!(reason(&refused), "ADMISSION_INVALID", "{bad:?}");
    }
    assert_eq!(app.rows_written().await, before, "refusals write nothing");

    hold_with(&app, Some(&token), 1, schedule, 1)
        .await
        .expect("the user's own token");
}

#[tokio::test]
async fn an_expired_admission_token_asks_for_the_room_again() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(10).await;
    let mut settings = room(schedule, 100.0, 100);
    settings.token_ttl = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    configure(&mut rooms, settings).await;
    enter(&mut rooms, 1, schedule).await;
    let token = admitted(&mut rooms, 1, schedule).await.admission_token;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let refused = hold_with(&app, Some(&token), 1, schedule, 1)
        .await
        .expect_err("expired");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "ADMISSION_REQUIRED");
    // The turn is over too: entering again queues at the back.
    let again = enter(&mut rooms, 1, schedule).await;
    assert_eq!(again.number, 2);
}

#[tokio::test]
async fn one_user_has_one_number_however_often_and_wherever_they_enter() {
    let keys = keys_file();
    let app = spawn_app_with(|config| config.admission_token_keys_file = Some(keys.clone())).await;
    let (second, _stop, _server) = start(app.config.clone()).await;
    let schedule = app.schedule_with_seats(10).await;
    configure(&mut admission(app.addr).await, room(schedule, 1.0, 1)).await;
    // The other replica reads the room within a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let replicas = [admission(app.addr).await, admission(second).await];
    enter(&mut replicas[0].clone(), 1, schedule).await;
    let entries = (0..1_000).map(|i| {
        let mut client = replicas[i % 2].clone();
        async move { enter(&mut client, 2, schedule).await.number }
    });
    let numbers = futures::future::join_all(entries).await;
    assert!(numbers.iter().all(|&number| number == 2), "{numbers:?}");
    let third = enter(&mut replicas[1].clone(), 3, schedule).await;
    assert_eq!(third.number, 3);
    let _ = std::fs::remove_file(keys);
}

#[tokio::test]
async fn a_schedule_without_a_room_has_no_queue() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(1).await;
    let missing = rooms
        .enter(adm::EnterRequest {
            schedule_id: schedule,
            user_id: 1,
        })
        .await
        .expect_err("no room");
    assert_eq!(missing.code(), Code::NotFound);
    let missing = rooms
        .configure_room(room(schedule + 1_000, 1.0, 1))
        .await
        .expect_err("no such schedule");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn room_settings_out_of_bounds_are_named_and_nothing_is_configured() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(1).await;
    let bad = adm::ConfigureRoomRequest {
        schedule_id: schedule,
        rate_per_s: f64::NAN,
        burst: 0,
        max_active: -1,
        claim_window: None,
        token_ttl: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        opens_at: None,
    };
    let refused = rooms.configure_room(bad).await.expect_err("bad settings");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = shared::error::violated_fields(&refused);
    for field in [
        "rate_per_s",
        "burst",
        "max_active",
        "claim_window",
        "token_ttl",
    ] {
        assert!(
            fields.iter().any(|named| named == field),
            "{field}: {fields:?}"
        );
    }
    let status = rooms
        .get_room_status(adm::GetRoomStatusRequest {
            schedule_id: schedule,
        })
        .await
        .expect_err("no room was made");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn an_unclaimed_turn_a_leave_and_a_cancel_each_free_their_slot() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(10).await;
    let mut settings = room(schedule, 100.0, 1);
    settings.claim_window = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    configure(&mut rooms, settings).await;
    for user in 1..=4 {
        assert_eq!(enter(&mut rooms, user, schedule).await.number, user);
    }
    // User 1 is called and never claims: after the window, user 2 is called.
    let second = admitted(&mut rooms, 2, schedule).await;
    assert_eq!(second.number, 2);
    let first = position(&mut rooms, 1, schedule).await.expect("position");
    assert_eq!(first.state(), adm::TicketState::Expired);
    let third = position(&mut rooms, 3, schedule).await.expect("position");
    assert_eq!(third.state(), adm::TicketState::Waiting);

    // User 2 leaves: user 3 is called at the next tick.
    let left = rooms
        .leave(adm::LeaveRequest {
            schedule_id: schedule,
            user_id: 2,
        })
        .await
        .expect("leave")
        .into_inner();
    assert!(left.left);
    let third = admitted(&mut rooms, 3, schedule).await;

    // User 3 holds a seat and cancels it: their turn is over, user 4 is called.
    let held = hold_with(&app, Some(&third.admission_token), 3, schedule, 1)
        .await
        .expect("hold");
    app.cancel(held.id, 3).await.expect("cancel");
    admitted(&mut rooms, 4, schedule).await;
    let status = rooms
        .get_room_status(adm::GetRoomStatusRequest {
            schedule_id: schedule,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!((status.served, status.issued, status.active), (4, 4, 1));
}

#[tokio::test]
async fn a_hold_of_an_earlier_turn_ends_no_later_turn() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(10).await;
    configure(&mut rooms, room(schedule, 100.0, 1)).await;
    enter(&mut rooms, 1, schedule).await;
    let first_turn = admitted(&mut rooms, 1, schedule).await;
    let old_hold = hold_with(&app, Some(&first_turn.admission_token), 1, schedule, 1)
        .await
        .expect("a hold in the first turn");
    // User 1 leaves and queues again, behind nobody: a second turn, with user 2 behind.
    rooms
        .leave(adm::LeaveRequest {
            schedule_id: schedule,
            user_id: 1,
        })
        .await
        .expect("leave");
    assert_eq!(enter(&mut rooms, 1, schedule).await.number, 2);
    assert_eq!(enter(&mut rooms, 2, schedule).await.number, 3);
    admitted(&mut rooms, 1, schedule).await;
    // The first turn's hold ends: the second turn goes on, and user 2 is not called.
    app.cancel(old_hold.id, 1).await.expect("cancel");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let first = position(&mut rooms, 1, schedule).await.expect("position");
    assert_eq!(first.state(), adm::TicketState::Admitted, "{first:?}");
    let second = position(&mut rooms, 2, schedule).await.expect("position");
    assert_eq!(second.state(), adm::TicketState::Waiting, "{second:?}");
}

#[tokio::test]
async fn a_room_changed_without_an_opening_keeps_its_own() {
    let app = spawn_app_with(|_| {}).await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(1).await;
    let mut settings = room(schedule, 1.0, 1);
    let opens_at = chrono::Utc::now().timestamp() + 3_600;
    settings.opens_at = Some(prost_types::Timestamp {
        seconds: opens_at,
        nanos: 0,
    });
    configure(&mut rooms, settings).await;
    settings.opens_at = None;
    settings.rate_per_s = 2.0;
    let changed = configure(&mut rooms, settings).await;
    assert_eq!(changed.rate_per_s, 2.0);
    assert_eq!(changed.opens_at.map(|at| at.seconds), Some(opens_at));
    assert_eq!(
        enter(&mut rooms, 1, schedule).await.state(),
        adm::TicketState::BeforeOpening
    );
}
