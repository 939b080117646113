//! The expiry sweeper every replica runs: it expires lapsed holds in batches and frees their
//! seats (reads already treat a lapsed hold as expired; the sweeper makes the rows say so).

use std::time::Duration;

use crate::domain::Reservations;

/// Sweeps every `interval` until the task is dropped. A full batch is followed at once by the
/// next, so a backlog drains without waiting for the next tick.
pub async fn sweep_every(reservations: Reservations, interval: Duration, batch_size: i64) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        loop {
            match reservations.sweep(batch_size).await {
                Ok(expired) => {
                    crate::metrics::reservations_expired(expired);
                    if expired > 0 {
                        tracing::info!(expired, "expired lapsed holds");
                    }
                    if i64::try_from(expired).unwrap_or(i64::MAX) < batch_size {
                        break;
                    }
                }
                Err(error) => {
                    crate::metrics::background_failure("sweep");
                    tracing::warn!(%error, "sweep failed, retrying on the next tick");
                    break;
                }
            }
        }
    }
}
