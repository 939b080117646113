//! Concerts, schedules and seats.

use shared::proto::reservation::v1 as pb;
use tonic::Code;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_schedule_comes_with_all_its_seats_available() {
    let app = spawn_app().await;
    let concert = app
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Spring tour".to_owned(),
        })
        .await
        .expect("concert")
        .into_inner();
    let starts_at = prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 0,
    };
    let schedule = app
        .client()
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(starts_at),
            seat_count: 50,
            seat_price: 1_500,
        })
        .await
        .expect("schedule")
        .into_inner();

    assert_eq!(
        (
            schedule.concert_id,
            schedule.seat_count,
            schedule.seat_price,
            schedule.available_seats
        ),
        (concert.id, 50, 1_500, 50)
    );
    assert_eq!(schedule.starts_at, Some(starts_at));
    let seats = app.seats(schedule.id).await;
    assert_eq!(seats.len(), 50);
    assert!(seats.iter().enumerate().all(|(i, seat)| {
        seat.seat_no == i32::try_from(i).expect("small") + 1
            && seat.price == 1_500
            && seat.status() == pb::SeatStatus::Available
    }));

    let concerts = app
        .client()
        .list_concerts(pb::ListConcertsRequest {})
        .await
        .expect("concerts")
        .into_inner()
        .concerts;
    assert_eq!(concerts, std::slice::from_ref(&concert));
    let schedules = app
        .client()
        .list_schedules(pb::ListSchedulesRequest {
            concert_id: concert.id,
        })
        .await
        .expect("schedules")
        .into_inner()
        .schedules;
    assert_eq!(schedules, [schedule]);
}

#[tokio::test]
async fn a_schedule_of_100000_seats_is_created_in_one_call() {
    let app = spawn_app().await;

    let schedule_id = app.schedule_with_seats(100_000).await;

    let seats = app.seats(schedule_id).await;
    assert_eq!(seats.len(), 100_000);
    assert_eq!(seats.last().map(|seat| seat.seat_no), Some(100_000));
}

#[tokio::test]
async fn available_seats_count_down_with_holds() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    app.hold(1, schedule_id, 3).await.expect("hold");
    app.hold(2, schedule_id, 4).await.expect("hold");

    let concert_id = app
        .client()
        .list_concerts(pb::ListConcertsRequest {})
        .await
        .expect("concerts")
        .into_inner()
        .concerts[0]
        .id;
    let schedules = app
        .client()
        .list_schedules(pb::ListSchedulesRequest { concert_id })
        .await
        .expect("schedules")
        .into_inner()
        .schedules;
    assert_eq!(schedules[0].available_seats, 8);
    let held: Vec<i32> = app
        .seats(schedule_id)
        .await
        .into_iter()
        .filter(|seat| seat.status() == pb::SeatStatus::Held)
        .map(|seat| seat.seat_no)
        .collect();
    assert_eq!(held, [3, 4]);
}

#[tokio::test]
async fn unknown_concerts_schedules_and_reservations_are_not_found() {
    let app = spawn_app().await;
    let mut client = app.client();

    let schedule = client
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: 404,
            starts_at: Some(prost_types::Timestamp::default()),
            seat_count: 10,
            seat_price: 0,
        })
        .await
        .expect_err("no such concert");
    let schedules = client
        .list_schedules(pb::ListSchedulesRequest { concert_id: 404 })
        .await
        .expect_err("no such concert");
    let seats = client
        .list_seats(pb::ListSeatsRequest { schedule_id: 404 })
        .await
        .expect_err("no such schedule");
    let reservation = client
        .get_reservation(pb::GetReservationRequest {
            reservation_id: 404,
        })
        .await
        .expect_err("no such reservation");
    let hold = app.hold(1, 404, 1).await.expect_err("no such schedule");

    for status in [schedule, schedules, seats, reservation, hold] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(app.rows_written().await, 0);
}

#[tokio::test]
async fn reservations_list_newest_first_in_pages() {
    // Five holds of one user on one schedule: one more than the default hold limit lets in.
    let app = crate::helpers::spawn_app_with(|config| {
        config.max_active_holds_per_user = std::num::NonZeroU32::new(5).expect("positive");
    })
    .await;
    let schedule_id = app.schedule_with_seats(10).await;
    let mut held = Vec::new();
    for seat_no in 1..=5 {
        held.push(app.hold(7, schedule_id, seat_no).await.expect("hold").id);
    }
    app.hold(8, schedule_id, 6)
        .await
        .expect("another user's hold");

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .client()
            .list_reservations(pb::ListReservationsRequest {
                user_id: 7,
                page_size: 2,
                page_token,
            })
            .await
            .expect("page")
            .into_inner();
        listed.extend(page.reservations.iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    held.reverse();
    assert_eq!(listed, held);
}
