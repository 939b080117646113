//! The abuse scenario: the distinct-seat load (d) once alone and once while five attacks run
//! against its reservation-svc at once, each bounded in size and kept up from shortly before
//! the attacked run's first hold to its last. It tells whether what one client can take from a
//! server (docs/OPERATING.md, Limits) is bounded enough that well-behaved clients keep their
//! rate, and the server its memory.
//!
//! 1. Streams that send their headers and never a body, [`HEADER_ONLY_STREAMS`] of them asked
//!    for on one HTTP/2 connection; each one answered is asked for again.
//! 2. `ListSeats` of the attacked run's own schedule (100,000 seats in `bench run`),
//!    [`UNREAD_LIST_SEATS`] calls at once over [`UNREAD_CONNECTIONS`] connections whose
//!    receive window is [`READER_WINDOW`] bytes and never given back: the server cannot send
//!    the answers. Each call the server ends or refuses is asked for again.
//! 3. Idle connections: [`SILENT_CONNECTIONS`] that connect and send nothing (opened again
//!    when the server closes them) and [`IDLE_CONNECTIONS`] that complete the HTTP/2 handshake
//!    and then idle.
//! 4. [`WATCHES`] health `Watch` streams over [`WATCH_CONNECTIONS`] connections, held open; the
//!    server takes a few and refuses the rest, which are not asked for again.
//! 5. `CreateConcert` requests of [`OVERSIZED_BYTES`], one after another on one connection.
//!
//! The attackers speak plaintext HTTP/2 (raw `h2` streams, which no gRPC client would send),
//! so they attack a service run with `INSECURE`: its limits are the same layers as
//! production's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use h2::client::SendRequest;
use serde::Serialize;
use shared::metrics::{
    BUFFERED_BYTES, CONNECTIONS_OPEN, CONNECTIONS_REFUSED, RPC_IN_FLIGHT, RPC_SHED, STREAMS_OPEN,
};
use shared::proto::reservation::v1 as reservation_pb;
use shared::proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::access::Service;
use crate::load::{Measured, OK, code_name};
use crate::probe::{self, RssSampler, Window};
use crate::report::{Scenario, Target, mebibytes, micros, thousands};
use crate::scenarios;

/// Attack 1: header-only streams asked for on its one connection.
pub const HEADER_ONLY_STREAMS: usize = 1_100;
/// Attack 2: unread `ListSeats` calls, over [`UNREAD_CONNECTIONS`] connections.
pub const UNREAD_LIST_SEATS: usize = 300;
/// Attack 2's connections: enough for every call to be open at once within the streams one
/// connection may open (`MAX_CONCURRENT_STREAMS`, 100 by default).
pub const UNREAD_CONNECTIONS: usize = 3;
/// Attack 2's receive window per stream, in bytes: the server sends this much of an answer.
pub const READER_WINDOW: u32 = 1_024;
/// Attack 3: connections that send nothing.
pub const SILENT_CONNECTIONS: usize = 250;
/// Attack 3: connections that complete the HTTP/2 handshake and send nothing more.
pub const IDLE_CONNECTIONS: usize = 250;
/// Attack 4: health `Watch` streams, over [`WATCH_CONNECTIONS`] connections.
pub const WATCHES: usize = 2_000;
pub const WATCH_CONNECTIONS: usize = 50;
/// Attack 5: the size of each oversized `CreateConcert`'s title, in bytes.
pub const OVERSIZED_BYTES: usize = 5 * 1024 * 1024;

/// How long the attacks run before the load starts, for their connections and streams to be
/// in place.
pub const ATTACK_LEAD: Duration = Duration::from_secs(2);
/// How long the server has, once the attackers are gone, to give back what they held.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// A pause before an attacker asks again after a failure, so that a closed connection does not
/// make it spin.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The least share of its rate without attack the load keeps under attack.
pub const RATE_TARGET: f64 = 0.7;
/// The most RSS each service may reach during the attack, in KiB.
pub const RSS_TARGET_KIB: u64 = 128 * 1024;

/// The reasons of `ticketing_rpc_shed_total`.
const SHED_REASONS: [&str; 6] = [
    "limit",
    "too_large",
    "slow_request",
    "slow_reader",
    "streams",
    "buffers",
];

