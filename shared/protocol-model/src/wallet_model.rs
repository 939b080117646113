//! wallet-svc's transactions statement by statement, under Postgres row locks, explored in every
//! interleaving: one user's wallet row (which the user starts without), ledger and recorded
//! refusals; two replicas, each batching the user's movements as `domain::batching` does (while
//! one of the user's transactions is in flight on a replica, the user's next movements queue
//! there and go together in its next transaction, up to a bound); and clients that send
//! charges, uses and refunds, each at any moment, to either replica: a refund may come before
//! the use it names is applied, as when a client compensates a use that timed out, and a use
//! may be sent again (a retry under its key).
//!
//! One action is one statement of `wallet-svc/src/store` (`batch.rs`: `apply_batch`,
//! `create_wallet`, `LockWallet`; `keys.rs`: `rows_under`, `refusals_under`, `keys_from`), or
//! several when no other transaction can tell them apart. (The batch sends `BEGIN`, the lock
//! and the key reads as one pipeline, and its writes with `COMMIT`; Postgres still runs them one
//! statement after another, and key reads that found no wallet row are read again after
//! [`TxnPc::Create`] and [`TxnPc::Relock`]: the steps below are the statements that count.)
//! - [`TxnPc::Lock`], `SELECT balance FROM wallets WHERE user_id = $1 FOR UPDATE`: locks the
//!   committed row, waiting while another transaction holds its lock; finds nothing when there
//!   is no row, or only another transaction's uncommitted insert of it (invisible, so not
//!   waited for).
//! - [`TxnPc::Create`], `INSERT INTO wallets ... ON CONFLICT DO NOTHING`: waits while another
//!   transaction's insert of the row is uncommitted, then does nothing if that one committed;
//!   does nothing when the row is committed; else inserts it, and holds it until this
//!   transaction ends. A batch of refunds only that created the row answers UnknownUse to every
//!   refund and rolls back in the same step (a new wallet holds no use; while its insert stood,
//!   others could only wait on it). Any other batch that created it locks its own row (the
//!   second `SELECT ... FOR UPDATE`, folded in: no one else can reach that row).
//! - [`TxnPc::Relock`]: the second `SELECT ... FOR UPDATE`, after an insert that did nothing.
//! - [`TxnPc::Locked`], with the row lock held: reading the batch's keys, deciding each movement
//!   in turn on the running balance, inserting the ledger rows and refusals, updating the
//!   balance and committing, as one step: every writer of the user's rows holds the row lock,
//!   and nothing of this transaction is visible before it commits.
//! - a batch of one `Use` first goes in one round trip (`single_use.rs`): [`TxnPc::Lock`], then
//!   `UseIfFresh` and `COMMIT` as one step ([`TxnPc::Locked`]), which applies the `Use` when its
//!   key is fresh and the balance covers it, else writes nothing and the full transaction
//!   starts over from the lock ([`Txn::one_round_trip`]). A lock that finds no row locks
//!   nothing; `UseIfFresh` writes only when its lock statement marked the row as locked, so
//!   that round trip writes nothing, whatever commits meanwhile: one step.
//! - a fault: a transaction rolls back midway (its batch's deadline, its connection lost); its
//!   callers hear UNAVAILABLE and may send again.
//!
//! The batch's transaction here mirrors `apply_batch` (its keys read once, then kept up to date
//! with its own writes), and the property "a batch does what its movements do one by one" holds
//! it to [`Wallets::apply`], one movement at a time, which is what the protocol model applies
//! for each wallet call: so the protocol model may take a wallet call as one atomic step.
//!
//! Not modelled: other users (they share no rows with this one); callers that leave before
//! their batch starts (their movement is left out, as if never sent; a retry decides it); the
//! balance limit and key reuse, which the conformance test of wallet-svc covers against real
//! Postgres.

use protocol::wallet::{self, Decision, KeyRecord, Movement, Recorded, RefundTarget};
use stateright::{Model, Property};

use crate::config::Bug;
use crate::key::Key;
use crate::wallet::{Entry, Outcome, RefusedKey, Request, Wallets};

/// The one user whose rows are modelled (its index in [`Wallets`]).
const USER: usize = 0;

