//! Guarantees that hold when a process, Postgres or Redis stalls between two steps of a call.
//! Each interleaving is forced, not hoped for: locks held by the test's own connections,
//! SIGSTOP and SIGCONT of a test-owned Redis or of a replica run as a process of its own.

use std::time::Duration;

use chrono::Utc;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use reservation_svc::domain::Reservations;
use reservation_svc::lock::{LockFallback, LockSettings, SeatLocks};
use reservation_svc::store::Store;
use reservation_svc::wallet_client::Wallet;
use shared::proto::reservation::v1 as pb;
use tonic::Code;

use crate::helpers::{
    RedisServer, ReplicaProcess, TestApp, TestWallet, assert_invariants, reason, spawn_app_with,
};

/// Sessions of the database at `url` waiting for a lock.
pub async fn waiting_for_a_lock(url: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    diesel::sql_query(
        "SELECT COUNT(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
           AND pid <> pg_backend_pid()",
    )
    .get_result::<Count>(&mut conn)
    .await
    .expect("read pg_stat_activity")
    .n
}

/// The backends of the database at `url` in the `pg_stat_activity` state `state`.
async fn backends_in_state(url: &str, state: &str) -> Vec<i32> {
    #[derive(QueryableByName)]
    struct Backend {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    diesel::sql_query(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND state = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<Text, _>(state)
    .load::<Backend>(&mut conn)
    .await
    .expect("read pg_stat_activity")
    .into_iter()
    .map(|backend| backend.pid)
    .collect()
}

/// Polls `check` every 10 ms until it holds; fails after ten seconds, to turn a hang into a
/// failure.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

/// A connection of the test that runs `sql` in a transaction it keeps open (its locks held)
/// until the test commits it.
pub async fn hold_open(url: &str, sql: &str) -> AsyncPgConnection {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    conn.batch_execute(&format!("BEGIN; {sql}"))
        .await
        .expect("the test's transaction");
    conn
}

pub async fn commit(mut conn: AsyncPgConnection) {
    conn.batch_execute("COMMIT").await.expect("commit");
}

async fn status(app: &TestApp, reservation_id: i64) -> String {
    #[derive(QueryableByName)]
    struct Status {
        #[diesel(sql_type = Text)]
        status: String,
    }
    diesel::sql_query("SELECT status FROM reservations WHERE id = $1")
        .bind::<BigInt, _>(reservation_id)
        .get_result::<Status>(&mut app.connect_db().await)
        .await
        .expect("the reservation")
        .status
}

/// A schedule of 10 seats at 100 points whose performance begins at `starts_at`.
async fn schedule_starting(app: &TestApp, starts_at: chrono::DateTime<Utc>) -> i64 {
    let concert = app
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Starting soon".to_owned(),
        })
        .await
        .expect("concert")
        .into_inner();
    app.client()
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp {
                seconds: starts_at.timestamp(),
                nanos: i32::try_from(starts_at.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            seat_count: 10,
            seat_price: 100,
        })
        .await
        .expect("schedule")
        .into_inner()
        .id
}

