//! Conformance of the store with the protocol model: for generated rows of one seat, each
//! transaction of `reservation_svc::store` run on real Postgres must give the outcome and leave
//! the rows that the model's transaction (`protocol_model::store`) gives. This is what keeps
//! the model the checker explores and the SQL the service runs from drifting apart.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use protocol::payment::BeginPay;
use protocol::payment::{self, UseReply};
use protocol::reservation::CancelDecision;
use protocol_model::key::Key;
use protocol_model::store::{
    BeginOutcome, CancelOutcome, ClockRead, HoldOutcome, KEY_NONCE, NOW, Row, SeatRows, SeatView,
    SettleOutcome, Status, StoreBugs, UserHolds,
};
use reservation_svc::model::{
    self as real, HoldRequest, HoldTerms, OwnerRequest, PayAttempt, PaymentAttempt, PaymentKeys,
    Price, Refusal, ReservationId, ScheduleId, SeatNo, UserId,
};
use reservation_svc::startup::MIGRATIONS;
use reservation_svc::store::{Store, StoreError};
use shared::db::PgPool;
use shared::test_support::TestDatabase;

/// Cases run; each loads a seat and runs one transaction (a few milliseconds).
const CASES: u32 = 1_500;
const PRICE: i64 = 10;

/// Which reservation a transaction acts on: mostly the seat's latest one (its active one, if
/// it has one), where the interesting transitions are.
#[derive(Debug, Clone)]
enum Target {
    Latest,
    Any(prop::sample::Index),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![3 => Just(Target::Latest), 1 => any::<prop::sample::Index>().prop_map(Target::Any)]
}

/// A transaction and its arguments.
#[derive(Debug, Clone)]
enum Transition {
    Hold {
        user_id: i64,
        /// Reservations of the schedule's other seats, one seat each (the hold limit counts
        /// the user's).
        elsewhere: Vec<Row>,
        /// The hold limit.
        max_user_holds: u32,
        /// The hold of a replica without Redis, which takes the seat's lock in Postgres
        /// (`SEAT_LOCK_FALLBACK=postgres`): it must decide alike.
        lock_in_postgres: bool,
    },
    BeginPay {
        target: Target,
        user_id: i64,
        /// The full transaction alone, without the statement that begins a held
        /// reservation's payment first: it must decide alike where that statement would.
        in_transaction: bool,
    },
    Settle {
        target: Target,
        /// 0 for the reservation's current attempt, 1 for the one before.
        attempts_back: i32,
        reply: Reply,
        refunded: bool,
        /// The full transaction alone, without the statement that confirms a debit first.
        in_transaction: bool,
    },
    Cancel {
        target: Target,
        user_id: i64,
        refunded: bool,
    },
    Sweep,
    ClaimStuckPayments,
    ClaimUnfinishedCancellations,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    /// Debited by the transaction that paid the reservation, if it was paid.
    DebitedAsRecorded,
    DebitedAnew,
    Insufficient,
    Rejected,
    Unknown,
}

/// A reservation row as the service could have left it; `id` (and with it the key of the
/// payment) is set when loading.
fn row(status: Status) -> impl Strategy<Value = Row> {
    let first_attempt = i32::from(status != Status::Held);
    (
        1..=2i64,
        any::<bool>(),
        first_attempt..=3,
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            move |(user_id, lapsed, pay_attempt, paid, cancel_requested, refunding)| {
                let paid = status == Status::Confirmed || (status == Status::Cancelled && paid);
                let pay_attempt = if paid {
                    pay_attempt.max(1)
                } else {
                    pay_attempt
                };
                Row {
                    id: 0,
                    user_id,
                    status,
                    lapsed,
                    pay_attempt,
                    payment_transaction_id: paid.then_some(100 + i64::from(pay_attempt)),
                    payment_idempotency_key: None,
                    cancel_requested: status == Status::Confirmed && cancel_requested,
                    // Decided for a paying attempt, and left so when it expires refunded.
                    refunding: matches!(status, Status::Paying | Status::Expired)
                        && pay_attempt > 0
                        && refunding,
                }
            },
        )
}

