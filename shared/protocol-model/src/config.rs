//! The bounds of an exploration and the bugs it can seed.

use crate::model::{Faults, Requests};
use crate::store::StoreBugs;

#[derive(Debug, Clone)]
pub struct Config {
    /// The seat's price.
    pub price: i64,
    pub users: Vec<UserConfig>,
    /// Points a top-up adds.
    pub top_up: i64,
    pub faults: Faults,
    /// How many payments or cancellations the reconciler may pick up.
    pub reconciler_claims: u8,
    /// Whether the performance may begin during the run.
    pub performance_may_begin: bool,
    pub bugs: Bugs,
}

/// A user: their balance at the start and what they may ask for, at most.
#[derive(Debug, Clone, Copy)]
pub struct UserConfig {
    pub balance: i64,
    pub requests: Requests,
}

/// Seeded bugs, all off in the real protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bugs {
    /// A hold as a `SELECT` then an unconditional `INSERT`, without the partial unique index.
    pub hold_without_guard: bool,
    /// The reconciler sends each retry of a `Use` under a fresh key.
    pub reconciler_fresh_keys: bool,
    /// The wallet leaves a refused key free instead of recording the refusal.
    pub wallet_forgets_refusals: bool,
    /// Every deciding transaction of reservation-svc (hold, begin pay, settle, the first cancel
    /// transaction) reads its clock in a step of its own before it locks the seat, as
    /// Postgres `now()` (the transaction's start) did, and decides with that reading.
    pub decide_with_transaction_start_clock: bool,
    pub store: StoreBugs,
}

/// The seeded bugs, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    HoldWithoutGuard,
    SweeperExpiresPaying,
    ReconcilerFreshKeys,
    WalletForgetsRefusals,
    BackToHeldAnyAttempt,
    /// Decisions on the clock of the transaction's start: see
    /// [`Bugs::decide_with_transaction_start_clock`].
    DecideWithTransactionStartClock,
    /// The wallet's old batch of refunds only for a user without a wallet row: see
    /// [`crate::wallet_model::WalletBugs::refunds_without_lock`]. Seeded in the wallet model.
    RefundsWithoutWalletLock,
    /// A lone `Use` in one round trip that looks for its key in the ledger only: see
    /// [`crate::wallet_model::WalletBugs::lone_use_overlooks_refusals`]. Seeded in the wallet
    /// model.
    LoneUseOverlooksRefusals,
}

impl Bug {
    pub const ALL: [Self; 8] = [
        Self::HoldWithoutGuard,
        Self::SweeperExpiresPaying,
        Self::ReconcilerFreshKeys,
        Self::WalletForgetsRefusals,
        Self::BackToHeldAnyAttempt,
        Self::DecideWithTransactionStartClock,
        Self::RefundsWithoutWalletLock,
        Self::LoneUseOverlooksRefusals,
    ];

    /// Whether the bug is one of wallet-svc's transactions, seeded in the wallet model
    /// ([`crate::wallet_model::WalletConfig::with_bug`]) rather than the protocol's
    /// ([`Config::with_bug`]).
    pub const fn in_wallet_model(self) -> bool {
        matches!(
            self,
            Self::RefundsWithoutWalletLock | Self::LoneUseOverlooksRefusals
        )
    }
}

impl Config {
    /// What every commit is checked with: one seat; a user who can pay and may cancel, and a
    /// user who must top up before paying; each fault once, and one hold (of either user) may
    /// find Redis out of reach and take the seat's lock in Postgres.
    pub fn per_commit() -> Self {
        Self {
            price: 10,
            users: vec![
                UserConfig {
                    balance: 10,
                    requests: Requests {
                        holds: 1,
                        pays: 2,
                        cancels: 1,
                        top_ups: 0,
                    },
                },
                UserConfig {
                    balance: 0,
                    requests: Requests {
                        holds: 1,
                        pays: 2,
                        cancels: 0,
                        top_ups: 1,
                    },
                },
            ],
            top_up: 20,
            faults: Faults {
                crashes: 1,
                lock_losses: 1,
                postgres_locked_holds: 1,
                lost_messages: 1,
                client_deadlines: 1,
                wallet_deadlines: 1,
            },
            reconciler_claims: 1,
            performance_may_begin: false,
            bugs: Bugs::default(),
        }
    }

    /// A deeper exploration, run on demand: the same, and the performance may begin while
    /// payments are under way.
    pub fn deep() -> Self {
        Self {
            performance_may_begin: true,
            ..Self::per_commit()
        }
    }

    pub fn with_bug(mut self, bug: Bug) -> Self {
        match bug {
            Bug::HoldWithoutGuard => self.bugs.hold_without_guard = true,
            Bug::SweeperExpiresPaying => self.bugs.store.sweeper_expires_paying = true,
            Bug::ReconcilerFreshKeys => self.bugs.reconciler_fresh_keys = true,
            Bug::WalletForgetsRefusals => self.bugs.wallet_forgets_refusals = true,
            Bug::BackToHeldAnyAttempt => self.bugs.store.back_to_held_any_attempt = true,
            Bug::DecideWithTransactionStartClock => {
                self.bugs.decide_with_transaction_start_clock = true;
            }
            // Not a bug of this model's transactions: see `WalletConfig::with_bug`.
            Bug::RefundsWithoutWalletLock | Bug::LoneUseOverlooksRefusals => {}
        }
        self
    }
}
