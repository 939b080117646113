//! The protocol explored exhaustively, and each seeded bug caught. Run in release mode
//! (`cargo test --release -p protocol-model -- --nocapture` prints the state counts).

use protocol_model::{Bug, Config, check};

/// Fewer unique states than this means the model stopped exploring what it used to.
const PER_COMMIT_STATES_AT_LEAST: usize = 8_000_000;

#[test]
fn every_interleaving_keeps_every_property() {
    let report = check(Config::per_commit(), false);
    eprintln!(
        "protocol model (per-commit): {} unique states ({} generated), depth {}, {:.1?}",
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

/// Explores with `bug` seeded until a property breaks, and shows how.
fn assert_caught(bug: Bug) {
    let report = check(Config::per_commit().with_bug(bug), true);
    let Some((property, trace)) = report.counterexamples.first() else {
        panic!(
            "{bug:?} went unnoticed in {} unique states",
            report.unique_states
        );
    };
    let actions = trace
        .lines()
        .take_while(|line| !line.starts_with("last state"));
    eprintln!(
        "{bug:?} breaks \"{property}\":\n{}",
        actions.collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_hold_without_the_seat_lock_and_unique_index_is_caught() {
    assert_caught(Bug::HoldWithoutGuard);
}

#[test]
fn a_sweeper_that_expires_paying_reservations_is_caught() {
    assert_caught(Bug::SweeperExpiresPaying);
}

#[test]
fn a_reconciler_retrying_under_fresh_keys_is_caught() {
    assert_caught(Bug::ReconcilerFreshKeys);
}

#[test]
fn a_wallet_that_leaves_refused_keys_free_is_caught() {
    assert_caught(Bug::WalletForgetsRefusals);
}

#[test]
fn a_back_to_held_not_conditional_on_the_attempt_is_caught() {
    assert_caught(Bug::BackToHeldAnyAttempt);
}