/// The bounds of a wallet exploration.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    /// The user's balance at the start, in a wallet row; `None`: no wallet row yet.
    pub initial: Option<i64>,
    /// What clients send, each once (a movement listed twice is sent again under its key).
    pub requests: Vec<(Key, Request)>,
    pub replicas: usize,
    /// Most movements in one batch.
    pub max_batch: usize,
    /// Transactions that may roll back midway.
    pub aborts: u8,
    pub bugs: WalletBugs,
}

/// Seeded bugs of wallet-svc's transactions, all off in the real code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WalletBugs {
    /// The old `apply_batch`: a batch of refunds only, for a user whose wallet row does not
    /// exist, took no lock and created no row; it read its keys in a statement of its own
    /// (which sees whatever committed meanwhile), decided on a balance of 0, inserted its
    /// ledger rows and committed without updating the balance (it had locked no row).
    pub refunds_without_lock: bool,
    /// `UseIfFresh` looking for the `Use`'s key in the ledger only, not among the refusals: a
    /// `Use` refused for the balance, sent again after a charge, would be applied.
    pub lone_use_overlooks_refusals: bool,
}

impl WalletConfig {
    /// What every commit is checked with: a user without a wallet who charges, uses (and sends
    /// the use again), and refunds the use twice under two keys, on two replicas; one rollback.
    pub fn per_commit() -> Self {
        let use_key = Key::new("use");
        Self {
            initial: None,
            requests: vec![
                (Key::new("charge"), Request::Charge { amount: 10 }),
                (use_key, Request::Use { amount: 7 }),
                (use_key, Request::Use { amount: 7 }),
                (Key::new("refund"), Request::Refund { use_key }),
                (Key::new("refund-2"), Request::Refund { use_key }),
            ],
            replicas: 2,
            max_batch: 3,
            aborts: 1,
            bugs: WalletBugs::default(),
        }
    }

    /// A deeper exploration: the same, and the first refund sent again, and two rollbacks.
    pub fn deep() -> Self {
        let mut config = Self::per_commit();
        let use_key = Key::new("use");
        config
            .requests
            .push((Key::new("refund"), Request::Refund { use_key }));
        config.aborts = 2;
        config
    }

    pub fn with_bug(mut self, bug: Bug) -> Self {
        match bug {
            Bug::RefundsWithoutWalletLock => self.bugs.refunds_without_lock = true,
            Bug::LoneUseOverlooksRefusals => self.bugs.lone_use_overlooks_refusals = true,
            _ => {}
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalletState {
    /// What is committed: the balance (0 while there is no wallet row), the ledger, the
    /// refusals.
    pub wallets: Wallets,
    pub row: WalletRow,
    /// Requests not sent yet, by index in [`WalletConfig::requests`].
    pub unsent: Vec<u8>,
    pub replicas: Vec<Replica>,
    /// Rollbacks left.
    pub aborts: u8,
    /// Every answer so far, in order: the request, and what its caller heard (`None`:
    /// UNAVAILABLE, its transaction rolled back).
    pub answers: Vec<(u8, Option<Outcome>)>,
    /// A batch committed or answered something other than its movements, applied one by one,
    /// would have (bookkeeping for a property; nothing decides on it).
    pub batch_differs: bool,
}

/// The user's row in `wallets`, and who holds it. A transaction is named by its replica: a
/// replica runs one transaction of the user at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalletRow {
    Missing,
    /// Inserted by this transaction, not committed: invisible to others, and their inserts of
    /// it wait.
    Inserting(usize),
    /// Committed, and locked (`FOR UPDATE`) by this transaction if any.
    Committed {
        locked_by: Option<usize>,
    },
}

/// A replica's batcher for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Replica {
    /// Movements waiting for the transaction in flight to end.
    pub queue: Vec<u8>,
    pub txn: Option<Txn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    /// The batch's movements, in order.
    pub batch: Vec<u8>,
    pub pc: TxnPc,
    /// A batch of one `Use` sent in one round trip (`store/single_use.rs`): `BEGIN`, the lock
    /// ([`TxnPc::Lock`]), `UseIfFresh` and `COMMIT` ([`TxnPc::Locked`]). When that writes
    /// nothing, the transaction ends having written nothing and the full one starts over.
    pub one_round_trip: bool,
}

/// A transaction's next statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnPc {
    /// `SELECT ... FOR UPDATE` of the wallet row.
    Lock,
    /// It found no row: `INSERT ... ON CONFLICT DO NOTHING`.
    Create,
    /// The insert found the row there: the second `SELECT ... FOR UPDATE`.
    Relock,
    /// The row is locked: the keys, the decisions, the writes and the commit.
    Locked,
    /// The seeded bug's batch of refunds only, which found no row: the keys, the decisions on
    /// a balance of 0, the ledger rows and the commit, with no lock and no balance update. One
    /// step: between its key read and its insert, another's conflicting refund could only make
    /// the insert fail (the unique indexes on keys and on `refund_of`), and its insert's
    /// foreign-key check waits for a transaction that holds the row's lock.
    Unlocked,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WalletAction {
    /// A client sends a movement (`key` is its key, for the traces) to a replica: its batcher
    /// starts a transaction with it, or queues it behind the one in flight.
    Send {
        request: u8,
        key: Key,
        replica: usize,
    },
    /// The next statement of the replica's transaction; when it ends, the replica answers its
    /// batch and starts the next one with what queued meanwhile.
    Step(usize),
    /// The replica's transaction rolls back midway.
    Abort(usize),
}

/// wallet-svc's transactions on one user's rows, within the bounds of a [`WalletConfig`].
#[derive(Debug, Clone)]
pub struct WalletModel {
    pub config: WalletConfig,
}

impl WalletModel {
    pub fn new(config: WalletConfig) -> Self {
        Self { config }
    }

