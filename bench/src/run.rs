//! The whole run: each scenario next to its raw baseline, the stampede's checks, the services'
//! memory, and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::baseline::{self, Baseline, Pgbench, RedisBenchmark};
use crate::load::{Measured, OK};
use crate::probe::{self, Machine, RssSampler, Watched};
use crate::report::{Report, Scenario, Target, latency, mebibytes, micros, thousands};
use crate::scenarios;

/// The Lua release of reservation-svc's seat lock (reservation-svc/src/lock.rs).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// How long Postgres may keep an idle backend's statistics before it reports them
/// (`PGSTAT_IDLE_INTERVAL`, 10 s), plus a margin.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);

/// Users of each scenario, in ranges that never meet.
const HOT_USER: i64 = 1_000_000;
const SPREAD_FIRST_USER: i64 = 1;
const PAYMENT_FIRST_USER: i64 = 2_000_001;
const RAW_HOT_USER: i64 = 900_000_001;
const RAW_SPREAD_FIRST_USER: i64 = 900_100_001;

const WALLET: &str = "wallet-svc";
const RESERVATION: &str = "reservation-svc";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// wallet-svc, e.g. `http://127.0.0.1:50052`.
    #[arg(long)]
    wallet: String,
    /// reservation-svc, e.g. `http://127.0.0.1:50051`.
    #[arg(long)]
    reservation: String,
    /// reservation-svc's metrics address (`host:port`), for its seat lock counters.
    #[arg(long)]
    reservation_metrics: String,
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
}

/// Request counts at scale 1, sized to finish within a few minutes on two cores.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    health: u64,
    hot_uses: u64,
    spread_uses: u64,
    spread_users: u64,
    stampede: u64,
    distinct_holds: u64,
    seats: i32,
    payments: u64,
    payment_users: u64,
    redis: u64,
}

impl Sizes {
    fn scaled(scale: f64) -> Self {
        let scaled = |count: u64| ((count as f64 * scale).round() as u64).max(1);
        Self {
            health: scaled(50_000),
            hot_uses: scaled(10_000),
            spread_uses: scaled(20_000),
            spread_users: 10_000,
            stampede: scaled(10_000),
            distinct_holds: scaled(30_000).min(100_000),
            seats: 100_000,
            payments: scaled(5_000),
            payment_users: 1_000,
            redis: scaled(100_000),
        }
    }
}

/// Clients of the wallet, distinct-seat and payment scenarios, and of their baselines.
const CLIENTS: usize = 64;
/// Connections of the pgbench baselines: as many as each service's pool (`DB_POOL_SIZE`), so
/// that Postgres runs as many of their transactions at once as of the service's (and the
/// shared server's `max_connections` of 100 has room for them next to the services).
const PGBENCH_CLIENTS: usize = 16;
/// Clients of the stampede and of the health checks it is compared with.
const STAMPEDE_CLIENTS: usize = 1_000;

