//! Where holds take their seat's lock when Redis is out of reach (`SEAT_LOCK_FALLBACK`), and
//! the per-replica breaker that decides it for `postgres`: after [`FAILURES_TO_OPEN`] lock
//! commands in a row that Redis did not answer (an error or a timeout; a lock held by another
//! request is an answer), holds stop asking Redis and take the seat's lock in Postgres; a
//! canary write every [`PROBE_INTERVAL`] while open closes it again as soon as Redis answers.
//!
//! Both locks only keep a stampede of losers away from the transaction that decides, and
//! Postgres decides in both under the seat's row lock, so replicas in different modes at the
//! same time, or one switching mid-stampede, stay exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

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

/// Lock commands in a row without an answer from Redis that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;

/// How often an open breaker writes the canary key to see whether Redis answers again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

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
    /// Lock commands in a row that Redis did not answer.
    failures: AtomicU32,
    open: AtomicBool,
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

    /// Redis answered a lock command (whatever the answer).
    pub fn answered(&self) {
        self.inner.failures.store(0, Ordering::Release);
    }

    /// Redis did not answer a lock command; the last of [`FAILURES_TO_OPEN`] in a row opens
    /// the breaker.
    pub fn failed(&self, error: &str) {
        let failures = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= FAILURES_TO_OPEN
            && self
                .inner
                .open
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(
                failures,
                error,
                "seat locks switched to postgres: redis does not answer"
            );
            crate::metrics::seat_lock_switch(LockMode::Postgres);
        }
    }

    /// The canary write went through: holds take their locks in Redis again.
    pub fn close(&self) {
        self.inner.failures.store(0, Ordering::Release);
        if self
            .inner
            .open
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::info!("seat locks switched back to redis: it answers again");
            crate::metrics::seat_lock_switch(LockMode::Redis);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_in_a_row_open_it_and_a_close_starts_the_count_again() {
        let breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed("timeout");
        }
        breaker.answered();
        breaker.failed("timeout");
        assert_eq!(
            breaker.mode(),
            LockMode::Redis,
            "the answer reset the count"
        );
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed("timeout");
        }
        assert_eq!(breaker.mode(), LockMode::Postgres);
        breaker.close();
        assert_eq!(breaker.mode(), LockMode::Redis);
        breaker.failed("timeout");
        assert_eq!(breaker.mode(), LockMode::Redis);
    }
}
