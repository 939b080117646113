//! The waiting rooms, through the production reservation-svc: (g) `Enter` into a room where a
//! million users already wait, next to the fill itself (the service's own `Enter` script run
//! straight on Redis); (h) position streams held open on one replica, and what they cost it in
//! Redis calls and memory; (i) holds with an admission token against the same holds on a
//! schedule without a room.
//!
//! (g) and (h) share one slow room (a call every 1,000 s, one active user at most), so that
//! everyone in it stays waiting; (i) has a fast room of its own, made after (h): each room
//! costs every replica a Redis call per tick, and (h) counts the calls of one room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use futures::StreamExt;
use protocol::admission::RoomConfig;
use reservation_svc::admission::{Queue, RoomSettings};
use shared::proto::admission::v1 as admission_pb;
use shared::proto::admission::v1::admission_service_client::AdmissionServiceClient;
use tonic::metadata::AsciiMetadataValue;

use super::context::{
    Bench, CLIENTS, RESERVATION, ROOM_ENTER_FIRST_USER, ROOM_FILL_FIRST_USER, ROOM_HOLD_FIRST_USER,
    Spec,
};
use super::{ScenarioResult, relative_target};
use crate::access::{Caller, Service, as_user};
use crate::baseline::Baseline;
use crate::load::{self, Measured, OK, outcome};
use crate::probe::{self, CpuTicks};
use crate::report::{Scenario, Target, mebibytes, thousands};
use crate::scenarios::{self, SpreadHolds};
use crate::tls_cost::median;

/// Every Redis command reservation-svc runs, counted by `command` and `result`.
const REDIS_CALLS: &str = "ticketing_redis_command_duration_seconds_count";
/// The room ticks among them: every replica's, every 500 ms per room, whatever its callers do.
const ROOM_TICKS: &str = "command=\"room_tick\"";
/// `Enter` scripts in flight at once on the fill's one Redis connection (pipelined).
const FILL_IN_FLIGHT: usize = 512;
/// Position streams on one HTTP/2 connection: under the server's `MAX_CONCURRENT_STREAMS`
/// (100), so that none waits for a stream of its connection to end.
const STREAMS_PER_CONNECTION: usize = 80;
/// How long (h) holds its streams open once every one has had its first message.
const STREAM_HOLD: Duration = Duration::from_secs(10);
/// Rounds of each side of (i), alternated; each side's median round stands for it.
const HOLD_ROUNDS: u64 = 3;
/// How long a user of (i) may wait for the room's tick to call them.
const ADMISSION_WAIT: Duration = Duration::from_secs(30);
/// Long enough for any run: claim windows and tokens of both rooms.
const ROOM_HOUR: prost_types::Duration = prost_types::Duration {
    seconds: 3_600,
    nanos: 0,
};

/// The targets of the family.
const ENTER_P99_MS: f64 = 5.0;
const REDIS_CALLS_PER_ENTER: f64 = 2.0;
const STREAMS_REDIS_CALLS_PER_S: f64 = 4.0;
const STREAMS_PEAK_RSS_MIB: u64 = 128;
const HOLDS_WITH_TOKEN_RATIO: f64 = 0.95;

impl Bench {
    /// (g), (h) and (i), in that order.
    pub(super) async fn waiting_rooms(&self) -> anyhow::Result<Vec<ScenarioResult>> {
        let reservation = &self.production.reservation;
        let schedule_id =
            scenarios::create_schedule(reservation.first()?, "Waiting room", 1_000, 0).await?;
        configure_room(
            reservation,
            schedule_id,
            admission_pb::ConfigureRoomRequest {
                schedule_id,
                rate_per_s: 0.001,
                burst: 1,
                max_active: 1,
                claim_window: Some(ROOM_HOUR),
                token_ttl: Some(ROOM_HOUR),
                opens_at: None,
            },
        )
        .await?;
        let enter = self.room_enter(schedule_id).await?;
        let streams = self.room_streams(schedule_id).await?;
        let [with_token, without_room] = self.holds_with_token().await?;
        Ok(vec![enter, streams, with_token, without_room])
    }

