//! What the harness reads beside its own requests: the services' memory, their Prometheus
//! counters, Postgres statistics, and the machine it runs on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// A service process the harness watches.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: &'static str,
    pub pid: u32,
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Kernel clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (`USER_HZ`, 100 on
/// every Linux architecture the harness runs on).
const USER_HZ: f64 = 100.0;

/// CPU time used so far: by the whole machine (every core, busy time only), by the watched
/// services and by the harness itself, in clock ticks.
#[derive(Debug, Clone, Default)]
pub struct CpuTicks {
    machine: u64,
    processes: BTreeMap<&'static str, u64>,
}

impl CpuTicks {
    pub fn now(watched: &[Watched]) -> Self {
        let mut processes = BTreeMap::new();
        for process in watched {
            if let Some(ticks) = process_ticks(&process.pid.to_string()) {
                processes.insert(process.name, ticks);
            }
        }
        if let Some(ticks) = process_ticks("self") {
            processes.insert(HARNESS, ticks);
        }
        Self {
            machine: machine_busy_ticks().unwrap_or(0),
            processes,
        }
    }

    /// CPU per request since `self`, in microseconds.
    pub fn per_request_since(&self, later: &Self, requests: u64) -> CpuPerRequest {
        let per_request = |ticks: u64| ticks as f64 / USER_HZ * 1e6 / requests.max(1) as f64;
        CpuPerRequest {
            machine_us: per_request(later.machine.saturating_sub(self.machine)),
            by_process_us: later
                .processes
                .iter()
                .map(|(name, ticks)| {
                    let before = self.processes.get(name).copied().unwrap_or(0);
                    (
                        (*name).to_owned(),
                        per_request(ticks.saturating_sub(before)),
                    )
                })
                .collect(),
        }
    }
}

/// The name the harness's own CPU is reported under.
pub const HARNESS: &str = "load generator";

/// CPU time per request, in microseconds: of the whole machine, and of each process watched.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerRequest {
    pub machine_us: f64,
    pub by_process_us: BTreeMap<String, f64>,
}

/// Busy ticks of every core: everything in the `cpu` line of `/proc/stat` but idle and iowait.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // guest time is counted in user time already.
    let total: u64 = ticks.iter().take(8).sum();
    Some(total.saturating_sub(idle))
}

/// utime + stime of a process (all its threads), from `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line; 1 and 2 are before the name's end.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// What the sampler saw between two calls of [`RssSampler::take`]: peak RSS of each watched
/// service, in KiB, and the CPU ticks at both ends.
#[derive(Debug)]
pub struct Window {
    pub peak_rss_kib: BTreeMap<String, u64>,
    cpu_from: CpuTicks,
    cpu_to: CpuTicks,
}

impl Window {
    /// The window's CPU time per request, in microseconds.
    pub fn cpu_per_request(&self, requests: u64) -> CpuPerRequest {
        self.cpu_from.per_request_since(&self.cpu_to, requests)
    }
}

/// Samples `VmRSS` of the watched processes every 50 ms and keeps the highest value of each
/// since the last [`RssSampler::take`], which also reads the CPU time used since.
#[derive(Debug)]
pub struct RssSampler {
    peaks: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    watched: Vec<Watched>,
    cpu_from: Mutex<CpuTicks>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(watched: Vec<Watched>) -> Self {
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let sampled = Arc::clone(&peaks);
        let cpu_from = Mutex::new(CpuTicks::now(&watched));
        let sampling = watched.clone();
        let task = tokio::spawn(async move {
            let watched = sampling;
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            loop {
                ticks.tick().await;
                for process in &watched {
                    if let Some(rss) = proc_status_kib(process.pid, "VmRSS")
                        && let Ok(mut peaks) = sampled.lock()
                    {
                        let peak = peaks.entry(process.name).or_insert(0);
                        *peak = (*peak).max(rss);
                    }
                }
            }
        });
        Self {
            peaks,
            watched,
            cpu_from,
            task,
        }
    }

    /// What was seen since the previous call, and a fresh start.
    pub fn take(&self) -> Window {
        let cpu_to = CpuTicks::now(&self.watched);
        let cpu_from = self
            .cpu_from
            .lock()
            .map(|mut from| std::mem::replace(&mut *from, cpu_to.clone()))
            .unwrap_or_default();
        let peak_rss_kib = self
            .peaks
            .lock()
            .map(|mut peaks| {
                std::mem::take(&mut *peaks)
                    .into_iter()
                    .map(|(name, kib)| (name.to_owned(), kib))
                    .collect()
            })
            .unwrap_or_default();
        Window {
            peak_rss_kib,
            cpu_from,
            cpu_to,
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of one sample of a Prometheus text page, e.g.
/// `ticketing_seat_lock_total{outcome="acquired"}`; 0 when the series has not appeared yet.
pub async fn scrape(metrics_addr: &str, series: &str) -> anyhow::Result<f64> {
    Ok(metrics_page(metrics_addr)
        .await?
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
        .unwrap_or(0.0))
}

/// The sum of the samples of `series` (a metric's name, e.g. a histogram's `_count`) over its
/// label sets that contain `label` (every one for `""`), e.g. `command="room_tick"`.
pub async fn scrape_sum(metrics_addr: &str, series: &str, label: &str) -> anyhow::Result<f64> {
    Ok(metrics_page(metrics_addr)
        .await?
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(series)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            let labels = labels.trim();
            let of_series = labels.is_empty() || labels.starts_with('{');
            if !of_series || !labels.contains(label) {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .sum())
}

async fn metrics_page(metrics_addr: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(metrics_addr)
        .await
        .with_context(|| format!("metrics endpoint {metrics_addr}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {metrics_addr}\r\n\r\n").as_bytes())
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page)
}

/// Runs one query with psql and returns its single value.
pub async fn psql_value(database_url: &str, query: &str) -> anyhow::Result<String> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database_url,
            "-c",
            query,
        ])
        .output()
        .await
        .context("psql")?;
    anyhow::ensure!(
        output.status.success(),
        "psql {query:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Transactions committed in `database` so far, as `pg_stat_database` tells (read from the
/// admin database, so the reading adds none to the count).
pub async fn xact_commit(admin_url: &str, database: &str) -> anyhow::Result<u64> {
    let value = psql_value(
        admin_url,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'"),
    )
    .await?;
    value
        .parse()
        .with_context(|| format!("xact_commit of {database}: {value:?}"))
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` says: other work on the machine
/// shows here.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |loadavg| {
            loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    pub redis: String,
}

impl Machine {
    pub async fn describe(admin_url: &str, redis_host: &str, redis_port: u16) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| {
                meminfo.lines().find_map(|line| {
                    line.strip_prefix("MemTotal:")?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
            })
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| "unknown".to_owned(),
            |release| release.trim().to_owned(),
        );
        let postgres = psql_value(admin_url, "SHOW server_version")
            .await
            .unwrap_or_else(|_| "unknown".to_owned());
        let redis = redis_version(redis_host, redis_port)
            .await
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib as f64 / 1024.0 / 1024.0,
            kernel,
            postgres,
            redis,
        }
    }
}

async fn redis_version(host: &str, port: u16) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", host, "-p", &port.to_string(), "INFO", "server"])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|version| version.trim().to_owned())
}
