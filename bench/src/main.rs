//! Load generator of both services. `run` is what `scripts/bench.sh` calls once the services
//! are up: every scenario, the raw baselines (pgbench, redis-benchmark) in the same run, and
//! the report. `stampede`, `holds` and `payments` load running services by hand, over one replica or
//! several; `abuse` attacks a running reservation-svc while it holds distinct seats.

mod abuse;
mod access;
mod baseline;
mod load;
mod payment_baseline;
mod probe;
mod report;
mod run;
mod scenarios;
mod tls_cost;

use clap::{Parser, Subcommand};

use crate::access::Caller::Users;
use crate::load::{Measured, OK};
use crate::probe::{RssSampler, Watched};
use crate::report::{Scenario, latency, thousands};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Load generator of the ticketing services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Every scenario and raw baseline, then the report (what scripts/bench.sh runs).
    Run(run::RunArgs),
    /// Many clients holding one seat of a fresh schedule at once.
    Stampede(StampedeArgs),
    /// Holds distinct seats of a fresh schedule, one each.
    Holds(HoldsArgs),
    /// Holds and pays distinct seats, with users charged through the wallet first.
    Payments(PaymentsArgs),
    /// Holds distinct seats alone, then while attacks run against the service at once (all
    /// five, or those of --attack; a service run with INSECURE=true).
    Abuse(AbuseArgs),
}

#[derive(Debug, clap::Args)]
struct StampedeArgs {
    /// A reservation-svc to send holds to; repeat for several replicas (clients alternate).
    #[arg(long = "addr", default_value = "http://127.0.0.1:50051")]
    addrs: Vec<String>,
    /// HoldSeat calls in all.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1_000)]
    concurrency: usize,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[command(flatten)]
    access: access::Access,
}

#[derive(Debug, clap::Args)]
struct HoldsArgs {
    /// A reservation-svc to send holds to; repeat for several replicas (clients alternate).
    #[arg(long = "addr", default_value = "http://127.0.0.1:50051")]
    addrs: Vec<String>,
    /// HoldSeat calls in all, each of its own seat.
    #[arg(long, default_value_t = 30_000)]
    requests: u64,
    /// Seats of the schedule the holds spread over (at least `requests`).
    #[arg(long, default_value_t = 100_000)]
    seats: i32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[command(flatten)]
    access: access::Access,
}

#[derive(Debug, clap::Args)]
struct PaymentsArgs {
    /// A reservation-svc; repeat for several replicas (clients alternate).
    #[arg(long = "addr", default_value = "http://127.0.0.1:50051")]
    addrs: Vec<String>,
    /// wallet-svc, to give the users their points.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    wallet: String,
    /// Seats to hold and pay, one each.
    #[arg(long, default_value_t = 5_000)]
    seats: u64,
    /// Users paying (separate wallet rows, so they do not queue on one lock).
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    /// The first user's id; the users are `first_user..first_user + users`.
    #[arg(long, default_value_t = 1)]
    first_user: i64,
    /// Hold + pay pairs in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[command(flatten)]
    access: access::Access,
}

#[derive(Debug, clap::Args)]
struct AbuseArgs {
    /// A reservation-svc run with INSECURE=true: the attackers speak plaintext HTTP/2.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Its metrics address (`host:port`), for what it sheds and holds.
    #[arg(long, default_value = "127.0.0.1:9091")]
    metrics: String,
    /// Its process id, for its peak RSS during the attack.
    #[arg(long)]
    pid: u32,
    /// wallet-svc's process id, for its peak RSS too.
    #[arg(long)]
    wallet_pid: Option<u32>,
    /// HoldSeat calls of each run, each of its own seat.
    #[arg(long, default_value_t = 30_000)]
    requests: u64,
    /// Seats of each run's schedule (at least `requests`).
    #[arg(long, default_value_t = 100_000)]
    seats: i32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections of the load.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// An attack to run (repeat for several); all five without it.
    #[arg(long = "attack", value_enum)]
    attacks: Vec<abuse::Attack>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::Stampede(args) => {
            let reservation =
                access::Service::connect(&args.addrs, args.connections, &args.access, Users)
                    .await?;
            let (measured, _) =
                scenarios::stampede(&reservation, args.requests, args.concurrency).await?;
            print_summary(&Scenario::new(
                "stampede",
                "holds of one seat",
                &measured,
                args.concurrency,
                args.connections,
                None,
                "req/s",
                None,
            ));
            Ok(())
        }
        Command::Holds(args) => {
            let reservation =
                access::Service::connect(&args.addrs, args.connections, &args.access, Users)
                    .await?;
            let measured = scenarios::distinct_seats(
                &reservation,
                args.requests,
                args.concurrency,
                args.seats,
                || {},
            )
            .await?;
            print_summary(&Scenario::new(
                "holds",
                "holds of distinct seats",
                &measured,
                args.concurrency,
                args.connections,
                Some(&[OK]),
                "req/s",
                None,
            ));
            Ok(())
        }
        Command::Payments(args) => {
            let reservation =
                access::Service::connect(&args.addrs, args.connections, &args.access, Users)
                    .await?;
            let wallet =
                access::Service::connect(&[args.wallet], args.connections, &args.access, Users)
                    .await?;
            let measured: Measured = scenarios::payments(
                &reservation,
                &wallet,
                args.seats,
                args.concurrency,
                args.first_user,
                args.users,
                &run::run_id(),
                || {},
            )
            .await?;
            print_summary(&Scenario::new(
                "payments",
                "seats held and paid",
                &measured,
                args.concurrency,
                args.connections,
                Some(&[OK]),
                "paid/s",
                Some(&[OK]),
            ));
            Ok(())
        }
        Command::Abuse(args) => {
            let reservation = access::Service::connect(
                std::slice::from_ref(&args.addr),
                args.connections,
                &access::Access::default(),
                Users,
            )
            .await?;
            let mut watched = vec![Watched {
                name: "reservation-svc",
                pid: args.pid,
            }];
            watched.extend(args.wallet_pid.map(|pid| Watched {
                name: "wallet-svc",
                pid,
            }));
            let subject = abuse::Subject {
                described: format!("the reservation-svc at {}", args.addr),
                addr: &args.addr,
                metrics: &args.metrics,
                load: &reservation,
                services: ["reservation-svc", "wallet-svc"],
            };
            let load = abuse::Load {
                requests: args.requests,
                clients: args.concurrency,
                seats: args.seats,
            };
            let attacks = if args.attacks.is_empty() {
                abuse::Attack::ALL.to_vec()
            } else {
                args.attacks
            };
            let sampler = RssSampler::start(watched);
            let measured = abuse::measure(&subject, load, &attacks, None, &sampler).await?;
            println!("{}", report::abuse_section(&measured));
            println!("{}", report::targets_table(&measured.targets()));
            for note in measured.notes() {
                println!("* {note}");
            }
            Ok(())
        }
    }
}

fn print_summary(scenario: &Scenario) {
    let outcomes = scenario
        .outcomes
        .iter()
        .map(|(outcome, count)| format!("{outcome} {}", thousands(*count)))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{}: {} calls from {} clients in {:.2} s: {} {}; p50 {}, p99 {}, max {} ({outcomes})",
        scenario.name,
        thousands(scenario.requests),
        scenario.clients,
        scenario.elapsed_s,
        thousands(scenario.rate.round() as u64),
        scenario.rate_unit,
        latency(scenario.p50_us),
        latency(scenario.p99_us),
        latency(scenario.max_us),
    );
}
