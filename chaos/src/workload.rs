//! The workload: clients that hold, pay, cancel, charge, replay, stampede one seat and give up
//! on calls mid-way, recording every answer and what each acknowledged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shared::proto::reservation::v1 as pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use shared::proto::wallet::v1 as wpb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::Args;

pub type ReservationClient = ReservationServiceClient<Channel>;
pub type WalletClient = WalletServiceClient<Channel>;

/// Users that hold and pay seats: 1..=USERS.
pub const USERS: i64 = 300;
/// Users of the wallet alone (uses and refunds by key): WALLET_USERS_FROM..+WALLET_USERS.
pub const WALLET_USERS_FROM: i64 = 100_000;
pub const WALLET_USERS: i64 = 50;
/// Schedules the workload moves through, one after another, and their seats.
const SCHEDULES: usize = 16;
const SEATS: i32 = 2_000;
/// How long the workload stays on one schedule before it moves on to the next.
const SCHEDULE_PERIOD: Duration = Duration::from_secs(40);
const SEAT_PRICE: i64 = 100;
/// Concurrent holds of one seat in a stampede.
const STAMPEDE: usize = 16;
/// The deadline of a call the client means to wait for.
const DEADLINE: Duration = Duration::from_secs(6);

/// One answer (or a client giving up), as counted in the report.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: &'static str,
    pub outcome: String,
    /// When the call was sent, from the start of the run.
    pub start: Duration,
    pub latency: Duration,
}

/// What the workload was told about one reservation.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    pub user_id: i64,
    pub schedule_id: i64,
    pub seat_no: i32,
    /// A PayReservation answered OK.
    pub paid: bool,
    /// A CancelReservation was sent, whatever its answer.
    pub cancel_sent: bool,
    /// A CancelReservation answered OK.
    pub cancelled: bool,
}

/// A wallet movement a client was told was applied: its transaction must be in the ledger.
#[derive(Debug, Clone)]
pub struct Acked {
    pub transaction_id: i64,
    pub user_id: i64,
    pub kind: &'static str,
    pub key: String,
}

/// What every client shares: connections, counters, what was acknowledged, violations seen
/// in answers.
#[derive(Debug)]
pub struct Shared {
    pub reservations: Vec<ReservationClient>,
    pub wallets: Vec<WalletClient>,
    pub started: Instant,
    pub stop: AtomicBool,
    pub sampling_done: AtomicBool,
    pub ops: Mutex<Vec<Op>>,
    pub tracked: Mutex<HashMap<i64, Tracked>>,
    pub acked: Mutex<Vec<Acked>>,
    /// The messages of the first few INTERNAL and UNKNOWN answers, by kind and code: whose
    /// they are (the service's or the client's transport) is read from them.
    pub odd_answers: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
    violations: Mutex<Vec<String>>,
    schedules: Mutex<Vec<i64>>,
    hot_schedule: AtomicU64,
    next_hot_seat: AtomicI32,
    next_key: AtomicU64,
    /// A per-run part of every idempotency key of the workload's own.
    run_tag: String,
    /// The schedule whose seats the workload holds now (for the fault injector: the Cluster
    /// slot worth failing over).
    pub current_schedule: AtomicU64,
}

fn endpoint(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The name of a status's code and, for a business refusal, its reason.
pub fn outcome_of(status: &tonic::Status) -> String {
    let code = match status.code() {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    };
    match shared::error::reason_of(status) {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_owned(),
    }
}

/// How a client waits for its answer.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Up to the usual deadline.
    Full,
    /// A deadline this short, sent to the server too (`grpc-timeout`).
    Deadline(Duration),
    /// The future is dropped after this long, whatever the call is doing.
    Drop(Duration),
}

/// An answer, or the client's giving up on it.
enum Answer<T> {
    Ok(T),
    Err(tonic::Status),
    /// The client stopped waiting (`DROPPED`) or the call outlived its deadline on the client.
    Gone,
}

impl<T> Answer<T> {
    /// The same answer, with `f` applied to what an OK one carries.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Ok(value) => Answer::Ok(f(value)),
            Answer::Err(status) => Answer::Err(status),
            Answer::Gone => Answer::Gone,
        }
    }

    /// Whether the server may have done what was asked, though the client was not told so.
    fn unknown(&self) -> bool {
        match self {
            Answer::Ok(_) => false,
            Answer::Gone => true,
            Answer::Err(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
            ),
        }
    }
}