    fn request(&self, request: u8) -> Option<&(Key, Request)> {
        self.config.requests.get(usize::from(request))
    }

    fn movements(&self, batch: &[u8]) -> Vec<(Key, Request)> {
        batch
            .iter()
            .filter_map(|&request| self.request(request).cloned())
            .collect()
    }

    fn refunds_only(&self, batch: &[u8]) -> bool {
        self.movements(batch)
            .iter()
            .all(|(_, request)| matches!(request, Request::Refund { .. }))
    }

    /// Whether the replica's transaction can run its next statement, or waits for a lock.
    fn can_step(&self, state: &WalletState, replica: usize) -> bool {
        let Some(txn) = &state.replicas[replica].txn else {
            return false;
        };
        let locked_by_other = matches!(
            state.row,
            WalletRow::Committed { locked_by: Some(other) } if other != replica
        );
        match txn.pc {
            TxnPc::Lock | TxnPc::Relock => !locked_by_other,
            TxnPc::Create => !matches!(state.row, WalletRow::Inserting(other) if other != replica),
            TxnPc::Locked => true,
            // Its inserts' foreign-key check (`FOR KEY SHARE` of the wallet row) waits for the
            // row's `FOR UPDATE` lock.
            TxnPc::Unlocked => {
                let batched = apply_batch(&state.wallets, &self.movements(&txn.batch), 0);
                !locked_by_other || (batched.rows.is_empty() && batched.refusals.is_empty())
            }
        }
    }

    /// The replica's transaction ends with these answers, writing `written` (and the balance
    /// with `set_balance`) if it commits; the replica's next batch starts.
    fn end(
        &self,
        state: &mut WalletState,
        replica: usize,
        written: Option<(Batched, bool)>,
    ) -> Option<()> {
        let txn = state.replicas[replica].txn.take()?;
        let answers: Vec<Option<Outcome>> = match written {
            Some((batched, set_balance)) => {
                let (one_by_one, expected) =
                    one_by_one(&state.wallets, &self.movements(&txn.batch));
                state.wallets.ledger.extend(batched.rows);
                state.wallets.refusals.extend(batched.refusals);
                if set_balance {
                    state.wallets.balances[USER] = batched.balance;
                }
                if batched.answers != one_by_one || state.wallets != expected {
                    state.batch_differs = true;
                }
                batched.answers.into_iter().map(Some).collect()
            }
            None => vec![None; txn.batch.len()],
        };
        state.answers.extend(txn.batch.iter().copied().zip(answers));
        let queued = &mut state.replicas[replica].queue;
        let next: Vec<u8> = queued
            .drain(..queued.len().min(self.config.max_batch))
            .collect();
        if !next.is_empty() {
            state.replicas[replica].txn = Some(self.transaction(next));
        }
        Some(())
    }

