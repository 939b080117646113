//! Seat holds under contention: exactly one winner, whatever the concurrency.

use std::collections::HashSet;

use futures::future::join_all;
use secrecy::ExposeSecret as _;
use shared::proto::reservation::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, TestApp, channel, hold_via, reason, spawn_app, start};

#[tokio::test]
async fn a_hold_keeps_the_seat_for_its_ttl() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;

    let held = app.hold(1, schedule_id, 5).await.expect("hold");

    assert_eq!(held.status(), pb::ReservationStatus::Held);
    assert_eq!(
        (held.user_id, held.schedule_id, held.seat_no, held.price),
        (1, schedule_id, 5, 100)
    );
    let created = held.created_at.expect("created_at").seconds;
    let expires = held.expires_at.expect("expires_at").seconds;
    assert_eq!(expires - created, 300, "the default hold lasts 5 minutes");
    assert_eq!(app.reservation(held.id).await, held);

    let again = app.hold(2, schedule_id, 5).await.expect_err("taken");
    assert_eq!(again.code(), Code::AlreadyExists);
    assert_eq!(reason(&again), "SEAT_TAKEN");
}

/// Counts the answers of a stampede: (held, seat locked, seat taken); anything else fails.
pub fn tally(answers: &[Result<pb::Reservation, tonic::Status>]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for answer in answers {
        match answer {
            Ok(_) => counts.0 += 1,
            Err(status) if status.code() == Code::Aborted && reason(status) == "SEAT_LOCKED" => {
                counts.1 += 1;
            }
            Err(status)
                if status.code() == Code::AlreadyExists && reason(status) == "SEAT_TAKEN" =>
            {
                counts.2 += 1;
            }
            Err(status) => panic!("unexpected answer: {status:?}"),
        }
    }
    counts
}

pub async fn stampede(
    clients: &[Client],
    schedule_id: i64,
    seat_no: i32,
    requests: i64,
) -> Vec<Result<pb::Reservation, tonic::Status>> {
    let holds = (0..requests).map(|user_id| {
        let client = clients[usize::try_from(user_id).expect("small") % clients.len()].clone();
        hold_via(client, user_id + 1, schedule_id, seat_no)
    });
    join_all(holds).await
}