impl Shared {
    pub async fn connect(args: &Args) -> anyhow::Result<Self> {
        let reservations = args
            .reservations
            .iter()
            .map(|addr| endpoint(*addr).map(ReservationClient::new))
            .collect::<anyhow::Result<_>>()?;
        let wallets = args
            .wallets
            .iter()
            .map(|addr| endpoint(*addr).map(WalletClient::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            reservations,
            wallets,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            sampling_done: AtomicBool::new(false),
            ops: Mutex::new(Vec::new()),
            tracked: Mutex::new(HashMap::new()),
            acked: Mutex::new(Vec::new()),
            odd_answers: Mutex::new(std::collections::BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
            schedules: Mutex::new(Vec::new()),
            hot_schedule: AtomicU64::new(0),
            next_hot_seat: AtomicI32::new(1),
            next_key: AtomicU64::new(1),
            run_tag: format!("chaos-{}-{}", args.seed, std::process::id()),
            current_schedule: AtomicU64::new(0),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn violation(&self, what: String) {
        eprintln!("chaos: VIOLATION: {what}");
        lock(&self.violations).push(what);
    }

    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.violations))
    }

    fn key(&self, what: &str) -> String {
        format!(
            "{}-{what}-{}",
            self.run_tag,
            self.next_key.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The catalog and the users' first points, before any fault: retried until each is done.
    pub async fn setup(&self, seed: u64) -> anyhow::Result<()> {
        let client = self.reservations[0].clone();
        let concert = retry("create a concert", || {
            let mut client = client.clone();
            async move {
                client
                    .create_concert(pb::CreateConcertRequest {
                        title: format!("Chaos {seed}"),
                    })
                    .await
            }
        })
        .await?;
        // Far enough ahead that no performance begins during a run.
        let starts_at = prost_types::Timestamp {
            seconds: 4_000_000_000,
            nanos: 0,
        };
        let mut schedules = Vec::new();
        for _ in 0..=SCHEDULES {
            let schedule = retry("create a schedule", || {
                let mut client = client.clone();
                async move {
                    client
                        .create_schedule(pb::CreateScheduleRequest {
                            concert_id: concert.id,
                            starts_at: Some(starts_at),
                            seat_count: SEATS,
                            seat_price: SEAT_PRICE,
                        })
                        .await
                }
            })
            .await?;
            schedules.push(schedule.id);
        }
        let hot = schedules.pop().expect("one schedule for stampedes");
        self.hot_schedule
            .store(u64::try_from(hot).unwrap_or_default(), Ordering::SeqCst);
        self.current_schedule.store(
            u64::try_from(schedules[0]).unwrap_or_default(),
            Ordering::SeqCst,
        );
        *lock(&self.schedules) = schedules;

        let mut rng = StdRng::seed_from_u64(seed);
        let users = (1..=USERS)
            .map(|user| (user, rng.random_range(3..=10) * SEAT_PRICE))
            .chain((0..WALLET_USERS).map(|n| (WALLET_USERS_FROM + n, 1_000_000)));
        for (user_id, amount) in users {
            let key = format!("{}-initial-{user_id}", self.run_tag);
            let transaction = retry("charge a user", || {
                let mut wallet = self.wallets[0].clone();
                let key = key.clone();
                async move {
                    wallet
                        .charge(wpb::ChargeRequest {
                            user_id,
                            amount,
                            idempotency_key: key,
                        })
                        .await
                }
            })
            .await?;
            self.ack(transaction.id, user_id, "CHARGE", key);
        }
        Ok(())
    }

    fn ack(&self, transaction_id: i64, user_id: i64, kind: &'static str, key: String) {
        lock(&self.acked).push(Acked {
            transaction_id,
            user_id,
            kind,
            key,
        });
    }

    /// The schedule of the moment: the workload moves to the next one every SCHEDULE_PERIOD,
    /// so that a long run does not run out of seats.
    fn schedule_now(&self) -> i64 {
        let schedules = lock(&self.schedules);
        let period = (self.elapsed().as_secs() / SCHEDULE_PERIOD.as_secs()) as usize;
        let schedule = schedules
            .get(period % schedules.len().max(1))
            .copied()
            .unwrap_or_default();
        self.current_schedule.store(
            u64::try_from(schedule).unwrap_or_default(),
            Ordering::Relaxed,
        );
        schedule
    }

    /// Sends one call, waits as `wait` says, and records its answer under `kind`.
    async fn call<T, F>(&self, kind: &'static str, wait: Wait, call: F) -> Answer<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.elapsed();
        let sent = Instant::now();
        let limit = match wait {
            Wait::Full => DEADLINE + Duration::from_secs(1),
            Wait::Deadline(deadline) => deadline + Duration::from_secs(1),
            Wait::Drop(after) => after,
        };
        let (answer, outcome) = match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => (Answer::Ok(response.into_inner()), "OK".to_owned()),
            Ok(Err(status)) => {
                let outcome = outcome_of(&status);
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown) {
                    let mut odd = lock(&self.odd_answers);
                    let messages = odd.entry(format!("{kind} {outcome}")).or_default();
                    if messages.len() < 3 {
                        messages.push(status.message().chars().take(200).collect());
                    }
                }
                (Answer::Err(status), outcome)
            }
            Err(_) => (
                Answer::Gone,
                match wait {
                    Wait::Drop(_) => "DROPPED".to_owned(),
                    _ => "CLIENT_TIMEOUT".to_owned(),
                },
            ),
        };
        lock(&self.ops).push(Op {
            kind,
            outcome,
            start,
            latency: sent.elapsed(),
        });
        answer
    }

    fn track(&self, reservation: &pb::Reservation) {
        lock(&self.tracked)
            .entry(reservation.id)
            .or_insert_with(|| Tracked {
                user_id: reservation.user_id,
                schedule_id: reservation.schedule_id,
                seat_no: reservation.seat_no,
                ..Tracked::default()
            });
    }

    fn update(&self, reservation_id: i64, change: impl FnOnce(&mut Tracked)) {
        if let Some(tracked) = lock(&self.tracked).get_mut(&reservation_id) {
            change(tracked);
        }
    }

    async fn hold(
        &self,
        kind: &'static str,
        wait: Wait,
        replica: usize,
        user_id: i64,
        schedule_id: i64,
        seat_no: i32,
    ) -> Option<pb::Reservation> {
        let mut client = self.reservations[replica].clone();
        let request = request(
            pb::HoldSeatRequest {
                user_id,
                schedule_id,
                seat_no,
            },
            wait,
        );
        match self.call(kind, wait, client.hold_seat(request)).await {
            Answer::Ok(reservation) => {
                if reservation.user_id != user_id
                    || reservation.schedule_id != schedule_id
                    || reservation.seat_no != seat_no
                {
                    self.violation(format!(
                        "HoldSeat(user {user_id}, schedule {schedule_id}, seat {seat_no}) \
                         answered reservation {} of user {}, schedule {}, seat {}",
                        reservation.id,
                        reservation.user_id,
                        reservation.schedule_id,
                        reservation.seat_no
                    ));
                }
                self.track(&reservation);
                Some(reservation)
            }
            _ => None,
        }
    }

    /// Pays; true when the client was told the seat is paid for.
    async fn pay(
        &self,
        kind: &'static str,
        wait: Wait,
        replica: usize,
        reservation: &pb::Reservation,
    ) -> Answer<()> {
        let mut client = self.reservations[replica].clone();
        let request = request(
            pb::PayReservationRequest {
                reservation_id: reservation.id,
                user_id: reservation.user_id,
            },
            wait,
        );
        self.call(kind, wait, client.pay_reservation(request))
            .await
            .map(|paid| {
                if paid.status() != pb::ReservationStatus::Confirmed {
                    self.violation(format!(
                        "PayReservation({}) answered OK with status {:?}",
                        reservation.id,
                        paid.status()
                    ));
                }
                self.update(reservation.id, |t| t.paid = true);
            })
    }

    async fn cancel(
        &self,
        kind: &'static str,
        wait: Wait,
        replica: usize,
        reservation: &pb::Reservation,
    ) -> Answer<()> {
        self.update(reservation.id, |t| t.cancel_sent = true);
        let mut client = self.reservations[replica].clone();
        let request = request(
            pb::CancelReservationRequest {
                reservation_id: reservation.id,
                user_id: reservation.user_id,
            },
            wait,
        );
        self.call(kind, wait, client.cancel_reservation(request))
            .await
            .map(|cancelled| {
                if cancelled.status() != pb::ReservationStatus::Cancelled {
                    self.violation(format!(
                        "CancelReservation({}) answered OK with status {:?}",
                        reservation.id,
                        cancelled.status()
                    ));
                }
                self.update(reservation.id, |t| t.cancelled = true);
            })
    }

    async fn charge(
        &self,
        kind: &'static str,
        wait: Wait,
        replica: usize,
        charge: &mut Charge,
    ) -> Answer<()> {
        let mut wallet = self.wallets[replica].clone();
        let request = request(
            wpb::ChargeRequest {
                user_id: charge.user_id,
                amount: charge.amount,
                idempotency_key: charge.key.clone(),
            },
            wait,
        );
        self.call(kind, wait, wallet.charge(request))
            .await
            .map(|transaction| {
                self.same_transaction(
                    "Charge",
                    &charge.key,
                    &mut charge.transaction_id,
                    transaction.id,
                );
                self.ack(transaction.id, charge.user_id, "CHARGE", charge.key.clone());
            })
    }

    /// A replay answers the transaction the key's first success did.
    fn same_transaction(&self, what: &str, key: &str, known: &mut Option<i64>, answered: i64) {
        match known {
            Some(first) if *first != answered => self.violation(format!(
                "{what} under key {key} answered transaction {answered}, \
                 an earlier answer of the same key was {first}"
            )),
            Some(_) => {}
            None => *known = Some(answered),
        }
    }

    async fn use_points(
        &self,
        kind: &'static str,
        replica: usize,
        user_id: i64,
        key: &str,
        known: &mut Option<i64>,
    ) -> Answer<()> {
        let mut wallet = self.wallets[replica].clone();
        let request = request(
            wpb::UseRequest {
                user_id,
                amount: 7,
                idempotency_key: key.to_owned(),
                reference: "chaos".to_owned(),
            },
            Wait::Full,
        );
        self.call(kind, Wait::Full, wallet.r#use(request))
            .await
            .map(|transaction| {
                self.same_transaction("Use", key, known, transaction.id);
                self.ack(transaction.id, user_id, "USE", key.to_owned());
            })
    }

    async fn refund(
        &self,
        kind: &'static str,
        replica: usize,
        user_id: i64,
        key: &str,
        use_key: &str,
        known: &mut Option<i64>,
    ) -> Answer<()> {
        let mut wallet = self.wallets[replica].clone();
        let request = request(
            wpb::RefundRequest {
                user_id,
                idempotency_key: key.to_owned(),
                use_idempotency_key: use_key.to_owned(),
            },
            Wait::Full,
        );
        self.call(kind, Wait::Full, wallet.refund(request))
            .await
            .map(|transaction| {
                // One refund per use, under any key: every refund of this use answers the first.
                self.same_transaction("a Refund of the Use", use_key, known, transaction.id);
                self.ack(transaction.id, user_id, "REFUND", key.to_owned());
            })
    }
}

/// A charge of the workload's, to replay later.
#[derive(Debug, Clone)]
struct Charge {
    user_id: i64,
    amount: i64,
    key: String,
    transaction_id: Option<i64>,
}

fn request<T>(message: T, wait: Wait) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(match wait {
        Wait::Full | Wait::Drop(_) => DEADLINE,
        Wait::Deadline(deadline) => deadline,
    });
    request
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Retries a setup call until it succeeds, for up to a minute.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("chaos: setup: {what}: {}; again", outcome_of(&status));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => anyhow::bail!("setup: {what}: {status:?}"),
        }
    }
}

