//! What reservation-svc counts beyond the calls and the pool that every service reports (see
//! `shared::metrics`): seat lock outcomes, and the work of the sweeper and the reconciler.

/// Seat lock attempts, by `outcome`: `acquired`, `contended` (another request holds it),
/// `taken` (the key holds the seat's taken mark), `taken_remembered` (this replica remembers the
/// mark and did not ask Redis) or `redis_unavailable`.
pub const SEAT_LOCKS: &str = "ticketing_seat_lock_total";
/// Lapsed holds the sweeper marked `EXPIRED`.
pub const RESERVATIONS_EXPIRED: &str = "ticketing_reservations_expired_total";
/// Payments left `PAYING` that the reconciler drove, by `outcome`: `confirmed`, `refused`
/// (insufficient balance) or `unsettled` (still unsettled, tried again next round).
pub const PAYMENTS_RECONCILED: &str = "ticketing_payments_reconciled_total";
/// Interrupted cancellations of paid reservations that the reconciler took up, by `outcome`:
/// `finished` or `unfinished`.
pub const CANCELLATIONS_RECONCILED: &str = "ticketing_cancellations_reconciled_total";
/// Rounds of background work that failed as a whole, by `task`: `sweep` or `reconcile`.
pub const BACKGROUND_FAILURES: &str = "ticketing_background_failures_total";

/// Gives the metrics above their help text; call once the recorder is installed.
pub fn describe() {
    metrics::describe_counter!(SEAT_LOCKS, "Seat lock attempts, by outcome");
    metrics::describe_counter!(
        RESERVATIONS_EXPIRED,
        "Lapsed holds the sweeper marked EXPIRED"
    );
    metrics::describe_counter!(
        PAYMENTS_RECONCILED,
        "Stuck payments the reconciler drove, by outcome"
    );
    metrics::describe_counter!(
        CANCELLATIONS_RECONCILED,
        "Interrupted cancellations the reconciler took up, by outcome"
    );
    metrics::describe_counter!(
        BACKGROUND_FAILURES,
        "Sweeps and reconciliation rounds that failed as a whole, by task"
    );
}

/// Counts a seat lock attempt.
pub fn seat_lock(outcome: &'static str) {
    metrics::counter!(SEAT_LOCKS, "outcome" => outcome).increment(1);
}

/// Counts holds a sweep expired.
pub fn reservations_expired(count: usize) {
    metrics::counter!(RESERVATIONS_EXPIRED).increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// Counts a stuck payment the reconciler drove.
pub fn payment_reconciled(outcome: &'static str) {
    metrics::counter!(PAYMENTS_RECONCILED, "outcome" => outcome).increment(1);
}

/// Counts an interrupted cancellation the reconciler took up.
pub fn cancellation_reconciled(outcome: &'static str) {
    metrics::counter!(CANCELLATIONS_RECONCILED, "outcome" => outcome).increment(1);
}

/// Counts a sweep or reconciliation round that failed as a whole.
pub fn background_failure(task: &'static str) {
    metrics::counter!(BACKGROUND_FAILURES, "task" => task).increment(1);
}
