//! Load: many clients holding one seat at once, spread over one or more servers.
//!
//! ```sh
//! cargo run --release -p reservation-svc --example stampede -- \
//!     --addr http://127.0.0.1:50051 --requests 10000 --concurrency 1000
//! ```
//!
//! Creates a concert with a fresh schedule, sends `--requests` HoldSeat calls for its seat 1
//! from `--concurrency` concurrent clients, and prints the rate and the losers' latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use shared::proto::reservation::v1 as pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// A server to send holds to; repeat for several replicas (requests alternate).
    #[arg(long = "addr", default_value = "http://127.0.0.1:50051")]
    addrs: Vec<String>,
    /// HoldSeat calls in all.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1_000)]
    concurrency: u64,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut clients = Vec::new();
    for addr in &args.addrs {
        for _ in 0..args.connections {
            let channel = Channel::from_shared(addr.clone())?.connect().await?;
            clients.push(ReservationServiceClient::new(channel));
        }
    }
    let mut admin = clients[0].clone();
    let concert = admin
        .create_concert(pb::CreateConcertRequest {
            title: "Stampede".to_owned(),
        })
        .await?
        .into_inner();
    let schedule = admin
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp::default()),
            seat_count: 1,
            seat_price: 0,
        })
        .await?
        .into_inner();

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..args.concurrency).map(|worker| {
        let mut client = clients[usize::try_from(worker).unwrap_or(0) % clients.len()].clone();
        let next = Arc::clone(&next);
        let requests = args.requests;
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let sent = Instant::now();
                let answer = client
                    .hold_seat(pb::HoldSeatRequest {
                        user_id: i64::try_from(worker).unwrap_or(0) + 1,
                        schedule_id: schedule.id,
                        seat_no: 1,
                    })
                    .await;
                outcomes.push((
                    answer.map(|_| ()).map_err(|status| status.code()),
                    sent.elapsed(),
                ));
            }
            outcomes
        })
    });
    let mut outcomes = Vec::new();
    for worker in futures::future::join_all(workers).await {
        outcomes.extend(worker?);
    }
    let elapsed = started.elapsed();

    let winners = outcomes.iter().filter(|(answer, _)| answer.is_ok()).count();
    let mut losers: Vec<Duration> = outcomes
        .iter()
        .filter(|(answer, _)| {
            matches!(
                answer,
                Err(tonic::Code::Aborted | tonic::Code::AlreadyExists)
            )
        })
        .map(|(_, latency)| *latency)
        .collect();
    let failures = outcomes.len() - winners - losers.len();
    losers.sort();
    let percentile =
        |p: usize| losers.get((losers.len() * p / 100).min(losers.len().saturating_sub(1)));
    println!(
        "{} holds of one seat on {} server(s) from {} clients in {:.2?}: {:.0} req/s",
        outcomes.len(),
        args.addrs.len(),
        args.concurrency,
        elapsed,
        outcomes.len() as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "winners {winners}, losers {}, other errors {failures}; loser latency p50 {:?} p99 {:?} max {:?}",
        losers.len(),
        percentile(50),
        percentile(99),
        losers.last(),
    );
    Ok(())
}