/// One workload client until told to stop: each round a step drawn from its own seeded
/// generator.
pub async fn worker(shared: std::sync::Arc<Shared>, index: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let mut charges: Vec<Charge> = Vec::new();
    let mut paid: Vec<pb::Reservation> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match rng.random_range(0..100) {
            0..45 => flow(&shared, &mut rng, &mut paid).await,
            45..50 => stampede(&shared, &mut rng).await,
            50..60 => {
                let mut charge = Charge {
                    user_id: rng.random_range(1..=USERS),
                    amount: rng.random_range(1..=5) * SEAT_PRICE,
                    key: shared.key("charge"),
                    transaction_id: None,
                };
                let replica = rng.random_range(0..shared.wallets.len());
                shared
                    .charge("charge", Wait::Full, replica, &mut charge)
                    .await;
                charges.push(charge);
            }
            60..68 => {
                // The same charge sent again: answered with its first transaction.
                if !charges.is_empty() {
                    let at = rng.random_range(0..charges.len());
                    let replica = rng.random_range(0..shared.wallets.len());
                    shared
                        .charge("charge-replay", Wait::Full, replica, &mut charges[at])
                        .await;
                }
            }
            68..76 => wallet_use_and_refunds(&shared, &mut rng).await,
            76..92 => abandoned(&shared, &mut rng, &mut charges, &mut paid).await,
            _ => read(&shared, &mut rng).await,
        }
        if charges.len() > 200 {
            charges.drain(..100);
        }
        if paid.len() > 50 {
            paid.drain(..25);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
}

fn replica(shared: &Shared, rng: &mut StdRng) -> usize {
    rng.random_range(0..shared.reservations.len())
}

/// Hold a seat, then perhaps pay (again after an answer that did not decide), then perhaps
/// cancel (again likewise).
async fn flow(shared: &Shared, rng: &mut StdRng, paid: &mut Vec<pb::Reservation>) {
    let user_id = rng.random_range(1..=USERS);
    let schedule_id = shared.schedule_now();
    let seat_no = rng.random_range(1..=SEATS);
    let r = replica(shared, rng);
    let Some(held) = shared
        .hold("hold", Wait::Full, r, user_id, schedule_id, seat_no)
        .await
    else {
        return;
    };
    if rng.random_bool(0.75) {
        let mut answer = shared
            .pay("pay", Wait::Full, replica(shared, rng), &held)
            .await;
        if answer.unknown() && rng.random_bool(0.6) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            answer = shared
                .pay("pay-replay", Wait::Full, replica(shared, rng), &held)
                .await;
        }
        if let Answer::Err(status) = &answer
            && shared::error::reason_of(status).as_deref() == Some("INSUFFICIENT_BALANCE")
        {
            // Top the user up and pay again: a new attempt under a new key.
            let mut charge = Charge {
                user_id,
                amount: 5 * SEAT_PRICE,
                key: shared.key("top-up"),
                transaction_id: None,
            };
            let w = rng.random_range(0..shared.wallets.len());
            if let Answer::Ok(()) = shared.charge("charge", Wait::Full, w, &mut charge).await {
                answer = shared
                    .pay("pay-after-top-up", Wait::Full, replica(shared, rng), &held)
                    .await;
            }
        }
        if let Answer::Ok(()) = answer {
            paid.push(held);
            if rng.random_bool(0.3) {
                cancel_until_decided(shared, rng, &held).await;
            }
        }
    } else if rng.random_bool(0.4) {
        cancel_until_decided(shared, rng, &held).await;
    }
}

