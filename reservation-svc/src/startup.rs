//! Building the application (pool, migrations, Redis, listener, router) and running it until
//! stopped, with the expiry sweeper and the dependency health watch beside it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use secrecy::ExposeSecret as _;
use shared::connection::Acceptor;
use shared::metrics::MetricsEndpoint;
use shared::proto::admission::v1::admission_service_server::{
    AdmissionServiceServer, SERVICE_NAME as ADMISSION_SERVICE,
};
use shared::proto::reservation::v1::reservation_service_server::{
    ReservationServiceServer, SERVICE_NAME,
};
use shared::security::{Security, SecurityArgs};
use shared::server::GrpcRouter;
use shared::service::{Foundation, FoundationSettings, Service};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admission::{Admission, Queue};
use crate::config::Config;
use crate::domain::Reservations;
use crate::grpc::{AdmissionGrpc, ReservationGrpc};
use crate::lock::{LockFallback, LockMode, LockSettings, SeatLocks};
use crate::store::Store;
use crate::wallet_client::Wallet;

/// The schema, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How often the health service re-checks Postgres and Redis.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The health entry that tells where holds take their seat locks: SERVING while in Redis;
/// NOT_SERVING while Redis does not answer (holds fail closed) or, with
/// `SEAT_LOCK_FALLBACK=postgres`, while the breaker is open (holds take their locks in
/// Postgres).
pub const SEAT_LOCKS_IN_REDIS: &str = "redis";

/// Keeps [`SEAT_LOCKS_IN_REDIS`] up to date, setting it only when it changes (every set would
/// wake the entry's watchers).
#[derive(Clone)]
struct SeatLocksHealth {
    health: HealthReporter,
    shown: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

impl SeatLocksHealth {
    const UNSET: u8 = 0;
    const IN_REDIS: u8 = 1;
    const ELSEWHERE: u8 = 2;

    fn new(health: HealthReporter) -> Self {
        Self {
            health,
            shown: std::sync::Arc::new(std::sync::atomic::AtomicU8::new(Self::UNSET)),
        }
    }

    async fn show(&self, in_redis: bool) {
        use std::sync::atomic::Ordering;
        let (value, status) = if in_redis {
            (Self::IN_REDIS, ServingStatus::Serving)
        } else {
            (Self::ELSEWHERE, ServingStatus::NotServing)
        };
        if self.shown.swap(value, Ordering::AcqRel) != value {
            self.health
                .set_service_status(SEAT_LOCKS_IN_REDIS, status)
                .await;
        }
    }
}

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: GrpcRouter,
    health: HealthReporter,
    reservations: Reservations,
    metrics: Option<MetricsEndpoint>,
    security: Security,
    config: Config,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .field("reservations", &self.reservations)
            .field("metrics", &self.metrics_addr())
            .finish_non_exhaustive()
    }
}

impl Application {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, unless disabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|metrics| metrics.local_addr().ok())
    }
}

impl Service for Application {
    type Config = Config;

    fn listen_addr(config: &Config) -> SocketAddr {
        config.listen_addr
    }

    fn security(config: &Config) -> &SecurityArgs {
        &config.security
    }

    fn drain_timeout(config: &Config) -> std::time::Duration {
        config.drain_timeout
    }

    /// Applies the embedded migrations to the configured database.
    async fn migrate(config: &Config) -> anyhow::Result<()> {
        shared::db::run_migrations(config.database_url.expose_secret(), MIGRATIONS)
            .await
            .context("cannot migrate the reservation database")
    }

