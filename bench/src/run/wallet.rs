//! (a) The hot wallet and (b) the spread wallet: `Use`s of 1 point through wallet-svc, each
//! against pgbench of the same SQL on raw wallets of its own.

use super::context::{
    Bench, CLIENTS, HOT_USER, PGBENCH_CLIENTS, RAW_HOT_USER, RAW_SPREAD_FIRST_USER,
    SPREAD_FIRST_USER, Spec, WALLET,
};
use super::{ScenarioResult, ratio_target};
use crate::baseline::{self, Baseline, Pgbench};
use crate::report::Scenario;
use crate::scenarios;

/// One wallet scenario and its raw baseline.
struct WalletRun {
    /// What the progress line calls it.
    label: &'static str,
    key: &'static str,
    name: &'static str,
    baseline_key: &'static str,
    baseline_name: &'static str,
    uses: u64,
    users: u64,
    first_user: i64,
    raw_first_user: i64,
    /// Points each user is charged with before the clock runs.
    charge_each: i64,
}

impl Bench {
    /// (a) One hot wallet row.
    pub(super) async fn hot_wallet(&self) -> anyhow::Result<ScenarioResult> {
        let (hot, raw_hot) = self
            .wallet_scenario(WalletRun {
                label: "hot wallet",
                key: "hot-wallet",
                name: "(a) hot wallet: `Use` 1 point, one user",
                baseline_key: "pgbench-wallet-hot",
                baseline_name: "pgbench `Use` SQL, one row",
                uses: self.sizes.hot_uses,
                users: 1,
                first_user: HOT_USER,
                raw_first_user: RAW_HOT_USER,
                charge_each: 1_000_000_000,
            })
            .await?;
        let target = ratio_target(
            "hot wallet `Use` vs raw pgbench, one row",
            &hot,
            &raw_hot,
            5.0,
        );
        let mut result = ScenarioResult::with_baselines(hot, vec![raw_hot]);
        result.targets.push(target);
        Ok(result)
    }

    /// (b) The same over many users.
    pub(super) async fn spread_wallet(&self) -> anyhow::Result<ScenarioResult> {
        let (uses, users) = (self.sizes.spread_uses, self.sizes.spread_users);
        let (spread, raw_spread) = self
            .wallet_scenario(WalletRun {
                label: "spread wallet",
                key: "spread-wallet",
                name: "(b) spread wallet: `Use` 1 point, 10,000 users",
                baseline_key: "pgbench-wallet-spread",
                baseline_name: "pgbench `Use` SQL, 10,000 rows",
                uses,
                users,
                first_user: SPREAD_FIRST_USER,
                raw_first_user: RAW_SPREAD_FIRST_USER,
                charge_each: i64::try_from(uses.div_ceil(users))? + 1,
            })
            .await?;
        Ok(ScenarioResult::with_baselines(spread, vec![raw_spread]))
    }

    /// A wallet scenario: its raw baseline first, then its users charged (not timed), then
    /// `uses` uses of 1 point spread over them, measured.
    async fn wallet_scenario(&self, run: WalletRun) -> anyhow::Result<(Scenario, Baseline)> {
        let raw = self.wallet_baseline(&run).await?;
        scenarios::charge_users(
            &self.production.wallet,
            run.first_user,
            run.users,
            run.charge_each,
            &self.run_id,
        )
        .await?;
        self.start_window();
        let measured = scenarios::wallet_uses(
            run.label,
            &self.production.payer,
            run.uses,
            CLIENTS,
            run.first_user,
            run.users,
            &self.run_id,
        )
        .await?;
        let mut scenario = self.observed(
            Spec::successes(run.key, run.name, CLIENTS),
            &measured,
            &[WALLET],
        );
        scenario.against(&raw);
        Ok((scenario, raw))
    }

    /// pgbench of wallet-svc's `Use` SQL: as many transactions in all as `run`'s uses, over
    /// its raw wallets.
    async fn wallet_baseline(&self, run: &WalletRun) -> anyhow::Result<Baseline> {
        Pgbench {
            key: run.baseline_key,
            name: run.baseline_name,
            database_url: &self.args.wallet_database_url,
            script_name: "wallet_use.sql",
            script: baseline::WALLET_USE_SQL,
            clients: PGBENCH_CLIENTS,
            transactions_per_client: run.uses.div_ceil(PGBENCH_CLIENTS as u64),
            variables: vec![
                ("first_user", run.raw_first_user.to_string()),
                ("users", run.users.to_string()),
            ],
            work_dir: &self.work_dir,
        }
        .run()
        .await
    }
}
