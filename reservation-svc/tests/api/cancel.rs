//! Cancelling a hold: owner only, seat free at once, repeatable.

use shared::proto::reservation::v1 as pb;
use tonic::Code;

use crate::helpers::{reason, spawn_app};

fn cancel(reservation_id: i64, user_id: i64) -> pb::CancelReservationRequest {
    pb::CancelReservationRequest {
        reservation_id,
        user_id,
    }
}

#[tokio::test]
async fn the_owner_cancels_a_hold_and_the_seat_is_free_at_once() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(5).await;
    let held = app.hold(1, schedule_id, 2).await.expect("hold");

    let stranger = app
        .client()
        .cancel_reservation(cancel(held.id, 2))
        .await
        .expect_err("not theirs");
    // Someone else's reservation does not exist for them.
    assert_eq!(stranger.code(), Code::NotFound);

    let cancelled = app
        .client()
        .cancel_reservation(cancel(held.id, 1))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.status(), pb::ReservationStatus::Cancelled);
    assert_eq!(
        app.seats(schedule_id).await[1].status(),
        pb::SeatStatus::Available
    );
    let again = app
        .client()
        .cancel_reservation(cancel(held.id, 1))
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(again, cancelled);
    app.hold(3, schedule_id, 2)
        .await
        .expect("someone else takes the seat");
}

#[tokio::test]
async fn an_unknown_or_lapsed_reservation_cannot_be_cancelled() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.seat_hold_ttl = std::time::Duration::from_millis(200);
    })
    .await;
    let schedule_id = app.schedule_with_seats(5).await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");

    let unknown = app
        .client()
        .cancel_reservation(cancel(held.id + 1, 1))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lapsed = app
        .client()
        .cancel_reservation(cancel(held.id, 1))
        .await
        .expect_err("lapsed");
    assert_eq!(lapsed.code(), Code::FailedPrecondition);
    assert_eq!(reason(&lapsed), "HOLD_EXPIRED");
}