/// One seat: up to two ended reservations and at most one active one.
fn seat_rows() -> impl Strategy<Value = SeatRows> {
    let ended = prop_oneof![Just(Status::Cancelled), Just(Status::Expired)];
    let active = prop_oneof![
        Just(Status::Held),
        Just(Status::Paying),
        Just(Status::Confirmed)
    ];
    (
        prop::bool::weighted(0.25),
        prop::collection::vec(ended.prop_flat_map(row), 0..=2),
        prop::option::of(active.prop_flat_map(row)),
    )
        .prop_map(|(started, mut reservations, active)| {
            let seat = match active.as_ref().map(|row| row.status) {
                Some(Status::Confirmed) => SeatView::Sold,
                Some(_) => SeatView::Held,
                None => SeatView::Available,
            };
            reservations.extend(active);
            SeatRows {
                seat,
                price: PRICE,
                started,
                reservations,
            }
        })
}

fn transition() -> impl Strategy<Value = Transition> {
    let reply = prop_oneof![
        Just(Reply::DebitedAsRecorded),
        Just(Reply::DebitedAnew),
        Just(Reply::Insufficient),
        Just(Reply::Rejected),
        Just(Reply::Unknown),
    ];
    let any_status = prop_oneof![
        Just(Status::Held),
        Just(Status::Paying),
        Just(Status::Confirmed),
        Just(Status::Cancelled),
        Just(Status::Expired),
    ];
    prop_oneof![
        (
            1..=2i64,
            prop::collection::vec(any_status.prop_flat_map(row), 0..=4),
            1..=3u32,
            any::<bool>(),
        )
            .prop_map(|(user_id, elsewhere, max_user_holds, lock_in_postgres)| {
                Transition::Hold {
                    user_id,
                    elsewhere,
                    max_user_holds,
                    lock_in_postgres,
                }
            }),
        (target(), 1..=2i64, any::<bool>()).prop_map(|(target, user_id, in_transaction)| {
            Transition::BeginPay {
                target,
                user_id,
                in_transaction,
            }
        }),
        (
            target(),
            prop_oneof![3 => Just(0), 1 => Just(1)],
            reply,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(target, attempts_back, reply, refunded, in_transaction)| {
                Transition::Settle {
                    target,
                    attempts_back,
                    reply,
                    refunded,
                    in_transaction,
                }
            }),
        (target(), 1..=2i64, any::<bool>()).prop_map(|(target, user_id, refunded)| {
            Transition::Cancel {
                target,
                user_id,
                refunded,
            }
        }),
        Just(Transition::Sweep),
        Just(Transition::ClaimStuckPayments),
        Just(Transition::ClaimUnfinishedCancellations),
    ]
}

/// What a transaction answered, in the model's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Hold(HoldOutcome),
    Begin(BeginOutcome),
    Settle(SettleOutcome),
    Cancel(CancelOutcome),
    /// Reservations of this seat the claim returned.
    Claimed(Vec<i64>),
    Swept,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    _db: TestDatabase,
    pool: PgPool,
    store: Store,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let db = runtime.block_on(TestDatabase::create(
            "conformance",
            MIGRATIONS,
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
        ));
        let pool = db.pool("conformance");
        Self {
            runtime,
            _db: db,
            store: Store::new(pool.clone()),
            pool,
        }
    }

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }
}

