//! wallet-svc's transactions explored statement by statement in every interleaving (wallet
//! creation, batches, two replicas). Run in release mode
//! (`cargo test --release -p protocol-model -- --nocapture` prints the state counts).

use protocol_model::{WalletConfig, check_wallet};

/// Fewer unique states than this means the model stopped exploring what it used to.
const PER_COMMIT_STATES_AT_LEAST: usize = 100_000;

#[test]
fn every_interleaving_of_wallet_transactions_keeps_every_property() {
    check_wallet(WalletConfig::per_commit(), false)
        .assert_clean("wallet model (per-commit)", PER_COMMIT_STATES_AT_LEAST);
}
