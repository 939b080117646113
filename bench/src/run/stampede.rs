//! (e) The health check, the floor of a gRPC call, and (c) the stampede: many clients holding
//! one seat, against the Redis side of a hold (redis-benchmark of the seat lock's Lua scripts)
//! and the health check's rate, with its checks: one winner, no loser in Postgres.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reservation_svc::lock::{RELEASE_SCRIPT, acquire_script};

use super::ScenarioResult;
use super::context::{Bench, CLIENTS, Commits, RESERVATION, STAMPEDE_CLIENTS, Spec};
use crate::access::Service;
use crate::baseline::{self, Baseline, RedisBenchmark};
use crate::load::{Measured, OK};
use crate::probe::{self, Window};
use crate::report::{Scenario, Target, latency, thousands};
use crate::scenarios;

/// How long Postgres may keep an idle backend's statistics before it reports them
/// (`PGSTAT_IDLE_INTERVAL`, 10 s), plus a margin.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);

/// The seat lock's TTL in the Redis baselines, in ms: reservation-svc's default
/// (`SEAT_LOCK_TTL`, 3 s).
const LOCK_TTL_MS: &str = "3000";
/// The deadline the Redis baselines give the acquire script, in ms since the Unix epoch
/// (2100-01-01): always ahead of Redis's clock, so the script writes as it does for a hold that
/// is in time.
const FAR_DEADLINE_MS: &str = "4102444800000";

impl Bench {
    /// (e) The gRPC floor: the cheapest call, at the stampede's concurrency.
    pub(super) async fn health(&self) -> anyhow::Result<ScenarioResult> {
        self.start_window();
        let measured = scenarios::health(
            &self.production.reservation,
            self.sizes.health,
            STAMPEDE_CLIENTS,
        )
        .await?;
        let health = self.observed(
            Spec::calls("health", "(e) health check RPC", STAMPEDE_CLIENTS),
            &measured,
            &[RESERVATION],
        );
        Ok(ScenarioResult::alone(health))
    }

    /// The stampede's holds of one seat of a fresh schedule through `reservation`, and the
    /// schedule's id.
    pub(super) async fn stampede_holds(
        &self,
        reservation: &Service,
    ) -> anyhow::Result<(Measured, i64)> {
        scenarios::stampede(reservation, self.sizes.stampede, STAMPEDE_CLIENTS).await
    }

    /// (c) Stampede: one seat, many clients, compared with the Redis side of a hold (run raw
    /// first) and with the health check's `health_rate`. The reservation database's commits
    /// from `background_from` until the stampede are background work, at a rate that tells how
    /// much of the stampede's count is background too.
    pub(super) async fn stampede(
        &self,
        health_rate: f64,
        background_from: Commits,
    ) -> anyhow::Result<ScenarioResult> {
        let raw = self.redis_baselines().await?;
        let background_to = self.reservation_commits().await?;
        let background_per_s = (background_to.count.saturating_sub(background_from.count)) as f64
            / background_to
                .at
                .duration_since(background_from.at)
                .as_secs_f64()
                .max(1.0);
        let run = self.run_stampede(background_to).await?;
        let mut stampede = Spec::calls(
            "stampede",
            "(c) stampede: `HoldSeat` of one seat",
            STAMPEDE_CLIENTS,
        )
        .scenario(&run.measured, self.args.connections);
        stampede.observe(&run.seen, &[RESERVATION]);
        stampede.against(&raw[0]);
        let loser_latencies = run.measured.latencies(Some(&["ABORTED", "ALREADY_EXISTS"]));
        let background = (background_per_s * run.window_s).round() as u64;
        stampede.notes.push(stampede_note(
            &run,
            self.reservation_db(),
            background,
            background_per_s,
        ));
        let targets = stampede_targets(
            &stampede,
            &run,
            background,
            health_rate,
            loser_latencies.value_at_quantile(0.99),
        );
        stampede
            .notes
            .push(stampede_latency_note(&stampede, &loser_latencies));
        let mut result = ScenarioResult::with_baselines(stampede, raw.into());
        result.targets = targets;
        Ok(result)
    }