const CREATE_CONCERT: &str = "/ticketing.reservation.v1.ReservationService/CreateConcert";
const LIST_SEATS: &str = "/ticketing.reservation.v1.ReservationService/ListSeats";

/// The reservation-svc under attack, and the well-behaved load's connections to it.
#[derive(Debug)]
pub struct Subject<'a> {
    /// How the report names it, e.g. "the plaintext pair's reservation-svc".
    pub described: String,
    /// Its gRPC address, `http://host:port`.
    pub addr: &'a str,
    /// Its metrics address, `host:port`.
    pub metrics: &'a str,
    /// The well-behaved load's connections to it.
    pub load: &'a Service,
    /// The names the sampler knows reservation-svc and wallet-svc by, in that order.
    pub services: [&'static str; 2],
}

/// The distinct-seat load of both runs: `requests` holds from `clients` clients over a fresh
/// schedule of `seats` seats.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
    pub clients: usize,
    pub seats: i32,
}

/// What the abuse scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Abuse {
    /// The service attacked, as the sampler names it.
    pub service: String,
    /// How the report names it.
    pub described: String,
    /// The distinct-seat load alone.
    pub calm: Scenario,
    /// The same load under attack; its peak RSS covers the attack from its start.
    pub attacked: Scenario,
    /// The rate under attack over the rate without.
    pub ratio: f64,
    pub attacks: Vec<AttackSummary>,
    /// Seconds from the attackers' start to their end.
    pub attack_s: f64,
    /// The seats of the schedule attack 2 lists (the attacked run's).
    pub listed_seats: i32,
    /// The size of one whole `ListSeats` answer of that schedule, as a client reads it.
    pub list_seats_answer_bytes: u64,
    /// The most `ListSeats` answers begun and not yet sent whole at once (attack 2).
    pub most_unsent_answers: u64,
    /// `ticketing_rpc_shed_total` by reason, over the attack.
    pub shed: BTreeMap<String, u64>,
    /// `ticketing_connections_refused_total` over the attack.
    pub connections_refused: u64,
    /// What the server held once the attackers had gone.
    pub after: After,
}

/// One attack and what its attacker saw, by outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AttackSummary {
    pub attack: Attack,
    pub name: String,
    pub outcomes: BTreeMap<String, u64>,
}

/// The server's gauges once the attackers had gone.
#[derive(Debug, Clone, Serialize)]
pub struct After {
    pub rpc_in_flight: f64,
    pub streams_open: f64,
    pub buffered_bytes: f64,
    pub connections_open: f64,
    /// The well-behaved load's connections, which stay open.
    pub load_connections: usize,
    /// Seconds until the gauges came back, or `None` if they had not within
    /// [`SETTLE_WITHIN`].
    pub settled_s: Option<f64>,
}

impl After {
    fn settled(&self) -> bool {
        self.rpc_in_flight == 0.0
            && self.streams_open == 0.0
            && self.buffered_bytes == 0.0
            && self.connections_open <= self.load_connections as f64
    }
}

