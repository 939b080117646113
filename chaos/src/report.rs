//! The run's table: operations by kind and outcome, faults, violations, the longest stretch
//! of UNAVAILABLE holds, latency under faults and, sampled, what each service process held.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::faults::Injected;
use crate::procs::Sample;
use crate::workload::{Op, Shared, lock};
use crate::{Args, Topology};

/// How long after a fault ends its effects count as "under faults" (clients reconnecting,
/// the reconciler's next round).
const AFTERMATH: Duration = Duration::from_secs(2);

/// Prints the table; true when there is no violation.
pub fn print(
    args: &Args,
    shared: &Shared,
    faults: &[Injected],
    violations: &[String],
    samples: &[Sample],
) -> bool {
    let ops = lock(&shared.ops).clone();
    println!();
    println!(
        "== chaos report: topology {}, fallback {}, duration {}, seed {}{}",
        match args.topology {
            Topology::Single => "single",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        },
        match args.fallback {
            crate::Fallback::FailClosed => "fail-closed",
            crate::Fallback::Postgres => "postgres",
        },
        humantime::format_duration(args.duration),
        args.seed,
        if args.own_postgres_port.is_some() {
            ", own Postgres"
        } else {
            ""
        }
    );

    println!();
    println!("operations ({} answers)", ops.len());
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for op in &ops {
        *by_kind
            .entry(op.kind)
            .or_default()
            .entry(op.outcome.as_str())
            .or_default() += 1;
    }
    println!("  {:<18} {:<42} {:>8}", "kind", "outcome", "count");
    for (kind, outcomes) in &by_kind {
        let mut outcomes: Vec<_> = outcomes.iter().collect();
        outcomes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (outcome, count) in outcomes {
            println!("  {kind:<18} {outcome:<42} {count:>8}");
        }
    }

    let odd = lock(&shared.odd_answers).clone();
    if !odd.is_empty() {
        println!("  INTERNAL and UNKNOWN answers, the first of each:");
        for (what, messages) in &odd {
            for message in messages {
                println!("    {what}: {message}");
            }
        }
    }

    println!();
    println!("faults injected ({})", faults.len());
    let mut by_fault: BTreeMap<&str, u64> = BTreeMap::new();
    for fault in faults {
        *by_fault.entry(fault.kind.name()).or_default() += 1;
    }
    for (kind, count) in &by_fault {
        println!("  {kind:<42} {count:>8}");
    }
    // A long run's list is the driver's output as it went.
    for fault in faults.iter().filter(|_| faults.len() <= 40) {
        println!(
            "    {:>7.1}s..{:>7.1}s  {:<36} {:<14} {}",
            fault.start.as_secs_f64(),
            fault.end.as_secs_f64(),
            fault.kind.name(),
            fault.target,
            fault.note.as_deref().unwrap_or("")
        );
    }

    println!();
    println!("violations: {}", violations.len());
    for violation in violations {
        println!("  - {violation}");
    }

    println!();
    unavailable_windows(&ops, faults);

    println!();
    latency(&ops, faults);

    if !samples.is_empty() {
        println!();
        resources(samples, args.soak);
    }
    violations.is_empty()
}

fn is_hold(op: &Op) -> bool {
    op.kind == "hold" || op.kind == "stampede-hold"
}

/// The longest run of consecutive UNAVAILABLE answers to holds, in the order they were
/// answered.
fn unavailable_windows(ops: &[Op], faults: &[Injected]) {
    let holds = ops.iter().filter(|op| is_hold(op)).count();
    let unavailable = ops
        .iter()
        .filter(|op| is_hold(op) && op.outcome.starts_with("UNAVAILABLE"))
        .count();
    let (windows, longest) = stretches(ops);
    println!("UNAVAILABLE holds: {unavailable} of {holds} holds, in {windows} stretches");
    match longest {
        Some((start, end, n)) => {
            let during: Vec<&str> = faults
                .iter()
                .filter(|f| f.start <= end && start <= f.end + AFTERMATH)
                .map(|f| f.kind.name())
                .collect();
            println!(
                "  longest: {:.2}s ({n} answers in a row) from {:.1}s to {:.1}s, during: {}",
                (end - start).as_secs_f64(),
                start.as_secs_f64(),
                end.as_secs_f64(),
                if during.is_empty() {
                    "no fault".to_owned()
                } else {
                    during.join(", ")
                }
            );
        }
        None => println!("  longest: none"),
    }
}