async fn cancel_until_decided(shared: &Shared, rng: &mut StdRng, reservation: &pb::Reservation) {
    let answer = shared
        .cancel("cancel", Wait::Full, replica(shared, rng), reservation)
        .await;
    if answer.unknown() && rng.random_bool(0.7) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        shared
            .cancel(
                "cancel-replay",
                Wait::Full,
                replica(shared, rng),
                reservation,
            )
            .await;
    }
}

/// Many clients hold one fresh seat at once, through every replica: at most one is told it
/// holds it.
async fn stampede(shared: &Shared, rng: &mut StdRng) {
    let schedule_id = i64::try_from(shared.hot_schedule.load(Ordering::Relaxed)).unwrap_or(0);
    let seat_no = shared.next_hot_seat.fetch_add(1, Ordering::Relaxed);
    if seat_no > SEATS {
        return;
    }
    let holds = (0..STAMPEDE).map(|n| {
        let user_id = rng.random_range(1..=USERS);
        let r = n % shared.reservations.len();
        shared.hold(
            "stampede-hold",
            Wait::Full,
            r,
            user_id,
            schedule_id,
            seat_no,
        )
    });
    let winners: Vec<pb::Reservation> = futures::future::join_all(holds)
        .await
        .into_iter()
        .flatten()
        .collect();
    if winners.len() > 1 {
        let ids: Vec<String> = winners
            .iter()
            .map(|r| format!("{} (user {})", r.id, r.user_id))
            .collect();
        shared.violation(format!(
            "stampede on schedule {schedule_id} seat {seat_no}: {} holds answered OK: {}",
            winners.len(),
            ids.join(", ")
        ));
    }
    if let Some(winner) = winners.first()
        && rng.random_bool(0.5)
    {
        shared
            .pay("pay", Wait::Full, replica(shared, rng), winner)
            .await;
    }
}

