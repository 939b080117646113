//! Position streams: each follows its room's progress as this replica's ticks see it, and asks
//! Redis about its own user only through the next tick (once when it starts, once when the
//! user's number is called), so a room costs Redis one call per tick however many streams
//! watch it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::admission::Standing;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Admission, AdmissionError, QueueError, RoomSettings, TickReport, TicketView};

/// Most looks one tick carries; the rest wait for the next.
const MAX_LOOKS_PER_TICK: usize = 2_000;

/// Most looks waiting for a room's ticks on this replica; a stream that would wait beyond them
/// is answered UNAVAILABLE (retry), so that streams opened and dropped faster than ticks carry
/// their looks cannot grow the queue without bound.
const MAX_WAITING_LOOKS: usize = 50_000;

/// Longest a stream waits for its look to ride on a tick: a few ticks, and the Redis command's
/// own time, which is bounded by its timeout (at most a minute).
const LOOK_TIMEOUT: Duration = Duration::from_secs(65);

/// How often a stream whose room's ticks stopped (the room removed, or its performance begun)
/// checks that the room is still there.
const ROOM_GONE_CHECK: Duration = Duration::from_secs(5);

/// A ticket stream: the messages of a `WatchPosition`.
pub type TicketStream = tokio_stream::wrappers::ReceiverStream<Result<TicketView, AdmissionError>>;

/// Where a room's queue stood at this replica's last tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    opened: bool,
    served: i64,
}

type Reply = oneshot::Sender<Result<Standing, String>>;

#[derive(Debug)]
struct RoomWatch {
    looks: Vec<(i64, Reply)>,
    progress: watch::Sender<Progress>,
}

impl Default for RoomWatch {
    fn default() -> Self {
        Self {
            looks: Vec::new(),
            progress: watch::Sender::new(Progress::default()),
        }
    }
}

/// The streams of this replica, by room: the looks they wait for and the rooms' progress.
#[derive(Debug, Clone, Default)]
pub(super) struct Watchers {
    rooms: Arc<Mutex<HashMap<i64, RoomWatch>>>,
}

impl Watchers {
    fn with_room<T>(&self, schedule_id: i64, f: impl FnOnce(&mut RoomWatch) -> T) -> T {
        let mut rooms = self
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(rooms.entry(schedule_id).or_default())
    }

    /// The looks the room's next tick carries (taken from the waiting ones).
    pub(super) fn waiting_looks(&self, schedule_id: i64) -> Vec<(i64, Reply)> {
        self.with_room(schedule_id, |room| {
            // A stream that has gone needs no answer.
            room.looks.retain(|(_, reply)| !reply.is_closed());
            let take = room.looks.len().min(MAX_LOOKS_PER_TICK);
            room.looks.drain(..take).collect()
        })
    }

