//! (f) The payment flow, `HoldSeat` + `PayReservation` pairs by users charged beforehand,
//! against pgbench of one payment's statements on both databases at once: as the services ran
//! them before their steps were pipelined, and as one statement per decision.

use super::context::{
    Bench, CLIENTS, PAYMENT_FIRST_USER, RAW_PAYMENT_FIRST_USER, RESERVATION, Spec, WALLET,
};
use super::{ScenarioResult, ratio_target};
use crate::load::{Measured, OK};
use crate::payment_baseline;
use crate::report::thousands;
use crate::scenarios;

/// Connections of each side of the payment baselines: with the services' pools open, the
/// shared server's 100 connections leave room for no more.
const PAYMENT_PGBENCH_CLIENTS: usize = 8;

impl Bench {
    /// (f) The whole payment flow.
    pub(super) async fn payments(&self) -> anyhow::Result<ScenarioResult> {
        let measured: Measured = scenarios::payments(
            &self.production.reservation,
            &self.production.wallet,
            self.sizes.payments,
            CLIENTS,
            PAYMENT_FIRST_USER,
            self.sizes.payment_users,
            &self.run_id,
            || self.start_window(),
        )
        .await?;
        let spec = Spec {
            rate_unit: "paid/s",
            latency_of: Some(&[OK]),
            ..Spec::successes(
                "payments",
                "(f) payment flow: `HoldSeat` + `PayReservation`",
                CLIENTS,
            )
        };
        let mut payments = self.observed(spec, &measured, &[RESERVATION, WALLET]);
        let setting = payment_baseline::Setting {
            reservation_database_url: &self.args.reservation_database_url,
            wallet_database_url: &self.args.wallet_database_url,
            payments: self.sizes.payments,
            clients: PAYMENT_PGBENCH_CLIENTS,
            first_user: RAW_PAYMENT_FIRST_USER,
            users: self.sizes.payment_users,
            work_dir: &self.work_dir,
        };
        setting.fixtures().await?;
        let before = setting
            .run(
                payment_baseline::Design {
                    key: "pgbench-payment",
                    name: "pgbench payment statements before pipelining, both databases",
                    reservation_sql: payment_baseline::RESERVATION_SQL,
                    wallet_sql: payment_baseline::WALLET_SQL,
                    first_reservation: 1_000_000_000_000,
                },
                true,
            )
            .await?;
        let one_statement = setting
            .run(
                payment_baseline::Design {
                    key: "pgbench-payment-one-statement",
                    name: "pgbench one statement per decision, both databases",
                    reservation_sql: payment_baseline::RESERVATION_ONE_STATEMENT_SQL,
                    wallet_sql: payment_baseline::WALLET_ONE_STATEMENT_SQL,
                    first_reservation: 2_000_000_000_000,
                },
                false,
            )
            .await?;
        payments.against(&before[0]);
        let targets = vec![
            ratio_target(
                "payment flow vs raw pgbench of the payment statements before pipelining",
                &payments,
                &before[0],
                1.0,
            ),
            ratio_target(
                "payment flow vs raw pgbench of one statement per decision",
                &payments,
                &one_statement[0],
                0.6,
            ),
        ];
        let notes = vec![
            format!(
                "(f)'s raw baselines replay one payment's statements with pgbench against both \
                 databases at once, {PAYMENT_PGBENCH_CLIENTS} connections each (the services' \
                 pools hold most of the shared server's 100): the reservation side (the hold's \
                 pipeline, then the start and the settle) and the wallet's `Use`, as many \
                 payments each; the pair's rate is the slower side's, its latencies the sum of \
                 both sides'. \"before pipelining\": the statements as the services ran them \
                 with a transaction of diesel's per step and three selects to lock a seat (the \
                 sides alone: {} and {} /s); \"one statement per decision\": a sketch of the \
                 least this SQL can take (each step one conditional statement).",
                thousands(before.get(1).map_or(0.0, |b| b.rate).round() as u64),
                thousands(before.get(2).map_or(0.0, |b| b.rate).round() as u64),
            ),
            format!(
                "Each service runs at most `DB_POOL_SIZE` (default 16) transactions at once and \
                 queues the other calls for a connection. CPU per payment: the flow {:.0} µs, \
                 pgbench of the statements before pipelining {:.0} µs, of one statement per \
                 decision {:.0} µs (the whole machine's).",
                payments.cpu_per_request.machine_us,
                before[0].machine_cpu_us,
                one_statement[0].machine_cpu_us,
            ),
        ];
        Ok(ScenarioResult {
            scenario: payments,
            baselines: before.into_iter().chain(one_statement).collect(),
            targets,
            notes,
        })
    }
}