/// A wallet-only user uses points under a key, replays it, has it refunded, and asks for a
/// second refund of the same use under another key.
async fn wallet_use_and_refunds(shared: &Shared, rng: &mut StdRng) {
    let user_id = WALLET_USERS_FROM + rng.random_range(0..WALLET_USERS);
    let use_key = shared.key("use");
    let mut used = None;
    let replay = rng.random_bool(0.3);
    let mut w = || rng.random_range(0..shared.wallets.len());
    let answer = shared
        .use_points("use", w(), user_id, &use_key, &mut used)
        .await;
    if answer.unknown() || replay {
        shared
            .use_points("use-replay", w(), user_id, &use_key, &mut used)
            .await;
    }
    let mut refunded = None;
    let first_refund = shared.key("refund");
    let answer = shared
        .refund(
            "refund",
            w(),
            user_id,
            &first_refund,
            &use_key,
            &mut refunded,
        )
        .await;
    if answer.unknown() {
        shared
            .refund(
                "refund-replay",
                w(),
                user_id,
                &first_refund,
                &use_key,
                &mut refunded,
            )
            .await;
    }
    shared
        .refund(
            "refund-other-key",
            w(),
            user_id,
            &shared.key("refund"),
            &use_key,
            &mut refunded,
        )
        .await;
}