    /// The Redis side of a hold, as reservation-svc runs it: its Lua acquire of the seat lock
    /// (`EVALSHA` of `acquire_script()`, on one key and on distinct keys) and its Lua release.
    async fn redis_baselines(&self) -> anyhow::Result<[Baseline; 3]> {
        let (host, port) = (self.args.redis_host.as_str(), self.args.redis_port);
        let lock_key = format!("{}raw:seat:{{0}}:", self.args.redis_prefix);
        let benchmark = |key, name, clients, keyspace, command| RedisBenchmark {
            key,
            name,
            host,
            port,
            clients,
            requests: self.sizes.redis,
            keyspace,
            command,
        };
        let acquire_sha = baseline::redis_script_load(host, port, &acquire_script()).await?;
        // KEYS[1] the seat's key; ARGV the token, the TTL and the deadline.
        let acquire = |key: String| evalsha(&acquire_sha, key, &[LOCK_TTL_MS, FAR_DEADLINE_MS]);
        let raw_stampede = benchmark(
            "redis-acquire-one-key",
            "redis-benchmark Lua acquire (`EVALSHA`), one key",
            STAMPEDE_CLIENTS,
            None,
            acquire(format!("{lock_key}1")),
        )
        .run()
        .await?;
        let raw_lock = benchmark(
            "redis-acquire",
            "redis-benchmark Lua acquire (`EVALSHA`), distinct keys",
            CLIENTS,
            Some(1_000_000),
            acquire(format!("{lock_key}__rand_int__")),
        )
        .run()
        .await?;
        let release_sha = baseline::redis_script_load(host, port, RELEASE_SCRIPT).await?;
        let raw_release = benchmark(
            "redis-release",
            "redis-benchmark Lua release (`EVALSHA`)",
            CLIENTS,
            Some(1_000_000),
            evalsha(&release_sha, format!("{lock_key}__rand_int__"), &[]),
        )
        .run()
        .await?;
        Ok([raw_stampede, raw_lock, raw_release])
    }

    /// Runs the stampede, reads the seat lock counters around it and `xact_commit` once idle
    /// backends have reported (counted from `background_to`), and the seat's reservations.
    async fn run_stampede(&self, background_to: Commits) -> anyhow::Result<StampedeRun> {
        let locks_before = seat_locks(&self.args.reservation_metrics).await?;
        self.start_window();
        let stampede_started = Instant::now();
        let (measured, stampede_schedule) =
            self.stampede_holds(&self.production.reservation).await?;
        let seen = self.sampler.take();
        let locks_after = seat_locks(&self.args.reservation_metrics).await?;
        // Idle backends report their counts up to 10 s late.
        tokio::time::sleep(PG_STATS_DELAY).await;
        let commits_after =
            probe::xact_commit(&self.args.admin_database_url, self.reservation_db()).await?;
        let window_s = stampede_started.elapsed().as_secs_f64();
        let reservations = probe::psql_value(
            &self.args.reservation_database_url,
            &format!(
                "SELECT count(*) || ' ' || coalesce(min(user_id), 0) FROM reservations \
                 WHERE schedule_id = {stampede_schedule}"
            ),
        )
        .await?;
        let (reservation_count, winner) = reservations.split_once(' ').unwrap_or(("?", "?"));
        Ok(StampedeRun {
            measured,
            seen,
            locks: locks_before.until(locks_after),
            commits: commits_after.saturating_sub(background_to.count),
            window_s,
            reservation_count: reservation_count.to_owned(),
            winner: winner.to_owned(),
        })
    }
}

/// `EVALSHA` of the script `sha` on one key, `key`, with the token and then `args` as ARGV.
fn evalsha(sha: &str, key: String, args: &[&str]) -> Vec<String> {
    [
        "EVALSHA".to_owned(),
        sha.to_owned(),
        "1".to_owned(),
        key,
        "bench-token".to_owned(),
    ]
    .into_iter()
    .chain(args.iter().map(|&arg| arg.to_owned()))
    .collect()
}

/// What the stampede left besides its calls.
#[derive(Debug)]
struct StampedeRun {
    measured: Measured,
    /// The sampler's window over the stampede.
    seen: Window,
    /// The service's seat locks over the stampede: acquired, contended, taken marks read in
    /// Redis, taken marks remembered.
    locks: [u64; 4],
    /// Growth of the reservation database's `xact_commit` over the stampede and the
    /// [`PG_STATS_DELAY`] after it.
    commits: u64,
    /// Seconds from the stampede's start until that count.
    window_s: f64,
    /// Reservations of the stampede's seat, and the lowest user among them ("?" when unread).
    reservation_count: String,
    winner: String,
}

