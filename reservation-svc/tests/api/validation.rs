//! Every bad input of the contract's limits table, for every reservation RPC: INVALID_ARGUMENT
//! naming the fields, and nothing written.

use shared::error::violated_fields;
use shared::proto::reservation::v1 as pb;
use tonic::Code;

use crate::helpers::{Client, spawn_app};

enum Call {
    Concert(pb::CreateConcertRequest),
    Schedule(pb::CreateScheduleRequest),
    Concerts(pb::ListConcertsRequest),
    Schedules(pb::ListSchedulesRequest),
    Seats(pb::ListSeatsRequest),
    Hold(pb::HoldSeatRequest),
    Pay(pb::PayReservationRequest),
    Cancel(pb::CancelReservationRequest),
    Get(pb::GetReservationRequest),
    List(pb::ListReservationsRequest),
}

async fn send(mut client: Client, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::Concert(request) => client.create_concert(request).await.map(|_| ()),
        Call::Schedule(request) => client.create_schedule(request).await.map(|_| ()),
        Call::Concerts(request) => client.list_concerts(request).await.map(|_| ()),
        Call::Schedules(request) => client.list_schedules(request).await.map(|_| ()),
        Call::Seats(request) => client.list_seats(request).await.map(|_| ()),
        Call::Hold(request) => client.hold_seat(request).await.map(|_| ()),
        Call::Pay(request) => client.pay_reservation(request).await.map(|_| ()),
        Call::Cancel(request) => client.cancel_reservation(request).await.map(|_| ()),
        Call::Get(request) => client.get_reservation(request).await.map(|_| ()),
        Call::List(request) => client.list_reservations(request).await.map(|_| ()),
    }
}

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

#[tokio::test]
async fn every_bad_input_is_invalid_argument_naming_its_fields_and_writes_nothing() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(10).await;
    let written = app.rows_written().await;

    let schedule = |concert_id, starts_at, seat_count, seat_price| pb::CreateScheduleRequest {
        concert_id,
        starts_at,
        seat_count,
        seat_price,
    };
    let hold = |user_id, schedule_id, seat_no| pb::HoldSeatRequest {
        user_id,
        schedule_id,
        seat_no,
    };
    let list = |user_id, page_size, page_token: &str| pb::ListReservationsRequest {
        user_id,
        page_size,
        page_token: page_token.to_owned(),
    };
    let concert = |title: String| pb::CreateConcertRequest { title };
    let cases: Vec<(&str, Call, &[&str])> = vec![
        (
            "empty title",
            Call::Concert(concert(String::new())),
            &["title"],
        ),
        (
            "blank title",
            Call::Concert(concert("   ".into())),
            &["title"],
        ),
        (
            "title with a NUL",
            Call::Concert(concert("a\0b".into())),
            &["title"],
        ),
        (
            "201-character title",
            Call::Concert(concert("t".repeat(201))),
            &["title"],
        ),
        (
            "schedule of concert 0",
            Call::Schedule(schedule(0, at(0, 0), 10, 0)),
            &["concert_id"],
        ),
        (
            "schedule without a start",
            Call::Schedule(schedule(1, None, 10, 0)),
            &["starts_at"],
        ),
        (
            "schedule starting before the year 1",
            Call::Schedule(schedule(1, at(-62_135_596_801, 0), 10, 0)),
            &["starts_at"],
        ),
        (
            "schedule starting after the year 9999",
            Call::Schedule(schedule(1, at(253_402_300_800, 0), 10, 0)),
            &["starts_at"],
        ),
        (
            "schedule with negative nanos",
            Call::Schedule(schedule(1, at(0, -1), 10, 0)),
            &["starts_at"],
        ),
        (
            "schedule of 0 seats",
            Call::Schedule(schedule(1, at(0, 0), 0, 0)),
            &["seat_count"],
        ),
        (
            "schedule of 100001 seats",
            Call::Schedule(schedule(1, at(0, 0), 100_001, 0)),
            &["seat_count"],
        ),
        (
            "negative seat price",
            Call::Schedule(schedule(1, at(0, 0), 10, -1)),
            &["seat_price"],
        ),
        (
            "seat price over the limit",
            Call::Schedule(schedule(1, at(0, 0), 10, 1_000_000_001)),
            &["seat_price"],
        ),
        (
            "schedule with everything wrong",
            Call::Schedule(schedule(-1, None, -5, -1)),
            &["concert_id", "starts_at", "seat_count", "seat_price"],
        ),
        (
            "schedules of concert 0",
            Call::Schedules(pb::ListSchedulesRequest {
                concert_id: 0,
                ..Default::default()
            }),
            &["concert_id"],
        ),
        (
            "seats of schedule 0",
            Call::Seats(pb::ListSeatsRequest {
                schedule_id: 0,
                ..Default::default()
            }),
            &["schedule_id"],
        ),
        (
            "a page of 1001 concerts",
            Call::Concerts(pb::ListConcertsRequest {
                page_size: 1_001,
                page_token: String::new(),
            }),
            &["page_size"],
        ),
        (
            "a concert page token made up",
            Call::Concerts(pb::ListConcertsRequest {
                page_size: 0,
                page_token: "bm90IGEgdG9rZW4".to_owned(),
            }),
            &["page_token"],
        ),
        (
            "a page of -1 schedules and a token of seats",
            Call::Schedules(pb::ListSchedulesRequest {
                concert_id: 1,
                page_size: -1,
                // "seat:1:5", a seat page's token.
                page_token: "c2VhdDoxOjU".to_owned(),
            }),
            &["page_size", "page_token"],
        ),
        (
            "a page of 5001 seats",
            Call::Seats(pb::ListSeatsRequest {
                schedule_id: 1,
                page_size: 5_001,
                page_token: String::new(),
            }),
            &["page_size"],
        ),
        (
            "a seat page token of another schedule",
            Call::Seats(pb::ListSeatsRequest {
                schedule_id: 2,
                page_size: 0,
                // "seat:1:5".
                page_token: "c2VhdDoxOjU".to_owned(),
            }),
            &["page_token"],
        ),
        (
            "a seat page token past seat numbers",
            Call::Seats(pb::ListSeatsRequest {
                schedule_id: 1,
                page_size: 0,
                // "seat:1:99999999999".
                page_token: "c2VhdDoxOjk5OTk5OTk5OTk5".to_owned(),
            }),
            &["page_token"],
        ),
        (
            "hold by user 0",
            Call::Hold(hold(0, schedule_id, 1)),
            &["user_id"],
        ),
        (
            "hold in schedule 0",
            Call::Hold(hold(1, 0, 1)),
            &["schedule_id"],
        ),
        (
            "hold of seat 0",
            Call::Hold(hold(1, schedule_id, 0)),
            &["seat_no"],
        ),
        (
            "hold of a negative seat",
            Call::Hold(hold(1, schedule_id, -3)),
            &["seat_no"],
        ),
        (
            "hold of a seat past the schedule's count",
            Call::Hold(hold(1, schedule_id, 11)),
            &["seat_no"],
        ),
        (
            "pay reservation 0",
            Call::Pay(pb::PayReservationRequest {
                reservation_id: 0,
                user_id: 0,
            }),
            &["reservation_id", "user_id"],
        ),
        (
            "cancel reservation 0",
            Call::Cancel(pb::CancelReservationRequest {
                reservation_id: 0,
                user_id: 1,
            }),
            &["reservation_id"],
        ),
        (
            "cancel by user 0",
            Call::Cancel(pb::CancelReservationRequest {
                reservation_id: 1,
                user_id: 0,
            }),
            &["user_id"],
        ),
        (
            "get reservation 0",
            Call::Get(pb::GetReservationRequest { reservation_id: 0 }),
            &["reservation_id"],
        ),
        (
            "reservations of user 0",
            Call::List(list(0, 0, "")),
            &["user_id"],
        ),
        (
            "page size over 1000",
            Call::List(list(1, 1001, "")),
            &["page_size"],
        ),
        (
            "negative page size",
            Call::List(list(1, -1, "")),
            &["page_size"],
        ),
        (
            "garbage page token",
            Call::List(list(1, 10, "garbage!")),
            &["page_token"],
        ),
    ];

    for (case, rpc, fields) in cases {
        let status = send(app.client(), rpc).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), fields, "{case}");
    }
    assert_eq!(
        app.rows_written().await,
        written,
        "bad requests wrote nothing"
    );
}

