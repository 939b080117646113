//! The Prometheus endpoint: every call counted and timed by method and status, the pool's
//! gauges, and nothing at all when its address is empty.

use clap::Parser;
use shared::metrics::{DB_POOL_CONNECTIONS, DB_POOL_MAX_CONNECTIONS, RPC_DURATION, RPC_REQUESTS};
use shared::test_support::{http_get, metric_value};
use wallet_svc::config::Cli;

use crate::helpers::spawn_app_with;

const CHARGE: &str = "/ticketing.wallet.v1.WalletService/Charge";
const USE: &str = "/ticketing.wallet.v1.WalletService/Use";

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_by_method_and_status_and_shows_the_pool() {
    let app = spawn_app_with(|config| {
        config.metrics_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let metrics_addr = app.metrics_addr.expect("metrics served");
    let (_, before) = http_get(metrics_addr, "/metrics").await;

    app.charge(1, 10, "charge-1").await.expect("charge");
    let refused = app
        .use_points(1, 50, "use-1")
        .await
        .expect_err("insufficient balance");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let (code, after) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(code, 200, "{after}");
    // Other tests of this process count into the same registry, so compare, never equal.
    for (method, status) in [(CHARGE, "OK"), (USE, "FAILED_PRECONDITION")] {
        let labels = [("method", method), ("status", status)];
        let counted = |text: &str| metric_value(text, RPC_REQUESTS, &labels);
        assert!(
            counted(&after) >= counted(&before) + 1.0,
            "{method} {status} counted:\n{after}"
        );
        let timed = |text: &str| metric_value(text, &format!("{RPC_DURATION}_count"), &labels);
        assert!(
            timed(&after) >= timed(&before) + 1.0,
            "{method} {status} timed"
        );
    }
    assert!(
        after.contains(&format!("{RPC_DURATION}_bucket{{")) && after.contains("le=\"0.005\""),
        "a histogram with millisecond buckets:\n{after}"
    );
    assert!(after.contains(&format!("# TYPE {RPC_REQUESTS} counter")));
    for state in ["in_use", "idle"] {
        assert!(
            after.contains(&format!("{DB_POOL_CONNECTIONS}{{state=\"{state}\"}}")),
            "pool connections {state}:\n{after}"
        );
    }
    assert!(metric_value(&after, DB_POOL_MAX_CONNECTIONS, &[]) > 0.0);

    let (code, _) = http_get(metrics_addr, "/elsewhere").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn an_empty_metrics_address_serves_no_endpoint() {
    let default = Cli::try_parse_from(["wallet-svc"]).expect("defaults");
    assert_eq!(
        default.config.metrics_addr,
        Some("0.0.0.0:9092".parse().expect("address"))
    );
    let disabled = Cli::try_parse_from(["wallet-svc", "--metrics-addr", ""]).expect("empty");
    assert_eq!(disabled.config.metrics_addr, None);

    let app = spawn_app_with(|config| config.metrics_addr = disabled.config.metrics_addr).await;
    assert_eq!(app.metrics_addr, None);
}

/// A port free when asked.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A wallet-svc process of its own lists, before any call, its calls of every method with the
/// codes an alert watches, its batch sizes, the process's series and its build, at 0 (or 1 for
/// the build).
#[tokio::test]
async fn a_fresh_process_lists_its_series_at_zero() {
    let text = fresh_process_metrics(&[("INSECURE", "true")]).await;

    for method in ["Charge", "Use", "Refund", "GetBalance"] {
        for code in ["OK", "Unavailable", "Internal", "ResourceExhausted"] {
            let labels = [
                ("grpc_service", "ticketing.wallet.v1.WalletService"),
                ("grpc_method", method),
                ("grpc_code", code),
                ("grpc_type", "unary"),
            ];
            assert!(
                text.lines().any(|line| line.starts_with(RPC_REQUESTS)
                    && labels
                        .iter()
                        .all(|(label, value)| line.contains(&format!("{label}=\"{value}\"")))
                    && line.ends_with(" 0")),
                "{method} {code} not listed at 0:\n{text}"
            );
        }
    }
    assert!(
        text.contains("ticketing_wallet_batch_size_count 0"),
        "{text}"
    );
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    assert!(
        text.contains(&format!(
            "ticketing_build_info{{version=\"{}\",revision=\"",
            shared::metrics::VERSION
        )),
        "{text}"
    );
    // It reloads no file, so lists no reload.
    assert_eq!(
        shared::test_support::listed_metric(&text, shared::metrics::RELOADS, &[]),
        None,
        "{text}"
    );
}

/// A wallet-svc process of its own lists the reloads of what it reloads, both results, at 0
/// before any change: its TLS certificate, key and client CA, and the JWKS.
#[tokio::test]
async fn a_fresh_secure_process_lists_its_reloads_at_zero() {
    let setup = shared::test_pki::SecureSetup::new();
    let env = shared::test_pki::environment(&setup.server(
        "wallet",
        "spiffe://ticketing.local/wallet-svc",
        true,
    ));
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let text = fresh_process_metrics(&env).await;

    shared::test_support::assert_reloads_listed_at_zero(
        &text,
        &["server TLS certificate and key", "JWKS"],
    );
}

/// The metrics of a wallet-svc process started with `env` on a database of its own, scraped
/// once it listens, before any call.
async fn fresh_process_metrics(env: &[(&str, &str)]) -> String {
    let db = shared::test_support::TestDatabase::create(
        "wallet",
        wallet_svc::startup::MIGRATIONS,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wallet-svc"))
        .env("WALLET_LISTEN_ADDR", listen.to_string())
        .env("WALLET_METRICS_ADDR", metrics.to_string())
        .env("WALLET_DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start wallet-svc");
    let mut text = String::new();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            text = http_get(metrics, "/metrics").await.1;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}
