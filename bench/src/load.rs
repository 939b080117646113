//! The closed-loop load driver: a fixed number of requests handed out one at a time to a fixed
//! number of concurrent clients, each request's latency recorded in an HDR histogram under the
//! name of its outcome.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// The outcome name of a call that succeeded.
pub const OK: &str = "OK";

/// Latencies are recorded in microseconds, from 1 µs to 60 s, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Records a latency, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    histogram.saturating_record(micros);
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub elapsed: Duration,
    /// Latencies by outcome: [`OK`], or the gRPC code's name of a failed call.
    pub outcomes: BTreeMap<&'static str, Histogram<u64>>,
}

impl Measured {
    /// Calls answered, whatever the answer.
    pub fn total(&self) -> u64 {
        self.outcomes.values().map(Histogram::len).sum()
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).map_or(0, Histogram::len)
    }

    /// One histogram of the named outcomes (all of them for `None`).
    pub fn latencies(&self, only: Option<&[&str]>) -> Histogram<u64> {
        let mut merged = new_histogram();
        for (outcome, histogram) in &self.outcomes {
            if only.is_none_or(|names| names.contains(outcome)) {
                // Same bounds on both sides, so adding cannot fail.
                let _ = merged.add(histogram);
            }
        }
        merged
    }

    /// Outcome counts by name, for the report.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.outcomes
            .iter()
            .map(|(outcome, histogram)| ((*outcome).to_owned(), histogram.len()))
            .collect()
    }
}

/// Sends `requests` calls from `clients` concurrent clients. Client `c` uses `connections[c %
/// connections.len()]`; `call(connection, request_index, client)` makes one request and names
/// its outcome. Requests are numbered `0..requests`, each sent exactly once.
pub async fn drive<C, F, Fut>(
    label: &str,
    requests: u64,
    clients: usize,
    connections: &[C],
    call: F,
) -> anyhow::Result<Measured>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = &'static str> + Send,
{
    anyhow::ensure!(!connections.is_empty(), "no connection to send {label} on");
    let progress = progress_bar(label, requests);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let connection = connections[client % connections.len()].clone();
            let call = call.clone();
            let next = Arc::clone(&next);
            let progress = progress.clone();
            tokio::spawn(async move {
                // Plain pairs while the clock runs: a histogram per client (hundreds of KiB
                // each, a thousand clients) would cost the run more than its calls.
                let mut answered: Vec<(&'static str, Duration)> = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        return answered;
                    }
                    let sent = Instant::now();
                    let outcome = call(connection.clone(), index, client).await;
                    answered.push((outcome, sent.elapsed()));
                    progress.inc(1);
                }
            })
        })
        .collect();
    let answered = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let mut outcomes: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    for worker in answered {
        for (outcome, latency) in worker? {
            record(
                outcomes.entry(outcome).or_insert_with(new_histogram),
                latency,
            );
        }
    }
    Ok(Measured { elapsed, outcomes })
}

/// A bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(label: &str, length: u64) -> ProgressBar {
    let progress = ProgressBar::new(length);
    let style = ProgressStyle::with_template(
        "{prefix:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    progress.set_style(style);
    progress.set_prefix(label.to_owned());
    progress
}

pub use shared::metrics::code_name;

/// The outcome name of a call's result.
pub fn outcome<T>(result: &Result<T, tonic::Status>) -> &'static str {
    match result {
        Ok(_) => OK,
        Err(status) => code_name(status.code()),
    }
}
