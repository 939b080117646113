//! What reservation-svc counts beyond the calls and the pool that every service reports (see
//! `shared::metrics`): seat lock outcomes and mode, and the work of the sweeper and the reconciler.

use crate::lock::LockMode;

/// Seat lock attempts, by `outcome`: `acquired`, `contended` (another request holds it),
/// `taken` (the key holds the seat's taken mark), `taken_remembered` (this replica remembers the
/// mark and did not ask Redis), `redis_unavailable`, or `postgres` (a hold that took the
/// seat's lock in Postgres: Redis did not answer, `SEAT_LOCK_FALLBACK=postgres`).
pub const SEAT_LOCKS: &str = "ticketing_seat_lock_total";
/// Where holds take their seat's lock, by `mode`: 1 for the current one (`redis` or
/// `postgres`), 0 for the other.
pub const SEAT_LOCK_MODE: &str = "ticketing_seat_lock_mode";
/// Switches of the seat locks' mode, by `to`: `postgres` (the breaker opened) or `redis`.
pub const SEAT_LOCK_SWITCHES: &str = "ticketing_seat_lock_switches_total";
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

/// Users a replica's ticks called in a waiting room, by `schedule`: summed over the
/// replicas, the room's admissions.
pub const ROOM_ADMITTED: &str = "ticketing_room_admitted_total";
/// A waiting room's users with a number not called yet (before its opening: entrants), by
/// `schedule`, as this replica's last tick saw it.
pub const ROOM_WAITING: &str = "ticketing_room_waiting";
/// A waiting room's called users whose turn is not over, by `schedule`, as this replica's
/// last tick saw it.
pub const ROOM_ACTIVE: &str = "ticketing_room_active";
/// HoldSeat's admission token checks on schedules with a room, by `result`: `ok`, `missing`,
/// `expired`, `invalid` (forged, another user's or schedule's, or no key).
pub const ADMISSION_CHECKS: &str = "ticketing_admission_checks_total";
/// Results of [`ADMISSION_CHECKS`].
pub const ADMISSION_CHECK_RESULTS: [&str; 4] = ["ok", "missing", "expired", "invalid"];

/// Time of a Redis command, by `command` (the script: of the seat locks `acquire`, `release`,
/// `mark`, `clear`, `canary`, `clock`; of the waiting rooms `room_enter`, `room_look`,
/// `room_leave`, `room_release`, `room_tick`) and `result` (`ok`, `error`: refused, timed out,
/// or no connection).
pub const REDIS_COMMAND_DURATION: &str = "ticketing_redis_command_duration_seconds";
/// Time of a Postgres transaction (or single statement) of the store, from asking the pool for
/// a connection to its answer, by `step` (the store's methods: `hold_seat`,
/// `hold_seat_locked_in_postgres`, `begin_pay`, `settle_attempt`, `cancel`,
/// `expire_lapsed_holds`, `claim_stuck_payments`, `claim_unfinished_cancellations`, the names
/// of their trace spans too) and `result` (`ok`, `error`: a refusal of the business rules
/// counts as `ok`).
pub const DB_TRANSACTION_DURATION: &str = "ticketing_db_transaction_duration_seconds";
/// Commands of [`REDIS_COMMAND_DURATION`].
pub const REDIS_COMMANDS: [&str; 11] = [
    "acquire",
    "release",
    "mark",
    "clear",
    "canary",
    "clock",
    "room_enter",
    "room_look",
    "room_leave",
    "room_release",
    "room_tick",
];
/// Steps of [`DB_TRANSACTION_DURATION`].
pub const DB_STEPS: [&str; 8] = [
    "hold_seat",
    "hold_seat_locked_in_postgres",
    "begin_pay",
    "settle_attempt",
    "cancel",
    "expire_lapsed_holds",
    "claim_stuck_payments",
    "claim_unfinished_cancellations",
];

/// Outcomes of [`SEAT_LOCKS`].
pub const SEAT_LOCK_OUTCOMES: [&str; 6] = [
    "acquired",
    "contended",
    "taken",
    "taken_remembered",
    "redis_unavailable",
    "postgres",
];
/// Outcomes of [`PAYMENTS_RECONCILED`].
pub const PAYMENT_OUTCOMES: [&str; 3] = ["confirmed", "refused", "unsettled"];
/// Outcomes of [`CANCELLATIONS_RECONCILED`].
pub const CANCELLATION_OUTCOMES: [&str; 2] = ["finished", "unfinished"];
/// Tasks of [`BACKGROUND_FAILURES`].
pub const BACKGROUND_TASKS: [&str; 2] = ["sweep", "reconcile"];

