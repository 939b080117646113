//! What every scenario runs with: the arguments, the request counts, this run's id and scratch
//! space, connections to the services, the sampler of their memory and CPU, and the machine;
//! the raw baselines' fixtures; and the probes read at the run's end (the services' peak
//! memory, the machine's load).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use reservation_svc::store::CREATE_SCHEDULE_SQL;

use super::{RunArgs, run_id};
use crate::access::{Access, Caller, Service};
use crate::load::{Measured, OK};
use crate::probe::{self, Machine, RssSampler, Watched};
use crate::report::{Scenario, Target, mebibytes, thousands};

/// Users of each scenario, in ranges that never meet.
pub(super) const HOT_USER: i64 = 1_000_000;
pub(super) const SPREAD_FIRST_USER: i64 = 1;
pub(super) const PAYMENT_FIRST_USER: i64 = 2_000_001;
pub(super) const RAW_HOT_USER: i64 = 900_000_001;
pub(super) const RAW_SPREAD_FIRST_USER: i64 = 900_100_001;
pub(super) const RAW_PAYMENT_FIRST_USER: i64 = 900_200_001;
/// The waiting rooms' users: those queued straight on Redis before (g), those (g) enters
/// (whose streams (h) then opens), and the holders of (i).
pub(super) const ROOM_FILL_FIRST_USER: i64 = 10_000_001;
pub(super) const ROOM_ENTER_FIRST_USER: i64 = 20_000_001;
pub(super) const ROOM_HOLD_FIRST_USER: i64 = 30_000_001;

pub(super) const WALLET: &str = "wallet-svc";
pub(super) const RESERVATION: &str = "reservation-svc";
/// The plaintext pair, as the CPU breakdowns name them.
pub(super) const PLAINTEXT_WALLET: &str = "wallet-svc (plaintext)";
pub(super) const PLAINTEXT_RESERVATION: &str = "reservation-svc (plaintext)";
/// The reservation-svc whose seat locks are in Postgres.
pub(super) const DEGRADED_RESERVATION: &str = "reservation-svc (locks in Postgres)";

/// Clients of the wallet, distinct-seat and payment scenarios, and of their baselines.
pub(super) const CLIENTS: usize = 64;
/// Connections of the pgbench baselines: as many as each service's pool (`DB_POOL_SIZE`), so
/// that Postgres runs as many of their transactions at once as of the service's (and the
/// shared server's `max_connections` of 100 has room for them next to the services).
pub(super) const PGBENCH_CLIENTS: usize = 16;
/// Clients of the stampede and of the health checks it is compared with.
pub(super) const STAMPEDE_CLIENTS: usize = 1_000;

/// Request counts at scale 1, sized to finish within a few minutes on two cores.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) health: u64,
    pub(super) hot_uses: u64,
    pub(super) spread_uses: u64,
    pub(super) spread_users: u64,
    pub(super) stampede: u64,
    pub(super) distinct_holds: u64,
    pub(super) seats: i32,
    pub(super) payments: u64,
    pub(super) payment_users: u64,
    pub(super) redis: u64,
    /// Users queued in the slow room before (g)'s `Enter`s.
    pub(super) room_fill: u64,
    pub(super) room_enters: u64,
    pub(super) room_streams: u64,
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
            room_fill: scaled(1_000_000),
            room_enters: scaled(20_000),
            room_streams: scaled(10_000),
        }
    }
}

/// A wallet-svc and the reservation-svc that pays through it, and the names the sampler knows
/// them by.
#[derive(Debug)]
pub(super) struct Pair {
    /// wallet-svc for users and operators (charges).
    pub(super) wallet: Service,
    /// wallet-svc as reservation-svc calls it, for the `Use`s.
    pub(super) payer: Service,
    pub(super) reservation: Service,
    pub(super) wallet_name: &'static str,
    pub(super) reservation_name: &'static str,
}

impl Pair {
    /// Connects to the wallet-svc at `wallet` (as users, then as the payment service) and the
    /// reservation-svc at `reservation`, which the sampler knows as `names`.
    async fn connect(
        args: &RunArgs,
        [wallet, reservation]: [&String; 2],
        access: &Access,
        [wallet_name, reservation_name]: [&'static str; 2],
    ) -> anyhow::Result<Self> {
        Ok(Self {
            wallet: connect(args, wallet, access, Caller::Users).await?,
            payer: connect(args, wallet, access, Caller::PaymentService).await?,
            reservation: connect(args, reservation, access, Caller::Users).await?,
            wallet_name,
            reservation_name,
        })
    }
}

/// `--connections` connections to the service at `addr`, as `caller`.
async fn connect(
    args: &RunArgs,
    addr: &String,
    access: &Access,
    caller: Caller,
) -> anyhow::Result<Service> {
    Service::connect(std::slice::from_ref(addr), args.connections, access, caller).await
}

/// What every scenario runs with: the arguments, the request counts, this run's id and
/// scratch space, connections to the services, and the sampler of their memory and CPU.
#[derive(Debug)]
pub(super) struct Bench {
    pub(super) args: RunArgs,
    pub(super) sizes: Sizes,
    pub(super) run_id: String,
    pub(super) work_dir: PathBuf,
    /// When the run started, and the machine's load average then.
    pub(super) started: Instant,
    load_before: String,
    /// What the report says of the machine.
    pub(super) machine: Machine,
    /// The services the scenarios measure, as production runs them (or as `--pki` says).
    pub(super) production: Pair,
    /// The pair run with `INSECURE` that the production pair is compared with, if any.
    pub(super) plaintext: Option<Pair>,
    /// The production reservation-svc's twin whose seat locks are in Postgres, if any.
    pub(super) degraded: Option<Service>,
    /// The plaintext pair's rounds of those comparisons: (d)'s is the abuse scenario's run
    /// without attack.
    pub(super) plaintext_rounds: Mutex<Vec<Scenario>>,
    pub(super) sampler: RssSampler,
}

impl Bench {
    /// Connects to the services and starts sampling them; also describes the machine.
    pub(super) async fn set_up(args: RunArgs) -> anyhow::Result<Self> {
        let started = Instant::now();
        let load_before = probe::load_average();
        let sizes = Sizes::scaled(args.scale);
        let run_id = run_id();
        let work_dir = args.work_dir.join(&run_id);
        let machine =
            Machine::describe(&args.admin_database_url, &args.redis_host, args.redis_port).await;
        let production = Pair::connect(
            &args,
            [&args.wallet, &args.reservation],
            &args.access,
            [WALLET, RESERVATION],
        )
        .await?;
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
        let plaintext = connect_plaintext(&args, &mut watched).await?;
        let degraded = connect_degraded(&args, &mut watched).await?;
        let sampler = RssSampler::start(watched);
        Ok(Self {
            args,
            sizes,
            run_id,
            work_dir,
            started,
            load_before,
            machine,
            production,
            plaintext,
            degraded,
            plaintext_rounds: Mutex::default(),
            sampler,
        })
    }

