//! `SEAT_LOCK_FALLBACK=postgres`: while Redis does not answer, holds take the seat's lock in
//! Postgres and go on, exactly (one winner per seat, also across replicas in different modes);
//! once Redis answers again, they go back to it without a restart. Each test owns the Redis
//! it stops or freezes.

use std::time::Duration;

use fred::interfaces::KeysInterface;
use reservation_svc::lock::LockFallback;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Client, RedisServer, TestApp, channel, hold_via, reason, redis, spawn_app_with, start,
};
use crate::holds::{stampede, tally};
use crate::redis_down::health_of;
use crate::stalls::{commit, hold_open, waiting_for_a_lock};

const SERVICE: &str = "ticketing.reservation.v1.ReservationService";

/// The health entry that is SERVING while holds take their locks in Redis.
const SEAT_LOCKS_IN_REDIS: &str = reservation_svc::startup::SEAT_LOCKS_IN_REDIS;

/// Polls until `service`'s health is `status`; false if it is not within 20 s (a bound that
/// only turns a hang into a failure).
async fn health_becomes(app: &TestApp, service: &str, status: ServingStatus) -> bool {
    for _ in 0..200 {
        if health_of(app, service).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A reservation-svc on a Redis of the test's own, with the Postgres fallback.
async fn app_with_fallback(redis: &RedisServer) -> TestApp {
    spawn_app_with(|config| {
        config.redis_url = redis.url().into();
        config.seat_lock_fallback = LockFallback::Postgres;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_a_taken_seat_answers_seat_taken_to_every_hold_at_once() {
    let mut redis_server = RedisServer::start();
    let a = app_with_fallback(&redis_server).await;
    redis_server.stop();
    let (b_addr, _stop_b, _b) = start(a.config.clone()).await;
    let clients: Vec<Client> = vec![a.client(), Client::new(channel(b_addr).await)];
    let schedule_id = a.schedule_with_seats(2).await;
    let held = a
        .hold(1, schedule_id, 1)
        .await
        .expect("held through Postgres");
    let written = a.rows_written().await;

    // Through both replicas at once: no Redis mark, but the seat's reservation refuses them
    // all, without a lock of any kind (a lock would answer SEAT_LOCKED to some).
    let answers = stampede(&clients, schedule_id, 1, 300).await;
    let (won, locked, taken) = tally(&answers);
    assert_eq!((won, locked, taken), (0, 0, 300), "{answers:?}");
    assert_eq!(a.rows_written().await, written, "nothing written");
    assert_eq!(a.reservation(held.id).await.status, held.status);
}

/// The key of the seat's lock in Postgres, as `SeatLock` computes it for a schedule id below
/// 2^31 (which folds to itself).
fn postgres_seat_lock(schedule_id: i64, seat_no: i32) -> String {
    format!(
        "SELECT pg_advisory_xact_lock({})",
        (schedule_id << 32) | i64::from(seat_no)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_go_on_through_postgres_while_redis_is_down_and_back_to_redis_when_it_returns() {
    let mut redis_server = RedisServer::start();
    let app = app_with_fallback(&redis_server).await;
    let schedule_id = app.schedule_with_seats(10).await;
    app.hold(1, schedule_id, 1).await.expect("hold with Redis");
    assert!(health_becomes(&app, SEAT_LOCKS_IN_REDIS, ServingStatus::Serving).await);

    redis_server.stop();
    let held = tokio::time::timeout(Duration::from_secs(10), app.hold(2, schedule_id, 2))
        .await
        .expect("answered, not hung")
        .expect("held with the seat's lock in Postgres");
    assert_eq!(held.seat_no, 2);
    // A stampede on one seat with no Redis at all: Postgres lets exactly one through.
    let answers = stampede(&[app.client()], schedule_id, 3, 300).await;
    let (held, locked, taken) = tally(&answers);
    assert_eq!(held, 1, "one winner: {answers:?}");
    assert_eq!(
        locked + taken,
        299,
        "every other answer a refusal: {answers:?}"
    );
    assert_eq!(app.reservations_in(schedule_id, 3, "HELD").await, 1);
    assert!(
        health_becomes(&app, SEAT_LOCKS_IN_REDIS, ServingStatus::NotServing).await,
        "health tells that holds do without Redis"
    );
    assert_eq!(
        health_of(&app, SERVICE).await,
        ServingStatus::Serving,
        "holds work: the service serves"
    );

    redis_server.restart();
    assert!(
        health_becomes(&app, SEAT_LOCKS_IN_REDIS, ServingStatus::Serving).await,
        "back to Redis without a restart"
    );
    let back = app
        .hold(4, schedule_id, 4)
        .await
        .expect("hold with Redis back");
    let mark: Option<String> = redis(&redis_server.url())
        .await
        .get(app.seat_key(schedule_id, 4))
        .await
        .expect("read the seat's key");
    assert_eq!(
        mark,
        Some(format!("taken:{}", back.id)),
        "the hold went through Redis: it left its taken mark"
    );
    // A seat held through Postgres has no mark in Redis; Postgres still refuses it.
    let again = app.hold(5, schedule_id, 2).await.expect_err("taken");
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::AlreadyExists, "SEAT_TAKEN")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_and_without_redis_at_once_still_give_each_seat_to_one_hold() {
    let mut lost = RedisServer::start();
    // Replica A has lost its Redis and takes its seat locks in Postgres; replica B uses the
    // machine's Redis. Both share the database.
    let a = app_with_fallback(&lost).await;
    lost.stop();
    let mut config = a.config.clone();
    config.redis_url = crate::helpers::test_config(&a.db).redis_url;
    let (b_addr, _stop_b, _b) = start(config).await;
    let clients: Vec<Client> = vec![a.client(), Client::new(channel(b_addr).await)];
    let schedule_id = a.schedule_with_seats(40).await;

    let answers = stampede(&clients, schedule_id, 1, 400).await;
    let (held, locked, taken) = tally(&answers);
    assert_eq!(held, 1, "one winner across both modes: {answers:?}");
    assert_eq!(locked + taken, 399, "{answers:?}");

    // Every other seat, asked for by one user through each replica at the same moment.
    let pairs = (2..=40).flat_map(|seat_no| {
        let users = [i64::from(seat_no) * 2, i64::from(seat_no) * 2 + 1];
        clients
            .iter()
            .zip(users)
            .map(move |(client, user_id)| hold_via(client.clone(), user_id, schedule_id, seat_no))
    });
    let answers = futures::future::join_all(pairs).await;
    let (held, _, _) = tally(&answers);
    assert_eq!(held, 39, "one winner per seat: {answers:?}");
    for seat_no in 1..=40 {
        assert_eq!(
            a.reservations_in(schedule_id, seat_no, "HELD").await,
            1,
            "seat {seat_no}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_a_seat_locked_in_postgres_is_refused_and_a_stalled_row_answers_in_time() {
    let mut redis_server = RedisServer::start();
    // Row locks waited for far longer than the command timeout anywhere else: a hold that
    // answers at all within the test's bound was cut short by its own lock_timeout.
    let app = spawn_app_with(|config| {
        config.redis_url = redis_server.url().into();
        config.seat_lock_fallback = LockFallback::Postgres;
        config.db.db_lock_timeout = Duration::from_secs(120);
        config.db.db_statement_timeout = Duration::from_secs(120);
    })
    .await;
    let schedule_id = app.schedule_with_seats(10).await;
    redis_server.stop();
    let written = app.rows_written().await;

    // Another transaction has the seat's lock: refused at once, nothing written.
    let lock_holder = hold_open(app.db.url(), &postgres_seat_lock(schedule_id, 1)).await;
    let refused = app.hold(1, schedule_id, 1).await.expect_err("locked");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Aborted, "SEAT_LOCKED"),
        "{refused:?}"
    );
    assert_eq!(app.rows_written().await, written, "nothing written");
    commit(lock_holder).await;

    // The seat's row locked by a stalled transaction: the hold waits at most the command
    // timeout (its lock_timeout, not DB_LOCK_TIMEOUT), answers UNAVAILABLE and writes nothing.
    let row_holder = hold_open(
        app.db.url(),
        &format!(
            "SELECT 1 FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 FOR UPDATE"
        ),
    )
    .await;
    let stalled = tokio::time::timeout(Duration::from_secs(30), app.hold(1, schedule_id, 1))
        .await
        .expect("answered, not hung")
        .expect_err("the row stays locked");
    assert_eq!(stalled.code(), Code::Unavailable, "{stalled:?}");
    assert_eq!(
        waiting_for_a_lock(app.db.url()).await,
        0,
        "no hold still waits"
    );
    assert_eq!(app.rows_written().await, written, "nothing written");
    commit(row_holder).await;

    app.hold(1, schedule_id, 1)
        .await
        .expect("the seat is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_redis_opens_the_breaker_and_its_late_commands_leave_nothing_behind() {
    let redis_server = RedisServer::start();
    let app = app_with_fallback(&redis_server).await;
    let schedule_id = app.schedule_with_seats(10).await;
    app.hold(1, schedule_id, 1).await.expect("hold with Redis");

    // Frozen, not gone: the connection stays open and lock commands wait past their timeout.
    redis_server.pause();
    let holds = (2..=6).map(|seat_no| app.hold(i64::from(seat_no), schedule_id, seat_no));
    for (seat_no, held) in (2..=6).zip(futures::future::join_all(holds).await) {
        let held = held.expect("held through Postgres after the lock's timeout");
        assert_eq!(held.seat_no, seat_no);
    }
    assert!(
        health_becomes(&app, SEAT_LOCKS_IN_REDIS, ServingStatus::NotServing).await,
        "the breaker opened"
    );
    app.hold(7, schedule_id, 7)
        .await
        .expect("held through Postgres without asking Redis");

    redis_server.resume();
    assert!(
        health_becomes(&app, SEAT_LOCKS_IN_REDIS, ServingStatus::Serving).await,
        "the canary closed the breaker"
    );
    // The lock commands Redis ran late did nothing, and the holds through Postgres left no
    // marks: the keys of those seats are empty.
    let client = redis(&redis_server.url()).await;
    for seat_no in 2..=7 {
        let value: Option<String> = client
            .get(app.seat_key(schedule_id, seat_no))
            .await
            .expect("read the seat's key");
        assert_eq!(value, None, "seat {seat_no}");
    }
    app.hold(8, schedule_id, 8).await.expect("hold with Redis");
}
