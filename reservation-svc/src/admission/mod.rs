//! The waiting rooms: one per schedule that has one, admitting buyers to HoldSeat at a set rate
//! with a cap on active users (the rules: [`protocol::admission`]).
//!
//! * The rooms' settings are rows in Postgres ([`crate::store::Store::configure_room`]); every
//!   replica reads them again every [`ROOM_REFRESH_INTERVAL`], so HoldSeat knows which
//!   schedules ask for a token without asking anyone.
//! * Each room's queue is in Redis ([`queue`]); every replica ticks every room every
//!   [`TICK_INTERVAL`] (any number of replicas may, at once), and the same call looks up the
//!   users whose position streams wait for news ([`watch`]), so streams cost Redis nothing per
//!   stream.
//! * A user whose turn comes gets an admission token ([`token`]); HoldSeat checks it on the
//!   replica. Paying, cancelling, a hold's expiry and `Leave` free the user's slot at once.

pub mod queue;
pub mod token;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::admission::{Millis, RoomConfig, Standing};

pub use crate::model::RoomSettings;
pub use queue::{Queue, QueueError, Seen, TickReport};
pub use token::{AdmissionTokens, TokenRefusal};
pub use watch::TicketStream;

use crate::store::{Store, StoreError};

/// How often every replica reads the rooms' settings from Postgres: a room configured on one
/// replica is asked for by HoldSeat on every replica within this.
pub const ROOM_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How often every replica ticks each room, and answers the looks its streams wait for.
pub const TICK_INTERVAL: Duration = Duration::from_millis(500);

/// When an entrant before the opening is told to ask again.
const BEFORE_OPENING_REFRESH_MS: i64 = 5_000;

/// The metadata key HoldSeat reads the admission token from.
pub const TOKEN_METADATA: &str = "x-admission-token";

/// Why an admission call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// This replica has no keys to sign tokens with.
    #[error("waiting rooms are off on this replica: it has no ADMISSION_TOKEN_KEYS_FILE")]
    Disabled,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<QueueError> for AdmissionError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

impl From<StoreError> for AdmissionError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => Self::Unavailable(detail),
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

/// A user's ticket, as the service answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketView {
    pub schedule_id: i64,
    pub user_id: i64,
    pub standing: Standing,
    /// Once admitted: the token and when it ends (Unix milliseconds).
    pub token: Option<(String, Millis)>,
    /// The wait left, in seconds, at least and at most.
    pub eta_seconds: (i64, i64),
    pub refresh_after_ms: i64,
    pub opens_at_ms: Millis,
}

/// A room's settings and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStatus {
    pub settings: RoomSettings,
    pub report: TickReport,
}

/// The rooms every replica knows, by schedule.
type RoomMap = HashMap<i64, RoomSettings>;

/// The waiting rooms of this replica.
#[derive(Debug, Clone)]
pub struct Admission {
    store: Store,
    queue: Queue,
    tokens: Option<AdmissionTokens>,
    rooms: Arc<RwLock<Arc<RoomMap>>>,
    /// Held by a refresh from its read to its write, and by a change from its write to its
    /// update of the map, so that a refresh that read before a change cannot put back what was
    /// there before it.
    rooms_written: Arc<tokio::sync::Mutex<()>>,
    watch: watch::Watchers,
}

impl Admission {
    /// The rooms on `store` and `queue`, signing with `tokens` (none: no room can be entered on
    /// this replica, and holds of a room's schedule are refused).
    pub fn new(store: Store, queue: Queue, tokens: Option<AdmissionTokens>) -> Self {
        Self {
            store,
            queue,
            tokens,
            rooms: Arc::default(),
            rooms_written: Arc::default(),
            watch: watch::Watchers::default(),
        }
    }

    /// The room of `schedule_id`, as this replica last read it.
    pub fn room(&self, schedule_id: i64) -> Option<RoomSettings> {
        self.current().get(&schedule_id).copied()
    }

