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
