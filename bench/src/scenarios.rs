//! The gRPC scenarios, each a fixed number of requests from a fixed number of clients.

use std::collections::HashMap;
use std::sync::Arc;

use reservation_svc::admission::TOKEN_METADATA as ADMISSION_TOKEN;
use shared::proto::reservation::v1 as reservation_pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use shared::proto::wallet::v1 as wallet_pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::access::{Conn, Service, as_user};
use crate::load::{self, Measured, OK, outcome};

/// Seats of a distinct-seat schedule are visited in this stride, so consecutive holds land on
/// seats far apart: `i * 7919 % seat_count` visits every seat once while 7919 (a prime) does
/// not divide `seat_count`.
pub const SEAT_STRIDE: i64 = 7919;

/// Holds each user of the distinct-seat scenario makes: as many as one user may have on one
/// schedule by default (`MAX_ACTIVE_HOLDS_PER_USER`), so that none is refused.
pub const HOLDS_PER_USER: u64 = 4;

/// The users of `requests` distinct-seat holds, [`HOLDS_PER_USER`] holds each: hold `index` is
/// by user `index % users + 1`, so one user's holds come far apart.
pub fn distinct_seat_users(requests: u64) -> u64 {
    requests.div_ceil(HOLDS_PER_USER).max(1)
}

/// `grpc.health.v1.Health/Check` of the whole server: the cheapest call a server answers.
pub async fn health(service: &Service, requests: u64, clients: usize) -> anyhow::Result<Measured> {
    load::drive(
        "health check",
        requests,
        clients,
        &service.conns,
        |channel, _, _| async move {
            outcome(
                &HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await,
            )
        },
    )
    .await
}

/// Charges each user of `first_user..first_user + users` with `amount` points, and fails
/// unless every charge is applied. Not a measurement: it makes the balances the measured
/// `Use`s spend.
pub async fn charge_users(
    wallet: &Service,
    first_user: i64,
    users: u64,
    amount: i64,
    run_id: &str,
) -> anyhow::Result<()> {
    let run_id = run_id.to_owned();
    let charged = load::drive(
        "charging users",
        users,
        64,
        &wallet.conns,
        move |channel, index, _| {
            let key = format!("bench-{run_id}-charge-{index}");
            async move {
                let user_id = first_user + i64::try_from(index).unwrap_or(i64::MAX);
                outcome(
                    &WalletServiceClient::new(channel)
                        .charge(wallet_pb::ChargeRequest {
                            user_id,
                            amount,
                            idempotency_key: key,
                        })
                        .await,
                )
            }
        },
    )
    .await?;
    anyhow::ensure!(
        charged.count(OK) == users,
        "charging {users} users: {:?}",
        charged.counts()
    );
    Ok(())
}

/// `Use` of 1 point, request `i` for user `first_user + i % users` under its own key, as
/// reservation-svc spends a user's points (`wallet` connects as
/// [`Caller::PaymentService`](crate::access::Caller::PaymentService)).
pub async fn wallet_uses(
    label: &str,
    wallet: &Service,
    requests: u64,
    clients: usize,
    first_user: i64,
    users: u64,
    run_id: &str,
) -> anyhow::Result<Measured> {
    let run_id = run_id.to_owned();
    load::drive(
        label,
        requests,
        clients,
        &wallet.conns,
        move |channel, index, _| {
            let request = wallet_pb::UseRequest {
                user_id: first_user + i64::try_from(index % users).unwrap_or(0),
                amount: 1,
                idempotency_key: format!("bench-{run_id}-use-{index}"),
                reference: String::new(),
            };
            async move { outcome(&WalletServiceClient::new(channel).r#use(request).await) }
        },
    )
    .await
}

/// A concert with one schedule of `seat_count` seats at `seat_price`, starting in 30 days.
pub async fn create_schedule(
    reservation: &Conn,
    title: &str,
    seat_count: i32,
    seat_price: i64,
) -> anyhow::Result<i64> {
    let mut client = ReservationServiceClient::new(reservation.clone());
    let concert = client
        .create_concert(reservation_pb::CreateConcertRequest {
            title: title.to_owned(),
        })
        .await?
        .into_inner();
    let starts_at = chrono::Utc::now() + chrono::Duration::days(30);
    let schedule = client
        .create_schedule(reservation_pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp {
                seconds: starts_at.timestamp(),
                nanos: 0,
            }),
            seat_count,
            seat_price,
        })
        .await?
        .into_inner();
    Ok(schedule.id)
}

