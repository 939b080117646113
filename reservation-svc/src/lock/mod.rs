//! The seat lock: the key `<prefix>seat:{<schedule>}:<seat>` set to a request's token if it is
//! free (`SET NX PX <ttl>` inside a Lua script), released only by its owner (compare-and-delete
//! in Lua). It is a filter that keeps a stampede of losers away from Postgres; Postgres still
//! decides, so a lost lock costs speed, never correctness.
//!
//! A hold that takes its seat leaves a *taken mark* in the key instead of deleting it
//! (`taken:<reservation id>`, expiring at the hold's `expires_at`; see
//! `protocol::reservation::after_hold`): later holds of the seat find it with the same script
//! and are answered SEAT_TAKEN without reaching Postgres. Cancelling the reservation deletes
//! the mark. Each replica also remembers the marks it has seen for a short while
//! (`taken_memory`, never longer than the mark lives), so a stampede on a taken seat is
//! answered without Redis; a seat cancelled through another replica is therefore refused here
//! for at most that long.
//!
//! Every command has a timeout, in-flight commands are never replayed after a reconnect
//! (`max_command_attempts = 1`), commands are refused at once while the connection is down,
//! and the client reconnects in the background forever, on every topology `REDIS_URL` names
//! (one server, Sentinel, Cluster). A Cluster's `MOVED` or `ASK` is followed: the node that
//! answers it did not run the command, so sending it on replays nothing. A command that timed out may still
//! run later: the lock and mark scripts carry the moment their caller gave up and do nothing
//! when Redis's clock is past it, and a lock whose answer was lost is released after it.
//!
//! With `SEAT_LOCK_FALLBACK=postgres` a hold whose lock Redis does not answer takes the seat's
//! lock in Postgres instead ([`HoldLock::Postgres`]), and so do all holds of the replica while
//! its [`Breaker`] is open.

mod breaker;

pub use breaker::{Breaker, LockFallback, LockMode};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::FromValue;
use fred::types::scripts::Script;
use protocol::reservation::AfterHold;
use secrecy::{ExposeSecret as _, SecretString};
use tracing::Instrument;

/// Deletes the key only while it still holds the caller's token (or the caller's taken mark).
pub const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redis's clock in milliseconds since the Unix epoch, for the scripts below: a script that
/// Redis runs after `ARGV[deadline]` (its caller gave up on it then, and answered without it)
/// does nothing.
const NOW_MS: &str = r"
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
";

/// Redis's clock, in milliseconds since the Unix epoch.
const CLOCK_SCRIPT: &str = "return now_ms";

/// `SET KEYS[1] ARGV[1] NX PX ARGV[2]`, unless Redis runs it after the deadline `ARGV[3]`:
/// answers `late`, `acquired`, or `held:<ms it has left>:<value already there>`.
const ACQUIRE_SCRIPT: &str = r"
if now_ms > tonumber(ARGV[3]) then
    return 'late'
end
local holder = redis.call('GET', KEYS[1])
if holder then
    return 'held:' .. redis.call('PTTL', KEYS[1]) .. ':' .. holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'acquired'
";

/// Replaces the caller's token (`ARGV[1]`) with a taken mark (`ARGV[2]`) that expires when the
/// hold does (`PXAT ARGV[3]`, the hold's `expires_at`); a lock that is no longer the caller's is
/// left alone, and a mark whose reservation was already cancelled (its tombstone `KEYS[2]` names
/// it) is not written: the lock is released instead, as it is when the hold's time is already
/// up or Redis runs this after its deadline `ARGV[4]`.
const MARK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 2
end
if now_ms > tonumber(ARGV[4]) or now_ms >= tonumber(ARGV[3]) then
    redis.call('DEL', KEYS[1])
    return 3
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
";

/// Writes the breaker's canary key (`SET KEYS[1] 1 PX ARGV[1]`) unless Redis runs it after the
/// deadline `ARGV[2]`: answers `written` or `late`. A replica that cannot write (a demoted
/// primary answers READONLY) fails it.
const CANARY_SCRIPT: &str = r"
if now_ms > tonumber(ARGV[2]) then
    return 'late'
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 'written'
";

/// Deletes the seat's mark `ARGV[1]` of a cancelled reservation; when the key does not hold it
/// (the hold that inserted the reservation may still be about to write it), leaves a tombstone
/// naming it (`KEYS[2]`, for `ARGV[2]` ms: the lock's TTL, past which no mark can be written).
const CLEAR_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 0
";

