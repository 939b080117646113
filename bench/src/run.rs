//! The whole run: each scenario next to its raw baseline, the stampede's checks, the services'
//! memory, and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reservation_svc::lock::{RELEASE_SCRIPT, acquire_script};
use reservation_svc::store::CREATE_SCHEDULE_SQL;

use crate::abuse::{self, Abuse};
use crate::access::{Access, Caller, Service};
use crate::baseline::{self, Baseline, Pgbench, RedisBenchmark};
use crate::load::{Measured, OK};
use crate::payment_baseline;
use crate::probe::{self, Machine, RssSampler, Watched, Window};
use crate::report::{Comparison, Report, Scenario, Target, latency, mebibytes, micros, thousands};
use crate::scenarios;
use crate::tls_cost::{self, Side};

/// How long Postgres may keep an idle backend's statistics before it reports them
/// (`PGSTAT_IDLE_INTERVAL`, 10 s), plus a margin.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);

/// Users of each scenario, in ranges that never meet.
const HOT_USER: i64 = 1_000_000;
const SPREAD_FIRST_USER: i64 = 1;
const PAYMENT_FIRST_USER: i64 = 2_000_001;
const RAW_HOT_USER: i64 = 900_000_001;
const RAW_SPREAD_FIRST_USER: i64 = 900_100_001;
const RAW_PAYMENT_FIRST_USER: i64 = 900_200_001;

/// The seat lock's TTL in the Redis baselines, in ms: reservation-svc's default
/// (`SEAT_LOCK_TTL`, 3 s).
const LOCK_TTL_MS: &str = "3000";
/// The deadline the Redis baselines give the acquire script, in ms since the Unix epoch
/// (2100-01-01): always ahead of Redis's clock, so the script writes as it does for a hold that
/// is in time.
const FAR_DEADLINE_MS: &str = "4102444800000";

/// The key of scenario (d), distinct seats.
const DISTINCT_SEATS: &str = "distinct-seats";

const WALLET: &str = "wallet-svc";
const RESERVATION: &str = "reservation-svc";
/// The plaintext pair, as the CPU breakdowns name them.
const PLAINTEXT_WALLET: &str = "wallet-svc (plaintext)";
const PLAINTEXT_RESERVATION: &str = "reservation-svc (plaintext)";
/// The reservation-svc whose seat locks are in Postgres.
const DEGRADED_RESERVATION: &str = "reservation-svc (locks in Postgres)";

/// Rounds of each side in the comparisons of production with plaintext: five for the
/// scenarios that take a second or two, whose single runs swing with the machine's other work;
/// one for those of ten seconds or more.
const SHORT_SCENARIO_ROUNDS: usize = 5;
const LONG_SCENARIO_ROUNDS: usize = 1;

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

/// One wallet scenario and its raw baseline.
struct WalletRun {
    /// What the progress line calls it.
    label: &'static str,
    key: &'static str,
    name: &'static str,
    baseline_key: &'static str,
    baseline_name: &'static str,
    uses: u64,
    users: u64,
    first_user: i64,
    raw_first_user: i64,
    /// Points each user is charged with before the clock runs.
    charge_each: i64,
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
/// Connections of each side of the payment baselines: with the services' pools open, the
/// shared server's 100 connections leave room for no more.
const PAYMENT_PGBENCH_CLIENTS: usize = 8;
/// Clients of the stampede and of the health checks it is compared with.
const STAMPEDE_CLIENTS: usize = 1_000;

/// A time-based id that keeps this run's idempotency keys apart from any other run's.
pub fn run_id() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

/// Sets up, runs every scenario with its raw baselines in order, and writes the report.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_before = probe::load_average();
    let (bench, machine) = Bench::set_up(args).await?;
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
    // Last, so that what the attacks leave in the plaintext reservation-svc's memory (its
    // allocator keeps some) weighs on no other scenario.
    let abuse = bench.abuse().await?;
    let (service_peak_rss_kib, memory_targets) = bench.peak_rss();
    let counts = bench.counts_note(&load_before);