/// `requests` holds of seat 1 of a fresh one-seat schedule, client `c` as user `c + 1`.
/// Returns the schedule's id with the measurements.
pub async fn stampede(
    reservation: &Service,
    requests: u64,
    clients: usize,
) -> anyhow::Result<(Measured, i64)> {
    let schedule_id = create_schedule(reservation.first()?, "Stampede", 1, 0).await?;
    let user_of = |client: usize| i64::try_from(client).unwrap_or(0) + 1;
    reservation.sign_tokens((0..clients).map(user_of))?;
    let measured = load::drive(
        "stampede",
        requests,
        clients,
        &reservation.conns,
        move |channel, _, client| {
            let user_id = user_of(client);
            let request = reservation_pb::HoldSeatRequest {
                user_id,
                schedule_id,
                seat_no: 1,
            };
            async move {
                outcome(
                    &ReservationServiceClient::new(channel)
                        .hold_seat(as_user(user_id, request))
                        .await,
                )
            }
        },
    )
    .await?;
    Ok((measured, schedule_id))
}

/// The seat request `index` holds in a schedule of `seat_count` seats.
pub fn spread_seat(index: u64, seat_count: i32) -> i32 {
    let index = i64::try_from(index).unwrap_or(0);
    let seat = (index * SEAT_STRIDE) % i64::from(seat_count) + 1;
    i32::try_from(seat).unwrap_or(1)
}

/// `requests` holds, each of a distinct seat of a fresh schedule of `seat_count` seats;
/// `measuring` runs once the schedule exists, right before the first hold.
pub async fn distinct_seats(
    reservation: &Service,
    requests: u64,
    clients: usize,
    seat_count: i32,
    measuring: impl FnOnce(),
) -> anyhow::Result<Measured> {
    let schedule_id = distinct_seat_schedule(reservation, requests, seat_count).await?;
    hold_distinct_seats(
        reservation,
        schedule_id,
        requests,
        clients,
        seat_count,
        measuring,
    )
    .await
}

/// A fresh schedule of `seat_count` seats for `requests` distinct-seat holds.
pub async fn distinct_seat_schedule(
    reservation: &Service,
    requests: u64,
    seat_count: i32,
) -> anyhow::Result<i64> {
    anyhow::ensure!(
        requests <= u64::try_from(seat_count).unwrap_or(0),
        "{requests} distinct holds need as many seats, not {seat_count}"
    );
    create_schedule(reservation.first()?, "Distinct seats", seat_count, 0).await
}

/// `requests` holds, each of a distinct seat of `schedule_id`, a fresh schedule of
/// `seat_count` seats; `measuring` runs right before the first hold.
pub async fn hold_distinct_seats(
    reservation: &Service,
    schedule_id: i64,
    requests: u64,
    clients: usize,
    seat_count: i32,
    measuring: impl FnOnce(),
) -> anyhow::Result<Measured> {
    let users = distinct_seat_users(requests);
    let user_of = move |index: u64| i64::try_from(index % users).unwrap_or(0) + 1;
    reservation.sign_tokens((0..users).map(user_of))?;
    measuring();
    load::drive(
        "distinct seats",
        requests,
        clients,
        &reservation.conns,
        move |channel, index, _| {
            let user_id = user_of(index);
            let request = reservation_pb::HoldSeatRequest {
                user_id,
                schedule_id,
                seat_no: spread_seat(index, seat_count),
            };
            async move {
                outcome(
                    &ReservationServiceClient::new(channel)
                        .hold_seat(as_user(user_id, request))
                        .await,
                )
            }
        },
    )
    .await
}