/// The Lua of the seat lock's acquisition as the service loads it (Redis's clock, then
/// [`ACQUIRE_SCRIPT`]); its arguments are the token, the TTL in ms and the deadline in ms since
/// the Unix epoch. For tools that run the same script (the benchmark's raw baseline).
pub fn acquire_script() -> String {
    format!("{NOW_MS}{ACQUIRE_SCRIPT}")
}

/// How a taken mark starts; lock tokens are hex digits, so the two never meet.
const TAKEN_PREFIX: &str = "taken:";

/// The longest `REDIS_COMMAND_TIMEOUT`: a hold waits that long for Redis, and, without it,
/// for a lock in Postgres.
const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Most taken marks a replica remembers at once; past that the cache evicts the least useful.
const TAKEN_MEMORY_CAPACITY: u64 = 65_536;

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A concurrent request holds it.
    #[error("the seat is locked by a concurrent request")]
    Contended,
    /// The key holds the seat's taken mark: a hold took the seat and still has it.
    #[error("the seat is taken")]
    Taken,
    /// Redis did not answer in time: the outcome is unknown, so the caller must not proceed.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// Why [`SeatLocks::acquire_with_token`] took no lock.
#[derive(Debug)]
pub enum Acquire {
    /// The key holds a taken mark that lives `left` longer.
    Taken {
        left: Duration,
    },
    Refused(LockError),
}

impl From<Acquire> for LockError {
    fn from(refused: Acquire) -> Self {
        match refused {
            Acquire::Taken { .. } => Self::Taken,
            Acquire::Refused(error) => error,
        }
    }
}

/// Reads the acquire script's `held:<ms left>:<holder>`.
fn parse_held(answer: &str) -> Option<(Duration, &str)> {
    let (left, holder) = answer.strip_prefix("held:")?.split_once(':')?;
    // PTTL is -1 for a key without an expiry; no mark is written without one.
    let left = u64::try_from(left.parse::<i64>().ok()?).unwrap_or(0);
    Some((Duration::from_millis(left), holder))
}

/// How the seat locks talk to Redis.
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// May carry a password: its Debug shows none of it.
    pub redis_url: SecretString,
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// How long a lock lives if its owner never releases it (a crash, a lost connection).
    pub ttl: Duration,
    /// Longest one Redis command may take before the hold answers UNAVAILABLE.
    pub command_timeout: Duration,
    /// How long this replica answers SEAT_TAKEN from a taken mark it has seen, without asking
    /// Redis again; zero asks Redis every time.
    pub taken_memory: Duration,
    /// For a `rediss://` URL: the CA that signs Redis's certificate, and the certificate the
    /// client presents (Redis asks for one unless `tls-auth-clients no`). Without it, the
    /// system's roots and no client certificate. Read once, at start.
    pub tls: Option<shared::tls::ClientFiles>,
    /// What a hold does when Redis does not answer its lock.
    pub fallback: LockFallback,
}

/// Takes and releases seat locks.
#[derive(Clone)]
pub struct SeatLocks {
    client: Client,
    acquire: Script,
    clock: Script,
    release: Script,
    mark: Script,
    clear: Script,
    canary: Script,
    taken: TakenMemory,
    /// With `SEAT_LOCK_FALLBACK=postgres`, where holds take their locks now.
    breaker: Option<Breaker>,
    settings: LockSettings,
}

impl std::fmt::Debug for SeatLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatLocks")
            .field("connected", &self.client.is_connected())
            .field("key_prefix", &self.settings.key_prefix)
            .field("ttl", &self.settings.ttl)
            .field("mode", &self.mode())
            .finish()
    }
}

/// A lock held by this request. Release it with [`SeatLock::release`]; if that never happens
/// the lock expires after its TTL.
#[derive(Debug)]
#[must_use = "a lock is released by `release`, or only when its TTL runs out"]
pub struct SeatLock {
    seat: Option<(i64, i32)>,
    key: String,
    token: String,
}

/// The lock a hold goes on with.
#[derive(Debug)]
#[must_use = "a lock is ended by `SeatLocks::finish`"]
pub enum HoldLock {
    /// The seat's lock in Redis.
    Redis(SeatLock),
    /// None in Redis, which is out of reach: the hold takes the seat's lock in Postgres. Asked
    /// for at `asked`, before the hold's transaction.
    Postgres { seat: (i64, i32), asked: Instant },
}

