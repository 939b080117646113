//! (d) Holds of distinct seats of a 100,000-seat schedule, against pgbench of the same
//! statement on a raw schedule of its own, with where each hold's CPU goes.

use super::context::{Bench, CLIENTS, PGBENCH_CLIENTS, RESERVATION, Spec};
use super::{ScenarioResult, ratio_target};
use crate::access::Service;
use crate::baseline::{self, Baseline, Pgbench};
use crate::load::Measured;
use crate::probe;
use crate::report::{Scenario, micros};
use crate::scenarios;

/// The key of scenario (d), distinct seats.
pub(super) const DISTINCT_SEATS: &str = "distinct-seats";

impl Bench {
    /// (d) Holds of distinct seats, against pgbench of the same statement on the raw schedule.
    pub(super) async fn distinct_seats(
        &self,
        raw_schedule: &str,
    ) -> anyhow::Result<ScenarioResult> {
        let raw_holds = self.hold_baseline(raw_schedule).await?;
        let measured = self.distinct_holds(&self.production.reservation).await?;
        let mut distinct = self.observed(
            Spec::successes(
                DISTINCT_SEATS,
                "(d) distinct seats: `HoldSeat` over 100,000 seats",
                CLIENTS,
            ),
            &measured,
            &[RESERVATION],
        );
        distinct.against(&raw_holds);
        let target = ratio_target(
            "distinct-seat holds vs raw pgbench of the same SQL",
            &distinct,
            &raw_holds,
            0.8,
        );
        let note = distinct_cpu_note(&distinct, &raw_holds);
        let mut result = ScenarioResult::with_baselines(distinct, vec![raw_holds]);
        result.targets.push(target);
        result.notes.push(note);
        Ok(result)
    }

    /// (d)'s holds through `reservation`, each of a distinct seat of a fresh schedule; the
    /// sampler's window starts once the schedule is made.
    pub(super) async fn distinct_holds(&self, reservation: &Service) -> anyhow::Result<Measured> {
        scenarios::distinct_seats(
            reservation,
            self.sizes.distinct_holds,
            CLIENTS,
            self.sizes.seats,
            || self.start_window(),
        )
        .await
    }

    /// pgbench of the hold's statement, as many holds as (d)'s, on `raw_schedule`.
    async fn hold_baseline(&self, raw_schedule: &str) -> anyhow::Result<Baseline> {
        Pgbench {
            key: "pgbench-hold",
            name: "pgbench `HoldSeat` SQL, distinct seats",
            database_url: &self.args.reservation_database_url,
            script_name: "hold_seat.sql",
            script: baseline::HOLD_SEAT_SQL,
            clients: PGBENCH_CLIENTS,
            transactions_per_client: self.sizes.distinct_holds / PGBENCH_CLIENTS as u64,
            variables: vec![
                ("schedule_id", raw_schedule.to_owned()),
                ("seat_count", self.sizes.seats.to_string()),
                (
                    "users",
                    scenarios::distinct_seat_users(self.sizes.distinct_holds).to_string(),
                ),
            ],
            work_dir: &self.work_dir,
        }
        .run()
        .await
    }
}

/// Where the CPU of a distinct-seat hold goes, through the service and in pgbench.
fn distinct_cpu_note(distinct: &Scenario, raw_holds: &Baseline) -> String {
    let cpu = &distinct.cpu_per_request;
    let process_us = |name: &str| cpu.by_process_us.get(name).copied().unwrap_or(0.0);
    let (service_us, harness_us) = (process_us(RESERVATION), process_us(probe::HARNESS));
    format!(
        "distinct seats: every core busy, so the rate follows the CPU each hold costs the \
         machine: {} through the service against {} for pgbench's statement. Of the service's, \
         reservation-svc {} and the load generator {}; the other {} are Postgres, Redis and the \
         kernel (loopback TCP, scheduling), where pgbench spends its {} on Postgres and its own \
         client.",
        micros(cpu.machine_us),
        micros(raw_holds.machine_cpu_us),
        micros(service_us),
        micros(harness_us),
        micros((cpu.machine_us - service_us - harness_us).max(0.0)),
        micros(raw_holds.machine_cpu_us),
    )
}