async fn assert_one_active_reservation(app: &TestApp, schedule_id: i64, seat_no: i32) {
    assert_eq!(app.reservations_in(schedule_id, seat_no, "HELD").await, 1);
    let seat = &app.seats(schedule_id).await[usize::try_from(seat_no - 1).expect("seat")];
    assert_eq!(seat.status(), pb::SeatStatus::Held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_holds_of_one_seat_make_exactly_one_reservation() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;

    let answers = stampede(&[app.client()], schedule_id, 7, 1000).await;

    let (held, locked, taken) = tally(&answers);
    assert_eq!(held, 1);
    assert_eq!(locked + taken, 999);
    assert_one_active_reservation(&app, schedule_id, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_sharing_redis_and_postgres_let_exactly_one_hold_through() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    let (second_addr, _stop_second, _second) = start(app.config.clone()).await;
    let clients = [app.client(), Client::new(channel(second_addr).await)];

    let answers = stampede(&clients, schedule_id, 3, 1000).await;

    let (held, locked, taken) = tally(&answers);
    assert_eq!((held, locked + taken), (1, 999));
    assert_one_active_reservation(&app, schedule_id, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_users_racing_over_twenty_seats_hold_each_seat_once() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(20).await;

    let holds = (0..300).map(|user| {
        let app = &app;
        let seat_no = i32::try_from(user % 20).expect("small") + 1;
        async move { (seat_no, app.hold(user + 1, schedule_id, seat_no).await) }
    });
    let answers = join_all(holds).await;

    let mut winners = HashSet::new();
    for (seat_no, answer) in &answers {
        if let Ok(reservation) = answer {
            assert_eq!(reservation.seat_no, *seat_no);
            assert!(winners.insert(*seat_no), "seat {seat_no} held twice");
        }
    }
    assert_eq!(winners.len(), 20, "every seat found a winner");
    for seat in app.seats(schedule_id).await {
        let active = app.reservations_in(schedule_id, seat.seat_no, "HELD").await;
        assert_eq!(active, 1, "seat {}", seat.seat_no);
        assert_eq!(seat.status(), pb::SeatStatus::Held, "ListSeats agrees");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_lock_that_expires_at_once_postgres_still_allows_one_hold() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.seat_lock_ttl = std::time::Duration::from_millis(1);
    })
    .await;
    let schedule_id = app.schedule_with_seats(10).await;

    let answers = stampede(&[app.client()], schedule_id, 9, 300).await;

    let (held, locked, taken) = tally(&answers);
    assert_eq!((held, locked + taken), (1, 299));
    assert!(
        taken > 0,
        "with the lock gone at once, losers reach Postgres"
    );
    assert_one_active_reservation(&app, schedule_id, 9).await;
}

/// Waits until the lock key exists: a hold has taken the lock and is in its transaction.
async fn wait_for_key(redis: &fred::clients::Client, key: &str) {
    use fred::interfaces::KeysInterface;
    for _ in 0..1000 {
        if redis.exists::<i64, _>(key).await.expect("exists") == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("no hold took the lock {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_lost_while_a_hold_is_in_its_transaction_still_gives_one_reservation() {
    use diesel_async::SimpleAsyncConnection;
    use fred::interfaces::KeysInterface;

    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    let redis = crate::helpers::redis(app.config.redis_url.expose_secret()).await;
    let key = app.seat_key(schedule_id, 4);

    // Hold the seat's row so the first hold waits inside its transaction, lock in hand.
    let mut blocker = app.connect_db().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 4 FOR UPDATE"
        ))
        .await
        .expect("lock the seat row");
    let first = tokio::spawn({
        let mut client = app.client();
        async move {
            client
                .hold_seat(pb::HoldSeatRequest {
                    user_id: 1,
                    schedule_id,
                    seat_no: 4,
                })
                .await
        }
    });
    wait_for_key(&redis, &key).await;
    // The lock is lost (failover, eviction, FLUSHALL): a second hold passes Redis too.
    redis.del::<i64, _>(&key).await.expect("delete the lock");
    let second = tokio::spawn({
        let mut client = app.client();
        async move {
            client
                .hold_seat(pb::HoldSeatRequest {
                    user_id: 2,
                    schedule_id,
                    seat_no: 4,
                })
                .await
        }
    });
    wait_for_key(&redis, &key).await;
    blocker
        .batch_execute("COMMIT")
        .await
        .expect("release the row");

    let answers = [first.await.expect("task"), second.await.expect("task")];
    let held: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert_eq!(held.len(), 1, "{answers:?}");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].code(), Code::AlreadyExists);
    assert_eq!(reason(refused[0]), "SEAT_TAKEN");
    assert_one_active_reservation(&app, schedule_id, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_hold_every_loser_is_answered_without_postgres() {
    use diesel_async::SimpleAsyncConnection;
    use fred::interfaces::KeysInterface;

    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    let (second_addr, _stop_second, _second) = start(app.config.clone()).await;
    let clients = [app.client(), Client::new(channel(second_addr).await)];
    let held = app.hold(1, schedule_id, 4).await.expect("hold");
    let redis = crate::helpers::redis(app.config.redis_url.expose_secret()).await;
    let mark: Option<String> = redis.get(app.seat_key(schedule_id, 4)).await.expect("get");
    assert_eq!(mark, Some(format!("taken:{}", held.id)));

    // The seat's row stays locked by another transaction: a loser that reached Postgres
    // would wait for it until its timeout and answer UNAVAILABLE.
    let mut blocker = app.connect_db().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 4 FOR UPDATE"
        ))
        .await
        .expect("lock the seat's row");
    let answers = stampede(&clients, schedule_id, 4, 1000).await;
    blocker.batch_execute("ROLLBACK").await.expect("unlock");

    // The replica that made the hold and the one that only shares Redis answer alike.
    assert_eq!(tally(&answers), (0, 0, 1000));
    assert_one_active_reservation(&app, schedule_id, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_hold_leaves_no_taken_mark_behind() {
    use fred::interfaces::KeysInterface;

    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    // A replica that never remembers a mark: it asks Redis every time.
    let mut forgetful = app.config.clone();
    forgetful.seat_taken_memory = std::time::Duration::ZERO;
    let (second_addr, _stop_second, _second) = start(forgetful).await;
    let second = Client::new(channel(second_addr).await);
    let hold_on_second = |user_id: i64| hold_via(second.clone(), user_id, schedule_id, 6);

    let first = app.hold(1, schedule_id, 6).await.expect("hold");
    let refused = hold_on_second(2).await.expect_err("taken");
    assert_eq!(reason(&refused), "SEAT_TAKEN");
    // On the replica that cancels, the seat is free at once, memory and mark alike.
    app.cancel(first.id, 1).await.expect("cancel");
    let second_hold = app.hold(3, schedule_id, 6).await.expect("free again");
    app.cancel(second_hold.id, 3).await.expect("cancel");
    let redis = crate::helpers::redis(app.config.redis_url.expose_secret()).await;
    let key = app.seat_key(schedule_id, 6);
    assert_eq!(redis.exists::<i64, _>(&key).await.expect("exists"), 0);
    // And through Redis on every other replica.
    let third = hold_on_second(4).await.expect("free on the other replica");
    assert_eq!(third.user_id, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_mark_lapses_no_later_than_its_hold() {
    use fred::interfaces::KeysInterface;

    let app = crate::helpers::spawn_app_with(|config| {
        config.seat_hold_ttl = std::time::Duration::from_millis(1500);
    })
    .await;
    let schedule_id = app.schedule_with_seats(3).await;
    let held = app.hold(1, schedule_id, 2).await.expect("hold");
    let redis = crate::helpers::redis(app.config.redis_url.expose_secret()).await;
    let mark_expires_ms: i64 = redis
        .pexpire_time(app.seat_key(schedule_id, 2))
        .await
        .expect("pexpiretime");
    // At the hold's own expiry, as Postgres has it, however late Redis ran the command.
    let expires_at = held.expires_at.expect("an expiry");
    let hold_expires_ms = expires_at.seconds * 1000 + i64::from(expires_at.nanos) / 1_000_000;
    assert_eq!(
        mark_expires_ms, hold_expires_ms,
        "the mark lapses with its hold"
    );

    // Once the hold has lapsed, the seat can be held again: the mark went with it.
    let mut again = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        match app.hold(2, schedule_id, 2).await {
            Ok(reservation) => {
                again = Some(reservation);
                break;
            }
            Err(status) => assert_eq!(reason(&status), "SEAT_TAKEN", "{status:?}"),
        }
    }
    let again = again.expect("held again once the first hold lapsed");
    assert_ne!(again.id, held.id);
}

/// A user's reservations of a schedule that count against the hold limit, read from the table.
async fn active_holds_of(app: &TestApp, user_id: i64, schedule_id: i64) -> i64 {
    use diesel::QueryableByName;
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT COUNT(*) AS n FROM reservations WHERE user_id = $1 AND schedule_id = $2 \
         AND (status = 'PAYING' OR (status = 'HELD' AND expires_at > now()))",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<BigInt, _>(schedule_id)
    .get_result::<Count>(&mut app.connect_db().await)
    .await
    .expect("count the user's holds")
    .n
}

/// Counts the answers of holds by one user: (held, refused at the hold limit); anything else
/// fails.
fn tally_limit(answers: &[Result<pb::Reservation, tonic::Status>]) -> (usize, usize) {
    let mut counts = (0, 0);
    for answer in answers {
        match answer {
            Ok(_) => counts.0 += 1,
            Err(status)
                if status.code() == Code::FailedPrecondition && reason(status) == "HOLD_LIMIT" =>
            {
                counts.1 += 1;
            }
            Err(status) => panic!("unexpected answer: {status:?}"),
        }
    }
    counts
}

/// `requests` concurrent holds by `user_id` of seats `1..=requests`, spread over `clients`.
async fn holds_of_distinct_seats(
    clients: &[Client],
    user_id: i64,
    schedule_id: i64,
    requests: i32,
) -> Vec<Result<pb::Reservation, tonic::Status>> {
    let holds = (1..=requests).map(|seat_no| {
        let client = clients[usize::try_from(seat_no).expect("small") % clients.len()].clone();
        hold_via(client, user_id, schedule_id, seat_no)
    });
    join_all(holds).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_holds_of_one_user_take_exactly_the_limit_of_four() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(110).await;
    let other_schedule = app.schedule_with_seats(10).await;

    let answers = holds_of_distinct_seats(&[app.client()], 1, schedule_id, 100).await;

    assert_eq!(tally_limit(&answers), (4, 96));
    assert_eq!(active_holds_of(&app, 1, schedule_id).await, 4);
    assert_eq!(app.schedule_reservations_in(schedule_id, "HELD").await, 4);
    let refused = answers
        .iter()
        .find_map(|answer| answer.as_ref().err())
        .expect("a refusal");
    assert!(refused.message().contains('4'), "{refused:?}");
    // Neither another user nor another schedule is limited by it.
    app.hold(2, schedule_id, 101)
        .await
        .expect("another user's hold");
    app.hold(1, other_schedule, 1)
        .await
        .expect("a hold of another schedule");

    // A cancelled hold frees its place: one more, and no more.
    let held: Vec<&pb::Reservation> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    app.cancel(held[0].id, 1).await.expect("cancel");
    app.hold(1, schedule_id, 102).await.expect("one more");
    let refused = app
        .hold(1, schedule_id, 103)
        .await
        .expect_err("at the limit");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "HOLD_LIMIT")
    );

    // So does a lapsed hold, swept or not.
    app.execute(&format!(
        "UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = {}",
        held[1].id
    ))
    .await;
    app.hold(1, schedule_id, 103).await.expect("one more again");
    assert_eq!(active_holds_of(&app, 1, schedule_id).await, 4);
    app.hold(1, schedule_id, 104)
        .await
        .expect_err("at the limit again");
    assert_eq!(active_holds_of(&app, 1, schedule_id).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_sharing_the_database_let_one_user_hold_exactly_four_seats() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(100).await;
    let (second_addr, _stop_second, _second) = start(app.config.clone()).await;
    let clients = [app.client(), Client::new(channel(second_addr).await)];

    let answers = holds_of_distinct_seats(&clients, 7, schedule_id, 100).await;

    assert_eq!(tally_limit(&answers), (4, 96));
    assert_eq!(active_holds_of(&app, 7, schedule_id).await, 4);
    assert_eq!(app.schedule_reservations_in(schedule_id, "HELD").await, 4);
}

#[tokio::test]
async fn payments_under_way_count_toward_the_limit_and_sales_do_not() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.max_active_holds_per_user = std::num::NonZeroU32::new(2).expect("positive");
    })
    .await;
    let schedule_id = app.schedule_with_seats(10).await;
    let first = app.hold(1, schedule_id, 1).await.expect("hold");
    app.hold(1, schedule_id, 2).await.expect("hold");
    // The first one's payment is under way: it still counts.
    app.execute(&format!(
        "UPDATE reservations SET status = 'PAYING', pay_attempt = 1 WHERE id = {}",
        first.id
    ))
    .await;
    let refused = app.hold(1, schedule_id, 3).await.expect_err("at the limit");
    assert_eq!(reason(&refused), "HOLD_LIMIT");
    // Sold, it no longer does.
    app.execute(&format!(
        "UPDATE reservations SET status = 'CONFIRMED', payment_transaction_id = 1 WHERE id = {}; \
         UPDATE seats SET status = 'SOLD' WHERE schedule_id = {schedule_id} AND seat_no = 1",
        first.id
    ))
    .await;
    app.hold(1, schedule_id, 3)
        .await
        .expect("below the limit again");
}