impl SeatLocks {
    /// Builds the client and connects, waiting up to the command timeout: the service starts
    /// even with Redis down (holds then answer UNAVAILABLE) and picks Redis up when it appears.
    pub async fn connect(settings: LockSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.command_timeout.is_zero() && settings.command_timeout <= MAX_COMMAND_TIMEOUT,
            "REDIS_COMMAND_TIMEOUT must be above 0 and at most {MAX_COMMAND_TIMEOUT:?}"
        );
        let mut config = Config::from_url(settings.redis_url.expose_secret())?;
        if let Some(files) = &settings.tls {
            anyhow::ensure!(
                config.tls.is_some(),
                "REDIS_TLS_* are set but REDIS_URL is not a TLS URL (rediss://...)"
            );
            config.tls = Some(redis_tls(files)?.into());
        }
        // Keep retrying the first connection in the background rather than failing start-up.
        config.fail_fast = false;
        let timeout = settings.command_timeout;
        let client = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout;
                connection.internal_command_timeout = timeout;
                // A command cut off by a dropped connection fails instead of being sent again
                // after the reconnect, where a replayed SET NX would find this request's own key.
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = timeout;
            })
            // 0 attempts = forever; 100 ms doubling up to 1 s between attempts, so a Redis
            // that is back is found within a second (and the breaker closed soon after).
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2))
            .build()?;
        // The connection task runs until `close`; its end needs no join.
        drop(client.connect());
        if tokio::time::timeout(timeout, client.wait_for_connect())
            .await
            .is_err()
        {
            match settings.fallback {
                LockFallback::FailClosed => {
                    tracing::warn!("redis not reachable yet, seat holds unavailable until it is");
                }
                LockFallback::Postgres => tracing::warn!(
                    "redis not reachable yet, seat holds take their locks in postgres until it is"
                ),
            }
        }
        Ok(Self {
            client,
            acquire: Script::from_lua(acquire_script()),
            clock: Script::from_lua(format!("{NOW_MS}{CLOCK_SCRIPT}")),
            release: Script::from_lua(RELEASE_SCRIPT),
            mark: Script::from_lua(format!("{NOW_MS}{MARK_SCRIPT}")),
            clear: Script::from_lua(CLEAR_SCRIPT),
            canary: Script::from_lua(format!("{NOW_MS}{CANARY_SCRIPT}")),
            taken: TakenMemory::new(settings.taken_memory.max(settings.command_timeout)),
            breaker: (settings.fallback == LockFallback::Postgres).then(Breaker::new),
            settings,
        })
    }

    /// The key of a seat's lock. The schedule id is a hash tag, so a Redis Cluster keeps all
    /// of one schedule's seats on one slot.
    pub fn key(&self, schedule_id: i64, seat_no: i32) -> String {
        format!(
            "{}seat:{{{schedule_id}}}:{seat_no}",
            self.settings.key_prefix
        )
    }

    /// The lock a hold of the seat goes on with: the seat's Redis lock ([`SeatLocks::acquire`]),
    /// or with `SEAT_LOCK_FALLBACK=postgres`, when Redis does not answer or the breaker is
    /// open, none ([`HoldLock::Postgres`]). A seat whose taken mark this replica remembers is
    /// refused either way.
    pub async fn lock_for_hold(
        &self,
        schedule_id: i64,
        seat_no: i32,
    ) -> Result<HoldLock, LockError> {
        let seat = (schedule_id, seat_no);
        let Some(breaker) = &self.breaker else {
            return self
                .acquire(schedule_id, seat_no)
                .await
                .map(HoldLock::Redis);
        };
        if breaker.mode() == LockMode::Postgres {
            if self.taken.remembers(seat) {
                crate::metrics::seat_lock("taken_remembered");
                return Err(LockError::Taken);
            }
            crate::metrics::seat_lock("postgres");
            return Ok(HoldLock::Postgres {
                seat,
                asked: Instant::now(),
            });
        }
        match self.acquire(schedule_id, seat_no).await {
            Ok(lock) => Ok(HoldLock::Redis(lock)),
            Err(LockError::Unavailable(_)) => {
                crate::metrics::seat_lock("postgres");
                Ok(HoldLock::Postgres {
                    seat,
                    asked: Instant::now(),
                })
            }
            Err(refused) => Err(refused),
        }
    }

    /// Where this replica's holds take their locks now.
    pub fn mode(&self) -> LockMode {
        self.breaker.as_ref().map_or(LockMode::Redis, Breaker::mode)
    }

    /// The longest a hold waits on Redis, and so on a lock in Postgres without Redis.
    pub fn command_timeout(&self) -> Duration {
        self.settings.command_timeout
    }

    /// With `SEAT_LOCK_FALLBACK=postgres`, writes the canary key while the breaker is open
    /// (see [`Breaker::due_for_probe`]), and closes it on the first write that goes through.
    /// Runs until dropped.
    pub async fn probe_while_open(self) {
        let Some(breaker) = self.breaker.clone() else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(breaker::PROBE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let default_key = format!("{}seat-lock-canary", self.settings.key_prefix);
        loop {
            ticks.tick().await;
            if let Some(key) = breaker.due_for_probe(&default_key)
                && self.canary_written(key).await
            {
                breaker.close();
            }
        }
    }

    /// Whether Redis took the canary write to `key` in time.
    async fn canary_written(&self, key: String) -> bool {
        let ttl_ms = self.ttl_ms();
        let written: Result<String, _> = self
            .run(
                "canary",
                &self.canary,
                vec![key],
                vec![ttl_ms.max(1).to_string(), self.deadline_ms()],
            )
            .await;
        matches!(written.as_deref(), Ok("written"))
    }

    /// Takes the seat's lock with a fresh random token; a seat whose taken mark this replica
    /// remembers is refused without asking Redis.
    pub async fn acquire(&self, schedule_id: i64, seat_no: i32) -> Result<SeatLock, LockError> {
        let seat = (schedule_id, seat_no);
        if self.taken.remembers(seat) {
            crate::metrics::seat_lock("taken_remembered");
            return Err(LockError::Taken);
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let asked = Instant::now();
        let acquired = self
            .acquire_with_token(self.key(schedule_id, seat_no), token)
            .await;
        match acquired {
            Ok(lock) => Ok(SeatLock {
                seat: Some(seat),
                ..lock
            }),
            Err(Acquire::Taken { left }) => {
                let remembered = left.min(self.settings.taken_memory);
                self.taken.remember(seat, asked, remembered);
                Err(LockError::Taken)
            }
            Err(Acquire::Refused(error)) => Err(error),
        }
    }

    /// Takes `key` for `token`. The script answers the value already there, so a key that
    /// already holds this very token (a command applied twice) counts as taken by us. Should
    /// Redis run it only after the command timeout (a Redis paused or slow past it), when this
    /// request has answered UNAVAILABLE, it writes nothing; and should Redis have run it in
    /// time but its answer come too late, the compare-and-delete sent after it (on the same
    /// connection, so run after it) takes the lock away again.
    pub async fn acquire_with_token(
        &self,
        key: String,
        token: String,
    ) -> Result<SeatLock, Acquire> {
        let ttl_ms = self.ttl_ms();
        let answer: Result<String, _> = self
            .run(
                "acquire",
                &self.acquire,
                vec![key.clone()],
                vec![token.clone(), ttl_ms.to_string(), self.deadline_ms()],
            )
            .await;
        let lock = SeatLock {
            seat: None,
            key,
            token,
        };
        if let Some(breaker) = &self.breaker {
            match &answer {
                Ok(held) if held == "acquired" || held.starts_with("held:") => breaker.answered(),
                Ok(late) => breaker.failed(late, Some(&lock.key)),
                Err(error) => breaker.failed(&error.to_string(), Some(&lock.key)),
            }
        }
        let acquired = match answer.as_deref() {
            Ok("acquired") => Ok(lock),
            Ok(held) => match parse_held(held) {
                Some((_, holder)) if holder == lock.token => Ok(lock),
                Some((left, holder)) if holder.starts_with(TAKEN_PREFIX) => {
                    Err(Acquire::Taken { left })
                }
                Some(_) => Err(Acquire::Refused(LockError::Contended)),
                None => Err(Acquire::Refused(LockError::Unavailable(format!(
                    "redis ran the lock too late ({held}): is its clock ahead of this host's?"
                )))),
            },
            Err(error) => {
                // No answer in time: the lock may have been taken all the same.
                let locks = self.clone();
                tokio::spawn(async move { locks.release(lock).await });
                Err(Acquire::Refused(LockError::Unavailable(error.to_string())))
            }
        };
        crate::metrics::seat_lock(match &acquired {
            Ok(_) => "acquired",
            Err(Acquire::Refused(LockError::Contended)) => "contended",
            Err(Acquire::Taken { .. } | Acquire::Refused(LockError::Taken)) => "taken",
            Err(Acquire::Refused(LockError::Unavailable(_))) => "redis_unavailable",
        });
        acquired
    }

    /// Ends a hold's lock as the protocol decided: released, or turned into the seat's taken
    /// mark (which this replica then remembers), which expires when the hold does
    /// (`expires_at`, the hold's expiry in Postgres, as an absolute time) however late Redis
    /// runs the command. A hold that took its lock in Postgres leaves no mark (its lock ended
    /// with its transaction); this replica only remembers the seat as taken.
    pub async fn finish(
        &self,
        lock: HoldLock,
        after: AfterHold,
        expires_at: Option<DateTime<Utc>>,
    ) {
        match lock {
            HoldLock::Redis(lock) => self.finish_redis(lock, after, expires_at).await,
            HoldLock::Postgres { seat, asked } => {
                if let AfterHold::MarkTaken { for_micros, .. } = after {
                    let left = Duration::from_micros(u64::try_from(for_micros).unwrap_or(0));
                    let remembered = left.min(self.settings.taken_memory);
                    // As read before the transaction: a cancel of this replica since then
                    // keeps it from being remembered.
                    self.taken.remember(seat, asked, remembered);
                }
            }
        }
    }

    async fn finish_redis(
        &self,
        lock: SeatLock,
        after: AfterHold,
        expires_at: Option<DateTime<Utc>>,
    ) {
        let (
            AfterHold::MarkTaken {
                reservation,
                for_micros,
            },
            Some(expires_at),
        ) = (after, expires_at)
        else {
            return self.release(lock).await;
        };
        let tombstone = tombstone_key(&lock.key);
        let marked: Result<i64, _> = self
            .run(
                "mark",
                &self.mark,
                vec![lock.key.clone(), tombstone],
                vec![
                    lock.token,
                    taken_mark(reservation),
                    expires_at.timestamp_millis().to_string(),
                    self.deadline_ms(),
                ],
            )
            .await;
        match marked {
            Ok(1) => {
                if let Some(seat) = lock.seat {
                    let left = Duration::from_micros(u64::try_from(for_micros).unwrap_or(0));
                    let remembered = left.min(self.settings.taken_memory);
                    self.taken.remember(seat, Instant::now(), remembered);
                }
            }
            Ok(2) => tracing::info!(key = %lock.key, "reservation cancelled before its taken mark"),
            Ok(3) => tracing::warn!(key = %lock.key, "taken mark too late: seat lock released"),
            Ok(_) => tracing::warn!(key = %lock.key, "seat lock had expired before its taken mark"),
            Err(error) => tracing::warn!(key = %lock.key, %error, "seat taken mark failed"),
        }
    }

    /// Deletes the taken mark of `reservation`, which no longer holds its seat; a lock or
    /// another reservation's mark is left alone. If the mark is not there yet, a tombstone
    /// keeps the hold that may still write it from doing so. Failures are logged: the mark
    /// lapses with its hold, and until then it only refuses holds.
    pub async fn clear_taken(&self, schedule_id: i64, seat_no: i32, reservation: i64) {
        let key = self.key(schedule_id, seat_no);
        let ttl_ms = self.ttl_ms();
        let cleared: Result<i64, _> = self
            .run(
                "clear",
                &self.clear,
                vec![key.clone(), tombstone_key(&key)],
                vec![taken_mark(reservation), ttl_ms.max(1).to_string()],
            )
            .await;
        // After Redis: a hold of this replica that read the mark before the delete does not
        // remember it past this point.
        self.taken.forget((schedule_id, seat_no));
        if let Err(error) = cleared {
            tracing::warn!(%key, %error, "seat taken mark not deleted");
        }
    }

    /// Releases the lock if it is still this request's; a lock that expired and was taken by
    /// another request is left alone. Failures are logged: the TTL ends the lock anyway.
    pub async fn release(&self, lock: SeatLock) {
        let released: Result<i64, _> = self
            .run(
                "release",
                &self.release,
                vec![lock.key.clone()],
                vec![lock.token],
            )
            .await;
        match released {
            Ok(1) => {}
            Ok(_) => tracing::warn!(key = %lock.key, "seat lock had expired before its release"),
            Err(error) => tracing::warn!(key = %lock.key, %error, "seat lock release failed"),
        }
    }

    /// Whether holds can work: Redis answers within the command timeout, and its clock is
    /// within half the command timeout of this host's. The lock and mark scripts compare
    /// deadlines from this host with Redis's clock; one that runs ahead by more than the
    /// timeout would find every lock late (holds UNAVAILABLE), so the replica reports
    /// NOT_SERVING and says why rather than refuse holds unexplained.
    pub async fn ping(&self) -> bool {
        let sent = SystemTime::now();
        let redis_ms: Result<i64, _> = self.run("clock", &self.clock, Vec::new(), Vec::new()).await;
        let redis_ms = match redis_ms {
            Ok(redis_ms) => redis_ms,
            Err(error) => {
                if let Some(breaker) = &self.breaker {
                    breaker.failed(&error.to_string(), None);
                }
                return false;
            }
        };
        let half_way = sent + sent.elapsed().unwrap_or_default() / 2;
        let local_ms = half_way.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
        let offset_ms = redis_ms.saturating_sub(local_ms);
        let limit_ms =
            i64::try_from((self.settings.command_timeout / 2).as_millis()).unwrap_or(i64::MAX);
        if offset_ms.abs() > limit_ms {
            tracing::warn!(
                offset_ms,
                limit_ms,
                "redis's clock is off from this host's: seat locks would be judged late or last too long"
            );
            return false;
        }
        true
    }

    /// Closes the connection (and stops reconnecting).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.settings.command_timeout, self.client.quit()).await;
    }

    async fn run<R: FromValue>(
        &self,
        command: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, fred::error::Error> {
        run_script(&self.client, command, script, keys, args).await
    }

    /// The connection to Redis, which the waiting rooms' queues share.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The lock's TTL in milliseconds, as the scripts take it.
    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn deadline_ms(&self) -> String {
        deadline_ms(self.settings.command_timeout)
    }
}

/// `EVALSHA` of `script` (fred loads it and tries again on `NOSCRIPT`), timed as `command`
/// and traced in a span of that name. Refused at once while the connection is down, like every
/// other command here (fred's per-command options do not reach scripts); otherwise bounded by
/// the command timeout.
pub(crate) async fn run_script<R: FromValue>(
    client: &Client,
    command: &'static str,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, fred::error::Error> {
    if !client.is_connected() {
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::IO,
            "not connected to redis",
        ));
    }
    let started = Instant::now();
    let answer = script
        .evalsha_with_reload(client, keys, args)
        .instrument(shared::telemetry::redis_span(command))
        .await;
    crate::metrics::redis_command(command, answer.is_ok(), started.elapsed());
    answer
}

