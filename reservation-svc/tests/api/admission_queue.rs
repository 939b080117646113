//! The waiting room's queue at scale and through failures, with two replicas: 100,000 users
//! numbered exactly 1..=100,000, entrants before the opening ordered independently of their
//! arrival, the rate kept window by window for three minutes under the cap, position streams,
//! and a Redis killed mid-queue and started again under running replicas.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reservation_svc::lock::LockFallback;
use shared::proto::admission::v1 as adm;
use tonic::Code;

use crate::admission::{
    Admission, admission, admitted, configure, enter, hold_with, keys_file, position, room,
};
use crate::helpers::{RedisServer, spawn_app_with, start};

/// Two replicas sharing a database, a Redis and the admission keys; the clients of both.
async fn two_replicas(
    configure: impl FnOnce(&mut reservation_svc::config::Config),
) -> (crate::helpers::TestApp, [Admission; 2], impl Drop) {
    let keys = keys_file();
    let app = spawn_app_with(|config| {
        config.admission_token_keys_file = Some(keys.clone());
        configure(config);
    })
    .await;
    let (second, stop, _server) = start(app.config.clone()).await;
    let clients = [admission(app.addr).await, admission(second).await];
    struct Stop(Option<tokio::sync::oneshot::Sender<()>>, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(stop) = self.0.take() {
                let _ = stop.send(());
            }
            let _ = std::fs::remove_file(&self.1);
        }
    }
    (app, clients, Stop(Some(stop), keys))
}

