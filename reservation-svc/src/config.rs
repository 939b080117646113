//! Settings, each from a `--flag` or its environment variable; `--help` lists the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use secrecy::SecretString;
pub use shared::cli::Command;
use shared::db::DbArgs;
use shared::security::SecurityArgs;
use shared::server::ServerArgs;
use shared::tls::ClientFiles;

use crate::lock::LockFallback;

#[derive(Debug, Parser)]
#[command(
    name = "reservation-svc",
    version,
    about = "Concert seat reservations over gRPC"
)]
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
        env = "RESERVATION_LISTEN_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub listen_addr: SocketAddr,

    /// Postgres database of concerts, schedules, seats and reservations.
    // Secret: the URL may carry a password, which Config's Debug must not show.
    #[arg(
        long,
        global = true,
        env = "RESERVATION_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/reservation",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    /// Address of the Prometheus `/metrics` endpoint; empty for none.
    // `std::option::Option`, so that clap hands the value to the parser, empty included.
    #[arg(
        long,
        global = true,
        env = "RESERVATION_METRICS_ADDR",
        default_value = "0.0.0.0:9091",
        value_parser = shared::metrics::parse_metrics_addr
    )]
    pub metrics_addr: std::option::Option<SocketAddr>,

    /// Redis of the seat locks.
    // Secret: the URL may carry a password (`redis://:PASSWORD@host`), as the database's.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretString,

    /// PEM CA bundle that signs Redis's certificate, for a `rediss://` REDIS_URL; without it
    /// the system's roots.
    #[arg(long, global = true, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// PEM certificate presented to Redis over TLS (Redis asks for one unless
    /// `tls-auth-clients no`).
    #[arg(long, global = true, env = "REDIS_TLS_CERT_FILE")]
    pub redis_tls_cert_file: Option<PathBuf>,

    /// PEM private key of `REDIS_TLS_CERT_FILE`.
    #[arg(long, global = true, env = "REDIS_TLS_KEY_FILE")]
    pub redis_tls_key_file: Option<PathBuf>,

    /// Longest one Redis command may take; past it a hold answers UNAVAILABLE (or, with
    /// `SEAT_LOCK_FALLBACK=postgres`, takes the seat's lock in Postgres, and waits at most this
    /// long for any lock there).
    #[arg(long, global = true, env = "REDIS_COMMAND_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_command_timeout: Duration,

    /// What a hold does when Redis does not answer its lock: `fail-closed` answers
    /// UNAVAILABLE; `postgres` takes the seat's lock in Postgres instead, and after a few
    /// failures in a row every hold does until Redis answers again (Postgres decides either
    /// way, so no seat is sold twice).
    #[arg(long, global = true, env = "SEAT_LOCK_FALLBACK", value_enum, default_value_t = LockFallback::FailClosed)]
    pub seat_lock_fallback: LockFallback,

    /// How long a hold keeps its seat before it lapses.
    #[arg(long, global = true, env = "SEAT_HOLD_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub seat_hold_ttl: Duration,

    /// How long a seat lock lives if its request never releases it.
    #[arg(long, global = true, env = "SEAT_LOCK_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub seat_lock_ttl: Duration,

    /// How long a replica answers SEAT_TAKEN from a seat's taken mark it has seen, before it
    /// asks Redis again; also how long a seat cancelled through another replica may still be
    /// refused here. `0s` asks Redis every time.
    #[arg(long, global = true, env = "SEAT_TAKEN_MEMORY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub seat_taken_memory: Duration,

    /// Prefix of every Redis key this service writes.
    #[arg(
        long,
        global = true,
        env = "SEAT_LOCK_PREFIX",
        default_value = "ticketing:"
    )]
    pub seat_lock_prefix: String,

    /// How often each replica expires lapsed holds.
    #[arg(long, global = true, env = "SWEEP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Most holds one sweep transaction expires.
    #[arg(long, global = true, env = "SWEEP_BATCH_SIZE", default_value_t = 500)]
    pub sweep_batch_size: i64,

    /// wallet-svc, which takes the payments.
    #[arg(
        long,
        global = true,
        env = "WALLET_ENDPOINT",
        default_value = "http://127.0.0.1:50052"
    )]
    pub wallet_endpoint: String,

    /// PEM CA bundle that signs wallet-svc's certificate; needed for an `https://` endpoint.
    #[arg(long, global = true, env = "WALLET_TLS_CA_FILE")]
    pub wallet_tls_ca_file: Option<PathBuf>,

    /// PEM certificate reservation-svc presents to wallet-svc: its identity there.
    #[arg(long, global = true, env = "WALLET_TLS_CERT_FILE")]
    pub wallet_tls_cert_file: Option<PathBuf>,

    /// PEM private key of `WALLET_TLS_CERT_FILE`.
    #[arg(long, global = true, env = "WALLET_TLS_KEY_FILE")]
    pub wallet_tls_key_file: Option<PathBuf>,

    /// Deadline of each call to wallet-svc; past it the payment's outcome is unknown and the
    /// reservation stays PAYING for a retry or the reconciler.
    #[arg(long, global = true, env = "WALLET_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub wallet_timeout: Duration,

    /// How often each replica looks for payments left PAYING.
    #[arg(long, global = true, env = "RECONCILE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,

    /// How long a reservation must have been PAYING before the reconciler drives it.
    #[arg(long, global = true, env = "RECONCILE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reconcile_grace: Duration,

    /// On SIGTERM, how long calls in flight may take to finish.
    #[arg(long, global = true, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Most reservations one user may have HELD or PAYING on one schedule at once; a hold
    /// beyond them is FAILED_PRECONDITION / HOLD_LIMIT.
    #[arg(
        long,
        global = true,
        env = "MAX_ACTIVE_HOLDS_PER_USER",
        default_value_t = crate::model::DEFAULT_MAX_ACTIVE_HOLDS_PER_USER
    )]
    pub max_active_holds_per_user: std::num::NonZeroU32,

    /// The keys that sign and check admission tokens of the waiting rooms: a JWKS of symmetric
    /// keys (`"kty": "oct"`, a `kid` each, at least 32 bytes), the first one signing, read
    /// again every `RELOAD_INTERVAL`; every replica holds the same file. Unset: no room can be
    /// configured or entered on this replica (with `INSECURE`, a key of the process's own
    /// signs, good on this replica only).
    #[arg(long, global = true, env = "ADMISSION_TOKEN_KEYS_FILE")]
    pub admission_token_keys_file: Option<PathBuf>,
}

