//! The whole system as one state machine: one seat's Postgres rows, the wallets, the seat's
//! Redis key (a hold's lock, or the taken mark a hold leaves), the wallet calls in flight, and
//! every request and reconciler run as a process with a program counter. A hold goes through
//! the Redis lock, or, on a replica that finds Redis out of reach, straight to the transaction
//! that takes the seat's lock in Postgres; the two race each other like any holds. One action is one
//! atomic unit of the real code: a Postgres transaction, a Redis command, a wallet call
//! delivered, or a fault. Time is abstract: a hold's time runs out (`Lapse`) and the
//! performance begins (`PerformanceBegins`) at any moment, and every deciding transaction reads
//! the clock under the seat's lock, in the very step that decides; a seeded bug reads it in a
//! step of its own before that, as `now()` (the transaction's start) did.
//!
//! Two reductions keep the state space small without losing behaviour: a step that only
//! changes a process's own state is folded into the next step that others can see (a wallet
//! call goes out with the transaction that decided to send it; a reply is taken in with the
//! transaction that acts on it), and a process is named by who started it and how many they
//! started before, so the same requests interleaved differently meet in the same state.
//!
//! A wallet call is one transaction here, applied by [`crate::wallet`]: the wallet's own
//! transactions, statement by statement (wallet creation, batches, two replicas), are
//! explored by [`crate::wallet_model`], which checks that they serialize to exactly that.

use protocol::payment::{self, UseReply};
use protocol::reservation::{self as reservation, AfterHold, HoldDecision, Status};
use protocol::wallet::Refusal;
use stateright::{Model, Property};

use crate::config::Config;
use crate::key::Key;
use crate::store::{
    BeginOutcome, CancelOutcome, Clock, ClockRead, HoldOutcome, KEY_NONCE, SeatRows, SeatView,
    SettleOutcome, UserHolds,
};
use crate::wallet::{Outcome, Request, Wallets};

/// A user, by index; their `user_id` is `index + 1`.
pub type User = usize;

/// A process: who started it, and how many they had started before. A hold's id is also its
/// Redis lock token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId {
    pub by: Starter,
    pub seq: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Starter {
    User(User),
    Reconciler,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    pub seat: SeatRows,
    pub wallets: Wallets,
    /// The seat's Redis lock key.
    pub lock: Option<LockKey>,
    /// Wallet calls and replies in flight, deliverable in any order (kept sorted).
    pub network: Vec<Message>,
    pub procs: Vec<Proc>,
    pub clients: Vec<Client>,
    pub faults: Faults,
    /// Payments or cancellations the reconciler has picked up.
    pub claims: u8,
    /// Reservations one of whose payment attempts was left with an unknown outcome
    /// (bookkeeping for a `sometimes` property; nothing decides on it).
    pub unknown_outcomes: Vec<i64>,
    /// Decisions the clock forbids (bookkeeping for the clock properties; nothing decides on
    /// it, and the correct protocol never sets any).
    pub clock_breaches: ClockBreaches,
}

/// Decisions on the seat that broke the clock, as a set (one byte: it is in every state).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClockBreaches(u8);

impl ClockBreaches {
    /// A decision took a clock older than one an earlier decision on the seat had taken.
    pub const RAN_BACK: Self = Self(1);
    /// A reservation was confirmed once the performance had begun.
    pub const SOLD_AFTER_START: Self = Self(2);
    /// A payment attempt began once the performance had begun, or on a hold whose time was up.
    pub const PAYING_TOO_LATE: Self = Self(4);
    /// A seat was held once the performance had begun.
    pub const HELD_AFTER_START: Self = Self(8);

    pub const fn contains(self, breach: Self) -> bool {
        self.0 & breach.0 != 0
    }

    fn insert(&mut self, breach: Self) {
        self.0 |= breach.0;
    }
}

impl std::fmt::Debug for ClockBreaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = [
            (Self::RAN_BACK, "RAN_BACK"),
            (Self::SOLD_AFTER_START, "SOLD_AFTER_START"),
            (Self::PAYING_TOO_LATE, "PAYING_TOO_LATE"),
            (Self::HELD_AFTER_START, "HELD_AFTER_START"),
        ];
        f.debug_set()
            .entries(
                named
                    .iter()
                    .filter(|&&(breach, _)| self.contains(breach))
                    .map(|&(_, name)| name),
            )
            .finish()
    }
}

/// A clock read before the transaction's deciding step (the seeded bug of a decision on
/// `now()`, the transaction's start): what it read, and whether another decision on the seat
/// has since been taken with a later clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reading {
    pub clock: Clock,
    pub overtaken: bool,
}

/// What the seat's Redis key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// The lock of a hold in flight: its token.
    Token(ProcId),
    /// The taken mark a hold left for its reservation.
    Taken(i64),
}

/// What a user may still ask for, and the request they wait on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    pub left: Requests,
    /// Requests sent so far.
    pub sent: u8,
    pub busy: Option<ProcId>,
}

/// Requests of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requests {
    pub holds: u8,
    pub pays: u8,
    pub cancels: u8,
    /// Top-ups, each made after the balance was found short.
    pub top_ups: u8,
}

