//! Without Redis, holds fail closed (UNAVAILABLE, nothing written) and health says so; when
//! Redis returns, holds work again without a restart.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{RedisServer, TestApp, channel, spawn_app_with};

const SERVICE: &str = "ticketing.reservation.v1.ReservationService";

async fn health(app: &TestApp) -> ServingStatus {
    health_of(app, SERVICE).await
}

pub async fn health_of(app: &TestApp, service: &str) -> ServingStatus {
    HealthClient::new(channel(app.addr).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health")
        .into_inner()
        .status()
}

/// Polls `check` every 100 ms for up to `limit`; true once it holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_fail_closed_while_redis_is_down_and_recover_without_a_restart() {
    let mut redis = RedisServer::start();
    let app = spawn_app_with(|config| config.redis_url = redis.url().into()).await;
    let schedule_id = app.schedule_with_seats(10).await;
    app.hold(1, schedule_id, 1)
        .await
        .expect("hold with Redis up");
    let written = app.rows_written().await;

    redis.stop();
    // Bounded only to turn a hang into a failure; the answer's latency is measured elsewhere.
    let refused = tokio::time::timeout(Duration::from_secs(10), app.hold(2, schedule_id, 2))
        .await
        .expect("answered, not hung")
        .expect_err("no Redis, no hold");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(app.rows_written().await, written, "nothing written");
    assert!(
        eventually(Duration::from_secs(10), || async {
            health(&app).await == ServingStatus::NotServing
        })
        .await,
        "health reports the dependency down"
    );
    assert_eq!(
        health_of(&app, shared::server::LIVENESS).await,
        ServingStatus::Serving,
        "the process itself is alive: liveness probes must not restart it"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.hold(3, schedule_id, 3).await.is_ok()
        })
        .await,
        "holds work again once Redis is back"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            health(&app).await == ServingStatus::Serving
        })
        .await,
        "health reports serving again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_started_without_redis_serves_reads_and_picks_redis_up_later() {
    let mut redis = RedisServer::start();
    redis.stop();
    let app = spawn_app_with(|config| config.redis_url = redis.url().into()).await;
    let schedule_id = app.schedule_with_seats(5).await;

    let refused = app.hold(1, schedule_id, 1).await.expect_err("no Redis yet");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(app.seats(schedule_id).await.len(), 5, "reads need no Redis");

    redis.restart();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.hold(1, schedule_id, 1).await.is_ok()
        })
        .await,
        "holds work once Redis appears"
    );
}
