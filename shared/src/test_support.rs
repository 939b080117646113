//! Per-test Postgres databases, cloned from a migrated template, so integration tests run in
//! parallel against the real server without seeing each other's rows.
//!
//! The template is named after a fingerprint of the migration files: it is built once (under an
//! advisory lock, so concurrent test processes agree) and reused until a migration changes. Each test
//! database is dropped when its [`TestDatabase`] is dropped; those of test processes that died
//! are dropped by the next run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;

/// Where tests create their databases; override with `TEST_DATABASE_ADMIN_URL`.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A freshly migrated database of its own, dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDatabase {
    /// Clones a database from the template of `migrations` (embedded from `migrations_dir`),
    /// building the template first if no test process has built it yet. `prefix` names the
    /// service (`wallet`).
    pub async fn create(
        prefix: &str,
        migrations: EmbeddedMigrations,
        migrations_dir: &Path,
    ) -> Self {
        let admin_url = admin_url();
        let template = format!("{prefix}_tpl_{:016x}", fingerprint(migrations_dir));
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .expect("connect to the admin database (is Postgres running?)");
        ensure_template(&mut admin, &admin_url, prefix, &template, migrations).await;
        drop_abandoned_databases(&mut admin, prefix).await;

        let name = Self::new_name(prefix);
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        let mut attempts = 0;
        // Postgres refuses to clone a template while another session is briefly connected to
        // it (another process checking it); that passes quickly.
        while let Err(error) = admin.batch_execute(&create).await {
            attempts += 1;
            assert!(attempts < 100, "cannot create {name}: {error}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            url: database_url(&admin_url, &name),
            name,
        }
    }

    /// An empty database of its own, not migrated: what a first deployment starts on.
    /// `prefix` names the service (`wallet`).
    pub async fn empty(prefix: &str) -> Self {
        let admin_url = admin_url();
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .expect("connect to the admin database (is Postgres running?)");
        drop_abandoned_databases(&mut admin, prefix).await;
        let name = Self::new_name(prefix);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|error| panic!("cannot create {name}: {error}"));
        Self {
            url: database_url(&admin_url, &name),
            name,
        }
    }

    fn new_name(prefix: &str) -> String {
        format!(
            "{prefix}_test_{}_{}_{:04x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u16>()
        )
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A small pool of this database, for a test that drives a store directly.
    pub fn pool(&self, application_name: &str) -> crate::db::PgPool {
        let settings = crate::db::PoolSettings {
            max_size: 2,
            application_name: application_name.to_owned(),
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
        };
        crate::db::build_pool(&self.url, &settings).expect("a pool of the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime, which cannot be blocked on; a thread of its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url()).await {
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

async fn ensure_template(
    admin: &mut AsyncPgConnection,
    admin_url: &str,
    prefix: &str,
    template: &str,
    migrations: EmbeddedMigrations,
) {
    if database_exists(admin, template).await {
        return;
    }
    let lock = format!("SELECT pg_advisory_lock(hashtext('{template}'))");
    admin.batch_execute(&lock).await.expect("template lock");
    if !database_exists(admin, template).await {
        // Built under a temporary name and renamed at the end, so a run that dies half-way
        // never leaves a template that looks complete.
        let building = format!("{template}_building");
        for statement in [
            format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{building}\""),
        ] {
            admin
                .batch_execute(&statement)
                .await
                .expect("create the template database");
        }
        crate::db::run_migrations(&database_url(admin_url, &building), migrations)
            .await
            .expect("migrate the template database");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
            ))
            .await
            .expect("publish the template database");
        // Templates of earlier migrations are of no more use.
        for stale in database_names(admin, &format!("{prefix}_tpl_")).await {
            if stale != template && !stale.ends_with("_building") {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{stale}\""))
                    .await;
            }
        }
    }
    let unlock = format!("SELECT pg_advisory_unlock(hashtext('{template}'))");
    admin.batch_execute(&unlock).await.expect("template unlock");
}

async fn database_exists(admin: &mut AsyncPgConnection, name: &str) -> bool {
    database_names(admin, name)
        .await
        .iter()
        .any(|found| found == name)
}

/// Names of databases starting with `prefix`.
async fn database_names(admin: &mut AsyncPgConnection, prefix: &str) -> Vec<String> {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    diesel::sql_query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind::<diesel::sql_types::Text, _>(prefix)
        .load::<Row>(admin)
        .await
        .expect("list databases")
        .into_iter()
        .map(|row| row.datname)
        .collect()
}

