//! Where holds take their seat's lock when Redis is out of reach (`SEAT_LOCK_FALLBACK`), and
//! the per-replica breaker that decides it for `postgres`: after [`FAILURES_TO_OPEN`] lock
//! commands or health pings in a row that Redis did not answer (an error or a timeout; a lock
//! held by another request is an answer), holds stop asking Redis and take the seat's lock in
//! Postgres. While open, a canary write to the slot of the last lock that failed (every
//! [`PROBE_INTERVAL`], once the breaker has been open for its back-off) closes it again on
//! probation: the first lock command that then fails opens it at once, for twice as long
//! (up to [`MAX_BACKOFF`]); the first that Redis answers ends the probation and the back-off.
//! So a Redis whose canary's node answers while the seats' node does not (a Cluster shard
//! failing over) costs holds one timeout per back-off, not three per probe.
//!
//! Both locks only keep a stampede of losers away from the transaction that decides, and
//! Postgres decides in both under the seat's row lock, so replicas in different modes at the
//! same time, or one switching mid-stampede, stay exact.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a hold does when Redis does not answer its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LockFallback {
    /// It answers UNAVAILABLE: no seat is held while Redis is out of reach.
    #[default]
    FailClosed,
    /// It takes the seat's lock in Postgres instead, and so does every hold of this replica
    /// while the breaker is open.
    Postgres,
}

/// Lock commands or pings in a row without an answer from Redis that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// How often an open breaker may write the canary to see whether Redis answers again; also its
/// first back-off.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The longest back-off of a breaker that keeps failing its probation.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Where this replica's holds take their seat's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Redis,
    Postgres,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// The breaker of one replica; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Lock commands or pings in a row that Redis did not answer.
    failures: AtomicU32,
    open: AtomicBool,
    /// Closed by a canary, and no lock command answered since.
    probation: AtomicBool,
    /// What only switches and probes read and write.
    switching: Mutex<Switching>,
}

#[derive(Debug)]
struct Switching {
    opened_at: Instant,
    /// How long it stays open before the next canary.
    backoff: Duration,
    /// The key of the last lock command that failed: the canary goes to its slot.
    failed_key: Option<String>,
}

impl Default for Switching {
    fn default() -> Self {
        Self {
            opened_at: Instant::now(),
            backoff: PROBE_INTERVAL,
            failed_key: None,
        }
    }
}

impl Breaker {
    /// A closed breaker; its mode is published at once, so the series exist from the start.
    pub fn new() -> Self {
        crate::metrics::seat_lock_breaker_started();
        Self::default()
    }

    pub fn mode(&self) -> LockMode {
        if self.inner.open.load(Ordering::Acquire) {
            LockMode::Postgres
        } else {
            LockMode::Redis
        }
    }

    /// Redis answered a lock command (whatever the answer): the count of failures starts
    /// again, and a probation ends with its back-off.
    pub fn answered(&self) {
        // Read before written: every hold's lock answers here, and a write each time would
        // bounce the line between cores for nothing.
        if self.inner.failures.load(Ordering::Acquire) != 0 {
            self.inner.failures.store(0, Ordering::Release);
        }
        if self.inner.probation.load(Ordering::Acquire)
            && self.inner.probation.swap(false, Ordering::AcqRel)
        {
            self.switching().backoff = PROBE_INTERVAL;
        }
    }

    /// Redis did not answer a lock command on `key` (or a health ping, `None`); the last of
    /// [`FAILURES_TO_OPEN`] in a row, or the first on probation, opens the breaker.
    pub fn failed(&self, error: &str, key: Option<&str>) {
        let failures = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let on_probation = self.inner.probation.swap(false, Ordering::AcqRel);
        if !on_probation && failures < FAILURES_TO_OPEN {
            return;
        }
        let mut switching = self.switching();
        if let Some(key) = key {
            switching.failed_key = Some(key.to_owned());
        }
        if self
            .inner
            .open
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        switching.opened_at = Instant::now();
        switching.backoff = if on_probation {
            (switching.backoff * 2).min(MAX_BACKOFF)
        } else {
            PROBE_INTERVAL
        };
        tracing::warn!(
            failures,
            error,
            backoff = ?switching.backoff,
            "seat locks switched to postgres: redis does not answer"
        );
        crate::metrics::seat_lock_switch(LockMode::Postgres);
    }

    /// Whether it is open and has been for its back-off: time for a canary write, to the key
    /// this returns (the slot of the last lock that failed, else `default_key`).
    pub fn due_for_probe(&self, default_key: &str) -> Option<String> {
        if self.mode() != LockMode::Postgres {
            return None;
        }
        let switching = self.switching();
        (switching.opened_at.elapsed() >= switching.backoff).then(|| {
            switching
                .failed_key
                .as_ref()
                .map_or_else(|| default_key.to_owned(), |key| format!("{key}:canary"))
        })
    }

    /// The canary write went through: holds take their locks in Redis again, on probation.
    pub fn close(&self) {
        self.inner.failures.store(0, Ordering::Release);
        if self
            .inner
            .open
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inner.probation.store(true, Ordering::Release);
            tracing::info!("seat locks switched back to redis: it answers again");
            crate::metrics::seat_lock_switch(LockMode::Redis);
        }
    }

    fn switching(&self) -> std::sync::MutexGuard<'_, Switching> {
        self.inner
            .switching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_in_a_row_open_it_and_a_close_starts_the_count_again() {
        let breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed("timeout", None);
        }
        breaker.answered();
        breaker.failed("timeout", None);
        assert_eq!(
            breaker.mode(),
            LockMode::Redis,
            "the answer reset the count"
        );
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed("timeout", Some("seat:{7}:1"));
        }
        assert_eq!(breaker.mode(), LockMode::Postgres);
        breaker.close();
        assert_eq!(breaker.mode(), LockMode::Redis);
        breaker.answered();
        breaker.failed("timeout", None);
        assert_eq!(
            breaker.mode(),
            LockMode::Redis,
            "probation ended with the answer"
        );
    }

    #[test]
    fn a_failure_on_probation_opens_it_at_once_for_twice_as_long() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed("timeout", Some("seat:{7}:1"));
        }
        assert_eq!(breaker.switching().backoff, PROBE_INTERVAL);
        breaker.close();
        breaker.failed("timeout", Some("seat:{7}:2"));
        assert_eq!(
            breaker.mode(),
            LockMode::Postgres,
            "one failure on probation"
        );
        assert_eq!(breaker.switching().backoff, PROBE_INTERVAL * 2);
        assert_eq!(
            breaker.due_for_probe("canary"),
            None,
            "not before its back-off"
        );
        breaker.switching().opened_at = Instant::now() - MAX_BACKOFF;
        assert_eq!(
            breaker.due_for_probe("canary").as_deref(),
            Some("seat:{7}:2:canary"),
            "the canary goes to the slot that failed"
        );
        for _ in 0..10 {
            breaker.close();
            breaker.failed("timeout", None);
        }
        assert_eq!(breaker.switching().backoff, MAX_BACKOFF);
        breaker.close();
        breaker.answered();
        breaker.failed("timeout", None);
        assert_eq!(breaker.mode(), LockMode::Redis);
        assert_eq!(
            breaker.switching().backoff,
            PROBE_INTERVAL,
            "reset by the answer"
        );
    }
}