    /// Starts the sampler's window again: right before a scenario's first call, once its
    /// fixtures are made.
    pub(super) fn start_window(&self) {
        drop(self.sampler.take());
    }

    /// The row of `measured`, run since the sampler's window last started: the peak RSS and
    /// CPU of `services` (and the load generator) over the window, and a note of its outcomes
    /// unless every call succeeded.
    pub(super) fn observed(&self, spec: Spec, measured: &Measured, services: &[&str]) -> Scenario {
        let mut scenario = spec.scenario(measured, self.args.connections);
        scenario.observe(&self.sampler.take(), services);
        scenario.note_outcomes();
        scenario
    }

    pub(super) fn reservation_db(&self) -> &str {
        database_name(&self.args.reservation_database_url)
    }

    /// `xact_commit` of the reservation database now.
    pub(super) async fn reservation_commits(&self) -> anyhow::Result<Commits> {
        Ok(Commits {
            at: Instant::now(),
            count: probe::xact_commit(&self.args.admin_database_url, self.reservation_db()).await?,
        })
    }

    /// Raw fixtures: wallets of the pgbench runs, and a schedule of their own for the holds,
    /// whose id this returns.
    pub(super) async fn raw_fixtures(&self) -> anyhow::Result<String> {
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

    /// Memory: the high-water mark of each service over the whole run, and its target.
    pub(super) fn peak_rss(&self) -> (BTreeMap<String, u64>, Vec<Target>) {
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
    /// before the run and now, at its end.
    pub(super) fn counts_note(&self) -> String {
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
            self.load_before,
            probe::load_average(),
        )
    }
}

/// The plaintext pair, if `--plaintext-wallet` and `--plaintext-reservation` name one; its
/// services join `watched`.
async fn connect_plaintext(
    args: &RunArgs,
    watched: &mut Vec<Watched>,
) -> anyhow::Result<Option<Pair>> {
    let (Some(wallet), Some(reservation)) = (&args.plaintext_wallet, &args.plaintext_reservation)
    else {
        return Ok(None);
    };
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
    let pair = Pair::connect(
        args,
        [wallet, reservation],
        &Access::default(),
        [PLAINTEXT_WALLET, PLAINTEXT_RESERVATION],
    )
    .await?;
    Ok(Some(pair))
}

/// The reservation-svc with seat locks in Postgres, if `--degraded-reservation` names one;
/// it joins `watched`.
async fn connect_degraded(
    args: &RunArgs,
    watched: &mut Vec<Watched>,
) -> anyhow::Result<Option<Service>> {
    let (Some(addr), Some(pid)) = (&args.degraded_reservation, args.degraded_reservation_pid)
    else {
        return Ok(None);
    };
    watched.push(Watched {
        name: DEGRADED_RESERVATION,
        pid,
    });
    Ok(Some(
        connect(args, addr, &args.access, Caller::Users).await?,
    ))
}

/// What a scenario's row is before it is measured: its key and name, its clients, what its
/// rate counts and in which unit, and whose latencies it gives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec<'a> {
    pub(super) key: &'a str,
    pub(super) name: &'a str,
    pub(super) clients: usize,
    /// The outcomes the rate counts (every outcome for `None`).
    pub(super) rate_of: Option<&'a [&'a str]>,
    pub(super) rate_unit: &'a str,
    /// The outcomes whose latencies it gives (every outcome for `None`).
    pub(super) latency_of: Option<&'a [&'a str]>,
}

impl<'a> Spec<'a> {
    /// Calls of any outcome, per second, from `clients` clients.
    pub(super) fn calls(key: &'a str, name: &'a str, clients: usize) -> Self {
        Self {
            key,
            name,
            clients,
            rate_of: None,
            rate_unit: "req/s",
            latency_of: None,
        }
    }

    /// Calls answered [`OK`], per second, from `clients` clients (latencies of every call).
    pub(super) fn successes(key: &'a str, name: &'a str, clients: usize) -> Self {
        Self {
            rate_of: Some(&[OK]),
            ..Self::calls(key, name, clients)
        }
    }

    /// The figures of `measured`, over `connections` HTTP/2 connections to each service.
    pub(super) fn scenario(&self, measured: &Measured, connections: usize) -> Scenario {
        Scenario::new(
            self.key,
            self.name,
            measured,
            self.clients,
            connections,
            self.rate_of,
            self.rate_unit,
            self.latency_of,
        )
    }
}

/// `xact_commit` of a database, and when it was read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Commits {
    pub(super) at: Instant,
    pub(super) count: u64,
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

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}