/// When a command sent now is given up on (now plus `timeout`), in milliseconds since the Unix
/// epoch on this host's clock, for the scripts to check against Redis's.
pub(crate) fn deadline_ms(timeout: Duration) -> String {
    let deadline = SystemTime::now() + timeout;
    let ms = deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    ms.to_string()
}

fn taken_mark(reservation: i64) -> String {
    format!("{TAKEN_PREFIX}{reservation}")
}

/// The TLS settings of a Redis client from the files of `files`.
fn redis_tls(
    files: &shared::tls::ClientFiles,
) -> anyhow::Result<fred::types::config::TlsConnector> {
    use anyhow::Context;
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let ca = read(&files.ca)?;
    let identity = match &files.identity {
        Some((cert, key)) => Some((read(cert)?, read(key)?)),
        None => None,
    };
    let mut config = shared::tls::client_config(
        &ca,
        identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice())),
    )
    .context("Redis's TLS settings")?;
    // Redis speaks its own protocol, not HTTP/2.
    config.alpn_protocols.clear();
    Ok(config.into())
}

/// The key that tells a hold about to mark its seat that its reservation is already cancelled;
/// beside the seat's key, so in the same Redis Cluster slot.
fn tombstone_key(seat_key: &str) -> String {
    format!("{seat_key}:cancelled")
}