    /// A batch's transaction, from its first statement: in one round trip for a lone `Use`.
    fn transaction(&self, batch: Vec<u8>) -> Txn {
        let one_round_trip = matches!(
            self.movements(&batch).as_slice(),
            [(_, Request::Use { .. })]
        );
        Txn {
            batch,
            pc: TxnPc::Lock,
            one_round_trip,
        }
    }

    /// The one-round-trip transaction ended having written nothing: the full one starts.
    fn start_over_in_full(state: &mut WalletState, replica: usize) {
        if let Some(txn) = &mut state.replicas[replica].txn {
            txn.pc = TxnPc::Lock;
            txn.one_round_trip = false;
        }
    }

    fn step(&self, state: &mut WalletState, replica: usize) -> Option<()> {
        if !self.can_step(state, replica) {
            return None;
        }
        let txn = state.replicas[replica].txn.clone()?;
        let set_pc = |state: &mut WalletState, pc: TxnPc| {
            if let Some(txn) = &mut state.replicas[replica].txn {
                txn.pc = pc;
            }
        };
        match (txn.pc, state.row) {
            // The lock found no row (another's uncommitted insert of it is invisible): so
            // does `UseIfFresh`, which writes nothing, and `COMMIT` ends the transaction.
            (TxnPc::Lock, WalletRow::Missing | WalletRow::Inserting(_)) if txn.one_round_trip => {
                Self::start_over_in_full(state, replica);
            }
            (TxnPc::Locked, WalletRow::Committed { .. }) if txn.one_round_trip => {
                let movements = self.movements(&txn.batch);
                state.row = WalletRow::Committed { locked_by: None };
                match use_if_fresh(&state.wallets, &movements, self.config.bugs) {
                    Some(used) => self.end(state, replica, Some((used, true)))?,
                    None => Self::start_over_in_full(state, replica),
                }
            }
            (TxnPc::Lock | TxnPc::Relock, WalletRow::Committed { .. }) => {
                state.row = WalletRow::Committed {
                    locked_by: Some(replica),
                };
                set_pc(state, TxnPc::Locked);
            }
            (TxnPc::Lock, WalletRow::Missing | WalletRow::Inserting(_)) => {
                let unlocked =
                    self.config.bugs.refunds_without_lock && self.refunds_only(&txn.batch);
                set_pc(
                    state,
                    if unlocked {
                        TxnPc::Unlocked
                    } else {
                        TxnPc::Create
                    },
                );
            }
            (TxnPc::Create, WalletRow::Missing) if self.refunds_only(&txn.batch) => {
                // Created and rolled back: every refund names no use of a new wallet.
                let unknown = Batched {
                    answers: vec![Outcome::Rejected; txn.batch.len()],
                    rows: Vec::new(),
                    refusals: Vec::new(),
                    balance: state.wallets.balances[USER],
                };
                self.end(state, replica, Some((unknown, false)))?;
            }
            (TxnPc::Create, WalletRow::Missing) => {
                state.row = WalletRow::Inserting(replica);
                set_pc(state, TxnPc::Locked);
            }
            (TxnPc::Create, WalletRow::Committed { .. }) => set_pc(state, TxnPc::Relock),
            (TxnPc::Locked, WalletRow::Inserting(_) | WalletRow::Committed { .. }) => {
                let movements = self.movements(&txn.batch);
                let batched = apply_batch(&state.wallets, &movements, state.wallets.balances[USER]);
                state.row = WalletRow::Committed { locked_by: None };
                self.end(state, replica, Some((batched, true)))?;
            }
            (TxnPc::Unlocked, _) => {
                let batched = apply_batch(&state.wallets, &self.movements(&txn.batch), 0);
                self.end(state, replica, Some((batched, false)))?;
            }
            // Waits (ruled out by `can_step`), or cannot happen.
            _ => return None,
        }
        Some(())
    }
}

/// `UseIfFresh` with the wallet row locked (the committed rows `committed`), written apart from
/// `protocol::wallet::decide` as its SQL is: a lone `Use` applied when no ledger row or refusal
/// of the user is under its key and the balance covers it; `None` when it writes nothing.
fn use_if_fresh(
    committed: &Wallets,
    batch: &[(Key, Request)],
    bugs: WalletBugs,
) -> Option<Batched> {
    let [(key, request @ Request::Use { amount })] = batch else {
        return None;
    };
    let known = committed
        .ledger
        .iter()
        .any(|entry| entry.user == USER && entry.key == *key)
        || (!bugs.lone_use_overlooks_refusals
            && committed
                .refusals
                .iter()
                .any(|refused| refused.user == USER && refused.key == *key));
    let balance = committed.balances[USER];
    if known || balance < *amount {
        return None;
    }
    Some(Batched {
        answers: vec![Outcome::Applied {
            entry: committed.ledger.len(),
        }],
        rows: vec![Entry {
            user: USER,
            key: *key,
            fingerprint: request.fingerprint(),
            delta: -amount,
            refund_of: None,
            reservation: None,
        }],
        refusals: Vec::new(),
        balance: balance - amount,
    })
}

/// What one `apply_batch` transaction answers and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Batched {
    answers: Vec<Outcome>,
    rows: Vec<Entry>,
    refusals: Vec<RefusedKey>,
    balance: i64,
}

