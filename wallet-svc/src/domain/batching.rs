//! Hot-wallet batching. With one transaction per request, one user's wallet is capped by the
//! rate at which Postgres commits changes of a single row. Here, while a transaction for a user
//! is in flight, that user's next requests queue in the process; when it commits, everything
//! that queued meanwhile (up to a bound) goes in the next transaction, under one row lock,
//! each movement decided in turn with its own key, ledger row and answer. There is no waiting
//! window: a lone request goes at once, and a batch is whatever arrived while the previous one
//! ran. Replicas stay safe because the row lock still serializes their transactions.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{Instrument, Span};

use crate::model::{MoneyMovement, MovementOutcome, UserId};
use crate::store::{Store, StoreError};

/// Sizes of the batches applied, as a histogram.
pub const BATCH_SIZE: &str = "ticketing_wallet_batch_size";

/// How many batches' worth of requests may queue behind a user's transaction before more are
/// refused at once (the database is not keeping up; a client retries with its key).
const QUEUED_BATCHES: usize = 4;

type Outcome = Result<MovementOutcome, StoreError>;

/// A request waiting for its batch.
struct Waiting {
    movement: MoneyMovement,
    outcome_tx: oneshot::Sender<Outcome>,
    /// The caller's span, which the batch's span follows from.
    span: Span,
}

pub struct Batcher {
    store: Store,
    max_batch: usize,
    /// Longest a batch's transaction may take; past it, its callers hear `UNAVAILABLE`.
    deadline: Duration,
    /// For each user with a transaction in flight, the requests queued behind it.
    queues: Mutex<HashMap<i64, VecDeque<Waiting>>>,
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
    /// else after it, with whatever else queued.
    pub async fn apply(self: &Arc<Self>, movement: MoneyMovement) -> Outcome {
        let user_id = movement.user_id;
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let waiting = Waiting {
            movement,
            outcome_tx,
            span: Span::current(),
        };
        let leads = match self.queues().entry(user_id.get()) {
            Entry::Occupied(mut queue) => {
                if queue.get().len() >= self.max_batch * QUEUED_BATCHES {
                    return Err(StoreError::Unavailable(
                        "too many requests of this user are waiting for the database".to_owned(),
                    ));
                }
                queue.get_mut().push_back(waiting);
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
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
        outcome_rx.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the batch ended without an answer".to_owned(),
            ))
        })
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<i64, VecDeque<Waiting>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
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
            match queue.pop_front() {
                Some(waiting) if waiting.outcome_tx.is_closed() => {}
                Some(waiting) => batch.push(waiting),
                None => break,
            }
        }
        if batch.is_empty() {
            queues.remove(&user_id);
        }
        batch
    }

    /// Applies one batch and answers each of its callers.
    async fn apply_batch(&self, user_id: UserId, batch: Vec<Waiting>) {
        metrics::histogram!(BATCH_SIZE).record(batch.len() as f64);
        let span = tracing::info_span!(
            parent: None,
            "apply_batch",
            user_id = user_id.get(),
            size = batch.len()
        );
        for waiting in &batch {
            span.follows_from(&waiting.span);
        }
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
                    // A caller that left does not take its answer: nothing to do.
                    let _ = waiting.outcome_tx.send(Ok(outcome));
                }
            }
            Err(error) => {
                span.in_scope(|| tracing::warn!(%error, "batch failed"));
                for waiting in batch {
                    let _ = waiting.outcome_tx.send(Err(error.clone()));
                }
            }
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