/// What this replica knows of a seat's taken mark.
#[derive(Debug, Clone, Copy)]
enum Memory {
    /// Seen, and remembered until then.
    Taken { until: Instant },
    /// Cleared by a cancel of this replica at that moment: a mark read before it is stale.
    Cleared { at: Instant },
}

/// How long each memory is kept: a mark until the moment it was remembered for (never longer
/// than the mark itself lives); a cancel's clearing for as long as a read made before it may
/// still be on its way back from Redis.
#[derive(Debug)]
struct MemoryExpiry {
    cleared_for: Duration,
}

impl MemoryExpiry {
    fn lifetime(&self, memory: &Memory) -> Duration {
        match memory {
            Memory::Taken { until } => until.saturating_duration_since(Instant::now()),
            Memory::Cleared { .. } => self.cleared_for,
        }
    }
}

impl moka::Expiry<(i64, i32), Memory> for MemoryExpiry {
    fn expire_after_create(
        &self,
        _seat: &(i64, i32),
        memory: &Memory,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(memory))
    }

    fn expire_after_update(
        &self,
        _seat: &(i64, i32),
        memory: &Memory,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(memory))
    }
}

/// The taken marks this replica has seen lately, by seat: a bounded cache whose entries expire
/// with what they remember.
#[derive(Debug, Clone)]
struct TakenMemory {
    seats: moka::sync::Cache<(i64, i32), Memory>,
}