#[tokio::test]
async fn invisible_titles_and_timestamps_with_nanos_past_a_second_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    // A real concert, so that a start let through would write a schedule.
    app.schedule_with_seats(1).await;
    let concert_id = app
        .client()
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("concerts")
        .into_inner()
        .concerts[0]
        .id;
    let written = app.rows_written().await;

    for title in [
        "\u{200B}",
        "\u{200B}\u{200C}\u{200D}",
        " \u{2060}\u{FEFF} ",
        "\u{00AD}\t\u{3000}",
        "\u{202E}\u{0007}",
    ] {
        let status = send(
            app.client(),
            Call::Concert(pb::CreateConcertRequest {
                title: title.to_owned(),
            }),
        )
        .await
        .expect_err(title);
        assert_eq!(status.code(), Code::InvalidArgument, "{title:?}");
        assert_eq!(violated_fields(&status), ["title"], "{title:?}");
    }
    // 2030-03-02T19:00:59Z: a second after which chrono would read 1e9..2e9 nanos as a leap
    // second.
    for nanos in [
        1_000_000_000,
        1_500_000_000,
        i32::MAX,
        -1,
        -999_999_999,
        i32::MIN,
    ] {
        let status = send(
            app.client(),
            Call::Schedule(pb::CreateScheduleRequest {
                concert_id,
                starts_at: at(1_898_708_459, nanos),
                seat_count: 10,
                seat_price: 100,
            }),
        )
        .await
        .expect_err("nanos past a second");
        assert_eq!(status.code(), Code::InvalidArgument, "{nanos}");
        assert_eq!(violated_fields(&status), ["starts_at"], "{nanos}");
        assert!(status.message().contains("nanos"), "{status:?}");
    }

    assert_eq!(app.rows_written().await, written, "nothing written");
    // The same second with nanos in range is a start.
    send(
        app.client(),
        Call::Schedule(pb::CreateScheduleRequest {
            concert_id,
            starts_at: at(1_898_708_459, 999_999_999),
            seat_count: 1,
            seat_price: 100,
        }),
    )
    .await
    .expect("a valid start");
}
