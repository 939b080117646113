//! One wallet-svc per test, on a free port, against a database of its own.

use std::net::SocketAddr;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use shared::service::Service;
use shared::test_support::TestDatabase;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use wallet_svc::config::Config;
use wallet_svc::startup::{Application, MIGRATIONS};

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub client: WalletServiceClient<Channel>,
    pub db: TestDatabase,
    stop_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server with the default configuration, changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create(
        "wallet",
        MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await;
    let mut config = Config::defaults();
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    config.database_url = db.url().into();
    // These tests are of other things than security (tests/api/security.rs has those).
    config.security.insecure = true;
    // Tests that look at metrics serve them on a port of their own.
    config.metrics_addr = None;
    configure(&mut config);
    let insecure = config.security.insecure;

    let app = Application::build(config)
        .await
        .expect("build the application");
    let addr = app.local_addr().expect("bound address");
    let metrics_addr = app.metrics_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));
    // A secure server's tests make clients of their own (tests/api/security.rs).
    let client = if insecure {
        WalletServiceClient::new(channel(addr).await)
    } else {
        WalletServiceClient::new(
            Channel::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_lazy(),
        )
    };
    TestApp {
        addr,
        metrics_addr,
        client,
        db,
        stop_tx: Some(stop_tx),
        server: Some(server),
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the test server")
}

impl TestApp {
    pub fn client(&self) -> WalletServiceClient<Channel> {
        self.client.clone()
    }

    /// Stops the server as SIGTERM would, and waits until it has drained.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub async fn charge(
        &self,
        user_id: i64,
        amount: i64,
        key: &str,
    ) -> Result<pb::WalletTransaction, tonic::Status> {
        let request = pb::ChargeRequest {
            user_id,
            amount,
            idempotency_key: key.to_owned(),
        };
        self.client()
            .charge(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn use_points(
        &self,
        user_id: i64,
        amount: i64,
        key: &str,
    ) -> Result<pb::WalletTransaction, tonic::Status> {
        let request = pb::UseRequest {
            user_id,
            amount,
            idempotency_key: key.to_owned(),
            reference: format!("order-{key}"),
        };
        self.client()
            .r#use(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refund(
        &self,
        user_id: i64,
        key: &str,
        use_key: &str,
    ) -> Result<pb::WalletTransaction, tonic::Status> {
        let request = pb::RefundRequest {
            user_id,
            idempotency_key: key.to_owned(),
            use_idempotency_key: use_key.to_owned(),
        };
        self.client()
            .refund(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn balance(&self, user_id: i64) -> i64 {
        self.client()
            .get_balance(pb::GetBalanceRequest { user_id })
            .await
            .expect("balance")
            .into_inner()
            .balance
    }

    pub async fn connect_db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(self.db.url())
            .await
            .expect("connect to the test database")
    }

    /// The user's balance, the signed sum of its ledger and the ledger's row count, read
    /// straight from the tables.
    pub async fn ledger(&self, user_id: i64) -> Ledger {
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT COALESCE((SELECT balance FROM wallets WHERE user_id = $1), 0) AS balance, \
                    COALESCE(SUM(delta), 0)::BIGINT AS ledger_sum, \
                    COUNT(*) AS rows \
             FROM wallet_transactions WHERE user_id = $1",
        )
        .bind::<BigInt, _>(user_id)
        .get_result(&mut conn)
        .await
        .expect("read the ledger")
    }

    /// Asserts the ledger invariant for the user and returns the ledger.
    pub async fn assert_ledger_matches_balance(&self, user_id: i64) -> Ledger {
        let ledger = self.ledger(user_id).await;
        assert_eq!(
            ledger.balance, ledger.ledger_sum,
            "balance must equal the ledger sum"
        );
        ledger
    }

    /// Rows in every table, to show that a request wrote nothing.
    pub async fn rows_written(&self) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            rows: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT (SELECT COUNT(*) FROM wallets) + (SELECT COUNT(*) FROM wallet_transactions) \
                    + (SELECT COUNT(*) FROM wallet_refusals) AS rows",
        )
        .get_result::<Count>(&mut conn)
        .await
        .expect("count rows")
        .rows
    }

    /// Sessions of this test's database in the given `pg_stat_activity` state.
    pub async fn sessions_in_state(&self, state: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            sessions: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT COUNT(*) AS sessions FROM pg_stat_activity \
             WHERE datname = $1 AND state = $2 AND pid <> pg_backend_pid()",
        )
        .bind::<Text, _>(self.db.name())
        .bind::<Text, _>(state)
        .get_result::<Count>(&mut conn)
        .await
        .expect("read pg_stat_activity")
        .sessions
    }

    /// Sessions of this test's database waiting for a lock (a wallet's row lock, say).
    pub async fn sessions_waiting_for_a_lock(&self) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            sessions: i64,
        }
        let mut conn = self.connect_db().await;
        diesel::sql_query(
            "SELECT COUNT(*) AS sessions FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        )
        .bind::<Text, _>(self.db.name())
        .get_result::<Count>(&mut conn)
        .await
        .expect("read pg_stat_activity")
        .sessions
    }

    /// Takes the row lock of `user_id`'s wallet on a connection of its own, so that the
    /// balance changes of that user wait, until the returned connection commits.
    pub async fn lock_wallet(&self, user_id: i64) -> AsyncPgConnection {
        use diesel_async::SimpleAsyncConnection;
        let mut blocker = self.connect_db().await;
        blocker
            .batch_execute(&format!(
                "BEGIN; SELECT * FROM wallets WHERE user_id = {user_id} FOR UPDATE"
            ))
            .await
            .expect("lock the wallet");
        blocker
    }

    /// Waits until `count` sessions wait for a lock; fails after a thousand looks (over ten
    /// seconds), to turn a hang into a failure.
    pub async fn until_waiting_for_a_lock(&self, count: i64) {
        for _ in 0..1000 {
            if self.sessions_waiting_for_a_lock().await >= count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{count} sessions never waited for a lock");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[derive(Debug, QueryableByName, PartialEq, Eq)]
pub struct Ledger {
    #[diesel(sql_type = BigInt)]
    pub balance: i64,
    #[diesel(sql_type = BigInt)]
    pub ledger_sum: i64,
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
}

/// The `ErrorInfo.reason` of an error answer.
pub fn reason(status: &tonic::Status) -> String {
    shared::error::reason_of(status).unwrap_or_default()
}
