//! What every service binary does the same way: run the subcommand it was given, and lay the
//! foundation of a server (migrated database, pool at the isolation the services assume, the
//! gRPC listener, the metrics listener) before the service builds its own parts on it.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use diesel_migrations::EmbeddedMigrations;
use tokio::net::TcpListener;

use crate::cli::Command;
use crate::db::{DbArgs, PgPool};
use crate::metrics::MetricsEndpoint;
use crate::security::SecurityArgs;

/// A service's application: built from its configuration, served until a shutdown signal.
pub trait Service: Sized + Send {
    type Config: Send;

    /// The address `health-check` asks.
    fn listen_addr(config: &Self::Config) -> SocketAddr;

    /// The server's security settings, which `health-check` follows.
    fn security(config: &Self::Config) -> &SecurityArgs;

    /// How long a stop may take (`DRAIN_TIMEOUT`); the last spans go out within what is left.
    fn drain_timeout(config: &Self::Config) -> std::time::Duration;

    /// Applies the database migrations (the `migrate` subcommand; `build` applies them too).
    fn migrate(config: &Self::Config) -> impl Future<Output = anyhow::Result<()>> + Send;

    fn build(config: Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;

    fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The whole of a service binary's `main` once its command line is parsed: telemetry as
/// `name` at `version`, the subcommand ([`run`]), then the last spans sent within what the
/// drain left of its time.
pub async fn main<S: Service>(
    name: &'static str,
    version: &'static str,
    command: Option<Command>,
    config: S::Config,
) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init(name, version)?;
    let drain_timeout = S::drain_timeout(&config);
    let served = run::<S>(command, config).await;
    telemetry
        .shutdown(crate::shutdown::left_of(drain_timeout))
        .await;
    served
}

/// Runs a service binary's subcommand (`serve` when none is given).
pub async fn run<S: Service>(command: Option<Command>, config: S::Config) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve) {
        Command::Migrate => S::migrate(&config).await,
        Command::HealthCheck { service } => {
            let addr = S::listen_addr(&config);
            crate::server::check_health(addr, S::security(&config), &service).await
        }
        Command::Serve => {
            let app = S::build(config).await?;
            app.run_until_stopped(crate::shutdown::shutdown_signal())
                .await
        }
    }
}

/// Where a service's foundation comes from.
pub struct FoundationSettings<'a> {
    /// The service's name, as Postgres's `application_name` shows it.
    pub name: &'a str,
    pub database_url: &'a str,
    pub migrations: EmbeddedMigrations,
    pub db: &'a DbArgs,
    pub listen_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
}

/// A service's database pool and listeners, ready for it to build on.
pub struct Foundation {
    pub pool: PgPool,
    pub listener: TcpListener,
    pub metrics: Option<MetricsEndpoint>,
}

impl std::fmt::Debug for FoundationSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoundationSettings")
            .field("name", &self.name)
            .field("listen_addr", &self.listen_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Foundation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Foundation")
            .field("pool", &self.pool.status())
            .field("listener", &self.listener)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl Foundation {
    /// Names the database in the process's Postgres spans, migrates it, builds the pool and
    /// checks that it runs transactions at READ COMMITTED, and binds the gRPC and metrics
    /// listeners (port 0 picks a free one).
    pub async fn lay(settings: FoundationSettings<'_>) -> anyhow::Result<Self> {
        crate::telemetry::set_postgres_target(settings.database_url);
        crate::db::run_migrations(settings.database_url, settings.migrations)
            .await
            .with_context(|| format!("cannot migrate the database of {}", settings.name))?;
        let pool = crate::db::build_pool(
            settings.database_url,
            &settings.db.pool_settings(settings.name),
        )?;
        crate::db::check_isolation(&pool).await?;
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
        let metrics = match settings.metrics_addr {
            Some(addr) => Some(MetricsEndpoint::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            pool,
            listener,
            metrics,
        })
    }
}
