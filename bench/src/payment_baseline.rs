//! The raw baselines of (f), the payment flow: pgbench replaying one payment's statements
//! against both databases at once, the reservation side (a hold, its start, its settle) and the
//! wallet side (the `Use`) side by side, as many payments each; a payment is done when both of
//! its sides are, so the pair's rate is its slower side's. Two designs: the statements the
//! services ran before their steps were pipelined (the reference the flow is held to), and one
//! statement per decision (the best this SQL can do).

use std::path::Path;

use crate::baseline::{Baseline, Pgbench};
use crate::probe::{self, CpuTicks};

/// The reservation side of one payment, as the services ran it before pipelining.
pub const RESERVATION_SQL: &str = include_str!("../sql/payment_reservation.sql");
/// The wallet side of one payment, as wallet-svc runs it.
pub const WALLET_SQL: &str = include_str!("../sql/payment_wallet.sql");
/// The reservation side in one statement per decision.
pub const RESERVATION_ONE_STATEMENT_SQL: &str =
    include_str!("../sql/payment_reservation_one_statement.sql");
/// The wallet side in one statement.
pub const WALLET_ONE_STATEMENT_SQL: &str = include_str!("../sql/payment_wallet_one_statement.sql");

/// Seats of each baseline's schedule: every payment holds a seat of its own.
const SEATS: i32 = 100_000;

/// One design's pair of scripts.
#[derive(Debug, Clone, Copy)]
pub struct Design {
    pub key: &'static str,
    pub name: &'static str,
    pub reservation_sql: &'static str,
    pub wallet_sql: &'static str,
    /// Where its reservations' ids begin (ids of their own, far above the sequence's).
    pub first_reservation: i64,
}

/// Where and how much each baseline runs.
#[derive(Debug)]
pub struct Setting<'a> {
    pub reservation_database_url: &'a str,
    pub wallet_database_url: &'a str,
    pub payments: u64,
    /// Connections of each side's pgbench.
    pub clients: usize,
    /// The wallets the `Use`s draw on, from `first_user`, each with enough points.
    pub first_user: i64,
    pub users: u64,
    pub work_dir: &'a Path,
}

impl Setting<'_> {
    /// Runs `design` on both databases at once (and, with `alone`, each side alone first):
    /// the pair's baseline, then any single sides'.
    pub async fn run(&self, design: Design, alone: bool) -> anyhow::Result<Vec<Baseline>> {
        let mut baselines = Vec::new();
        let reservation_name = format!("{}: reservation side alone", design.name);
        let wallet_name = format!("{}: wallet side alone", design.name);
        if alone {
            let keys = Keys::of(&design, "alone");
            let schedule_id =
                crate::run::create_raw_schedule(self.reservation_database_url, SEATS).await?;
            let reservation = self
                .reservation(&design, &schedule_id, &keys, &reservation_name, 0)
                .run()
                .await?;
            let wallet = self.wallet(&design, &keys, &wallet_name, 0).run().await?;
            baselines.extend([reservation, wallet]);
        }
        let keys = Keys::of(&design, "pair");
        let schedule_id =
            crate::run::create_raw_schedule(self.reservation_database_url, SEATS).await?;
        let offset = i64::try_from(self.payments)?;
        let reservation = self.reservation(&design, &schedule_id, &keys, design.name, offset);
        let wallet = self.wallet(&design, &keys, design.name, offset);
        let cpu_from = CpuTicks::now(&[]);
        let (reservation, wallet) = tokio::join!(reservation.run(), wallet.run());
        let cpu_to = CpuTicks::now(&[]);
        let (reservation, wallet) = (reservation?, wallet?);
        let payments = reservation.requests.min(wallet.requests);
        baselines.insert(
            0,
            Baseline {
                key: design.key.to_owned(),
                name: design.name.to_owned(),
                command: format!("{} & {}", reservation.command, wallet.command),
                requests: payments,
                clients: reservation.clients + wallet.clients,
                rate: reservation.rate.min(wallet.rate),
                // A payment's two sides run one after the other in the flow.
                p50_us: reservation.p50_us + wallet.p50_us,
                p99_us: reservation.p99_us + wallet.p99_us,
                machine_cpu_us: cpu_from.per_request_since(&cpu_to, payments).machine_us,
            },
        );
        Ok(baselines)
    }

    /// The reservation side's pgbench; its reservations' ids start `offset` past the design's.
    fn reservation<'s>(
        &'s self,
        design: &Design,
        schedule_id: &str,
        keys: &'s Keys,
        name: &'s str,
        offset: i64,
    ) -> Pgbench<'s> {
        Pgbench {
            key: &keys.reservation,
            name,
            database_url: self.reservation_database_url,
            script_name: "payment_reservation.sql",
            script: design.reservation_sql,
            clients: self.clients,
            transactions_per_client: self.payments / self.clients as u64,
            variables: vec![
                ("schedule_id", schedule_id.to_owned()),
                ("seat_count", SEATS.to_string()),
                ("users", self.payments.to_string()),
                (
                    "first_reservation",
                    (design.first_reservation + offset).to_string(),
                ),
            ],
            work_dir: self.work_dir,
        }
    }

    /// The wallet side's pgbench; its keys start `offset` past 0.
    fn wallet<'s>(
        &'s self,
        design: &Design,
        keys: &'s Keys,
        name: &'s str,
        offset: i64,
    ) -> Pgbench<'s> {
        Pgbench {
            key: &keys.wallet,
            name,
            database_url: self.wallet_database_url,
            script_name: "payment_wallet.sql",
            script: design.wallet_sql,
            clients: self.clients,
            transactions_per_client: self.payments / self.clients as u64,
            variables: vec![
                ("first_user", self.first_user.to_string()),
                ("users", self.users.to_string()),
                ("first_key", offset.to_string()),
            ],
            work_dir: self.work_dir,
        }
    }

    /// Wallets for the `Use`s, each with more points than any run takes.
    pub async fn fixtures(&self) -> anyhow::Result<()> {
        let last = self.first_user + i64::try_from(self.users)? - 1;
        probe::psql_value(
            self.wallet_database_url,
            &format!(
                "INSERT INTO wallets (user_id, balance) \
                 SELECT user_id, 1000000000 FROM generate_series({}, {last}) AS user_id",
                self.first_user
            ),
        )
        .await?;
        Ok(())
    }
}

/// The keys (and scratch directories) of one run's two sides.
#[derive(Debug)]
struct Keys {
    reservation: String,
    wallet: String,
}

impl Keys {
    fn of(design: &Design, run: &str) -> Self {
        Self {
            reservation: format!("{}-reservation-{run}", design.key),
            wallet: format!("{}-wallet-{run}", design.key),
        }
    }
}
