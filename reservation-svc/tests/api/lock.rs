//! The seat lock against a real Redis: owner-only release, and a key that already holds this
//! request's token counting as taken by it.

use std::time::Duration;

use fred::interfaces::KeysInterface;
use protocol::reservation::AfterHold;
use reservation_svc::lock::{Acquire, HoldLock, LockError, LockFallback, LockSettings, SeatLocks};

fn settings(redis_url: &str) -> LockSettings {
    LockSettings {
        redis_url: redis_url.into(),
        key_prefix: format!("test:{:016x}:", rand::random::<u64>()),
        ttl: Duration::from_secs(30),
        command_timeout: Duration::from_secs(1),
        taken_memory: Duration::from_secs(1),
        tls: None,
        fallback: LockFallback::FailClosed,
    }
}

async fn connected(settings: LockSettings) -> SeatLocks {
    SeatLocks::connect(settings).await.expect("client")
}

const REDIS: &str = "redis://127.0.0.1:6379";

/// The expiry of a hold taken now for 30 s.
fn in_30s() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::seconds(30)
}

#[tokio::test]
async fn a_second_request_is_refused_until_the_first_releases() {
    let locks = connected(settings(REDIS)).await;

    let first = locks.acquire(1, 1).await.expect("free");
    assert!(matches!(
        locks.acquire(1, 1).await,
        Err(LockError::Contended)
    ));
    let other_seat = locks
        .acquire(1, 2)
        .await
        .expect("another seat is another lock");
    locks.release(first).await;
    let again = locks.acquire(1, 1).await.expect("free again");
    locks.release(other_seat).await;
    locks.release(again).await;
}

#[tokio::test]
async fn a_release_never_deletes_another_requests_lock() {
    let locks = connected(settings(REDIS)).await;
    let redis = crate::helpers::redis(REDIS).await;

    let stale = locks.acquire(5, 5).await.expect("free");
    // Its TTL ran out and another request took the seat's lock.
    redis
        .set::<(), _, _>(stale.key(), "another-request", None, None, false)
        .await
        .expect("overwrite");
    let key = stale.key().to_owned();
    locks.release(stale).await;

    let holder: Option<String> = redis.get(&key).await.expect("get");
    assert_eq!(holder.as_deref(), Some("another-request"));
}

#[tokio::test]
async fn a_key_already_holding_this_requests_token_counts_as_acquired() {
    let locks = connected(settings(REDIS)).await;
    let redis = crate::helpers::redis(REDIS).await;
    let key = locks.key(9, 9);
    // As if this request's SET had been applied once already (a resent command).
    redis
        .set::<(), _, _>(&key, "my-token", None, None, false)
        .await
        .expect("set");

    let lock = locks
        .acquire_with_token(key.clone(), "my-token".to_owned())
        .await
        .expect("ours");
    let refused = locks
        .acquire_with_token(key.clone(), "other-token".to_owned())
        .await;
    assert!(matches!(
        refused,
        Err(Acquire::Refused(LockError::Contended))
    ));
    locks.release(lock).await;
    assert_eq!(redis.exists::<i64, _>(&key).await.expect("exists"), 0);
}

#[tokio::test]
async fn lock_keys_tag_the_schedule_for_redis_cluster() {
    let locks = SeatLocks::connect(LockSettings {
        key_prefix: "ticketing:".to_owned(),
        ..settings(REDIS)
    })
    .await
    .expect("client");
    assert_eq!(locks.key(42, 7), "ticketing:seat:{42}:7");
}

#[tokio::test]
async fn a_taken_mark_refuses_the_seat_until_its_own_reservation_clears_it() {
    let settings = settings(REDIS);
    let locks = connected(settings.clone()).await;
    // Another replica: same Redis, nothing remembered.
    let other = connected(settings).await;
    let marked = AfterHold::MarkTaken {
        reservation: 42,
        for_micros: 30_000_000,
    };

    let lock = locks.acquire(3, 3).await.expect("free");
    locks
        .finish(HoldLock::Redis(lock), marked, Some(in_30s()))
        .await;
    assert!(matches!(locks.acquire(3, 3).await, Err(LockError::Taken)));
    assert!(matches!(other.acquire(3, 3).await, Err(LockError::Taken)));

    // Another reservation's cancellation leaves the mark alone.
    other.clear_taken(3, 3, 41).await;
    assert!(matches!(other.acquire(3, 3).await, Err(LockError::Taken)));
    other.clear_taken(3, 3, 42).await;
    let lock = other.acquire(3, 3).await.expect("free once cleared");
    other.release(lock).await;
}

#[tokio::test]
async fn a_mark_never_replaces_a_lock_that_is_no_longer_the_holds() {
    let locks = connected(settings(REDIS)).await;
    let redis = crate::helpers::redis(REDIS).await;

    let stale = locks.acquire(6, 6).await.expect("free");
    let key = stale.key().to_owned();
    redis
        .set::<(), _, _>(&key, "another-request", None, None, false)
        .await
        .expect("overwrite");
    locks
        .finish(
            HoldLock::Redis(stale),
            AfterHold::MarkTaken {
                reservation: 7,
                for_micros: 30_000_000,
            },
            Some(in_30s()),
        )
        .await;

    let holder: Option<String> = redis.get(&key).await.expect("get");
    assert_eq!(holder.as_deref(), Some("another-request"));
    assert!(matches!(
        locks.acquire(6, 6).await,
        Err(LockError::Contended)
    ));
}

#[tokio::test]
async fn a_cancel_that_lands_before_the_mark_keeps_it_from_being_written() {
    let locks = connected(settings(REDIS)).await;
    let mark = |reservation| AfterHold::MarkTaken {
        reservation,
        for_micros: 30_000_000,
    };

    // Reservation 77 is cancelled while its hold still holds the lock, before the mark.
    let lock = locks.acquire(8, 8).await.expect("free");
    locks.clear_taken(8, 8, 77).await;
    locks
        .finish(HoldLock::Redis(lock), mark(77), Some(in_30s()))
        .await;
    let again = locks
        .acquire(8, 8)
        .await
        .expect("no mark of a cancelled reservation");

    // Another reservation's cancellation does not stop this one's mark.
    locks.clear_taken(8, 8, 76).await;
    locks
        .finish(HoldLock::Redis(again), mark(78), Some(in_30s()))
        .await;
    assert!(matches!(locks.acquire(8, 8).await, Err(LockError::Taken)));
}

#[tokio::test]
async fn a_mark_expires_when_its_hold_does_and_is_not_written_once_it_has() {
    let locks = connected(settings(REDIS)).await;
    let redis = crate::helpers::redis(REDIS).await;
    let mark = AfterHold::MarkTaken {
        reservation: 90,
        for_micros: 30_000_000,
    };

    let lock = locks.acquire(10, 1).await.expect("free");
    let key = lock.key().to_owned();
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(20);
    locks
        .finish(HoldLock::Redis(lock), mark, Some(expires_at))
        .await;
    let expire_time: i64 = redis.pexpire_time(&key).await.expect("pexpiretime");
    assert_eq!(
        expire_time,
        expires_at.timestamp_millis(),
        "the mark lapses exactly with its hold"
    );

    // A hold whose time is already up leaves no mark: its lock is released.
    let lock = locks.acquire(10, 2).await.expect("free");
    let key = lock.key().to_owned();
    let lapsed = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    locks
        .finish(HoldLock::Redis(lock), mark, Some(lapsed))
        .await;
    assert_eq!(redis.exists::<i64, _>(&key).await.expect("exists"), 0);
}
