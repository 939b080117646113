//! The wallet's idempotent apply: what one money movement does to one user's wallet, given the
//! balance (read under the wallet's row lock) and whatever is already recorded under its key.

/// Most points one `Charge` or `Use` may move.
pub const MAX_AMOUNT: i64 = 1_000_000_000;
/// Highest balance a wallet may reach.
pub const MAX_BALANCE: i64 = 1_000_000_000_000;

/// A business rule that refuses a movement. Refusals are final: recorded under their key, so a
/// replay of the key is refused the same way even after the balance changed. A refund is never
/// refused: it gives back points the balance already counted, so the cap, which guards
/// charges, does not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A `Use` of more than the balance.
    InsufficientBalance,
    /// A `Charge` that would take the balance past [`MAX_BALANCE`].
    BalanceLimit,
}

/// What is already recorded under a key: the movement it applied (`T`, the store's ledger row),
/// or the refusal it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded<T> {
    Applied(T),
    Refused(Refusal),
}

/// A key's earlier request, as the fingerprint of that request and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord<T> {
    pub request_fingerprint: Vec<u8>,
    pub outcome: Recorded<T>,
}

/// The `Use` a refund names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundTarget<T> {
    /// Points the `Use` took; a refund gives back all of them.
    pub amount: i64,
    /// The refund already made of this `Use`, under whatever key.
    pub refunded_by: Option<T>,
}

/// One requested movement, with the facts it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Movement<T> {
    Charge {
        amount: i64,
    },
    Use {
        amount: i64,
    },
    /// `target` is `None` when the user has no `Use` under the named key.
    Refund {
        target: Option<RefundTarget<T>>,
    },
}

/// What the store must do, all of it in the transaction that holds the wallet's row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Add `delta` (negative for a `Use`) to the balance and write one ledger row under the key.
    Apply { delta: i64, balance_after: i64 },
    /// Record the refusal under the key, write nothing else, and answer with it.
    Refuse(Refusal),
    /// Answer with this earlier movement; write nothing.
    Replay(T),
    /// Answer with this earlier refusal; write nothing.
    ReplayRefusal(Refusal),
    /// The key was used for a different request; write nothing.
    KeyReused,
    /// The refund names no `Use` of this user; write nothing.
    UnknownUse,
    /// The balance cannot represent the result (a refund past `i64::MAX`, after ages of uses,
    /// charges and refunds); write and record nothing.
    Overflow,
}

/// Decides one movement. `balance` is the wallet's balance (0 for a wallet not yet created),
/// `prior` what the key already holds, `request_fingerprint` the fingerprint of this request.
pub fn decide<T>(
    balance: i64,
    prior: Option<KeyRecord<T>>,
    request_fingerprint: &[u8],
    movement: Movement<T>,
) -> Decision<T> {
    if let Some(prior) = prior {
        if prior.request_fingerprint != request_fingerprint {
            return Decision::KeyReused;
        }
        match prior.outcome {
            Recorded::Applied(earlier) => return Decision::Replay(earlier),
            // Refunds were once refused at the cap; such a record was never a final answer
            // for a refund, which is decided again.
            Recorded::Refused(Refusal::BalanceLimit)
                if matches!(movement, Movement::Refund { .. }) => {}
            Recorded::Refused(refusal) => return Decision::ReplayRefusal(refusal),
        }
    }
    match movement {
        Movement::Charge { amount } => credit(balance, amount),
        Movement::Use { amount } => {
            if balance < amount {
                Decision::Refuse(Refusal::InsufficientBalance)
            } else {
                Decision::Apply {
                    delta: -amount,
                    balance_after: balance - amount,
                }
            }
        }
        Movement::Refund { target: None } => Decision::UnknownUse,
        Movement::Refund {
            target:
                Some(RefundTarget {
                    refunded_by: Some(first_refund),
                    ..
                }),
        } => Decision::Replay(first_refund),
        Movement::Refund {
            target:
                Some(RefundTarget {
                    amount,
                    refunded_by: None,
                }),
        } => match balance.checked_add(amount) {
            Some(balance_after) => Decision::Apply {
                delta: amount,
                balance_after,
            },
            None => Decision::Overflow,
        },
    }
}

