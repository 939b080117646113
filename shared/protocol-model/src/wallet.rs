//! wallet-svc's rows (balances, ledger, recorded refusals) and one movement's transaction as
//! one atomic step: lock the wallet, read what the key already holds, ask
//! `protocol::wallet::decide`, write the answer. The protocol model applies every wallet call
//! this way; [`crate::wallet_model`] explores the real transactions statement by statement
//! (wallet creation, batches of several movements, two replicas) and checks that each one
//! does exactly what this does for its movements, one after another.

use protocol::wallet::{self, Decision, KeyRecord, Movement, Recorded, RefundTarget, Refusal};

use crate::key::Key;

/// One ledger row. `reservation` is bookkeeping of the model (which reservation the movement
/// was for), never read by the wallet's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub user: usize,
    pub key: Key,
    pub fingerprint: Key,
    pub delta: i64,
    /// The ledger index of the `Use` this row refunds.
    pub refund_of: Option<usize>,
    pub reservation: Option<i64>,
}

/// A refusal recorded under its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusedKey {
    pub user: usize,
    pub key: Key,
    pub fingerprint: Key,
    pub refusal: Refusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    Charge { amount: i64 },
    Use { amount: i64 },
    Refund { use_key: Key },
}

impl Request {
    /// The request's fingerprint: what tells a replay of its key from a reuse.
    pub fn fingerprint(&self) -> Key {
        Key::new(&match self {
            Self::Charge { amount } => format!("charge/{amount}"),
            Self::Use { amount } => format!("use/{amount}"),
            Self::Refund { use_key } => format!("refund/{use_key}"),
        })
    }
}

/// The wallet's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Applied now or earlier: the ledger row.
    Applied {
        entry: usize,
    },
    Refused(Refusal),
    /// The key was used for another request, or the refund names no `Use` of this user.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Wallets {
    pub initial: Vec<i64>,
    pub balances: Vec<i64>,
    pub ledger: Vec<Entry>,
    pub refusals: Vec<RefusedKey>,
}

impl Wallets {
    pub fn new(initial: Vec<i64>) -> Self {
        Self {
            balances: initial.clone(),
            initial,
            ledger: Vec::new(),
            refusals: Vec::new(),
        }
    }

    /// One wallet transaction. `forget_refusals` seeds the bug of a wallet that leaves a
    /// refused key free.
    pub fn apply(
        &mut self,
        user: usize,
        key: Key,
        request: Request,
        reservation: Option<i64>,
        forget_refusals: bool,
    ) -> Outcome {
        let fingerprint = request.fingerprint();
        let prior = self.prior(user, key);
        let movement = match &request {
            Request::Charge { amount } => Movement::Charge { amount: *amount },
            Request::Use { amount } => Movement::Use { amount: *amount },
            Request::Refund { use_key } => Movement::Refund {
                target: self.refund_target(user, *use_key),
            },
        };
        let balance = self.balances[user];
        match wallet::decide(balance, prior, fingerprint.name().as_bytes(), movement) {
            Decision::Apply {
                delta,
                balance_after,
            } => {
                let refund_of = match &request {
                    Request::Refund { use_key } => self.find(user, *use_key),
                    _ => None,
                };
                self.balances[user] = balance_after;
                self.ledger.push(Entry {
                    user,
                    key,
                    fingerprint,
                    delta,
                    refund_of,
                    reservation,
                });
                Outcome::Applied {
                    entry: self.ledger.len() - 1,
                }
            }
            Decision::Refuse(refusal) => {
                if !forget_refusals {
                    self.refusals.push(RefusedKey {
                        user,
                        key,
                        fingerprint,
                        refusal,
                    });
                }
                Outcome::Refused(refusal)
            }
            Decision::Replay(entry) => Outcome::Applied { entry },
            Decision::ReplayRefusal(refusal) => Outcome::Refused(refusal),
            Decision::KeyReused | Decision::UnknownUse | Decision::Overflow => Outcome::Rejected,
        }
    }

    fn find(&self, user: usize, key: Key) -> Option<usize> {
        self.ledger
            .iter()
            .position(|entry| entry.user == user && entry.key == key)
    }

    fn prior(&self, user: usize, key: Key) -> Option<KeyRecord<usize>> {
        if let Some(entry) = self.find(user, key) {
            return Some(KeyRecord {
                request_fingerprint: self.ledger[entry].fingerprint.name().as_bytes().to_vec(),
                outcome: Recorded::Applied(entry),
            });
        }
        self.refusals
            .iter()
            .find(|refused| refused.user == user && refused.key == key)
            .map(|refused| KeyRecord {
                request_fingerprint: refused.fingerprint.name().as_bytes().to_vec(),
                outcome: Recorded::Refused(refused.refusal),
            })
    }

    fn refund_target(&self, user: usize, use_key: Key) -> Option<RefundTarget<usize>> {
        let used = self
            .find(user, use_key)
            .filter(|&entry| self.ledger[entry].delta < 0)?;
        Some(RefundTarget {
            amount: -self.ledger[used].delta,
            refunded_by: self
                .ledger
                .iter()
                .position(|entry| entry.refund_of == Some(used)),
        })
    }

    /// Points that moved for `reservation`: negative when it kept money.
    pub fn net_for(&self, reservation: i64) -> i64 {
        self.ledger
            .iter()
            .filter(|entry| entry.reservation == Some(reservation))
            .map(|entry| entry.delta)
            .sum()
    }
}
