//! The waiting room's Lua scripts against the reference rules of `protocol::admission`: random
//! runs of every step on a real Redis, each answered by the script and by `Room` at the moment
//! Redis read from its clock, must agree step by step.

use std::time::Duration;

use protocol::admission::{Room, RoomConfig, Standing};
use rand::{Rng, SeedableRng};
use reservation_svc::admission::{Queue, RoomSettings};

use crate::helpers::redis;

/// One step of a run.
#[derive(Debug, Clone)]
enum Step {
    Enter { user: i64, draw: i64 },
    Look { user: i64 },
    Leave { user: i64 },
    Release { user: i64, ago: i64 },
    Tick { looks: Vec<i64> },
    Wait { ms: u64 },
}

fn random_step(rng: &mut rand::rngs::StdRng, users: i64) -> Step {
    let user = rng.random_range(1..=users);
    match rng.random_range(0..100) {
        0..30 => Step::Enter {
            user,
            // Few draws, so that entrants before the opening tie.
            draw: rng.random_range(0..3),
        },
        30..45 => Step::Look { user },
        45..52 => Step::Leave { user },
        52..58 => Step::Release {
            user,
            // A hold of this turn or of an earlier one.
            ago: rng.random_range(0..60),
        },
        58..85 => Step::Tick {
            looks: (0..rng.random_range(0..3))
                .map(|_| rng.random_range(1..=users))
                .collect(),
        },
        _ => Step::Wait {
            ms: rng.random_range(1..40),
        },
    }
}

/// Small settings, so that a run of a second crosses the opening, claim windows, turns' ends,
/// the cap and an empty bucket.
fn config_for(seed: u64, opens_at_ms: i64) -> RoomConfig {
    RoomConfig {
        rate_milli_per_s: [20_000, 100_000, 1_500][usize::try_from(seed % 3).unwrap_or(0)],
        burst: 1 + i64::try_from(seed % 2).unwrap_or(0),
        max_active: 1 + i64::try_from(seed % 3).unwrap_or(0),
        claim_window_ms: 40,
        token_ttl_ms: 90,
        opens_at_ms,
    }
}

#[tokio::test]
async fn the_queue_scripts_take_every_step_as_the_reference_rules_do() {
    let client = redis("redis://127.0.0.1:6379").await;
    let prefix = format!("test:{:016x}:", rand::random::<u64>());
    let queue = Queue::new(client, &prefix, Duration::from_secs(5));
    // What the runs went through, so that a run that never reaches a case does not pass
    // for checking it.
    let mut reached = std::collections::BTreeSet::new();
    for seed in 0..12_u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let opens_at_ms = chrono::Utc::now().timestamp_millis() + 150;
        let settings = RoomSettings {
            schedule_id: i64::try_from(seed).unwrap_or(0) + 1,
            config: config_for(seed, opens_at_ms),
            version: 1,
        };
        let config = settings.config;
        let mut room = Room::default();
        let mut trace = Vec::new();
        for _ in 0..250 {
            let step = random_step(&mut rng, 5);
            trace.push(step.clone());
            let at = || format!("seed {seed}, {config:?}, after {trace:?}");
            match step {
                Step::Enter { user, draw } => {
                    let seen = queue.enter(&settings, user, draw).await.expect("enter");
                    reached.insert(kind(seen.standing));
                    assert_eq!(
                        seen.standing,
                        room.enter(&config, user, draw, seen.now),
                        "{}",
                        at()
                    );
                }
                Step::Look { user } => {
                    let seen = queue.look(&settings, user).await.expect("look");
                    reached.insert(kind(seen.standing));
                    assert_eq!(
                        seen.standing,
                        room.look(&config, user, seen.now),
                        "{}",
                        at()
                    );
                }
                Step::Leave { user } => {
                    let (left, now) = queue.leave(&settings, user).await.expect("leave");
                    assert_eq!(left, room.leave(&config, user, now), "{}", at());
                    if left {
                        reached.insert("left");
                    }
                }
                Step::Release { user, ago } => {
                    let held_at = chrono::Utc::now().timestamp_millis() - ago;
                    let (released, _) = queue
                        .release(&settings, user, held_at)
                        .await
                        .expect("release");
                    assert_eq!(released, room.release(&config, user, held_at), "{}", at());
                    if released {
                        reached.insert("released");
                    }
                }
                Step::Tick { looks } => {
                    let report = queue.tick(&settings, &looks).await.expect("tick");
                    let tick = room.tick(&config, report.now);
                    assert_eq!(report.tick, tick, "{}", at());
                    if tick.skipped > 0 {
                        reached.insert("skipped");
                    }
                    if report.counters.active == config.max_active {
                        reached.insert("cap reached");
                    }
                    assert_eq!(report.counters, room.counters(report.now), "{}", at());
                    let expected: Vec<Standing> = looks
                        .iter()
                        .map(|&user| room.look(&config, user, report.now))
                        .collect();
                    assert_eq!(report.looks, expected, "{}", at());
                }
                Step::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        }
    }
    let expected = [
        "before opening",
        "waiting",
        "admitted",
        "expired",
        "left",
        "released",
        "skipped",
        "cap reached",
    ];
    for case in expected {
        assert!(
            reached.contains(case),
            "never reached: {case} ({reached:?})"
        );
    }
}

fn kind(standing: Standing) -> &'static str {
    match standing {
        Standing::Absent => "absent",
        Standing::BeforeOpening => "before opening",
        Standing::Waiting { .. } => "waiting",
        Standing::Admitted { .. } => "admitted",
        Standing::Expired { .. } => "expired",
    }
}