#[tokio::test]
async fn a_performance_that_has_begun_takes_no_hold_and_nothing_is_written() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    // A hold of seat 3 that has lapsed, left unswept: its seat's row still reads HELD, so a
    // hold of it goes through the full transaction.
    app.execute(&format!(
        "UPDATE schedules SET starts_at = now() - interval '1 minute' WHERE id = {schedule_id}; \
         UPDATE seats SET status = 'HELD' WHERE schedule_id = {schedule_id} AND seat_no = 3; \
         INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at) \
         VALUES (9, {schedule_id}, 3, 100, 'HELD', now() - interval '1 minute')"
    ))
    .await;
    let written = app.rows_written().await;

    for seat_no in [1, 3] {
        let refused = app.hold(1, schedule_id, seat_no).await.expect_err("begun");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(reason(&refused), "PERFORMANCE_STARTED", "seat {seat_no}");
    }

    assert_eq!(app.rows_written().await, written, "nothing written");
    assert_eq!(app.reservations_in(schedule_id, 1, "HELD").await, 0);
    // The lapsed hold was not even expired.
    assert_eq!(app.reservations_in(schedule_id, 3, "HELD").await, 1);
    assert_eq!(app.reservations_in(schedule_id, 3, "EXPIRED").await, 0);
}