/// A call whose client gives up mid-way: a very short deadline, or the future dropped; then,
/// sometimes, the same request again, waited for.
async fn abandoned(
    shared: &Shared,
    rng: &mut StdRng,
    charges: &mut Vec<Charge>,
    paid: &mut [pb::Reservation],
) {
    let after = Duration::from_millis(rng.random_range(1..40));
    let wait = if rng.random_bool(0.5) {
        Wait::Deadline(after)
    } else {
        Wait::Drop(after)
    };
    match rng.random_range(0..4) {
        0 => {
            let (user_id, schedule_id, seat_no) = (
                rng.random_range(1..=USERS),
                shared.schedule_now(),
                rng.random_range(1..=SEATS),
            );
            shared
                .hold(
                    "hold-abandoned",
                    wait,
                    replica(shared, rng),
                    user_id,
                    schedule_id,
                    seat_no,
                )
                .await;
        }
        1 => {
            let (user_id, schedule_id, seat_no) = (
                rng.random_range(1..=USERS),
                shared.schedule_now(),
                rng.random_range(1..=SEATS),
            );
            let Some(held) = shared
                .hold(
                    "hold",
                    Wait::Full,
                    replica(shared, rng),
                    user_id,
                    schedule_id,
                    seat_no,
                )
                .await
            else {
                return;
            };
            shared
                .pay("pay-abandoned", wait, replica(shared, rng), &held)
                .await;
            if rng.random_bool(0.5) {
                shared
                    .pay("pay-replay", Wait::Full, replica(shared, rng), &held)
                    .await;
            }
        }
        2 => {
            if paid.is_empty() {
                return;
            }
            let reservation = paid[rng.random_range(0..paid.len())];
            shared
                .cancel("cancel-abandoned", wait, replica(shared, rng), &reservation)
                .await;
            if rng.random_bool(0.5) {
                shared
                    .cancel(
                        "cancel-replay",
                        Wait::Full,
                        replica(shared, rng),
                        &reservation,
                    )
                    .await;
            }
        }
        _ => {
            let mut charge = Charge {
                user_id: rng.random_range(1..=USERS),
                amount: rng.random_range(1..=5) * SEAT_PRICE,
                key: shared.key("charge"),
                transaction_id: None,
            };
            let w = rng.random_range(0..shared.wallets.len());
            shared
                .charge("charge-abandoned", wait, w, &mut charge)
                .await;
            // Replayed later by a "charge-replay" step, which then decides it.
            charges.push(charge);
        }
    }
}

/// Reads: a reservation the workload made, through any replica; or a page of seats.
async fn read(shared: &Shared, rng: &mut StdRng) {
    let r = replica(shared, rng);
    let mut client = shared.reservations[r].clone();
    if rng.random_bool(0.5) {
        let known = {
            let tracked = lock(&shared.tracked);
            if tracked.is_empty() {
                None
            } else {
                let skip = rng.random_range(0..tracked.len());
                tracked.iter().nth(skip).map(|(id, t)| (*id, t.user_id))
            }
        };
        if let Some((reservation_id, user_id)) = known {
            let request = request(pb::GetReservationRequest { reservation_id }, Wait::Full);
            if let Answer::Ok(reservation) = shared
                .call("get", Wait::Full, client.get_reservation(request))
                .await
                && reservation.user_id != user_id
            {
                shared.violation(format!(
                    "GetReservation({reservation_id}) answered user {}, it was held for {user_id}",
                    reservation.user_id
                ));
            }
        }
    } else {
        let request = request(
            pb::ListSeatsRequest {
                schedule_id: shared.schedule_now(),
                page_size: 100,
                page_token: String::new(),
            },
            Wait::Full,
        );
        shared
            .call("list-seats", Wait::Full, client.list_seats(request))
            .await;
    }
}
