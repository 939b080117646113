//! The results of a run: JSON for machines, a Markdown table for people, and the copy of that
//! table in the README.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::abuse::{self, Abuse};
use crate::baseline::Baseline;
use crate::load::{Measured, OK};
use crate::probe::{CpuPerRequest, HARNESS, Machine, Window};

/// Where the README's copy of the table begins and ends.
pub const README_BEGIN: &str = "<!-- bench:begin -->";
pub const README_END: &str = "<!-- bench:end -->";

/// One measured scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub key: String,
    pub name: String,
    pub requests: u64,
    pub clients: usize,
    /// HTTP/2 connections per service address.
    pub connections: usize,
    pub elapsed_s: f64,
    /// Calls answered per second (for payments: seats paid per second).
    pub rate: f64,
    pub rate_unit: String,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Calls by outcome: `OK` or the gRPC code's name.
    pub outcomes: BTreeMap<String, u64>,
    /// The key of the raw baseline this scenario is compared with.
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    /// The highest `VmRSS` sampled during the scenario, by service, in KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// CPU time per call, of the machine and of the services it calls and the load generator.
    pub cpu_per_request: CpuPerRequest,
    pub notes: Vec<String>,
}

impl Scenario {
    /// The figures of `measured`, latencies over the outcomes in `latency_of` (every outcome
    /// for `None`), rate over the outcomes in `rate_of` (every outcome for `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: &str,
        name: &str,
        measured: &Measured,
        clients: usize,
        connections: usize,
        rate_of: Option<&[&str]>,
        rate_unit: &str,
        latency_of: Option<&[&str]>,
    ) -> Self {
        let latencies = measured.latencies(latency_of);
        let counted: u64 = match rate_of {
            None => measured.total(),
            Some(outcomes) => outcomes.iter().map(|outcome| measured.count(outcome)).sum(),
        };
        let elapsed_s = measured.elapsed.as_secs_f64();
        Self {
            key: key.to_owned(),
            name: name.to_owned(),
            requests: measured.total(),
            clients,
            connections,
            elapsed_s,
            rate: counted as f64 / elapsed_s.max(f64::EPSILON),
            rate_unit: rate_unit.to_owned(),
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
            max_us: latencies.max(),
            outcomes: measured.counts(),
            baseline: None,
            ratio: None,
            peak_rss_kib: BTreeMap::new(),
            cpu_per_request: CpuPerRequest::default(),
            notes: Vec::new(),
        }
    }

    /// Takes the peak RSS and the CPU use of the scenario's window, for `services` (the ones
    /// it calls) and the load generator.
    pub fn observe(&mut self, window: &Window, services: &[&str]) {
        self.peak_rss_kib = window
            .peak_rss_kib
            .iter()
            .filter(|(name, _)| services.contains(&name.as_str()))
            .map(|(name, kib)| (name.clone(), *kib))
            .collect();
        let mut cpu = window.cpu_per_request(self.requests);
        cpu.by_process_us
            .retain(|name, _| name == HARNESS || services.contains(&name.as_str()));
        self.cpu_per_request = cpu;
    }

    /// Compares the rate with a baseline's.
    pub fn against(&mut self, baseline: &Baseline) {
        self.baseline = Some(baseline.key.clone());
        self.ratio = Some(self.rate / baseline.rate.max(f64::EPSILON));
    }

    /// A line that says how each outcome counted, unless every call succeeded.
    pub fn note_outcomes(&mut self) {
        if self.outcomes.keys().any(|outcome| outcome != OK) {
            let counts = self
                .outcomes
                .iter()
                .map(|(outcome, count)| format!("{outcome} {}", thousands(*count)))
                .collect::<Vec<_>>()
                .join(", ");
            self.notes.push(format!("{}: {counts}", self.name));
        }
    }
}

/// One scenario through the production services against the same through a plaintext pair.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub key: String,
    pub name: String,
    /// Rounds of each side; each side's median round stands for it.
    pub rounds: usize,
    pub rate_unit: String,
    pub production_rate: f64,
    pub plaintext_rate: f64,
    /// Production's rate over plaintext's.
    pub ratio: f64,
    pub production_cpu: CpuPerRequest,
    pub plaintext_cpu: CpuPerRequest,
}

impl Comparison {
    /// `(a) hot wallet` of `(a) hot wallet: ...`.
    pub fn short_name(&self) -> &str {
        self.name.split(':').next().unwrap_or(&self.name)
    }
}

