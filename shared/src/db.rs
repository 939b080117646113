//! The Postgres connection pool (diesel-async on deadpool) and embedded migrations.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

/// A failure of the database, not of the request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, out of connections, or a lock or statement timed out: worth a retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                _,
            ) => Self::Unavailable(error.to_string()),
            // lock_timeout and statement_timeout (SQLSTATE 55P03 and 57014), and a server
            // that is shutting down, restarting or starting up (57P01, 57P02, 57P03).
            Error::DatabaseError(_, info)
                if [
                    "canceling statement due to",
                    "terminating connection",
                    "the database system is",
                ]
                .iter()
                .any(|cause| info.message().starts_with(cause)) =>
            {
                Self::Unavailable(error.to_string())
            }
            _ => Self::Internal(error.to_string()),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for StoreError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// A pool of Postgres connections, each set up by [`PoolSettings`].
pub type PgPool = Pool<AsyncPgConnection>;

/// How the pool sizes itself and sets up each new connection.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_size: usize,
    /// Shown in `pg_stat_activity`, so operators can tell the services apart.
    pub application_name: String,
    /// Longest a single statement may run before Postgres cancels it.
    pub statement_timeout: Duration,
    /// Longest a statement waits for a row lock (such as a wallet's `FOR UPDATE`).
    pub lock_timeout: Duration,
    /// Longest a caller waits for a free connection, or for a new one to be opened.
    pub acquire_timeout: Duration,
}

/// A session left idle inside a transaction this long is ended by Postgres, a last defence
/// should a connection ever escape the pool's own checks.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// TCP limits that end a connection whose server has silently gone (a failover behind the
/// same address, a dropped flow), which no checkout test query looks for any more: data left
/// unacknowledged for `tcp_user_timeout` s, or an idle connection whose keepalive probes go
/// unanswered (`keepalives_idle` + `keepalives_interval` x `keepalives_retries` s). Each
/// applies unless the database URL sets it.
const DEAD_PEER_LIMITS: [(&str, &str); 4] = [
    ("tcp_user_timeout", "10"),
    ("keepalives_idle", "10"),
    ("keepalives_interval", "5"),
    ("keepalives_retries", "2"),
];

/// `database_url` with [`DEAD_PEER_LIMITS`] it does not set itself, in its own syntax (a
/// `postgres://` URL's query, or `key=value` words).
fn with_dead_peer_limits(database_url: &str) -> String {
    let is_url =
        database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
    let mut url = database_url.to_owned();
    for (key, value) in DEAD_PEER_LIMITS {
        let set = if is_url {
            database_url.split_once('?').is_some_and(|(_, query)| {
                query
                    .split('&')
                    .any(|pair| pair.split('=').next() == Some(key))
            })
        } else {
            database_url
                .split_whitespace()
                .any(|word| word.split('=').next() == Some(key))
        };
        if set {
            continue;
        }
        let separator = match (is_url, url.contains('?')) {
            (true, true) => "&",
            (true, false) => "?",
            (false, _) => " ",
        };
        url.push_str(&format!("{separator}{key}={value}"));
    }
    url
}

/// Builds the pool; connections are opened lazily, so this succeeds with Postgres down.
pub fn build_pool(database_url: &str, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let application_name: String = settings
        .application_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    let setup_sql = format!(
        "SET application_name = '{application_name}'; \
         SET lc_messages = 'C'; \
         SET statement_timeout = {}; \
         SET lock_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}; \
         SET default_transaction_isolation = 'read committed'",
        settings.statement_timeout.as_millis(),
        settings.lock_timeout.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
    );
    let connect_timeout = settings.acquire_timeout;
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // No test query on every checkout (the default costs each call a round trip): a connection
    // whose socket has closed (a restarted or failed server) is dropped by the pool before
    // use, and any other failure surfaces on first use as UNAVAILABLE.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let setup_sql = setup_sql.clone();
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn =
                tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
                    .await
                    .map_err(|_| ConnectionError::BadConnection("connect timed out".into()))??;
            conn.batch_execute(&setup_sql)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager =
        AsyncDieselConnectionManager::new_with_config(with_dead_peer_limits(database_url), config);
    let pool = Pool::builder(manager)
        .max_size(settings.max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .recycle_timeout(Some(settings.acquire_timeout))
        .build()?;
    Ok(pool)
}

/// The session-level advisory lock that [`run_migrations`] holds while it migrates: "ticket".
/// Locks are per database, so the two services' databases do not share it.
pub const MIGRATION_LOCK: i64 = 0x7469_636b_6574;

/// Applies the pending migrations. Replicas starting together take turns on an advisory lock
/// ([`MIGRATION_LOCK`]), so each migration runs once: the first applies them, the others wait
/// and then find nothing pending.
pub async fn run_migrations(
    database_url: &str,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<()> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use diesel::Connection;
        use diesel::connection::SimpleConnection;
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = Connection::establish(&url)?;
        SimpleConnection::batch_execute(
            &mut conn,
            &format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"),
        )?;
        let applied = conn
            .run_pending_migrations(migrations)
            .map(|versions| versions.len())
            .map_err(|error| anyhow::anyhow!("migration failed: {error}"));
        SimpleConnection::batch_execute(
            &mut conn,
            &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"),
        )?;
        tracing::info!(applied = applied?, "migrations up to date");
        Ok(())
    })
    .await?
}