/// Loads `rows` as a new schedule of one seat; returns the schedule and the rows with their
/// ids as stored (ids are given explicitly, far from the ones the database hands out).
async fn load(pool: &PgPool, case: i64, rows: &SeatRows) -> (i64, SeatRows) {
    let mut conn = pool.get().await.expect("a connection");
    let first_id = 1_000_000 + case * 10;
    let mut rows = rows.clone();
    for (at, row) in (0..).zip(rows.reservations.iter_mut()) {
        row.id = first_id + at;
        if row.payment_transaction_id.is_some() {
            row.payment_idempotency_key = Some(Key::new(&payment::use_key(
                KEY_NONCE,
                row.id,
                row.pay_attempt,
            )));
        }
    }
    #[derive(QueryableByName)]
    struct Created {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let starts = if rows.started {
        "- interval '1 hour'"
    } else {
        "+ interval '1 hour'"
    };
    let schedule = diesel::sql_query(format!(
        "WITH concert AS (INSERT INTO concerts (title) VALUES ('conformance') RETURNING id) \
         INSERT INTO schedules (concert_id, starts_at, seat_count, seat_price) \
         SELECT id, now() {starts}, 1, {PRICE} FROM concert RETURNING id"
    ))
    .get_result::<Created>(&mut conn)
    .await
    .expect("a schedule")
    .id;
    let mut sql = format!(
        "INSERT INTO seats (schedule_id, seat_no, price, status) \
         VALUES ({schedule}, 1, {PRICE}, '{}');",
        seat_status(rows.seat)
    );
    for row in &rows.reservations {
        let expires = if row.lapsed {
            "- interval '1 minute'"
        } else {
            "+ interval '5 minutes'"
        };
        let cancel_requested = if row.cancel_requested {
            "now() - interval '1 minute'"
        } else {
            "NULL"
        };
        let refund_requested = if row.refunding {
            "now() - interval '1 minute'"
        } else {
            "NULL"
        };
        sql.push_str(&format!(
            "INSERT INTO reservations (id, user_id, schedule_id, seat_no, price, status, \
                 expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, \
                 cancel_requested_at, refund_requested_at, payment_key_nonce, updated_at) \
             OVERRIDING SYSTEM VALUE \
             VALUES ({}, {}, {schedule}, 1, {PRICE}, '{}', now() {expires}, {}, {}, {}, \
                 {cancel_requested}, {refund_requested}, '{KEY_NONCE}', \
                 now() - interval '1 minute');",
            row.id,
            row.user_id,
            row.status.as_str(),
            row.pay_attempt,
            row.payment_transaction_id
                .map_or("NULL".to_owned(), |id| id.to_string()),
            row.payment_idempotency_key
                .map_or("NULL".to_owned(), |key| format!("'{key}'")),
        ));
    }
    conn.batch_execute(&sql).await.expect("the rows");
    (schedule, rows)
}

/// Adds `elsewhere` to the schedule: each reservation on a seat of its own (2, 3, ...), whose
/// row reads as it makes it read.
async fn load_elsewhere(pool: &PgPool, schedule: i64, elsewhere: &[Row]) {
    if elsewhere.is_empty() {
        return;
    }
    let mut conn = pool.get().await.expect("a connection");
    let mut sql = format!(
        "UPDATE schedules SET seat_count = {} WHERE id = {schedule};",
        1 + elsewhere.len()
    );
    for (seat_no, row) in (2..).zip(elsewhere) {
        let seat = match row.status {
            Status::Held | Status::Paying => SeatView::Held,
            Status::Confirmed => SeatView::Sold,
            Status::Cancelled | Status::Expired => SeatView::Available,
        };
        let expires = if row.lapsed {
            "- interval '1 minute'"
        } else {
            "+ interval '5 minutes'"
        };
        sql.push_str(&format!(
            "INSERT INTO seats (schedule_id, seat_no, price, status) \
             VALUES ({schedule}, {seat_no}, {PRICE}, '{}'); \
             INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, \
                 expires_at, pay_attempt, payment_transaction_id) \
             VALUES ({}, {schedule}, {seat_no}, {PRICE}, '{}', now() {expires}, {}, {});",
            seat_status(seat),
            row.user_id,
            row.status.as_str(),
            row.pay_attempt,
            row.payment_transaction_id
                .map_or("NULL".to_owned(), |id| id.to_string()),
        ));
    }
    conn.batch_execute(&sql).await.expect("the other seats");
}

/// The seat's rows as they are now.
async fn read(conn: &mut AsyncPgConnection, schedule: i64, rows: &SeatRows) -> SeatRows {
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        user_id: i64,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Bool)]
        lapsed: bool,
        #[diesel(sql_type = Integer)]
        pay_attempt: i32,
        #[diesel(sql_type = Nullable<BigInt>)]
        payment_transaction_id: Option<i64>,
        #[diesel(sql_type = Nullable<Text>)]
        payment_idempotency_key: Option<String>,
        #[diesel(sql_type = Bool)]
        cancel_requested: bool,
        #[diesel(sql_type = Bool)]
        refunding: bool,
    }
    #[derive(QueryableByName)]
    struct SeatStatus {
        #[diesel(sql_type = Text)]
        status: String,
    }
    let stored = diesel::sql_query(format!(
        "SELECT id, user_id, status, expires_at <= now() AS lapsed, pay_attempt, \
             payment_transaction_id, payment_idempotency_key, \
             cancel_requested_at IS NOT NULL AS cancel_requested, \
             refund_requested_at IS NOT NULL AS refunding \
         FROM reservations WHERE schedule_id = {schedule} AND seat_no = 1 ORDER BY id"
    ))
    .load::<Stored>(conn)
    .await
    .expect("the reservations");
    let seat = diesel::sql_query(format!(
        "SELECT status FROM seats WHERE schedule_id = {schedule} AND seat_no = 1"
    ))
    .get_result::<SeatStatus>(conn)
    .await
    .expect("the seat");
    SeatRows {
        seat: match seat.status.as_str() {
            "AVAILABLE" => SeatView::Available,
            "HELD" => SeatView::Held,
            _ => SeatView::Sold,
        },
        price: rows.price,
        started: rows.started,
        reservations: stored
            .into_iter()
            .map(|row| Row {
                id: row.id,
                user_id: row.user_id,
                status: Status::parse(&row.status).expect("a known status"),
                lapsed: row.lapsed,
                pay_attempt: row.pay_attempt,
                payment_transaction_id: row.payment_transaction_id,
                payment_idempotency_key: row.payment_idempotency_key.as_deref().map(Key::new),
                cancel_requested: row.cancel_requested,
                refunding: row.refunding,
            })
            .collect(),
    }
}

