//! Hot-wallet batching. With one transaction per request, one user's wallet is capped by the
//! rate at which Postgres commits changes of a single row. Here, while a transaction for a user
//! is in flight, that user's next requests queue in the process; when it commits, everything
//! that queued meanwhile (up to a bound) goes in the next transaction, under one row lock,
//! each movement decided in turn with its own key, ledger row and answer. There is no waiting
//! window: a lone request goes at once, and a batch is whatever arrived while the previous one
//! ran. Replicas stay safe because the row lock still serializes their transactions.
//!
//! A request identical to one already queued or in flight (the same key of the same caller,
//! the same movement) joins it and hears its answer, as a replay would, instead of taking a
//! place of its own; a user with a full queue is answered `USER_BUSY` at once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{Instrument, Span};

use crate::domain::WalletError;
use crate::model::{IdempotencyKey, KeyScope, MoneyMovement, MovementOutcome, UserId};
use crate::store::{Store, StoreError};

/// Sizes of the batches applied, as a histogram.
pub const BATCH_SIZE: &str = "ticketing_wallet_batch_size";

/// How many batches' worth of requests may queue behind a user's transaction before more are
/// refused at once (`USER_BUSY`: the user's wallet is not keeping up; a client retries with its
/// key).
const QUEUED_BATCHES: usize = 4;

type Outcome = Result<MovementOutcome, StoreError>;

/// A key as its caller sent it: the same key of another caller is another key.
type ScopedKey = (KeyScope, IdempotencyKey);

/// One user's requests behind their transaction in flight.
#[derive(Default)]
struct UserQueue {
    waiting: VecDeque<Waiting>,
    /// The movements queued or in flight, by key, and the callers of identical requests that
    /// joined them.
    joined: HashMap<ScopedKey, Joined>,
}

struct Joined {
    movement: MoneyMovement,
    callers: Vec<oneshot::Sender<Outcome>>,
}

/// A request waiting for its batch.
struct Waiting {
    movement: MoneyMovement,
    outcome_tx: oneshot::Sender<Outcome>,
    /// The caller's span, in whose trace the batch appears.
    span: Span,
}