fn credit<T>(balance: i64, amount: i64) -> Decision<T> {
    match balance.checked_add(amount) {
        Some(balance_after) if balance_after <= MAX_BALANCE => Decision::Apply {
            delta: amount,
            balance_after,
        },
        _ => Decision::Refuse(Refusal::BalanceLimit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &[u8] = b"request";

    fn applied(id: u32) -> Option<KeyRecord<u32>> {
        Some(KeyRecord {
            request_fingerprint: FP.to_vec(),
            outcome: Recorded::Applied(id),
        })
    }

    #[test]
    fn a_use_within_the_balance_is_debited() {
        let decision = decide::<u32>(100, None, FP, Movement::Use { amount: 30 });
        assert_eq!(
            decision,
            Decision::Apply {
                delta: -30,
                balance_after: 70
            }
        );
    }

    #[test]
    fn a_use_of_exactly_the_balance_empties_the_wallet() {
        let decision = decide::<u32>(30, None, FP, Movement::Use { amount: 30 });
        assert_eq!(
            decision,
            Decision::Apply {
                delta: -30,
                balance_after: 0
            }
        );
    }

    #[test]
    fn a_use_over_the_balance_is_refused() {
        let decision = decide::<u32>(29, None, FP, Movement::Use { amount: 30 });
        assert_eq!(decision, Decision::Refuse(Refusal::InsufficientBalance));
    }

    #[test]
    fn a_charge_up_to_the_cap_applies_and_past_it_is_refused() {
        let at_cap = decide::<u32>(MAX_BALANCE - 5, None, FP, Movement::Charge { amount: 5 });
        assert_eq!(
            at_cap,
            Decision::Apply {
                delta: 5,
                balance_after: MAX_BALANCE
            }
        );
        let past_cap = decide::<u32>(MAX_BALANCE - 5, None, FP, Movement::Charge { amount: 6 });
        assert_eq!(past_cap, Decision::Refuse(Refusal::BalanceLimit));
    }

    #[test]
    fn a_replayed_key_answers_its_first_outcome_whatever_the_balance() {
        assert_eq!(
            decide(0, applied(7), FP, Movement::Use { amount: 30 }),
            Decision::Replay(7)
        );
        let refused = Some(KeyRecord::<u32> {
            request_fingerprint: FP.to_vec(),
            outcome: Recorded::Refused(Refusal::InsufficientBalance),
        });
        assert_eq!(
            decide(1_000, refused, FP, Movement::Use { amount: 30 }),
            Decision::ReplayRefusal(Refusal::InsufficientBalance)
        );
    }

    #[test]
    fn a_key_reused_for_another_request_is_rejected() {
        let decision = decide(
            100,
            applied(7),
            b"other request",
            Movement::Use { amount: 30 },
        );
        assert_eq!(decision, Decision::KeyReused);
    }

    #[test]
    fn a_refund_gives_back_the_whole_use_once() {
        let target = RefundTarget {
            amount: 30,
            refunded_by: None,
        };
        let first = decide::<u32>(
            70,
            None,
            FP,
            Movement::Refund {
                target: Some(target),
            },
        );
        assert_eq!(
            first,
            Decision::Apply {
                delta: 30,
                balance_after: 100
            }
        );

        let refunded = RefundTarget {
            amount: 30,
            refunded_by: Some(9),
        };
        let again = decide(
            100,
            None,
            FP,
            Movement::Refund {
                target: Some(refunded),
            },
        );
        assert_eq!(again, Decision::Replay(9));
    }

    #[test]
    fn a_refund_passes_the_cap_and_an_old_refusal_of_it_at_the_cap_is_decided_again() {
        let target = || {
            Some(RefundTarget::<u32> {
                amount: 30,
                refunded_by: None,
            })
        };
        let decision = decide(MAX_BALANCE, None, FP, Movement::Refund { target: target() });
        assert_eq!(
            decision,
            Decision::Apply {
                delta: 30,
                balance_after: MAX_BALANCE + 30
            }
        );
        let refused_at_the_cap = Some(KeyRecord::<u32> {
            request_fingerprint: FP.to_vec(),
            outcome: Recorded::Refused(Refusal::BalanceLimit),
        });
        let again = decide(
            MAX_BALANCE,
            refused_at_the_cap,
            FP,
            Movement::Refund { target: target() },
        );
        assert!(matches!(again, Decision::Apply { .. }));
        let overflow = decide(
            i64::MAX - 1,
            None,
            FP,
            Movement::Refund { target: target() },
        );
        assert_eq!(overflow, Decision::Overflow);
    }

    #[test]
    fn a_refund_of_an_unknown_use_is_not_found() {
        let decision = decide::<u32>(100, None, FP, Movement::Refund { target: None });
        assert_eq!(decision, Decision::UnknownUse);
    }
}
