//! Raw baselines: the services' own SQL run by `pgbench`, and their Redis lock commands run by
//! `redis-benchmark`, on the same machine and in the same run as the scenarios.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::process::Command;

use crate::load::{new_histogram, record};
use crate::probe::CpuTicks;

/// `Use` of one point as wallet-svc runs it.
pub const WALLET_USE_SQL: &str = include_str!("../sql/wallet_use.sql");
/// `HoldSeat`'s transaction as reservation-svc runs it.
pub const HOLD_SEAT_SQL: &str = include_str!("../sql/hold_seat.sql");

/// What one baseline measured.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub key: String,
    pub name: String,
    /// The command line, as a reader could run it again.
    pub command: String,
    pub requests: u64,
    pub clients: usize,
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Busy CPU time of the whole machine per request, in microseconds (every core; for
    /// pgbench including its connection setup).
    pub machine_cpu_us: f64,
}

/// One pgbench run of a custom script: `transactions_per_client` transactions from each of
/// `clients` connections, prepared statements, one log line per transaction for the
/// latencies.
#[derive(Debug)]
pub struct Pgbench<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub database_url: &'a str,
    pub script_name: &'a str,
    pub script: &'a str,
    pub clients: usize,
    pub transactions_per_client: u64,
    /// `-D name=value` variables of the script, besides `per_client` (the transactions of
    /// each client) and `n=0` (the start of the per-client counter), which every run defines.
    pub variables: Vec<(&'a str, String)>,
    /// Where the script and the transaction logs go.
    pub work_dir: &'a Path,
}

impl Pgbench<'_> {
    pub async fn run(&self) -> anyhow::Result<Baseline> {
        let dir = self.work_dir.join(self.key);
        tokio::fs::create_dir_all(&dir).await?;
        let script_path = dir.join(self.script_name);
        tokio::fs::write(&script_path, self.script).await?;
        let log_prefix = dir.join("latency");

        let mut args: Vec<String> = vec![
            "--no-vacuum".into(),
            "--protocol=prepared".into(),
            format!("--client={}", self.clients),
            format!("--jobs={}", self.clients.min(2)),
            format!("--transactions={}", self.transactions_per_client),
            format!("--file={}", script_path.display()),
            "--log".into(),
            format!("--log-prefix={}", log_prefix.display()),
        ];
        args.extend(
            self.variables
                .iter()
                .map(|(name, value)| format!("--define={name}={value}")),
        );
        args.push(format!(
            "--define=per_client={}",
            self.transactions_per_client
        ));
        args.push("--define=n=0".to_owned());
        args.push(self.database_url.to_owned());

        let spinner = spinner(self.name);
        let cpu_from = CpuTicks::now(&[]);
        let output = Command::new("pgbench")
            .args(&args)
            .output()
            .await
            .context("pgbench (install postgresql-contrib)")?;
        let cpu_to = CpuTicks::now(&[]);
        spinner.finish_and_clear();
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "pgbench {}: {}{}",
            self.key,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let rate = stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix("tps = ")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
        let failed = stdout
            .lines()
            .find_map(|line| line.strip_prefix("number of failed transactions: "))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        anyhow::ensure!(
            failed == 0,
            "pgbench {}: {failed} transactions failed",
            self.key
        );

        let latencies = pgbench_latencies(&dir).await?;
        let command = format!(
            "pgbench {} {}",
            args[..args.len() - 1]
                .iter()
                .map(|arg| arg.replace(&dir.display().to_string(), "…"))
                .collect::<Vec<_>>()
                .join(" "),
            database_name(self.database_url)
        );
        Ok(Baseline {
            key: self.key.to_owned(),
            name: self.name.to_owned(),
            command,
            requests: latencies.len(),
            clients: self.clients,
            rate,
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
            machine_cpu_us: cpu_from
                .per_request_since(&cpu_to, latencies.len())
                .machine_us,
        })
    }
}