    /// Migrates the database, builds the pool and the Redis client, and binds the listeners of
    /// gRPC and of the metrics (port 0 picks a free one). Redis need not be up yet.
    async fn build(config: Config) -> anyhow::Result<Self> {
        let security = config.security.load("reservation-svc")?;
        let Foundation {
            pool,
            listener,
            metrics,
        } = Foundation::lay(FoundationSettings {
            name: "reservation-svc",
            database_url: config.database_url.expose_secret(),
            migrations: MIGRATIONS,
            db: &config.db,
            listen_addr: config.listen_addr,
            metrics_addr: config.metrics_addr,
        })
        .await?;
        if metrics.is_some() {
            crate::metrics::describe();
        }
        let locks = SeatLocks::connect(LockSettings {
            redis_url: config.redis_url.clone(),
            key_prefix: config.seat_lock_prefix.clone(),
            ttl: config.seat_lock_ttl,
            command_timeout: config.redis_command_timeout,
            taken_memory: config.seat_taken_memory,
            tls: config.redis_tls()?,
            fallback: config.seat_lock_fallback,
        })
        .await
        .context("invalid Redis configuration")?;

        let wallet_tls = match config.wallet_tls()? {
            Some(files) => Some(
                shared::tls::client_tls(&files, Some(config.security.reload_interval))
                    .context("wallet-svc's TLS settings")?,
            ),
            None => None,
        };
        let wallet =
            Wallet::connect_lazy(&config.wallet_endpoint, config.wallet_timeout, wallet_tls)
                .context("invalid WALLET_ENDPOINT")?;
        let store = Store::new(pool);
        let admission = Admission::new(
            store.clone(),
            Queue::new(
                locks.client().clone(),
                &config.seat_lock_prefix,
                config.redis_command_timeout,
            ),
            config.admission_tokens()?,
        );
        admission
            .refresh()
            .await
            .context("cannot read the waiting rooms")?;
        let reservations = Reservations::new(store, locks, wallet, config.seat_hold_ttl)
            .with_max_active_holds_per_user(config.max_active_holds_per_user)
            .with_admission(admission.clone());
        let (router, health) =
            shared::server::router(&[SERVICE_NAME, ADMISSION_SERVICE], &config.server)?;
        let router = router
            .add_service(ReservationServiceServer::with_interceptor(
                ReservationGrpc::new(reservations.clone()),
                security.authenticate(),
            ))
            .add_service(AdmissionServiceServer::with_interceptor(
                AdmissionGrpc::new(admission),
                security.authenticate(),
            ));
        Ok(Self {
            listener,
            router,
            health,
            reservations,
            metrics,
            security,
            config,
        })
    }

    /// Serves until `shutdown` completes, then drains and closes the pool and Redis.
    async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, metrics = ?self.metrics_addr(), "reservation-svc serving");
        let metrics = self.metrics.map(|endpoint| {
            let reservations = self.reservations.clone();
            tokio::spawn(endpoint.serve(move || {
                shared::metrics::record_pool(reservations.store().pool());
            }))
        });
        let sweeper = tokio::spawn(crate::sweeper::sweep_every(
            self.reservations.clone(),
            self.config.sweep_interval,
            self.config.sweep_batch_size,
        ));
        let reconciler = tokio::spawn(crate::reconciler::reconcile_every(
            self.reservations.clone(),
            self.config.reconcile_interval,
            self.config.reconcile_grace,
            self.config.sweep_batch_size,
        ));
        let (room_refresh, room_ticks) = match self.reservations.admission() {
            Some(admission) => (
                tokio::spawn(admission.clone().refresh_every()),
                tokio::spawn(admission.clone().tick_every()),
            ),
            None => (
                tokio::spawn(std::future::pending()),
                tokio::spawn(std::future::pending()),
            ),
        };
        let reservations = self.reservations.clone();
        let database = std::sync::Arc::new(shared::db::DbProbe::new(
            self.config.database_url.expose_secret(),
            self.config.db.db_acquire_timeout,
        ));
        let fallback = self.config.seat_lock_fallback;
        let seat_locks = SeatLocksHealth::new(self.health.clone());
        // Holds need Postgres, and Redis unless they may fall back to Postgres without it.
        let health_watch = tokio::spawn(shared::server::watch_dependencies(
            self.health.clone(),
            &[SERVICE_NAME, ADMISSION_SERVICE],
            HEALTH_CHECK_INTERVAL,
            move || {
                let (reservations, database) = (reservations.clone(), database.clone());
                let seat_locks = seat_locks.clone();
                async move {
                    let locks = reservations.locks();
                    let (database, redis) = tokio::join!(database.ping(), locks.ping());
                    // With the fallback, the breaker's mode (a failed ping counts towards
                    // opening it); without, whether Redis answers.
                    let in_redis = match fallback {
                        LockFallback::FailClosed => redis,
                        LockFallback::Postgres => locks.mode() == LockMode::Redis,
                    };
                    seat_locks.show(in_redis).await;
                    let redis = redis || fallback == LockFallback::Postgres;
                    match (database, redis) {
                        (true, true) => Ok(()),
                        (false, true) => Err("postgres".to_owned()),
                        (true, false) => Err("redis".to_owned()),
                        (false, false) => Err("postgres and redis".to_owned()),
                    }
                }
            },
        ));
        let probe = tokio::spawn(self.reservations.locks().clone().probe_while_open());
        let shutdown = async {
            shutdown.await;
            health_watch.abort();
            probe.abort();
            sweeper.abort();
            reconciler.abort();
            room_refresh.abort();
            room_ticks.abort();
        };
        let acceptor = Acceptor::new(self.listener, &self.config.server);
        let served = shared::server::serve(
            self.router,
            acceptor,
            &self.security,
            self.health,
            &[SERVICE_NAME, ADMISSION_SERVICE],
            shutdown,
            self.config.drain_timeout,
        )
        .await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        self.reservations.locks().close().await;
        self.reservations.store().pool().close();
        served
    }
}
