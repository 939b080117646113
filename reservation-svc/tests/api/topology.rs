//! Seat holds on every Redis topology `REDIS_URL` can name: a Sentinel set whose primary is
//! killed, a Cluster whose primaries own a schedule's keys by its hash tag and fail over, and
//! one server over mutual TLS with a password.
//! Each test owns its Redis processes, on free loopback ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::Code;

use crate::helpers::{TestApp, reason, restartable_port, spawn_app_with};
use crate::holds::{stampede, tally};

/// A `redis-server` of a test's topology, killed when dropped.
struct Node {
    port: u16,
    child: Child,
}

impl Node {
    /// Starts `redis-server` on a free port with `args` (`{port}` replaced by it) and waits
    /// until it accepts connections.
    fn start(args: &[&str]) -> Self {
        let port = restartable_port();
        let args: Vec<String> = args
            .iter()
            .map(|arg| arg.replace("{port}", &port.to_string()))
            .collect();
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        // Killed and waited for by its drop, whatever happens next.
        let node = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return node;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// `redis-cli` against this node.
    fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A directory of the test's own, for the files Sentinel and Cluster nodes rewrite.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ticketing-{name}-{}-{}",
        std::process::id(),
        restartable_port()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Waits up to `within` for `done`, checking every 100 ms.
async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds seats `first..` of the schedule, a new seat per try, until one is held; each refusal
/// must be UNAVAILABLE (Redis not there for now). Returns the tries that were refused.
async fn hold_until_served(app: &TestApp, schedule_id: i64, first: i32) -> u32 {
    let started = tokio::time::Instant::now();
    let mut refused = 0;
    let mut seat_no = first;
    loop {
        match app.hold(i64::from(seat_no), schedule_id, seat_no).await {
            Ok(_) => return refused,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                refused += 1;
                seat_no += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "holds never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Holds of distinct seats `first..` of a schedule, each of its own user, from eight clients
/// at about 400 a second in all, until stopped: the load a failover happens under.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Result<(), tonic::Status>>>>,
}

impl Load {
    const CLIENTS: i32 = 8;

    fn start(app: &TestApp, schedule_id: i64, first: i32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..Self::CLIENTS)
            .map(|client| {
                let (stop, connection) = (stop.clone(), app.client());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut seat_no = first + client;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let held = crate::helpers::hold_via(
                            connection.clone(),
                            i64::from(seat_no),
                            schedule_id,
                            seat_no,
                        )
                        .await;
                        answers.push(held.map(|_| ()));
                        seat_no += Self::CLIENTS;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    answers
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the load and counts its holds answered OK; every other answer was UNAVAILABLE.
    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut held = 0;
        for client in self.clients {
            for answer in client.await.expect("a load client") {
                match answer {
                    Ok(()) => held += 1,
                    Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
                }
            }
        }
        held
    }
}

/// After a failover under `load`, the schedule holds exactly the seats whose holds were
/// answered OK (an UNAVAILABLE hold wrote nothing), a stampede on a fresh seat still has exactly
/// one winner, and a seat held before it is still refused (Postgres decides, whatever the new
/// primary has of its mark).
async fn assert_exact_after_failover(
    app: &TestApp,
    schedule_id: i64,
    held_before: i32,
    load: Load,
) {
    let held_by_load = load.stop().await;
    assert!(held_by_load > 0, "the load held seats");
    // The load's, the seat held before the failover and the first one after it.
    let held = i64::try_from(held_by_load + 2).expect("few");
    assert_eq!(
        app.schedule_reservations_in(schedule_id, "HELD").await,
        held
    );
    let answers = stampede(&[app.client()], schedule_id, 500, 300).await;
    let (held, _, _) = tally(&answers);
    assert_eq!(held, 1, "one winner after the failover");
    assert_eq!(app.reservations_in(schedule_id, 500, "HELD").await, 1);
    let again = app
        .hold(9_999, schedule_id, held_before)
        .await
        .expect_err("a seat held before the failover stays taken");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(reason(&again), "SEAT_TAKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_go_on_when_sentinel_promotes_a_replica_of_a_killed_primary() {
    let dir = scratch_dir("sentinel");
    let no_disk = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"];
    let mut primary = Node::start(&[&["--port", "{port}"][..], &no_disk].concat());
    let primary_port = primary.port.to_string();
    let _replicas: Vec<Node> = (0..2)
        .map(|_| {
            Node::start(
                &[
                    &[
                        "--port",
                        "{port}",
                        "--replicaof",
                        "127.0.0.1",
                        &primary_port,
                    ][..],
                    &no_disk,
                ]
                .concat(),
            )
        })
        .collect();
    let sentinels: Vec<Node> = (0..3)
        .map(|n| {
            let conf = dir.join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\n\
                     sentinel monitor seats 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds seats 1000\n\
                     sentinel failover-timeout seats 5000\n"
                ),
            )
            .expect("a sentinel's configuration");
            let conf = conf.to_string_lossy().into_owned();
            Node::start(&[&conf, "--port", "{port}", "--sentinel"])
        })
        .collect();
    // Each sentinel knows the other two and both replicas before the primary goes.
    eventually(Duration::from_secs(30), "the sentinels meet", || {
        sentinels.iter().all(|sentinel| {
            let master = sentinel.cli(&["SENTINEL", "MASTER", "seats"]);
            let fields: Vec<&str> = master.lines().collect();
            let field = |name: &str| {
                fields
                    .iter()
                    .position(|line| *line == name)
                    .and_then(|at| fields.get(at + 1))
                    .copied()
            };
            field("num-other-sentinels") == Some("2") && field("num-slaves") == Some("2")
        })
    })
    .await;
    let nodes: Vec<String> = sentinels
        .iter()
        .skip(1)
        .map(|sentinel| format!("node=127.0.0.1:{}", sentinel.port))
        .collect();
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=seats&{}",
        sentinels[0].port,
        nodes.join("&")
    );
    let app = spawn_app_with(|config| config.redis_url = url.into()).await;
    let schedule_id = app.schedule_with_seats(10_000).await;
    app.hold(1, schedule_id, 1)
        .await
        .expect("a hold through Sentinel");

    let load = Load::start(&app, schedule_id, 1_001);
    tokio::time::sleep(Duration::from_millis(300)).await;
    primary.kill();
    let refused = hold_until_served(&app, schedule_id, 2).await;
    println!("holds refused while Sentinel promoted a replica: {refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_exact_after_failover(&app, schedule_id, 1, load).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedules_keys_share_one_cluster_slot_and_holds_go_on_after_its_primary_fails_over() {
    let dir = scratch_dir("cluster");
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut nodes: Vec<Node> = (0..6)
        .map(|_| {
            // The cluster bus port too is a free one of the test's: the default (port + 10000)
            // falls among the ports the kernel hands out to outgoing connections.
            let bus = restartable_port().to_string();
            Node::start(&[
                "--port",
                "{port}",
                "--cluster-port",
                &bus,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes-{port}.conf",
                "--cluster-node-timeout",
                "1000",
                // A replica takes over however long ago it last heard its primary.
                "--cluster-replica-validity-factor",
                "0",
                "--dir",
                &dir_arg,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
        })
        .collect();
    let addresses: Vec<String> = nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("run redis-cli --cluster create");
    assert!(created.success(), "cluster created");
    eventually(Duration::from_secs(30), "the cluster is up", || {
        nodes
            .iter()
            .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    })
    .await;
    let url = format!(
        "redis-cluster://{}?node={}&node={}",
        addresses[0], addresses[1], addresses[2]
    );
    let app = spawn_app_with(|config| config.redis_url = url.into()).await;

    // Holds, cancels and marks on schedules spread over the primaries: every script touches
    // its seat's key and the key's tombstone, which share the schedule's slot.
    let mut schedules = Vec::new();
    for _ in 0..6 {
        let schedule_id = app.schedule_with_seats(10_000).await;
        let held = app
            .hold(1, schedule_id, 1)
            .await
            .expect("a hold on the cluster");
        app.cancel(held.id, 1)
            .await
            .expect("a cancel on the cluster");
        app.hold(2, schedule_id, 1).await.expect("held again");
        let seat_key = app.seat_key(schedule_id, 1);
        let slot = cli(nodes[0].port, &["CLUSTER", "KEYSLOT", &seat_key]);
        let tag_slot = cli(
            nodes[0].port,
            &["CLUSTER", "KEYSLOT", &format!("{{{schedule_id}}}")],
        );
        assert_eq!(slot, tag_slot, "a seat's key is in its schedule's slot");
        let tombstone = cli(
            nodes[0].port,
            &["CLUSTER", "KEYSLOT", &format!("{seat_key}:cancelled")],
        );
        assert_eq!(tombstone, tag_slot, "its tombstone too");
        schedules.push((schedule_id, slot.trim().to_owned()));
    }

    // Kill the primary that owns the first schedule's slot under load; its replica takes over.
    let (schedule_id, slot) = schedules[0].clone();
    let load = Load::start(&app, schedule_id, 1_001);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner = nodes
        .iter()
        .position(|node| {
            let role = node.cli(&["ROLE"]);
            role.starts_with("master")
                && node.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim() != "0"
        })
        .expect("the slot's primary");
    nodes[owner].kill();
    let refused = hold_until_served(&app, schedule_id, 2).await;
    println!("holds refused while the cluster failed over: {refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_exact_after_failover(&app, schedule_id, 1, load).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_go_through_redis_over_mutual_tls_with_a_password() {
    let pki = shared::test_pki::PkiDir::new();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-pki.sh");
    let made = Command::new(script)
        .arg(pki.path())
        .output()
        .expect("dev-pki.sh runs");
    assert!(made.status.success(), "dev-pki.sh: {made:?}");
    let file = |name: &str| pki.path().join(name);
    let path = |name: &str| file(name).to_string_lossy().into_owned();
    // Redis asks every client for a certificate its CA signed (`tls-auth-clients` defaults to
    // yes) and for the password.
    let redis = Node::start(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &path("wallet.pem"),
        "--tls-key-file",
        &path("wallet-key.pem"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--requirepass",
        "seat-locks",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let with_tls = |password: &'static str| {
        let url = format!("rediss://default:{password}@localhost:{}", redis.port);
        let (ca, cert, key) = (
            file("ca.pem"),
            file("reservation-client.pem"),
            file("reservation-client-key.pem"),
        );
        move |config: &mut reservation_svc::config::Config| {
            config.redis_url = url.into();
            config.redis_tls_ca_file = Some(ca);
            config.redis_tls_cert_file = Some(cert);
            config.redis_tls_key_file = Some(key);
        }
    };

    let app = spawn_app_with(with_tls("seat-locks")).await;
    let schedule_id = app.schedule_with_seats(10).await;
    let answers = stampede(&[app.client()], schedule_id, 3, 200).await;
    assert_eq!(tally(&answers).0, 1, "one winner through Redis over TLS");
    assert_eq!(app.reservations_in(schedule_id, 3, "HELD").await, 1);

    // A wrong password gets no lock: holds are UNAVAILABLE and write nothing.
    let refused = spawn_app_with(with_tls("not-the-password")).await;
    let schedule_id = refused.schedule_with_seats(10).await;
    let status = refused
        .hold(1, schedule_id, 1)
        .await
        .expect_err("no Redis, no hold");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(refused.reservations_in(schedule_id, 1, "HELD").await, 0);
}