    let mut report = Report {
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: bench.args.command_line.clone(),
        revision: bench.args.revision.clone(),
        machine,
        scale: bench.args.scale,
        duration_s: started.elapsed().as_secs_f64(),
        scenarios: Vec::new(),
        baselines: Vec::new(),
        tls_cost: Vec::new(),
        abuse: None,
        service_peak_rss_kib,
        targets: Vec::new(),
        notes: Vec::new(),
    };
    for result in [health, hot, spread, stampede, distinct]
        .into_iter()
        .chain(degraded)
        .chain([payments])
    {
        report.scenarios.push(result.scenario);
        report.baselines.extend(result.baselines);
        report.targets.extend(result.targets);
        report.notes.extend(result.notes);
    }
    for comparison in [hot_cost, stampede_cost, distinct_cost, payments_cost]
        .into_iter()
        .flatten()
    {
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
    report.write(&bench.args.out_dir)?;
    if let Some(readme) = &bench.args.readme {
        report.update_readme(readme)?;
    }
    println!("{}", report.markdown());
    Ok(())
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
        Self {
            scenario,
            baselines: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// `xact_commit` of a database, and when it was read.
#[derive(Debug, Clone, Copy)]
struct Commits {
    at: Instant,
    count: u64,
}

/// A wallet-svc and the reservation-svc that pays through it, and the names the sampler knows
/// them by.
#[derive(Debug)]
struct Pair {
    /// wallet-svc for users and operators (charges).
    wallet: Service,
    /// wallet-svc as reservation-svc calls it, for the `Use`s.
    payer: Service,
    reservation: Service,
    wallet_name: &'static str,
    reservation_name: &'static str,
}

/// What every scenario runs with: the arguments, the request counts, this run's id and
/// scratch space, connections to the services, and the sampler of their memory and CPU.
#[derive(Debug)]
struct Bench {
    args: RunArgs,
    sizes: Sizes,
    run_id: String,
    work_dir: PathBuf,
    /// The services the scenarios measure, as production runs them (or as `--pki` says).
    production: Pair,
    /// The pair run with `INSECURE` that the production pair is compared with, if any.
    plaintext: Option<Pair>,
    /// The production reservation-svc's twin whose seat locks are in Postgres, if any.
    degraded: Option<Service>,
    /// The plaintext pair's rounds of those comparisons: (d)'s is the abuse scenario's run
    /// without attack.
    plaintext_rounds: Mutex<Vec<Scenario>>,
    sampler: RssSampler,
}

impl Bench {
    /// Connects to both services and starts sampling them; also describes the machine.
    async fn set_up(args: RunArgs) -> anyhow::Result<(Self, Machine)> {
        let sizes = Sizes::scaled(args.scale);
        let run_id = run_id();
        let work_dir = args.work_dir.join(&run_id);
        let machine =
            Machine::describe(&args.admin_database_url, &args.redis_host, args.redis_port).await;
        let connect = async |addr: &String, access: &Access, caller: Caller| {
            Service::connect(std::slice::from_ref(addr), args.connections, access, caller).await
        };
        let production = Pair {
            wallet: connect(&args.wallet, &args.access, Caller::Users).await?,
            payer: connect(&args.wallet, &args.access, Caller::PaymentService).await?,
            reservation: connect(&args.reservation, &args.access, Caller::Users).await?,
            wallet_name: WALLET,
            reservation_name: RESERVATION,
        };
        let mut watched = vec![
            Watched {
                name: WALLET,
                pid: args.wallet_pid,
            },
            Watched {
                name: RESERVATION,
                pid: args.reservation_pid,
            },
        ];
        let plaintext = match (&args.plaintext_wallet, &args.plaintext_reservation) {
            (Some(wallet), Some(reservation)) => {
                watched.extend([
                    Watched {
                        name: PLAINTEXT_WALLET,
                        pid: args.plaintext_wallet_pid.unwrap_or(0),
                    },
                    Watched {
                        name: PLAINTEXT_RESERVATION,
                        pid: args.plaintext_reservation_pid.unwrap_or(0),
                    },
                ]);
                let plain = Access::default();
                Some(Pair {
                    wallet: connect(wallet, &plain, Caller::Users).await?,
                    payer: connect(wallet, &plain, Caller::PaymentService).await?,
                    reservation: connect(reservation, &plain, Caller::Users).await?,
                    wallet_name: PLAINTEXT_WALLET,
                    reservation_name: PLAINTEXT_RESERVATION,
                })
            }
            _ => None,
        };
        let degraded = match (&args.degraded_reservation, args.degraded_reservation_pid) {
            (Some(addr), Some(pid)) => {
                watched.push(Watched {
                    name: DEGRADED_RESERVATION,
                    pid,
                });
                Some(connect(addr, &args.access, Caller::Users).await?)
            }
            _ => None,
        };
        let sampler = RssSampler::start(watched);
        let bench = Self {
            args,
            sizes,
            run_id,
            work_dir,
            production,
            plaintext,
            degraded,
            plaintext_rounds: Mutex::default(),
            sampler,
        };
        Ok((bench, machine))
    }

    fn reservation_db(&self) -> &str {
        database_name(&self.args.reservation_database_url)
    }

    /// `xact_commit` of the reservation database now.
    async fn reservation_commits(&self) -> anyhow::Result<Commits> {
        Ok(Commits {
            at: Instant::now(),
            count: probe::xact_commit(&self.args.admin_database_url, self.reservation_db()).await?,
        })
    }

    /// Raw fixtures: wallets of the pgbench runs, and a schedule of their own for the holds,
    /// whose id this returns.
    async fn raw_fixtures(&self) -> anyhow::Result<String> {
        probe::psql_value(
            &self.args.wallet_database_url,
            &format!(
                "INSERT INTO wallets (user_id, balance) \
                 SELECT user_id, 1000000000 FROM generate_series({RAW_HOT_USER}, {RAW_HOT_USER}) AS user_id \
                 UNION ALL \
                 SELECT user_id, 1000000000 FROM generate_series({RAW_SPREAD_FIRST_USER}, {}) AS user_id",
                RAW_SPREAD_FIRST_USER + i64::try_from(self.sizes.spread_users)? - 1
            ),
        )
        .await?;
        create_raw_schedule(&self.args.reservation_database_url, self.sizes.seats).await
    }

    /// (e) The gRPC floor: the cheapest call, at the stampede's concurrency.
    async fn health(&self) -> anyhow::Result<ScenarioResult> {
        self.sampler.take();
        let measured = scenarios::health(
            &self.production.reservation,
            self.sizes.health,
            STAMPEDE_CLIENTS,
        )
        .await?;
        let mut health = Scenario::new(
            "health",
            "(e) health check RPC",
            &measured,
            STAMPEDE_CLIENTS,
            self.args.connections,
            None,
            "req/s",
            None,
        );
        health.observe(&self.sampler.take(), &[RESERVATION]);
        health.note_outcomes();
        Ok(ScenarioResult::alone(health))
    }

    /// pgbench of wallet-svc's `Use` SQL: `uses` transactions in all, over the raw wallets
    /// `first_user..first_user + users`.
    async fn wallet_baseline(
        &self,
        key: &str,
        name: &str,
        uses: u64,
        first_user: i64,
        users: u64,
    ) -> anyhow::Result<Baseline> {
        Pgbench {
            key,
            name,
            database_url: &self.args.wallet_database_url,
            script_name: "wallet_use.sql",
            script: baseline::WALLET_USE_SQL,
            clients: PGBENCH_CLIENTS,
            transactions_per_client: uses.div_ceil(PGBENCH_CLIENTS as u64),
            variables: vec![
                ("first_user", first_user.to_string()),
                ("users", users.to_string()),
            ],
            work_dir: &self.work_dir,
        }
        .run()
        .await
    }

    /// (a) One hot wallet row.
    async fn hot_wallet(&self) -> anyhow::Result<ScenarioResult> {
        let (hot, raw_hot) = self
            .wallet_scenario(WalletRun {
                label: "hot wallet",
                key: "hot-wallet",
                name: "(a) hot wallet: `Use` 1 point, one user",
                baseline_key: "pgbench-wallet-hot",
                baseline_name: "pgbench `Use` SQL, one row",
                uses: self.sizes.hot_uses,
                users: 1,
                first_user: HOT_USER,
                raw_first_user: RAW_HOT_USER,
                charge_each: 1_000_000_000,
            })
            .await?;
        let target = ratio_target(
            "hot wallet `Use` vs raw pgbench, one row",
            &hot,
            &raw_hot,
            5.0,
        );
        Ok(ScenarioResult {
            scenario: hot,
            baselines: vec![raw_hot],
            targets: vec![target],
            notes: Vec::new(),
        })
    }

    /// (b) The same over many users.
    async fn spread_wallet(&self) -> anyhow::Result<ScenarioResult> {
        let (uses, users) = (self.sizes.spread_uses, self.sizes.spread_users);
        let (spread, raw_spread) = self
            .wallet_scenario(WalletRun {
                label: "spread wallet",
                key: "spread-wallet",
                name: "(b) spread wallet: `Use` 1 point, 10,000 users",
                baseline_key: "pgbench-wallet-spread",
                baseline_name: "pgbench `Use` SQL, 10,000 rows",
                uses,
                users,
                first_user: SPREAD_FIRST_USER,
                raw_first_user: RAW_SPREAD_FIRST_USER,
                charge_each: i64::try_from(uses.div_ceil(users))? + 1,
            })
            .await?;
        Ok(ScenarioResult {
            scenario: spread,
            baselines: vec![raw_spread],
            targets: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// A wallet scenario: its raw baseline first, then its users charged (not timed), then
    /// `uses` uses of 1 point spread over them, measured.
    async fn wallet_scenario(&self, run: WalletRun) -> anyhow::Result<(Scenario, Baseline)> {
        let raw = self
            .wallet_baseline(
                run.baseline_key,
                run.baseline_name,
                run.uses,
                run.raw_first_user,
                run.users,
            )
            .await?;
        scenarios::charge_users(
            &self.production.wallet,
            run.first_user,
            run.users,
            run.charge_each,
            &self.run_id,
        )
        .await?;
        self.sampler.take();
        let measured = scenarios::wallet_uses(
            run.label,
            &self.production.payer,
            run.uses,
            CLIENTS,
            run.first_user,
            run.users,
            &self.run_id,
        )
        .await?;
        let mut scenario = Scenario::new(
            run.key,
            run.name,
            &measured,
            CLIENTS,
            self.args.connections,
            Some(&[OK]),
            "req/s",
            None,
        );
        scenario.observe(&self.sampler.take(), &[WALLET]);
        scenario.against(&raw);
        scenario.note_outcomes();
        Ok((scenario, raw))
    }

    /// The Redis side of a hold, as reservation-svc runs it: its Lua acquire of the seat lock
    /// (`EVALSHA` of `acquire_script()`, on one key and on distinct keys) and its Lua release.
    async fn redis_baselines(&self) -> anyhow::Result<[Baseline; 3]> {
        let (host, port) = (self.args.redis_host.as_str(), self.args.redis_port);
        let lock_key = format!("{}raw:seat:{{0}}:", self.args.redis_prefix);
        let acquire_sha = baseline::redis_script_load(host, port, &acquire_script()).await?;
        // KEYS[1] the seat's key; ARGV the token, the TTL and the deadline.
        let acquire = |key: String| {
            vec![
                "EVALSHA".to_owned(),
                acquire_sha.clone(),
                "1".to_owned(),
                key,
                "bench-token".to_owned(),
                LOCK_TTL_MS.to_owned(),
                FAR_DEADLINE_MS.to_owned(),
            ]
        };
        let raw_stampede = RedisBenchmark {
            key: "redis-acquire-one-key",
            name: "redis-benchmark Lua acquire (`EVALSHA`), one key",
            host,
            port,
            clients: STAMPEDE_CLIENTS,
            requests: self.sizes.redis,
            keyspace: None,
            command: acquire(format!("{lock_key}1")),
        }
        .run()
        .await?;
        let raw_lock = RedisBenchmark {
            key: "redis-acquire",
            name: "redis-benchmark Lua acquire (`EVALSHA`), distinct keys",
            host,
            port,
            clients: CLIENTS,
            requests: self.sizes.redis,
            keyspace: Some(1_000_000),
            command: acquire(format!("{lock_key}__rand_int__")),
        }
        .run()
        .await?;
        let release_sha = baseline::redis_script_load(host, port, RELEASE_SCRIPT).await?;
        let raw_release = RedisBenchmark {
            key: "redis-release",
            name: "redis-benchmark Lua release (`EVALSHA`)",
            host,
            port,
            clients: CLIENTS,
            requests: self.sizes.redis,
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
        Ok([raw_stampede, raw_lock, raw_release])
    }

    /// (c) Stampede: one seat, many clients, compared with the Redis side of a hold (run raw
    /// first) and with the health check's `health_rate`. The reservation database's commits
    /// from `background_from` until the stampede are background work, at a rate that tells how
    /// much of the stampede's count is background too.
    async fn stampede(
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
        let mut stampede = Scenario::new(
            "stampede",
            "(c) stampede: `HoldSeat` of one seat",
            &run.measured,
            STAMPEDE_CLIENTS,
            self.args.connections,
            None,
            "req/s",
            None,
        );
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
        Ok(ScenarioResult {
            scenario: stampede,
            baselines: raw.into(),
            targets,
            notes: Vec::new(),
        })
    }

    /// Runs the stampede, reads the seat lock counters around it and `xact_commit` once idle
    /// backends have reported (counted from `background_to`), and the seat's reservations.
    async fn run_stampede(&self, background_to: Commits) -> anyhow::Result<StampedeRun> {
        let locks_before = seat_locks(&self.args.reservation_metrics).await?;
        self.sampler.take();
        let stampede_started = Instant::now();
        let (measured, stampede_schedule) = scenarios::stampede(
            &self.production.reservation,
            self.sizes.stampede,
            STAMPEDE_CLIENTS,
        )
        .await?;
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

    /// (d) Holds of distinct seats, against pgbench of the same statement on the raw schedule.
    async fn distinct_seats(&self, raw_schedule: &str) -> anyhow::Result<ScenarioResult> {
        let raw_holds = Pgbench {
            key: "pgbench-hold",
            name: "pgbench `HoldSeat` SQL, distinct seats",
            database_url: &self.args.reservation_database_url,
            script_name: "hold_seat.sql",
            script: baseline::HOLD_SEAT_SQL,
            clients: PGBENCH_CLIENTS,
            transactions_per_client: self.sizes.distinct_holds / PGBENCH_CLIENTS as u64,
            variables: vec![
                ("schedule_id", raw_schedule.to_owned()),
                ("seat_count", self.sizes.seats.to_string()),
                (
                    "users",
                    scenarios::distinct_seat_users(self.sizes.distinct_holds).to_string(),
                ),
            ],
            work_dir: &self.work_dir,
        }
        .run()
        .await?;
        let measured = scenarios::distinct_seats(
            &self.production.reservation,
            self.sizes.distinct_holds,
            CLIENTS,
            self.sizes.seats,
            || drop(self.sampler.take()),
        )
        .await?;
        let mut distinct = Scenario::new(
            DISTINCT_SEATS,
            "(d) distinct seats: `HoldSeat` over 100,000 seats",
            &measured,
            CLIENTS,
            self.args.connections,
            Some(&[OK]),
            "req/s",
            None,
        );
        distinct.observe(&self.sampler.take(), &[RESERVATION]);
        distinct.against(&raw_holds);
        distinct.note_outcomes();
        let target = ratio_target(
            "distinct-seat holds vs raw pgbench of the same SQL",
            &distinct,
            &raw_holds,
            0.8,
        );
        let note = distinct_cpu_note(&distinct, &raw_holds);
        Ok(ScenarioResult {
            scenario: distinct,
            baselines: vec![raw_holds],
            targets: vec![target],
            notes: vec![note],
        })
    }

    /// (c) and (d) again through the reservation-svc whose Redis is out of reach
    /// (`SEAT_LOCK_FALLBACK=postgres`), against the same scenarios with Redis (`stampede`,
    /// `distinct`): the stampede must still have one winner.
    async fn degraded(
        &self,
        stampede: &Scenario,
        distinct: &Scenario,
    ) -> anyhow::Result<Vec<ScenarioResult>> {
        let (Some(service), Some(metrics)) =
            (&self.degraded, &self.args.degraded_reservation_metrics)
        else {
            return Ok(Vec::new());
        };
        let through_postgres = async || {
            probe::scrape(metrics, "ticketing_seat_lock_total{outcome=\"postgres\"}").await
        };
        let before = through_postgres().await?;
        self.sampler.take();
        let (measured, schedule_id) =
            scenarios::stampede(service, self.sizes.stampede, STAMPEDE_CLIENTS).await?;
        let mut degraded_stampede = Scenario::new(
            "degraded-stampede",
            "(c) stampede, seat locks in Postgres (Redis out of reach)",
            &measured,
            STAMPEDE_CLIENTS,
            self.args.connections,
            None,
            "req/s",
            None,
        );
        degraded_stampede.observe(&self.sampler.take(), &[DEGRADED_RESERVATION]);
        degraded_stampede.note_outcomes();
        let held = probe::psql_value(
            &self.args.reservation_database_url,
            &format!("SELECT count(*) FROM reservations WHERE schedule_id = {schedule_id}"),
        )
        .await?;
        let mid = through_postgres().await?;
        let measured = scenarios::distinct_seats(
            service,
            self.sizes.distinct_holds,
            CLIENTS,
            self.sizes.seats,
            || drop(self.sampler.take()),
        )
        .await?;
        let mut degraded_distinct = Scenario::new(
            "degraded-distinct-seats",
            "(d) distinct seats, seat locks in Postgres (Redis out of reach)",
            &measured,
            CLIENTS,
            self.args.connections,
            Some(&[OK]),
            "req/s",
            None,
        );
        degraded_distinct.observe(&self.sampler.take(), &[DEGRADED_RESERVATION]);
        degraded_distinct.note_outcomes();
        let after = through_postgres().await?;
        let mut stampede_result = ScenarioResult::alone(degraded_stampede);
        stampede_result.targets = vec![
            Target {
                what: "stampede with seat locks in Postgres: reservations of the seat".to_owned(),
                goal: "exactly 1".to_owned(),
                met: held == "1",
                measured: held,
            },
            relative_target(
                "stampede with seat locks in Postgres vs with Redis",
                &stampede_result.scenario,
                stampede,
                0.4,
            ),
        ];
        let mut distinct_result = ScenarioResult::alone(degraded_distinct);
        distinct_result.targets = vec![relative_target(
            "distinct-seat holds with seat locks in Postgres vs with Redis",
            &distinct_result.scenario,
            distinct,
            0.9,
        )];
        distinct_result.notes = vec![format!(
            "The reservation-svc of the rows \"seat locks in Postgres\" runs with a `REDIS_URL` \
             where nothing listens and `SEAT_LOCK_FALLBACK=postgres`: {} of its stampede's \
             holds and {} of its distinct-seat holds took the seat's lock in Postgres (the \
             rest of the stampede was answered from the seat this replica remembered taken).",
            thousands((mid - before).round() as u64),
            thousands((after - mid).round() as u64),
        )];
        Ok(vec![stampede_result, distinct_result])
    }

    /// (f) The whole payment flow.
    async fn payments(&self) -> anyhow::Result<ScenarioResult> {
        let measured: Measured = scenarios::payments(
            &self.production.reservation,
            &self.production.wallet,
            self.sizes.payments,
            CLIENTS,
            PAYMENT_FIRST_USER,
            self.sizes.payment_users,
            &self.run_id,
            || drop(self.sampler.take()),
        )
        .await?;
        let mut payments = Scenario::new(
            "payments",
            "(f) payment flow: `HoldSeat` + `PayReservation`",
            &measured,
            CLIENTS,
            self.args.connections,
            Some(&[OK]),
            "paid/s",
            Some(&[OK]),
        );
        payments.observe(&self.sampler.take(), &[RESERVATION, WALLET]);
        payments.note_outcomes();
        let setting = payment_baseline::Setting {
            reservation_database_url: &self.args.reservation_database_url,
            wallet_database_url: &self.args.wallet_database_url,
            payments: self.sizes.payments,
            clients: PAYMENT_PGBENCH_CLIENTS,
            first_user: RAW_PAYMENT_FIRST_USER,
            users: self.sizes.payment_users,
            work_dir: &self.work_dir,
        };
        setting.fixtures().await?;
        let before = setting
            .run(
                payment_baseline::Design {
                    key: "pgbench-payment",
                    name: "pgbench payment statements before pipelining, both databases",
                    reservation_sql: payment_baseline::RESERVATION_SQL,
                    wallet_sql: payment_baseline::WALLET_SQL,
                    first_reservation: 1_000_000_000_000,
                },
                true,
            )
            .await?;
        let one_statement = setting
            .run(
                payment_baseline::Design {
                    key: "pgbench-payment-one-statement",
                    name: "pgbench one statement per decision, both databases",
                    reservation_sql: payment_baseline::RESERVATION_ONE_STATEMENT_SQL,
                    wallet_sql: payment_baseline::WALLET_ONE_STATEMENT_SQL,
                    first_reservation: 2_000_000_000_000,
                },
                false,
            )
            .await?;
        payments.against(&before[0]);
        let targets = vec![
            ratio_target(
                "payment flow vs raw pgbench of the payment statements before pipelining",
                &payments,
                &before[0],
                1.0,
            ),
            ratio_target(
                "payment flow vs raw pgbench of one statement per decision",
                &payments,
                &one_statement[0],
                0.6,
            ),
        ];
        let notes = vec![
            format!(
                "(f)'s raw baselines replay one payment's statements with pgbench against both \
                 databases at once, {PAYMENT_PGBENCH_CLIENTS} connections each (the services' \
                 pools hold most of the shared server's 100): the reservation side (the hold's \
                 pipeline, then the start and the settle) and the wallet's `Use`, as many \
                 payments each; the pair's rate is the slower side's, its latencies the sum of \
                 both sides'. \"before pipelining\": the statements as the services ran them \
                 with a transaction of diesel's per step and three selects to lock a seat (the \
                 sides alone: {} and {} /s); \"one statement per decision\": a sketch of the \
                 least this SQL can take (each step one conditional statement).",
                thousands(before.get(1).map_or(0.0, |b| b.rate).round() as u64),
                thousands(before.get(2).map_or(0.0, |b| b.rate).round() as u64),
            ),
            format!(
                "Each service runs at most `DB_POOL_SIZE` (default 16) transactions at once and \
                 queues the other calls for a connection. CPU per payment: the flow {:.0} µs, \
                 pgbench of the statements before pipelining {:.0} µs, of one statement per \
                 decision {:.0} µs (the whole machine's).",
                payments.cpu_per_request.machine_us,
                before[0].machine_cpu_us,
                one_statement[0].machine_cpu_us,
            ),
        ];
        Ok(ScenarioResult {
            scenario: payments,
            baselines: before.into_iter().chain(one_statement).collect(),
            targets,
            notes,
        })
    }

    /// The pair of `side`.
    fn pair(&self, side: Side) -> anyhow::Result<&Pair> {
        match side {
            Side::Production => Ok(&self.production),
            Side::Plaintext => self
                .plaintext
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no plaintext pair")),
        }
    }

    /// `first` (a production run) against rounds of the same work through the plaintext pair,
    /// `measure` running one round on the given pair; `None` without a plaintext pair. The
    /// sampler's window starts before `measure` (which may start it again once its fixtures
    /// are made) and covers `services` of the pair.
    async fn tls_cost(
        &self,
        first: &Scenario,
        rounds: usize,
        rate_of: Option<&[&str]>,
        services: fn(&Pair) -> Vec<&'static str>,
        measure: impl AsyncFn(&Pair, Side, usize) -> anyhow::Result<Measured>,
    ) -> anyhow::Result<Option<Comparison>> {
        if self.plaintext.is_none() {
            return Ok(None);
        }
        let comparison = tls_cost::compare(first, rounds, async |side, round| {
            let pair = self.pair(side)?;
            self.sampler.take();
            let measured = measure(pair, side, round).await?;
            let mut scenario = Scenario::new(
                &first.key,
                &first.name,
                &measured,
                first.clients,
                first.connections,
                rate_of,
                &first.rate_unit,
                None,
            );
            scenario.observe(&self.sampler.take(), &services(pair));
            if side == Side::Plaintext
                && let Ok(mut rounds) = self.plaintext_rounds.lock()
            {
                rounds.push(scenario.clone());
            }
            Ok(scenario)
        })
        .await?;
        Ok(Some(comparison))
    }

    /// This run's id with the side and round, for the keys of a comparison's round.
    fn round_id(&self, side: Side, round: usize) -> String {
        format!("{}-{}-{round}", self.run_id, side.label())
    }

    /// (a) through both pairs: the same hot user, keys of each round's own.
    async fn hot_wallet_cost(&self, hot: &Scenario) -> anyhow::Result<Option<Comparison>> {
        let uses = self.sizes.hot_uses;
        self.tls_cost(
            hot,
            SHORT_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.wallet_name],
            async |pair, side, round| {
                let label = format!("hot wallet, {}", side.label());
                let run_id = self.round_id(side, round);
                scenarios::wallet_uses(&label, &pair.payer, uses, CLIENTS, HOT_USER, 1, &run_id)
                    .await
            },
        )
        .await
    }

    /// (c) through both pairs, each round on a fresh one-seat schedule.
    async fn stampede_cost(&self, stampede: &Scenario) -> anyhow::Result<Option<Comparison>> {
        let requests = self.sizes.stampede;
        self.tls_cost(
            stampede,
            SHORT_SCENARIO_ROUNDS,
            None,
            |pair| vec![pair.reservation_name],
            async |pair, _, _| {
                let (measured, _) =
                    scenarios::stampede(&pair.reservation, requests, STAMPEDE_CLIENTS).await?;
                Ok(measured)
            },
        )
        .await
    }

    /// (d) through both pairs, each round on a fresh schedule.
    async fn distinct_seats_cost(&self, distinct: &Scenario) -> anyhow::Result<Option<Comparison>> {
        self.tls_cost(
            distinct,
            LONG_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.reservation_name],
            async |pair, _, _| {
                scenarios::distinct_seats(
                    &pair.reservation,
                    self.sizes.distinct_holds,
                    CLIENTS,
                    self.sizes.seats,
                    || drop(self.sampler.take()),
                )
                .await
            },
        )
        .await
    }

    /// (f) through both pairs, each round by users of its own, charged through its pair.
    async fn payments_cost(&self, payments: &Scenario) -> anyhow::Result<Option<Comparison>> {
        self.tls_cost(
            payments,
            LONG_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.reservation_name, pair.wallet_name],
            async |pair, side, round| {
                // Production's round 0 is the main run's, by PAYMENT_FIRST_USER's range.
                let range = 2 * round + usize::from(side == Side::Plaintext);
                let first_user = PAYMENT_FIRST_USER + 1_000_000 * i64::try_from(range)?;
                scenarios::payments(
                    &pair.reservation,
                    &pair.wallet,
                    self.sizes.payments,
                    CLIENTS,
                    first_user,
                    self.sizes.payment_users,
                    &self.round_id(side, round),
                    || drop(self.sampler.take()),
                )
                .await
            },
        )
        .await
    }

    /// The abuse scenario, against the plaintext pair's reservation-svc (the attackers speak
    /// plaintext HTTP/2; the limits are the same layers as production's). Its run without
    /// attack is (d)'s plaintext round, the same load on the same pair. `None` without a
    /// plaintext pair and its metrics address.
    async fn abuse(&self) -> anyhow::Result<Option<Abuse>> {
        let (Some(pair), Some(metrics), Some(addr)) = (
            &self.plaintext,
            &self.args.plaintext_reservation_metrics,
            &self.args.plaintext_reservation,
        ) else {
            return Ok(None);
        };
        let calm_rounds: Vec<Scenario> = self
            .plaintext_rounds
            .lock()
            .map(|rounds| {
                rounds
                    .iter()
                    .filter(|round| round.key == DISTINCT_SEATS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let calm = (!calm_rounds.is_empty()).then(|| {
            let mut calm = tls_cost::median(calm_rounds);
            calm.key = "abuse-calm".to_owned();
            calm.name = "(d) distinct seats, no attack (its plaintext round above)".to_owned();
            calm
        });
        let subject = abuse::Subject {
            described: "the plaintext pair (`INSECURE`: the same limits as production's, and \
                        attackers that need no TLS)"
                .to_owned(),
            addr,
            metrics,
            load: &pair.reservation,
            services: [pair.reservation_name, pair.wallet_name],
        };
        let load = abuse::Load {
            requests: self.sizes.distinct_holds,
            clients: CLIENTS,
            seats: self.sizes.seats,
        };
        let measured =
            abuse::measure(&subject, load, &abuse::Attack::ALL, calm, &self.sampler).await?;
        Ok(Some(measured))
    }

    /// Memory: the high-water mark of each service over the whole run, and its target.
    fn peak_rss(&self) -> (BTreeMap<String, u64>, Vec<Target>) {
        let mut service_peak_rss_kib = BTreeMap::new();
        let mut targets = Vec::new();
        for (name, pid) in [
            (WALLET, self.args.wallet_pid),
            (RESERVATION, self.args.reservation_pid),
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
        (service_peak_rss_kib, targets)
    }

    /// The run's request counts, clients and connections, and the machine's load average
    /// before (`load_before`) and now, at the run's end.
    fn counts_note(&self, load_before: &str) -> String {
        let sizes = &self.sizes;
        format!(
            "Request counts at scale {}: health {}, hot wallet {}, spread wallet {} (10,000 users \
             charged first, not timed), stampede {}, distinct seats {} of a 100,000-seat schedule, \
             payments {} (1,000 users charged first, not timed); clients {} (stampede and health \
             {}), {} HTTP/2 connections to each service. Latencies are per call, in an HDR \
             histogram of microseconds. The pgbench baselines use prepared statements, {} \
             connections and 2 threads, and run the statements in bench/sql/. Load average of \
             the machine: {} before the run, {} at its end.",
            self.args.scale,
            thousands(sizes.health),
            thousands(sizes.hot_uses),
            thousands(sizes.spread_uses),
            thousands(sizes.stampede),
            thousands(sizes.distinct_holds),
            thousands(sizes.payments),
            CLIENTS,
            thousands(STAMPEDE_CLIENTS as u64),
            self.args.connections,
            PGBENCH_CLIENTS,
            load_before,
            probe::load_average(),
        )
    }
}

/// Creates the raw baseline's schedule of `seats` seats with reservation-svc's own statement
/// (`CREATE_SCHEDULE_SQL`, prepared with the types the service binds), for a concert of its
/// own, in one transaction; returns the schedule's id.
pub(crate) async fn create_raw_schedule(database_url: &str, seats: i32) -> anyhow::Result<String> {
    let statement = CREATE_SCHEDULE_SQL.trim_end().trim_end_matches(';');
    // The `;` after the statement on a line of its own, should the statement end in a comment.
    let row = probe::psql_value(
        database_url,
        &format!(
            "INSERT INTO concerts (title) VALUES ('Raw baseline'); \
             PREPARE create_schedule (bigint, timestamptz, integer, bigint) AS {statement}\n; \
             EXECUTE create_schedule(currval(pg_get_serial_sequence('concerts', 'id')), \
             now() + interval '30 days', {seats}, 0)"
        ),
    )
    .await?;
    // The statement returns the schedule's row, `id|concert_id|...` in psql's unaligned output.
    let id = row.split('|').next().unwrap_or_default();
    anyhow::ensure!(
        !id.is_empty() && id.bytes().all(|byte| byte.is_ascii_digit()),
        "the raw schedule: psql answered {row:?}"
    );
    Ok(id.to_owned())
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

/// Where the CPU of a distinct-seat hold goes, through the service and in pgbench.
fn distinct_cpu_note(distinct: &Scenario, raw_holds: &Baseline) -> String {
    let cpu = &distinct.cpu_per_request;
    let process_us = |name: &str| cpu.by_process_us.get(name).copied().unwrap_or(0.0);
    let (service_us, harness_us) = (process_us(RESERVATION), process_us(probe::HARNESS));
    format!(
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
    )
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
