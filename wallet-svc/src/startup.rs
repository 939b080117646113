//! Building the application (pool, migrations, listener, router) and running it until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use secrecy::ExposeSecret as _;
use shared::connection::Acceptor;
use shared::db::PgPool;
use shared::metrics::MetricsEndpoint;
use shared::proto::wallet::v1::wallet_service_server::{SERVICE_NAME, WalletServiceServer};
use shared::security::{Security, SecurityArgs};
use shared::server::GrpcRouter;
use shared::service::{Foundation, FoundationSettings, Service};
use tokio::net::TcpListener;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::domain::Wallets;
use crate::grpc::WalletGrpc;
use crate::store::Store;

/// The schema, embedded in the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How often the health service re-checks Postgres.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: GrpcRouter,
    health: HealthReporter,
    pool: PgPool,
    metrics: Option<MetricsEndpoint>,
    security: Security,
    drain_timeout: Duration,
    limits: shared::server::ServerArgs,
    /// What the health check asks of the database.
    database: std::sync::Arc<shared::db::DbProbe>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .field("pool", &self.pool.status())
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
            .context("cannot migrate the wallet database")
    }

    /// Migrates the database, builds the pool and binds the listeners of gRPC and of the
    /// metrics (port 0 picks a free one).
    async fn build(config: Config) -> anyhow::Result<Self> {
        let security = config.security.load("wallet-svc")?;
        // Payments come from services known by their certificates.
        anyhow::ensure!(
            !matches!(security, Security::Secure { mutual: false, .. }),
            "wallet-svc serves only with client certificates: set TLS_CLIENT_CA_FILE"
        );
        let Foundation {
            pool,
            listener,
            metrics,
        } = Foundation::lay(FoundationSettings {
            name: "wallet-svc",
            database_url: config.database_url.expose_secret(),
            migrations: MIGRATIONS,
            db: &config.db,
            listen_addr: config.listen_addr,
            metrics_addr: config.metrics_addr,
        })
        .await?;
        if metrics.is_some() {
            // Listed from the start, with empty buckets, like every series of known labels.
            let _ = metrics::histogram!(crate::domain::BATCH_SIZE);
        }

        // A batch may wait for the row lock and then run its statements; past that, its callers
        // have had their answer from the RPC timeout anyway.
        let batch_deadline = config.db.db_lock_timeout + 2 * config.db.db_statement_timeout;
        let wallets = Wallets::new(
            Store::new(pool.clone()),
            usize::from(config.max_batch),
            batch_deadline,
        );
        let (router, health) = shared::server::router(&[SERVICE_NAME], &config.server)?;

        let grpc = WalletGrpc::new(wallets, config.payment_service_identities.clone());
        let router = router.add_service(WalletServiceServer::with_interceptor(
            grpc,
            security.authenticate(),
        ));
        Ok(Self {
            listener,
            router,
            health,
            pool,
            metrics,
            security,
            drain_timeout: config.drain_timeout,
            limits: config.server.clone(),
            database: std::sync::Arc::new(shared::db::DbProbe::new(
                config.database_url.expose_secret(),
                config.db.db_acquire_timeout,
            )),
        })
    }

    /// Serves until `shutdown` completes, then drains and closes the pool.
    async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, metrics = ?self.metrics_addr(), "wallet-svc serving");
        let metrics = self.metrics.map(|endpoint| {
            let pool = self.pool.clone();
            tokio::spawn(endpoint.serve(move || shared::metrics::record_pool(&pool)))
        });
        let database = self.database.clone();
        let health_watch = tokio::spawn(shared::server::watch_dependencies(
            self.health.clone(),
            &[SERVICE_NAME],
            HEALTH_CHECK_INTERVAL,
            move || {
                let database = database.clone();
                async move {
                    match database.ping().await {
                        true => Ok(()),
                        false => Err("postgres".to_owned()),
                    }
                }
            },
        ));
        let shutdown = async {
            shutdown.await;
            health_watch.abort();
        };
        let acceptor = Acceptor::new(self.listener, &self.limits);
        let served = shared::server::serve(
            self.router,
            acceptor,
            &self.security,
            self.health,
            &[SERVICE_NAME],
            shutdown,
            self.drain_timeout,
        )
        .await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        self.pool.close();
        served
    }
}