    fn current(&self) -> Arc<RoomMap> {
        match self.rooms.read() {
            Ok(rooms) => rooms.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn put(&self, rooms: RoomMap) {
        let rooms = Arc::new(rooms);
        match self.rooms.write() {
            Ok(mut current) => *current = rooms,
            Err(poisoned) => *poisoned.into_inner() = rooms,
        }
    }

    /// Reads the rooms' settings from Postgres.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _writing = self.rooms_written.lock().await;
        let rooms = self.store.rooms().await?;
        if !rooms.is_empty() && self.tokens.is_none() {
            tracing::error!(
                rooms = rooms.len(),
                "schedules have waiting rooms but this replica has no ADMISSION_TOKEN_KEYS_FILE: their holds are refused"
            );
        }
        self.put(
            rooms
                .into_iter()
                .map(|room| (room.schedule_id, room))
                .collect(),
        );
        Ok(())
    }

    fn settings(&self, schedule_id: i64) -> Result<RoomSettings, AdmissionError> {
        self.room(schedule_id)
            .ok_or(AdmissionError::NotFound("waiting room"))
    }

    fn tokens(&self) -> Result<&AdmissionTokens, AdmissionError> {
        self.tokens.as_ref().ok_or(AdmissionError::Disabled)
    }

    /// Creates or changes a room; in force on this replica at once, on the others within
    /// [`ROOM_REFRESH_INTERVAL`]. Without `opens_at_ms`, a new room opens now and a room
    /// changed keeps its opening (`config.opens_at_ms` is not read).
    pub async fn configure(
        &self,
        schedule_id: i64,
        config: RoomConfig,
        opens_at_ms: Option<Millis>,
    ) -> Result<RoomSettings, AdmissionError> {
        self.tokens()?;
        let _writing = self.rooms_written.lock().await;
        let settings = self
            .store
            .configure_room(schedule_id, &config, opens_at_ms)
            .await?
            .ok_or(AdmissionError::NotFound("schedule"))?;
        let mut rooms = RoomMap::clone(&self.current());
        rooms.insert(schedule_id, settings);
        self.put(rooms);
        Ok(settings)
    }

    /// `Enter`: the user's ticket, new if they had none.
    pub async fn enter(&self, user: i64, schedule_id: i64) -> Result<TicketView, AdmissionError> {
        let room = self.settings(schedule_id)?;
        self.tokens()?;
        // Below 2^52, so that Redis's double scores keep every draw apart.
        let draw = rand::random_range(0..(1_i64 << 52));
        let seen = self.queue.enter(&room, user, draw).await?;
        self.view(&room, user, seen.standing)
    }

    /// `GetPosition`: the user's ticket, their turn claimed if it has come.
    pub async fn position(
        &self,
        user: i64,
        schedule_id: i64,
    ) -> Result<TicketView, AdmissionError> {
        let room = self.settings(schedule_id)?;
        self.tokens()?;
        let seen = self.queue.look(&room, user).await?;
        if seen.standing == Standing::Absent {
            return Err(AdmissionError::NotFound("ticket"));
        }
        self.view(&room, user, seen.standing)
    }

    /// `WatchPosition`: the user's ticket now and on every change, until their turn or its end.
    pub fn watch(&self, user: i64, schedule_id: i64) -> Result<TicketStream, AdmissionError> {
        let room = self.settings(schedule_id)?;
        self.tokens()?;
        Ok(watch::stream(self.clone(), room, user))
    }

    /// `Leave`: whether the user had a number or a turn to give up.
    pub async fn leave(&self, user: i64, schedule_id: i64) -> Result<bool, AdmissionError> {
        let room = self.settings(schedule_id)?;
        Ok(self.queue.leave(&room, user).await?.0)
    }

    /// `GetRoomStatus`: the settings, and the counters after a tick.
    pub async fn status(&self, schedule_id: i64) -> Result<RoomStatus, AdmissionError> {
        let settings = self.settings(schedule_id)?;
        let report = self.queue.tick(&settings, &[]).await?;
        crate::metrics::room_tick(
            schedule_id,
            report.tick.admitted,
            report.counters.waiting,
            report.counters.active,
        );
        Ok(RoomStatus { settings, report })
    }

    /// Whether HoldSeat may go on for `user` on `schedule_id` with `token` (from the call's
    /// metadata). A schedule without a room needs none. Nothing here asks Redis.
    pub fn check_hold(
        &self,
        token: Option<&str>,
        user: i64,
        schedule_id: i64,
    ) -> Result<(), TokenRefusal> {
        if self.room(schedule_id).is_none() {
            return Ok(());
        }
        let checked = match (token, &self.tokens) {
            (None, _) => Err(TokenRefusal::Missing),
            (Some(token), Some(tokens)) => tokens.check(token, user, schedule_id),
            (Some(_), None) => Err(TokenRefusal::Invalid("this replica has no admission keys")),
        };
        crate::metrics::admission_check(match &checked {
            Ok(()) => "ok",
            Err(TokenRefusal::Missing) => "missing",
            Err(TokenRefusal::Expired) => "expired",
            Err(TokenRefusal::Invalid(_)) => "invalid",
        });
        checked
    }

    /// A hold the user made at `held_at` on the schedule is over (a payment, a cancellation,
    /// an expiry): if it was made in their current turn, the turn's slot is freed. Sent in a
    /// task of its own, so that the call that ended the hold does not wait on Redis; a failure
    /// is logged: the slot ends with its token anyway.
    pub fn release(&self, user: i64, schedule_id: i64, held_at: chrono::DateTime<chrono::Utc>) {
        let Some(room) = self.room(schedule_id) else {
            return;
        };
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let held_at = held_at.timestamp_millis();
            if let Err(error) = queue.release(&room, user, held_at).await {
                tracing::warn!(user, schedule_id, %error, "waiting room slot not freed");
            }
        });
    }

    /// A ticket from a standing: the token signed if the user is admitted.
    fn view(
        &self,
        room: &RoomSettings,
        user: i64,
        standing: Standing,
    ) -> Result<TicketView, AdmissionError> {
        let tick_ms = i64::try_from(TICK_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let token = match standing {
            Standing::Admitted { until, .. } => Some((
                self.tokens()?
                    .sign(user, room.schedule_id, until)
                    .map_err(AdmissionError::Internal)?,
                until,
            )),
            _ => None,
        };
        let (eta_seconds, refresh_after_ms) = match standing {
            Standing::Waiting { ahead, .. } => (
                protocol::admission::eta_seconds(&room.config, ahead, tick_ms),
                protocol::admission::refresh_after_ms(&room.config, ahead),
            ),
            // No number yet, so no wait to bound.
            Standing::BeforeOpening => ((0, 0), BEFORE_OPENING_REFRESH_MS),
            _ => ((0, 0), 0),
        };
        Ok(TicketView {
            schedule_id: room.schedule_id,
            user_id: user,
            standing,
            token,
            eta_seconds,
            refresh_after_ms,
            opens_at_ms: room.config.opens_at_ms,
        })
    }

    /// Reads the rooms' settings every [`ROOM_REFRESH_INTERVAL`] until dropped.
    pub async fn refresh_every(self) {
        let mut ticks = tokio::time::interval(ROOM_REFRESH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "waiting rooms not read, keeping the last ones");
            }
        }
    }

    /// Ticks every room every [`TICK_INTERVAL`] until dropped, answering the looks its streams
    /// wait for in the same call.
    pub async fn tick_every(self) {
        let mut ticks = tokio::time::interval(TICK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let rooms = self.current();
            let ticked = rooms.values().map(|room| self.tick_room(room));
            futures::future::join_all(ticked).await;
            self.watch.keep_only(&self.current());
        }
    }

    async fn tick_room(&self, room: &RoomSettings) {
        let users = self.watch.waiting_looks(room.schedule_id);
        let ids = watch::unique_users(&users);
        let report = self.queue.tick(room, &ids).await;
        match &report {
            Ok(report) => crate::metrics::room_tick(
                room.schedule_id,
                report.tick.admitted,
                report.counters.waiting,
                report.counters.active,
            ),
            Err(error) => {
                tracing::debug!(schedule_id = room.schedule_id, %error, "waiting room tick failed");
            }
        }
        self.watch.answer(room.schedule_id, &ids, users, report);
    }
}
