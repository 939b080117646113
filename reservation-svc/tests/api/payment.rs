//! Paying with wallet points, with both services really running: exactly one debit per paid
//! reservation, whatever the retries, races and outages.

use std::time::Duration;

use futures::future::join_all;
use shared::proto::reservation::v1 as pb;
use shared::proto::wallet::v1::TransactionKind;
use tonic::Code;

use crate::helpers::{TestApp, TestWallet, assert_money_matches_outcomes, reason, spawn_app_with};

async fn app_paying_through(wallet: &TestWallet) -> TestApp {
    app_paying_through_with(wallet, |_| {}).await
}

/// [`app_paying_through`], with the rest of its configuration set by `configure`.
async fn app_paying_through_with(
    wallet: &TestWallet,
    configure: impl FnOnce(&mut reservation_svc::config::Config),
) -> TestApp {
    let endpoint = wallet.endpoint();
    spawn_app_with(|config| {
        config.wallet_endpoint = endpoint;
        // Wide enough that a busy machine (tests run side by side on two cores) answers dozens
        // of concurrent uses within it: these tests count exact outcomes, and a use that timed
        // out is answered UNAVAILABLE. A stopped wallet refuses the connection at once.
        config.wallet_timeout = Duration::from_secs(10);
        configure(config);
    })
    .await
}

/// An app whose reconciler takes payments left `PAYING` for `grace`, checking five times as
/// often.
async fn app_reconciling_through(wallet: &TestWallet, grace: Duration) -> TestApp {
    let endpoint = wallet.endpoint();
    spawn_app_with(|config| {
        config.wallet_endpoint = endpoint;
        config.wallet_timeout = Duration::from_secs(1);
        config.reconcile_interval = grace / 5;
        config.reconcile_grace = grace;
    })
    .await
}