/// A time-based id that keeps this run's idempotency keys apart from any other run's.
pub fn run_id() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = probe::load_average();
    let sizes = Sizes::scaled(args.scale);
    let run_id = run_id();
    let work_dir = args.work_dir.join(&run_id);
    let machine =
        Machine::describe(&args.admin_database_url, &args.redis_host, args.redis_port).await;
    let wallet = scenarios::connect(std::slice::from_ref(&args.wallet), args.connections).await?;
    let reservation =
        scenarios::connect(std::slice::from_ref(&args.reservation), args.connections).await?;
    let sampler = RssSampler::start(vec![
        Watched {
            name: WALLET,
            pid: args.wallet_pid,
        },
        Watched {
            name: RESERVATION,
            pid: args.reservation_pid,
        },
    ]);
    let reservation_db = database_name(&args.reservation_database_url);
    let mut scenarios_done: Vec<Scenario> = Vec::new();
    let mut baselines: Vec<Baseline> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // (e) The gRPC floor: the cheapest call, at the stampede's concurrency.
    sampler.take();
    let measured = scenarios::health(&reservation, sizes.health, STAMPEDE_CLIENTS).await?;
    let mut health = Scenario::new(
        "health",
        "(e) health check RPC",
        &measured,
        STAMPEDE_CLIENTS,
        args.connections,
        None,
        "req/s",
        None,
    );
    health.observe(&sampler.take(), &[RESERVATION]);
    health.note_outcomes();
    let health_rate = health.rate;
    scenarios_done.push(health);
    // The reservation database sees only background work (sweeper, reconciler, health probes)
    // until the stampede: its rate tells how much of the stampede's count is background.
    let background_from = (
        Instant::now(),
        probe::xact_commit(&args.admin_database_url, reservation_db).await?,
    );

    // Raw fixtures: wallets of the pgbench runs, and a schedule of their own for the holds.
    probe::psql_value(
        &args.wallet_database_url,
        &format!(
            "INSERT INTO wallets (user_id, balance) \
             SELECT user_id, 1000000000 FROM generate_series({RAW_HOT_USER}, {RAW_HOT_USER}) AS user_id \
             UNION ALL \
             SELECT user_id, 1000000000 FROM generate_series({RAW_SPREAD_FIRST_USER}, {}) AS user_id",
            RAW_SPREAD_FIRST_USER + i64::try_from(sizes.spread_users)? - 1
        ),
    )
    .await?;
    let raw_schedule = probe::psql_value(
        &args.reservation_database_url,
        &format!(
            "WITH concert AS (INSERT INTO concerts (title) VALUES ('Raw baseline') RETURNING id), \
             schedule AS ( \
                 INSERT INTO schedules (concert_id, starts_at, seat_count, seat_price) \
                 SELECT id, now() + interval '30 days', {}, 0 FROM concert RETURNING * \
             ), \
             created_seats AS ( \
                 INSERT INTO seats (schedule_id, seat_no, price) \
                 SELECT schedule.id, seat_no, schedule.seat_price \
                 FROM schedule, generate_series(1, schedule.seat_count) AS seat_no \
             ) \
             SELECT id FROM schedule",
            sizes.seats
        ),
    )
    .await?;

    // (a) One hot wallet row.
    let raw_hot = Pgbench {
        key: "pgbench-wallet-hot",
        name: "pgbench `Use` SQL, one row",
        database_url: &args.wallet_database_url,
        script_name: "wallet_use.sql",
        script: baseline::WALLET_USE_SQL,
        clients: PGBENCH_CLIENTS,
        transactions_per_client: sizes.hot_uses.div_ceil(PGBENCH_CLIENTS as u64),
        variables: vec![
            ("first_user", RAW_HOT_USER.to_string()),
            ("users", "1".to_owned()),
        ],
        work_dir: &work_dir,
    }
    .run()
    .await?;
    scenarios::charge_users(&wallet, HOT_USER, 1, 1_000_000_000, &run_id).await?;
    sampler.take();
    let measured = scenarios::wallet_uses(
        "hot wallet",
        &wallet,
        sizes.hot_uses,
        CLIENTS,
        HOT_USER,
        1,
        &run_id,
    )
    .await?;
    let mut hot = Scenario::new(
        "hot-wallet",
        "(a) hot wallet: `Use` 1 point, one user",
        &measured,
        CLIENTS,
        args.connections,
        Some(&[OK]),
        "req/s",
        None,
    );
    hot.observe(&sampler.take(), &[WALLET]);
    hot.against(&raw_hot);
    hot.note_outcomes();
    targets.push(ratio_target(
        "hot wallet `Use` vs raw pgbench, one row",
        &hot,
        &raw_hot,
        5.0,
    ));
    scenarios_done.push(hot);
    baselines.push(raw_hot);

    // (b) The same over many users.
    let raw_spread = Pgbench {
        key: "pgbench-wallet-spread",
        name: "pgbench `Use` SQL, 10,000 rows",
        database_url: &args.wallet_database_url,
        script_name: "wallet_use.sql",
        script: baseline::WALLET_USE_SQL,
        clients: PGBENCH_CLIENTS,
        transactions_per_client: sizes.spread_uses.div_ceil(PGBENCH_CLIENTS as u64),
        variables: vec![
            ("first_user", RAW_SPREAD_FIRST_USER.to_string()),
            ("users", sizes.spread_users.to_string()),
        ],
        work_dir: &work_dir,
    }
    .run()
    .await?;
    let per_user = i64::try_from(sizes.spread_uses.div_ceil(sizes.spread_users))? + 1;
    scenarios::charge_users(
        &wallet,
        SPREAD_FIRST_USER,
        sizes.spread_users,
        per_user,
        &run_id,
    )
    .await?;
    sampler.take();
    let measured = scenarios::wallet_uses(
        "spread wallet",
        &wallet,
        sizes.spread_uses,
        CLIENTS,
        SPREAD_FIRST_USER,
        sizes.spread_users,
        &run_id,
    )
    .await?;
    let mut spread = Scenario::new(
        "spread-wallet",
        "(b) spread wallet: `Use` 1 point, 10,000 users",
        &measured,
        CLIENTS,
        args.connections,
        Some(&[OK]),
        "req/s",
        None,
    );
    spread.observe(&sampler.take(), &[WALLET]);
    spread.against(&raw_spread);
    spread.note_outcomes();
    scenarios_done.push(spread);
    baselines.push(raw_spread);

    // The Redis side of a hold: SET NX PX (with GET, as the service sends it) and the release.
    let lock_key = format!("{}raw:seat:{{0}}:", args.redis_prefix);
    let set_nx = |key: String| {
        vec![
            "SET".to_owned(),
            key,
            "bench-token".to_owned(),
            "NX".to_owned(),
            "PX".to_owned(),
            "3000".to_owned(),
            "GET".to_owned(),
        ]
    };
    let raw_stampede = RedisBenchmark {
        key: "redis-set-nx-one-key",
        name: "redis-benchmark `SET NX PX GET`, one key",
        host: &args.redis_host,
        port: args.redis_port,
        clients: STAMPEDE_CLIENTS,
        requests: sizes.redis,
        keyspace: None,
        command: set_nx(format!("{lock_key}1")),
    }
    .run()
    .await?;
    let raw_lock = RedisBenchmark {
        key: "redis-set-nx",
        name: "redis-benchmark `SET NX PX GET`, distinct keys",
        host: &args.redis_host,
        port: args.redis_port,
        clients: CLIENTS,
        requests: sizes.redis,
        keyspace: Some(1_000_000),
        command: set_nx(format!("{lock_key}__rand_int__")),
    }
    .run()
    .await?;
    let release_sha =
        baseline::redis_script_load(&args.redis_host, args.redis_port, RELEASE_SCRIPT).await?;
    let raw_release = RedisBenchmark {
        key: "redis-release",
        name: "redis-benchmark Lua release (`EVALSHA`)",
        host: &args.redis_host,
        port: args.redis_port,
        clients: CLIENTS,
        requests: sizes.redis,
        keyspace: Some(1_000_000),
        command: vec![
            "EVALSHA".to_owned(),
            release_sha,
            "1".to_owned(),
            format!("{lock_key}__rand_int__"),
            "bench-token".to_owned(),
        ],
    }
    .run()
    .await?;

    // (c) Stampede: one seat, many clients.
    let background_to = (
        Instant::now(),
        probe::xact_commit(&args.admin_database_url, reservation_db).await?,
    );
    let background_per_s = (background_to.1.saturating_sub(background_from.1)) as f64
        / background_to
            .0
            .duration_since(background_from.0)
            .as_secs_f64()
            .max(1.0);
    let locks_before = seat_locks(&args.reservation_metrics).await?;
    sampler.take();
    let stampede_started = Instant::now();
    let (measured, stampede_schedule) =
        scenarios::stampede(&reservation, sizes.stampede, STAMPEDE_CLIENTS).await?;
    let stampede_seen = sampler.take();
    let locks_after = seat_locks(&args.reservation_metrics).await?;
    // Idle backends report their counts up to 10 s late.
    tokio::time::sleep(PG_STATS_DELAY).await;
    let commits_after = probe::xact_commit(&args.admin_database_url, reservation_db).await?;
    let stampede_window = stampede_started.elapsed().as_secs_f64();
    let commits = commits_after.saturating_sub(background_to.1);
    let reservations = probe::psql_value(
        &args.reservation_database_url,
        &format!(
            "SELECT count(*) || ' ' || coalesce(min(user_id), 0) FROM reservations \
             WHERE schedule_id = {stampede_schedule}"
        ),
    )
    .await?;
    let (reservation_count, winner) = reservations.split_once(' ').unwrap_or(("?", "?"));
    let mut stampede = Scenario::new(
        "stampede",
        "(c) stampede: `HoldSeat` of one seat",
        &measured,
        STAMPEDE_CLIENTS,
        args.connections,
        None,
        "req/s",
        None,
    );
    stampede.observe(&stampede_seen, &[RESERVATION]);
    stampede.against(&raw_stampede);
    let winners = measured.count(OK);
    let losers = measured.total() - winners;
    let loser_latencies = measured.latencies(Some(&["ABORTED", "ALREADY_EXISTS"]));
    let [acquired, contended, taken, taken_remembered] = locks_before.until(locks_after);
    let background = (background_per_s * stampede_window).round() as u64;
    stampede.notes.push(format!(
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
        thousands(commits),
        PG_STATS_DELAY.as_secs(),
        thousands(background),
        background_per_s,
    ));
    targets.push(Target {
        what: "stampede: exactly one winner".to_owned(),
        goal: "1".to_owned(),
        measured: format!("{winners} OK, {reservation_count} reservation of the seat"),
        met: winners == 1 && reservation_count == "1",
    });
    let losers_in_postgres = acquired.saturating_sub(winners);
    targets.push(Target {
        what: "stampede: losers never reach Postgres".to_owned(),
        goal: "0 losers take the lock".to_owned(),
        measured: format!(
            "{} of {} losers took the lock after its release and ran a transaction \
             (`xact_commit` +{} incl. ~{} background)",
            thousands(losers_in_postgres),
            thousands(losers),
            thousands(commits),
            thousands(background),
        ),
        met: losers_in_postgres == 0,
    });
    let versus_health = stampede.rate / health_rate.max(f64::EPSILON);
    targets.push(Target {
        what: "stampede throughput vs health check RPC".to_owned(),
        goal: "≥ 0.7×".to_owned(),
        measured: format!(
            "{versus_health:.2}× ({} vs {} req/s)",
            thousands(stampede.rate.round() as u64),
            thousands(health_rate.round() as u64)
        ),
        met: versus_health >= 0.7,
    });
    let loser_p99 = loser_latencies.value_at_quantile(0.99);
    // A closed loop keeps every client's call in flight, so its mean latency is clients / rate
    // (Little's law), whatever the server does with each call.
    stampede.notes.push(format!(
        "stampede latency: each of the {} clients always has a call in flight, so the mean \
         latency is clients / rate = {} (Little's law); a loser p99 of 10 ms at this \
         concurrency would take {} req/s. Loser p50 {}, p99 {}.",
        thousands(STAMPEDE_CLIENTS as u64),
        latency((STAMPEDE_CLIENTS as f64 / stampede.rate.max(f64::EPSILON) * 1e6).round() as u64),
        thousands(STAMPEDE_CLIENTS as u64 * 100),
        latency(loser_latencies.value_at_quantile(0.5)),
        latency(loser_p99),
    ));
    targets.push(Target {
        what: "stampede: loser p99".to_owned(),
        goal: "≤ 10 ms".to_owned(),
        measured: latency(loser_p99),
        met: loser_p99 <= 10_000,
    });
    scenarios_done.push(stampede);
    baselines.extend([raw_stampede, raw_lock, raw_release]);

    // (d) Holds of distinct seats.
    let raw_holds = Pgbench {
        key: "pgbench-hold",
        name: "pgbench `HoldSeat` SQL, distinct seats",
        database_url: &args.reservation_database_url,
        script_name: "hold_seat.sql",
        script: baseline::HOLD_SEAT_SQL,
        clients: PGBENCH_CLIENTS,
        transactions_per_client: sizes.distinct_holds / PGBENCH_CLIENTS as u64,
        variables: vec![
            ("schedule_id", raw_schedule.clone()),
            ("seat_count", sizes.seats.to_string()),
        ],
        work_dir: &work_dir,
    }
    .run()
    .await?;
    let measured = scenarios::distinct_seats(
        &reservation,
        sizes.distinct_holds,
        CLIENTS,
        sizes.seats,
        || drop(sampler.take()),
    )
    .await?;
    let mut distinct = Scenario::new(
        "distinct-seats",
        "(d) distinct seats: `HoldSeat` over 100,000 seats",
        &measured,
        CLIENTS,
        args.connections,
        Some(&[OK]),
        "req/s",
        None,
    );
    distinct.observe(&sampler.take(), &[RESERVATION]);
    distinct.against(&raw_holds);
    distinct.note_outcomes();
    targets.push(ratio_target(
        "distinct-seat holds vs raw pgbench of the same SQL",
        &distinct,
        &raw_holds,
        0.8,
    ));
    let cpu = &distinct.cpu_per_request;
    let process_us = |name: &str| cpu.by_process_us.get(name).copied().unwrap_or(0.0);
    let (service_us, harness_us) = (process_us(RESERVATION), process_us(probe::HARNESS));
    notes.push(format!(
        "distinct seats: every core busy, so the rate follows the CPU each hold costs the \
         machine: {} through the service against {} for pgbench's statement. Of the service's, \
         reservation-svc {} and the load generator {}; the other {} are Postgres, Redis and the \
         kernel (loopback TCP, scheduling), where pgbench spends its {} on Postgres and its own \
         client.",
        micros(cpu.machine_us),
        micros(raw_holds.machine_cpu_us),
        micros(service_us),
        micros(harness_us),
        micros((cpu.machine_us - service_us - harness_us).max(0.0)),
        micros(raw_holds.machine_cpu_us),
    ));
    scenarios_done.push(distinct);
    baselines.push(raw_holds);

    // (f) The whole payment flow.
    let measured: Measured = scenarios::payments(
        &reservation,
        &wallet,
        sizes.payments,
        CLIENTS,
        PAYMENT_FIRST_USER,
        sizes.payment_users,
        &run_id,
        || drop(sampler.take()),
    )
    .await?;
    let mut payments = Scenario::new(
        "payments",
        "(f) payment flow: `HoldSeat` + `PayReservation`",
        &measured,
        CLIENTS,
        args.connections,
        Some(&[OK]),
        "paid/s",
        Some(&[OK]),
    );
    payments.observe(&sampler.take(), &[RESERVATION, WALLET]);
    payments.note_outcomes();
    scenarios_done.push(payments);
    notes.push(
        "(f) has no raw baseline: a payment is a hold, three reservation transactions and a \
         wallet `Use` across two services; its latency is that of a hold + pay pair."
            .to_owned(),
    );
    notes.push(format!(
        "Each service runs at most `DB_POOL_SIZE` (default 16) transactions at once and queues \
         the other calls for a connection; the pgbench baselines run {PGBENCH_CLIENTS} \
         connections, each with one transaction at a time."
    ));

    // Memory: the high-water mark of each service over the whole run.
    let mut service_peak_rss_kib = BTreeMap::new();
    for (name, pid) in [
        (WALLET, args.wallet_pid),
        (RESERVATION, args.reservation_pid),
    ] {
        let peak = probe::proc_status_kib(pid, "VmHWM").unwrap_or(0);
        targets.push(Target {
            what: format!("peak RSS of {name} (VmHWM)"),
            goal: "≤ 64 MiB".to_owned(),
            measured: mebibytes(peak),
            met: peak > 0 && peak <= 64 * 1024,
        });
        service_peak_rss_kib.insert(name.to_owned(), peak);
    }
    notes.push(format!(
        "Request counts at scale {}: health {}, hot wallet {}, spread wallet {} (10,000 users \
         charged first, not timed), stampede {}, distinct seats {} of a 100,000-seat schedule, \
         payments {} (1,000 users charged first, not timed); clients {} (stampede and health \
         {}), {} HTTP/2 connections to each service. Latencies are per call, in an HDR \
         histogram of microseconds. The pgbench baselines use prepared statements, {} \
         connections and 2 threads, and run the statements in bench/sql/. Load average of \
         the machine: {} before the run, {} at its end.",
        args.scale,
        thousands(sizes.health),
        thousands(sizes.hot_uses),
        thousands(sizes.spread_uses),
        thousands(sizes.stampede),
        thousands(sizes.distinct_holds),
        thousands(sizes.payments),
        CLIENTS,
        thousands(STAMPEDE_CLIENTS as u64),
        args.connections,
        PGBENCH_CLIENTS,
        load_before,
        probe::load_average(),
    ));

    let report = Report {
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: args.command_line.clone(),
        revision: args.revision.clone(),
        machine,
        scale: args.scale,
        duration_s: started.elapsed().as_secs_f64(),
        scenarios: scenarios_done,
        baselines,
        service_peak_rss_kib,
        targets,
        notes,
    };
    report.write(&args.out_dir)?;
    if let Some(readme) = &args.readme {
        report.update_readme(readme)?;
    }
    println!("{}", report.markdown());
    Ok(())
}

/// The target that a scenario's rate is at least `factor` times its baseline's.
fn ratio_target(what: &str, scenario: &Scenario, baseline: &Baseline, factor: f64) -> Target {
    let ratio = scenario.ratio.unwrap_or(0.0);
    Target {
        what: what.to_owned(),
        goal: format!("≥ {factor}×"),
        measured: format!(
            "{ratio:.2}× ({} vs {} /s)",
            thousands(scenario.rate.round() as u64),
            thousands(baseline.rate.round() as u64)
        ),
        met: ratio >= factor,
    }
}

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
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
