//! (f) The payment flow, `HoldSeat` + `PayReservation` pairs by users charged beforehand,
//! against pgbench of one payment's statements on both databases at once: as the services ran
//! them before their steps were pipelined, and as one statement per decision.

use super::context::{
    Bench, CLIENTS, PAYMENT_FIRST_USER, RAW_PAYMENT_FIRST_USER, RESERVATION, Spec, WALLET,
};
use super::{ScenarioResult, ratio_target};
use crate::baseline::Baseline;
use crate::load::{Measured, OK};
use crate::payment_baseline::{self, Design, Setting};
use crate::report::{Scenario, Target, thousands};
use crate::scenarios;

/// Connections of each side of the payment baselines: with the services' pools open, the
/// shared server's 100 connections leave room for no more.
const PAYMENT_PGBENCH_CLIENTS: usize = 8;

/// The payment baselines: before pipelining (both databases, then each side alone) and one
/// statement per decision (both databases).
struct PaymentBaselines {
    before: Vec<Baseline>,
    one_statement: Vec<Baseline>,
}

impl Bench {
    /// (f) The whole payment flow, then its raw baselines.
    pub(super) async fn payments(&self) -> anyhow::Result<ScenarioResult> {
        let mut payments = self.payment_flow().await?;
        let raw = self.payment_baselines().await?;
        payments.against(&raw.before[0]);
        let targets = payment_targets(&payments, &raw);
        let notes = payment_notes(&payments, &raw);
        let mut result = ScenarioResult::with_baselines(
            payments,
            raw.before.into_iter().chain(raw.one_statement).collect(),
        );
        result.targets = targets;
        result.notes = notes;
        Ok(result)
    }

    /// (f)'s pairs through the production services, by the users from
    /// [`PAYMENT_FIRST_USER`].
    async fn payment_flow(&self) -> anyhow::Result<Scenario> {
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
        Ok(self.observed(spec, &measured, &[RESERVATION, WALLET]))
    }

    /// pgbench of one payment's statements on both databases, on fixtures of their own.
    async fn payment_baselines(&self) -> anyhow::Result<PaymentBaselines> {
        let setting = Setting {
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
                Design {
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
                Design {
                    key: "pgbench-payment-one-statement",
                    name: "pgbench one statement per decision, both databases",
                    reservation_sql: payment_baseline::RESERVATION_ONE_STATEMENT_SQL,
                    wallet_sql: payment_baseline::WALLET_ONE_STATEMENT_SQL,
                    first_reservation: 2_000_000_000_000,
                },
                false,
            )
            .await?;
        Ok(PaymentBaselines {
            before,
            one_statement,
        })
    }
}

/// The flow held to 1.0× of the statements before pipelining and 0.6× of one statement per
/// decision.
fn payment_targets(payments: &Scenario, raw: &PaymentBaselines) -> Vec<Target> {
    vec![
        ratio_target(
            "payment flow vs raw pgbench of the payment statements before pipelining",
            payments,
            &raw.before[0],
            1.0,
        ),
        ratio_target(
            "payment flow vs raw pgbench of one statement per decision",
            payments,
            &raw.one_statement[0],
            0.6,
        ),
    ]
}

/// What the payment baselines replay, and the CPU per payment of the flow and of each.
fn payment_notes(payments: &Scenario, raw: &PaymentBaselines) -> Vec<String> {
    let before = &raw.before;
    vec![
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
            raw.one_statement[0].machine_cpu_us,
        ),
    ]
}
