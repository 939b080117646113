//! Settings, each from a `--flag` or its environment variable; `--help` lists the defaults.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};
use secrecy::SecretString;
pub use shared::cli::Command;
use shared::db::DbArgs;
use shared::security::SecurityArgs;
use shared::server::ServerArgs;

#[derive(Debug, Parser)]
#[command(name = "wallet-svc", version, about = "User point balances over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        global = true,
        env = "WALLET_LISTEN_ADDR",
        default_value = "0.0.0.0:50052"
    )]
    pub listen_addr: SocketAddr,

    /// Postgres database of the wallets and their ledger.
    // Secret: the URL may carry a password, which Config's Debug must not show.
    #[arg(
        long,
        global = true,
        env = "WALLET_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wallet",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    /// Certificate identities (URI subject alternative names, comma-separated) of the services
    /// that may `Use` and `Refund` for any user.
    #[arg(
        long,
        global = true,
        env = "PAYMENT_SERVICE_IDENTITIES",
        default_value = "spiffe://ticketing.local/reservation-svc",
        value_delimiter = ',',
        value_parser = identity
    )]
    pub payment_service_identities: Vec<String>,

    /// Address of the Prometheus `/metrics` endpoint; empty for none.
    // `std::option::Option`, so that clap hands the value to the parser, empty included.
    #[arg(
        long,
        global = true,
        env = "WALLET_METRICS_ADDR",
        default_value = "0.0.0.0:9092",
        value_parser = shared::metrics::parse_metrics_addr
    )]
    pub metrics_addr: std::option::Option<SocketAddr>,

    /// Most movements of one user applied in one transaction: while one user's transaction
    /// runs, their next requests queue and go together in the next. 1 gives every movement a
    /// transaction of its own. At most 1024.
    #[arg(
        long,
        global = true,
        env = "WALLET_MAX_BATCH",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub max_batch: u16,

    /// On SIGTERM, how long calls in flight may take to finish.
    #[arg(long, global = true, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// A certificate identity: a URI (`scheme://...`) without spaces.
fn identity(text: &str) -> Result<String, String> {
    let text = text.trim();
    let uri = text
        .split_once("://")
        .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
    if uri && !text.contains(char::is_whitespace) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is no certificate identity (a URI such as spiffe://domain/service)"
        ))
    }
}

impl Config {
    /// The defaults, as `--help` shows them, with no flags or environment.
    pub fn defaults() -> Self {
        Cli::parse_from(["wallet-svc"]).config
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn debug_leaves_out_the_database_password() {
        let url = "postgres://wallet:hunter2@db.example:5432/wallet";
        let cli = Cli::parse_from(["wallet-svc", "--database-url", url]);
        assert_eq!(cli.config.database_url.expose_secret(), url);
        for shown in [format!("{:?}", cli.config), format!("{cli:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("listen_addr"), "the rest is shown: {shown}");
        }
    }
}