    /// (g) The room filled straight on Redis, then `Enter`s of new users through the service,
    /// with the Redis calls each costs the replica.
    async fn room_enter(&self, schedule_id: i64) -> anyhow::Result<ScenarioResult> {
        let fill = self.fill_room(schedule_id).await?;
        let reservation = &self.production.reservation;
        let enters = self.sizes.room_enters;
        let user_of = |index: u64| ROOM_ENTER_FIRST_USER + i64::try_from(index).unwrap_or(0);
        reservation.sign_tokens((0..enters).map(user_of))?;
        let metrics = &self.args.reservation_metrics;
        let (calls_before, ticks_before) = redis_calls(metrics).await?;
        self.start_window();
        let measured = load::drive(
            "room enter",
            enters,
            CLIENTS,
            &reservation.conns,
            move |channel, index, _| {
                let user_id = user_of(index);
                let request = admission_pb::EnterRequest {
                    schedule_id,
                    user_id,
                };
                async move {
                    outcome(
                        &AdmissionServiceClient::new(channel)
                            .enter(as_user(user_id, request))
                            .await,
                    )
                }
            },
        )
        .await?;
        let (calls_after, ticks_after) = redis_calls(metrics).await?;
        let mut scenario = self.observed(
            Spec::successes(
                "room-enter",
                &format!(
                    "(g) waiting room: `Enter` with {} users queued",
                    thousands(self.sizes.room_fill)
                ),
                CLIENTS,
            ),
            &measured,
            &[RESERVATION],
        );
        scenario.against(&fill);
        let ticks = ticks_after - ticks_before;
        let per_enter = (calls_after - calls_before - ticks) / enters as f64;
        let p99_ms = scenario.p99_us as f64 / 1_000.0;
        let targets = vec![
            Target {
                what: "waiting room: `Enter` p99 with the room full".to_owned(),
                goal: format!("≤ {ENTER_P99_MS} ms"),
                measured: format!("{p99_ms:.1} ms"),
                met: p99_ms <= ENTER_P99_MS,
            },
            Target {
                what: "waiting room: Redis round trips per `Enter`".to_owned(),
                goal: format!("≤ {REDIS_CALLS_PER_ENTER}"),
                measured: format!(
                    "{per_enter:.2} ({} calls of reservation-svc but its {} room ticks, over {} \
                     `Enter`s)",
                    thousands((calls_after - calls_before - ticks).round() as u64),
                    thousands(ticks.round() as u64),
                    thousands(enters),
                ),
                met: per_enter <= REDIS_CALLS_PER_ENTER,
            },
        ];
        let note = format!(
            "(g) waiting room: a room open since the run made it, at 0.001 admissions a second \
             and 1 active user at most, so that every number stays waiting; {} users queued \
             first straight on Redis, in {:.1} s (`Queue::enter`, the service's own script, \
             {FILL_IN_FLIGHT} at once on one connection), then {} `Enter`s of new users through \
             the production reservation-svc from {CLIENTS} clients, each with the user's own \
             token. Redis round trips per `Enter`: every Redis command reservation-svc counted \
             (`{REDIS_CALLS}`) over the `Enter`s' window, but the room's ticks. Each client \
             always has a call in flight, so the mean latency is clients / rate = {:.1} ms \
             (Little's law): a p99 of {ENTER_P99_MS} ms from {CLIENTS} clients takes more than \
             {} `Enter`s a second.",
            thousands(self.sizes.room_fill),
            self.sizes.room_fill as f64 / fill.rate.max(f64::EPSILON),
            thousands(enters),
            CLIENTS as f64 / scenario.rate.max(f64::EPSILON) * 1_000.0,
            thousands((CLIENTS as f64 / ENTER_P99_MS * 1_000.0).round() as u64),
        );
        let mut result = ScenarioResult::with_baselines(scenario, vec![fill]);
        result.targets = targets;
        result.notes.push(note);
        Ok(result)
    }

