//! The protocol explored exhaustively, and each seeded bug caught (a bug of wallet-svc's
//! transactions in the wallet model, see `tests/wallet_model.rs`). Run in release mode
//! (`cargo test --release -p protocol-model -- --nocapture` prints the state counts and the
//! counterexamples).

use protocol_model::{Bug, Config, check, check_bug, check_until};

/// Fewer unique states than this means the model stopped exploring what it used to.
const PER_COMMIT_STATES_AT_LEAST: usize = 15_000_000;

#[test]
fn every_interleaving_keeps_every_property() {
    check(Config::per_commit(), false)
        .assert_clean("protocol model (per-commit)", PER_COMMIT_STATES_AT_LEAST);
}

/// Explores with `bug` seeded (in the model it belongs to) until a property breaks, and shows
/// how.
fn assert_caught(bug: Bug) {
    check_bug(bug).assert_caught(bug);
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

#[test]
fn a_decision_on_the_clock_of_the_transactions_start_is_caught() {
    assert_caught(Bug::DecideWithTransactionStartClock);
}

/// The same bug where the performance may begin: a debit that arrives after the start is
/// confirmed by a settle whose clock was read before it.
#[test]
fn a_decision_on_the_clock_of_the_transactions_start_sells_after_the_performance_began() {
    let bug = Bug::DecideWithTransactionStartClock;
    let property = "no seat is sold once the performance has begun";
    let report = check_until(Config::deep().with_bug(bug), property);
    assert!(
        report
            .counterexamples
            .iter()
            .any(|(broken, _)| *broken == property),
        "{bug:?} never broke \"{property}\" in {} unique states",
        report.unique_states
    );
    report.assert_caught(bug);
}

#[test]
fn a_wallet_batch_of_refunds_without_the_row_lock_is_caught() {
    assert_caught(Bug::RefundsWithoutWalletLock);
}

#[test]
fn a_lone_use_in_one_round_trip_that_overlooks_refusals_is_caught() {
    assert_caught(Bug::LoneUseOverlooksRefusals);
}

/// Every seeded bug, each in the model it belongs to, including any added to `Bug::ALL`
/// without a test of its own.
#[test]
fn every_seeded_bug_is_caught() {
    for bug in Bug::ALL {
        let report = check_bug(bug);
        assert!(
            !report.counterexamples.is_empty(),
            "{bug:?} went unnoticed in {} unique states",
            report.unique_states
        );
    }
}