impl TakenMemory {
    /// A memory whose cancels' clearings are kept for `cleared_for` (at least the longest a
    /// Redis command takes).
    fn new(cleared_for: Duration) -> Self {
        Self {
            seats: moka::sync::Cache::builder()
                .max_capacity(TAKEN_MEMORY_CAPACITY)
                .expire_after(MemoryExpiry { cleared_for })
                .build(),
        }
    }

    fn remembers(&self, seat: (i64, i32)) -> bool {
        matches!(self.seats.get(&seat), Some(Memory::Taken { until }) if until > Instant::now())
    }

    /// Remembers a mark read in Redis at `read`, for `ttl`, unless a cancel cleared it since.
    fn remember(&self, seat: (i64, i32), read: Instant, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let until = Instant::now() + ttl;
        // One step per seat: a cancel's clearing cannot slip between the look and the write.
        self.seats.entry(seat).and_compute_with(|current| {
            match current.map(|entry| entry.into_value()) {
                Some(Memory::Cleared { at }) if at >= read => moka::ops::compute::Op::Nop,
                _ => moka::ops::compute::Op::Put(Memory::Taken { until }),
            }
        });
    }

    fn forget(&self, seat: (i64, i32)) {
        self.seats
            .insert(seat, Memory::Cleared { at: Instant::now() });
    }
}

