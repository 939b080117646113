//! Load: holds and pays distinct seats, spread over one or more reservation-svc replicas.
//!
//! ```sh
//! cargo run --release -p reservation-svc --example payments -- \
//!     --addr http://127.0.0.1:50051 --wallet http://127.0.0.1:50052 --seats 5000 --concurrency 64
//! ```
//!
//! Creates a schedule of `--seats` seats at 1 point, gives each of `--users` users enough
//! points through the wallet, then each seat is held and paid by one of them. Prints the paid
//! reservations per second of the hold + pay pairs, and their latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use shared::proto::reservation::v1 as pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use shared::proto::wallet::v1 as wallet_pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// A reservation-svc replica; repeat for several (requests alternate).
    #[arg(long = "addr", default_value = "http://127.0.0.1:50051")]
    addrs: Vec<String>,
    /// wallet-svc, to give the users their points.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    wallet: String,
    /// Seats to hold and pay, one each.
    #[arg(long, default_value_t = 5_000)]
    seats: i32,
    /// Users paying (their wallets are separate rows, so they do not queue on one lock).
    #[arg(long, default_value_t = 1_000)]
    users: i32,
    /// Hold + pay pairs in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: i32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut clients = Vec::new();
    for addr in &args.addrs {
        let channel = Channel::from_shared(addr.clone())?.connect().await?;
        clients.push(ReservationServiceClient::new(channel));
    }
    let mut wallet =
        WalletServiceClient::new(Channel::from_shared(args.wallet.clone())?.connect().await?);
    let run = rand::random::<u32>();
    for user in 1..=args.users {
        wallet
            .charge(wallet_pb::ChargeRequest {
                user_id: i64::from(user),
                amount: i64::from(args.seats),
                idempotency_key: format!("payments-load-{run}-{user}"),
            })
            .await?;
    }
    let mut admin = clients[0].clone();
    let concert = admin
        .create_concert(pb::CreateConcertRequest {
            title: "Payments load".to_owned(),
        })
        .await?
        .into_inner();
    let schedule = admin
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp::default()),
            seat_count: args.seats,
            seat_price: 1,
        })
        .await?
        .into_inner();

    let next_seat = Arc::new(AtomicI32::new(1));
    let started = Instant::now();
    let workers = (0..args.concurrency).map(|worker| {
        let mut client = clients[usize::try_from(worker).unwrap_or(0) % clients.len()].clone();
        let next_seat = Arc::clone(&next_seat);
        let (seats, users) = (args.seats, args.users);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0_u64;
            loop {
                let seat_no = next_seat.fetch_add(1, Ordering::Relaxed);
                if seat_no > seats {
                    return (latencies, failures);
                }
                let user_id = i64::from(seat_no % users + 1);
                let sent = Instant::now();
                let paid = async {
                    let held = client
                        .hold_seat(pb::HoldSeatRequest {
                            user_id,
                            schedule_id: schedule.id,
                            seat_no,
                        })
                        .await?
                        .into_inner();
                    client
                        .pay_reservation(pb::PayReservationRequest {
                            reservation_id: held.id,
                            user_id,
                        })
                        .await
                }
                .await;
                match paid {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(status) => {
                        failures += 1;
                        eprintln!("seat {seat_no}: {status:?}");
                    }
                }
            }
        })
    });
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    for worker in futures::future::join_all(workers).await {
        let (worker_latencies, worker_failures) = worker?;
        latencies.extend(worker_latencies);
        failures += worker_failures;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: usize| {
        latencies.get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
    };
    println!(
        "{} seats held and paid on {} replica(s), {} in flight, in {:.2?}: {:.0} paid/s ({} failed)",
        latencies.len(),
        args.addrs.len(),
        args.concurrency,
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        failures
    );
    println!(
        "hold + pay latency p50 {:?} p99 {:?} max {:?}",
        percentile(50),
        percentile(99),
        latencies.last()
    );
    Ok(())
}