    /// Queues `room_fill` users in the room of `schedule_id` with the service's own `Enter`
    /// script, straight on Redis under the service's key prefix, with the room's settings as
    /// the service reads them from Postgres; the baseline row of (g).
    async fn fill_room(&self, schedule_id: i64) -> anyhow::Result<Baseline> {
        let settings = self.room_settings(schedule_id).await?;
        let config = fred::prelude::Config::from_url(&format!(
            "redis://{}:{}",
            self.args.redis_host, self.args.redis_port
        ))?;
        let client = fred::prelude::Builder::from_config(config).build()?;
        client.init().await?;
        let queue = Queue::new(
            client.clone(),
            &self.args.redis_prefix,
            Duration::from_secs(30),
        );
        let users = self.sizes.room_fill;
        let progress = load::progress_bar("room fill", users);
        let cpu_from = CpuTicks::now(&[]);
        let started = Instant::now();
        let mut latencies = load::new_histogram();
        let mut failed = 0_u64;
        let mut answers = futures::stream::iter(0..users)
            .map(|index| {
                let queue = &queue;
                async move {
                    let user = ROOM_FILL_FIRST_USER + i64::try_from(index).unwrap_or(0);
                    let sent = Instant::now();
                    let entered = queue.enter(&settings, user, 0).await;
                    (entered.is_ok(), sent.elapsed())
                }
            })
            .buffer_unordered(FILL_IN_FLIGHT);
        while let Some((entered, latency)) = answers.next().await {
            if entered {
                load::record(&mut latencies, latency);
            } else {
                failed += 1;
            }
            progress.inc(1);
        }
        let elapsed = started.elapsed();
        progress.finish_and_clear();
        let cpu = cpu_from.per_request_since(&CpuTicks::now(&[]), users);
        drop(answers);
        client.quit().await?;
        anyhow::ensure!(
            failed == 0,
            "filling the room: {failed} of {users} entries failed"
        );
        Ok(Baseline {
            key: "room-fill".to_owned(),
            name: format!(
                "the room's `Enter` script straight on Redis (`EVALSHA`), {} users",
                thousands(users)
            ),
            command: format!(
                "reservation_svc::admission::Queue::enter on one fred connection, \
                 {FILL_IN_FLIGHT} in flight, schedule {schedule_id}, key prefix {}",
                self.args.redis_prefix
            ),
            requests: users,
            clients: FILL_IN_FLIGHT,
            rate: users as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
            machine_cpu_us: cpu.machine_us,
        })
    }

    /// The room of `schedule_id` as the service reads it from `waiting_rooms`.
    async fn room_settings(&self, schedule_id: i64) -> anyhow::Result<RoomSettings> {
        let row = probe::psql_value(
            &self.args.reservation_database_url,
            &format!(
                "SELECT rate_milli_per_s, burst, max_active, claim_window_ms, token_ttl_ms, \
                 floor(extract(epoch FROM opens_at) * 1000)::bigint, \
                 floor(extract(epoch FROM updated_at) * 1000000)::bigint \
                 FROM waiting_rooms WHERE schedule_id = {schedule_id}"
            ),
        )
        .await?;
        let values = row
            .split('|')
            .map(str::parse::<i64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("the room of {schedule_id}: {row:?}: {error}"))?;
        let [
            rate,
            burst,
            max_active,
            claim_window,
            token_ttl,
            opens_at,
            version,
        ] = values[..]
        else {
            anyhow::bail!("the room of {schedule_id}: psql answered {row:?}");
        };
        Ok(RoomSettings {
            schedule_id,
            config: RoomConfig {
                rate_milli_per_s: rate,
                burst,
                max_active,
                claim_window_ms: claim_window,
                token_ttl_ms: token_ttl,
                opens_at_ms: opens_at,
            },
            version,
        })
    }

