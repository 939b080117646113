//! Hot-wallet batching. With one transaction per request, one user's wallet is capped by the
//! rate at which Postgres commits changes of a single row. Here, while a transaction for a user
//! is in flight, that user's next requests queue in the process; when it commits, everything
//! that queued meanwhile (up to a bound) goes in the next transaction, under one row lock,
//! each movement decided in turn with its own key, ledger row and answer. There is no waiting
//! window: a lone request goes at once, and a batch is whatever arrived while the previous one
//! ran. Replicas stay safe because the row lock still serializes their transactions.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::{MoneyMovement, UserId};
use crate::store::{MovementOutcome, Store, StoreError};

/// Sizes of the batches applied, as a histogram.
pub const BATCH_SIZE: &str = "ticketing_wallet_batch_size";

type Answer = Result<MovementOutcome, StoreError>;

/// A request waiting for its batch.
struct Waiting {
    movement: MoneyMovement,
    answer: oneshot::Sender<Answer>,
}

#[derive(Debug)]
pub struct Batcher {
    store: Store,
    max_batch: usize,
    /// For each user with a transaction in flight, the requests queued behind it.
    queues: Mutex<HashMap<i64, VecDeque<Waiting>>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("key", &self.movement.key)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub fn new(store: Store, max_batch: usize) -> Self {
        metrics::describe_histogram!(
            BATCH_SIZE,
            "Movements of one user applied in one transaction"
        );
        Self {
            store,
            max_batch: max_batch.max(1),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Applies `movement` in the next transaction of its user: at once if none is in flight,
    /// else after it, with whatever else queued.
    pub async fn apply(self: &Arc<Self>, movement: MoneyMovement) -> Answer {
        let user_id = movement.user_id;
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting { movement, answer };
        let leads = match self.queues().entry(user_id.get()) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(waiting);
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                Some(waiting)
            }
        };
        if let Some(first) = leads {
            // A task of its own: the batch, and every answer in it, does not depend on this
            // caller staying.
            let batcher = Arc::clone(self);
            tokio::spawn(async move { batcher.drive(user_id, first).await }.in_current_span());
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the batch ended without an answer".to_owned(),
            ))
        })
    }

    /// Applies batches of `user_id` until nothing more is queued for it.
    async fn drive(&self, user_id: UserId, first: Waiting) {
        // Should a batch panic, its queue goes too (its waiters hear of it), so the user's
        // next request starts afresh instead of queueing behind nobody.
        let mut leading = Leading {
            batcher: self,
            user_id: user_id.get(),
            armed: true,
        };
        let mut batch = vec![first];
        loop {
            let movements: Vec<MoneyMovement> = batch
                .iter()
                .map(|waiting| waiting.movement.clone())
                .collect();
            metrics::histogram!(BATCH_SIZE).record(movements.len() as f64);
            let span = tracing::info_span!(
                "apply_batch",
                user_id = user_id.get(),
                size = movements.len()
            );
            let applied = self
                .store
                .apply_movements(user_id, &movements)
                .instrument(span)
                .await;
            match applied {
                Ok(outcomes) => {
                    for (waiting, outcome) in batch.drain(..).zip(outcomes) {
                        // A caller that left does not take its answer: nothing to do.
                        let _ = waiting.answer.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    for waiting in batch.drain(..) {
                        let _ = waiting.answer.send(Err(error.clone()));
                    }
                }
            }
            let mut queues = self.queues();
            match queues.get_mut(&user_id.get()) {
                Some(queue) if !queue.is_empty() => {
                    let take = queue.len().min(self.max_batch);
                    batch.extend(queue.drain(..take));
                }
                _ => {
                    queues.remove(&user_id.get());
                    leading.armed = false;
                    return;
                }
            }
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<i64, VecDeque<Waiting>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a user's queue if its batches stop without doing so themselves.
struct Leading<'a> {
    batcher: &'a Batcher,
    user_id: i64,
    armed: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.batcher.queues().remove(&self.user_id);
        }
    }
}
