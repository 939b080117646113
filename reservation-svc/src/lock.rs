//! The seat lock: `SET <prefix>seat:{<schedule>}:<seat> <token> NX PX <ttl>` in Redis, released
//! only by its owner (compare-and-delete in Lua). It is a filter that keeps a stampede of losers
//! away from Postgres; Postgres still decides, so a lost lock costs speed, never correctness.
//!
//! fred is configured to fail fast: every command has a timeout, in-flight commands are never
//! replayed after a reconnect (`max_command_attempts = 1`), commands are refused at once while
//! the connection is down, and the client reconnects in the background forever.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::{Builder, Config, Expiration, Options, ReconnectPolicy, SetOptions};
use fred::types::scripts::Script;

/// Deletes the key only while it still holds the caller's token.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A concurrent request holds it.
    #[error("the seat is locked by a concurrent request")]
    Contended,
    /// Redis did not answer in time: the outcome is unknown, so the caller must not proceed.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// How the seat locks talk to Redis.
#[derive(Debug, Clone)]
pub struct LockSettings {
    pub redis_url: String,
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// How long a lock lives if its owner never releases it (a crash, a lost connection).
    pub ttl: Duration,
    /// Longest one Redis command may take before the hold answers UNAVAILABLE.
    pub command_timeout: Duration,
}

/// Takes and releases seat locks.
#[derive(Clone)]
pub struct SeatLocks {
    client: Client,
    release: Script,
    settings: LockSettings,
}

impl std::fmt::Debug for SeatLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatLocks")
            .field("connected", &self.client.is_connected())
            .field("key_prefix", &self.settings.key_prefix)
            .field("ttl", &self.settings.ttl)
            .finish()
    }
}

/// A lock held by this request. Release it with [`SeatLock::release`]; if that never happens
/// the lock expires after its TTL.
#[derive(Debug)]
#[must_use = "a lock is released by `release`, or only when its TTL runs out"]
pub struct SeatLock {
    key: String,
    token: String,
}

impl SeatLocks {
    /// Builds the client and connects, waiting up to the command timeout: the service starts
    /// even with Redis down (holds then answer UNAVAILABLE) and picks Redis up when it appears.
    pub async fn connect(settings: LockSettings) -> anyhow::Result<Self> {
        let mut config = Config::from_url(&settings.redis_url)?;
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
            // 0 attempts = forever; 100 ms doubling up to 2 s between attempts.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        // The connection task runs until `close`; its end needs no join.
        drop(client.connect());
        if tokio::time::timeout(timeout, client.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("redis not reachable yet, seat holds unavailable until it is");
        }
        Ok(Self {
            client,
            release: Script::from_lua(RELEASE_SCRIPT),
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

    /// Takes the seat's lock with a fresh random token.
    pub async fn acquire(&self, schedule_id: i64, seat_no: i32) -> Result<SeatLock, LockError> {
        let token = format!("{:032x}", rand::random::<u128>());
        self.acquire_with_token(self.key(schedule_id, seat_no), token)
            .await
    }

    /// Takes `key` for `token`. `SET NX PX ... GET` answers the value already there, so a
    /// key that already holds this very token (a command applied twice) counts as taken by us.
    pub async fn acquire_with_token(
        &self,
        key: String,
        token: String,
    ) -> Result<SeatLock, LockError> {
        let ttl_ms = i64::try_from(self.settings.ttl.as_millis()).unwrap_or(i64::MAX);
        let previous: Result<Option<String>, _> = self
            .client
            .with_options(&self.fail_fast())
            .set(
                &key,
                token.as_str(),
                Some(Expiration::PX(ttl_ms)),
                Some(SetOptions::NX),
                true,
            )
            .await;
        let acquired = match previous {
            Ok(None) => Ok(SeatLock { key, token }),
            Ok(Some(holder)) if holder == token => Ok(SeatLock { key, token }),
            Ok(Some(_)) => Err(LockError::Contended),
            Err(error) => Err(LockError::Unavailable(error.to_string())),
        };
        crate::metrics::seat_lock(match &acquired {
            Ok(_) => "acquired",
            Err(LockError::Contended) => "contended",
            Err(LockError::Unavailable(_)) => "redis_unavailable",
        });
        acquired
    }

    /// Releases the lock if it is still this request's; a lock that expired and was taken by
    /// another request is left alone. Failures are logged: the TTL ends the lock anyway.
    pub async fn release(&self, lock: SeatLock) {
        let released: Result<i64, _> = self
            .release
            .evalsha_with_reload(&self.client, lock.key.as_str(), lock.token.as_str())
            .await;
        match released {
            Ok(1) => {}
            Ok(_) => tracing::warn!(key = %lock.key, "seat lock had expired before its release"),
            Err(error) => tracing::warn!(key = %lock.key, %error, "seat lock release failed"),
        }
    }

    /// Whether Redis answers a PING within the command timeout.
    pub async fn ping(&self) -> bool {
        self.client
            .with_options(&self.fail_fast())
            .ping::<String>(None)
            .await
            .is_ok()
    }

    /// Closes the connection (and stops reconnecting).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.settings.command_timeout, self.client.quit()).await;
    }

    /// Refuse at once while disconnected, never resend, and give up after the timeout.
    fn fail_fast(&self) -> Options {
        Options {
            timeout: Some(self.settings.command_timeout),
            max_attempts: Some(1),
            fail_fast: true,
            ..Default::default()
        }
    }
}

impl SeatLock {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}
