//! Concerts, schedules and seats.

use shared::error::violated_fields;
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
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("concerts")
        .into_inner()
        .concerts;
    assert_eq!(concerts, std::slice::from_ref(&concert));
    let schedules = app
        .client()
        .list_schedules(pb::ListSchedulesRequest {
            concert_id: concert.id,
            ..Default::default()
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
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("concerts")
        .into_inner()
        .concerts[0]
        .id;
    let schedules = app
        .client()
        .list_schedules(pb::ListSchedulesRequest {
            concert_id,
            ..Default::default()
        })
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
        .list_schedules(pb::ListSchedulesRequest {
            concert_id: 404,
            ..Default::default()
        })
        .await
        .expect_err("no such concert");
    let seats = client
        .list_seats(pb::ListSeatsRequest {
            schedule_id: 404,
            ..Default::default()
        })
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

#[tokio::test]
async fn all_100000_seats_come_once_across_pages_while_holds_change_them() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(100_000).await;

    // Between pages, a hold takes the first seat of the next page and another a seat already
    // listed: each page shows the seats as they are when it is read.
    let pages = app
        .seat_pages(schedule_id, 5_000, async |read| {
            let read = i32::try_from(read).expect("few pages");
            let user = i64::from(read);
            app.hold(user, schedule_id, read * 5_000 + 1)
                .await
                .expect("hold ahead");
            app.hold(user, schedule_id, read * 5_000 - 1)
                .await
                .expect("hold behind");
        })
        .await;

    assert_eq!(pages.len(), 20);
    let numbers: Vec<i32> = pages.iter().flatten().map(|seat| seat.seat_no).collect();
    assert_eq!(numbers, (1..=100_000).collect::<Vec<_>>());
    for page in &pages[1..] {
        assert_eq!(page[0].status(), pb::SeatStatus::Held, "taken before read");
        assert_eq!(page[4_998].status(), pb::SeatStatus::Available);
    }
    assert_eq!(app.schedule_reservations_in(schedule_id, "HELD").await, 38);

    // Without a size, 500 a page.
    let default_pages = app.seat_pages(schedule_id, 0, async |_| {}).await;
    assert_eq!(default_pages.len(), 200);
    assert!(default_pages.iter().all(|page| page.len() == 500));
}

#[tokio::test]
async fn concerts_by_id_and_schedules_by_start_come_in_pages() {
    let app = spawn_app().await;
    let mut concert_ids = Vec::new();
    for n in 0..5 {
        let concert = app
            .client()
            .create_concert(pb::CreateConcertRequest {
                title: format!("Concert {n}"),
            })
            .await
            .expect("concert")
            .into_inner();
        concert_ids.push(concert.id);
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .client()
            .list_concerts(pb::ListConcertsRequest {
                page_size: 2,
                page_token,
            })
            .await
            .expect("concerts")
            .into_inner();
        assert!(page.concerts.len() <= 2);
        listed.extend(page.concerts.iter().map(|concert| concert.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, concert_ids);

    // Starts out of creation order, three of them at the same time: by start, then id.
    let concert_id = concert_ids[0];
    let mut created = Vec::new();
    for seconds in [
        1_900_000_200,
        1_900_000_100,
        1_900_000_100,
        1_900_000_300,
        1_900_000_100,
    ] {
        let schedule = app
            .client()
            .create_schedule(pb::CreateScheduleRequest {
                concert_id,
                starts_at: Some(prost_types::Timestamp {
                    seconds,
                    nanos: 1_000,
                }),
                seat_count: 1,
                seat_price: 100,
            })
            .await
            .expect("schedule")
            .into_inner();
        created.push((seconds, schedule.id));
    }
    created.sort_unstable();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut first_token = None;
    loop {
        let page = app
            .client()
            .list_schedules(pb::ListSchedulesRequest {
                concert_id,
                page_size: 2,
                page_token,
            })
            .await
            .expect("schedules")
            .into_inner();
        listed.extend(page.schedules.iter().map(|schedule| {
            let starts_at = schedule.starts_at.unwrap_or_default();
            (starts_at.seconds, schedule.id)
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        first_token.get_or_insert(page.next_page_token.clone());
        page_token = page.next_page_token;
    }
    assert_eq!(listed, created);

    // A token belongs to the concert that made it.
    let status = app
        .client()
        .list_schedules(pb::ListSchedulesRequest {
            concert_id: concert_ids[1],
            page_size: 2,
            page_token: first_token.expect("more than one page"),
        })
        .await
        .expect_err("another concert's token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_token"]);
}
