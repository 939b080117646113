//! The reconciler every replica runs: it drives payments left `PAYING` (the wallet gave no
//! answer, or the process died mid-payment) to an end by re-sending their attempt's idempotent
//! `Use`, and finishes cancellations of paid reservations interrupted between their refund and
//! their release.

use std::time::Duration;

use crate::domain::Reservations;

/// Reconciles stuck payments every `interval` until the task is dropped.
pub async fn reconcile_every(
    reservations: Reservations,
    interval: Duration,
    grace: Duration,
    batch_size: i64,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = reservations.reconcile(grace, batch_size).await {
            crate::metrics::background_failure("reconcile");
            tracing::warn!(%error, "reconciliation failed, retrying on the next tick");
        }
    }
}