/// Who won the stampede, how its losers were answered, and what reached Postgres.
fn stampede_note(
    run: &StampedeRun,
    reservation_db: &str,
    background: u64,
    background_per_s: f64,
) -> String {
    let measured = &run.measured;
    let (winner, reservation_count) = (&run.winner, &run.reservation_count);
    let winners = measured.count(OK);
    let losers = measured.total() - winners;
    let [acquired, contended, taken, taken_remembered] = run.locks;
    format!(
        "stampede: {} winner (user {winner}; the seat has {reservation_count} reservation), \
         {} losers: {} `ABORTED/SEAT_LOCKED` (a hold held the lock: answered from Redis) and \
         {} `ALREADY_EXISTS/SEAT_TAKEN` (the seat's taken mark, or Postgres for a loser that \
         took the lock); other outcomes {}. The service counted {} seat locks acquired (each \
         past the winner's is a loser that ran a Postgres transaction), {} contended, {} taken \
         marks read in Redis and {} answered from the replica's memory of the mark, without \
         Redis. Postgres `xact_commit` of {reservation_db} \
         grew by {} over the stampede and the {} s after it, of which about {} are background \
         (sweeper, reconciler, health probes: {:.1}/s measured before).",
        thousands(winners),
        thousands(losers),
        thousands(measured.count("ABORTED")),
        thousands(measured.count("ALREADY_EXISTS")),
        thousands(losers - measured.count("ABORTED") - measured.count("ALREADY_EXISTS")),
        thousands(acquired),
        thousands(contended),
        thousands(taken),
        thousands(taken_remembered),
        thousands(run.commits),
        PG_STATS_DELAY.as_secs(),
        thousands(background),
        background_per_s,
    )
}

/// The stampede's targets: one winner, no loser in Postgres, the health check's throughput
/// (`health_rate`) and a loser p99 of at most 10 ms.
fn stampede_targets(
    stampede: &Scenario,
    run: &StampedeRun,
    background: u64,
    health_rate: f64,
    loser_p99: u64,
) -> Vec<Target> {
    let winners = run.measured.count(OK);
    let losers = run.measured.total() - winners;
    let reservation_count = &run.reservation_count;
    let losers_in_postgres = run.locks[0].saturating_sub(winners);
    let versus_health = stampede.rate / health_rate.max(f64::EPSILON);
    vec![
        Target {
            what: "stampede: exactly one winner".to_owned(),
            goal: "1".to_owned(),
            measured: format!("{winners} OK, {reservation_count} reservation of the seat"),
            met: winners == 1 && reservation_count == "1",
        },
        Target {
            what: "stampede: losers never reach Postgres".to_owned(),
            goal: "0 losers take the lock".to_owned(),
            measured: format!(
                "{} of {} losers took the lock after its release and ran a transaction \
                 (`xact_commit` +{} incl. ~{} background)",
                thousands(losers_in_postgres),
                thousands(losers),
                thousands(run.commits),
                thousands(background),
            ),
            met: losers_in_postgres == 0,
        },
        Target {
            what: "stampede throughput vs health check RPC".to_owned(),
            goal: "≥ 0.7×".to_owned(),
            measured: format!(
                "{versus_health:.2}× ({} vs {} req/s)",
                thousands(stampede.rate.round() as u64),
                thousands(health_rate.round() as u64)
            ),
            met: versus_health >= 0.7,
        },
        Target {
            what: "stampede: loser p99".to_owned(),
            goal: "≤ 10 ms".to_owned(),
            measured: latency(loser_p99),
            met: loser_p99 <= 10_000,
        },
    ]
}

/// The stampede's latency read against its concurrency. A closed loop keeps every client's
/// call in flight, so its mean latency is clients / rate (Little's law), whatever the server
/// does with each call.
fn stampede_latency_note(stampede: &Scenario, loser_latencies: &Histogram<u64>) -> String {
    format!(
        "stampede latency: each of the {} clients always has a call in flight, so the mean \
         latency is clients / rate = {} (Little's law); a loser p99 of 10 ms at this \
         concurrency would take {} req/s. Loser p50 {}, p99 {}.",
        thousands(STAMPEDE_CLIENTS as u64),
        latency((STAMPEDE_CLIENTS as f64 / stampede.rate.max(f64::EPSILON) * 1e6).round() as u64),
        thousands(STAMPEDE_CLIENTS as u64 * 100),
        latency(loser_latencies.value_at_quantile(0.5)),
        latency(loser_latencies.value_at_quantile(0.99)),
    )
}

/// reservation-svc's seat lock counters, by outcome.
#[derive(Debug, Clone, Copy)]
struct SeatLocks {
    acquired: f64,
    contended: f64,
    taken: f64,
    taken_remembered: f64,
}

impl SeatLocks {
    /// The counts from `self` to `later`.
    fn until(self, later: Self) -> [u64; 4] {
        let grown = |before: f64, after: f64| (after - before).max(0.0).round() as u64;
        [
            grown(self.acquired, later.acquired),
            grown(self.contended, later.contended),
            grown(self.taken, later.taken),
            grown(self.taken_remembered, later.taken_remembered),
        ]
    }
}

async fn seat_locks(metrics_addr: &str) -> anyhow::Result<SeatLocks> {
    let count = async |outcome: &str| {
        probe::scrape(
            metrics_addr,
            &format!("ticketing_seat_lock_total{{outcome=\"{outcome}\"}}"),
        )
        .await
    };
    Ok(SeatLocks {
        acquired: count("acquired").await?,
        contended: count("contended").await?,
        taken: count("taken").await?,
        taken_remembered: count("taken_remembered").await?,
    })
}