/// The stretches of holds answered UNAVAILABLE one after another (by the time of the answer):
/// how many, and the longest as (first sent, last answered, answers).
fn stretches(ops: &[Op]) -> (usize, Option<(Duration, Duration, usize)>) {
    let mut holds: Vec<&Op> = ops.iter().filter(|op| is_hold(op)).collect();
    holds.sort_by_key(|op| op.start + op.latency);
    let mut longest: Option<(Duration, Duration, usize)> = None;
    let mut windows = 0;
    let mut run: Option<(Duration, Duration, usize)> = None;
    for op in &holds {
        if op.outcome.starts_with("UNAVAILABLE") {
            let end = op.start + op.latency;
            run = Some(match run {
                Some((start, _, n)) => (start, end, n + 1),
                None => {
                    windows += 1;
                    (op.start, end, 1)
                }
            });
        } else if let Some(done) = run.take() {
            longest = longest_of(longest, done);
        }
    }
    if let Some(done) = run {
        longest = longest_of(longest, done);
    }
    (windows, longest)
}

fn longest_of(
    longest: Option<(Duration, Duration, usize)>,
    run: (Duration, Duration, usize),
) -> Option<(Duration, Duration, usize)> {
    match longest {
        Some(l) if l.1 - l.0 >= run.1 - run.0 => Some(l),
        _ => Some(run),
    }
}

/// p50 and p99 of each kind's calls sent during a fault (or just after it) and of the others.
fn latency(ops: &[Op], faults: &[Injected]) {
    let under_fault = |op: &Op| {
        faults
            .iter()
            .any(|f| f.start <= op.start && op.start <= f.end + AFTERMATH)
    };
    let mut kinds: BTreeMap<&str, (Histogram<u64>, Histogram<u64>)> = BTreeMap::new();
    let mut all = (histogram(), histogram());
    for op in ops {
        let micros = u64::try_from(op.latency.as_micros()).unwrap_or(u64::MAX);
        let (faulted, calm) = kinds
            .entry(op.kind)
            .or_insert_with(|| (histogram(), histogram()));
        if under_fault(op) {
            faulted.saturating_record(micros);
            all.0.saturating_record(micros);
        } else {
            calm.saturating_record(micros);
            all.1.saturating_record(micros);
        }
    }
    println!("latency (ms), calls sent under faults vs. calm");
    println!(
        "  {:<18} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "kind", "faulted", "p50", "p99", "calm", "p50", "p99"
    );
    let row = |kind: &str, faulted: &Histogram<u64>, calm: &Histogram<u64>| {
        println!(
            "  {kind:<18} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9}",
            faulted.len(),
            ms(faulted, 0.5),
            ms(faulted, 0.99),
            calm.len(),
            ms(calm, 0.5),
            ms(calm, 0.99)
        );
    };
    for (kind, (faulted, calm)) in &kinds {
        row(kind, faulted, calm);
    }
    row("all", &all.0, &all.1);
}

fn histogram() -> Histogram<u64> {
    // From a microsecond to ten minutes.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("a histogram of 3 significant figures")
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> String {
    if histogram.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{:.1}",
            histogram.value_at_quantile(quantile) as f64 / 1000.0
        )
    }
}