/// The client certificate and key of the settings `<prefix>_CERT_FILE` and `<prefix>_KEY_FILE`:
/// both or neither.
fn identity(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    prefix: &str,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(None),
        _ => anyhow::bail!("{prefix}_CERT_FILE and {prefix}_KEY_FILE go together"),
    }
}

impl Config {
    /// The admission tokens' keys, as the settings ask: `None` when rooms are off here.
    pub fn admission_tokens(&self) -> anyhow::Result<Option<crate::admission::AdmissionTokens>> {
        use anyhow::Context as _;
        match &self.admission_token_keys_file {
            Some(file) => crate::admission::AdmissionTokens::load(
                file.clone(),
                Some(self.security.reload_interval),
            )
            .map(Some)
            .context("ADMISSION_TOKEN_KEYS_FILE"),
            None if self.security.insecure => {
                tracing::warn!(
                    "no ADMISSION_TOKEN_KEYS_FILE: admission tokens are signed with a key of this process, good on this replica only"
                );
                crate::admission::AdmissionTokens::of_this_process().map(Some)
            }
            None => {
                tracing::warn!(
                    "no ADMISSION_TOKEN_KEYS_FILE: waiting rooms are off on this replica"
                );
                Ok(None)
            }
        }
    }

    /// The TLS files of a `rediss://` Redis, if any are set.
    pub fn redis_tls(&self) -> anyhow::Result<Option<ClientFiles>> {
        let identity = identity(
            &self.redis_tls_cert_file,
            &self.redis_tls_key_file,
            "REDIS_TLS",
        )?;
        match (&self.redis_tls_ca_file, identity) {
            (Some(ca), identity) => Ok(Some(ClientFiles {
                ca: ca.clone(),
                identity,
            })),
            (None, None) => Ok(None),
            (None, Some(_)) => anyhow::bail!("REDIS_TLS_CERT_FILE needs REDIS_TLS_CA_FILE"),
        }
    }

    /// How wallet-svc is reached: over TLS (with reservation-svc's certificate, if set) for an
    /// `https://` endpoint, in plaintext for `http://` only when the service runs INSECURE.
    pub fn wallet_tls(&self) -> anyhow::Result<Option<ClientFiles>> {
        let https = self.wallet_endpoint.starts_with("https://");
        let identity = identity(
            &self.wallet_tls_cert_file,
            &self.wallet_tls_key_file,
            "WALLET_TLS",
        )?;
        if !https {
            anyhow::ensure!(
                self.wallet_tls_ca_file.is_none() && identity.is_none(),
                "WALLET_TLS_* are set but WALLET_ENDPOINT {} is not https://",
                self.wallet_endpoint
            );
            anyhow::ensure!(
                self.security.insecure,
                "WALLET_ENDPOINT {} is plaintext: use https:// with WALLET_TLS_CA_FILE \
                 (and WALLET_TLS_CERT_FILE, WALLET_TLS_KEY_FILE), or INSECURE=true",
                self.wallet_endpoint
            );
            return Ok(None);
        }
        let Some(ca) = self.wallet_tls_ca_file.clone() else {
            anyhow::bail!("WALLET_ENDPOINT is https:// but WALLET_TLS_CA_FILE is not set");
        };
        Ok(Some(ClientFiles { ca, identity }))
    }

    /// The defaults, as `--help` shows them, with no flags or environment.
    pub fn defaults() -> Self {
        Cli::parse_from(["reservation-svc"]).config
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn debug_leaves_out_the_database_and_redis_passwords() {
        let database = "postgres://reservation:hunter2@db.example:5432/reservation";
        let redis = "redis://:swordfish@redis.example:6379";
        let cli = Cli::parse_from([
            "reservation-svc",
            "--database-url",
            database,
            "--redis-url",
            redis,
        ]);
        assert_eq!(cli.config.database_url.expose_secret(), database);
        assert_eq!(cli.config.redis_url.expose_secret(), redis);
        for shown in [format!("{:?}", cli.config), format!("{cli:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("swordfish"), "{shown}");
            assert!(
                shown.contains("seat_lock_prefix"),
                "the rest is shown: {shown}"
            );
        }
    }
}