/// `apply_batch` once its wallet row is locked at `balance` (the committed rows `committed`):
/// the batch's keys read once ([`Keys::load`]), each movement decided in turn on the running
/// balance against what the batch knows, its own rows and refusals included.
fn apply_batch(committed: &Wallets, batch: &[(Key, Request)], balance: i64) -> Batched {
    let mut keys = Keys::load(committed, batch);
    let mut balance = balance;
    let answers = batch
        .iter()
        .map(|(key, request)| keys.decide(*key, request, &mut balance))
        .collect();
    Batched {
        answers,
        rows: keys.pending,
        refusals: keys.new_refusals,
        balance,
    }
}

/// The batch's movements applied one after another, each as a transaction of its own.
fn one_by_one(committed: &Wallets, batch: &[(Key, Request)]) -> (Vec<Outcome>, Wallets) {
    let mut wallets = committed.clone();
    let answers = batch
        .iter()
        .map(|(key, request)| wallets.apply(USER, *key, request.clone(), None, false))
        .collect();
    (answers, wallets)
}

/// wallet-svc's `Keys`: what a batch knows of the ledger rows and refusals under its keys,
/// read once and then kept up to date with what it writes.
#[derive(Debug, Default)]
struct Keys {
    /// Ledger rows read or written, with their ledger index.
    rows: Vec<(usize, Entry)>,
    /// The ledger row under each key.
    by_key: Vec<(Key, usize)>,
    /// The refund made of each use read: (use, refund).
    refunds: Vec<(usize, usize)>,
    refusals: Vec<RefusedKey>,
    /// The ledger index of the batch's first row.
    first_new: usize,
    pending: Vec<Entry>,
    new_refusals: Vec<RefusedKey>,
}

impl Keys {
    /// `load_keys`: the rows under the batch's keys and the keys its refunds name, the refunds
    /// already made of those uses, and the refusals under those keys.
    fn load(committed: &Wallets, batch: &[(Key, Request)]) -> Self {
        let mut names = Vec::with_capacity(batch.len() * 2);
        for (key, request) in batch {
            names.push(*key);
            if let Request::Refund { use_key } = request {
                names.push(*use_key);
            }
        }
        let ledger = committed.ledger.iter().enumerate();
        let rows: Vec<(usize, &Entry)> = ledger
            .clone()
            .filter(|(_, entry)| entry.user == USER && names.contains(&entry.key))
            .collect();
        let uses: Vec<usize> = rows
            .iter()
            .filter(|(_, entry)| entry.delta < 0)
            .map(|&(at, _)| at)
            .collect();
        let mut keys = Self {
            first_new: committed.ledger.len(),
            ..Self::default()
        };
        for &(at, entry) in &rows {
            keys.remember(at, entry.clone(), None);
        }
        for (at, entry) in ledger {
            let Some(used) = entry.refund_of.filter(|used| uses.contains(used)) else {
                continue;
            };
            match keys.row_under(entry.key) {
                None => keys.remember(at, entry.clone(), Some(used)),
                Some(known) => keys.refunds.push((used, known)),
            }
        }
        keys.refusals = committed
            .refusals
            .iter()
            .filter(|refused| refused.user == USER && names.contains(&refused.key))
            .cloned()
            .collect();
        keys
    }

