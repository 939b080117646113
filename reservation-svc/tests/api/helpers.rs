//! One reservation-svc per test, on a free port, against a database and a Redis key prefix of
//! its own; tests that stop Redis get a Redis of their own.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use reservation_svc::config::Config;
use reservation_svc::startup::{Application, MIGRATIONS};
use secrecy::ExposeSecret as _;
use shared::proto::reservation::v1 as pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use shared::service::Service;
use shared::test_support::TestDatabase;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = ReservationServiceClient<Channel>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub client: Client,
    pub db: TestDatabase,
    pub key_prefix: String,
    pub config: Config,
    stop_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A configuration for a test: its database, a key prefix of its own, sweeping left to tests.
pub fn test_config(db: &TestDatabase) -> Config {
    let mut config = Config::defaults();
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    config.database_url = db.url().into();
    // These tests are of other things than security (tests/api/security.rs has those).
    config.security.insecure = true;
    config.seat_lock_prefix = format!("test:{:016x}:", rand::random::<u64>());
    config.sweep_interval = Duration::from_secs(3600);
    // Tests that look at metrics serve them on a port of their own.
    config.metrics_addr = None;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create(
        "reservation",
        MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await;
    let mut config = test_config(&db);
    configure(&mut config);
    let running = launch(config.clone()).await;
    TestApp {
        addr: running.addr,
        metrics_addr: running.metrics_addr,
        client: Client::new(channel(running.addr).await),
        db,
        key_prefix: config.seat_lock_prefix.clone(),
        config,
        stop_tx: Some(running.stop_tx),
        server: Some(running.server),
    }
}

/// Starts one more server with `config` (a second replica, say); stopped when the returned
/// sender is dropped or fired.
pub async fn start(
    config: Config,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
) {
    let running = launch(config).await;
    (running.addr, running.stop_tx, running.server)
}

struct Running {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop_tx: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

async fn launch(config: Config) -> Running {
    let app = Application::build(config)
        .await
        .expect("build the application");
    let addr = app.local_addr().expect("bound address");
    let metrics_addr = app.metrics_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));
    Running {
        addr,
        metrics_addr,
        stop_tx,
        server,
    }
}