pub struct Batcher {
    store: Store,
    max_batch: usize,
    /// Longest a batch's transaction may take; past it, its callers hear `UNAVAILABLE`.
    deadline: Duration,
    /// For each user with a transaction in flight, the requests queued behind it.
    queues: Mutex<HashMap<i64, UserQueue>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.max_batch)
            .field("deadline", &self.deadline)
            .field("users_in_flight", &self.queues().len())
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub fn new(store: Store, max_batch: usize, deadline: Duration) -> Self {
        metrics::describe_histogram!(
            BATCH_SIZE,
            "Movements of one user applied in one transaction"
        );
        Self {
            store,
            max_batch,
            deadline,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `movement` in the next transaction of its user: at once if none is in flight,
    /// else after it, with whatever else queued; or joins an identical movement queued or in
    /// flight.
    pub async fn apply(
        self: &Arc<Self>,
        movement: MoneyMovement,
    ) -> Result<MovementOutcome, WalletError> {
        let user_id = movement.user_id;
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let key = (movement.scope.clone(), movement.key.clone());
        let waiting = Waiting {
            movement,
            outcome_tx,
            span: Span::current(),
        };
        let leads = match self.queues().entry(user_id.get()) {
            Entry::Occupied(mut queue) => {
                let queue = queue.get_mut();
                match queue.joined.get_mut(&key) {
                    Some(joined) if joined.movement == waiting.movement => {
                        joined.callers.push(waiting.outcome_tx);
                    }
                    _ if queue.waiting.len() >= self.max_batch * QUEUED_BATCHES => {
                        return Err(WalletError::UserBusy);
                    }
                    same_key => {
                        // The same key for another movement is decided (KEY_REUSED) in turn.
                        if same_key.is_none() {
                            queue.joined.insert(key, Joined::new(&waiting.movement));
                        }
                        queue.waiting.push_back(waiting);
                    }
                }
                None
            }
            Entry::Vacant(slot) => {
                let mut queue = UserQueue::default();
                queue.joined.insert(key, Joined::new(&waiting.movement));
                slot.insert(queue);
                Some(waiting)
            }
        };
        if let Some(first) = leads {
            // The guard exists before the task: should the task never run, the queue goes too.
            let leading = Leading {
                batcher: Arc::clone(self),
                user_id,
                armed: true,
            };
            // A task of its own: the batch, and every answer in it, does not depend on this
            // caller staying.
            tokio::spawn(leading.drive(first));
        }
        let outcome = outcome_rx.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the batch ended without an answer".to_owned(),
            ))
        });
        Ok(outcome?)
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<i64, UserQueue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers `waiting`'s caller with `outcome`, and those who joined it.
    fn answer(&self, waiting: Waiting, outcome: Outcome) {
        let joined = {
            let mut queues = self.queues();
            let key = (waiting.movement.scope.clone(), waiting.movement.key.clone());
            queues
                .get_mut(&waiting.movement.user_id.get())
                .and_then(|queue| match queue.joined.get(&key) {
                    Some(joined) if joined.movement == waiting.movement => {
                        queue.joined.remove(&key)
                    }
                    _ => None,
                })
        };
        for caller in joined.into_iter().flat_map(|joined| joined.callers) {
            // A caller that left does not take its answer: nothing to do.
            let _ = caller.send(outcome.clone());
        }
        let _ = waiting.outcome_tx.send(outcome);
    }

    /// Takes the next batch of `user_id` from its queue, leaving out callers that left (their
    /// movement never reached the database; a retry with the key decides it). Empty when
    /// nothing is queued, and then the queue is gone: the next request leads anew.
    fn next_batch(&self, user_id: i64) -> Vec<Waiting> {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(&user_id) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            let Some(waiting) = queue.waiting.pop_front() else {
                break;
            };
            let key = (waiting.movement.scope.clone(), waiting.movement.key.clone());
            let joined_by_others = queue.joined.get(&key).is_some_and(|joined| {
                joined.movement == waiting.movement && !joined.callers.is_empty()
            });
            if waiting.outcome_tx.is_closed() && !joined_by_others {
                if queue
                    .joined
                    .get(&key)
                    .is_some_and(|joined| joined.movement == waiting.movement)
                {
                    queue.joined.remove(&key);
                }
                continue;
            }
            batch.push(waiting);
        }
        if batch.is_empty() {
            queues.remove(&user_id);
        }
        batch
    }

    /// Applies one batch and answers each of its callers.
    async fn apply_batch(&self, user_id: UserId, batch: Vec<Waiting>) {
        metrics::histogram!(BATCH_SIZE).record(batch.len() as f64);
        // The transaction's span is a child of the first caller's, so the trace of a lone
        // request holds its transaction; every other caller's trace holds a span of its own
        // for the time of the batch, linked to the transaction's (and it to theirs).
        let first_caller = batch.first().map(|waiting| waiting.span.clone());
        let target = shared::telemetry::postgres_target();
        let span = tracing::info_span!(
            parent: first_caller.as_ref().and_then(Span::id),
            "apply_batch",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "apply_batch",
            db.namespace = target.namespace.as_deref(),
            server.address = target.address.as_deref(),
            server.port = target.port,
            user_id = user_id.get(),
            size = batch.len()
        );
        let _joined: Vec<Span> = batch
            .iter()
            .skip(1)
            .map(|waiting| {
                let joined = tracing::info_span!(
                    parent: &waiting.span,
                    "apply_batch joined",
                    user_id = user_id.get(),
                    size = batch.len()
                );
                joined.follows_from(&span);
                span.follows_from(&waiting.span);
                joined
            })
            .collect();
        let movements: Vec<MoneyMovement> = batch
            .iter()
            .map(|waiting| waiting.movement.clone())
            .collect();
        let applied = tokio::time::timeout(
            self.deadline,
            self.store.apply_movements(user_id, &movements),
        )
        .instrument(span.clone())
        .await;
        let outcomes = match applied {
            Ok(Ok(outcomes)) if outcomes.len() == batch.len() => Ok(outcomes),
            Ok(Ok(outcomes)) => Err(StoreError::Internal(format!(
                "{} answers to a batch of {}",
                outcomes.len(),
                batch.len()
            ))),
            Ok(Err(error)) => Err(error),
            // The transaction is dropped unfinished; the pool discards its connection, and
            // Postgres rolls it back.
            Err(_elapsed) => Err(StoreError::Unavailable(format!(
                "the database did not answer within {:?}",
                self.deadline
            ))),
        };
        match outcomes {
            Ok(outcomes) => {
                for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                    self.answer(waiting, Ok(outcome));
                }
            }
            Err(error) => {
                span.in_scope(|| tracing::warn!(%error, "batch failed"));
                for waiting in batch {
                    self.answer(waiting, Err(error.clone()));
                }
            }
        }
    }
}

impl Joined {
    fn new(movement: &MoneyMovement) -> Self {
        Self {
            movement: movement.clone(),
            callers: Vec::new(),
        }
    }
}

/// The task applying a user's batches; should it stop without taking the queue away itself
/// (a panic, a runtime shutting down), its drop does, and the waiters hear of it.
struct Leading {
    batcher: Arc<Batcher>,
    user_id: UserId,
    armed: bool,
}

impl Leading {
    async fn drive(mut self, first: Waiting) {
        let mut batch = vec![first];
        while !batch.is_empty() {
            self.batcher.apply_batch(self.user_id, batch).await;
            batch = self.batcher.next_batch(self.user_id.get());
        }
        self.armed = false;
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.armed {
            self.batcher.queues().remove(&self.user_id.get());
        }
    }
}
