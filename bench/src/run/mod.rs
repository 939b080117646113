//! The whole run: each scenario next to its raw baseline, the stampede's checks, the services'
//! memory, and the report. `run` is the driver: it sets up the [`Bench`] every scenario runs
//! with, calls one function per scenario (or family of scenarios) in order, each returning what
//! it adds to the report, and writes the report.
//!
//! - `context`: the set-up every scenario shares (arguments, request counts, connections to the
//!   services, the sampler of their memory and CPU) and the run's fixtures and probes;
//! - `wallet`: (a) hot wallet and (b) spread wallet, with their pgbench baselines;
//! - `stampede`: (e) the health check and (c) the stampede, with the Redis baselines and the
//!   stampede's checks;
//! - `distinct`: (d) holds of distinct seats, with their pgbench baseline;
//! - `payments`: (f) the payment flow, with its pgbench baselines on both databases;
//! - `degraded`: (c) and (d) again with seat locks in Postgres (Redis out of reach);
//! - `comparisons`: (a), (c), (d) and (f) through the production and the plaintext pair;
//! - `admission`: the waiting rooms, (g) `Enter` with a million users queued, (h) position
//!   streams on one replica, (i) holds with an admission token against holds without a room;
//! - `abuse`: the distinct-seat load under attack, against its plaintext round.

mod abuse;
mod admission;
mod comparisons;
mod context;
mod degraded;
mod distinct;
mod payments;
mod stampede;
mod wallet;

use std::path::PathBuf;

use crate::abuse::Abuse;
use crate::access::Access;
use crate::baseline::Baseline;
use crate::report::{Comparison, Report, Scenario, Target, thousands};
use crate::tls_cost;

use self::context::Bench;
pub(crate) use self::context::create_raw_schedule;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// wallet-svc, e.g. `https://localhost:50052` (with `--pki`).
    #[arg(long)]
    wallet: String,
    /// reservation-svc, e.g. `https://localhost:50051` (with `--pki`).
    #[arg(long)]
    reservation: String,
    /// A second wallet-svc of the same build, run with `INSECURE` on the same database, e.g.
    /// `http://127.0.0.1:50062`: with `--plaintext-reservation`, the scenarios are compared
    /// through both pairs.
    #[arg(long, requires_all = ["plaintext_reservation", "plaintext_wallet_pid", "plaintext_reservation_pid"])]
    plaintext_wallet: Option<String>,
    /// The reservation-svc of the plaintext pair, calling the plaintext wallet-svc.
    #[arg(long, requires = "plaintext_wallet")]
    plaintext_reservation: Option<String>,
    #[arg(long, requires = "plaintext_wallet")]
    plaintext_wallet_pid: Option<u32>,
    #[arg(long, requires = "plaintext_wallet")]
    plaintext_reservation_pid: Option<u32>,
    /// The plaintext reservation-svc's metrics address (`host:port`): with it, the abuse
    /// scenario attacks that service.
    #[arg(long, requires = "plaintext_wallet")]
    plaintext_reservation_metrics: Option<String>,
    /// reservation-svc's metrics address (`host:port`), for its seat lock counters.
    #[arg(long)]
    reservation_metrics: String,
    /// A reservation-svc of the same build and settings as the production one, on the same
    /// databases, whose Redis is out of reach, run with `SEAT_LOCK_FALLBACK=postgres`: the
    /// stampede and the distinct seats run through it too, with seat locks in Postgres.
    #[arg(long, requires_all = ["degraded_reservation_pid", "degraded_reservation_metrics"])]
    degraded_reservation: Option<String>,
    #[arg(long, requires = "degraded_reservation")]
    degraded_reservation_pid: Option<u32>,
    /// The degraded reservation-svc's metrics address (`host:port`).
    #[arg(long, requires = "degraded_reservation")]
    degraded_reservation_metrics: Option<String>,
    #[arg(long)]
    wallet_pid: u32,
    #[arg(long)]
    reservation_pid: u32,
    /// wallet-svc's database, where its raw baseline runs too.
    #[arg(long)]
    wallet_database_url: String,
    /// reservation-svc's database, where its raw baseline runs too.
    #[arg(long)]
    reservation_database_url: String,
    /// A database to read `pg_stat_database` from.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    admin_database_url: String,
    #[arg(long, default_value = "127.0.0.1")]
    redis_host: String,
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// Prefix of the Redis keys of the raw baseline.
    #[arg(long, default_value = "ticketing-bench:")]
    redis_prefix: String,
    /// Multiplier of every request count (1 is the published run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// HTTP/2 connections to each service.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Where `latest.md` and `latest.json` are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// A README whose `<!-- bench:begin -->` section receives the table.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// Scratch space: the pgbench scripts and their logs.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// The command line the report names.
    #[arg(long, default_value = "./scripts/bench.sh")]
    command_line: String,
    /// The revision the report names.
    #[arg(long, default_value = "unknown")]
    revision: String,
    #[command(flatten)]
    access: Access,
}

/// A time-based id that keeps this run's idempotency keys apart from any other run's.
pub fn run_id() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

