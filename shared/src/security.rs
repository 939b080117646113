//! A server's security settings, the same in both services: TLS (mutual when a client CA is
//! set), bearer tokens, and the one explicit switch that turns both off. Secure is the
//! default: a service with neither its TLS and token settings nor `INSECURE=true` refuses to
//! start and names what is missing.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{Authenticate, TokenSettings, TokenVerifier};
use crate::tls::{ServerFiles, ServerTls};

/// The settings of TLS and of callers' tokens, as flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Serve plaintext and believe every caller: for local experiments only. Logged at
    /// start-up, reported by health (service `insecure` is SERVING) and by the
    /// `insecure_mode` metric.
    #[arg(long, global = true, env = "INSECURE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: bool,

    /// PEM certificate chain the server presents.
    #[arg(long, global = true, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the server's certificate.
    #[arg(long, global = true, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA bundle; when set, every client must present a certificate it signed.
    #[arg(long, global = true, env = "TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// JWKS file of the keys that sign callers' tokens (EdDSA, ES256, RS256).
    #[arg(long, global = true, env = "AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,

    /// The `iss` every token must carry.
    #[arg(long, global = true, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The `aud` every token must carry.
    #[arg(long, global = true, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// How often certificate, key and JWKS files are read again for changes.
    #[arg(long, global = true, env = "RELOAD_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub reload_interval: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0s".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// A server's security in force.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plaintext, every caller believed.
    Insecure,
    /// TLS with these settings, every caller checked.
    Secure {
        tls: ServerTls,
        tokens: TokenVerifier,
        /// Whether clients must present a certificate.
        mutual: bool,
    },
}

impl SecurityArgs {
    /// The server files, if both the certificate and key are set.
    pub fn server_files(&self) -> Option<ServerFiles> {
        Some(ServerFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_client_ca_file.clone(),
        })
    }

    /// Reads the files the settings name (an error names a missing setting, an unreadable
    /// file, or one that does not make a working configuration). `service` names the binary
    /// in messages.
    pub fn load(&self, service: &str) -> anyhow::Result<Security> {
        let named = [
            ("TLS_CERT_FILE", self.tls_cert_file.is_some()),
            ("TLS_KEY_FILE", self.tls_key_file.is_some()),
            ("TLS_CLIENT_CA_FILE", self.tls_client_ca_file.is_some()),
            ("AUTH_JWKS_FILE", self.auth_jwks_file.is_some()),
            ("AUTH_ISSUER", self.auth_issuer.is_some()),
            ("AUTH_AUDIENCE", self.auth_audience.is_some()),
        ];
        if self.insecure {
            let set: Vec<&str> = named
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
            anyhow::ensure!(
                set.is_empty(),
                "INSECURE=true turns TLS and caller checks off, yet {} set: unset them, or INSECURE",
                set.join(", ")
            );
            tracing::warn!(
                "{service} runs INSECURE: plaintext, and every caller is believed; never expose it"
            );
            return Ok(Security::Insecure);
        }
        let missing: Vec<&str> = named
            .iter()
            .filter(|(name, set)| !set && *name != "TLS_CLIENT_CA_FILE")
            .map(|(name, _)| *name)
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{service} serves only with TLS and token checks, and {} {} not set \
             (scripts/dev-pki.sh makes a development set), or set INSECURE=true for plaintext \
             without caller checks",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
        );
        let (Some(files), Some(jwks_file), Some(issuer), Some(audience)) = (
            self.server_files(),
            self.auth_jwks_file.clone(),
            self.auth_issuer.clone(),
            self.auth_audience.clone(),
        ) else {
            anyhow::bail!("incomplete security settings");
        };
        let every = Some(self.reload_interval);
        let tls = crate::tls::server_tls(&files, every)?;
        let tokens = TokenVerifier::load(
            &TokenSettings {
                jwks_file,
                issuer,
                audience,
            },
            every,
        )?;
        Ok(Security::Secure {
            tls,
            tokens,
            mutual: files.client_ca.is_some(),
        })
    }
}

impl Security {
    /// The check every call of the service's own RPCs goes through.
    pub fn authenticate(&self) -> Authenticate {
        match self {
            Self::Insecure => Authenticate::unchecked(),
            Self::Secure { tokens, .. } => Authenticate::new(tokens.clone()),
        }
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Self::Insecure)
    }
}