    /// Publishes a tick's progress and answers the looks it carried, for `users` (the looks'
    /// [`unique_users`], in the order the tick looked them up).
    pub(super) fn answer(
        &self,
        schedule_id: i64,
        users: &[i64],
        looks: Vec<(i64, Reply)>,
        report: Result<TickReport, QueueError>,
    ) {
        match report {
            Ok(report) => {
                self.with_room(schedule_id, |room| {
                    room.progress.send_if_modified(|progress| {
                        let now = Progress {
                            opened: report.counters.opened,
                            served: report.counters.served,
                        };
                        std::mem::replace(progress, now) != now
                    })
                });
                let standings: HashMap<i64, Standing> =
                    users.iter().copied().zip(report.looks).collect();
                for (user, reply) in looks {
                    let answer = standings
                        .get(&user)
                        .copied()
                        .ok_or_else(|| "the tick did not look".to_owned());
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                for (_, reply) in looks {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
        }
    }

    /// Forgets the rooms not in `rooms` (their performance has begun): their waiting looks are
    /// answered that the room is gone, and their streams end at their next check.
    pub(super) fn keep_only(&self, rooms: &HashMap<i64, RoomSettings>) {
        let mut watched = self
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        watched.retain(|schedule_id, room| {
            let kept = rooms.contains_key(schedule_id);
            if !kept {
                for (_, reply) in room.looks.drain(..) {
                    let _ = reply.send(Err("the waiting room is gone".to_owned()));
                }
            }
            kept
        });
    }

    /// The user's standing at the room's next tick.
    async fn look(&self, schedule_id: i64, user: i64) -> Result<Standing, AdmissionError> {
        let (reply, answer) = oneshot::channel();
        let queued = self.with_room(schedule_id, |room| {
            if room.looks.len() >= MAX_WAITING_LOOKS {
                return false;
            }
            room.looks.push((user, reply));
            true
        });
        if !queued {
            return Err(AdmissionError::Unavailable(
                "too many position streams are starting at once".to_owned(),
            ));
        }
        match tokio::time::timeout(LOOK_TIMEOUT, answer).await {
            Ok(Ok(Ok(standing))) => Ok(standing),
            Ok(Ok(Err(error))) => Err(AdmissionError::Unavailable(error)),
            Ok(Err(_)) | Err(_) => Err(AdmissionError::Unavailable(
                "the waiting room's ticks stopped".to_owned(),
            )),
        }
    }

    fn progress(&self, schedule_id: i64) -> watch::Receiver<Progress> {
        self.with_room(schedule_id, |room| room.progress.subscribe())
    }
}

/// The users of `looks`, each once, in the order first asked: what a tick looks up.
pub(super) fn unique_users(looks: &[(i64, Reply)]) -> Vec<i64> {
    let mut seen = std::collections::HashSet::with_capacity(looks.len());
    looks
        .iter()
        .map(|(user, _)| *user)
        .filter(|user| seen.insert(*user))
        .collect()
}

/// Follows the user's ticket until their turn comes or ends, or the client goes away.
pub(super) fn stream(admission: Admission, room: RoomSettings, user: i64) -> TicketStream {
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        tokio::select! {
            () = sender.closed() => {}
            () = follow(&admission, room, user, &sender) => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn follow(
    admission: &Admission,
    room: RoomSettings,
    user: i64,
    sender: &mpsc::Sender<Result<TicketView, AdmissionError>>,
) {
    let schedule_id = room.schedule_id;
    let mut progress = admission.watch.progress(schedule_id);
    let mut standing = match admission.watch.look(schedule_id, user).await {
        Ok(Standing::Absent) => {
            let _ = sender.send(Err(AdmissionError::NotFound("ticket"))).await;
            return;
        }
        Ok(standing) => standing,
        Err(error) => {
            let _ = sender.send(Err(error)).await;
            return;
        }
    };
    let mut last_sent: Option<TicketView> = None;
    loop {
        if standing == Standing::Absent {
            // Left through another call meanwhile.
            let _ = sender.send(Err(AdmissionError::NotFound("ticket"))).await;
            return;
        }
        let view = match admission.view(&room, user, standing) {
            Ok(view) => view,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        if last_sent.as_ref() != Some(&view) {
            if sender.send(Ok(view.clone())).await.is_err() {
                return;
            }
            last_sent = Some(view);
        }
        let number = match standing {
            Standing::Waiting { number, .. } => Some(number),
            Standing::BeforeOpening => None,
            Standing::Admitted { .. } | Standing::Expired { .. } | Standing::Absent => return,
        };
        // The next progress of the room; a room whose ticks stopped ends the stream.
        match tokio::time::timeout(ROOM_GONE_CHECK, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) if admission.room(schedule_id).is_none() => {
                let _ = sender
                    .send(Err(AdmissionError::NotFound("waiting room")))
                    .await;
                return;
            }
            Err(_) => continue,
        }
        let now = *progress.borrow_and_update();
        standing = match number {
            Some(number) if now.served < number => Standing::Waiting {
                number,
                ahead: number - now.served - 1,
            },
            _ if !now.opened => continue,
            _ => match admission.watch.look(schedule_id, user).await {
                Ok(standing) => standing,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            },
        };
    }
}