fn seat_status(seat: SeatView) -> &'static str {
    match seat {
        SeatView::Available => "AVAILABLE",
        SeatView::Held => "HELD",
        SeatView::Sold => "SOLD",
    }
}

/// The reservation `target` picks, or one that does not exist.
fn pick(rows: &SeatRows, target: &Target) -> i64 {
    let picked = match target {
        Target::Latest => rows.reservations.last(),
        Target::Any(index) if !rows.reservations.is_empty() => {
            rows.reservations.get(index.index(rows.reservations.len()))
        }
        Target::Any(_) => None,
    };
    picked.map_or(999, |row| row.id)
}

fn owner(reservation: i64, user_id: i64) -> OwnerRequest {
    OwnerRequest {
        reservation_id: ReservationId::parse(reservation).expect("an id"),
        user_id: UserId::parse(user_id).expect("a user"),
    }
}

fn failed<T>(error: StoreError) -> T {
    panic!("store error: {error}")
}

/// Runs `transition` through the model and through the real store; returns both answers and
/// both resulting rows.
async fn run_both(
    store: &Store,
    pool: &PgPool,
    schedule: i64,
    rows: SeatRows,
    transition: &Transition,
) -> ((Answer, SeatRows), (Answer, SeatRows)) {
    let mut model = rows.clone();
    let bugs = StoreBugs::default();
    let (expected, actual) = match transition {
        Transition::Hold {
            user_id,
            elsewhere,
            max_user_holds,
            lock_in_postgres,
        } => {
            load_elsewhere(pool, schedule, elsewhere).await;
            let request = HoldRequest {
                user_id: UserId::parse(*user_id).expect("a user"),
                schedule_id: ScheduleId::parse(schedule).expect("a schedule"),
                seat_no: SeatNo::parse(1).expect("a seat"),
            };
            let counted = elsewhere
                .iter()
                .filter(|row| row.user_id == *user_id && row.state().counts_toward_hold_limit(NOW))
                .count();
            let holds = UserHolds {
                elsewhere: u32::try_from(counted).expect("a few"),
                max: *max_user_holds,
            };
            let mut expected = model.hold(*user_id, holds);
            let terms = HoldTerms {
                ttl: Duration::from_secs(300),
                max_per_user: NonZeroU32::new(*max_user_holds).expect("a positive limit"),
            };
            let held = if *lock_in_postgres {
                store
                    .hold_seat_locked_in_postgres(request, terms, Duration::from_secs(5))
                    .await
            } else {
                store.hold_seat(request, terms).await
            };
            let actual = match held.unwrap_or_else(failed) {
                real::HoldOutcome::Held(reservation) => {
                    let held = reservation.id.get();
                    // The database numbers new rows itself: the model's new row takes its id.
                    if let (HoldOutcome::Held { id }, Some(new)) =
                        (expected, model.reservations.last_mut())
                        && new.id == id
                    {
                        new.id = held;
                        expected = HoldOutcome::Held { id: held };
                        model.reservations.sort_by_key(|row| row.id);
                    }
                    HoldOutcome::Held { id: held }
                }
                real::HoldOutcome::Taken => HoldOutcome::Taken,
                real::HoldOutcome::PerformanceStarted => HoldOutcome::PerformanceStarted,
                real::HoldOutcome::HoldLimit { max } => {
                    assert_eq!(max, *max_user_holds);
                    HoldOutcome::HoldLimit
                }
                other => panic!("unexpected hold outcome {other:?}"),
            };
            (Answer::Hold(expected), Answer::Hold(actual))
        }
        Transition::BeginPay {
            target,
            user_id,
            in_transaction,
        } => {
            let id = pick(&rows, target);
            let request = owner(id, *user_id);
            let (expected, begun) = if *in_transaction {
                (
                    model.begin_pay_in_transaction_at(id, *user_id, ClockRead::UnderLock),
                    store
                        .begin_pay_in_transaction(request.reservation_id, request.user_id)
                        .await,
                )
            } else {
                (
                    model.begin_pay(id, *user_id),
                    store
                        .begin_pay(request.reservation_id, request.user_id)
                        .await,
                )
            };
            let expected = Answer::Begin(expected);
            let actual = match begun.unwrap_or_else(failed) {
                real::BeginOutcome::Pay(payment) => BeginOutcome::Pay {
                    attempt: payment.attempt.get(),
                },
                real::BeginOutcome::Confirmed(_) => BeginOutcome::Confirmed,
                real::BeginOutcome::NotFound => BeginOutcome::NotFound,
                real::BeginOutcome::Refused(refusal) => BeginOutcome::Refused(match refusal {
                    Refusal::NotOwner => BeginPay::NotOwner,
                    Refusal::HoldExpired => BeginPay::HoldExpired,
                    Refusal::InvalidState => BeginPay::InvalidState,
                }),
            };
            (expected, Answer::Begin(actual))
        }
        Transition::Settle {
            target,
            attempts_back,
            reply,
            refunded,
            in_transaction,
        } => {
            let id = pick(&rows, target);
            let row = rows.row(id);
            // A settle is only ever about an attempt that began: the first is 1.
            let attempt = (row.map_or(1, |row| row.pay_attempt) - attempts_back).max(1);
            let reply = match reply {
                Reply::DebitedAsRecorded => UseReply::Debited {
                    transaction_id: row
                        .and_then(|row| row.payment_transaction_id)
                        .unwrap_or(500),
                },
                Reply::DebitedAnew => UseReply::Debited {
                    transaction_id: 501,
                },
                Reply::Insufficient => UseReply::Insufficient,
                Reply::Rejected => UseReply::Rejected,
                Reply::Unknown => UseReply::Unknown,
            };
            let payment = PaymentAttempt {
                reservation: ReservationId::parse(id).expect("an id"),
                attempt: PayAttempt::parse(attempt).expect("an attempt"),
                payer: UserId::parse(row.map_or(1, |row| row.user_id)).expect("a user"),
                price: Price::parse(PRICE).expect("a price"),
                schedule_id: ScheduleId::parse(schedule).expect("a schedule"),
                seat_no: SeatNo::parse(1).expect("a seat"),
                keys: PaymentKeys::new(id, Some(KEY_NONCE)),
            };
            let (expected, settled) = if *in_transaction {
                (
                    model.settle_in_transaction_at(
                        id,
                        attempt,
                        reply,
                        *refunded,
                        bugs,
                        ClockRead::UnderLock,
                    ),
                    store
                        .settle_in_transaction(
                            payment.reservation,
                            payment.attempt,
                            reply,
                            *refunded,
                        )
                        .await,
                )
            } else {
                (
                    model.settle(id, attempt, reply, *refunded, bugs),
                    store.settle_attempt(&payment, reply, *refunded).await,
                )
            };
            let expected = Answer::Settle(expected);
            let actual = match settled.unwrap_or_else(failed) {
                real::SettleOutcome::Confirmed(_) => SettleOutcome::Confirmed,
                real::SettleOutcome::Refused => SettleOutcome::Refused,
                real::SettleOutcome::StillPaying => SettleOutcome::StillPaying,
                real::SettleOutcome::Refund { use_key, .. } => SettleOutcome::Refund {
                    use_key: Key::new(&use_key),
                },
                real::SettleOutcome::Moved => SettleOutcome::Moved,
            };
            (expected, Answer::Settle(actual))
        }
        Transition::Cancel {
            target,
            user_id,
            refunded,
        } => {
            let id = pick(&rows, target);
            let expected = Answer::Cancel(model.cancel(id, *user_id, *refunded));
            let actual = match store
                .cancel(owner(id, *user_id), *refunded)
                .await
                .unwrap_or_else(failed)
            {
                real::CancelOutcome::Cancelled(_) => CancelOutcome::Cancelled,
                real::CancelOutcome::NotFound => CancelOutcome::NotFound,
                real::CancelOutcome::RefundFirst(paid) => CancelOutcome::RefundFirst {
                    use_key: paid.use_key.as_deref().map(Key::new),
                },
                real::CancelOutcome::Refused(refusal) => CancelOutcome::Refused(match refusal {
                    Refusal::NotOwner => CancelDecision::NotOwner,
                    Refusal::HoldExpired => CancelDecision::HoldExpired,
                    Refusal::InvalidState => CancelDecision::InvalidState,
                }),
            };
            (expected, Answer::Cancel(actual))
        }
        Transition::Sweep => {
            model.sweep(bugs);
            // Other cases' seats may be swept too: only this seat's rows are compared.
            store
                .expire_lapsed_holds(10_000)
                .await
                .unwrap_or_else(failed);
            (Answer::Swept, Answer::Swept)
        }
        Transition::ClaimStuckPayments => {
            let expected = model
                .stuck_payments()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let claimed = store
                .claim_stuck_payments(Duration::ZERO, 10_000)
                .await
                .unwrap_or_else(failed);
            let mut actual: Vec<i64> = claimed
                .iter()
                .map(|stuck| stuck.reservation.get())
                .filter(|id| rows.row(*id).is_some())
                .collect();
            actual.sort_unstable();
            (Answer::Claimed(expected), Answer::Claimed(actual))
        }
        Transition::ClaimUnfinishedCancellations => {
            let expected = model
                .unfinished_cancellations()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let claimed = store
                .claim_unfinished_cancellations(Duration::ZERO, 10_000)
                .await
                .unwrap_or_else(failed);
            let mut actual: Vec<i64> = claimed
                .iter()
                .map(|request| request.reservation_id.get())
                .filter(|id| rows.row(*id).is_some())
                .collect();
            actual.sort_unstable();
            (Answer::Claimed(expected), Answer::Claimed(actual))
        }
    };
    let mut conn = pool.get().await.expect("a connection");
    let stored = read(&mut conn, schedule, &rows).await;
    ((expected, model), (actual, stored))
}

#[test]
fn every_store_transaction_does_what_the_model_does() {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = std::sync::atomic::AtomicI64::new(0);
    runner
        .run(&(seat_rows(), transition()), |(rows, transition)| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ((expected, model), (actual, stored)) = fixture.block_on(async {
                let (schedule, rows) = load(&fixture.pool, case, &rows).await;
                run_both(&fixture.store, &fixture.pool, schedule, rows, &transition).await
            });
            prop_assert_eq!(&actual, &expected, "answer to {:?}", transition);
            prop_assert_eq!(&stored, &model, "rows after {:?}", transition);
            Ok::<(), TestCaseError>(())
        })
        .unwrap_or_else(|failure| panic!("the store and the model differ: {failure}"));
}