/// The latencies of pgbench's per-transaction logs (`client transaction_no time_us ...`).
async fn pgbench_latencies(dir: &Path) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut histogram = new_histogram();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if !entry.file_name().to_string_lossy().starts_with("latency.") {
            continue;
        }
        let log = tokio::fs::read_to_string(entry.path()).await?;
        for line in log.lines() {
            if let Some(micros) = line
                .split_whitespace()
                .nth(2)
                .and_then(|field| field.parse::<u64>().ok())
            {
                record(&mut histogram, Duration::from_micros(micros));
            }
        }
    }
    Ok(histogram)
}

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// One redis-benchmark run of one command.
#[derive(Debug)]
pub struct RedisBenchmark<'a> {
    pub key: &'a str,
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub clients: usize,
    pub requests: u64,
    /// `-r`: `__rand_int__` in the command takes values below this.
    pub keyspace: Option<u64>,
    pub command: Vec<String>,
}

impl RedisBenchmark<'_> {
    pub async fn run(&self) -> anyhow::Result<Baseline> {
        let mut args: Vec<String> = vec![
            "-c".into(),
            self.clients.to_string(),
            "-n".into(),
            self.requests.to_string(),
        ];
        if let Some(keyspace) = self.keyspace {
            args.extend(["-r".into(), keyspace.to_string()]);
        }
        args.push("--csv".into());
        args.extend(self.command.iter().cloned());
        let spinner = spinner(self.name);
        let cpu_from = CpuTicks::now(&[]);
        let output = Command::new("redis-benchmark")
            .args(["-h", self.host, "-p", &self.port.to_string()])
            .args(&args)
            .output()
            .await
            .context("redis-benchmark (install redis-tools)")?;
        let cpu_to = CpuTicks::now(&[]);
        spinner.finish_and_clear();
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "redis-benchmark {}: {}{}",
            self.key,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let summary = parse_redis_csv(&stdout)?;
        Ok(Baseline {
            key: self.key.to_owned(),
            name: self.name.to_owned(),
            command: format!("redis-benchmark {}", shell_words(&args)),
            requests: self.requests,
            clients: self.clients,
            rate: summary.rate,
            p50_us: summary.p50_us,
            p99_us: summary.p99_us,
            machine_cpu_us: cpu_from
                .per_request_since(&cpu_to, self.requests)
                .machine_us,
        })
    }
}

/// Rate and latencies of one redis-benchmark test.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RedisSummary {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
}

/// Reads the last row of redis-benchmark's `--csv` output: `"test","rps","avg_latency_ms",
/// "min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`,
/// from the right, as the test's name is the whole command.
fn parse_redis_csv(output: &str) -> anyhow::Result<RedisSummary> {
    let row = output
        .lines()
        .rev()
        .find(|line| line.starts_with('"') && !line.starts_with("\"test\""))
        .with_context(|| format!("no result in redis-benchmark's output: {output}"))?;
    // max, p99, p95, p50, min, avg, rps.
    let fields: Vec<f64> = row
        .rsplitn(8, "\",\"")
        .take(7)
        .map(|field| field.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("redis-benchmark row {row:?}"))?;
    anyhow::ensure!(fields.len() == 7, "redis-benchmark row {row:?}");
    let micros = |millis: f64| (millis * 1000.0).round() as u64;
    Ok(RedisSummary {
        rate: fields[6],
        p50_us: micros(fields[3]),
        p99_us: micros(fields[1]),
    })
}

/// Loads a Lua script into Redis's script cache and returns its SHA-1, for `EVALSHA`.
pub async fn redis_script_load(host: &str, port: u16, script: &str) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "SCRIPT",
            "LOAD",
            script,
        ])
        .output()
        .await
        .context("redis-cli")?;
    anyhow::ensure!(output.status.success(), "redis-cli SCRIPT LOAD failed");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/=".contains(c))
            {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spinner(label: &str) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(label.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_benchmark_row_is_read_from_the_right() {
        let output = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                      \"EVALSHA d0850b93ee36992c6e65f49d5f5c16ee3634b705 1 k:{0}:__rand_int__ t 3000 4102444800000\",\"85470.09\",\"0.391\",\"0.104\",\"0.367\",\"0.599\",\"0.863\",\"2.215\"\n";
        assert_eq!(
            parse_redis_csv(output).expect("a row"),
            RedisSummary {
                rate: 85470.09,
                p50_us: 367,
                p99_us: 863,
            }
        );
    }

    #[test]
    fn output_without_a_row_is_an_error() {
        assert!(parse_redis_csv("ERROR: connection refused\n").is_err());
    }
}
