//! wallet-svc's transactions explored statement by statement in every interleaving (wallet
//! creation, batches, two replicas). Run in release mode
//! (`cargo test --release -p protocol-model -- --nocapture` prints the state counts).

use protocol_model::{WalletConfig, check_wallet};

/// Fewer unique states than this means the model stopped exploring what it used to.
const PER_COMMIT_STATES_AT_LEAST: usize = 100_000;

#[test]
fn every_interleaving_of_wallet_transactions_keeps_every_property() {
    let report = check_wallet(WalletConfig::per_commit(), false);
    eprintln!(
        "wallet model (per-commit): {} unique states ({} generated), depth {}, {:.1?}",
        report.unique_states, report.states, report.max_depth, report.elapsed
    );
    for (property, trace) in &report.counterexamples {
        eprintln!("counterexample to \"{property}\":\n{trace}");
    }
    assert!(
        report.counterexamples.is_empty(),
        "properties broken: {:?}",
        report
            .counterexamples
            .iter()
            .map(|(property, _)| property)
            .collect::<Vec<_>>()
    );
    assert!(
        report.unreached.is_empty(),
        "never reached, so not really checked: {:?}",
        report.unreached
    );
    assert!(
        report.unique_states >= PER_COMMIT_STATES_AT_LEAST,
        "only {} unique states explored",
        report.unique_states
    );
}