impl SeatLock {
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_key_says_how_long_it_has_left_and_who_holds_it() {
        assert_eq!(
            parse_held("held:1500:taken:42"),
            Some((Duration::from_millis(1500), "taken:42"))
        );
        assert_eq!(parse_held("held:-1:abc"), Some((Duration::ZERO, "abc")));
        assert_eq!(parse_held("late"), None);
        assert_eq!(parse_held("held:x:abc"), None);
    }

    #[test]
    fn a_mark_read_before_a_cancel_of_this_replica_is_not_remembered() {
        let memory = TakenMemory::new(Duration::from_secs(1));
        let seat = (1, 1);
        let read = Instant::now();
        memory.forget(seat);
        memory.remember(seat, read, Duration::from_secs(1));
        assert!(!memory.remembers(seat));

        memory.remember(seat, Instant::now(), Duration::from_secs(1));
        assert!(memory.remembers(seat));
        memory.remember((1, 2), Instant::now(), Duration::ZERO);
        assert!(!memory.remembers((1, 2)));
    }

    #[test]
    fn a_mark_is_remembered_no_longer_than_asked() {
        let memory = TakenMemory::new(Duration::from_secs(1));
        memory.remember((1, 3), Instant::now(), Duration::from_millis(50));
        assert!(memory.remembers((1, 3)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!memory.remembers((1, 3)));
        // The cache itself no longer answers the entry (it drops it at its next upkeep).
        assert!(memory.seats.get(&(1, 3)).is_none());
    }

    #[test]
    fn the_settings_debug_shows_no_redis_password() {
        let settings = LockSettings {
            redis_url: "redis://:hunter2@redis:6379".into(),
            key_prefix: String::new(),
            ttl: Duration::from_secs(3),
            command_timeout: Duration::from_secs(1),
            taken_memory: Duration::from_secs(1),
            tls: None,
            fallback: LockFallback::FailClosed,
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