    fn remember(&mut self, at: usize, entry: Entry, refund_of: Option<usize>) {
        self.by_key.push((entry.key, at));
        if let Some(used) = refund_of {
            self.refunds.push((used, at));
        }
        self.rows.push((at, entry));
    }

    fn row_under(&self, key: Key) -> Option<usize> {
        self.by_key
            .iter()
            .find(|&&(known, _)| known == key)
            .map(|&(_, at)| at)
    }

    fn entry(&self, at: usize) -> Option<&Entry> {
        self.rows
            .iter()
            .find(|&&(known, _)| known == at)
            .map(|(_, entry)| entry)
    }

    /// The `Use` under `key`, and the points it took.
    fn use_of(&self, key: Key) -> Option<(usize, i64)> {
        let at = self.row_under(key)?;
        let entry = self.entry(at)?;
        (entry.delta < 0).then_some((at, -entry.delta))
    }

    fn prior(&self, key: Key) -> Option<KeyRecord<usize>> {
        if let Some(at) = self.row_under(key) {
            let entry = self.entry(at)?;
            return Some(KeyRecord {
                request_fingerprint: entry.fingerprint.name().as_bytes().to_vec(),
                outcome: Recorded::Applied(at),
            });
        }
        self.refusals
            .iter()
            .find(|refused| refused.key == key)
            .map(|refused| KeyRecord {
                request_fingerprint: refused.fingerprint.name().as_bytes().to_vec(),
                outcome: Recorded::Refused(refused.refusal),
            })
    }

    /// `decide_one`: decides one movement on the running `balance`, and records what it
    /// writes.
    fn decide(&mut self, key: Key, request: &Request, balance: &mut i64) -> Outcome {
        let fingerprint = request.fingerprint();
        let (movement, refund_of) = match request {
            Request::Charge { amount } => (Movement::Charge { amount: *amount }, None),
            Request::Use { amount } => (Movement::Use { amount: *amount }, None),
            Request::Refund { use_key } => match self.use_of(*use_key) {
                Some((used, amount)) => {
                    let refunded_by = self
                        .refunds
                        .iter()
                        .find(|&&(refunded, _)| refunded == used)
                        .map(|&(_, refund)| refund);
                    let target = RefundTarget {
                        amount,
                        refunded_by,
                    };
                    (
                        Movement::Refund {
                            target: Some(target),
                        },
                        Some(used),
                    )
                }
                None => (Movement::Refund { target: None }, None),
            },
        };
        let prior = self.prior(key);
        match wallet::decide(*balance, prior, fingerprint.name().as_bytes(), movement) {
            Decision::Apply {
                delta,
                balance_after,
            } => {
                *balance = balance_after;
                let at = self.first_new + self.pending.len();
                let entry = Entry {
                    user: USER,
                    key,
                    fingerprint,
                    delta,
                    refund_of,
                    reservation: None,
                };
                self.remember(at, entry.clone(), refund_of);
                self.pending.push(entry);
                Outcome::Applied { entry: at }
            }
            Decision::Refuse(refusal) => {
                let refused = RefusedKey {
                    user: USER,
                    key,
                    fingerprint,
                    refusal,
                };
                self.refusals.push(refused.clone());
                self.new_refusals.push(refused);
                Outcome::Refused(refusal)
            }
            Decision::Replay(at) => Outcome::Applied { entry: at },
            Decision::ReplayRefusal(refusal) => Outcome::Refused(refusal),
            Decision::KeyReused | Decision::UnknownUse | Decision::Overflow => Outcome::Rejected,
        }
    }
}

impl Model for WalletModel {
    type State = WalletState;
    type Action = WalletAction;

