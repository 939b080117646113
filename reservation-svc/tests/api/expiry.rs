//! Lapsed holds: available to others at once, marked EXPIRED by the sweeper, each once.

use std::time::Duration;

use futures::future::join_all;
use reservation_svc::store::Store;
use shared::proto::reservation::v1 as pb;

use crate::helpers::spawn_app_with;

const SHORT_HOLD: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lapsed_hold_frees_its_seat_before_any_sweep() {
    let app = spawn_app_with(|config| config.seat_hold_ttl = SHORT_HOLD).await;
    let schedule_id = app.schedule_with_seats(5).await;
    let first = app.hold(1, schedule_id, 2).await.expect("hold");

    tokio::time::sleep(SHORT_HOLD + Duration::from_millis(100)).await;

    assert_eq!(
        app.seats(schedule_id).await[1].status(),
        pb::SeatStatus::Available
    );
    assert_eq!(
        app.reservation(first.id).await.status(),
        pb::ReservationStatus::Expired
    );
    let second = app
        .hold(2, schedule_id, 2)
        .await
        .expect("the seat is free again");
    assert_eq!(second.status(), pb::ReservationStatus::Held);
    assert_eq!(
        app.reservations_in(schedule_id, 2, "EXPIRED").await,
        1,
        "the old hold expired"
    );
    assert_eq!(app.reservations_in(schedule_id, 2, "HELD").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_expires_lapsed_holds_and_frees_their_seats() {
    let app = spawn_app_with(|config| {
        config.seat_hold_ttl = SHORT_HOLD;
        config.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let schedule_id = app.schedule_with_seats(5).await;
    let held = app.hold(1, schedule_id, 3).await.expect("hold");

    let mut expired = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if app.reservations_in(schedule_id, 3, "EXPIRED").await == 1 {
            expired = true;
            break;
        }
    }
    assert!(expired, "the sweeper marked the hold EXPIRED");
    assert_eq!(
        app.reservation(held.id).await.status(),
        pb::ReservationStatus::Expired
    );
    assert_eq!(
        app.seats(schedule_id).await[2].status(),
        pb::SeatStatus::Available
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sweepers_racing_expire_each_hold_once_and_never_a_payment() {
    let app = spawn_app_with(|config| config.seat_hold_ttl = SHORT_HOLD).await;
    let schedule_id = app.schedule_with_seats(200).await;
    let holds = (1..=200).map(|seat_no| app.hold(i64::from(seat_no), schedule_id, seat_no));
    assert!(join_all(holds).await.iter().all(Result::is_ok));
    // Seats 1..=10 are being paid for: a sweeper must leave them alone however late it is.
    app.execute(&format!(
        "UPDATE reservations SET status = 'PAYING', pay_attempt = 1 \
         WHERE schedule_id = {schedule_id} AND seat_no <= 10"
    ))
    .await;
    tokio::time::sleep(SHORT_HOLD + Duration::from_millis(100)).await;

    let sweeper = || async {
        let store = Store::new(app.db.pool("sweeper-test"));
        let mut expired = 0;
        loop {
            let batch = store.expire_lapsed_holds(7).await.expect("sweep").len();
            if batch == 0 {
                return expired;
            }
            expired += batch;
        }
    };
    let (first, second) = tokio::join!(sweeper(), sweeper());

    assert_eq!(first + second, 190, "each lapsed hold expired exactly once");
    assert_eq!(
        app.schedule_reservations_in(schedule_id, "EXPIRED").await,
        190
    );
    assert_eq!(
        app.schedule_reservations_in(schedule_id, "PAYING").await,
        10
    );
    assert_eq!(app.schedule_reservations_in(schedule_id, "HELD").await, 0);
    let seats = app.seats(schedule_id).await;
    assert!(
        seats[..10]
            .iter()
            .all(|s| s.status() == pb::SeatStatus::Held)
    );
    assert!(
        seats[10..]
            .iter()
            .all(|s| s.status() == pb::SeatStatus::Available)
    );
}