/// The reconciler of another replica, run by the test when it chooses.
async fn another_replicas_reconciler(app: &TestApp) -> Reservations {
    let store = Store::new(app.db.pool("other-replica"));
    let locks = SeatLocks::connect(LockSettings {
        redis_url: app.config.redis_url.clone(),
        key_prefix: app.config.seat_lock_prefix.clone(),
        ttl: app.config.seat_lock_ttl,
        command_timeout: app.config.redis_command_timeout,
        taken_memory: app.config.seat_taken_memory,
        tls: None,
        fallback: LockFallback::FailClosed,
    })
    .await
    .expect("locks");
    let wallet = Wallet::connect_lazy(&app.config.wallet_endpoint, Duration::from_secs(10), None)
        .expect("wallet");
    Reservations::new(store, locks, wallet, app.config.seat_hold_ttl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_that_began_before_the_performance_never_confirms_a_debit_refunded_after_it() {
    // The pay's settle begins its transaction before the performance and waits for the seat's
    // row, held by another transaction, until the performance has begun. Had it decided with
    // the time its transaction began, it would have confirmed a seat after the start; it
    // reads its clock once it holds the seat, finds the performance begun and refunds.
    let wallet = TestWallet::start().await;
    let endpoint = wallet.endpoint();
    let app = spawn_app_with(|config| {
        config.wallet_endpoint = endpoint;
        config.wallet_timeout = Duration::from_secs(10);
        config.reconcile_interval = Duration::from_secs(3600);
        // The settle waits for the seat past the performance's start.
        config.db.db_lock_timeout = Duration::from_secs(30);
    })
    .await;
    let starts_at = Utc::now() + chrono::Duration::seconds(4);
    let schedule_id = schedule_starting(&app, starts_at).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");

    // The pay's Use waits for the wallet's row; its settle will then wait for the seat's.
    let wallet_row = hold_open(
        wallet.db.url(),
        "SELECT * FROM wallets WHERE user_id = 1 FOR UPDATE",
    )
    .await;
    let mut client = app.client();
    let paying = tokio::spawn(async move {
        client
            .pay_reservation(pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 1,
            })
            .await
    });
    until("the use waits for the wallet row", || async {
        waiting_for_a_lock(wallet.db.url()).await == 1
    })
    .await;
    let seat_row = hold_open(
        app.db.url(),
        &format!(
            "SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 FOR UPDATE"
        ),
    )
    .await;
    commit(wallet_row).await;
    until("the settle waits for the seat", || async {
        waiting_for_a_lock(app.db.url()).await == 1
    })
    .await;
    assert!(Utc::now() < starts_at, "the settle began before the start");

    // The performance begins; then the seat is released to the waiting settle.
    let wait = (starts_at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    commit(seat_row).await;
    let paid = paying.await.expect("pay task");

    assert_invariants(&app, &wallet).await;
    assert_eq!(status(&app, held.id).await, "EXPIRED");
    assert_eq!(wallet.balance(1).await, 1_000, "the debit given back");
    let refused = paid.expect_err("no seat for a debit after the start");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}

/// A payment through replica 1 (a process of its own) whose `Use` has been answered and whose
/// settle has just been given the seat, released by the test, with replica 1 frozen (SIGSTOP)
/// before it could see that: its performance begins four seconds after the set-up began.
struct FrozenSettle {
    wallet: TestWallet,
    app: TestApp,
    replica: ReplicaProcess,
    reservation: i64,
    starts_at: chrono::DateTime<Utc>,
    paying: tokio::task::JoinHandle<Result<tonic::Response<pb::Reservation>, tonic::Status>>,
}

/// Sets up a [`FrozenSettle`] for user 1 with `balance` points (the seat costs 100).
async fn freeze_a_settle_given_the_seat(balance: i64) -> FrozenSettle {
    let wallet = TestWallet::start().await;
    let endpoint = wallet.endpoint();
    let app = spawn_app_with(|config| {
        config.wallet_endpoint = endpoint;
        config.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    let replica = ReplicaProcess::start(
        &app.config,
        &[("WALLET_TIMEOUT", "10s"), ("RECONCILE_INTERVAL", "1h")],
    )
    .await;
    let starts_at = Utc::now() + chrono::Duration::seconds(4);
    let schedule_id = schedule_starting(&app, starts_at).await;
    wallet.charge(1, balance, "top-up").await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");

    let wallet_row = hold_open(
        wallet.db.url(),
        "SELECT * FROM wallets WHERE user_id = 1 FOR UPDATE",
    )
    .await;
    let mut client = replica.client().await;
    let paying = tokio::spawn(async move {
        client
            .pay_reservation(pb::PayReservationRequest {
                reservation_id: held.id,
                user_id: 1,
            })
            .await
    });
    until("the use waits for the wallet row", || async {
        waiting_for_a_lock(wallet.db.url()).await == 1
    })
    .await;
    let seat_row = hold_open(
        app.db.url(),
        &format!(
            "SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 FOR UPDATE"
        ),
    )
    .await;
    commit(wallet_row).await;
    until("the settle waits for the seat", || async {
        waiting_for_a_lock(app.db.url()).await == 1
    })
    .await;
    replica.pause();
    commit(seat_row).await;
    FrozenSettle {
        wallet,
        app,
        replica,
        reservation: held.id,
        starts_at,
        paying,
    }
}

/// Waits past the performance's start, then runs another replica's reconciliation: returns
/// how many payments it settled.
async fn reconcile_after_the_start(frozen: &FrozenSettle) -> (Reservations, usize) {
    let wait = (frozen.starts_at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let other = another_replicas_reconciler(&frozen.app).await;
    let reconciled = other
        .reconcile(Duration::ZERO, 10)
        .await
        .expect("a reconciler's round");
    (other, reconciled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_frozen_between_its_settles_lock_and_its_write_decides_on_the_clock_it_locked_with()
 {
    // The use is refused for the balance, so the settle is the full transaction: it has locked
    // the seat and read its clock (before the performance), and the process is frozen before it
    // writes: its transaction holds the seat. The performance begins; replica 2's reconciler
    // cannot decide on the seat meanwhile (it skips what another transaction holds). Replica 1
    // goes on and decides on the clock it read under the lock: back to HELD, not EXPIRED.
    let frozen = freeze_a_settle_given_the_seat(10).await;
    until("the settle's transaction holds the seat", || async {
        backends_in_state(frozen.app.db.url(), "idle in transaction")
            .await
            .len()
            == 1
    })
    .await;
    assert!(
        Utc::now() < frozen.starts_at,
        "the settle read its clock before the start"
    );

    let (other, reconciled) = reconcile_after_the_start(&frozen).await;
    assert_eq!(
        reconciled, 0,
        "the reconciler skips a payment whose seat another transaction holds"
    );

    frozen.replica.resume();
    let refused = frozen
        .paying
        .await
        .expect("pay task")
        .expect_err("refused for the balance");
    assert_eq!(reason(&refused), "INSUFFICIENT_BALANCE", "{refused:?}");
    assert_eq!(status(&frozen.app, frozen.reservation).await, "HELD");
    other
        .reconcile(Duration::ZERO, 10)
        .await
        .expect("reconciled");
    assert_invariants(&frozen.app, &frozen.wallet).await;
    assert_eq!(status(&frozen.app, frozen.reservation).await, "HELD");
    assert_eq!(frozen.wallet.balance(1).await, 10, "nothing debited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debit_confirmed_in_one_statement_is_settled_though_its_replica_froze_once_it_was_sent() {
    // The use debits, so the settle is the one statement that confirms a debit, sent before the
    // test released the seat: its lock, its clock (before the performance) and its writes all
    // run in Postgres, and commit while the process that sent it is frozen. Nothing of it is
    // left holding the seat; after the start, another replica's reconciler finds the payment
    // settled, and replica 1, once it goes on, answers CONFIRMED.
    let frozen = freeze_a_settle_given_the_seat(1_000).await;
    until("the frozen replica's confirmation commits", || async {
        status(&frozen.app, frozen.reservation).await == "CONFIRMED"
    })
    .await;
    assert!(Utc::now() < frozen.starts_at, "confirmed before the start");
    assert!(
        backends_in_state(frozen.app.db.url(), "idle in transaction")
            .await
            .is_empty(),
        "no transaction left open"
    );

    let (_, reconciled) = reconcile_after_the_start(&frozen).await;
    assert_eq!(reconciled, 0, "nothing is left paying");

    frozen.replica.resume();
    let paid = frozen.paying.await.expect("pay task").expect("paid");
    assert_eq!(
        paid.into_inner().status,
        pb::ReservationStatus::Confirmed as i32
    );
    assert_invariants(&frozen.app, &frozen.wallet).await;
    assert_eq!(status(&frozen.app, frozen.reservation).await, "CONFIRMED");
    assert_eq!(frozen.wallet.balance(1).await, 900, "the debit kept, once");
}

/// An app on a Redis of the test's own, with a short command timeout and no memory of marks.
async fn app_on(
    redis: &RedisServer,
    configure: impl FnOnce(&mut reservation_svc::config::Config),
) -> TestApp {
    let url = redis.url();
    spawn_app_with(|config| {
        config.redis_url = url.into();
        config.redis_command_timeout = Duration::from_millis(300);
        config.seat_taken_memory = Duration::ZERO;
        configure(config);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_that_reaches_redis_after_its_hold_gave_up_writes_nothing() {
    for _ in 0..3 {
        let redis = RedisServer::start();
        let app = app_on(&redis, |_| {}).await;
        let schedule_id = app.schedule_with_seats(5).await;
        // Connected, scripts loaded.
        app.hold(9, schedule_id, 5)
            .await
            .expect("a hold with Redis up");
        let written = app.rows_written().await;

        redis.pause();
        let refused = app.hold(1, schedule_id, 1).await.expect_err("Redis paused");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        // Redis wakes up and runs the lock the hold gave up on: it must write nothing.
        redis.resume();
        let key = app.seat_key(schedule_id, 1);
        let client = crate::helpers::redis(&redis.url()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let holder: Option<String> = fred::interfaces::KeysInterface::get(&client, &key)
            .await
            .expect("get");
        assert_eq!(holder, None, "no lock nobody owns");
        assert_eq!(app.rows_written().await, written, "nothing written");
        app.hold(2, schedule_id, 1)
            .await
            .expect("the seat is free at once, not locked for SEAT_LOCK_TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_mark_that_reaches_redis_late_never_outlives_its_hold() {
    for _ in 0..3 {
        let redis = RedisServer::start();
        let app = app_on(&redis, |config| {
            config.seat_hold_ttl = Duration::from_secs(2);
        })
        .await;
        let schedule_id = app.schedule_with_seats(5).await;
        app.hold(9, schedule_id, 5)
            .await
            .expect("a hold with Redis up");

        // The hold takes its lock, then waits for the seat's row; Redis pauses meanwhile, so
        // the mark that follows the commit waits in Redis past the command timeout.
        let seat_row = hold_open(
            app.db.url(),
            &format!(
                "SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 FOR UPDATE"
            ),
        )
        .await;
        let mut client = app.client();
        let holding = tokio::spawn(async move {
            client
                .hold_seat(pb::HoldSeatRequest {
                    user_id: 1,
                    schedule_id,
                    seat_no: 1,
                })
                .await
        });
        until("the hold waits for the seat's row", || async {
            waiting_for_a_lock(app.db.url()).await == 1
        })
        .await;
        redis.pause();
        commit(seat_row).await;
        let held = holding
            .await
            .expect("hold task")
            .expect("held: the mark is only a filter")
            .into_inner();
        // Paused past the command timeout, well within the lock's TTL.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        redis.resume();

        // Past the hold's expiry the seat is free, in Postgres and in Redis alike.
        let expires_at = held.expires_at.expect("expiry");
        let expires_at = chrono::DateTime::from_timestamp(
            expires_at.seconds,
            u32::try_from(expires_at.nanos).unwrap_or(0),
        )
        .expect("a time");
        let wait = (expires_at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        assert_eq!(
            app.seats(schedule_id).await[0].status(),
            pb::SeatStatus::Available
        );
        app.hold(2, schedule_id, 1)
            .await
            .expect("a lapsed hold's seat is not refused by its mark");
    }
}

/// Which of a payment's starts a test runs: the one statement that begins a held
/// reservation's payment (what `begin_pay` tries first), or the full transaction.
#[derive(Debug, Clone, Copy)]
enum Start {
    OneStatement,
    Transaction,
}

impl Start {
    const BOTH: [Self; 2] = [Self::OneStatement, Self::Transaction];

    async fn run(
        self,
        store: &Store,
        reservation: reservation_svc::model::ReservationId,
        owner: reservation_svc::model::UserId,
    ) -> Result<reservation_svc::model::BeginOutcome, reservation_svc::store::StoreError> {
        match self {
            Self::OneStatement => store.begin_pay(reservation, owner).await,
            Self::Transaction => store.begin_pay_in_transaction(reservation, owner).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_takes_its_clock_once_it_holds_the_seats_lock() {
    let app = crate::helpers::spawn_app().await;
    for start in Start::BOTH {
        a_start_decides_on_its_clock_under_the_seats_lock(&app, start).await;
    }
}

async fn a_start_decides_on_its_clock_under_the_seats_lock(app: &TestApp, start: Start) {
    use reservation_svc::model::{BeginOutcome, ReservationId, UserId};

    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        at: chrono::DateTime<Utc>,
    }
    let schedule_id = app.schedule_with_seats(3).await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");
    let mut seat_row = hold_open(
        app.db.url(),
        &format!(
            "SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 FOR UPDATE"
        ),
    )
    .await;
    // A payment's start begins its transaction, then waits for the seat.
    let store = Store::new(app.db.pool("clock-test"));
    let reservation = ReservationId::parse(held.id).expect("an id");
    let owner = UserId::parse(1).expect("a user");
    let beginning = tokio::spawn(async move { start.run(&store, reservation, owner).await });
    until("the payment waits for the seat", || async {
        waiting_for_a_lock(app.db.url()).await == 1
    })
    .await;
    let released_at = diesel::sql_query("SELECT clock_timestamp() AS at")
        .get_result::<At>(&mut seat_row)
        .await
        .expect("the clock")
        .at;
    commit(seat_row).await;
    let begun = beginning.await.expect("task").expect("begun");
    assert!(
        matches!(begun, BeginOutcome::Pay(_)),
        "{start:?}: {begun:?}"
    );

    // The decision's time (written as the reservation's updated_at) is not older than the
    // release of the lock it waited for: its transaction began before, its clock was read after.
    let decided_at = diesel::sql_query("SELECT updated_at AS at FROM reservations WHERE id = $1")
        .bind::<BigInt, _>(held.id)
        .get_result::<At>(&mut app.connect_db().await)
        .await
        .expect("the reservation")
        .at;
    assert!(
        decided_at >= released_at,
        "{start:?}: decided at {decided_at}, before the seat was released at {released_at}"
    );
}

/// A payment's start, sent through `store`, of seat 1 of a fresh schedule held by user 1,
/// waiting for the reservation's row, which the returned connection holds (commit it to let
/// the payment go on).
struct WaitingPayment {
    schedule_id: i64,
    reservation: reservation_svc::model::ReservationId,
    owner: reservation_svc::model::UserId,
    reservation_row: AsyncPgConnection,
    beginning: tokio::task::JoinHandle<
        Result<reservation_svc::model::BeginOutcome, reservation_svc::store::StoreError>,
    >,
}

impl WaitingPayment {
    async fn start(app: &TestApp, store: Store, start: Start) -> Self {
        use reservation_svc::model::{ReservationId, UserId};

        let schedule_id = app.schedule_with_seats(3).await;
        let held = app.hold(1, schedule_id, 1).await.expect("hold");
        let reservation_row = hold_open(
            app.db.url(),
            &format!(
                "SELECT * FROM reservations WHERE id = {} FOR UPDATE",
                held.id
            ),
        )
        .await;
        let reservation = ReservationId::parse(held.id).expect("an id");
        let owner = UserId::parse(1).expect("a user");
        let beginning = tokio::spawn(async move { start.run(&store, reservation, owner).await });
        until("the payment waits for the reservation", || async {
            waiting_for_a_lock(app.db.url()).await == 1
        })
        .await;
        Self {
            schedule_id,
            reservation,
            owner,
            reservation_row,
            beginning,
        }
    }
}

/// Whether another transaction could lock seat 1 of `schedule_id` at once.
async fn seat_free(app: &TestApp, schedule_id: i64) -> bool {
    app.connect_db()
        .await
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 \
             FOR UPDATE NOWAIT; ROLLBACK"
        ))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_locks_the_seat_before_the_reservation() {
    let app = crate::helpers::spawn_app().await;
    let store = Store::new(app.db.pool("lock-order-test"));
    for start in Start::BOTH {
        // Another transaction has the reservation's row, not the seat's.
        let payment = WaitingPayment::start(&app, store.clone(), start).await;
        // While it waits for the reservation, it holds the seat: the order every writer
        // follows.
        assert!(
            !seat_free(&app, payment.schedule_id).await,
            "{start:?}: the seat's row is locked by the payment"
        );
        commit(payment.reservation_row).await;
        let begun = payment.beginning.await.expect("task").expect("begun");
        assert!(
            matches!(begun, reservation_svc::model::BeginOutcome::Pay(_)),
            "{start:?}: {begun:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_dropped_inside_its_transaction_leaves_no_connection_in_it() {
    let app = crate::helpers::spawn_app().await;
    let store = Store::new(app.db.pool("dropped-payment-test"));
    let payment = WaitingPayment::start(&app, store.clone(), Start::Transaction).await;
    // Dropped halfway, inside its transaction.
    payment.beginning.abort();
    assert!(payment.beginning.await.is_err(), "aborted");
    commit(payment.reservation_row).await;

    // Dropped inside its transaction, the connection was closed rather than given back to
    // the pool: Postgres rolls it back once its statement has run, and the seat is free.
    until("no connection is left inside a transaction", || async {
        backends_in_state(app.db.url(), "idle in transaction")
            .await
            .is_empty()
    })
    .await;
    assert!(
        seat_free(&app, payment.schedule_id).await,
        "the seat's lock went with the transaction"
    );
    let begun = store
        .begin_pay(payment.reservation, payment.owner)
        .await
        .expect("begun");
    assert!(
        matches!(begun, reservation_svc::model::BeginOutcome::Pay(_)),
        "{begun:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_waits_for_the_seat_decides_on_what_was_committed_while_it_waited() {
    // Another transaction holds the seat and changes the reservation: another replica's start
    // of the payment (PAYING, attempt 1), or its cancellation. The one-statement start waits
    // for the seat with a snapshot older than that change; it must decide on the committed
    // row: resume attempt 1 (never begin a second), or refuse the cancelled reservation.
    use reservation_svc::model::{BeginOutcome, Refusal, ReservationId, UserId};

    let app = crate::helpers::spawn_app().await;
    let store = Store::new(app.db.pool("waiting-start-test"));
    for (change, paying) in [
        ("status = 'PAYING', pay_attempt = 1", true),
        ("status = 'CANCELLED'", false),
    ] {
        let schedule_id = app.schedule_with_seats(3).await;
        let held = app.hold(1, schedule_id, 1).await.expect("hold");
        let mut other = hold_open(
            app.db.url(),
            &format!(
                "SELECT * FROM seats WHERE schedule_id = {schedule_id} AND seat_no = 1 \
                 FOR UPDATE; UPDATE reservations SET {change} WHERE id = {}",
                held.id
            ),
        )
        .await;
        if !paying {
            other
                .batch_execute(&format!(
                    "UPDATE seats SET status = 'AVAILABLE' \
                     WHERE schedule_id = {schedule_id} AND seat_no = 1"
                ))
                .await
                .expect("free the seat");
        }
        let reservation = ReservationId::parse(held.id).expect("an id");
        let owner = UserId::parse(1).expect("a user");
        let starting = {
            let store = store.clone();
            tokio::spawn(async move { Start::OneStatement.run(&store, reservation, owner).await })
        };
        until("the payment waits for the seat", || async {
            waiting_for_a_lock(app.db.url()).await == 1
        })
        .await;
        commit(other).await;
        let begun = starting.await.expect("task").expect("an answer");
        if paying {
            assert!(
                matches!(&begun, BeginOutcome::Pay(payment) if payment.attempt.get() == 1),
                "resumed attempt 1: {begun:?}"
            );
            assert_eq!(status(&app, held.id).await, "PAYING");
        } else {
            assert!(
                matches!(begun, BeginOutcome::Refused(Refusal::InvalidState)),
                "{begun:?}"
            );
            assert_eq!(status(&app, held.id).await, "CANCELLED");
        }
        #[derive(QueryableByName)]
        struct Attempt {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pay_attempt: i32,
        }
        let attempt = diesel::sql_query("SELECT pay_attempt FROM reservations WHERE id = $1")
            .bind::<BigInt, _>(held.id)
            .get_result::<Attempt>(&mut app.connect_db().await)
            .await
            .expect("the reservation")
            .pay_attempt;
        assert_eq!(
            attempt,
            i32::from(paying),
            "no attempt begun on a stale row"
        );
    }
}