/// A hold sent through `client` (one replica among several, say).
pub async fn hold_via(
    mut client: Client,
    user_id: i64,
    schedule_id: i64,
    seat_no: i32,
) -> Result<pb::Reservation, tonic::Status> {
    client
        .hold_seat(pb::HoldSeatRequest {
            user_id,
            schedule_id,
            seat_no,
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the test server")
}

impl TestApp {
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A concert with one schedule of `seat_count` seats at 100 points; returns the schedule id.
    pub async fn schedule_with_seats(&self, seat_count: i32) -> i64 {
        let concert = self
            .client()
            .create_concert(pb::CreateConcertRequest {
                title: "Test concert".to_owned(),
            })
            .await
            .expect("concert")
            .into_inner();
        self.client()
            .create_schedule(pb::CreateScheduleRequest {
                concert_id: concert.id,
                starts_at: Some(prost_types::Timestamp {
                    seconds: 1_900_000_000,
                    nanos: 0,
                }),
                seat_count,
                seat_price: 100,
            })
            .await
            .expect("schedule")
            .into_inner()
            .id
    }

    pub async fn hold(
        &self,
        user_id: i64,
        schedule_id: i64,
        seat_no: i32,
    ) -> Result<pb::Reservation, tonic::Status> {
        hold_via(self.client(), user_id, schedule_id, seat_no).await
    }

    pub async fn cancel(
        &self,
        reservation_id: i64,
        user_id: i64,
    ) -> Result<pb::Reservation, tonic::Status> {
        self.client()
            .cancel_reservation(pb::CancelReservationRequest {
                reservation_id,
                user_id,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The random nonce of a reservation's wallet keys (`None` for a reservation made before
    /// nonces existed).
    pub async fn key_nonce(&self, reservation_id: i64) -> Option<String> {
        key_nonce(&mut self.connect_db().await, reservation_id).await
    }

    /// The wallet key of a reservation's attempt, as the service names it.
    pub async fn use_key(&self, reservation_id: i64, attempt: i32) -> String {
        let nonce = self.key_nonce(reservation_id).await;
        protocol::payment::use_key(
            nonce.as_deref().unwrap_or_default(),
            reservation_id,
            attempt,
        )
    }

    /// The wallet key of a reservation's refund, as the service names it.
    pub async fn refund_key(&self, reservation_id: i64) -> String {
        let nonce = self.key_nonce(reservation_id).await;
        protocol::payment::refund_key(nonce.as_deref().unwrap_or_default(), reservation_id)
    }

    /// The seat's Redis key, as the service names it.
    pub fn seat_key(&self, schedule_id: i64, seat_no: i32) -> String {
        format!("{}seat:{{{schedule_id}}}:{seat_no}", self.key_prefix)
    }

    /// Every seat of the schedule, read page by page.
    pub async fn seats(&self, schedule_id: i64) -> Vec<pb::Seat> {
        let pages = self.seat_pages(schedule_id, 5_000, async |_| {}).await;
        pages.into_iter().flatten().collect()
    }

    /// Every page of the schedule's seats of `page_size`; calls `between` after each page but
    /// the last with the number of pages read so far.
    pub async fn seat_pages(
        &self,
        schedule_id: i64,
        page_size: i32,
        mut between: impl AsyncFnMut(usize),
    ) -> Vec<Vec<pb::Seat>> {
        let mut pages = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client()
                .list_seats(pb::ListSeatsRequest {
                    schedule_id,
                    page_size,
                    page_token,
                })
                .await
                .expect("seats")
                .into_inner();
            pages.push(page.seats);
            if page.next_page_token.is_empty() {
                return pages;
            }
            page_token = page.next_page_token;
            between(pages.len()).await;
        }
    }

    pub async fn reservation(&self, reservation_id: i64) -> pb::Reservation {
        self.client()
            .get_reservation(pb::GetReservationRequest { reservation_id })
            .await
            .expect("reservation")
            .into_inner()
    }

    pub async fn connect_db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(self.db.url())
            .await
            .expect("connect to the test database")
    }

    /// Reservations of the seat in the given status, read from the table.
    pub async fn reservations_in(&self, schedule_id: i64, seat_no: i32, status: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT COUNT(*) AS n FROM reservations \
             WHERE schedule_id = $1 AND seat_no = $2 AND status = $3",
        )
        .bind::<BigInt, _>(schedule_id)
        .bind::<Integer, _>(seat_no)
        .bind::<Text, _>(status)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count reservations")
        .n
    }

    /// Reservations of the whole schedule in the given status, read from the table.
    pub async fn schedule_reservations_in(&self, schedule_id: i64, status: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT COUNT(*) AS n FROM reservations WHERE schedule_id = $1 AND status = $2",
        )
        .bind::<BigInt, _>(schedule_id)
        .bind::<Text, _>(status)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count reservations")
        .n
    }

    /// Rows of every table, to show that a request wrote nothing.
    pub async fn rows_written(&self) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT (SELECT COUNT(*) FROM concerts) + (SELECT COUNT(*) FROM schedules) \
                  + (SELECT COUNT(*) FROM seats) + (SELECT COUNT(*) FROM reservations) \
                  + (SELECT COUNT(*) FROM seats WHERE status <> 'AVAILABLE') AS n",
        )
        .get_result::<Count>(&mut conn)
        .await
        .expect("count rows")
        .n
    }

    /// Runs SQL on the test database.
    pub async fn execute(&self, sql: &str) {
        use diesel_async::SimpleAsyncConnection;
        self.connect_db()
            .await
            .batch_execute(sql)
            .await
            .expect("execute SQL");
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The `ErrorInfo.reason` of an error answer.
pub fn reason(status: &tonic::Status) -> String {
    shared::error::reason_of(status).unwrap_or_default()
}

/// Money matches every reservation's outcome: a confirmed one was debited exactly once among
/// its attempts' keys and not refunded; a cancelled paid one was debited once and refunded once;
/// any other kept nothing. And the wallet's ledger sums to its balances.
pub async fn assert_money_matches_outcomes(app: &TestApp, wallet: &TestWallet) {
    use diesel::QueryableByName;
    use diesel::sql_types::{BigInt, Integer, Nullable, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Integer)]
        pay_attempt: i32,
        #[diesel(sql_type = Nullable<BigInt>)]
        payment_transaction_id: Option<i64>,
        #[diesel(sql_type = BigInt)]
        price: i64,
    }
    #[derive(QueryableByName)]
    struct Movements {
        #[diesel(sql_type = BigInt)]
        uses: i64,
        #[diesel(sql_type = BigInt)]
        refunds: i64,
    }
    #[derive(QueryableByName)]
    struct Mismatches {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut reservations = app.connect_db().await;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, status, pay_attempt, payment_transaction_id, price FROM reservations",
    )
    .load(&mut reservations)
    .await
    .expect("reservations");
    let mut ledger = AsyncPgConnection::establish(wallet.db.url())
        .await
        .expect("wallet db");
    for row in rows {
        let nonce = key_nonce(&mut reservations, row.id).await;
        let keys: Vec<String> = (1..=row.pay_attempt)
            .map(|attempt| {
                protocol::payment::use_key(nonce.as_deref().unwrap_or_default(), row.id, attempt)
            })
            .collect();
        let movements: Movements = diesel::sql_query(
            // A key is stored under its caller ('<owner> <key>'): compared as the caller sent it.
            "SELECT COUNT(*) FILTER (WHERE kind = 'USE' \
                                       AND substring(idempotency_key FROM '[^ ]*$') = ANY($1)) AS uses, \
                    COUNT(*) FILTER (WHERE kind = 'REFUND' AND reference = ANY($1)) AS refunds \
             FROM wallet_transactions",
        )
        .bind::<diesel::sql_types::Array<Text>, _>(&keys)
        .get_result(&mut ledger)
        .await
        .expect("movements");
        let expected = match (row.status.as_str(), row.payment_transaction_id) {
            // A free seat takes no money.
            _ if row.price == 0 => (0, 0),
            ("CONFIRMED", _) => (1, 0),
            ("CANCELLED", Some(_)) => (1, 1),
            _ => (movements.refunds, movements.refunds),
        };
        assert_eq!(
            (movements.uses, movements.refunds),
            expected,
            "reservation {} is {} after {} attempts",
            row.id,
            row.status,
            row.pay_attempt
        );
    }
    let mismatches: Mismatches = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM wallets w \
         WHERE w.balance <> (SELECT COALESCE(SUM(delta), 0) FROM wallet_transactions t \
                             WHERE t.user_id = w.user_id)",
    )
    .get_result(&mut ledger)
    .await
    .expect("ledger invariant");
    assert_eq!(mismatches.n, 0, "every balance equals its ledger sum");
}

