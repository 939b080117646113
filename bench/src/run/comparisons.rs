//! The cost of TLS and tokens: (a), (c), (d) and (f) again through the plaintext pair, in
//! rounds that alternate with the production pair's, each compared with its production run.
//! The plaintext rounds are kept for the abuse scenario, whose run without attack is (d)'s.

use super::context::{Bench, CLIENTS, HOT_USER, PAYMENT_FIRST_USER, Pair, Spec};
use crate::load::{Measured, OK};
use crate::report::{Comparison, Scenario};
use crate::scenarios;
use crate::tls_cost::{self, Side};

/// Rounds of each side in the comparisons of production with plaintext: five for the
/// scenarios that take a second or two, whose single runs swing with the machine's other work;
/// one for those of ten seconds or more.
const SHORT_SCENARIO_ROUNDS: usize = 5;
const LONG_SCENARIO_ROUNDS: usize = 1;

impl Bench {
    /// (a) through both pairs: the same hot user, keys of each round's own.
    pub(super) async fn hot_wallet_cost(
        &self,
        hot: &Scenario,
    ) -> anyhow::Result<Option<Comparison>> {
        let uses = self.sizes.hot_uses;
        self.tls_cost(
            hot,
            SHORT_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.wallet_name],
            async |pair, side, round| {
                let label = format!("hot wallet, {}", side.label());
                let run_id = self.round_id(side, round);
                scenarios::wallet_uses(&label, &pair.payer, uses, CLIENTS, HOT_USER, 1, &run_id)
                    .await
            },
        )
        .await
    }

    /// (c) through both pairs, each round on a fresh one-seat schedule.
    pub(super) async fn stampede_cost(
        &self,
        stampede: &Scenario,
    ) -> anyhow::Result<Option<Comparison>> {
        self.tls_cost(
            stampede,
            SHORT_SCENARIO_ROUNDS,
            None,
            |pair| vec![pair.reservation_name],
            async |pair, _, _| Ok(self.stampede_holds(&pair.reservation).await?.0),
        )
        .await
    }

    /// (d) through both pairs, each round on a fresh schedule.
    pub(super) async fn distinct_seats_cost(
        &self,
        distinct: &Scenario,
    ) -> anyhow::Result<Option<Comparison>> {
        self.tls_cost(
            distinct,
            LONG_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.reservation_name],
            async |pair, _, _| self.distinct_holds(&pair.reservation).await,
        )
        .await
    }

    /// (f) through both pairs, each round by users of its own, charged through its pair.
    pub(super) async fn payments_cost(
        &self,
        payments: &Scenario,
    ) -> anyhow::Result<Option<Comparison>> {
        self.tls_cost(
            payments,
            LONG_SCENARIO_ROUNDS,
            Some(&[OK]),
            |pair| vec![pair.reservation_name, pair.wallet_name],
            async |pair, side, round| {
                // Production's round 0 is the main run's, by PAYMENT_FIRST_USER's range.
                let range = 2 * round + usize::from(side == Side::Plaintext);
                let first_user = PAYMENT_FIRST_USER + 1_000_000 * i64::try_from(range)?;
                scenarios::payments(
                    &pair.reservation,
                    &pair.wallet,
                    self.sizes.payments,
                    CLIENTS,
                    first_user,
                    self.sizes.payment_users,
                    &self.round_id(side, round),
                    || self.start_window(),
                )
                .await
            },
        )
        .await
    }

    /// `first` (a production run) against rounds of the same work through the plaintext pair,
    /// `measure` running one round on the given pair; `None` without a plaintext pair. The
    /// sampler's window starts before `measure` (which may start it again once its fixtures
    /// are made) and covers `services` of the pair.
    async fn tls_cost(
        &self,
        first: &Scenario,
        rounds: usize,
        rate_of: Option<&[&str]>,
        services: fn(&Pair) -> Vec<&'static str>,
        measure: impl AsyncFn(&Pair, Side, usize) -> anyhow::Result<Measured>,
    ) -> anyhow::Result<Option<Comparison>> {
        if self.plaintext.is_none() {
            return Ok(None);
        }
        let spec = Spec {
            key: &first.key,
            name: &first.name,
            clients: first.clients,
            rate_of,
            rate_unit: &first.rate_unit,
            latency_of: None,
        };
        let comparison = tls_cost::compare(first, rounds, async |side, round| {
            let pair = self.pair(side)?;
            self.start_window();
            let measured = measure(pair, side, round).await?;
            let mut scenario = spec.scenario(&measured, first.connections);
            scenario.observe(&self.sampler.take(), &services(pair));
            if side == Side::Plaintext
                && let Ok(mut rounds) = self.plaintext_rounds.lock()
            {
                rounds.push(scenario.clone());
            }
            Ok(scenario)
        })
        .await?;
        Ok(Some(comparison))
    }

    /// The pair of `side`.
    fn pair(&self, side: Side) -> anyhow::Result<&Pair> {
        match side {
            Side::Production => Ok(&self.production),
            Side::Plaintext => self
                .plaintext
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no plaintext pair")),
        }
    }

    /// This run's id with the side and round, for the keys of a comparison's round.
    fn round_id(&self, side: Side, round: usize) -> String {
        format!("{}-{}-{round}", self.run_id, side.label())
    }
}
