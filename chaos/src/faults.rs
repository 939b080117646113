//! Faults, one at a time on a schedule drawn from the seed: each kind once per round, in a
//! shuffled order, with a calm gap between two. Each fault ends with what it broke running
//! again (a killed process restarted, a frozen one resumed, a failover completed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::Topology;
use crate::procs::{Control, redis_cli, send};
use crate::workload::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KillReservation,
    KillWallet,
    StopReservation,
    StopWallet,
    /// Sentinel: the primary killed, a replica promoted. Cluster: the primary of the current
    /// schedule's slot killed, its replica taking over.
    RedisFailover,
    /// The Redis server (single) or the current primary (Sentinel, Cluster) killed and
    /// started again at once, empty.
    RedisRestart,
    FlushAll,
    /// Writes paused on the primaries so that lock commands are in flight, then every client
    /// connection killed (`CLIENT KILL TYPE normal`).
    ClientKill,
    PostgresRestart,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillReservation => "SIGKILL reservation-svc",
            Kind::KillWallet => "SIGKILL wallet-svc",
            Kind::StopReservation => "SIGSTOP/SIGCONT reservation-svc",
            Kind::StopWallet => "SIGSTOP/SIGCONT wallet-svc",
            Kind::RedisFailover => "Redis primary killed, failed over",
            Kind::RedisRestart => "Redis restarted",
            Kind::FlushAll => "Redis FLUSHALL",
            Kind::ClientKill => "Redis CLIENT KILL mid-SET",
            Kind::PostgresRestart => "Postgres restarted",
        }
    }
}

/// One fault as injected: what, on which process, from when to when (from the start of the
/// run), and anything that did not go as planned.
#[derive(Debug, Clone)]
pub struct Injected {
    pub kind: Kind,
    pub target: String,
    pub start: Duration,
    pub end: Duration,
    pub note: Option<String>,
}

/// The kinds that apply to this run.
fn kinds(control: &Control) -> Vec<Kind> {
    let mut kinds = vec![
        Kind::KillReservation,
        Kind::KillWallet,
        Kind::StopReservation,
        Kind::StopWallet,
        Kind::RedisRestart,
        Kind::FlushAll,
        Kind::ClientKill,
    ];
    if control.topology != Topology::Single {
        kinds.push(Kind::RedisFailover);
    }
    if control.postgres_port.is_some() {
        kinds.push(Kind::PostgresRestart);
    }
    kinds
}