/// A goal of the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub command: String,
    pub revision: String,
    pub machine: Machine,
    /// Multiplier of the default request counts.
    pub scale: f64,
    /// Seconds the measurements and baselines took (not the build nor the start-up).
    pub duration_s: f64,
    pub scenarios: Vec<Scenario>,
    pub baselines: Vec<Baseline>,
    /// Production against plaintext, scenario by scenario (empty without a plaintext pair).
    pub tls_cost: Vec<Comparison>,
    /// The distinct-seat load alone and under attack (none without a plaintext pair).
    pub abuse: Option<Abuse>,
    /// `VmHWM` of each service at the end of the run, in KiB.
    pub service_peak_rss_kib: BTreeMap<String, u64>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    /// The Markdown page: a heading, then [`Report::body`].
    pub fn markdown(&self) -> String {
        format!("# Benchmark results\n\n{}", self.body())
    }

    /// Machine, scenario table, baselines, targets and notes.
    pub fn body(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(
            out,
            "`{}` at revision `{}`, {}, on {} ({} cores), {:.0} GiB RAM, Linux {}, PostgreSQL {}, \
             Redis {}. The load generator, both services, PostgreSQL and Redis all share these \
             {} cores, so every figure is what is left after the client's own share. Fixed \
             request counts (scale {}), measured in {:.0} s.\n",
            self.command,
            self.revision,
            self.generated_at,
            machine.cpu,
            machine.cores,
            machine.memory_gib,
            machine.kernel,
            machine.postgres,
            machine.redis,
            machine.cores,
            self.scale,
            self.duration_s,
        );
        out.push_str(
            "| scenario | requests × clients | rate | p50 | p99 | raw baseline | vs raw | peak RSS | CPU per call |\n\
             |---|--:|--:|--:|--:|---|--:|--:|---|\n",
        );
        for scenario in &self.scenarios {
            let baseline = scenario
                .baseline
                .as_ref()
                .and_then(|key| self.baselines.iter().find(|baseline| &baseline.key == key));
            let _ = writeln!(
                out,
                "| {} | {} × {} | {} {} | {} | {} | {} | {} | {} | {} |",
                scenario.name,
                thousands(scenario.requests),
                thousands(scenario.clients as u64),
                thousands(scenario.rate.round() as u64),
                scenario.rate_unit,
                latency(scenario.p50_us),
                latency(scenario.p99_us),
                baseline.map_or_else(
                    || "—".to_owned(),
                    |baseline| format!(
                        "{}: {}/s",
                        baseline.name,
                        thousands(baseline.rate.round() as u64)
                    )
                ),
                scenario
                    .ratio
                    .map_or_else(|| "—".to_owned(), |ratio| format!("{ratio:.2}×")),
                scenario
                    .peak_rss_kib
                    .iter()
                    .map(|(service, kib)| format!("{service} {}", mebibytes(*kib)))
                    .collect::<Vec<_>>()
                    .join(", "),
                cpu_breakdown(&scenario.cpu_per_request),
            );
        }

        out.push_str(
            "\nRaw baselines, in the same run:\n\n\
             | baseline | requests × clients | rate | p50 | p99 | CPU per call | command |\n\
             |---|--:|--:|--:|--:|--:|---|\n",
        );
        for baseline in &self.baselines {
            let _ = writeln!(
                out,
                "| {} | {} × {} | {}/s | {} | {} | {} | `{}` |",
                baseline.name,
                thousands(baseline.requests),
                thousands(baseline.clients as u64),
                thousands(baseline.rate.round() as u64),
                latency(baseline.p50_us),
                latency(baseline.p99_us),
                micros(baseline.machine_cpu_us),
                baseline.command.replace('|', "\\|"),
            );
        }

        if !self.tls_cost.is_empty() {
            out.push_str(
                "\nThe cost of TLS and tokens, in the same run: the scenarios above through the \
                 production services (TLS, mutual TLS to the wallet, each user's own token), \
                 against the same work through a second pair of the same build run with \
                 `INSECURE` (plaintext, no caller checks) on the same databases; rounds \
                 alternate, and each side's median round stands for it:\n\n\
                 | scenario | rounds | plaintext | production | production vs plaintext | CPU per call, plaintext | CPU per call, production |\n\
                 |---|--:|--:|--:|--:|---|---|\n",
            );
            for comparison in &self.tls_cost {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} {unit} | {} {unit} | {:.2}× | {} | {} |",
                    comparison.short_name(),
                    comparison.rounds,
                    thousands(comparison.plaintext_rate.round() as u64),
                    thousands(comparison.production_rate.round() as u64),
                    comparison.ratio,
                    cpu_breakdown(&comparison.plaintext_cpu),
                    cpu_breakdown(&comparison.production_cpu),
                    unit = comparison.rate_unit,
                );
            }
        }

        if let Some(abuse) = &self.abuse {
            out.push('\n');
            out.push_str(&abuse_section(abuse));
        }

        out.push('\n');
        out.push_str(&targets_table(&self.targets));

        let notes: Vec<&String> = self
            .scenarios
            .iter()
            .flat_map(|scenario| &scenario.notes)
            .chain(&self.notes)
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for note in notes {
                let _ = writeln!(out, "* {note}");
            }
        }
        out
    }

    /// Writes `latest.md` and `latest.json` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("latest.md"), self.markdown())?;
        std::fs::write(
            dir.join("latest.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }

    /// Replaces what stands between [`README_BEGIN`] and [`README_END`] in `readme` with the
    /// body of this report.
    pub fn update_readme(&self, readme: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(readme)?;
        let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
            anyhow::bail!(
                "{} has no {README_BEGIN} ... {README_END} section",
                readme.display()
            );
        };
        anyhow::ensure!(begin < end, "{README_END} before {README_BEGIN}");
        let updated = format!(
            "{}{README_BEGIN}\n{}{}",
            &text[..begin],
            self.body(),
            &text[end..]
        );
        std::fs::write(readme, updated)?;
        Ok(())
    }
}