/// Users `users` enter through both replicas in turn, `parallel` at a time; their numbers by
/// user.
async fn enter_all(
    clients: &[Admission; 2],
    schedule: i64,
    users: std::ops::RangeInclusive<i64>,
    parallel: usize,
) -> Vec<(i64, adm::Ticket)> {
    futures::stream::iter(users)
        .map(|user| {
            let mut client = clients[usize::try_from(user % 2).unwrap_or(0)].clone();
            async move { (user, enter(&mut client, user, schedule).await) }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// Opens the room now, keeping its other settings (a change without `opens_at` keeps the
/// room's opening).
async fn open_now(client: &mut Admission, mut settings: adm::ConfigureRoomRequest) {
    settings.opens_at = later(0);
    configure(client, settings).await;
}

/// The replicas read a room within a second of its change.
async fn replicas_read_the_room() {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
}

async fn status(client: &mut Admission, schedule_id: i64) -> adm::RoomStatus {
    client
        .get_room_status(adm::GetRoomStatusRequest { schedule_id })
        .await
        .expect("room status")
        .into_inner()
}

fn later(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + seconds,
        nanos: 0,
    })
}

#[tokio::test]
async fn a_hundred_thousand_users_are_numbered_exactly_one_to_a_hundred_thousand() {
    let (app, mut clients, _stop) = two_replicas(|_| {}).await;
    let schedule = app.schedule_with_seats(10).await;
    configure(&mut clients[0], room(schedule, 1.0, 1)).await;
    replicas_read_the_room().await;
    let tickets = enter_all(&clients, schedule, 1..=100_000, 256).await;
    let mut numbers: Vec<i64> = tickets.iter().map(|(_, ticket)| ticket.number).collect();
    numbers.sort_unstable();
    assert!(
        numbers.iter().copied().eq(1..=100_000),
        "numbers are not 1..=100,000"
    );
    let status = status(&mut clients[1], schedule).await;
    assert_eq!(status.issued, 100_000);
}

/// Spearman's rank correlation of two rankings of the same items.
fn rank_correlation(pairs: &[(i64, i64)]) -> f64 {
    let n = pairs.len() as f64;
    let squares: f64 = pairs
        .iter()
        .map(|&(a, b)| {
            let d = (a - b) as f64;
            d * d
        })
        .sum();
    1.0 - 6.0 * squares / (n * (n * n - 1.0))
}

#[tokio::test]
async fn entrants_before_the_opening_are_numbered_whatever_their_order_of_arrival() {
    let (app, mut clients, _stop) = two_replicas(|_| {}).await;
    let schedule = app.schedule_with_seats(10).await;
    let mut settings = room(schedule, 1.0, 1);
    settings.opens_at = later(3_600);
    configure(&mut clients[0], settings).await;
    replicas_read_the_room().await;
    // Ten at a time, so that users arrive nearly in the order of their ids.
    let tickets = enter_all(&clients, schedule, 1..=10_000, 10).await;
    assert!(
        tickets
            .iter()
            .all(|(_, ticket)| ticket.state() == adm::TicketState::BeforeOpening),
        "no number before the opening"
    );
    // Entering again before the opening changes nothing.
    enter(&mut clients[1], 7, schedule).await;
    open_now(&mut clients[0], settings).await;
    replicas_read_the_room().await;
    let numbered: Vec<(i64, i64)> = futures::stream::iter(1..=10_000_i64)
        .map(|user| {
            let mut client = clients[usize::try_from(user % 2).unwrap_or(0)].clone();
            async move {
                let ticket = position(&mut client, user, schedule)
                    .await
                    .expect("position");
                (user, ticket.number)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut numbers: Vec<i64> = numbered.iter().map(|&(_, number)| number).collect();
    numbers.sort_unstable();
    assert!(numbers.iter().copied().eq(1..=10_000), "numbers 1..=10,000");
    // Under independence the coefficient's spread is 1/sqrt(n - 1) = 0.01: five of them.
    let rho = rank_correlation(&numbered);
    assert!(
        rho.abs() < 0.05,
        "arrival order and number correlate: {rho}"
    );
    // Later arrivals queue behind them.
    assert_eq!(
        enter(&mut clients[1], 10_001, schedule).await.number,
        10_001
    );
}

#[tokio::test]
async fn a_position_stream_follows_the_queue_and_ends_with_the_turn() {
    // A stream outlives the deadline of a call.
    let (app, mut clients, _stop) =
        two_replicas(|config| config.server.rpc_timeout = Duration::from_secs(1)).await;
    let schedule = app.schedule_with_seats(10).await;
    configure(&mut clients[0], room(schedule, 4.0, 100)).await;
    replicas_read_the_room().await;
    enter_all(&clients, schedule, 1..=8, 1).await;
    let ticket = enter(&mut clients[1], 9, schedule).await;
    assert_eq!(ticket.number, 9);
    let mut stream = clients[1]
        .watch_position(adm::WatchPositionRequest {
            schedule_id: schedule,
            user_id: 9,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    let deadline = Duration::from_secs(15);
    while let Some(ticket) = tokio::time::timeout(deadline, stream.message())
        .await
        .expect("a message within the deadline")
        .expect("no error")
    {
        seen.push(ticket);
    }
    let last = seen.last().expect("messages");
    assert_eq!(last.state(), adm::TicketState::Admitted, "{seen:?}");
    assert!(!last.admission_token.is_empty());
    assert!(seen.len() >= 3, "the changes on the way: {seen:?}");
    for pair in seen.windows(2) {
        assert!(pair[1].ahead <= pair[0].ahead, "{seen:?}");
        assert!(
            pair[1].eta_max_seconds <= pair[0].eta_max_seconds,
            "{seen:?}"
        );
    }
    // The token holds through the other replica.
    hold_with(&app, Some(&last.admission_token), 9, schedule, 1)
        .await
        .expect("hold with the streamed token");
    // No ticket: NOT_FOUND.
    let mut none = clients[0]
        .watch_position(adm::WatchPositionRequest {
            schedule_id: schedule,
            user_id: 99,
        })
        .await
        .expect("watch")
        .into_inner();
    let missing = none.message().await.expect_err("no ticket");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_queue_survives_its_redis_killed_and_started_again_under_running_replicas() {
    let mut redis = RedisServer::start_persistent();
    let url = redis.url();
    let app = spawn_app_with(|config| {
        config.redis_url = url.clone().into();
        // Holds take their seat locks in Postgres while Redis is away: what is left to show
        // is the admission token, checked without Redis.
        config.seat_lock_fallback = LockFallback::Postgres;
    })
    .await;
    let mut rooms = admission(app.addr).await;
    let schedule = app.schedule_with_seats(10).await;
    configure(&mut rooms, room(schedule, 100.0, 1)).await;
    for user in 1..=3 {
        assert_eq!(enter(&mut rooms, user, schedule).await.number, user);
    }
    let token = admitted(&mut rooms, 1, schedule).await.admission_token;

    redis.stop();
    let asked = Instant::now();
    let down = rooms
        .enter(adm::EnterRequest {
            schedule_id: schedule,
            user_id: 4,
        })
        .await
        .expect_err("no queue without Redis");
    assert_eq!(down.code(), Code::Unavailable);
    assert!(
        asked.elapsed() <= app.config.redis_command_timeout + Duration::from_millis(500),
        "answered within the command timeout: {:?}",
        asked.elapsed()
    );
    let down = position(&mut rooms, 2, schedule)
        .await
        .expect_err("no position without Redis");
    assert_eq!(down.code(), Code::Unavailable);
    hold_with(&app, Some(&token), 1, schedule, 1)
        .await
        .expect("an issued token holds without Redis");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let fourth = loop {
        match rooms
            .enter(adm::EnterRequest {
                schedule_id: schedule,
                user_id: 4,
            })
            .await
        {
            Ok(ticket) => break ticket.into_inner(),
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("the queue never came back: {status:?}"),
        }
    };
    assert_eq!(fourth.number, 4, "numbers go on where they were");
    let second = position(&mut rooms, 2, schedule).await.expect("position");
    assert_eq!(second.number, 2);
}

#[tokio::test]
async fn three_minutes_at_six_hundred_a_minute_admit_a_hundred_every_ten_seconds_under_the_cap() {
    const MAX_ACTIVE: i64 = 400;
    let (app, mut clients, _stop) = two_replicas(|_| {}).await;
    let schedule = app.schedule_with_seats(10).await;
    let mut settings = room(schedule, 10.0, i32::try_from(MAX_ACTIVE).unwrap_or(1));
    settings.opens_at = later(3_600);
    configure(&mut clients[0], settings).await;
    replicas_read_the_room().await;
    enter_all(&clients, schedule, 1..=50_000, 256).await;
    assert_eq!(status(&mut clients[0], schedule).await.waiting, 50_000);
    open_now(&mut clients[0], settings).await;
    replicas_read_the_room().await;

    // The counters every second; every tenth reading closes a window.
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut windows = Vec::new();
    let mut window_start = None;
    for second in 0..=180 {
        every_second.tick().await;
        let now = status(&mut clients[second % 2], schedule).await;
        assert!(now.active <= MAX_ACTIVE, "active above the cap: {now:?}");
        if second % 10 == 0 {
            if let Some(start) = window_start {
                windows.push(now.served - start);
            }
            window_start = Some(now.served);
        }
    }
    assert_eq!(windows.len(), 18);
    for (i, admitted) in windows.iter().enumerate() {
        assert!(
            (98..=102).contains(admitted),
            "window {i}: {admitted} admitted ({windows:?})"
        );
    }
}
