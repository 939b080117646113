//! The waiting room's steps explored in every interleaving, with the clock stepping back, and
//! each seeded bug of its steps caught. Run in release mode
//! (`cargo test --release -p protocol-model --test admission_model -- --nocapture` prints the
//! state counts and how each bug is caught).

use protocol_model::{AdmissionBug, AdmissionConfig, check_admission, check_admission_bug};

/// Fewer unique states than this means the model stopped exploring what it used to.
const PER_COMMIT_STATES_AT_LEAST: usize = 1_500_000;

#[test]
fn every_interleaving_of_the_waiting_rooms_steps_keeps_every_property() {
    check_admission(AdmissionConfig::per_commit(), false)
        .assert_clean("admission model (per-commit)", PER_COMMIT_STATES_AT_LEAST);
}

/// Explores with `bug` seeded until a property breaks, and shows how.
fn assert_caught(bug: AdmissionBug) {
    check_admission_bug(bug).assert_caught(bug);
}

#[test]
fn a_tick_that_does_not_count_free_slots_is_caught() {
    assert_caught(AdmissionBug::TickIgnoresSlots);
}

#[test]
fn an_entry_that_renumbers_a_waiting_user_is_caught() {
    assert_caught(AdmissionBug::EnterRenumbersWaiting);
}

#[test]
fn a_leave_that_renumbers_the_drawn_entrants_is_caught() {
    assert_caught(AdmissionBug::LeaveAfterOpeningRenumbers);
}

#[test]
fn a_claim_that_keeps_the_called_slot_is_caught() {
    assert_caught(AdmissionBug::ClaimKeepsCalledSlot);
}

#[test]
fn a_refill_that_follows_the_clock_back_is_caught() {
    assert_caught(AdmissionBug::RefillFollowsClockBack);
}

#[test]
fn a_look_that_answers_before_it_claims_is_caught() {
    assert_caught(AdmissionBug::LookAnswersBeforeClaim);
}

/// Every seeded bug, including any added to `AdmissionBug::ALL` without a test of its own.
#[test]
fn every_seeded_bug_of_the_waiting_room_is_caught() {
    for bug in AdmissionBug::ALL {
        check_admission_bug(bug).assert_caught(bug);
    }
}