/// What each service process held over the run. For each, the instance that lived longest
/// is judged: it grew when the median of its last third of samples under load is above that of
/// its first third (after a warm-up) by more than a quarter and more than a fixed slack.
fn resources(samples: &[Sample], soak: bool) {
    println!("service processes (longest-lived instance of each)");
    println!(
        "  {:<14} {:>6} {:>8} {:>20} {:>16} {:>16} {:>8}",
        "process",
        "pids",
        "samples",
        "RSS MiB first/last",
        "fds first/last",
        "conns first/last",
        "grew"
    );
    let mut names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        let mut pids: Vec<u32> = mine.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let Some(longest) = pids
            .iter()
            .max_by_key(|pid| mine.iter().filter(|s| s.pid == **pid).count())
        else {
            continue;
        };
        let life: Vec<&Sample> = mine.iter().filter(|s| s.pid == *longest).copied().collect();
        let warm_from = life.first().map_or(Duration::ZERO, |s| s.at) + Duration::from_secs(20);
        let loaded: Vec<&Sample> = life
            .iter()
            .filter(|s| !s.quiet && s.at >= warm_from)
            .copied()
            .collect();
        let quiet = life.iter().rev().find(|s| s.quiet);
        let verdict = if loaded.len() < 6 {
            "n/a".to_owned()
        } else {
            let third = loaded.len() / 3;
            let (first, last) = (&loaded[..third], &loaded[loaded.len() - third..]);
            let mut grew = Vec::new();
            if grown(first, last, |s| s.rss_kib, 16 * 1024) {
                grew.push("rss");
            }
            if grown(first, last, |s| s.fds, 16) {
                grew.push("fds");
            }
            if grown(first, last, |s| s.connections, 16) {
                grew.push("conns");
            }
            if grew.is_empty() {
                "no".to_owned()
            } else {
                format!("YES: {}", grew.join(","))
            }
        };
        let first = loaded.first().or(life.first());
        let last = quiet.or(life.last());
        if let (Some(first), Some(last)) = (first, last) {
            println!(
                "  {name:<14} {:>6} {:>8} {:>20} {:>16} {:>16} {:>8}",
                pids.len(),
                life.len(),
                format!(
                    "{:.1}/{:.1}",
                    first.rss_kib as f64 / 1024.0,
                    last.rss_kib as f64 / 1024.0
                ),
                format!("{}/{}", first.fds, last.fds),
                format!("{}/{}", first.connections, last.connections),
                if soak { verdict.as_str() } else { "-" }
            );
        }
    }
    println!(
        "  (first: after 20s of warm-up; last: once quiet; grew: last third of the samples under \
         load above the first third by over 25% and over 16 MiB / 16 fds / 16 connections)"
    );
}

fn grown(first: &[&Sample], last: &[&Sample], of: impl Fn(&Sample) -> u64, slack: u64) -> bool {
    let median = |samples: &[&Sample]| {
        let mut values: Vec<u64> = samples.iter().map(|s| of(s)).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    let (before, after) = (median(first), median(last));
    after > before + slack && after * 4 > before * 5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: &'static str, outcome: &str, start_ms: u64, latency_ms: u64) -> Op {
        Op {
            kind,
            outcome: outcome.to_owned(),
            start: Duration::from_millis(start_ms),
            latency: Duration::from_millis(latency_ms),
        }
    }

    #[test]
    fn the_longest_stretch_is_of_holds_answered_unavailable_one_after_another() {
        let ops = [
            op("hold", "OK", 0, 10),
            op("hold", "UNAVAILABLE", 20, 10),
            op("pay", "OK", 25, 1),
            op("stampede-hold", "UNAVAILABLE", 40, 20),
            op("hold", "OK", 70, 5),
            op("hold", "UNAVAILABLE", 100, 1_000),
            // Sent later, answered before the one above: it ends the first stretch of two.
            op("hold", "ALREADY_EXISTS SEAT_TAKEN", 200, 10),
        ];
        let (windows, longest) = stretches(&ops);
        assert_eq!(windows, 2);
        assert_eq!(
            longest,
            Some((Duration::from_millis(100), Duration::from_millis(1_100), 1))
        );
        let (windows, longest) = stretches(&ops[..5]);
        assert_eq!(windows, 1);
        assert_eq!(
            longest,
            Some((Duration::from_millis(20), Duration::from_millis(60), 2))
        );
    }

    fn sample(rss_kib: u64) -> Sample {
        Sample {
            name: "reservation-0".to_owned(),
            pid: 1,
            at: Duration::ZERO,
            rss_kib,
            fds: 20,
            connections: 10,
            quiet: false,
        }
    }

    fn refs(samples: &[Sample]) -> Vec<&Sample> {
        samples.iter().collect()
    }

    #[test]
    fn growth_is_beyond_a_quarter_and_the_slack() {
        let first = [sample(30_000), sample(31_000), sample(32_000)];
        let small = [sample(40_000), sample(41_000), sample(42_000)];
        let large = [sample(60_000), sample(61_000), sample(62_000)];
        // +10 MiB: over a quarter, under the 16 MiB slack.
        assert!(!grown(
            &refs(&first),
            &refs(&small),
            |s| s.rss_kib,
            16 * 1024
        ));
        assert!(grown(
            &refs(&first),
            &refs(&large),
            |s| s.rss_kib,
            16 * 1024
        ));
        assert!(!grown(&refs(&first), &refs(&first), |s| s.fds, 16));
    }
}