/// The nonce of a reservation's wallet keys, read from its row.
pub async fn key_nonce(conn: &mut AsyncPgConnection, reservation_id: i64) -> Option<String> {
    #[derive(QueryableByName)]
    struct Nonce {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        payment_key_nonce: Option<String>,
    }
    diesel::sql_query("SELECT payment_key_nonce FROM reservations WHERE id = $1")
        .bind::<BigInt, _>(reservation_id)
        .get_result::<Nonce>(conn)
        .await
        .expect("the reservation's nonce")
        .payment_key_nonce
}

/// The guarantees, read straight from both databases once nothing runs: at most one active
/// reservation per seat; a seat SOLD exactly when one reservation of it is CONFIRMED, HELD
/// exactly when one is HELD or PAYING; nothing left PAYING; and the money of
/// [`assert_money_matches_outcomes`].
pub async fn assert_invariants(app: &TestApp, wallet: &TestWallet) {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = app.connect_db().await;
    let mut count = async |sql: &str| {
        diesel::sql_query(sql)
            .get_result::<Count>(&mut conn)
            .await
            .expect("count")
            .n
    };
    let doubly_booked = count(
        "SELECT COUNT(*) AS n FROM (SELECT 1 FROM reservations \
             WHERE status IN ('HELD', 'PAYING', 'CONFIRMED') \
             GROUP BY schedule_id, seat_no HAVING COUNT(*) > 1) AS seats",
    )
    .await;
    assert_eq!(doubly_booked, 0, "at most one active reservation per seat");
    let out_of_step = count(
        "SELECT COUNT(*) AS n FROM seats s LEFT JOIN reservations r \
           ON r.schedule_id = s.schedule_id AND r.seat_no = s.seat_no \
          AND r.status IN ('HELD', 'PAYING', 'CONFIRMED') \
         WHERE s.status <> CASE r.status WHEN 'CONFIRMED' THEN 'SOLD' \
                                         WHEN 'HELD' THEN 'HELD' WHEN 'PAYING' THEN 'HELD' \
                                         ELSE 'AVAILABLE' END",
    )
    .await;
    assert_eq!(out_of_step, 0, "every seat reads as its reservation");
    let paying = count("SELECT COUNT(*) AS n FROM reservations WHERE status = 'PAYING'").await;
    assert_eq!(paying, 0, "nothing left PAYING");
    assert_money_matches_outcomes(app, wallet).await;
}

/// A Redis server of this test's own, on a free port, that the test may stop and restart.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Where a server that keeps its data across restarts writes its append-only file.
    data_dir: Option<std::path::PathBuf>,
}

