//! (c) and (d) again through the reservation-svc whose Redis is out of reach
//! (`SEAT_LOCK_FALLBACK=postgres`): the cost of seat locks in Postgres during a Redis outage,
//! against the same scenarios with Redis, and the stampede still to one winner.

use super::context::{Bench, CLIENTS, DEGRADED_RESERVATION, STAMPEDE_CLIENTS, Spec};
use super::{ScenarioResult, relative_target};
use crate::access::Service;
use crate::probe;
use crate::report::{Scenario, Target, thousands};

impl Bench {
    /// (c) and (d) through the reservation-svc with seat locks in Postgres, against the same
    /// scenarios with Redis (`stampede`, `distinct`): the stampede must still have one winner.
    /// Nothing without that service.
    pub(super) async fn degraded(
        &self,
        stampede: &Scenario,
        distinct: &Scenario,
    ) -> anyhow::Result<Vec<ScenarioResult>> {
        let (Some(service), Some(metrics)) =
            (&self.degraded, &self.args.degraded_reservation_metrics)
        else {
            return Ok(Vec::new());
        };
        let before = locks_in_postgres(metrics).await?;
        let (degraded_stampede, held) = self.degraded_stampede(service).await?;
        let mid = locks_in_postgres(metrics).await?;
        let degraded_distinct = self.degraded_distinct(service).await?;
        let after = locks_in_postgres(metrics).await?;

        let mut stampede_result = ScenarioResult::alone(degraded_stampede);
        stampede_result.targets = vec![
            Target {
                what: "stampede with seat locks in Postgres: reservations of the seat".to_owned(),
                goal: "exactly 1".to_owned(),
                met: held == "1",
                measured: held,
            },
            relative_target(
                "stampede with seat locks in Postgres vs with Redis",
                &stampede_result.scenario,
                stampede,
                0.4,
            ),
        ];
        let mut distinct_result = ScenarioResult::alone(degraded_distinct);
        distinct_result.targets = vec![relative_target(
            "distinct-seat holds with seat locks in Postgres vs with Redis",
            &distinct_result.scenario,
            distinct,
            0.9,
        )];
        distinct_result.notes = vec![format!(
            "The reservation-svc of the rows \"seat locks in Postgres\" runs with a `REDIS_URL` \
             where nothing listens and `SEAT_LOCK_FALLBACK=postgres`: {} of its stampede's \
             holds and {} of its distinct-seat holds took the seat's lock in Postgres (the \
             rest of the stampede was answered from the seat this replica remembered taken).",
            thousands((mid - before).round() as u64),
            thousands((after - mid).round() as u64),
        )];
        Ok(vec![stampede_result, distinct_result])
    }

    /// (c) through `service`, and the reservations of its seat.
    async fn degraded_stampede(&self, service: &Service) -> anyhow::Result<(Scenario, String)> {
        self.start_window();
        let (measured, schedule_id) = self.stampede_holds(service).await?;
        let scenario = self.observed(
            Spec::calls(
                "degraded-stampede",
                "(c) stampede, seat locks in Postgres (Redis out of reach)",
                STAMPEDE_CLIENTS,
            ),
            &measured,
            &[DEGRADED_RESERVATION],
        );
        let held = probe::psql_value(
            &self.args.reservation_database_url,
            &format!("SELECT count(*) FROM reservations WHERE schedule_id = {schedule_id}"),
        )
        .await?;
        Ok((scenario, held))
    }

    /// (d) through `service`.
    async fn degraded_distinct(&self, service: &Service) -> anyhow::Result<Scenario> {
        let measured = self.distinct_holds(service).await?;
        Ok(self.observed(
            Spec::successes(
                "degraded-distinct-seats",
                "(d) distinct seats, seat locks in Postgres (Redis out of reach)",
                CLIENTS,
            ),
            &measured,
            &[DEGRADED_RESERVATION],
        ))
    }
}

/// The seat locks the service at `metrics` has taken in Postgres so far.
async fn locks_in_postgres(metrics: &str) -> anyhow::Result<f64> {
    probe::scrape(metrics, "ticketing_seat_lock_total{outcome=\"postgres\"}").await
}