/// The targets, each met or missed.
pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("Targets:\n\n| target | goal | measured | |\n|---|---|---|---|\n");
    for target in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            target.what,
            target.goal,
            target.measured,
            if target.met { "met" } else { "**missed**" }
        );
    }
    out
}

/// The abuse scenario: the load alone and under attack, what each attacker saw, what the
/// server shed, and what it held once the attackers had gone.
pub fn abuse_section(abuse: &Abuse) -> String {
    let mut out = format!(
        "Abuse, in the same run: the distinct-seat load (d), the same holds from the same \
         clients on a fresh schedule, through {}, once alone and once while the attacks below \
         run against it at once, from {} s before the load's first hold to its last. Each attacker \
         asks again for what the server ends, but for the refused `Watch` streams. Peak RSS is \
         the highest `VmRSS` sampled every 50 ms from the attackers' start to their end.\n\n\
         | run | requests × clients | rate | p50 | p99 | peak RSS | CPU per call |\n\
         |---|--:|--:|--:|--:|--:|---|\n",
        abuse.described,
        abuse::ATTACK_LEAD.as_secs(),
    );
    for scenario in [&abuse.calm, &abuse.attacked] {
        let _ = writeln!(
            out,
            "| {} | {} × {} | {} {} | {} | {} | {} | {} |",
            scenario.name,
            thousands(scenario.requests),
            thousands(scenario.clients as u64),
            thousands(scenario.rate.round() as u64),
            scenario.rate_unit,
            latency(scenario.p50_us),
            latency(scenario.p99_us),
            scenario
                .peak_rss_kib
                .iter()
                .map(|(service, kib)| format!("{service} {}", mebibytes(*kib)))
                .collect::<Vec<_>>()
                .join(", "),
            cpu_breakdown(&scenario.cpu_per_request),
        );
    }
    out.push_str("\n| attack | what its attacker saw |\n|---|---|\n");
    for attack in &abuse.attacks {
        let outcomes = attack
            .outcomes
            .iter()
            .map(|(outcome, count)| format!("{outcome} {}", thousands(*count)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "| {} | {outcomes} |", attack.name);
    }
    let shed = abuse
        .shed
        .iter()
        .map(|(reason, count)| format!("`{reason}` {}", thousands(*count)))
        .collect::<Vec<_>>()
        .join(", ");
    let after = &abuse.after;
    let _ = writeln!(
        out,
        "\nUnder attack the load kept {:.2}× its rate without. The attacks ran for {:.0} s; \
         what {} shed meanwhile (`ticketing_rpc_shed_total` by reason): {shed}; connections \
         closed at `MAX_CONNECTIONS`: {}. Once the attackers had gone: \
         `ticketing_rpc_in_flight` {}, `ticketing_streams_open` {}, \
         `ticketing_buffered_bytes` {}, `ticketing_connections_open` {} (the load's own {}), {}.",
        abuse.ratio,
        abuse.attack_s,
        abuse.service,
        thousands(abuse.connections_refused),
        after.rpc_in_flight,
        after.streams_open,
        after.buffered_bytes,
        after.connections_open,
        after.load_connections,
        after.settled_s.map_or_else(
            || format!("not all back within {} s", abuse::SETTLE_WITHIN.as_secs()),
            |seconds| format!("{seconds:.1} s after"),
        ),
    );
    out
}

/// `12,345`.
/// `machine 214 µs (reservation-svc 98 µs, load generator 41 µs)`.
pub fn cpu_breakdown(cpu: &CpuPerRequest) -> String {
    let parts = cpu
        .by_process_us
        .iter()
        .map(|(name, us)| format!("{name} {}", micros(*us)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("machine {} ({parts})", micros(cpu.machine_us))
}

/// A CPU time in whole microseconds (`-3 µs` for a negative difference).
pub fn micros(us: f64) -> String {
    let sign = if us.round() < 0.0 { "-" } else { "" };
    format!("{sign}{} µs", thousands(us.abs().round() as u64))
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `850 µs`, `12.3 ms`, `1.25 s`.
pub fn latency(micros: u64) -> String {
    match micros {
        0..1_000 => format!("{micros} µs"),
        1_000..1_000_000 => format!("{:.1} ms", micros as f64 / 1_000.0),
        _ => format!("{:.2} s", micros as f64 / 1_000_000.0),
    }
}

/// `23.4 MiB`.
pub fn mebibytes(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn latencies_read_in_their_unit() {
        assert_eq!(latency(850), "850 µs");
        assert_eq!(latency(12_345), "12.3 ms");
        assert_eq!(latency(1_250_000), "1.25 s");
    }
}