    /// (h) `room_streams` position streams of (g)'s entrants, all waiting, on the production
    /// reservation-svc, held open [`STREAM_HOLD`] once each has had its first message.
    async fn room_streams(&self, schedule_id: i64) -> anyhow::Result<ScenarioResult> {
        let streams = usize::try_from(self.sizes.room_streams)?;
        let connections = streams.div_ceil(STREAMS_PER_CONNECTION);
        let service = Service::connect(
            std::slice::from_ref(&self.args.reservation),
            connections,
            &self.args.access,
            Caller::Users,
        )
        .await?;
        let user_of = |index: usize| ROOM_ENTER_FIRST_USER + i64::try_from(index).unwrap_or(0);
        service.sign_tokens((0..streams).map(user_of))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
        self.start_window();
        let started = Instant::now();
        let followers: Vec<_> = (0..streams)
            .map(|index| {
                let channel = service.conns[index % service.conns.len()].clone();
                let user_id = user_of(index);
                let first_tx = first_tx.clone();
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let opened = AdmissionServiceClient::new(channel)
                        .watch_position(as_user(
                            user_id,
                            admission_pb::WatchPositionRequest {
                                schedule_id,
                                user_id,
                            },
                        ))
                        .await;
                    let mut stream = match opened {
                        Ok(stream) => stream.into_inner(),
                        Err(status) => {
                            let _ = first_tx.send((load::code_name(status.code()), sent.elapsed()));
                            return false;
                        }
                    };
                    let first = match stream.message().await {
                        Ok(Some(_)) => OK,
                        Ok(None) => "ENDED",
                        Err(status) => load::code_name(status.code()),
                    };
                    let _ = first_tx.send((first, sent.elapsed()));
                    if first != OK {
                        return false;
                    }
                    // Open until told to stop: an end before it is a stream lost.
                    loop {
                        tokio::select! {
                            _ = stop_rx.changed() => return true,
                            message = stream.message() => {
                                if !matches!(message, Ok(Some(_))) {
                                    return false;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        drop(first_tx);
        // One each: the streams stay open, and their senders with them, after it.
        let mut first_messages = Measured::default();
        for _ in 0..streams {
            let Some((first, latency)) = first_rx.recv().await else {
                break;
            };
            load::record(
                first_messages
                    .outcomes
                    .entry(first)
                    .or_insert_with(load::new_histogram),
                latency,
            );
        }
        first_messages.elapsed = started.elapsed();

        let metrics = &self.args.reservation_metrics;
        let (calls_before, ticks_before) = redis_calls(metrics).await?;
        let held_from = Instant::now();
        tokio::time::sleep(STREAM_HOLD).await;
        let (calls_after, ticks_after) = redis_calls(metrics).await?;
        let held_s = held_from.elapsed().as_secs_f64();
        let _ = stop_tx.send(true);
        let mut open_at_end = 0_u64;
        for follower in futures::future::join_all(followers).await {
            if follower? {
                open_at_end += 1;
            }
        }
        let mut scenario = self.observed(
            Spec::successes(
                "room-streams",
                &format!(
                    "(h) waiting room: {} `WatchPosition` streams on one replica (time to the \
                     first message)",
                    thousands(streams as u64)
                ),
                streams,
            ),
            &first_messages,
            &[RESERVATION],
        );
        scenario.connections = connections;
        scenario.rate_unit = "streams/s".to_owned();
        let per_s = (calls_after - calls_before) / held_s;
        let peak_kib = scenario.peak_rss_kib.get(RESERVATION).copied().unwrap_or(0);
        let first_ok = first_messages.count(OK);
        let targets = vec![
            Target {
                what: format!(
                    "waiting room: Redis calls of the replica with {} streams open",
                    thousands(streams as u64)
                ),
                goal: format!("≤ {STREAMS_REDIS_CALLS_PER_S}/s"),
                measured: format!(
                    "{per_s:.1}/s ({} calls in {held_s:.1} s, of which {} room ticks)",
                    thousands((calls_after - calls_before).round() as u64),
                    thousands((ticks_after - ticks_before).round() as u64),
                ),
                met: per_s <= STREAMS_REDIS_CALLS_PER_S,
            },
            Target {
                what: "waiting room: peak RSS of reservation-svc with the streams open (VmRSS)"
                    .to_owned(),
                goal: format!("≤ {STREAMS_PEAK_RSS_MIB} MiB"),
                measured: mebibytes(peak_kib),
                met: peak_kib > 0 && peak_kib <= STREAMS_PEAK_RSS_MIB * 1024,
            },
            Target {
                what: "waiting room: streams that had their first message".to_owned(),
                goal: format!("all {}", thousands(streams as u64)),
                measured: thousands(first_ok),
                met: first_ok == streams as u64,
            },
        ];
        let note = format!(
            "(h) waiting room: {} of (g)'s entrants, each about {} numbers from being called, \
             open a `WatchPosition` stream each on the production reservation-svc (TLS, the \
             user's own token), {STREAMS_PER_CONNECTION} on each of {connections} HTTP/2 \
             connections; the row's rate is streams opened per second until the last had its \
             first message, its latencies the time to each first message. Then they stay open \
             {:.0} s, over which the replica's Redis calls (`{REDIS_CALLS}`, every command) are \
             counted; {} were still open at the end. Peak RSS covers the opening and the hold.",
            thousands(streams as u64),
            thousands(self.sizes.room_fill),
            STREAM_HOLD.as_secs_f64(),
            thousands(open_at_end),
        );
        let mut result = ScenarioResult::alone(scenario);
        result.targets = targets;
        result.notes.push(note);
        Ok(result)
    }

    /// (i) (d)'s holds of distinct seats on a schedule with a fast room, each user admitted
    /// before and every hold carrying the user's admission token, against the same holds on a
    /// schedule without a room; rounds alternate, and each side's median round stands for it.
    async fn holds_with_token(&self) -> anyhow::Result<[ScenarioResult; 2]> {
        let reservation = &self.production.reservation;
        let seat_count = self.sizes.seats;
        let per_round = self
            .sizes
            .distinct_holds
            .min(u64::try_from(seat_count)? / HOLD_ROUNDS);
        let users_per_round = scenarios::distinct_seat_users(per_round);
        let with_room =
            scenarios::create_schedule(reservation.first()?, "Admitted holds", seat_count, 0)
                .await?;
        let without_room =
            scenarios::create_schedule(reservation.first()?, "Holds without a room", seat_count, 0)
                .await?;
        configure_room(
            reservation,
            with_room,
            admission_pb::ConfigureRoomRequest {
                schedule_id: with_room,
                rate_per_s: 1_000.0,
                burst: 1_000_000,
                max_active: 10_000_000,
                claim_window: Some(ROOM_HOUR),
                token_ttl: Some(ROOM_HOUR),
                opens_at: None,
            },
        )
        .await?;
        let holders = (0..users_per_round * HOLD_ROUNDS)
            .map(|index| ROOM_HOLD_FIRST_USER + i64::try_from(index).unwrap_or(0));
        let tokens = Arc::new(admit(reservation, with_room, holders).await?);

        let mut rounds = [Vec::new(), Vec::new()];
        for round in 0..HOLD_ROUNDS {
            for (side, schedule_id) in [without_room, with_room].into_iter().enumerate() {
                let holds = SpreadHolds {
                    schedule_id,
                    seat_count,
                    from: round * per_round,
                    requests: per_round,
                    first_user: ROOM_HOLD_FIRST_USER
                        + i64::try_from(round * users_per_round).unwrap_or(0),
                    admission: (schedule_id == with_room).then(|| Arc::clone(&tokens)),
                };
                let measured = scenarios::hold_spread_seats(reservation, holds, CLIENTS, || {
                    self.start_window();
                })
                .await?;
                let (key, name) = if schedule_id == with_room {
                    (
                        "room-holds",
                        "(i) holds with an admission token: `HoldSeat` over 100,000 seats of a \
                         schedule with a room",
                    )
                } else {
                    (
                        "room-holds-baseline",
                        "(i) the same holds on a schedule without a room",
                    )
                };
                rounds[side].push(self.observed(
                    Spec::successes(key, name, CLIENTS),
                    &measured,
                    &[RESERVATION],
                ));
            }
        }
        let [without, with] = rounds.map(median);
        let mut target = relative_target(
            "waiting room: holds with an admission token vs without a room",
            &with,
            &without,
            HOLDS_WITH_TOKEN_RATIO,
        );
        target.measured = format!("{}, medians of {HOLD_ROUNDS} rounds each", target.measured);
        let note = note_holds(&with, &without, per_round, users_per_round);
        let mut result = ScenarioResult::alone(with);
        result.targets.push(target);
        result.notes.push(note);
        Ok([result, ScenarioResult::alone(without)])
    }
}

/// Configures a room as an administrator.
async fn configure_room(
    reservation: &Service,
    schedule_id: i64,
    request: admission_pb::ConfigureRoomRequest,
) -> anyhow::Result<()> {
    AdmissionServiceClient::new(reservation.first()?.clone())
        .configure_room(request)
        .await
        .map_err(|status| anyhow::anyhow!("configuring the room of {schedule_id}: {status}"))?;
    Ok(())
}

/// Every Redis command of the replica at `metrics` so far, and its room ticks among them.
async fn redis_calls(metrics: &str) -> anyhow::Result<(f64, f64)> {
    Ok((
        probe::scrape_sum(metrics, REDIS_CALLS, "").await?,
        probe::scrape_sum(metrics, REDIS_CALLS, ROOM_TICKS).await?,
    ))
}

/// Each of `users` enters the room of `schedule_id` and asks for their position until their
/// turn has come: their admission tokens, by user. Not measured.
async fn admit(
    reservation: &Service,
    schedule_id: i64,
    users: impl Iterator<Item = i64>,
) -> anyhow::Result<HashMap<i64, AsciiMetadataValue>> {
    let users: Vec<i64> = users.collect();
    reservation.sign_tokens(users.iter().copied())?;
    let mut tokens = HashMap::new();
    let mut waiting = users;
    let deadline = Instant::now() + ADMISSION_WAIT;
    let mut first = true;
    while !waiting.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} users not admitted within {} s",
            waiting.len(),
            ADMISSION_WAIT.as_secs()
        );
        let asking = first;
        let answers: Vec<(i64, Result<admission_pb::Ticket, tonic::Status>)> =
            futures::stream::iter(waiting.iter().copied().enumerate())
                .map(|(index, user_id)| {
                    let channel = reservation.conns[index % reservation.conns.len()].clone();
                    async move {
                        let mut client = AdmissionServiceClient::new(channel);
                        let answer = if asking {
                            client
                                .enter(as_user(
                                    user_id,
                                    admission_pb::EnterRequest {
                                        schedule_id,
                                        user_id,
                                    },
                                ))
                                .await
                        } else {
                            client
                                .get_position(as_user(
                                    user_id,
                                    admission_pb::GetPositionRequest {
                                        schedule_id,
                                        user_id,
                                    },
                                ))
                                .await
                        };
                        (user_id, answer.map(tonic::Response::into_inner))
                    }
                })
                .buffer_unordered(CLIENTS)
                .collect()
                .await;
        waiting = Vec::new();
        for (user_id, answer) in answers {
            let ticket = answer.map_err(|status| {
                anyhow::anyhow!("admitting user {user_id} to the room of {schedule_id}: {status}")
            })?;
            if ticket.admission_token.is_empty() {
                waiting.push(user_id);
            } else {
                tokens.insert(user_id, ticket.admission_token.parse()?);
            }
        }
        if !waiting.is_empty() {
            // The next tick calls them.
            tokio::time::sleep(reservation_svc::admission::TICK_INTERVAL).await;
        }
        first = false;
    }
    Ok(tokens)
}

/// How (i)'s holds were made.
fn note_holds(with: &Scenario, without: &Scenario, per_round: u64, users: u64) -> String {
    format!(
        "(i) holds with an admission token: two schedules of 100,000 seats, one with a room \
         (1,000 admissions a second, the most a room takes, 10,000,000 active at most) and one without; {} users \
         per round entered the room and were admitted (their `GetPosition` answered the token) \
         before any hold. Each round holds {} distinct seats of each schedule, {} per user, \
         from {CLIENTS} clients, the room's holds with `x-admission-token`; the rounds \
         alternate, without a room first, and each side's median round stands for it: {} \
         req/s with the token (CPU per hold {}), {} req/s without a room ({}). The room's token \
         is checked on the replica, without Redis.",
        thousands(users),
        thousands(per_round),
        scenarios::HOLDS_PER_USER,
        thousands(with.rate.round() as u64),
        crate::report::micros(with.cpu_per_request.machine_us),
        thousands(without.rate.round() as u64),
        crate::report::micros(without.cpu_per_request.machine_us),
    )
}
