//! The run's processes, as `scripts/chaos.sh` supervises them: their pids, signals, keeping
//! one down and letting it come back, `redis-cli`, and samples of what each service process
//! holds (memory, connections, descriptors).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::workload::Shared;
use crate::{Args, Topology};

#[derive(Debug)]
pub struct Control {
    pub run_dir: PathBuf,
    pub topology: Topology,
    /// Service processes by name (reservation-0, wallet-1, ...) and address.
    pub services: Vec<(String, SocketAddr)>,
    pub redis_nodes: Vec<(String, u16)>,
    pub sentinel_ports: Vec<u16>,
    pub sentinel_service: String,
    pub postgres_port: Option<u16>,
}

impl Control {
    pub fn new(args: &Args) -> Self {
        let services = args
            .reservations
            .iter()
            .enumerate()
            .map(|(n, addr)| (format!("reservation-{n}"), *addr))
            .chain(
                args.wallets
                    .iter()
                    .enumerate()
                    .map(|(n, addr)| (format!("wallet-{n}"), *addr)),
            )
            .collect();
        Self {
            run_dir: args.run_dir.clone(),
            topology: args.topology,
            services,
            redis_nodes: args.redis_nodes.clone(),
            sentinel_ports: args.sentinel_ports.clone(),
            sentinel_service: args.sentinel_service.clone(),
            postgres_port: args.own_postgres_port,
        }
    }

    /// The pid the supervisor last started `name` as.
    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.run_dir.join("pids").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn down_flag(&self, name: &str) -> PathBuf {
        self.run_dir.join("pids").join(format!("{name}.down"))
    }

    /// Keeps the supervisor from starting `name` again until [`Control::release`].
    pub fn hold_down(&self, name: &str) {
        if let Err(e) = std::fs::write(self.down_flag(name), b"") {
            eprintln!("chaos: cannot keep {name} down: {e}");
        }
    }

    pub fn release(&self, name: &str) {
        let _ = std::fs::remove_file(self.down_flag(name));
    }

    /// The port `name` listens on: a service's or a Redis node's.
    pub fn port(&self, name: &str) -> Option<u16> {
        if name == "postgres" {
            return self.postgres_port;
        }
        self.services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| addr.port())
            .or_else(|| {
                self.redis_nodes
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, port)| *port)
            })
    }

    pub fn node_of_port(&self, port: u16) -> Option<String> {
        self.redis_nodes
            .iter()
            .find(|(_, p)| *p == port)
            .map(|(name, _)| name.clone())
    }

    /// Sends `SIG<signal>` to `name`'s current process; its pid when there was one.
    pub async fn signal(&self, name: &str, signal: &str) -> Option<u32> {
        let pid = self.pid(name)?;
        send(pid, signal).await;
        Some(pid)
    }

    /// Waits up to `within` for process `pid` to be gone.
    pub async fn wait_exit(&self, pid: u32, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits up to `within` for `name` to run as a process other than `old` and to accept
    /// connections on its port.
    pub async fn wait_up(&self, name: &str, old: Option<u32>, within: Duration) -> bool {
        let started = Instant::now();
        let Some(port) = self.port(name) else {
            return false;
        };
        while started.elapsed() < within {
            let restarted = match (self.pid(name), old) {
                (Some(pid), Some(old)) => pid != old && alive(pid),
                (Some(pid), None) => alive(pid),
                (None, _) => false,
            };
            if restarted
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Every process of the run: the services, Redis and Postgres.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.iter().map(|(n, _)| n.clone()).collect();
        names.extend(self.redis_nodes.iter().map(|(n, _)| n.clone()));
        if self.postgres_port.is_some() {
            names.push("postgres".to_owned());
        }
        names
    }

    /// Lets every process run: no flag keeps one down, none is left frozen.
    pub async fn resume_all(&self) {
        for name in self.names() {
            self.release(&name);
            self.signal(&name, "CONT").await;
        }
    }

    pub async fn wait_all_up(&self, within: Duration) {
        for name in self.names() {
            if !self.wait_up(&name, None, within).await {
                eprintln!("chaos: {name} is not up again after {within:?}");
            }
        }
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its supervisor) is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub async fn send(pid: u32, signal: &str) {
    let sent = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if !matches!(sent, Ok(status) if status.success()) {
        eprintln!("chaos: kill -{signal} {pid} failed");
    }
}

/// Runs `redis-cli -p port args...` with a timeout of 3 s; its output, or why there is none.
pub async fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("redis-cli -p {port} {args:?}: no answer in 3 s"))??;
    anyhow::ensure!(
        output.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One sample of a service process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub pid: u32,
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    pub connections: u64,
    /// Taken once the workload had stopped and everything was quiet.
    pub quiet: bool,
}

/// Samples every service process each `interval` until sampling is done.
pub async fn sample(control: Arc<Control>, shared: Arc<Shared>, interval: Duration) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        let quiet = shared.stop.load(Ordering::SeqCst);
        for (name, _) in &control.services {
            if let Some(pid) = control.pid(name)
                && let Some(sample) = sample_one(name, pid, shared.elapsed(), quiet)
            {
                samples.push(sample);
            }
        }
        if shared.sampling_done.load(Ordering::SeqCst) {
            return samples;
        }
        tokio::time::sleep(interval).await;
    }
}

fn sample_one(name: &str, pid: u32, at: Duration, quiet: bool) -> Option<Sample> {
    if !alive(pid) {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())?;
    let mut fds = 0;
    let mut sockets = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                sockets.insert(inode.to_owned());
            }
        }
    }
    // Established TCP connections whose socket the process holds.
    let mut connections = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"01") && fields.get(9).is_some_and(|i| sockets.contains(*i)) {
                connections += 1;
            }
        }
    }
    Some(Sample {
        name: name.to_owned(),
        pid,
        at,
        rss_kib,
        fds,
        connections,
        quiet,
    })
}