/// Drops the test databases of test processes of this machine that are no longer running.
async fn drop_abandoned_databases(admin: &mut AsyncPgConnection, prefix: &str) {
    let test_prefix = format!("{prefix}_test_");
    for name in database_names(admin, &test_prefix).await {
        let pid = name[test_prefix.len()..]
            .split('_')
            .next()
            .unwrap_or_default();
        let alive = std::path::Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// FNV-1a over the path and contents of every file below `dir`, in path order.
fn fingerprint(dir: &Path) -> u64 {
    fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in &files {
        let contents = std::fs::read(path).unwrap_or_default();
        let relative = path.strip_prefix(dir).unwrap_or(path);
        for byte in relative.to_string_lossy().bytes().chain(contents) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let base = admin_url.split('?').next().unwrap_or(admin_url);
    match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{name}", &base[..slash]),
        _ => format!("{base}/{name}"),
    }
}

/// Sends `GET path` to the HTTP/1.1 server at `addr`; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read the response");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// The value of the series of `name` whose labels include every one of `labels`, in the
/// Prometheus text `exposition`; 0 when there is none. Several matching series are added up.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_values(exposition, name, labels).sum()
}

/// The value of the first series of `name` whose labels include every one of `labels`, in the
/// Prometheus text `exposition`, or `None` when the text lists none.
pub fn listed_metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_values(exposition, name, labels).next()
}

/// The values of the series of `name` whose labels include every one of `labels`.
fn metric_values<'a>(
    exposition: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels.iter().all(|(label, wanted)| {
                    label_pairs(series_labels).any(|pair| pair == format!("{label}=\"{wanted}\""))
                });
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
}

/// The `label="value"` pairs of a series, split at the commas between them: a value may hold
/// commas of its own (`what="client TLS CA, certificate and key"`).
fn label_pairs(labels: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    labels
        .split(move |c: char| {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => return true,
                _ => {}
            }
            false
        })
        .filter(|pair| !pair.is_empty())
}

/// Starts two processes of `binary migrate` on one empty database at once (its URL in
/// `url_variable`), as two replicas of a first deployment start, and checks that they take
/// turns: both wait while the migration lock is held, then both succeed, and every embedded
/// migration was applied exactly once.
pub async fn assert_replicas_migrate_one_database_in_turn(
    prefix: &str,
    binary: &str,
    url_variable: &str,
    migrations: EmbeddedMigrations,
) {
    use diesel::migration::MigrationSource;
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    async fn count(conn: &mut AsyncPgConnection, query: &str) -> i64 {
        diesel::sql_query(query)
            .get_result::<Count>(conn)
            .await
            .unwrap_or_else(|error| panic!("{query}: {error}"))
            .count
    }

    let db = TestDatabase::empty(prefix).await;
    let mut holder = AsyncPgConnection::establish(db.url())
        .await
        .expect("connect to the new database");
    let lock = crate::db::MIGRATION_LOCK;
    // Held here first, so that both processes surely reach the lock before either migrates.
    holder
        .batch_execute(&format!("SELECT pg_advisory_lock({lock})"))
        .await
        .expect("take the migration lock");

    let mut replicas: Vec<tokio::process::Child> = (0..2)
        .map(|_| {
            tokio::process::Command::new(binary)
                .arg("migrate")
                .env(url_variable, db.url())
                .env("RUST_LOG", "warn")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|error| panic!("start {binary} migrate: {error}"))
        })
        .collect();

    // Both connected and waiting for the lock: two advisory lock requests not granted.
    let waiting = format!(
        "SELECT count(*) AS count FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = {} AND objid = {}",
        lock >> 32,
        lock & 0xffff_ffff
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&mut holder, &waiting).await < 2 {
        for replica in &mut replicas {
            if let Some(status) = replica.try_wait().expect("a replica's status") {
                panic!("a replica ended ({status}) instead of waiting for the migration lock");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replicas did not both wait for the migration lock within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let migrated_early = count(
        &mut holder,
        "SELECT count(*) AS count FROM pg_tables WHERE tablename = '__diesel_schema_migrations'",
    )
    .await;
    assert_eq!(migrated_early, 0, "a replica migrated without the lock");

    holder
        .batch_execute(&format!("SELECT pg_advisory_unlock({lock})"))
        .await
        .expect("release the migration lock");
    for replica in replicas {
        let output = tokio::time::timeout(Duration::from_secs(60), replica.wait_with_output())
            .await
            .expect("a replica finished migrating within 60 s")
            .expect("a replica's output");
        assert!(
            output.status.success(),
            "a replica failed to migrate ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&migrations)
        .expect("the embedded migrations")
        .len();
    let applied = count(
        &mut holder,
        "SELECT count(*) AS count FROM __diesel_schema_migrations",
    )
    .await;
    let distinct = count(
        &mut holder,
        "SELECT count(DISTINCT version) AS count FROM __diesel_schema_migrations",
    )
    .await;
    assert_eq!(
        (applied, distinct),
        (embedded as i64, embedded as i64),
        "every migration applied once"
    );
}

/// Asserts that the Prometheus `text` of a fresh process lists `ticketing_reloads_total` at 0
/// for each of `whats` (the file sets it reloads) and both results.
pub fn assert_reloads_listed_at_zero(text: &str, whats: &[&str]) {
    for what in whats {
        for result in crate::metrics::RELOAD_RESULTS {
            assert_eq!(
                listed_metric(
                    text,
                    crate::metrics::RELOADS,
                    &[("what", what), ("result", result)]
                ),
                Some(0.0),
                "{what} {result}:\n{text}"
            );
        }
    }
}
