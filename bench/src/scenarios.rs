//! The gRPC scenarios, each a fixed number of requests from a fixed number of clients.

use std::time::Duration;

use shared::proto::reservation::v1 as reservation_pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use shared::proto::wallet::v1 as wallet_pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

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

/// A connection to a service, with the caller's token on every call when there is one.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Puts `authorization: Bearer <token>` on every call (none: calls go as they are).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How the services are reached: in plaintext, or as production runs them, over TLS with a
/// client certificate and a token (`--pki DIR --token TOKEN`: the development PKI of
/// scripts/dev-pki.sh, its operator certificate, and an admin's token, which may act for every
/// user the scenarios use).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// The development PKI directory (scripts/dev-pki.sh): connect over TLS, trusting its CA
    /// and presenting its operator certificate (admin.pem).
    #[arg(long, global = true)]
    pub pki: Option<std::path::PathBuf>,
    /// The bearer token sent with every call (scripts/dev-token.sh DIR 1 admin).
    #[arg(long, global = true)]
    pub token: Option<String>,
}

impl Access {
    fn bearer(&self) -> anyhow::Result<Bearer> {
        let value = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token is not ASCII"))?,
            ),
            None => None,
        };
        Ok(Bearer(value))
    }

    fn tls(&self) -> anyhow::Result<Option<shared::tls::ClientTls>> {
        let Some(dir) = &self.pki else {
            return Ok(None);
        };
        let files = shared::tls::ClientFiles {
            ca: dir.join("ca.pem"),
            identity: Some((dir.join("admin.pem"), dir.join("admin-key.pem"))),
        };
        Ok(Some(shared::tls::client_tls(&files, None)?))
    }
}

/// Opens `per_addr` HTTP/2 connections to each address (`https://` with `access.pki`).
pub async fn connect(
    addrs: &[String],
    per_addr: usize,
    access: &Access,
) -> anyhow::Result<Vec<Conn>> {
    let tls = access.tls()?;
    let bearer = access.bearer()?;
    let mut channels = Vec::new();
    for addr in addrs {
        for _ in 0..per_addr.max(1) {
            let channel = match &tls {
                Some(tls) => {
                    let channel = shared::tls::channel(addr, tls.clone(), Duration::from_secs(30))?;
                    // Connected now, as the plaintext ones are, not on the first measured call.
                    HealthClient::new(channel.clone())
                        .check(HealthCheckRequest::default())
                        .await
                        .map_err(|error| anyhow::anyhow!("connecting to {addr}: {error}"))?;
                    channel
                }
                None => Channel::from_shared(addr.clone())?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|error| anyhow::anyhow!("connecting to {addr}: {error}"))?,
            };
            channels.push(InterceptedService::new(channel, bearer.clone()));
        }
    }
    Ok(channels)
}

/// `grpc.health.v1.Health/Check` of the whole server: the cheapest call a server answers.
pub async fn health(servers: &[Conn], requests: u64, clients: usize) -> anyhow::Result<Measured> {
    load::drive(
        "health check",
        requests,
        clients,
        servers,
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
    wallet: &[Conn],
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
        wallet,
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

/// `Use` of 1 point, request `i` by user `first_user + i % users` under its own key.
pub async fn wallet_uses(
    label: &str,
    wallet: &[Conn],
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
        wallet,
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
    reservation: &[Conn],
    requests: u64,
    clients: usize,
) -> anyhow::Result<(Measured, i64)> {
    let first = reservation
        .first()
        .ok_or_else(|| anyhow::anyhow!("no reservation-svc"))?;
    let schedule_id = create_schedule(first, "Stampede", 1, 0).await?;
    let measured = load::drive(
        "stampede",
        requests,
        clients,
        reservation,
        move |channel, _, client| {
            let request = reservation_pb::HoldSeatRequest {
                user_id: i64::try_from(client).unwrap_or(0) + 1,
                schedule_id,
                seat_no: 1,
            };
            async move {
                outcome(
                    &ReservationServiceClient::new(channel)
                        .hold_seat(request)
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
    reservation: &[Conn],
    requests: u64,
    clients: usize,
    seat_count: i32,
    measuring: impl FnOnce(),
) -> anyhow::Result<Measured> {
    anyhow::ensure!(
        requests <= u64::try_from(seat_count).unwrap_or(0),
        "{requests} distinct holds need as many seats, not {seat_count}"
    );
    let first = reservation
        .first()
        .ok_or_else(|| anyhow::anyhow!("no reservation-svc"))?;
    let schedule_id = create_schedule(first, "Distinct seats", seat_count, 0).await?;
    let users = distinct_seat_users(requests);
    measuring();
    load::drive(
        "distinct seats",
        requests,
        clients,
        reservation,
        move |channel, index, _| {
            let request = reservation_pb::HoldSeatRequest {
                user_id: i64::try_from(index % users).unwrap_or(0) + 1,
                schedule_id,
                seat_no: spread_seat(index, seat_count),
            };
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
    reservation: &[Conn],
    wallet: &[Conn],
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
    let first = reservation
        .first()
        .ok_or_else(|| anyhow::anyhow!("no reservation-svc"))?;
    let schedule_id = create_schedule(first, "Payments", seat_count, 1).await?;
    measuring();
    load::drive(
        "payments",
        pairs,
        clients,
        reservation,
        move |channel, index, _| {
            let user_id = first_user + i64::try_from(index % users).unwrap_or(0);
            let seat_no = i32::try_from(index).unwrap_or(0) + 1;
            async move {
                let mut client = ReservationServiceClient::new(channel);
                let held = client
                    .hold_seat(reservation_pb::HoldSeatRequest {
                        user_id,
                        schedule_id,
                        seat_no,
                    })
                    .await;
                let reservation_id = match held {
                    Ok(reservation) => reservation.into_inner().id,
                    Err(status) => return load::code_name(status.code()),
                };
                outcome(
                    &client
                        .pay_reservation(reservation_pb::PayReservationRequest {
                            reservation_id,
                            user_id,
                        })
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