/// A share of a distinct-seat schedule's holds: the spread's seats `from..from + requests`,
/// by users `first_user..`, [`HOLDS_PER_USER`] each as [`hold_distinct_seats`] makes them, so
/// that several shares of one schedule hold distinct seats and stay within each user's limit.
#[derive(Debug, Clone)]
pub struct SpreadHolds {
    pub schedule_id: i64,
    pub seat_count: i32,
    pub from: u64,
    pub requests: u64,
    pub first_user: i64,
    /// Each user's admission token, sent with each of their holds (`x-admission-token`), for a
    /// schedule with a waiting room.
    pub admission: Option<Arc<HashMap<i64, AsciiMetadataValue>>>,
}

/// The holds of `holds` from `clients` clients; `measuring` runs right before the first.
pub async fn hold_spread_seats(
    reservation: &Service,
    holds: SpreadHolds,
    clients: usize,
    measuring: impl FnOnce(),
) -> anyhow::Result<Measured> {
    let users = distinct_seat_users(holds.requests);
    let first_user = holds.first_user;
    let user_of = move |index: u64| first_user + i64::try_from(index % users).unwrap_or(0);
    reservation.sign_tokens((0..users).map(user_of))?;
    measuring();
    load::drive(
        "distinct seats",
        holds.requests,
        clients,
        &reservation.conns,
        move |channel, index, _| {
            let user_id = user_of(index);
            let mut request = as_user(
                user_id,
                reservation_pb::HoldSeatRequest {
                    user_id,
                    schedule_id: holds.schedule_id,
                    seat_no: spread_seat(holds.from + index, holds.seat_count),
                },
            );
            if let Some(token) = holds
                .admission
                .as_ref()
                .and_then(|tokens| tokens.get(&user_id))
            {
                request
                    .metadata_mut()
                    .insert(ADMISSION_TOKEN, token.clone());
            }
            async move {
                outcome(
                    &ReservationServiceClient::new(channel)
                        .hold_seat(request)
                        .await,
                )
            }
        },
    )
    .await
}

/// `pairs` hold + pay pairs, each of its own seat of a fresh schedule at 1 point a seat, by
/// users `first_user..first_user + users`, whose wallets are charged first (not measured). An
/// outcome is the first failure of its pair, or [`OK`] once paid. `measuring` runs right
/// before the first hold.
#[allow(clippy::too_many_arguments)]
pub async fn payments(
    reservation: &Service,
    wallet: &Service,
    pairs: u64,
    clients: usize,
    first_user: i64,
    users: u64,
    run_id: &str,
    measuring: impl FnOnce(),
) -> anyhow::Result<Measured> {
    let seat_count = i32::try_from(pairs)?;
    let per_user = i64::try_from(pairs.div_ceil(users.max(1)))?;
    charge_users(
        wallet,
        first_user,
        users,
        per_user,
        &format!("{run_id}-payments"),
    )
    .await?;
    let schedule_id = create_schedule(reservation.first()?, "Payments", seat_count, 1).await?;
    let user_of = move |index: u64| first_user + i64::try_from(index % users).unwrap_or(0);
    reservation.sign_tokens((0..users.min(pairs)).map(user_of))?;
    measuring();
    load::drive(
        "payments",
        pairs,
        clients,
        &reservation.conns,
        move |channel, index, _| {
            let user_id = user_of(index);
            let seat_no = i32::try_from(index).unwrap_or(0) + 1;
            async move {
                let mut client = ReservationServiceClient::new(channel);
                let held = client
                    .hold_seat(as_user(
                        user_id,
                        reservation_pb::HoldSeatRequest {
                            user_id,
                            schedule_id,
                            seat_no,
                        },
                    ))
                    .await;
                let reservation_id = match held {
                    Ok(reservation) => reservation.into_inner().id,
                    Err(status) => return load::code_name(status.code()),
                };
                outcome(
                    &client
                        .pay_reservation(as_user(
                            user_id,
                            reservation_pb::PayReservationRequest {
                                reservation_id,
                                user_id,
                            },
                        ))
                        .await,
                )
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_visits_every_seat_of_a_100_000_seat_schedule_once() {
        let mut seen = vec![false; 100_001];
        for index in 0..100_000 {
            let seat = usize::try_from(spread_seat(index, 100_000)).expect("positive");
            assert!(!seen[seat], "seat {seat} twice");
            seen[seat] = true;
        }
        assert!(seen[1..].iter().all(|&visited| visited));
    }
}
