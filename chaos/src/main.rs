//! The chaos driver: a mixed workload (holds, payments, cancellations, charges, replays,
//! one-seat stampedes, calls abandoned mid-way) against running replicas of both services,
//! faults injected on a schedule drawn from a seed (processes killed or frozen, Redis failed
//! over, flushed, restarted or its connections killed, Postgres restarted), then, once
//! everything is quiet, the invariants read straight from both databases. Prints a table and
//! exits 1 on any violation.
//!
//! The processes are started by `scripts/chaos.sh`, which keeps each one running under a
//! supervisor: the driver finds a process's pid in `<run-dir>/pids/<name>.pid`, and a file
//! `<name>.down` there keeps the supervisor from starting it again until it is removed.

mod check;
mod faults;
mod procs;
mod report;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    Single,
    Sentinel,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fallback {
    FailClosed,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Mixed workload and fault injection against running replicas, then invariants")]
pub struct Args {
    /// The run's directory: pids/<name>.pid of every process, pids/<name>.down to keep one down.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The Redis topology the replicas use.
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    pub topology: Topology,
    /// The replicas' SEAT_LOCK_FALLBACK (for the report).
    #[arg(long, value_enum, default_value_t = Fallback::FailClosed)]
    pub fallback: Fallback,
    /// How long the workload runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of the workload's choices and of the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 10)]
    pub workers: usize,
    /// reservation-svc replicas (host:port), named reservation-0, reservation-1, ...
    #[arg(long = "reservation", required = true)]
    pub reservations: Vec<SocketAddr>,
    /// wallet-svc replicas (host:port), named wallet-0, wallet-1, ...
    #[arg(long = "wallet", required = true)]
    pub wallets: Vec<SocketAddr>,
    /// Redis servers of the topology, as name=port (the name of their pid file).
    #[arg(long = "redis-node", value_parser = parse_node)]
    pub redis_nodes: Vec<(String, u16)>,
    /// Sentinel ports (topology sentinel).
    #[arg(long = "sentinel-port")]
    pub sentinel_ports: Vec<u16>,
    /// The name Sentinel monitors the primary under.
    #[arg(long, default_value = "seats")]
    pub sentinel_service: String,
    /// Postgres is this run's own (process `postgres` in the run directory), on this port:
    /// it may be restarted.
    #[arg(long)]
    pub own_postgres_port: Option<u16>,
    /// reservation-svc's database, as a libpq URL.
    #[arg(long)]
    pub reservation_db: String,
    /// wallet-svc's database, as a libpq URL.
    #[arg(long)]
    pub wallet_db: String,
    /// Calm time between two faults (each also lasts as long as it takes).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub fault_gap: Duration,
    /// No faults: the workload alone.
    #[arg(long)]
    pub no_faults: bool,
    /// Soak: sample RSS, connections and descriptors of every service process and say
    /// whether they grew; kills spare replica 0 of each service, so it lives the whole run.
    #[arg(long)]
    pub soak: bool,
    /// How often the service processes are sampled.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
    /// Longest wait for the reconciler to settle every payment and cancellation after the
    /// workload stops.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// Only read the invariants from both databases (of a run kept with `--keep`, say): no
    /// workload, no faults.
    #[arg(long)]
    pub check_only: bool,
}

fn parse_node(text: &str) -> Result<(String, u16), String> {
    let (name, port) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected name=port"))?;
    let port = port.parse().map_err(|e| format!("{text}: {e}"))?;
    Ok((name.to_owned(), port))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let control = Arc::new(procs::Control::new(&args));
    println!(
        "chaos: topology {:?}, fallback {:?}, {} workload, seed {}, {} workers{}{}",
        args.topology,
        args.fallback,
        humantime::format_duration(args.duration),
        args.seed,
        args.workers,
        if args.own_postgres_port.is_some() {
            ", own Postgres"
        } else {
            ""
        },
        if args.soak { ", soak" } else { "" }
    );

    let shared = Arc::new(workload::Shared::connect(&args).await?);
    if args.check_only {
        let mut violations = Vec::new();
        if let Err(unsettled) = check::settle(&args, Duration::ZERO).await {
            violations.push(unsettled);
        }
        match check::invariants(&args, &shared).await {
            Ok(found) => violations.extend(found),
            Err(e) => violations.push(format!("the invariants could not be read: {e:#}")),
        }
        println!("violations: {}", violations.len());
        for violation in &violations {
            println!("  - {violation}");
        }
        std::process::exit(i32::from(!violations.is_empty()));
    }
    shared.setup(args.seed).await?;
    println!("chaos: setup done, workload starts");

    let sampler = tokio::spawn(procs::sample(
        control.clone(),
        shared.clone(),
        args.sample_interval,
    ));
    let fault_task = (!args.no_faults).then(|| {
        tokio::spawn(faults::run(
            control.clone(),
            shared.clone(),
            args.seed,
            args.fault_gap,
            args.soak,
        ))
    });
    let workers: Vec<_> = (0..args.workers)
        .map(|index| tokio::spawn(workload::worker(shared.clone(), index, args.seed)))
        .collect();

    tokio::time::sleep(args.duration).await;
    shared.stop.store(true, Ordering::SeqCst);
    println!("chaos: workload stops; waiting for calls in flight and the last fault");
    for worker in workers {
        if let Err(e) = worker.await {
            shared.violation(format!("a workload client panicked: {e}"));
        }
    }
    let faults = match fault_task {
        Some(task) => task.await.unwrap_or_else(|e| {
            shared.violation(format!("the fault injector panicked: {e}"));
            Vec::new()
        }),
        None => Vec::new(),
    };
    let workload_ended = shared.elapsed();

    // Quiescence: every process running again, the reconciler given time to settle payments
    // and cancellations that were interrupted.
    control.resume_all().await;
    control.wait_all_up(Duration::from_secs(60)).await;
    let settled = check::settle(&args, args.settle_timeout).await;
    println!(
        "chaos: quiet after {:.1}s",
        (shared.elapsed() - workload_ended).as_secs_f64()
    );
    // A last sample once quiet: what the processes hold with no load.
    tokio::time::sleep(args.sample_interval * 2).await;
    shared.sampling_done.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap_or_default();

    let mut violations = shared.take_violations();
    if let Err(unsettled) = settled {
        violations.push(unsettled);
    }
    match check::invariants(&args, &shared).await {
        Ok(found) => violations.extend(found),
        Err(e) => violations.push(format!("the invariants could not be read: {e:#}")),
    }

    let ok = report::print(&args, &shared, &faults, &violations, &samples);
    if ok {
        println!("chaos: PASS");
        Ok(())
    } else {
        println!("chaos: FAIL ({} violations)", violations.len());
        std::process::exit(1);
    }
}