/// Sets up, runs every scenario with its raw baselines in order, and writes the report.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let bench = Bench::set_up(args).await?;
    let health = bench.health().await?;
    // The reservation database sees only background work (sweeper, reconciler, health probes)
    // until the stampede: its rate tells how much of the stampede's count is background.
    let background_from = bench.reservation_commits().await?;
    let raw_schedule = bench.raw_fixtures().await?;
    let hot = bench.hot_wallet().await?;
    let hot_cost = bench.hot_wallet_cost(&hot.scenario).await?;
    let spread = bench.spread_wallet().await?;
    let stampede = bench
        .stampede(health.scenario.rate, background_from)
        .await?;
    let stampede_cost = bench.stampede_cost(&stampede.scenario).await?;
    let distinct = bench.distinct_seats(&raw_schedule).await?;
    let distinct_cost = bench.distinct_seats_cost(&distinct.scenario).await?;
    let payments = bench.payments().await?;
    let payments_cost = bench.payments_cost(&payments.scenario).await?;
    // After the payment baselines: its pool's connections, once opened, would leave them too
    // few of the shared server's.
    let degraded = bench
        .degraded(&stampede.scenario, &distinct.scenario)
        .await?;
    // After every other scenario: the rooms' ticks (every replica, every room, twice a second)
    // go on to the run's end.
    let rooms = bench.waiting_rooms().await?;
    // Last, so that what the attacks leave in the plaintext reservation-svc's memory (its
    // allocator keeps some) weighs on no other scenario.
    let abuse = bench.abuse().await?;

    let report = bench.report(
        [health, hot, spread, stampede, distinct]
            .into_iter()
            .chain(degraded)
            .chain([payments])
            .chain(rooms),
        [hot_cost, stampede_cost, distinct_cost, payments_cost]
            .into_iter()
            .flatten(),
        abuse,
    );
    report.write(&bench.args.out_dir)?;
    if let Some(readme) = &bench.args.readme {
        report.update_readme(readme)?;
    }
    println!("{}", report.markdown());
    Ok(())
}

impl Bench {
    /// The report of the whole run: the scenarios' results in the table's order, the
    /// comparisons of production with plaintext, the abuse scenario, then the services' peak
    /// memory and the run's counts, read now, at its end.
    fn report(
        &self,
        results: impl IntoIterator<Item = ScenarioResult>,
        comparisons: impl IntoIterator<Item = Comparison>,
        abuse: Option<Abuse>,
    ) -> Report {
        let (service_peak_rss_kib, memory_targets) = self.peak_rss();
        let counts = self.counts_note();
        let mut report = Report {
            generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            command: self.args.command_line.clone(),
            revision: self.args.revision.clone(),
            machine: self.machine.clone(),
            scale: self.args.scale,
            duration_s: self.started.elapsed().as_secs_f64(),
            scenarios: Vec::new(),
            baselines: Vec::new(),
            tls_cost: Vec::new(),
            abuse: None,
            service_peak_rss_kib,
            targets: Vec::new(),
            notes: Vec::new(),
        };
        for result in results {
            report.scenarios.push(result.scenario);
            report.baselines.extend(result.baselines);
            report.targets.extend(result.targets);
            report.notes.extend(result.notes);
        }
        for comparison in comparisons {
            report.targets.push(tls_cost::target(&comparison));
            report.notes.push(tls_cost::note(&comparison));
            report.tls_cost.push(comparison);
        }
        if let Some(abuse) = abuse {
            report.targets.extend(abuse.targets());
            report.notes.extend(abuse.notes());
            report.abuse = Some(abuse);
        }
        report.targets.extend(memory_targets);
        report.notes.push(counts);
        report
    }
}

/// What one scenario adds to the report: its measured figures, its raw baselines, the targets
/// it is held to, and notes of the whole run.
#[derive(Debug)]
struct ScenarioResult {
    scenario: Scenario,
    baselines: Vec<Baseline>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

impl ScenarioResult {
    /// A scenario with no baseline, target or note of its own.
    fn alone(scenario: Scenario) -> Self {
        Self::with_baselines(scenario, Vec::new())
    }

    /// A scenario with its raw baselines, and no target or note yet.
    fn with_baselines(scenario: Scenario, baselines: Vec<Baseline>) -> Self {
        Self {
            scenario,
            baselines,
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// The target that a scenario's rate is at least `factor` times its baseline's.
fn ratio_target(what: &str, scenario: &Scenario, baseline: &Baseline, factor: f64) -> Target {
    rate_target(what, scenario.rate, baseline.rate, factor)
}

/// `scenario`'s rate at least `factor` times `other`'s, measured in the same run.
fn relative_target(what: &str, scenario: &Scenario, other: &Scenario, factor: f64) -> Target {
    rate_target(what, scenario.rate, other.rate, factor)
}

/// A rate at least `factor` times another.
fn rate_target(what: &str, rate: f64, other: f64, factor: f64) -> Target {
    let ratio = rate / other.max(f64::EPSILON);
    Target {
        what: what.to_owned(),
        goal: format!("≥ {factor}×"),
        measured: format!(
            "{ratio:.2}× ({} vs {} /s)",
            thousands(rate.round() as u64),
            thousands(other.round() as u64)
        ),
        met: ratio >= factor,
    }
}