/// The isolation every transaction of the services assumes: a statement that waited for a row
/// lock sees the row as its holder committed it (re-read after the wait), and the next statement
/// sees every commit before it. Under REPEATABLE READ or SERIALIZABLE the same code would fail
/// with serialization errors or, worse, decide on a snapshot taken before the lock.
pub const REQUIRED_ISOLATION: &str = "read committed";

/// Checks that a transaction of a pooled connection runs at [`REQUIRED_ISOLATION`]. Each
/// connection sets it when it opens; this catches what would undo that unseen (a connection
/// pooler that does not keep session settings, say), so that a service refuses to start rather
/// than run on other terms.
pub async fn check_isolation(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let isolation = transaction_isolation(&mut conn).await?;
    anyhow::ensure!(
        isolation == REQUIRED_ISOLATION,
        "the database runs transactions at {isolation:?}; the services require \
         {REQUIRED_ISOLATION:?} (is a pooler between them dropping session settings?)"
    );
    Ok(())
}

/// The isolation level a transaction of `conn` runs at.
pub async fn transaction_isolation(conn: &mut AsyncPgConnection) -> anyhow::Result<String> {
    use diesel_async::RunQueryDsl;
    diesel::define_sql_function! {
        fn current_setting(name: diesel::sql_types::Text) -> diesel::sql_types::Text;
    }
    let isolation = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::select(current_setting("transaction_isolation"))
                .get_result::<String>(conn)
                .await
        })
        .await?;
    Ok(isolation)
}

/// The health check's view of the database: a connection of its own, outside the pool, so
/// that a pool whose connections are all busy with calls (load, not an outage) does not make
/// the service NOT_SERVING, while a database that is down or hung does.
pub struct DbProbe {
    database_url: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<AsyncPgConnection>>,
}

impl std::fmt::Debug for DbProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("DbProbe")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DbProbe {
    /// Probes the database at `database_url`, each connect or query within `timeout`.
    pub fn new(database_url: &str, timeout: Duration) -> Self {
        Self {
            database_url: with_dead_peer_limits(database_url),
            timeout,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the database answers a trivial query in time; a connection that fails is
    /// dropped and made again at the next probe.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let made = tokio::time::timeout(
                self.timeout,
                AsyncPgConnection::establish(&self.database_url),
            )
            .await;
            *conn = made.ok().and_then(Result::ok);
        }
        let Some(open) = conn.as_mut() else {
            return false;
        };
        let answered = tokio::time::timeout(self.timeout, open.batch_execute("SELECT 1")).await;
        if !matches!(answered, Ok(Ok(()))) {
            *conn = None;
            return false;
        }
        true
    }
}

/// The database settings of a service, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Most Postgres connections held at once.
    #[arg(long, global = true, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Longest one SQL statement may run.
    #[arg(long, global = true, env = "DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,

    /// Longest a statement waits for a row lock.
    #[arg(long, global = true, env = "DB_LOCK_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub db_lock_timeout: Duration,

    /// Longest a call waits for a database connection before answering UNAVAILABLE.
    #[arg(long, global = true, env = "DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,
}

