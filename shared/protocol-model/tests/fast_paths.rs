//! The one-statement fast paths against the full transactions they stand in for: on every row
//! of one seat the fast statement writes to, the full transaction gives the same answer and
//! leaves the same rows. That is what lets the model (and the service) take the fast path
//! whenever it applies: a step between a fast statement that wrote nothing and the full
//! transaction that follows it changes no outcome, because the full transaction decides as
//! the fast one would have wherever the fast one applies.

use protocol::payment::UseReply;
use protocol_model::store::{
    BeginOutcome, ClockRead, Row, SeatRows, SeatView, SettleOutcome, Status, StoreBugs,
};

const STATUSES: [Status; 5] = [
    Status::Held,
    Status::Paying,
    Status::Confirmed,
    Status::Cancelled,
    Status::Expired,
];

/// Every seat of one reservation (id 1, user 1): each status, lapsed or not, attempts 0-2,
/// refund decided or not, performance begun or not, and the seat in each state.
fn every_seat() -> Vec<SeatRows> {
    let mut seats = Vec::new();
    for status in STATUSES {
        for lapsed in [false, true] {
            for pay_attempt in 0..=2 {
                for refunding in [false, true] {
                    for started in [false, true] {
                        for seat in [SeatView::Available, SeatView::Held, SeatView::Sold] {
                            seats.push(SeatRows {
                                seat,
                                price: 10,
                                started,
                                reservations: vec![Row {
                                    id: 1,
                                    user_id: 1,
                                    status,
                                    lapsed,
                                    pay_attempt,
                                    payment_transaction_id: None,
                                    payment_idempotency_key: None,
                                    cancel_requested: false,
                                    refunding,
                                }],
                            });
                        }
                    }
                }
            }
        }
    }
    seats
}

#[test]
fn a_begun_payment_of_a_held_reservation_is_what_the_full_transaction_begins() {
    let mut applied = 0;
    for seat in every_seat() {
        for user_id in [1, 2] {
            let mut fast = seat.clone();
            let Some(attempt) = fast.begin_held_attempt(1, user_id, ClockRead::UnderLock) else {
                assert_eq!(
                    fast, seat,
                    "a fast statement that does not apply writes nothing"
                );
                continue;
            };
            applied += 1;
            let mut full = seat.clone();
            let answer = full.begin_pay_in_transaction_at(1, user_id, ClockRead::UnderLock);
            assert_eq!(answer, BeginOutcome::Pay { attempt }, "on {seat:?}");
            assert_eq!(fast, full, "rows after beginning on {seat:?}");
        }
    }
    assert!(applied > 0, "the fast statement never applied");
}

#[test]
fn a_confirmed_debit_is_what_the_full_transaction_confirms() {
    let mut applied = 0;
    for seat in every_seat() {
        for attempt in 1..=3 {
            let reply = UseReply::Debited { transaction_id: 77 };
            let mut fast = seat.clone();
            if !fast.confirm_debited_attempt(1, attempt, 77, ClockRead::UnderLock) {
                assert_eq!(
                    fast, seat,
                    "a fast statement that does not apply writes nothing"
                );
                continue;
            }
            applied += 1;
            let mut full = seat.clone();
            let answer = full.settle_in_transaction_at(
                1,
                attempt,
                reply,
                false,
                StoreBugs::default(),
                ClockRead::UnderLock,
            );
            assert_eq!(answer, SettleOutcome::Confirmed, "on {seat:?}");
            assert_eq!(fast, full, "rows after confirming on {seat:?}");
        }
    }
    assert!(applied > 0, "the fast statement never applied");
}