/// Fault budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Faults {
    /// A process crashes: its local state is lost, what it committed stays.
    pub crashes: u8,
    /// The lock key disappears under its holder (TTL expiry, FLUSHALL).
    pub lock_losses: u8,
    /// A hold finds Redis out of reach and takes the seat's lock in Postgres instead.
    pub postgres_locked_holds: u8,
    /// A wallet call or reply is lost (its caller then times out).
    pub lost_messages: u8,
    /// A client stops waiting for a reservation RPC that goes on and may still commit.
    pub client_deadlines: u8,
    /// The wallet client's deadline fires while the call still runs and may still commit.
    pub wallet_deadlines: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proc {
    pub id: ProcId,
    /// Whether a client still waits for it.
    pub awaited: bool,
    pub user: User,
    pub task: Task,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Task {
    Hold(HoldPc),
    Pay { id: i64, pc: PayPc },
    Cancel { id: i64, pc: CancelPc },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldPc {
    /// `SET key token NX PX ttl GET` is next.
    Lock,
    /// Past the lock: the hold (`Store::hold_seat`) is next.
    Locked,
    /// A hold that found Redis out of reach (`SEAT_LOCK_FALLBACK=postgres`) and took no Redis
    /// lock: its transaction (`Store::hold_seat_locked_in_postgres`), which takes the seat's
    /// lock in Postgres first, is next; it decides as [`HoldPc::Locked`] does, and its end
    /// leaves Redis alone. (The seat's lock in Postgres is taken and released inside that one
    /// atomic transaction, so no other step ever sees it held.)
    LockedInPostgres,
    /// Its transaction has read the clock (a seeded bug): locking the seat and deciding is
    /// next.
    Clocked(Reading),
    /// A hold split in two (a seeded bug) has read and decided: the insert is next.
    Decided(HoldDecision),
    /// What `protocol::reservation::after_hold` decides is next: the taken mark of `held`, the
    /// reservation the hold inserted, or the compare-and-delete release.
    Release { held: Option<i64> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PayPc {
    /// `begin_pay` is next.
    Begin,
    /// `begin_pay` has read the clock (a seeded bug): locking and deciding is next.
    BeginClocked(Reading),
    /// The attempt's `Use` is out under `key`.
    AwaitUse { attempt: i32, key: Key },
    /// The refund of the attempt's debit is out; `reply` was the `Use`'s.
    AwaitRefund { attempt: i32, reply: UseReply },
    /// `settle_attempt` has read the clock (a seeded bug): locking and deciding is next.
    /// Boxed, so that the seeded bug does not make every process of the correct protocol
    /// larger.
    SettleClocked(Box<(Settling, Reading)>),
}

/// What a `settle_attempt` settles: attempt `attempt`'s reply, and whether the refund an
/// earlier decision asked for is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Settling {
    pub attempt: i32,
    pub reply: UseReply,
    pub refunded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelPc {
    /// The first cancel transaction is next.
    Start,
    /// The first cancel transaction has read the clock (a seeded bug): locking and deciding is
    /// next.
    Clocked(Reading),
    /// The refund is out; the releasing cancel transaction follows its success.
    AwaitRefund,
    /// The reservation is cancelled: deleting its taken mark is next.
    ClearMark,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Message {
    Call {
        from: ProcId,
        user: User,
        key: Key,
        call: WalletCall,
        reservation: i64,
    },
    Reply {
        to: ProcId,
        key: Key,
        outcome: WalletOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalletCall {
    Use { amount: i64 },
    Refund { use_key: Key },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalletOutcome {
    Applied { entry: usize },
    Insufficient,
    BalanceLimit,
    Rejected,
}

impl From<Outcome> for WalletOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied { entry } => Self::Applied { entry },
            Outcome::Refused(Refusal::InsufficientBalance) => Self::Insufficient,
            Outcome::Refused(Refusal::BalanceLimit) => Self::BalanceLimit,
            Outcome::Rejected => Self::Rejected,
        }
    }
}

impl WalletOutcome {
    /// What the wallet client makes of a `Use`'s outcome.
    fn use_reply(self) -> UseReply {
        match self {
            Self::Applied { entry } => UseReply::Debited {
                transaction_id: transaction_id(entry),
            },
            Self::Insufficient => UseReply::Insufficient,
            Self::BalanceLimit | Self::Rejected => UseReply::Rejected,
        }
    }
}

/// The wallet transaction id of ledger row `entry`.
fn transaction_id(entry: usize) -> i64 {
    i64::try_from(entry).map_or(i64::MAX, |entry| entry + 1)
}

fn user_id(user: User) -> i64 {
    i64::try_from(user).map_or(i64::MAX, |user| user + 1)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Hold(User),
    /// A hold of a replica that finds Redis out of reach (`SEAT_LOCK_FALLBACK=postgres`).
    HoldWithoutRedis(User),
    Pay(User),
    Cancel(User),
    TopUp(User),
    /// The next step of a process that needs no reply.
    Step(ProcId),
    /// A wallet call runs its transaction, or a reply reaches its caller, which acts on it.
    Deliver(Message),
    /// The wallet client's deadline: the caller goes on as if it got no answer.
    WalletTimeout(ProcId),
    ClaimPayment(i64),
    ClaimCancellation(i64),
    Sweep,
    /// A hold's time runs out.
    Lapse(i64),
    PerformanceBegins,
    /// The lock of a hold that no longer runs expires.
    LockExpires,
    /// The taken mark of a reservation no longer held or paying lapses: its hold's time is up.
    MarkLapses,
    Crash(ProcId),
    LoseLock,
    Lose(Message),
    ClientDeadline(ProcId),
}

/// The protocol, within the bounds of a [`Config`].
#[derive(Debug, Clone)]
pub struct ProtocolModel {
    pub config: Config,
}

impl ProtocolModel {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    fn initial(&self) -> State {
        let config = &self.config;
        State {
            seat: SeatRows::new(config.price),
            wallets: Wallets::new(config.users.iter().map(|user| user.balance).collect()),
            lock: None,
            network: Vec::new(),
            procs: Vec::new(),
            clients: config
                .users
                .iter()
                .map(|user| Client {
                    left: user.requests,
                    sent: 0,
                    busy: None,
                })
                .collect(),
            faults: config.faults,
            claims: 0,
            unknown_outcomes: Vec::new(),
            clock_breaches: ClockBreaches::default(),
        }
    }

    /// What runs without clients and faults: process steps, deliveries, the reconciler (up
    /// to its budget unless `unlimited_claims`) and the sweeper.
    fn background_actions(&self, state: &State, unlimited_claims: bool, out: &mut Vec<Action>) {
        for proc in &state.procs {
            if proc.has_step() {
                out.push(Action::Step(proc.id));
            } else if !state.call_in_flight(proc) {
                // Its call or reply was lost: the wallet client's deadline fires.
                out.push(Action::WalletTimeout(proc.id));
            }
        }
        out.extend(state.network.iter().cloned().map(Action::Deliver));
        let reconciling = state
            .procs
            .iter()
            .any(|proc| proc.id.by == Starter::Reconciler);
        if !reconciling && (unlimited_claims || state.claims < self.config.reconciler_claims) {
            for (id, _) in state.seat.stuck_payments() {
                out.push(Action::ClaimPayment(id));
            }
            for (id, _) in state.seat.unfinished_cancellations() {
                out.push(Action::ClaimCancellation(id));
            }
        }
        if state.seat.has_lapsed_holds(self.config.bugs.store) {
            out.push(Action::Sweep);
        }
    }

    /// From `state`, lets whatever runs, the reconciler and the sweeper finish, with no more
    /// faults and no more requests. `None` if that never comes to rest.
    pub fn settle(&self, state: &State) -> Option<State> {
        let mut state = state.clone();
        let mut actions = Vec::new();
        for _ in 0..1_000 {
            actions.clear();
            self.background_actions(&state, true, &mut actions);
            let Some(action) = actions.first().cloned() else {
                return Some(state);
            };
            state = self.apply(&state, action)?;
        }
        None
    }

    fn apply(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        let config = &self.config;
        // Actions that may run a transaction on the seat's rows.
        let transacts = matches!(
            action,
            Action::Step(_) | Action::Deliver(_) | Action::WalletTimeout(_)
        );
        match action {
            Action::Hold(user) => {
                state.clients[user].left.holds -= 1;
                state.start(user, Task::Hold(HoldPc::Lock));
            }
            Action::HoldWithoutRedis(user) => {
                state.clients[user].left.holds -= 1;
                state.faults.postgres_locked_holds -= 1;
                state.start(user, Task::Hold(HoldPc::LockedInPostgres));
            }
            Action::Pay(user) => {
                let id = state.latest_reservation(user)?.id;
                state.clients[user].left.pays -= 1;
                state.start(
                    user,
                    Task::Pay {
                        id,
                        pc: PayPc::Begin,
                    },
                );
            }
            Action::Cancel(user) => {
                let id = state.latest_reservation(user)?.id;
                state.clients[user].left.cancels -= 1;
                state.start(
                    user,
                    Task::Cancel {
                        id,
                        pc: CancelPc::Start,
                    },
                );
            }
            Action::TopUp(user) => {
                let client = &mut state.clients[user];
                client.left.top_ups -= 1;
                let key = Key::new(&format!("top-up-{user}-{}", client.left.top_ups));
                let charge = Request::Charge {
                    amount: config.top_up,
                };
                let forget = config.bugs.wallet_forgets_refusals;
                state.wallets.apply(user, key, charge, None, forget);
            }
            Action::Step(id) => self.step(&mut state, id)?,
            Action::Deliver(message) => {
                state.take_message(&message)?;
                self.deliver(&mut state, message)?;
            }
            Action::WalletTimeout(id) => {
                let proc = state.proc(id)?.clone();
                if state.call_in_flight(&proc) {
                    state.faults.wallet_deadlines = state.faults.wallet_deadlines.checked_sub(1)?;
                }
                state.drop_replies_to(id);
                match proc.task {
                    Task::Pay {
                        id: reservation,
                        pc: PayPc::AwaitUse { attempt, .. },
                    } => {
                        let settling = Settling {
                            attempt,
                            reply: UseReply::Unknown,
                            refunded: false,
                        };
                        self.settle_payment(&mut state, &proc, reservation, settling);
                    }
                    _ => state.finish(id),
                }
            }
            Action::ClaimPayment(id) => {
                let (_, attempt) = state
                    .seat
                    .stuck_payments()
                    .into_iter()
                    .find(|&(stuck, _)| stuck == id)?;
                let user = state.owner(id)?;
                let proc = state.claim(
                    user,
                    Task::Pay {
                        id,
                        pc: PayPc::Begin,
                    },
                );
                self.send_use(&mut state, &proc, id, attempt);
            }
            Action::ClaimCancellation(id) => {
                let user = state.owner(id)?;
                state.claim(
                    user,
                    Task::Cancel {
                        id,
                        pc: CancelPc::Start,
                    },
                );
            }
            Action::Sweep => {
                self.decided(&mut state, None);
                state.seat.sweep(config.bugs.store);
            }
            Action::Lapse(id) => {
                let row = state
                    .seat
                    .reservations
                    .iter_mut()
                    .find(|row| row.id == id)?;
                row.lapsed = true;
                // The hold's taken mark lapses with it (its time is counted from before the
                // hold's transaction, so it never outlives the hold).
                if state.lock == Some(LockKey::Taken(id)) {
                    state.lock = None;
                }
            }
            Action::PerformanceBegins => state.seat.started = true,
            Action::LockExpires | Action::MarkLapses => state.lock = None,
            Action::Crash(id) => {
                state.faults.crashes -= 1;
                state.finish(id);
            }
            Action::LoseLock => {
                state.faults.lock_losses -= 1;
                state.lock = None;
            }
            Action::Lose(message) => {
                state.faults.lost_messages -= 1;
                state.take_message(&message)?;
            }
            Action::ClientDeadline(id) => {
                state.faults.client_deadlines -= 1;
                let proc = state.proc_mut(id)?;
                proc.awaited = false;
                let user = proc.user;
                state.clients[user].busy = None;
            }
        }
        if transacts {
            state.note_clock_breaches(&last.seat);
        }
        Some(state)
    }

    /// The transaction of a process that reads its clock in a step of its own (a seeded bug)
    /// does so now.
    fn reads_clock_early(&self) -> bool {
        self.config.bugs.decide_with_transaction_start_clock
    }

    /// A decision on the seat is taken, with the clock read `early` (before the decision's
    /// step) or else now: an earlier reading its clock is later than is overtaken, and an
    /// overtaken reading taken as the clock runs the seat's clock back.
    fn decided(&self, state: &mut State, early: Option<Reading>) {
        if !self.reads_clock_early() {
            // Every decision reads the clock in its own step: none can be older.
            return;
        }
        let clock = early.map_or_else(|| state.seat.clock(), |reading| reading.clock);
        if early.is_some_and(|reading| reading.overtaken) {
            state.clock_breaches.insert(ClockBreaches::RAN_BACK);
        }
        for proc in &mut state.procs {
            if let Some(reading) = proc.reading_mut()
                && clock.is_after(reading.clock)
            {
                reading.overtaken = true;
            }
        }
    }

    fn step(&self, state: &mut State, id: ProcId) -> Option<()> {
        let proc = state.proc(id)?.clone();
        let user_id = user_id(proc.user);
        match proc.task {
            Task::Hold(HoldPc::Lock) => match state.lock {
                None => {
                    state.lock = Some(LockKey::Token(id));
                    state.set_task(id, Task::Hold(HoldPc::Locked));
                }
                // The key already holds this request's token (`GET` returned it): it is ours.
                Some(LockKey::Token(owner)) if owner == id => {
                    state.set_task(id, Task::Hold(HoldPc::Locked));
                }
                // SEAT_LOCKED, or SEAT_TAKEN from the mark: refused without Postgres.
                Some(LockKey::Token(_) | LockKey::Taken(_)) => state.finish(id),
            },
            // The hold of an available seat and, when it finds the seat not available (or the
            // performance begun, or the user at the limit), the full transaction, as one step:
            // the first writes nothing when it holds nothing, and whenever it would hold the
            // full transaction does the same (the seat row reads AVAILABLE only without an
            // active reservation: "seat reads as its reservation" holds in every state), so a
            // step in between changes no outcome. The model's seat is its schedule's only one.
            Task::Hold(HoldPc::Locked | HoldPc::LockedInPostgres) => {
                if self.config.bugs.hold_without_guard {
                    let decision = state.seat.hold_read(user_id, UserHolds::ONE_SEAT);
                    state.set_task(id, Task::Hold(HoldPc::Decided(decision)));
                } else if self.reads_clock_early() {
                    let reading = state.read_clock();
                    state.set_task(id, Task::Hold(HoldPc::Clocked(reading)));
                } else {
                    self.decided(state, None);
                    let outcome = state.seat.hold_seat(user_id, UserHolds::ONE_SEAT);
                    state.set_task(id, hold_released(outcome));
                }
            }
            Task::Hold(HoldPc::Clocked(reading)) => {
                self.decided(state, Some(reading));
                let outcome = state.seat.hold_seat_at(
                    user_id,
                    ClockRead::Before(reading.clock),
                    UserHolds::ONE_SEAT,
                );
                state.set_task(id, hold_released(outcome));
            }
            Task::Hold(HoldPc::Decided(decision)) => {
                let outcome = state.seat.hold_write_unguarded(decision, user_id);
                state.set_task(id, hold_released(outcome));
            }
            Task::Hold(HoldPc::Release { held }) => {
                // Time is abstract: a hold has time left until it has lapsed.
                let left = |reservation: i64| {
                    let lapsed = state
                        .seat
                        .reservations
                        .iter()
                        .any(|row| row.id == reservation && row.lapsed);
                    (reservation, if lapsed { 0 } else { 1 })
                };
                if state.lock == Some(LockKey::Token(id)) {
                    state.lock = match reservation::after_hold(held.map(left)) {
                        AfterHold::MarkTaken { reservation, .. } => {
                            Some(LockKey::Taken(reservation))
                        }
                        AfterHold::Release => None,
                    };
                }
                state.finish(id);
            }
            Task::Pay {
                id: reservation,
                pc: PayPc::Begin,
            } => {
                if self.reads_clock_early() {
                    let reading = state.read_clock();
                    state.set_task(
                        id,
                        Task::Pay {
                            id: reservation,
                            pc: PayPc::BeginClocked(reading),
                        },
                    );
                } else {
                    self.begin_pay(state, &proc, reservation, None);
                }
            }
            Task::Pay {
                id: reservation,
                pc: PayPc::BeginClocked(reading),
            } => {
                self.begin_pay(state, &proc, reservation, Some(reading));
            }
            Task::Pay {
                id: reservation,
                pc: PayPc::SettleClocked(ref clocked),
            } => {
                let (settling, reading) = **clocked;
                self.settle_payment_at(state, &proc, reservation, settling, Some(reading));
            }
            Task::Cancel {
                id: reservation,
                pc: CancelPc::Start,
            } => {
                if self.reads_clock_early() {
                    let reading = state.read_clock();
                    state.set_task(
                        id,
                        Task::Cancel {
                            id: reservation,
                            pc: CancelPc::Clocked(reading),
                        },
                    );
                } else {
                    self.start_cancel(state, &proc, reservation, None);
                }
            }
            Task::Cancel {
                id: reservation,
                pc: CancelPc::Clocked(reading),
            } => {
                self.start_cancel(state, &proc, reservation, Some(reading));
            }
            Task::Cancel {
                id: reservation,
                pc: CancelPc::ClearMark,
            } => {
                if state.lock == Some(LockKey::Taken(reservation)) {
                    state.lock = None;
                }
                state.finish(id);
            }
            Task::Pay { .. } | Task::Cancel { .. } => return None,
        }
        Some(())
    }

    /// `begin_pay`, deciding with the clock read `early` or else now, then the attempt's
    /// `Use`.
    fn begin_pay(&self, state: &mut State, proc: &Proc, reservation: i64, early: Option<Reading>) {
        self.decided(state, early);
        match state
            .seat
            .begin_pay_at(reservation, user_id(proc.user), clock_read(early))
        {
            BeginOutcome::Pay { attempt } => self.send_use(state, proc, reservation, attempt),
            _ => state.finish(proc.id),
        }
    }

    /// The first cancel transaction, deciding with the clock read `early` or else now: a paid
    /// reservation's refund goes out, or (paid without a `Use`) the releasing transaction
    /// follows at once.
    fn start_cancel(
        &self,
        state: &mut State,
        proc: &Proc,
        reservation: i64,
        early: Option<Reading>,
    ) {
        self.decided(state, early);
        let user_id = user_id(proc.user);
        let read = clock_read(early);
        match state.seat.cancel_at(reservation, user_id, false, read) {
            CancelOutcome::RefundFirst {
                use_key: Some(use_key),
            } => {
                state.send_refund(proc, reservation, use_key);
                state.set_task(
                    proc.id,
                    Task::Cancel {
                        id: reservation,
                        pc: CancelPc::AwaitRefund,
                    },
                );
            }
            CancelOutcome::RefundFirst { use_key: None } => {
                let outcome = state.seat.cancel_at(reservation, user_id, true, read);
                state.after_cancel(proc.id, reservation, outcome);
            }
            outcome => state.after_cancel(proc.id, reservation, outcome),
        }
    }

    /// Sends attempt `attempt`'s `Use` for the process's reservation and waits for it.
    fn send_use(&self, state: &mut State, proc: &Proc, reservation: i64, attempt: i32) {
        let mut key = payment::use_key(KEY_NONCE, reservation, attempt);
        if self.config.bugs.reconciler_fresh_keys && proc.id.by == Starter::Reconciler {
            key = format!("{key}-retry-{}", proc.id.seq);
        }
        let key = Key::new(&key);
        state.send(Message::Call {
            from: proc.id,
            user: proc.user,
            key,
            call: WalletCall::Use {
                amount: state.seat.price,
            },
            reservation,
        });
        state.set_task(
            proc.id,
            Task::Pay {
                id: reservation,
                pc: PayPc::AwaitUse { attempt, key },
            },
        );
    }

    /// `settle_attempt` with the attempt's reply, then the refund it asks for, if any; with
    /// the seeded clock bug, its transaction only reads the clock in this step.
    fn settle_payment(&self, state: &mut State, proc: &Proc, reservation: i64, settling: Settling) {
        if self.reads_clock_early() {
            let reading = state.read_clock();
            state.set_task(
                proc.id,
                Task::Pay {
                    id: reservation,
                    pc: PayPc::SettleClocked(Box::new((settling, reading))),
                },
            );
        } else {
            self.settle_payment_at(state, proc, reservation, settling, None);
        }
    }

    /// `settle_attempt`, deciding with the clock read `early` or else now, then the refund it
    /// asks for, if any.
    fn settle_payment_at(
        &self,
        state: &mut State,
        proc: &Proc,
        reservation: i64,
        settling: Settling,
        early: Option<Reading>,
    ) {
        let Settling {
            attempt,
            reply,
            refunded,
        } = settling;
        self.decided(state, early);
        let bugs = self.config.bugs.store;
        let read = clock_read(early);
        match state
            .seat
            .settle_at(reservation, attempt, reply, refunded, bugs, read)
        {
            SettleOutcome::Refund { use_key } if !refunded => {
                state.send_refund(proc, reservation, use_key);
                state.set_task(
                    proc.id,
                    Task::Pay {
                        id: reservation,
                        pc: PayPc::AwaitRefund { attempt, reply },
                    },
                );
            }
            SettleOutcome::StillPaying => {
                if let Err(at) = state.unknown_outcomes.binary_search(&reservation) {
                    state.unknown_outcomes.insert(at, reservation);
                }
                state.finish(proc.id);
            }
            _ => state.finish(proc.id),
        }
    }

    fn deliver(&self, state: &mut State, message: Message) -> Option<()> {
        match message {
            Message::Call {
                from,
                user,
                key,
                call,
                reservation,
            } => {
                let request = match call {
                    WalletCall::Use { amount } => Request::Use { amount },
                    WalletCall::Refund { use_key } => Request::Refund { use_key },
                };
                let forget = self.config.bugs.wallet_forgets_refusals;
                let outcome = state
                    .wallets
                    .apply(user, key, request, Some(reservation), forget);
                // A caller that stopped waiting never sees the reply: none is sent.
                if state.proc(from).is_some_and(|proc| proc.awaits(key)) {
                    state.send(Message::Reply {
                        to: from,
                        key,
                        outcome: outcome.into(),
                    });
                }
            }
            Message::Reply { to, outcome, .. } => {
                let proc = state.proc(to)?.clone();
                let refunded = matches!(outcome, WalletOutcome::Applied { .. });
                match proc.task {
                    Task::Pay {
                        id,
                        pc: PayPc::AwaitUse { attempt, .. },
                    } => {
                        let settling = Settling {
                            attempt,
                            reply: outcome.use_reply(),
                            refunded: false,
                        };
                        self.settle_payment(state, &proc, id, settling);
                    }
                    Task::Pay {
                        id,
                        pc: PayPc::AwaitRefund { attempt, reply },
                    } if refunded => {
                        let settling = Settling {
                            attempt,
                            reply,
                            refunded: true,
                        };
                        self.settle_payment(state, &proc, id, settling);
                    }
                    // The releasing cancel of a paid reservation: its decision does not depend
                    // on the clock (a CONFIRMED reservation never lapses), so it reads it in
                    // its deciding step even with the seeded clock bug.
                    Task::Cancel {
                        id,
                        pc: CancelPc::AwaitRefund,
                    } if refunded => {
                        self.decided(state, None);
                        let outcome = state.seat.cancel(id, user_id(proc.user), true);
                        state.after_cancel(to, id, outcome);
                    }
                    // A refused refund ends the request with an error; what it began stays
                    // for a retry or the reconciler.
                    _ => state.finish(to),
                }
            }
        }
        Some(())
    }
}

impl Proc {
    /// Whether it can move without a reply.
    fn has_step(&self) -> bool {
        matches!(
            self.task,
            Task::Hold(_)
                | Task::Pay {
                    pc: PayPc::Begin | PayPc::BeginClocked(_) | PayPc::SettleClocked(_),
                    ..
                }
                | Task::Cancel {
                    pc: CancelPc::Start | CancelPc::Clocked(_) | CancelPc::ClearMark,
                    ..
                }
        )
    }

    /// The clock its transaction read before its deciding step, if it did (a seeded bug).
    fn reading_mut(&mut self) -> Option<&mut Reading> {
        match &mut self.task {
            Task::Hold(HoldPc::Clocked(reading))
            | Task::Pay {
                pc: PayPc::BeginClocked(reading),
                ..
            }
            | Task::Cancel {
                pc: CancelPc::Clocked(reading),
                ..
            } => Some(reading),
            Task::Pay {
                pc: PayPc::SettleClocked(clocked),
                ..
            } => Some(&mut clocked.1),
            _ => None,
        }
    }

    fn awaits(&self, key: Key) -> bool {
        match &self.task {
            Task::Pay {
                pc: PayPc::AwaitUse { key: awaited, .. },
                ..
            } => *awaited == key,
            Task::Pay {
                id,
                pc: PayPc::AwaitRefund { .. },
            }
            | Task::Cancel {
                id,
                pc: CancelPc::AwaitRefund,
            } => Key::new(&payment::refund_key(KEY_NONCE, *id)) == key,
            _ => false,
        }
    }

    /// A hold past the Redis lock that has not yet written.
    fn past_lock(&self) -> bool {
        matches!(
            self.task,
            Task::Hold(
                HoldPc::Locked | HoldPc::LockedInPostgres | HoldPc::Clocked(_) | HoldPc::Decided(_)
            )
        )
    }
}

/// When a decision read its clock: `early` (a seeded bug), or under the seat's lock.
fn clock_read(early: Option<Reading>) -> ClockRead {
    early.map_or(ClockRead::UnderLock, |reading| {
        ClockRead::Before(reading.clock)
    })
}

/// A hold's next step once Postgres has answered: the end of its lock.
fn hold_released(outcome: HoldOutcome) -> Task {
    let held = match outcome {
        HoldOutcome::Held { id } => Some(id),
        HoldOutcome::Taken | HoldOutcome::PerformanceStarted | HoldOutcome::HoldLimit => None,
    };
    Task::Hold(HoldPc::Release { held })
}

impl State {
    /// A transaction reads the clock now, to decide with later (a seeded bug).
    fn read_clock(&self) -> Reading {
        Reading {
            clock: self.seat.clock(),
            overtaken: false,
        }
    }

    /// After a step that may have run a transaction on the seat (`before` is the seat's rows
    /// before it): a new hold, a confirmation or a new payment attempt the clock at its commit
    /// forbids is recorded.
    fn note_clock_breaches(&mut self, before: &SeatRows) {
        let seat = &self.seat;
        if !seat.started && !seat.reservations.iter().any(|row| row.lapsed) {
            return;
        }
        for row in &seat.reservations {
            let was = before.row(row.id);
            let confirmed = row.status == Status::Confirmed
                && was.is_none_or(|was| was.status != Status::Confirmed);
            let begun = row.status == Status::Paying
                && was.is_none_or(|was| {
                    was.status != Status::Paying || was.pay_attempt != row.pay_attempt
                });
            if confirmed && seat.started {
                self.clock_breaches.insert(ClockBreaches::SOLD_AFTER_START);
            }
            if begun && (seat.started || row.lapsed) {
                self.clock_breaches.insert(ClockBreaches::PAYING_TOO_LATE);
            }
            if was.is_none() && seat.started {
                self.clock_breaches.insert(ClockBreaches::HELD_AFTER_START);
            }
        }
    }

    /// A cancel transaction answered: a cancelled reservation's taken mark is deleted next.
    fn after_cancel(&mut self, id: ProcId, reservation: i64, outcome: CancelOutcome) {
        if outcome == CancelOutcome::Cancelled {
            self.set_task(
                id,
                Task::Cancel {
                    id: reservation,
                    pc: CancelPc::ClearMark,
                },
            );
        } else {
            self.finish(id);
        }
    }

    fn proc(&self, id: ProcId) -> Option<&Proc> {
        self.procs.iter().find(|proc| proc.id == id)
    }

    fn proc_mut(&mut self, id: ProcId) -> Option<&mut Proc> {
        self.procs.iter_mut().find(|proc| proc.id == id)
    }

    /// A user's request, which they wait for.
    fn start(&mut self, user: User, task: Task) {
        let client = &mut self.clients[user];
        let id = ProcId {
            by: Starter::User(user),
            seq: client.sent,
        };
        client.sent += 1;
        client.busy = Some(id);
        self.add(Proc {
            id,
            awaited: true,
            user,
            task,
        });
    }

    /// The reconciler picks up a reservation of `user`.
    fn claim(&mut self, user: User, task: Task) -> Proc {
        let proc = Proc {
            id: ProcId {
                by: Starter::Reconciler,
                seq: self.claims,
            },
            awaited: false,
            user,
            task,
        };
        self.claims = self.claims.wrapping_add(1);
        self.add(proc.clone());
        proc
    }

    fn add(&mut self, proc: Proc) {
        self.procs.push(proc);
        self.procs.sort_by_key(|proc| proc.id);
    }

    fn set_task(&mut self, id: ProcId, task: Task) {
        if let Some(proc) = self.proc_mut(id) {
            proc.task = task;
        }
    }

    /// The process ends (done, failed or crashed); a client waiting for it is free.
    fn finish(&mut self, id: ProcId) {
        if let Some(proc) = self.proc(id)
            && proc.awaited
        {
            let user = proc.user;
            self.clients[user].busy = None;
        }
        self.procs.retain(|proc| proc.id != id);
        self.drop_replies_to(id);
    }

    fn send(&mut self, message: Message) {
        let at = self.network.partition_point(|sent| sent <= &message);
        self.network.insert(at, message);
    }

    fn send_refund(&mut self, proc: &Proc, reservation: i64, use_key: Key) {
        self.send(Message::Call {
            from: proc.id,
            user: proc.user,
            key: Key::new(&payment::refund_key(KEY_NONCE, reservation)),
            call: WalletCall::Refund { use_key },
            reservation,
        });
    }

    fn take_message(&mut self, message: &Message) -> Option<()> {
        let at = self.network.iter().position(|sent| sent == message)?;
        self.network.remove(at);
        Some(())
    }

    fn drop_replies_to(&mut self, id: ProcId) {
        self.network
            .retain(|message| !matches!(message, Message::Reply { to, .. } if *to == id));
    }

    /// Whether the wallet call a process waits on, or its reply, is still in flight.
    fn call_in_flight(&self, proc: &Proc) -> bool {
        self.network.iter().any(|message| match message {
            Message::Call { from, key, .. } => *from == proc.id && proc.awaits(*key),
            Message::Reply { to, .. } => *to == proc.id,
        })
    }

    fn latest_reservation(&self, user: User) -> Option<&crate::store::Row> {
        self.seat
            .reservations
            .iter()
            .filter(|row| row.user_id == user_id(user))
            .max_by_key(|row| row.id)
    }

    fn owner(&self, reservation: i64) -> Option<User> {
        let row = self.seat.row(reservation)?;
        usize::try_from(row.user_id - 1).ok()
    }

    /// No request runs and nothing is in flight.
    pub fn is_quiescent(&self) -> bool {
        self.procs.is_empty() && self.network.is_empty()
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.background_actions(state, false, actions);
        for (user, client) in state.clients.iter().enumerate() {
            if client.busy.is_some() {
                continue;
            }
            let latest = state.latest_reservation(user);
            let status = latest.map(|row| row.status);
            let left = client.left;
            if left.holds > 0 && status.is_none() {
                actions.push(Action::Hold(user));
                if state.faults.postgres_locked_holds > 0 {
                    actions.push(Action::HoldWithoutRedis(user));
                }
            }
            if left.pays > 0 && matches!(status, Some(Status::Held | Status::Paying)) {
                actions.push(Action::Pay(user));
            }
            if left.cancels > 0 && matches!(status, Some(Status::Held | Status::Confirmed)) {
                actions.push(Action::Cancel(user));
            }
            // Users top up once told their balance is short: their hold is back to HELD.
            let refused =
                latest.is_some_and(|row| row.status == Status::Held && row.pay_attempt > 0);
            if left.top_ups > 0 && refused && state.wallets.balances[user] < state.seat.price {
                actions.push(Action::TopUp(user));
            }
        }
        for row in &state.seat.reservations {
            if matches!(row.status, Status::Held | Status::Paying) && !row.lapsed {
                actions.push(Action::Lapse(row.id));
            }
        }
        if self.config.performance_may_begin && !state.seat.started {
            actions.push(Action::PerformanceBegins);
        }
        match state.lock {
            Some(LockKey::Token(owner)) => {
                if state.proc(owner).is_none() {
                    actions.push(Action::LockExpires);
                } else if state.faults.lock_losses > 0 {
                    actions.push(Action::LoseLock);
                }
            }
            // A held or paying reservation's mark lapses with the hold (`Lapse`); any other's
            // at some point once the hold's time is up.
            Some(LockKey::Taken(marked))
                if state.seat.reservations.iter().any(|row| {
                    row.id == marked && !matches!(row.status, Status::Held | Status::Paying)
                }) =>
            {
                actions.push(Action::MarkLapses);
            }
            Some(LockKey::Taken(_)) | None => {}
        }
        for proc in &state.procs {
            if state.faults.crashes > 0 {
                actions.push(Action::Crash(proc.id));
            }
            // Only a pay's client can do more with its reservation while the request runs on.
            let paying = matches!(proc.task, Task::Pay { .. });
            if state.faults.client_deadlines > 0 && proc.awaited && paying {
                actions.push(Action::ClientDeadline(proc.id));
            }
            if state.faults.wallet_deadlines > 0 && !proc.has_step() && state.call_in_flight(proc) {
                actions.push(Action::WalletTimeout(proc.id));
            }
        }
        if state.faults.lost_messages > 0 {
            actions.extend(state.network.iter().cloned().map(Action::Lose));
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        self.apply(last, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("no double booking", |_: &Self, state: &State| {
                state
                    .seat
                    .reservations
                    .iter()
                    .filter(|row| row.status.is_active())
                    .count()
                    <= 1
            }),
            Property::always(
                "the seat reads as its reservation",
                |_: &Self, state: &State| seat_matches(&state.seat),
            ),
            Property::always(
                "at most one debit per reservation",
                |_: &Self, state: &State| {
                    state.seat.reservations.iter().all(|row| {
                        state
                            .wallets
                            .ledger
                            .iter()
                            .filter(|entry| entry.reservation == Some(row.id) && entry.delta < 0)
                            .count()
                            <= 1
                    })
                },
            ),
            Property::always("at most one refund per debit", |_: &Self, state: &State| {
                let ledger = &state.wallets.ledger;
                (0..ledger.len()).all(|used| {
                    ledger
                        .iter()
                        .filter(|entry| entry.refund_of == Some(used))
                        .count()
                        <= 1
                })
            }),
            Property::always(
                "balances equal their ledgers and are never negative",
                |_: &Self, state: &State| ledger_balances(&state.wallets),
            ),
            Property::always(
                "the clock never runs backwards across the seat's decisions",
                |_: &Self, state: &State| !state.clock_breaches.contains(ClockBreaches::RAN_BACK),
            ),
            Property::always(
                "no seat is sold once the performance has begun",
                |_: &Self, state: &State| {
                    !state
                        .clock_breaches
                        .contains(ClockBreaches::SOLD_AFTER_START)
                },
            ),
            Property::always(
                "no seat is held once the performance has begun",
                |_: &Self, state: &State| {
                    !state
                        .clock_breaches
                        .contains(ClockBreaches::HELD_AFTER_START)
                },
            ),
            Property::always(
                "no payment begins once the performance has begun or the hold's time is up",
                |_: &Self, state: &State| {
                    !state
                        .clock_breaches
                        .contains(ClockBreaches::PAYING_TOO_LATE)
                },
            ),
            Property::always(
                "at rest, nothing is left paying and each reservation kept what it owes",
                |model: &Self, state: &State| {
                    !state.is_quiescent()
                        || model
                            .settle(state)
                            .is_some_and(|settled| settled_right(&settled))
                },
            ),
            Property::sometimes("a seat is sold", |_: &Self, state: &State| {
                state.seat.seat == SeatView::Sold
            }),
            Property::sometimes(
                "a paid reservation is cancelled and refunded",
                |_: &Self, state: &State| {
                    state.seat.reservations.iter().any(|row| {
                        row.status == Status::Cancelled
                            && row.payment_transaction_id.is_some()
                            && state.wallets.net_for(row.id) == 0
                    })
                },
            ),
            Property::sometimes(
                "two holds past Redis after the lock was lost",
                |_: &Self, state: &State| {
                    state.procs.iter().filter(|proc| proc.past_lock()).count() >= 2
                },
            ),
            Property::sometimes(
                "a hold without Redis races one under the Redis lock",
                |_: &Self, state: &State| {
                    let under_redis_lock = |proc: &&Proc| {
                        proc.task == Task::Hold(HoldPc::Locked)
                            && state.lock == Some(LockKey::Token(proc.id))
                    };
                    state
                        .procs
                        .iter()
                        .any(|proc| proc.task == Task::Hold(HoldPc::LockedInPostgres))
                        && state.procs.iter().any(|proc| under_redis_lock(&proc))
                },
            ),
            Property::sometimes(
                "a hold about to meet a taken mark",
                |_: &Self, state: &State| {
                    matches!(state.lock, Some(LockKey::Taken(_)))
                        && state
                            .procs
                            .iter()
                            .any(|proc| proc.task == Task::Hold(HoldPc::Lock))
                },
            ),
            Property::sometimes(
                "a hold expires after an unknown payment outcome",
                |_: &Self, state: &State| {
                    state.seat.reservations.iter().any(|row| {
                        row.status == Status::Expired && state.unknown_outcomes.contains(&row.id)
                    })
                },
            ),
            Property::sometimes(
                "a second attempt after a refusal",
                |_: &Self, state: &State| {
                    state
                        .seat
                        .reservations
                        .iter()
                        .any(|row| row.pay_attempt >= 2)
                },
            ),
        ];
        if self.config.performance_may_begin {
            properties.push(Property::sometimes(
                "a debit refunded because the performance began",
                |_: &Self, state: &State| {
                    state.seat.started
                        && state.seat.reservations.iter().any(|row| {
                            row.status == Status::Expired
                                && state.wallets.ledger.iter().any(|entry| {
                                    entry.reservation == Some(row.id) && entry.refund_of.is_some()
                                })
                        })
                },
            ));
            properties.push(Property::sometimes(
                "a recorded refund decision is left for a later settle",
                |_: &Self, state: &State| {
                    state.seat.reservations.iter().any(|row| {
                        row.status == Status::Paying
                            && row.refunding
                            && !state.procs.iter().any(
                                |proc| matches!(proc.task, Task::Pay { id, .. } if id == row.id),
                            )
                    })
                },
            ));
        }
        properties
    }
}

/// SOLD exactly when a reservation is confirmed, HELD when one holds or pays, else AVAILABLE.
fn seat_matches(seat: &SeatRows) -> bool {
    let expected = match seat.active().map(|row| row.status) {
        Some(Status::Confirmed) => SeatView::Sold,
        Some(_) => SeatView::Held,
        None => SeatView::Available,
    };
    seat.seat == expected
}

fn ledger_balances(wallets: &Wallets) -> bool {
    wallets.balances.iter().enumerate().all(|(user, &balance)| {
        let moved: i64 = wallets
            .ledger
            .iter()
            .filter(|entry| entry.user == user)
            .map(|entry| entry.delta)
            .sum();
        balance >= 0 && balance == wallets.initial[user] + moved
    })
}

/// At rest: nothing is paying or half cancelled, and each reservation kept exactly what its
/// outcome says: a confirmed one its price, paid by one of its own debits; any other, nothing.
pub fn settled_right(state: &State) -> bool {
    let seat = &state.seat;
    seat_matches(seat)
        && seat.reservations.iter().all(|row| {
            let net = state.wallets.net_for(row.id);
            match row.status {
                Status::Paying => false,
                Status::Confirmed => {
                    !row.cancel_requested
                        && net == -seat.price
                        && row.payment_transaction_id.is_some_and(|paid| {
                            state
                                .wallets
                                .ledger
                                .iter()
                                .enumerate()
                                .any(|(entry, used)| {
                                    transaction_id(entry) == paid
                                        && used.reservation == Some(row.id)
                                        && used.delta < 0
                                })
                        })
                }
                Status::Held | Status::Cancelled | Status::Expired => net == 0,
            }
        })
}