/// The reservation's status once it has left `PAYING` (or after ten seconds).
async fn status_after_paying(app: &TestApp, reservation_id: i64) -> pb::ReservationStatus {
    let mut status = pb::ReservationStatus::Paying;
    for _ in 0..100 {
        status = app.reservation(reservation_id).await.status();
        if status != pb::ReservationStatus::Paying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

async fn pay(
    app: &TestApp,
    reservation_id: i64,
    user_id: i64,
) -> Result<pb::Reservation, tonic::Status> {
    app.client()
        .pay_reservation(pb::PayReservationRequest {
            reservation_id,
            user_id,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Uses of the user's ledger (debits), as (amount, key).
async fn debits(wallet: &TestWallet, user_id: i64) -> Vec<(i64, String)> {
    wallet
        .ledger(user_id)
        .await
        .into_iter()
        .filter(|t| t.kind() == TransactionKind::Use)
        .map(|t| (t.amount, t.idempotency_key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_hold_is_confirmed_and_debited_once() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 3).await.expect("hold");

    let paid = pay(&app, held.id, 1).await.expect("pay");

    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    assert!(paid.payment_transaction_id > 0);
    assert_eq!(wallet.balance(1).await, 900);
    assert_eq!(
        debits(&wallet, 1).await,
        [(100, app.use_key(held.id, 1).await)]
    );
    assert_eq!(
        app.seats(schedule_id).await[2].status(),
        pb::SeatStatus::Sold
    );
    let again = pay(&app, held.id, 1)
        .await
        .expect("a retried pay is answered");
    assert_eq!(again, paid);
    assert_eq!(wallet.balance(1).await, 900);

    let stranger = pay(&app, held.id, 2).await.expect_err("not theirs");
    // Someone else's reservation does not exist for them.
    assert_eq!(stranger.code(), Code::NotFound);
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_pays_of_one_reservation_debit_once() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 1).await.expect("hold");

    let pays = (0..100).map(|_| pay(&app, held.id, 1));
    let answers = join_all(pays).await;

    let confirmed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert_eq!(confirmed.len(), 100, "{answers:?}");
    assert!(
        confirmed
            .iter()
            .all(|r| r.status() == pb::ReservationStatus::Confirmed)
    );
    assert_eq!(wallet.balance(1).await, 900);
    assert_eq!(debits(&wallet, 1).await.len(), 1);
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_holds_with_funds_for_seven_confirm_exactly_seven() {
    let wallet = TestWallet::start().await;
    // Thirty holds of one user on one schedule: the hold limit raised to let them all in.
    let app = app_paying_through_with(&wallet, |config| {
        config.max_active_holds_per_user = std::num::NonZeroU32::new(30).expect("positive");
    })
    .await;
    let schedule_id = app.schedule_with_seats(30).await;
    wallet.charge(1, 700, "top-up").await;
    let mut holds = Vec::new();
    for seat_no in 1..=30 {
        holds.push(app.hold(1, schedule_id, seat_no).await.expect("hold").id);
    }

    let answers = join_all(holds.iter().map(|&id| pay(&app, id, 1))).await;

    let confirmed = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter(|s| s.code() == Code::FailedPrecondition && reason(s) == "INSUFFICIENT_BALANCE")
        .count();
    assert_eq!((confirmed, refused), (7, 23), "{answers:?}");
    assert_eq!(wallet.balance(1).await, 0);
    assert_eq!(debits(&wallet, 1).await.len(), 7);
    assert_eq!(
        app.schedule_reservations_in(schedule_id, "CONFIRMED").await,
        7
    );
    assert_eq!(app.schedule_reservations_in(schedule_id, "HELD").await, 23);
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_pay_after_a_top_up_debits_once_under_a_new_attempt() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 50, "top-up-1").await;
    let held = app.hold(1, schedule_id, 2).await.expect("hold");

    let refused = pay(&app, held.id, 1).await.expect_err("50 < 100");
    assert_eq!(reason(&refused), "INSUFFICIENT_BALANCE");
    assert_eq!(
        app.reservation(held.id).await.status(),
        pb::ReservationStatus::Held
    );

    wallet.charge(1, 100, "top-up-2").await;
    let paid = pay(&app, held.id, 1)
        .await
        .expect("paid on the second attempt");

    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    assert_eq!(wallet.balance(1).await, 50);
    assert_eq!(
        debits(&wallet, 1).await,
        [(100, app.use_key(held.id, 2).await)]
    );
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_paid_reservation_twice_and_concurrently_refunds_once() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 5).await.expect("hold");
    pay(&app, held.id, 1).await.expect("pay");

    let cancels = (0..10).map(|_| app.cancel(held.id, 1));
    let answers = join_all(cancels).await;
    let again = app.cancel(held.id, 1).await.expect("cancel again");

    assert!(
        answers.iter().all(|a| a
            .as_ref()
            .is_ok_and(|r| r.status() == pb::ReservationStatus::Cancelled)),
        "{answers:?}"
    );
    assert_eq!(again.status(), pb::ReservationStatus::Cancelled);
    assert_eq!(wallet.balance(1).await, 1_000, "refunded in full");
    let refunds = wallet
        .ledger(1)
        .await
        .into_iter()
        .filter(|t| t.kind() == TransactionKind::Refund)
        .count();
    assert_eq!(refunds, 1);
    assert_eq!(
        app.seats(schedule_id).await[4].status(),
        pb::SeatStatus::Available
    );
    app.hold(2, schedule_id, 5)
        .await
        .expect("the seat is for sale again");
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pay_while_the_wallet_is_down_stays_paying_and_a_retry_confirms_it_once() {
    let mut wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 6).await.expect("hold");

    wallet.stop().await;
    let unavailable = pay(&app, held.id, 1).await.expect_err("no wallet");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert_eq!(
        app.reservation(held.id).await.status(),
        pb::ReservationStatus::Paying
    );
    let cancel_while_paying = app.cancel(held.id, 1).await.expect_err("settle first");
    assert_eq!(reason(&cancel_while_paying), "INVALID_STATE");

    wallet.restart().await;
    let mut paid = None;
    for _ in 0..50 {
        if let Ok(reservation) = pay(&app, held.id, 1).await {
            paid = Some(reservation);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paid = paid.expect("a retry once the wallet is back confirms");
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    assert_eq!(wallet.balance(1).await, 900);
    assert_eq!(
        debits(&wallet, 1).await,
        [(100, app.use_key(held.id, 1).await)]
    );
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_finishes_a_payment_left_paying_while_the_wallet_was_down() {
    let mut wallet = TestWallet::start().await;
    let app = app_reconciling_through(&wallet, Duration::from_millis(200)).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 8).await.expect("hold");
    wallet.stop().await;
    pay(&app, held.id, 1).await.expect_err("no wallet");

    wallet.restart().await;
    let status = status_after_paying(&app, held.id).await;

    assert_eq!(
        status,
        pb::ReservationStatus::Confirmed,
        "without any retry by the caller"
    );
    assert_eq!(wallet.balance(1).await, 900);
    assert_eq!(debits(&wallet, 1).await.len(), 1);
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debit_whose_confirmation_was_lost_is_confirmed_by_the_reconciler_once() {
    let wallet = TestWallet::start().await;
    let app = app_reconciling_through(&wallet, Duration::from_millis(500)).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 4).await.expect("hold");
    // A replica began attempt 1 and the wallet debited it, then the replica died before its
    // confirming transaction: the reservation is left PAYING with the money taken.
    app.execute(&format!(
        "UPDATE reservations SET status = 'PAYING', pay_attempt = 1 WHERE id = {}",
        held.id
    ))
    .await;
    wallet
        .client()
        .await
        .r#use(shared::proto::wallet::v1::UseRequest {
            user_id: 1,
            amount: 100,
            idempotency_key: app.use_key(held.id, 1).await,
            reference: format!("reservation-{}", held.id),
        })
        .await
        .expect("the debit that happened");

    let status = status_after_paying(&app, held.id).await;

    assert_eq!(status, pb::ReservationStatus::Confirmed);
    assert_eq!(wallet.balance(1).await, 900, "debited once");
    assert_eq!(
        app.seats(schedule_id).await[3].status(),
        pb::SeatStatus::Sold
    );
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_that_can_no_longer_be_honoured_is_refunded_in_full_by_the_reconciler() {
    let mut wallet = TestWallet::start().await;
    let app = app_reconciling_through(&wallet, Duration::from_millis(200)).await;
    wallet.charge(1, 1_000, "top-up").await;
    // A performance that begins in a few seconds.
    let concert = app
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Tonight".to_owned(),
        })
        .await
        .expect("concert")
        .into_inner();
    let starts_at = std::time::SystemTime::now() + Duration::from_secs(5);
    let starts_at = starts_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    let schedule = app
        .client()
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(starts_at.as_secs()).expect("seconds"),
                nanos: 0,
            }),
            seat_count: 5,
            seat_price: 100,
        })
        .await
        .expect("schedule")
        .into_inner();
    let held = app.hold(1, schedule.id, 1).await.expect("hold");
    // The payment is begun while the wallet is down, and its outcome is known only after the
    // performance has begun: the seat can no longer be sold.
    wallet.stop().await;
    let unavailable = pay(&app, held.id, 1).await.expect_err("no wallet");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    let until_started = starts_at.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch"),
    );
    tokio::time::sleep(until_started + Duration::from_secs(1)).await;
    wallet.restart().await;

    let status = status_after_paying(&app, held.id).await;

    assert_eq!(status, pb::ReservationStatus::Expired);
    assert_eq!(wallet.balance(1).await, 1_000, "refunded in full");
    let kinds: Vec<TransactionKind> = wallet.ledger(1).await.iter().map(|t| t.kind()).collect();
    assert_eq!(
        kinds,
        [
            TransactionKind::Refund,
            TransactionKind::Use,
            TransactionKind::Charge
        ]
    );
    assert_eq!(
        app.seats(schedule.id).await[0].status(),
        pb::SeatStatus::Available
    );
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_free_seat_is_confirmed_and_cancelled_without_the_wallet() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let concert = app
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Free rehearsal".to_owned(),
        })
        .await
        .expect("concert")
        .into_inner();
    let schedule = app
        .client()
        .create_schedule(pb::CreateScheduleRequest {
            concert_id: concert.id,
            starts_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            seat_count: 3,
            seat_price: 0,
        })
        .await
        .expect("schedule")
        .into_inner();
    let held = app.hold(1, schedule.id, 2).await.expect("hold");

    let paid = pay(&app, held.id, 1).await.expect("free");
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    let cancelled = app.cancel(held.id, 1).await.expect("cancel");

    assert_eq!(cancelled.status(), pb::ReservationStatus::Cancelled);
    assert!(wallet.ledger(1).await.is_empty(), "no money moved");
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_use_key_taken_by_another_request_frees_the_payment_instead_of_leaving_it_paying() {
    let wallet = TestWallet::start().await;
    let app = app_paying_through(&wallet).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 9).await.expect("hold");
    // Someone else used the key of this reservation's first attempt for another amount.
    wallet
        .client()
        .await
        .r#use(shared::proto::wallet::v1::UseRequest {
            user_id: 1,
            amount: 5,
            idempotency_key: app.use_key(held.id, 1).await,
            reference: String::new(),
        })
        .await
        .expect("a stray use");

    let rejected = pay(&app, held.id, 1).await.expect_err("the key is taken");

    assert_eq!(rejected.code(), Code::Internal, "{rejected:?}");
    assert_eq!(
        app.reservation(held.id).await.status(),
        pb::ReservationStatus::Held,
        "back to HELD, not stuck PAYING"
    );
    let paid = pay(&app, held.id, 1)
        .await
        .expect("a new attempt, a new key");
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    assert_eq!(wallet.balance(1).await, 1_000 - 5 - 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancellation_interrupted_after_its_refund_is_finished_by_the_reconciler() {
    let wallet = TestWallet::start().await;
    let app = app_reconciling_through(&wallet, Duration::from_millis(500)).await;
    let schedule_id = app.schedule_with_seats(10).await;
    wallet.charge(1, 1_000, "top-up").await;
    let held = app.hold(1, schedule_id, 6).await.expect("hold");
    let paid = pay(&app, held.id, 1).await.expect("pay");
    assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    // A replica began the cancellation and got the refund, then stopped before releasing the
    // seat: the reservation still reads CONFIRMED, with the money back.
    app.execute(&format!(
        "UPDATE reservations SET cancel_requested_at = now() WHERE id = {}",
        held.id
    ))
    .await;
    wallet
        .client()
        .await
        .refund(shared::proto::wallet::v1::RefundRequest {
            user_id: 1,
            idempotency_key: app.refund_key(held.id).await,
            use_idempotency_key: app.use_key(held.id, 1).await,
        })
        .await
        .expect("the refund that happened");

    let mut status = pb::ReservationStatus::Confirmed;
    for _ in 0..100 {
        status = app.reservation(held.id).await.status();
        if status != pb::ReservationStatus::Confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(status, pb::ReservationStatus::Cancelled);
    assert_eq!(
        app.seats(schedule_id).await[5].status(),
        pb::SeatStatus::Available
    );
    assert_eq!(wallet.balance(1).await, 1_000, "refunded once");
    assert_money_matches_outcomes(&app, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_deployment_sharing_the_wallet_never_replays_the_firsts_debits() {
    // Two reservation databases (two deployments, or one recreated) number their
    // reservations from 1 alike; the same reservation and attempt must still be two payments.
    let wallet = TestWallet::start().await;
    let first = app_paying_through(&wallet).await;
    let second = app_paying_through(&wallet).await;
    wallet.charge(1, 1_000, "top-up").await;
    let mut held = Vec::new();
    for app in [&first, &second] {
        let schedule_id = app.schedule_with_seats(10).await;
        let reservation = app.hold(1, schedule_id, 1).await.expect("hold");
        held.push(reservation.id);
        let paid = pay(app, reservation.id, 1).await.expect("pay");
        assert_eq!(paid.status(), pb::ReservationStatus::Confirmed);
    }
    assert_eq!(
        held[0], held[1],
        "the same reservation id in both databases"
    );
    assert_ne!(
        first.use_key(held[0], 1).await,
        second.use_key(held[1], 1).await
    );

    assert_eq!(wallet.balance(1).await, 800, "two seats, two debits");
    assert_eq!(debits(&wallet, 1).await.len(), 2);
    assert_money_matches_outcomes(&first, &wallet).await;
    assert_money_matches_outcomes(&second, &wallet).await;
}

#[tokio::test]
async fn reservations_made_before_key_nonces_keep_their_keys_and_new_ones_get_a_nonce() {
    use diesel_migrations::MigrationHarness;

    let db = shared::test_support::TestDatabase::create(
        "reservation",
        reservation_svc::startup::MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await;
    // The database as it was before nonces, with a payment under way.
    let url = db.url().to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel::connection::SimpleConnection;
        let mut conn: diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
            diesel_async::AsyncPgConnection,
        > = Connection::establish(&url).expect("connect");
        // Back to before the nonces' migration, reverting the ones after it first.
        loop {
            let reverted = conn
                .revert_last_migration(reservation_svc::startup::MIGRATIONS)
                .expect("revert");
            if reverted.to_string().ends_with("000003") {
                break;
            }
        }
        conn.batch_execute(
            "WITH concert AS (INSERT INTO concerts (title) VALUES ('before') RETURNING id), \
                  schedule AS (INSERT INTO schedules (concert_id, starts_at, seat_count, seat_price) \
                               SELECT id, now() + interval '1 day', 1, 100 FROM concert \
                               RETURNING id), \
                  seat AS (INSERT INTO seats (schedule_id, seat_no, price, status) \
                           SELECT id, 1, 100, 'HELD' FROM schedule) \
             INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at, \
                                       pay_attempt) \
             SELECT 1, id, 1, 100, 'PAYING', now() + interval '5 minutes', 1 FROM schedule",
        )
        .expect("a payment under way");
    })
    .await
    .expect("the old database");

    shared::db::run_migrations(db.url(), reservation_svc::startup::MIGRATIONS)
        .await
        .expect("migrate");
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(db.url())
            .await
            .expect("connect");
    assert_eq!(
        crate::helpers::key_nonce(&mut conn, 1).await,
        None,
        "the payment under way keeps its key"
    );
    assert_eq!(protocol::payment::use_key("", 1, 1), "reservation-1-1");
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        "INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at) \
         SELECT 2, schedule_id, seat_no, price, 'EXPIRED', now() FROM reservations WHERE id = 1",
    )
    .await
    .expect("a new reservation");
    let nonce = crate::helpers::key_nonce(&mut conn, 2)
        .await
        .expect("a new reservation has a nonce");
    assert_eq!(nonce.len(), 32);
}