impl DbArgs {
    /// The pool settings these arguments describe, for the service `application_name`.
    pub fn pool_settings(&self, application_name: &str) -> PoolSettings {
        PoolSettings {
            max_size: self.db_pool_size,
            application_name: application_name.to_owned(),
            statement_timeout: self.db_statement_timeout,
            lock_timeout: self.db_lock_timeout,
            acquire_timeout: self.db_acquire_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_nobody_listens_for_is_down_to_the_probe() {
        // Port 1 on loopback: refused at once.
        let probe = DbProbe::new(
            "postgres://postgres@127.0.0.1:1/nothing",
            Duration::from_secs(1),
        );
        assert!(!probe.ping().await);
        assert!(!probe.ping().await, "and again, with a new connection");
    }

    #[test]
    fn dead_peer_limits_are_added_unless_the_url_sets_them() {
        assert_eq!(
            with_dead_peer_limits("postgres://postgres@db:5432/wallet"),
            "postgres://postgres@db:5432/wallet?tcp_user_timeout=10&keepalives_idle=10\
             &keepalives_interval=5&keepalives_retries=2"
        );
        assert_eq!(
            with_dead_peer_limits(
                "postgresql://db/wallet?sslmode=disable&tcp_user_timeout=3&keepalives_idle=60\
                 &keepalives_interval=1&keepalives_retries=9"
            ),
            "postgresql://db/wallet?sslmode=disable&tcp_user_timeout=3&keepalives_idle=60\
             &keepalives_interval=1&keepalives_retries=9"
        );
        assert_eq!(
            with_dead_peer_limits("host=db dbname=wallet keepalives_idle=30"),
            "host=db dbname=wallet keepalives_idle=30 tcp_user_timeout=10 \
             keepalives_interval=5 keepalives_retries=2"
        );
    }

    /// A pool of one connection to `url`.
    fn one_connection(url: &str) -> PgPool {
        let settings = PoolSettings {
            max_size: 1,
            application_name: "isolation-test".to_owned(),
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        };
        build_pool(url, &settings).expect("a pool")
    }

    #[tokio::test]
    async fn transactions_run_read_committed_whatever_the_database_default() {
        let admin = std::env::var("TEST_DATABASE_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let pool = one_connection(&admin);
        {
            let mut conn = pool.get().await.expect("a connection");
            // What a database or role default of SERIALIZABLE looks like to the session.
            conn.batch_execute("SET default_transaction_isolation = 'serializable'")
                .await
                .expect("set");
            assert_eq!(
                transaction_isolation(&mut conn).await.expect("read"),
                "serializable"
            );
        }
        let refused = check_isolation(&pool).await.expect_err("refused");
        assert!(refused.to_string().contains("read committed"), "{refused}");

        // A database whose default is SERIALIZABLE: the pool's connections set their own.
        let pool = one_connection(&format!(
            "{admin}?options=-c%20default_transaction_isolation%3Dserializable"
        ));
        check_isolation(&pool)
            .await
            .expect("read committed, set by the pool's own connections");
    }

    #[tokio::test]
    async fn a_connection_the_server_terminates_is_unavailable_not_internal() {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let admin = std::env::var("TEST_DATABASE_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut doomed = AsyncPgConnection::establish(&admin).await.expect("connect");
        let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut doomed)
            .await
            .expect("its pid")
            .pid;
        // What a server that shuts down or restarts does to its sessions (SQLSTATE 57P01).
        let mut admin_conn = AsyncPgConnection::establish(&admin).await.expect("connect");
        diesel::sql_query("SELECT pg_terminate_backend($1)")
            .bind::<diesel::sql_types::Integer, _>(pid)
            .execute(&mut admin_conn)
            .await
            .expect("terminate");
        let error = diesel::sql_query("SELECT 1")
            .execute(&mut doomed)
            .await
            .expect_err("terminated");
        assert!(
            matches!(StoreError::from(error), StoreError::Unavailable(_)),
            "a terminated connection is a dependency down, to be retried"
        );
    }

    #[tokio::test]
    async fn a_connection_opens_with_the_limits_in_either_syntax() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        ] {
            let limited = with_dead_peer_limits(url);
            AsyncPgConnection::establish(&limited)
                .await
                .unwrap_or_else(|error| panic!("{limited}: {error}"));
        }
    }
}