/// Injects faults until the workload stops; returns what it injected.
pub async fn run(
    control: Arc<Control>,
    shared: Arc<Shared>,
    seed: u64,
    gap: Duration,
    soak: bool,
) -> Vec<Injected> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00c0_ffee);
    let mut injected = Vec::new();
    let mut round: Vec<Kind> = Vec::new();
    // The workload's first seconds are calm: a baseline.
    let mut calm = Duration::from_secs(3);
    loop {
        let until = shared.elapsed() + calm;
        while shared.elapsed() < until {
            if shared.stop.load(Ordering::SeqCst) {
                return injected;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round.is_empty() {
            round = kinds(&control);
            round.shuffle(&mut rng);
        }
        let kind = round.remove(0);
        let start = shared.elapsed();
        let (target, note) = inject(&control, &shared, kind, &mut rng, soak).await;
        let end = shared.elapsed();
        println!(
            "chaos: {:>6.1}s {} ({target}), {:.1}s{}",
            start.as_secs_f64(),
            kind.name(),
            (end - start).as_secs_f64(),
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        injected.push(Injected {
            kind,
            target,
            start,
            end,
            note,
        });
        calm = gap.mul_f64(rng.random_range(0.75..1.5));
    }
}

async fn inject(
    control: &Control,
    shared: &Shared,
    kind: Kind,
    rng: &mut StdRng,
    soak: bool,
) -> (String, Option<String>) {
    match kind {
        Kind::KillReservation | Kind::KillWallet => {
            let service = if kind == Kind::KillReservation {
                "reservation"
            } else {
                "wallet"
            };
            // A soak keeps replica 0 alive the whole run, to watch what it holds over time.
            let replica = if soak { 1 } else { rng.random_range(0..2) };
            let name = format!("{service}-{replica}");
            let down = Duration::from_millis(rng.random_range(200..1500));
            let note = kill_and_restart(control, &name, "KILL", down).await;
            (name, note)
        }
        Kind::StopReservation | Kind::StopWallet => {
            let service = if kind == Kind::StopReservation {
                "reservation"
            } else {
                "wallet"
            };
            let name = format!("{service}-{}", rng.random_range(0..2));
            let frozen = Duration::from_millis(rng.random_range(1000..3500));
            let Some(pid) = control.signal(&name, "STOP").await else {
                return (name, Some("not running".to_owned()));
            };
            tokio::time::sleep(frozen).await;
            send(pid, "CONT").await;
            (name, Some(format!("frozen {:.1}s", frozen.as_secs_f64())))
        }
        Kind::RedisFailover => match control.topology {
            Topology::Sentinel => sentinel_failover(control).await,
            Topology::Cluster => cluster_failover(control, shared).await,
            Topology::Single => ("-".to_owned(), Some("no replica to fail over".to_owned())),
        },
        Kind::RedisRestart => {
            let name = match primaries(control, shared).await.first() {
                Some(name) => name.clone(),
                None => return ("-".to_owned(), Some("no primary found".to_owned())),
            };
            let note = kill_and_restart(control, &name, "KILL", Duration::ZERO).await;
            if control.topology == Topology::Cluster {
                cluster_ok(control, Duration::from_secs(30)).await;
            }
            (name, note)
        }
        Kind::FlushAll => {
            let names = primaries(control, shared).await;
            let mut failed = Vec::new();
            for name in &names {
                if let Some(port) = control.port(name)
                    && let Err(e) = redis_cli(port, &["FLUSHALL"]).await
                {
                    failed.push(format!("{e:#}"));
                }
            }
            (
                names.join(","),
                (!failed.is_empty()).then(|| failed.join("; ")),
            )
        }
        Kind::ClientKill => {
            let names = primaries(control, shared).await;
            let mut notes = Vec::new();
            for name in &names {
                if let Some(port) = control.port(name) {
                    // Writes (the lock scripts) now wait in Redis: in flight when their
                    // connections are killed.
                    if let Err(e) = redis_cli(port, &["CLIENT", "PAUSE", "400", "WRITE"]).await {
                        notes.push(format!("{e:#}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            for name in &names {
                if let Some(port) = control.port(name) {
                    match redis_cli(port, &["CLIENT", "KILL", "TYPE", "normal"]).await {
                        Ok(killed) => notes.push(format!("{name}: {} killed", killed.trim())),
                        Err(e) => notes.push(format!("{e:#}")),
                    }
                }
            }
            (names.join(","), Some(notes.join(", ")))
        }
        Kind::PostgresRestart => {
            // Fast shutdown (SIGINT) or immediate (SIGQUIT: no checkpoint, crash recovery at
            // the next start).
            let signal = if rng.random_bool(0.5) { "INT" } else { "QUIT" };
            let down = Duration::from_millis(rng.random_range(200..1500));
            let note = kill_and_restart(control, "postgres", signal, down).await;
            let mode = if signal == "INT" { "fast" } else { "immediate" };
            (
                "postgres".to_owned(),
                Some(match note {
                    Some(note) => format!("{mode}: {note}"),
                    None => mode.to_owned(),
                }),
            )
        }
    }
}

/// Sends `signal` to `name`, keeps it down `down` once it is gone, and waits until its
/// supervisor has it running and listening again. A note when something did not go so.
async fn kill_and_restart(
    control: &Control,
    name: &str,
    signal: &str,
    down: Duration,
) -> Option<String> {
    control.hold_down(name);
    let Some(pid) = control.signal(name, signal).await else {
        control.release(name);
        return Some("not running".to_owned());
    };
    // A frozen process takes no signal but KILL: let it go on to hear this one.
    send(pid, "CONT").await;
    let mut note = None;
    if !control.wait_exit(pid, Duration::from_secs(30)).await {
        note = Some("did not exit in 30s; killed".to_owned());
        send(pid, "KILL").await;
        control.wait_exit(pid, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(down).await;
    control.release(name);
    if !control
        .wait_up(name, Some(pid), Duration::from_secs(60))
        .await
    {
        return Some(format!("not up again within 60s (pid was {pid})"));
    }
    note
}

/// The Redis servers that take writes now.
async fn primaries(control: &Control, shared: &Shared) -> Vec<String> {
    match control.topology {
        Topology::Single => control
            .redis_nodes
            .first()
            .map(|(name, _)| vec![name.clone()])
            .unwrap_or_default(),
        Topology::Sentinel => sentinel_primary(control)
            .await
            .and_then(|port| control.node_of_port(port))
            .into_iter()
            .collect(),
        Topology::Cluster => {
            // The current schedule's slot's primary first.
            let mut names = Vec::new();
            if let Some(port) = slot_owner(control, shared).await
                && let Some(name) = control.node_of_port(port)
            {
                names.push(name);
            }
            for (name, port) in &control.redis_nodes {
                if !names.contains(name)
                    && let Ok(role) = redis_cli(*port, &["ROLE"]).await
                    && role.lines().next() == Some("master")
                {
                    names.push(name.clone());
                }
            }
            names
        }
    }
}

/// The primary's port, as the first sentinel that answers names it.
async fn sentinel_primary(control: &Control) -> Option<u16> {
    for port in &control.sentinel_ports {
        if let Ok(answer) = redis_cli(
            *port,
            &[
                "SENTINEL",
                "get-master-addr-by-name",
                &control.sentinel_service,
            ],
        )
        .await
            && let Some(primary) = answer.lines().nth(1).and_then(|p| p.trim().parse().ok())
        {
            return Some(primary);
        }
    }
    None
}

async fn sentinel_failover(control: &Control) -> (String, Option<String>) {
    let Some(old) = sentinel_primary(control).await else {
        return (
            "-".to_owned(),
            Some("no sentinel names a primary".to_owned()),
        );
    };
    let Some(name) = control.node_of_port(old) else {
        return (format!("port {old}"), Some("unknown node".to_owned()));
    };
    control.hold_down(&name);
    let Some(pid) = control.signal(&name, "KILL").await else {
        control.release(&name);
        return (name, Some("not running".to_owned()));
    };
    control.wait_exit(pid, Duration::from_secs(10)).await;
    let started = tokio::time::Instant::now();
    let mut note = None;
    loop {
        match sentinel_primary(control).await {
            Some(new) if new != old => {
                note = Some(format!(
                    "{} promoted after {:.1}s",
                    control.node_of_port(new).unwrap_or_default(),
                    started.elapsed().as_secs_f64()
                ));
                break;
            }
            _ if started.elapsed() > Duration::from_secs(30) => {
                note = note.or(Some("no replica promoted within 30s".to_owned()));
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // The old primary comes back empty; Sentinel makes it a replica of the new one.
    control.release(&name);
    if !control
        .wait_up(&name, Some(pid), Duration::from_secs(30))
        .await
    {
        note = Some(format!("{}; not up again", note.unwrap_or_default()));
    }
    (name, note)
}

/// The port of the primary that owns the current schedule's slot, as `CLUSTER NODES` of any
/// answering node says.
async fn slot_owner(control: &Control, shared: &Shared) -> Option<u16> {
    let schedule = shared.current_schedule.load(Ordering::Relaxed);
    let tag = format!("{{{schedule}}}");
    for (_, port) in &control.redis_nodes {
        let Ok(slot) = redis_cli(*port, &["CLUSTER", "KEYSLOT", &tag]).await else {
            continue;
        };
        let Ok(slot) = slot.trim().parse::<u16>() else {
            continue;
        };
        let Ok(nodes) = redis_cli(*port, &["CLUSTER", "NODES"]).await else {
            continue;
        };
        return owner_of(&nodes, slot);
    }
    None
}

/// The port of the live primary serving `slot` in a `CLUSTER NODES` answer.
fn owner_of(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.iter().skip(8).any(|range| {
            let mut bounds = range.split('-');
            match (
                bounds.next().and_then(|b| b.parse::<u16>().ok()),
                bounds.next().map(|b| b.parse::<u16>().ok()),
            ) {
                (Some(from), Some(Some(to))) => (from..=to).contains(&slot),
                (Some(only), None) => only == slot,
                _ => false,
            }
        });
        if !serves {
            return None;
        }
        let address = fields.get(1)?.split('@').next()?;
        address.rsplit_once(':')?.1.parse().ok()
    })
}

/// Waits until every running node says the cluster is ok.
async fn cluster_ok(control: &Control, within: Duration) -> bool {
    let started = tokio::time::Instant::now();
    while started.elapsed() < within {
        let mut all = true;
        for (_, port) in &control.redis_nodes {
            match redis_cli(*port, &["CLUSTER", "INFO"]).await {
                Ok(info) if info.contains("cluster_state:ok") => {}
                _ => all = false,
            }
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn cluster_failover(control: &Control, shared: &Shared) -> (String, Option<String>) {
    let Some(old) = slot_owner(control, shared).await else {
        return ("-".to_owned(), Some("no primary owns the slot".to_owned()));
    };
    let Some(name) = control.node_of_port(old) else {
        return (format!("port {old}"), Some("unknown node".to_owned()));
    };
    control.hold_down(&name);
    let Some(pid) = control.signal(&name, "KILL").await else {
        control.release(&name);
        return (name, Some("not running".to_owned()));
    };
    control.wait_exit(pid, Duration::from_secs(10)).await;
    let started = tokio::time::Instant::now();
    let mut note;
    loop {
        match slot_owner(control, shared).await {
            Some(new) if new != old => {
                note = Some(format!(
                    "{} took over after {:.1}s",
                    control.node_of_port(new).unwrap_or_default(),
                    started.elapsed().as_secs_f64()
                ));
                break;
            }
            _ if started.elapsed() > Duration::from_secs(30) => {
                note = Some("no replica took over within 30s".to_owned());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // The old primary comes back from its nodes file as a replica of the new one.
    control.release(&name);
    if !control
        .wait_up(&name, Some(pid), Duration::from_secs(30))
        .await
    {
        note = Some(format!("{}; not up again", note.unwrap_or_default()));
    }
    if !cluster_ok(control, Duration::from_secs(30)).await {
        note = Some(format!("{}; cluster not ok", note.unwrap_or_default()));
    }
    (name, note)
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn the_owner_of_a_slot_is_the_live_primary_whose_ranges_hold_it() {
        let nodes = "\
a 127.0.0.1:20001@20011 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:20002@20012 master,fail - 0 0 2 disconnected 5461-10922
c 127.0.0.1:20003@20013 master - 0 0 3 connected 10923-16383
d 127.0.0.1:20004@20014 master - 0 0 7 connected 5461-10921 10922
e 127.0.0.1:20005@20015 slave a 0 0 1 connected
";
        assert_eq!(owner_of(nodes, 0), Some(20001));
        assert_eq!(owner_of(nodes, 6000), Some(20004));
        assert_eq!(owner_of(nodes, 16383), Some(20003));
        assert_eq!(owner_of(nodes, 10922), Some(20004));
    }
}