/// A free port for a server that a test stops and restarts on the same port. It comes from
/// below Linux's ephemeral range (32768-60999), so neither a listener on port 0 nor an outgoing
/// connection can take it while the server is down; and no two servers of this process get
/// the same one.
pub fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU16> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(20_000 + rand::random::<u16>() % 10_000));
    loop {
        let port = next.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_768, "out of restartable ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self {
            port: restartable_port(),
            child: None,
            data_dir: None,
        };
        server.restart();
        server
    }

    /// A server that writes every command to its append-only file before answering, so a
    /// restart finds every key as it was.
    #[allow(
        dead_code,
        reason = "tests/otlp.rs shares these helpers and does not use it"
    )]
    pub fn start_persistent() -> Self {
        let data_dir =
            std::env::temp_dir().join(format!("redis-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&data_dir).expect("a data directory");
        let mut server = Self {
            port: restartable_port(),
            child: None,
            data_dir: Some(data_dir),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.data_dir {
            Some(dir) => command
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(dir),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and commands wait unanswered, to
    /// be run when it is resumed, as in a long GC-like pause or a stalled host.
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("a running redis-server"), "STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then runs the commands that waited.
    pub fn resume(&self) {
        signal(self.child.as_ref().expect("a running redis-server"), "CONT");
    }
}

/// Sends `SIG<name>` to a child process of the test.
pub fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {}", child.id());
}

/// A reservation-svc replica run from its binary, as a process of its own the test may pause
/// (SIGSTOP) between any two steps of a call, with `config`'s database, Redis and wallet.
pub struct ReplicaProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl ReplicaProcess {
    pub async fn start(config: &Config, extra_env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], restartable_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_reservation-svc"))
            .env("RESERVATION_LISTEN_ADDR", addr.to_string())
            .env(
                "RESERVATION_DATABASE_URL",
                config.database_url.expose_secret(),
            )
            .env("RESERVATION_METRICS_ADDR", "")
            .env("REDIS_URL", config.redis_url.expose_secret())
            .env("SEAT_LOCK_PREFIX", &config.seat_lock_prefix)
            .env("WALLET_ENDPOINT", &config.wallet_endpoint)
            .env("INSECURE", "true")
            .env("RUST_LOG", "warn")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("start reservation-svc");
        // Stopped by its drop, whatever happens next.
        let replica = Self { addr, child };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reservation-svc did not start on {addr}");
    }

    pub async fn client(&self) -> Client {
        Client::new(channel(self.addr).await)
    }

    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// Stops it as an orchestrator does (SIGTERM) and waits until it has exited.
    #[allow(dead_code, reason = "tests/otlp.rs uses it, the api tests do not")]
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for reservation-svc") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // Exited already (terminated by the test).
            return;
        }
        signal(&self.child, "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "CONT");
        }
        self.stop();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A client of the machine's (or a test's) Redis, for looking at and tampering with keys.
pub async fn redis(url: &str) -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(url).expect("redis url"),
    )
    .build()
    .expect("redis client");
    client.init().await.expect("connect to redis");
    client
}

/// A wallet-svc of this test's own, on a port that stays its own across a stop and a restart.
pub struct TestWallet {
    pub addr: SocketAddr,
    pub db: TestDatabase,
    stop_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWallet {
    pub async fn start() -> Self {
        let db = TestDatabase::create(
            "wallet",
            wallet_svc::startup::MIGRATIONS,
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wallet-svc/migrations"),
        )
        .await;
        let mut wallet = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], restartable_port())),
            db,
            stop_tx: None,
            server: None,
        };
        wallet.restart().await;
        wallet
    }

    /// The endpoint reservation-svc is configured with.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts it (again), on the port it had.
    pub async fn restart(&mut self) {
        let mut config = wallet_svc::config::Config::defaults();
        config.listen_addr = self.addr;
        config.database_url = self.db.url().into();
        config.metrics_addr = None;
        config.security.insecure = true;
        let app = wallet_svc::startup::Application::build(config)
            .await
            .expect("build wallet-svc");
        self.addr = app.local_addr().expect("bound address");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        self.server = Some(tokio::spawn(app.run_until_stopped(async {
            let _ = stop_rx.await;
        })));
        self.stop_tx = Some(stop_tx);
    }

    pub async fn stop(&mut self) {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub async fn client(&self) -> WalletClient {
        WalletClient::new(channel(self.addr).await)
    }

    pub async fn charge(&self, user_id: i64, amount: i64, key: &str) {
        self.client()
            .await
            .charge(wallet_pb::ChargeRequest {
                user_id,
                amount,
                idempotency_key: key.to_owned(),
            })
            .await
            .expect("charge");
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        self.client()
            .await
            .get_balance(wallet_pb::GetBalanceRequest { user_id })
            .await
            .expect("balance")
            .into_inner()
            .balance
    }

    /// The user's ledger, newest first.
    pub async fn ledger(&self, user_id: i64) -> Vec<wallet_pb::WalletTransaction> {
        self.client()
            .await
            .list_transactions(wallet_pb::ListTransactionsRequest {
                user_id,
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("ledger")
            .into_inner()
            .transactions
    }
}

impl Drop for TestWallet {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub type WalletClient =
    shared::proto::wallet::v1::wallet_service_client::WalletServiceClient<Channel>;
use shared::proto::wallet::v1 as wallet_pb;