    fn init_states(&self) -> Vec<WalletState> {
        let count = u8::try_from(self.config.requests.len()).unwrap_or(u8::MAX);
        vec![WalletState {
            wallets: Wallets::new(vec![self.config.initial.unwrap_or(0)]),
            row: match self.config.initial {
                Some(_) => WalletRow::Committed { locked_by: None },
                None => WalletRow::Missing,
            },
            unsent: (0..count).collect(),
            replicas: vec![Replica::default(); self.config.replicas],
            aborts: self.config.aborts,
            answers: Vec::new(),
            batch_differs: false,
        }]
    }

    fn actions(&self, state: &WalletState, actions: &mut Vec<WalletAction>) {
        for &request in &state.unsent {
            let Some(&(key, _)) = self.request(request) else {
                continue;
            };
            for replica in 0..state.replicas.len() {
                actions.push(WalletAction::Send {
                    request,
                    key,
                    replica,
                });
            }
        }
        for (replica, running) in state.replicas.iter().enumerate() {
            if running.txn.is_none() {
                continue;
            }
            if self.can_step(state, replica) {
                actions.push(WalletAction::Step(replica));
            }
            if state.aborts > 0 {
                actions.push(WalletAction::Abort(replica));
            }
        }
    }

    fn next_state(&self, last: &WalletState, action: WalletAction) -> Option<WalletState> {
        let mut state = last.clone();
        match action {
            WalletAction::Send {
                request, replica, ..
            } => {
                let at = state.unsent.iter().position(|&unsent| unsent == request)?;
                state.unsent.remove(at);
                let batcher = state.replicas.get_mut(replica)?;
                if batcher.txn.is_some() {
                    batcher.queue.push(request);
                } else {
                    batcher.txn = Some(self.transaction(vec![request]));
                }
            }
            WalletAction::Step(replica) => self.step(&mut state, replica)?,
            WalletAction::Abort(replica) => {
                state.aborts = state.aborts.checked_sub(1)?;
                state.row = match state.row {
                    WalletRow::Inserting(by) if by == replica => WalletRow::Missing,
                    WalletRow::Committed {
                        locked_by: Some(by),
                    } if by == replica => WalletRow::Committed { locked_by: None },
                    row => row,
                };
                self.end(&mut state, replica, None)?;
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "the balance equals its initial value plus its ledger and is never negative",
                |model: &Self, state: &WalletState| {
                    let moved: i64 = state.wallets.ledger.iter().map(|entry| entry.delta).sum();
                    let balance = state.wallets.balances[USER];
                    balance >= 0 && balance == model.config.initial.unwrap_or(0) + moved
                },
            ),
            Property::always(
                "a batch does what its movements do one by one",
                |_: &Self, state: &WalletState| !state.batch_differs,
            ),
            Property::always(
                "at most one refund per use",
                |_: &Self, state: &WalletState| {
                    let ledger = &state.wallets.ledger;
                    (0..ledger.len()).all(|used| {
                        ledger
                            .iter()
                            .filter(|entry| entry.refund_of == Some(used))
                            .count()
                            <= 1
                    })
                },
            ),
            Property::always(
                "a refund gives back exactly its use",
                |_: &Self, state: &WalletState| {
                    let ledger = &state.wallets.ledger;
                    ledger.iter().all(|entry| {
                        entry.refund_of.is_none_or(|used| {
                            ledger
                                .get(used)
                                .is_some_and(|used| used.delta < 0 && entry.delta == -used.delta)
                        })
                    })
                },
            ),
            Property::always(
                "every answer is the one its key's first outcome gave",
                |model: &Self, state: &WalletState| answers_replay(model, state),
            ),
            Property::always(
                "a refund of an unknown use leaves nothing behind, not even a wallet row",
                |model: &Self, state: &WalletState| {
                    model.config.initial.is_some()
                        || !matches!(state.row, WalletRow::Committed { .. })
                        || !state.wallets.ledger.is_empty()
                        || !state.wallets.refusals.is_empty()
                },
            ),
            Property::sometimes(
                "a batch of several movements holds the wallet's lock",
                |_: &Self, state: &WalletState| {
                    state.replicas.iter().any(|replica| {
                        replica
                            .txn
                            .as_ref()
                            .is_some_and(|txn| txn.pc == TxnPc::Locked && txn.batch.len() >= 2)
                    })
                },
            ),
            Property::sometimes(
                "a lone use holds the wallet's lock in its one round trip",
                |_: &Self, state: &WalletState| {
                    state.replicas.iter().any(|replica| {
                        replica
                            .txn
                            .as_ref()
                            .is_some_and(|txn| txn.pc == TxnPc::Locked && txn.one_round_trip)
                    })
                },
            ),
            Property::sometimes(
                "a lone use that its one round trip could not apply starts over in full",
                |model: &Self, state: &WalletState| {
                    state.replicas.iter().any(|replica| {
                        replica.txn.as_ref().is_some_and(|txn| {
                            !txn.one_round_trip
                                && matches!(
                                    model.movements(&txn.batch).as_slice(),
                                    [(_, Request::Use { .. })]
                                )
                        })
                    })
                },
            ),
            Property::sometimes(
                "an insert of the wallet row waits for another's",
                |_: &Self, state: &WalletState| {
                    state.replicas.iter().enumerate().any(|(at, replica)| {
                        replica
                            .txn
                            .as_ref()
                            .is_some_and(|txn| txn.pc == TxnPc::Create)
                            && matches!(state.row, WalletRow::Inserting(by) if by != at)
                    })
                },
            ),
            Property::sometimes(
                "a batch of refunds finds no wallet, then one created meanwhile",
                |model: &Self, state: &WalletState| {
                    matches!(state.row, WalletRow::Committed { .. })
                        && state.replicas.iter().any(|replica| {
                            replica.txn.as_ref().is_some_and(|txn| {
                                txn.pc == TxnPc::Create && model.refunds_only(&txn.batch)
                            })
                        })
                },
            ),
            Property::sometimes(
                "a refund is answered UnknownUse, and its use is applied later",
                |model: &Self, state: &WalletState| {
                    state.answers.iter().any(|&(request, answer)| {
                        answer == Some(Outcome::Rejected)
                            && model.request(request).is_some_and(|(_, request)| {
                                matches!(request, Request::Refund { use_key }
                                    if state.wallets.ledger.iter().any(|entry| entry.key == *use_key))
                            })
                    })
                },
            ),
            Property::sometimes("a use is refunded", |_: &Self, state: &WalletState| {
                state
                    .wallets
                    .ledger
                    .iter()
                    .any(|entry| entry.refund_of.is_some())
            }),
        ]
    }
}