/// Gives the metrics above their help text and registers every series of them at zero, so
/// that a fresh process lists them; call once the recorder is installed.
pub fn describe() {
    for outcome in SEAT_LOCK_OUTCOMES {
        metrics::counter!(SEAT_LOCKS, "outcome" => outcome).increment(0);
    }
    for outcome in PAYMENT_OUTCOMES {
        metrics::counter!(PAYMENTS_RECONCILED, "outcome" => outcome).increment(0);
    }
    for outcome in CANCELLATION_OUTCOMES {
        metrics::counter!(CANCELLATIONS_RECONCILED, "outcome" => outcome).increment(0);
    }
    for task in BACKGROUND_TASKS {
        metrics::counter!(BACKGROUND_FAILURES, "task" => task).increment(0);
    }
    metrics::counter!(RESERVATIONS_EXPIRED).increment(0);
    for result in ADMISSION_CHECK_RESULTS {
        metrics::counter!(ADMISSION_CHECKS, "result" => result).increment(0);
    }
    metrics::describe_counter!(
        ROOM_ADMITTED,
        "Users this replica's ticks called in a waiting room, by schedule"
    );
    metrics::describe_gauge!(
        ROOM_WAITING,
        "Users of a waiting room whose number is not called yet, by schedule"
    );
    metrics::describe_gauge!(
        ROOM_ACTIVE,
        "Called users of a waiting room whose turn is not over, by schedule"
    );
    metrics::describe_counter!(
        ADMISSION_CHECKS,
        "HoldSeat's admission token checks on schedules with a waiting room, by result"
    );
    // Registered, so that they render with empty buckets.
    for command in REDIS_COMMANDS {
        let _ = metrics::histogram!(REDIS_COMMAND_DURATION, "command" => command, "result" => "ok");
    }
    for step in DB_STEPS {
        let _ = metrics::histogram!(DB_TRANSACTION_DURATION, "step" => step, "result" => "ok");
    }
    metrics::describe_histogram!(
        REDIS_COMMAND_DURATION,
        metrics::Unit::Seconds,
        "Time of a Redis command of the seat locks and waiting rooms, by command and result"
    );
    metrics::describe_histogram!(
        DB_TRANSACTION_DURATION,
        metrics::Unit::Seconds,
        "Time of a Postgres transaction of the store, connection wait included, by step and result"
    );
    // The mode and its switches are published by the breaker, with SEAT_LOCK_FALLBACK=postgres.
    metrics::describe_counter!(SEAT_LOCKS, "Seat lock attempts, by outcome");
    metrics::describe_gauge!(
        SEAT_LOCK_MODE,
        "Where holds take their seat's lock: 1 for the current mode"
    );
    metrics::describe_counter!(
        SEAT_LOCK_SWITCHES,
        "Switches of the seat locks' mode, by the mode switched to"
    );
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

/// Records the time of a Redis command.
pub fn redis_command(command: &'static str, ok: bool, took: std::time::Duration) {
    let result = if ok { "ok" } else { "error" };
    metrics::histogram!(REDIS_COMMAND_DURATION, "command" => command, "result" => result)
        .record(took.as_secs_f64());
}

/// Runs one step of the store in its Postgres span ([`shared::telemetry::postgres_span`]),
/// recording its time as `step`.
pub async fn db_transaction<T, E>(
    step: &'static str,
    transaction: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument;

    let started = std::time::Instant::now();
    let answer = transaction
        .instrument(shared::telemetry::postgres_span(step))
        .await;
    let result = if answer.is_ok() { "ok" } else { "error" };
    metrics::histogram!(DB_TRANSACTION_DURATION, "step" => step, "result" => result)
        .record(started.elapsed().as_secs_f64());
    answer
}

/// Counts a seat lock attempt.
pub fn seat_lock(outcome: &'static str) {
    metrics::counter!(SEAT_LOCKS, "outcome" => outcome).increment(1);
}

/// Publishes where holds take their seat's lock.
pub fn seat_lock_mode(mode: LockMode) {
    for each in [LockMode::Redis, LockMode::Postgres] {
        let current = if each == mode { 1.0 } else { 0.0 };
        metrics::gauge!(SEAT_LOCK_MODE, "mode" => each.as_str()).set(current);
    }
}

/// Publishes the breaker's first mode (`redis`), with its switches at zero.
pub fn seat_lock_breaker_started() {
    for mode in [LockMode::Redis, LockMode::Postgres] {
        metrics::counter!(SEAT_LOCK_SWITCHES, "to" => mode.as_str()).increment(0);
    }
    seat_lock_mode(LockMode::Redis);
}

/// Counts a switch of the seat locks' mode, and publishes the new one.
pub fn seat_lock_switch(to: LockMode) {
    metrics::counter!(SEAT_LOCK_SWITCHES, "to" => to.as_str()).increment(1);
    seat_lock_mode(to);
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

/// Publishes what a tick of a waiting room did and saw.
pub fn room_tick(schedule_id: i64, admitted: i64, waiting: i64, active: i64) {
    let schedule = schedule_id.to_string();
    metrics::counter!(ROOM_ADMITTED, "schedule" => schedule.clone())
        .increment(u64::try_from(admitted).unwrap_or(0));
    metrics::gauge!(ROOM_WAITING, "schedule" => schedule.clone()).set(waiting as f64);
    metrics::gauge!(ROOM_ACTIVE, "schedule" => schedule).set(active as f64);
}

/// Counts an admission token check of HoldSeat.
pub fn admission_check(result: &'static str) {
    metrics::counter!(ADMISSION_CHECKS, "result" => result).increment(1);
}