/// Runs the load alone (unless `calm`, a run without attack, is given), then under `attacks`,
/// and reads what the server shed and held. The sampler watches both services under the names
/// of `subject.services`.
pub async fn measure(
    subject: &Subject<'_>,
    load: Load,
    attacks: &[Attack],
    calm: Option<Scenario>,
    sampler: &RssSampler,
) -> anyhow::Result<Abuse> {
    let [reservation, wallet] = subject.services;
    let services = [reservation, wallet];
    let connections = subject.load.conns.len();
    let calm = match calm {
        Some(calm) => calm,
        None => {
            let measured = scenarios::distinct_seats(
                subject.load,
                load.requests,
                load.clients,
                load.seats,
                || drop(sampler.take()),
            )
            .await?;
            let mut calm = scenario(
                "abuse-calm",
                "(d) distinct seats, no attack",
                &measured,
                load,
                connections,
            );
            calm.observe(&sampler.take(), &services);
            calm
        }
    };

    // The attacked run's schedule is made before the attacks start, so that they weigh on its
    // holds rather than on making it; attack 2 lists its seats.
    let schedule =
        scenarios::distinct_seat_schedule(subject.load, load.requests, load.seats).await?;
    let list_seats_answer_bytes = list_seats_answer_bytes(subject.load, schedule).await?;
    let shed_before = shed(subject.metrics).await?;
    let refused_before = probe::scrape(subject.metrics, CONNECTIONS_REFUSED).await?;
    sampler.take();
    let attack_started = Instant::now();
    let attackers = Attackers::start(subject.addr, attacks, schedule, load.seats).await?;
    tokio::time::sleep(ATTACK_LEAD).await;
    let mut lead: Option<Window> = None;
    let attacked = scenarios::hold_distinct_seats(
        subject.load,
        schedule,
        load.requests,
        load.clients,
        load.seats,
        || lead = Some(sampler.take()),
    )
    .await;
    let (attacks, most_unsent_answers) = attackers.stop().await;
    let attack_s = attack_started.elapsed().as_secs_f64();
    let window = sampler.take();
    let mut attacked = scenario(
        "abuse-attacked",
        "(d) distinct seats, under attack",
        &attacked?,
        load,
        connections,
    );
    attacked.observe(&window, &services);
    // The peak from the attackers' start, before the load's first hold too.
    for (name, kib) in lead.iter().flat_map(|lead| &lead.peak_rss_kib) {
        if services.contains(&name.as_str()) {
            let peak = attacked.peak_rss_kib.entry(name.clone()).or_insert(0);
            *peak = (*peak).max(*kib);
        }
    }

    let shed_after = shed(subject.metrics).await?;
    let refused_after = probe::scrape(subject.metrics, CONNECTIONS_REFUSED).await?;
    let after = settle(subject.metrics, connections).await?;
    Ok(Abuse {
        service: reservation.to_owned(),
        described: subject.described.clone(),
        ratio: attacked.rate / calm.rate.max(f64::EPSILON),
        calm,
        attacked,
        attacks,
        attack_s,
        listed_seats: load.seats,
        list_seats_answer_bytes,
        most_unsent_answers,
        shed: SHED_REASONS
            .iter()
            .map(|reason| {
                let grown = shed_after.get(reason).copied().unwrap_or(0.0)
                    - shed_before.get(reason).copied().unwrap_or(0.0);
                ((*reason).to_owned(), grown.max(0.0).round() as u64)
            })
            .collect(),
        connections_refused: (refused_after - refused_before).max(0.0).round() as u64,
        after,
    })
}

/// A distinct-seat run's figures, its rate over the holds that succeeded.
fn scenario(
    key: &str,
    name: &str,
    measured: &Measured,
    load: Load,
    connections: usize,
) -> Scenario {
    let mut scenario = Scenario::new(
        key,
        name,
        measured,
        load.clients,
        connections,
        Some(&[OK]),
        "req/s",
        None,
    );
    scenario.note_outcomes();
    scenario
}

/// Reads the largest page of the seats of `schedule_id` once, for the size of the answer attack
/// 2 leaves unread.
async fn list_seats_answer_bytes(load: &Service, schedule_id: i64) -> anyhow::Result<u64> {
    let seats = ReservationServiceClient::new(load.first()?.clone())
        .list_seats(largest_seat_page(schedule_id))
        .await
        .context("ListSeats of the big schedule")?
        .into_inner();
    Ok(prost::Message::encoded_len(&seats) as u64)
}

/// The largest page of seats a client may ask for.
fn largest_seat_page(schedule_id: i64) -> reservation_pb::ListSeatsRequest {
    reservation_pb::ListSeatsRequest {
        schedule_id,
        page_size: 5_000,
        page_token: String::new(),
    }
}

/// `ticketing_rpc_shed_total` now, by reason.
async fn shed(metrics: &str) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let mut by_reason = BTreeMap::new();
    for reason in SHED_REASONS {
        let series = format!("{RPC_SHED}{{reason=\"{reason}\"}}");
        by_reason.insert(reason, probe::scrape(metrics, &series).await?);
    }
    Ok(by_reason)
}

