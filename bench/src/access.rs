//! How the load generator reaches a service: in plaintext (a service run with `INSECURE`), or
//! as production's callers do, over TLS with a client certificate and every call with a token,
//! each user's own for the calls a user makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long the tokens the load generator signs are valid: longer than any run.
const TOKEN_LIFETIME_S: i64 = 3_600;
/// The user id of the administrator token that sets up a scenario's fixtures (concerts,
/// schedules, charges).
const ADMIN_USER: i64 = 1;

/// `--pki DIR`: the development PKI of scripts/dev-pki.sh. With it the load generator connects
/// over TLS trusting `DIR/ca.pem` as a [`Caller`]: for users, with the operator certificate
/// `DIR/admin.pem` and tokens signed with `DIR/token-key.pem` as scripts/dev-token.sh does
/// (each user's own for the calls that user makes, an administrator's for the fixtures); for
/// the wallet's `Use`, with reservation-svc's client certificate.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// The development PKI directory (scripts/dev-pki.sh); without it, plaintext and no tokens.
    #[arg(long, global = true)]
    pub pki: Option<PathBuf>,
}

/// Who the load generator calls as, with `--pki`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator certificate (`admin.pem`), with each user's token on the calls a user makes
    /// and an administrator's on the rest: how end users and operators reach both services.
    Users,
    /// reservation-svc's client certificate (`reservation-client.pem`) and no token: how the
    /// payment service reaches wallet-svc's `Use` and `Refund`.
    PaymentService,
}

/// A connection to a service, with a token on every call when the service wants one.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Connections to one service (one or several replicas), and the tokens of its callers.
#[derive(Debug, Clone)]
pub struct Service {
    pub conns: Vec<Conn>,
    tokens: Option<Arc<Tokens>>,
}

impl Service {
    /// Opens `per_addr` HTTP/2 connections to each address (`https://` with `access.pki`), as
    /// `caller`.
    pub async fn connect(
        addrs: &[String],
        per_addr: usize,
        access: &Access,
        caller: Caller,
    ) -> anyhow::Result<Self> {
        let (tls, tokens) = match (&access.pki, caller) {
            (Some(dir), Caller::Users) => (
                Some(client_tls(dir, "admin")?),
                Some(Arc::new(Tokens::load(dir)?)),
            ),
            (Some(dir), Caller::PaymentService) => {
                (Some(client_tls(dir, "reservation-client")?), None)
            }
            (None, _) => (None, None),
        };
        let bearer = Bearer(tokens.clone());
        let mut conns = Vec::new();
        for addr in addrs {
            for _ in 0..per_addr.max(1) {
                let channel = match &tls {
                    Some(tls) => {
                        let channel =
                            shared::tls::channel(addr, tls.clone(), Duration::from_secs(30))?;
                        // Connected now, as the plaintext ones are, not on the first measured
                        // call.
                        HealthClient::new(channel.clone())
                            .check(HealthCheckRequest::default())
                            .await
                            .map_err(|error| anyhow::anyhow!("connecting to {addr}: {error}"))?;
                        channel
                    }
                    None => Channel::from_shared(addr.clone())?
                        .connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .map_err(|error| anyhow::anyhow!("connecting to {addr}: {error}"))?,
                };
                conns.push(InterceptedService::new(channel, bearer.clone()));
            }
        }
        Ok(Self { conns, tokens })
    }

    /// The first connection, for a scenario's fixtures.
    pub fn first(&self) -> anyhow::Result<&Conn> {
        self.conns
            .first()
            .ok_or_else(|| anyhow::anyhow!("no connection to the service"))
    }

    /// Signs the tokens of `users` now, so that signing them costs the measured calls nothing
    /// (a token is signed on its first call otherwise).
    pub fn sign_tokens(&self, users: impl IntoIterator<Item = i64>) -> anyhow::Result<()> {
        if let Some(tokens) = &self.tokens {
            for user_id in users {
                tokens.of(user_id)?;
            }
        }
        Ok(())
    }
}

/// The user a request is made by, in its extensions: [`Bearer`] sends that user's token.
#[derive(Debug, Clone, Copy)]
struct As(i64);

/// `message` as a call of user `user_id`.
pub fn as_user<T>(user_id: i64, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(As(user_id));
    request
}

/// Puts `authorization: Bearer <token>` on every call: the token of the request's user
/// ([`as_user`]), or the administrator's for the rest. Without tokens, calls go as they are.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<Arc<Tokens>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(tokens) = &self.0 else {
            return Ok(request);
        };
        let value = match request.extensions().get::<As>() {
            Some(As(user_id)) => tokens.of(*user_id),
            None => Ok(tokens.admin.clone()),
        }
        .map_err(|error| tonic::Status::internal(format!("signing a token: {error:#}")))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Signs tokens as scripts/dev-token.sh does (EdDSA with `token-key.pem`, the `kid` of
/// `jwks.json`, the issuer and audience of `reservation.env`), and keeps each user's.
struct Tokens {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    admin: AsciiMetadataValue,
    by_user: RwLock<HashMap<i64, AsciiMetadataValue>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let pem = read(&dir.join("token-key.pem"))?;
        let key = EncodingKey::from_ed_pem(pem.as_bytes()).with_context(|| {
            format!(
                "{}: not an Ed25519 key",
                dir.join("token-key.pem").display()
            )
        })?;
        let jwks: serde_json::Value = serde_json::from_str(&read(&dir.join("jwks.json"))?)?;
        let kid = jwks["keys"][0]["kid"]
            .as_str()
            .with_context(|| format!("no kid in {}", dir.join("jwks.json").display()))?;
        let env = read(&dir.join("reservation.env"))?;
        let setting = |name: &str| {
            env.lines()
                .filter_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .next_back()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {}", dir.join("reservation.env").display()))
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let mut tokens = Self {
            key,
            header,
            issuer: setting("AUTH_ISSUER")?,
            audience: setting("AUTH_AUDIENCE")?,
            admin: AsciiMetadataValue::from_static(""),
            by_user: RwLock::default(),
        };
        tokens.admin = tokens.sign(ADMIN_USER, &["admin"])?;
        Ok(tokens)
    }

    /// User `user_id`'s token, signed on first use.
    fn of(&self, user_id: i64) -> anyhow::Result<AsciiMetadataValue> {
        if let Some(value) = self
            .by_user
            .read()
            .ok()
            .and_then(|by_user| by_user.get(&user_id).cloned())
        {
            return Ok(value);
        }
        let value = self.sign(user_id, &[])?;
        if let Ok(mut by_user) = self.by_user.write() {
            by_user.insert(user_id, value.clone());
        }
        Ok(value)
    }

    /// `Bearer <a token of user_id with roles>`.
    fn sign(&self, user_id: i64, roles: &[&str]) -> anyhow::Result<AsciiMetadataValue> {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id.to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_S,
            "roles": roles,
        });
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)?;
        Ok(format!("Bearer {token}").parse()?)
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {}: make the development PKI with scripts/dev-pki.sh",
            path.display()
        )
    })
}

/// Trusts `DIR/ca.pem` and presents the certificate `DIR/<name>.pem`.
fn client_tls(dir: &Path, name: &str) -> anyhow::Result<shared::tls::ClientTls> {
    let files = shared::tls::ClientFiles {
        ca: dir.join("ca.pem"),
        identity: Some((
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )),
    };
    shared::tls::client_tls(&files, None)
}