/// Every answer, in order, is the outcome recorded the first time its key was applied or
/// refused (another request under that key is rejected), and names a committed ledger row
/// under its key (or, for a refund, the refund already made of its use, under whatever key).
/// An answer before anything was recorded under its key (a refund of a use not yet applied)
/// records nothing, so it binds no later answer.
fn answers_replay(model: &WalletModel, state: &WalletState) -> bool {
    state
        .answers
        .iter()
        .enumerate()
        .all(|(at, &(request, answer))| {
            let Some((key, sent)) = model.request(request) else {
                return false;
            };
            let ledger = &state.wallets.ledger;
            // A refund under another key replays the refund already made of its use.
            let names_its_row = |entry: &Entry| {
                entry.key == *key
                    || matches!(sent, Request::Refund { use_key }
                        if entry.refund_of.and_then(|used| ledger.get(used))
                            .is_some_and(|used| used.key == *use_key))
            };
            if let Some(Outcome::Applied { entry }) = answer
                && !ledger.get(entry).is_some_and(names_its_row)
            {
                return false;
            }
            let first = state.answers[..at].iter().find_map(|&(earlier, outcome)| {
                let (earlier_key, earlier_sent) = model.request(earlier)?;
                let recorded =
                    matches!(outcome, Some(Outcome::Applied { .. } | Outcome::Refused(_)));
                (recorded && earlier_key == key).then_some((earlier_sent, outcome))
            });
            match (first, answer) {
                (Some((first_sent, first)), Some(answer)) if first_sent == sent => {
                    Some(answer) == first
                }
                (Some(_), Some(answer)) => answer == Outcome::Rejected,
                (None, _) | (_, None) => true,
            }
        })
}