/// Waits until the server has given back what the attackers held (no call in flight, no
/// stream open, no byte held, no connection but the load's), for at most [`SETTLE_WITHIN`], and reads the
/// gauges.
async fn settle(metrics: &str, load_connections: usize) -> anyhow::Result<After> {
    let started = Instant::now();
    loop {
        let after = After {
            rpc_in_flight: probe::scrape(metrics, RPC_IN_FLIGHT).await?,
            streams_open: probe::scrape(metrics, STREAMS_OPEN).await?,
            buffered_bytes: probe::scrape(metrics, BUFFERED_BYTES).await?,
            connections_open: probe::scrape(metrics, CONNECTIONS_OPEN).await?,
            load_connections,
            settled_s: Some(started.elapsed().as_secs_f64()),
        };
        if after.settled() {
            return Ok(after);
        }
        if started.elapsed() >= SETTLE_WITHIN {
            return Ok(After {
                settled_s: None,
                ..after
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What each attacker saw, by outcome: a gRPC code's name, or what became of its stream or
/// connection.
#[derive(Debug, Default)]
struct Outcomes(Mutex<BTreeMap<&'static str, u64>>);

impl Outcomes {
    fn add(&self, outcome: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(outcome).or_default() += 1;
    }

    fn summary(&self, attack: Attack, seats: i32) -> AttackSummary {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        AttackSummary {
            attack,
            name: attack.name(seats),
            outcomes: counts
                .iter()
                .map(|(outcome, count)| ((*outcome).to_owned(), *count))
                .collect(),
        }
    }
}

/// Answers begun and not sent whole: how many now, and the most at once.
#[derive(Debug, Default)]
struct Unsent {
    now: AtomicU64,
    most: AtomicU64,
}

impl Unsent {
    fn begun(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.most.fetch_max(now, Ordering::Relaxed);
    }

    fn ended(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of the five attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// (1) Header-only streams on one connection.
    HeaderOnly,
    /// (2) Unread `ListSeats` answers on one connection.
    UnreadListSeats,
    /// (3) Connections that send nothing, and idle HTTP/2 connections.
    IdleConnections,
    /// (4) Health `Watch` streams.
    Watches,
    /// (5) Oversized requests in a loop.
    Oversized,
}

impl Attack {
    pub const ALL: [Self; 5] = [
        Self::HeaderOnly,
        Self::UnreadListSeats,
        Self::IdleConnections,
        Self::Watches,
        Self::Oversized,
    ];

    /// What the report calls it, when attack 2 lists a schedule of `seats` seats.
    fn name(self, seats: i32) -> String {
        match self {
            Self::HeaderOnly => format!(
                "(1) {} header-only streams on one connection",
                thousands(HEADER_ONLY_STREAMS as u64)
            ),
            Self::UnreadListSeats => format!(
                "(2) {} unread `ListSeats` pages of 5,000 seats (a schedule of {}) on {} \
                 connections ({} B window)",
                thousands(UNREAD_LIST_SEATS as u64),
                thousands(u64::try_from(seats).unwrap_or(0)),
                UNREAD_CONNECTIONS,
                thousands(u64::from(READER_WINDOW)),
            ),
            Self::IdleConnections => format!(
                "(3) {} connections that send nothing, {} idle HTTP/2 connections",
                thousands(SILENT_CONNECTIONS as u64),
                thousands(IDLE_CONNECTIONS as u64)
            ),
            Self::Watches => format!(
                "(4) {} health `Watch` streams on {} connections",
                thousands(WATCHES as u64),
                WATCH_CONNECTIONS
            ),
            Self::Oversized => format!(
                "(5) `CreateConcert` of {} in a loop",
                mebibytes(OVERSIZED_BYTES as u64 / 1024)
            ),
        }
    }
}

/// The attacks, running until [`Attackers::stop`].
#[derive(Debug)]
struct Attackers {
    /// Every attacker's task, and the tasks driving their HTTP/2 connections.
    tasks: JoinSet<()>,
    /// What each attack's attacker saw.
    outcomes: BTreeMap<Attack, Arc<Outcomes>>,
    /// Attack 2's answers begun and not sent whole.
    unsent: Arc<Unsent>,
    /// The seats of the schedule attack 2 lists.
    listed_seats: i32,
}

impl Attackers {
    /// Connects the attackers of `attacks` to `addr` and sets them going; attack 2 lists the
    /// seats of `schedule_id`, a schedule of `seats` seats.
    async fn start(
        addr: &str,
        attacks: &[Attack],
        schedule_id: i64,
        seats: i32,
    ) -> anyhow::Result<Self> {
        let authority = authority(addr)?;
        let mut attackers = Self {
            tasks: JoinSet::new(),
            outcomes: BTreeMap::new(),
            unsent: Arc::default(),
            listed_seats: seats,
        };
        for &attack in attacks {
            let outcomes: Arc<Outcomes> = Arc::default();
            attackers.outcomes.insert(attack, Arc::clone(&outcomes));
            let tasks = &mut attackers.tasks;
            match attack {
                Attack::HeaderOnly => {
                    let h2 = h2_connect(&authority, h2::client::Builder::new(), tasks).await?;
                    for _ in 0..HEADER_ONLY_STREAMS {
                        let repeated = Repeated {
                            kind: StreamKind::HeaderOnly,
                            authority: authority.clone(),
                            outcomes: Arc::clone(&outcomes),
                        };
                        tasks.spawn(repeated.run(h2.clone()));
                    }
                }
                Attack::UnreadListSeats => {
                    let mut reader = h2::client::Builder::new();
                    reader.initial_window_size(READER_WINDOW);
                    let mut connections = Vec::new();
                    for _ in 0..UNREAD_CONNECTIONS {
                        connections.push(h2_connect(&authority, reader.clone(), tasks).await?);
                    }
                    let request = frame(&prost::Message::encode_to_vec(&largest_seat_page(
                        schedule_id,
                    )));
                    for h2 in connections.iter().cycle().take(UNREAD_LIST_SEATS) {
                        let repeated = Repeated {
                            kind: StreamKind::Unread {
                                request: request.clone(),
                                unsent: Arc::clone(&attackers.unsent),
                            },
                            authority: authority.clone(),
                            outcomes: Arc::clone(&outcomes),
                        };
                        tasks.spawn(repeated.run(h2.clone()));
                    }
                }
                Attack::IdleConnections => {
                    for _ in 0..SILENT_CONNECTIONS {
                        let (authority, outcomes) = (authority.clone(), Arc::clone(&outcomes));
                        tasks.spawn(async move { silent_connection(&authority, &outcomes).await });
                    }
                    for _ in 0..IDLE_CONNECTIONS {
                        let (authority, outcomes) = (authority.clone(), Arc::clone(&outcomes));
                        tasks.spawn(async move { idle_connection(&authority, &outcomes).await });
                    }
                }
                Attack::Watches => {
                    for _ in 0..WATCH_CONNECTIONS {
                        let channel = tonic::transport::Channel::from_shared(addr.to_owned())?
                            .connect_timeout(Duration::from_secs(5))
                            .connect()
                            .await
                            .with_context(|| format!("connecting to {addr}"))?;
                        for _ in 0..WATCHES / WATCH_CONNECTIONS {
                            tasks.spawn(watch(channel.clone(), Arc::clone(&outcomes)));
                        }
                    }
                }
                Attack::Oversized => {
                    let h2 = h2_connect(&authority, h2::client::Builder::new(), tasks).await?;
                    let repeated = Repeated {
                        kind: StreamKind::Oversized {
                            request: frame(&prost::Message::encode_to_vec(
                                &reservation_pb::CreateConcertRequest {
                                    title: "x".repeat(OVERSIZED_BYTES),
                                },
                            )),
                        },
                        authority: authority.clone(),
                        outcomes,
                    };
                    tasks.spawn(repeated.run(h2));
                }
            }
        }
        Ok(attackers)
    }

    /// Stops every attacker and closes their connections; returns what each attack saw, and
    /// the most answers attack 2 had unsent at once.
    async fn stop(mut self) -> (Vec<AttackSummary>, u64) {
        self.tasks.shutdown().await;
        let summaries = self
            .outcomes
            .iter()
            .map(|(attack, outcomes)| outcomes.summary(*attack, self.listed_seats))
            .collect();
        (summaries, self.unsent.most.load(Ordering::Relaxed))
    }
}

/// A health `Watch` of the whole server, held open and read until it ends; one refused at the
/// server's limits is not asked for again.
async fn watch(channel: tonic::transport::Channel, outcomes: Arc<Outcomes>) {
    let watched = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await;
    let mut stream = match watched {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            outcomes.add(code_name(status.code()));
            return;
        }
    };
    outcomes.add("open");
    // What health says while under attack: a server whose dependencies time out reports
    // NOT_SERVING, and a readiness probe would take it out of service.
    while let Ok(Some(health)) = stream.message().await {
        outcomes.add(match health.status() {
            ServingStatus::Serving => "saw SERVING",
            ServingStatus::NotServing => "saw NOT_SERVING",
            _ => "saw another status",
        });
    }
    outcomes.add("ended");
}

/// The streams attacks 1, 2 and 5 make, one after another.
#[derive(Debug, Clone)]
enum StreamKind {
    /// Headers of a `CreateConcert`, and a body kept open and never written to.
    HeaderOnly,
    /// A `ListSeats` whose answer is read only as far as the window lets the server send it:
    /// the window is never given back (what arrives is taken from the connection, never
    /// released), so the server keeps the rest.
    Unread { request: Bytes, unsent: Arc<Unsent> },
    /// A `CreateConcert` far over the server's limit, sent whole.
    Oversized { request: Bytes },
}

/// One attacker's streams on a shared connection, each made again once the last has ended.
#[derive(Debug)]
struct Repeated {
    kind: StreamKind,
    authority: String,
    outcomes: Arc<Outcomes>,
}

impl Repeated {
    /// Makes one stream after another on the connection of `h2`, counting what became of
    /// each; a failed stream counts as `stream reset` and is followed by a pause. Stops when
    /// the connection is gone.
    async fn run(self, mut h2: SendRequest<Bytes>) {
        loop {
            h2 = match h2.ready().await {
                Ok(ready) => ready,
                Err(_) => {
                    self.outcomes.add("connection closed");
                    return;
                }
            };
            match self.stream(&mut h2).await {
                Ok(outcome) => self.outcomes.add(outcome),
                Err(_) => {
                    self.outcomes.add("stream reset");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// One stream, until the server has answered it (or, for an unread answer, dropped it).
    async fn stream(&self, h2: &mut SendRequest<Bytes>) -> Result<&'static str, h2::Error> {
        match &self.kind {
            StreamKind::HeaderOnly => {
                let (response, body) =
                    h2.send_request(grpc_request(&self.authority, CREATE_CONCERT)?, false)?;
                let answer = response.await;
                drop(body);
                Ok(code_in(&answer?).unwrap_or("answered"))
            }
            StreamKind::Unread { request, unsent } => {
                let (response, mut body) =
                    h2.send_request(grpc_request(&self.authority, LIST_SEATS)?, false)?;
                body.send_data(request.clone(), true)?;
                let response = response.await?;
                if let Some(code) = code_in(&response) {
                    return Ok(code);
                }
                self.outcomes.add("answer begun");
                unsent.begun();
                let mut answer = response.into_body();
                let ended = loop {
                    match answer.data().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break "answer reset",
                        None => break "answer received whole",
                    }
                };
                unsent.ended();
                Ok(ended)
            }
            StreamKind::Oversized { request } => {
                let (response, mut body) =
                    h2.send_request(grpc_request(&self.authority, CREATE_CONCERT)?, false)?;
                body.send_data(request.clone(), true)?;
                Ok(code_in(&response.await?).unwrap_or(OK))
            }
        }
    }
}

/// A connection that sends nothing, opened again each time the server closes it.
async fn silent_connection(authority: &str, outcomes: &Outcomes) {
    loop {
        let Ok(mut tcp) = TcpStream::connect(authority).await else {
            outcomes.add("silent: connect failed");
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        outcomes.add("silent: connected");
        // The server's own HTTP/2 preface may come; then the end.
        let mut buffer = [0u8; 256];
        while let Ok(1..) = tcp.read(&mut buffer).await {}
        outcomes.add("silent: closed by the server");
    }
}

/// A connection that completes the HTTP/2 handshake and then sends nothing of its own (its
/// HTTP/2 layer still answers the server's pings), until the server closes it.
async fn idle_connection(authority: &str, outcomes: &Outcomes) {
    let Ok(tcp) = TcpStream::connect(authority).await else {
        outcomes.add("HTTP/2: connect failed");
        return;
    };
    let Ok((h2, connection)) = h2::client::handshake(tcp).await else {
        outcomes.add("HTTP/2: handshake failed");
        return;
    };
    outcomes.add("HTTP/2: open");
    let _idle = h2;
    let _ = connection.await;
    outcomes.add("HTTP/2: closed by the server");
}

/// An HTTP/2 connection to `authority` with the settings of `builder`, driven by a task of
/// `tasks`.
async fn h2_connect(
    authority: &str,
    builder: h2::client::Builder,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<SendRequest<Bytes>> {
    let tcp = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    tcp.set_nodelay(true)?;
    let (h2, connection) = builder
        .handshake(tcp)
        .await
        .with_context(|| format!("HTTP/2 handshake with {authority}"))?;
    tasks.spawn(async move {
        let _ = connection.await;
    });
    Ok(h2)
}

/// `host:port` of `http://host:port`; the attackers speak plaintext only.
fn authority(addr: &str) -> anyhow::Result<String> {
    let uri: http::Uri = addr
        .parse()
        .with_context(|| format!("{addr} is not a URI"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "{addr}: the attackers speak plaintext HTTP/2 only; attack a service run with INSECURE=true"
    );
    uri.authority()
        .map(ToString::to_string)
        .with_context(|| format!("{addr} has no host:port"))
}

/// The headers of a gRPC call of `path`.
fn grpc_request(authority: &str, path: &str) -> Result<http::Request<()>, h2::Error> {
    http::Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|_| h2::Reason::INTERNAL_ERROR.into())
}

/// A gRPC message's frame: no compression, the length, the message.
fn frame(message: &[u8]) -> Bytes {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// The gRPC code of an answer refused before its body (a "trailers-only" answer), if it is
/// one.
fn code_in(response: &http::Response<h2::RecvStream>) -> Option<&'static str> {
    tonic::Status::from_header_map(response.headers()).map(|status| code_name(status.code()))
}

impl Abuse {
    /// The targets: the load's rate under attack, and each service's peak RSS.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = vec![Target {
            what: format!(
                "abuse: distinct-seat holds under attack vs without, {}",
                self.service
            ),
            goal: format!("≥ {RATE_TARGET}×"),
            measured: format!(
                "{:.2}× ({} vs {} req/s)",
                self.ratio,
                thousands(self.attacked.rate.round() as u64),
                thousands(self.calm.rate.round() as u64)
            ),
            met: self.ratio >= RATE_TARGET,
        }];
        for (name, kib) in &self.attacked.peak_rss_kib {
            targets.push(Target {
                what: format!("abuse: peak RSS of {name} during the attack (VmRSS)"),
                goal: format!("≤ {}", mebibytes(RSS_TARGET_KIB)),
                measured: mebibytes(*kib),
                met: *kib > 0 && *kib <= RSS_TARGET_KIB,
            });
        }
        targets
    }

    /// How the load's calls were answered, unless all succeeded; and, where a target is
    /// missed, where the machine's time or the server's memory went.
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self
            .calm
            .notes
            .iter()
            .chain(&self.attacked.notes)
            .cloned()
            .collect();
        if self.ratio < RATE_TARGET {
            notes.push(self.cpu_note());
        }
        if self
            .attacked
            .peak_rss_kib
            .values()
            .any(|kib| *kib > RSS_TARGET_KIB)
        {
            notes.push(self.memory_note());
        }
        notes.extend(self.health_note());
        notes
    }

    /// Where the machine's time went under attack, per hold, against the run without, and what
    /// attack 2 asked of the database.
    fn cpu_note(&self) -> String {
        let (calm, attacked) = (&self.calm.cpu_per_request, &self.attacked.cpu_per_request);
        let process = |cpu: &probe::CpuPerRequest, name: &str| {
            cpu.by_process_us
                .iter()
                .filter(|(process, _)| process.starts_with(name))
                .map(|(_, us)| us)
                .sum::<f64>()
        };
        let grown = |name: &str| micros(process(attacked, name) - process(calm, name));
        let rest =
            |cpu: &probe::CpuPerRequest| cpu.machine_us - cpu.by_process_us.values().sum::<f64>();
        format!(
            "abuse: every core busy, so the load's rate follows what the machine spends per \
             hold: {} under attack against {} without; of the difference, reservation-svc {}, \
             the load generator with the attackers {}, the rest (Postgres, Redis, the kernel) \
             {}. Attack 2's calls are the ones that reach the database: {} `ListSeats` answers \
             begun, each reading all {} seats of the schedule before it answers ({} of answer), \
             and {} more answered `UNAVAILABLE` after waiting `DB_ACQUIRE_TIMEOUT` for a \
             database connection, for which the holds wait in the same queue. Nothing bounds the \
             rows one call reads, nor the calls one client has at once but \
             `MAX_CONCURRENT_STREAMS` per connection and `MAX_CONCURRENT_RPCS` per server.",
            micros(attacked.machine_us),
            micros(calm.machine_us),
            grown("reservation-svc"),
            grown(probe::HARNESS),
            micros(rest(attacked) - rest(calm)),
            thousands(self.outcome(Attack::UnreadListSeats, "answer begun")),
            thousands(u64::try_from(self.listed_seats).unwrap_or(0)),
            mebibytes(self.list_seats_answer_bytes / 1024),
            thousands(self.outcome(Attack::UnreadListSeats, "UNAVAILABLE")),
        )
    }

    /// What the unsent answers held in memory, and what else did.
    fn memory_note(&self) -> String {
        format!(
            "abuse: up to {} `ListSeats` answers of {} each were begun and not sent at once, \
             {} in all, on top of the calls being answered (each holds all the schedule's seats \
             while it builds its answer, up to `DB_POOL_SIZE` at once). The server gives the \
             call's place back at `RPC_TIMEOUT` ({} `slow_reader`), but keeps an unread answer \
             until its client reads or its connection ends, at the latest 10 minutes and 30 s \
             after the connection opened (attack 2 saw none of its answers reset): one \
             connection may hold `MAX_CONCURRENT_STREAMS` such answers, and a client as many \
             connections as `MAX_CONNECTIONS` lets it open.",
            thousands(self.most_unsent_answers),
            mebibytes(self.list_seats_answer_bytes / 1024),
            mebibytes(self.most_unsent_answers * self.list_seats_answer_bytes / 1024),
            thousands(self.shed.get("slow_reader").copied().unwrap_or(0)),
        )
    }

    /// Health as the open `Watch` streams saw it, when it went NOT_SERVING under attack.
    fn health_note(&self) -> Option<String> {
        let not_serving = self.outcome(Attack::Watches, "saw NOT_SERVING");
        let open = self.outcome(Attack::Watches, "open");
        (not_serving > 0).then(|| {
            format!(
                "abuse: health went NOT_SERVING under attack ({} times over the {} open `Watch` \
                 streams): its Postgres check waits for a database connection like any call, \
                 so calls that keep the pool busy make the server look down to a readiness \
                 probe.",
                thousands(not_serving),
                thousands(open),
            )
        })
    }

    /// How many times attack `attack` saw `outcome`.
    fn outcome(&self, attack: Attack, outcome: &str) -> u64 {
        self.attacks
            .iter()
            .find(|summary| summary.attack == attack)
            .and_then(|summary| summary.outcomes.get(outcome))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attackers_take_plaintext_addresses_only() {
        assert_eq!(
            authority("http://127.0.0.1:50051").expect("plaintext"),
            "127.0.0.1:50051"
        );
        assert!(authority("https://localhost:50051").is_err());
        assert!(authority("not a uri").is_err());
    }

    #[test]
    fn a_frame_is_a_flag_a_length_and_the_message() {
        assert_eq!(frame(b"abc").as_ref(), [0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
