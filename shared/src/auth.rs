//! Who is calling: a user named by a verified bearer token, or a service named by its client
//! certificate, and the rules every handler applies to them.
//!
//! Tokens are JWTs (`authorization: Bearer <token>`) signed by a key of the JWKS file
//! (EdDSA/Ed25519, ES256 or RS256 of at least 2048 bits; the token's `alg` must be its key's),
//! from the configured issuer for the configured audience, within `nbf`..`exp` give or take
//! [`LEEWAY`]. `sub` is the user's id (a positive integer) and `roles` may hold `admin`. A
//! verified token is remembered until it expires, so a client that sends the same token on
//! every call pays for one signature check. A new JWKS (read again when the file changes)
//! starts with nothing remembered: a removed key stops its tokens at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tonic::{Code, Request, Status};

use crate::error::{Reason, status_with_reason};
use crate::reload::Reloading;
use crate::tls::Peer;
use crate::values::UserId;

/// Clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The role that may act for any user and call the admin RPCs.
pub const ADMIN_ROLE: &str = "admin";

/// Bytes of verified tokens remembered at once (each token's length and
/// [`REMEMBERED_OVERHEAD`]): about 40,000 tokens of a typical 400 bytes.
const REMEMBERED_BYTES: u64 = 16 * 1024 * 1024;
/// What remembering a token costs beside its bytes: the entry, its `Verified`, the table.
const REMEMBERED_OVERHEAD: u64 = 96;
/// How many tokens [`REMEMBERED_BYTES`] is sized for, to size the table up front.
const REMEMBERED_TOKENS: usize = 40_000;

/// Longest a verified token is remembered, whatever its `exp`.
const REMEMBERED_FOR: Duration = Duration::from_secs(300);

/// Where tokens come from and whom they are for.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
}

/// Checks bearer tokens against the keys of a JWKS file, read again when it changes.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Reloading<KeySet>,
}

/// The keys of one version of the JWKS file, and the tokens verified with them.
struct KeySet {
    keys: Vec<VerifyingKey>,
    issuer: String,
    audience: String,
    verified: quick_cache::sync::Cache<Box<str>, Remembered, TokenBytes>,
}

/// A verified token's claims, and until when (Unix seconds) they are taken without another
/// signature check.
#[derive(Debug, Clone)]
struct Remembered {
    verified: Arc<Verified>,
    until: u64,
}

/// Weighs a remembered token by its size, so that long tokens (RS256's) take their share of
/// [`REMEMBERED_BYTES`].
#[derive(Debug, Clone, Copy)]
struct TokenBytes;

impl quick_cache::Weighter<Box<str>, Remembered> for TokenBytes {
    fn weight(&self, token: &Box<str>, _: &Remembered) -> u64 {
        token.len() as u64 + REMEMBERED_OVERHEAD
    }
}

struct VerifyingKey {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: i64,
    pub admin: bool,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl TokenVerifier {
    /// Loads the JWKS of `settings`, polled every `reload_every` for changes.
    pub fn load(settings: &TokenSettings, reload_every: Option<Duration>) -> anyhow::Result<Self> {
        let issuer = settings.issuer.clone();
        let audience = settings.audience.clone();
        let keys = Reloading::load(
            "JWKS",
            vec![settings.jwks_file.clone()],
            reload_every,
            move |contents| KeySet::parse(&contents[0], &issuer, &audience),
        )?;
        Ok(Self { keys })
    }

    /// What `token` says, if it verifies now.
    pub fn verify(&self, token: &str) -> Result<Arc<Verified>, TokenError> {
        let keys = self.keys.current();
        let now = unix_now();
        if let Some(remembered) = keys.verified.get(token)
            && now <= remembered.until
        {
            return if now
                > remembered
                    .verified
                    .expires_at
                    .saturating_add(LEEWAY.as_secs())
            {
                Err(TokenError::Expired)
            } else {
                Ok(remembered.verified)
            };
        }
        let verified = Arc::new(keys.verify(token)?);
        keys.verified.insert(
            token.into(),
            Remembered {
                verified: verified.clone(),
                until: now.saturating_add(REMEMBERED_FOR.as_secs()),
            },
        );
        Ok(verified)
    }
}

impl KeySet {
    fn parse(jwks: &[u8], issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_slice(jwks).context("not a JWKS (RFC 7517)")?;
        // An identity provider publishes other keys too (for encryption, or of algorithms not
        // taken here): those are skipped, so that a change to the set (a key removed, say)
        // still takes effect.
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match verifying_key(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!(
                    kid = jwk.common.key_id.as_deref().unwrap_or("(none)"),
                    why = format!("{why:#}"),
                    "a key of the JWKS is skipped"
                ),
            }
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "no key of the JWKS verifies EdDSA, ES256 or RS256 tokens"
        );
        let verified = quick_cache::sync::Cache::with_weighter(
            REMEMBERED_TOKENS,
            REMEMBERED_BYTES,
            TokenBytes,
        );
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            verified,
        })
    }

    fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let invalid = |why: &str| TokenError::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.id.as_deref() == Some(kid.as_str())),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or_else(|| invalid("signed by no key of the JWKS"))?;
        if header.alg != key.algorithm {
            return Err(invalid("its algorithm is not its key's"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY.as_secs();
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => invalid("not valid yet"),
                ErrorKind::InvalidIssuer => invalid("another issuer's"),
                ErrorKind::InvalidAudience => invalid("for another audience"),
                ErrorKind::InvalidSignature => invalid("its signature does not verify"),
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Invalid(format!("no {claim} claim"))
                }
                _ => invalid("malformed"),
            })?
            .claims;
        // The canonical decimal form only: "042" or "+42" is no other spelling of user 42.
        let user_id = claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| UserId::parse(*id).is_ok() && id.to_string() == claims.sub)
            .ok_or_else(|| invalid("sub is not a user id"))?;
        Ok(Verified {
            user_id,
            admin: claims.roles.iter().any(|role| role == ADMIN_ROLE),
            expires_at: claims.exp,
        })
    }
}

/// A key of the JWKS, with the one algorithm it verifies.
fn verifying_key(jwk: &Jwk) -> anyhow::Result<VerifyingKey> {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
    anyhow::ensure!(
        matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        ),
        "not a signature key (use)"
    );
    if let Some(operations) = &jwk.common.key_operations {
        anyhow::ensure!(
            operations.contains(&KeyOperations::Verify),
            "not a verification key (key_ops)"
        );
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(params) => {
            anyhow::ensure!(
                params.curve == EllipticCurve::Ed25519,
                "an OKP key must be Ed25519"
            );
            anyhow::ensure!(decoded_len(&params.x)? == 32, "x is not 32 bytes");
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(params) => {
            anyhow::ensure!(
                params.curve == EllipticCurve::P256,
                "an EC key must be P-256"
            );
            anyhow::ensure!(
                decoded_len(&params.x)? == 32 && decoded_len(&params.y)? == 32,
                "x and y are not 32 bytes each"
            );
            Algorithm::ES256
        }
        AlgorithmParameters::RSA(params) => {
            let modulus = decode_base64url(&params.n)?;
            let significant = modulus
                .iter()
                .position(|&byte| byte != 0)
                .map_or(&[][..], |first| &modulus[first..]);
            let bits = (significant.len() * 8).saturating_sub(
                significant
                    .first()
                    .map_or(0, |b| b.leading_zeros() as usize),
            );
            anyhow::ensure!(
                bits >= 2048,
                "an RSA key needs at least 2048 bits, not {bits}"
            );
            Algorithm::RS256
        }
        _ => anyhow::bail!("only Ed25519, P-256 and RSA keys verify tokens"),
    };
    if let Some(named) = jwk.common.key_algorithm {
        let matches = matches!(
            (named, algorithm),
            (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::RS256, Algorithm::RS256)
        );
        anyhow::ensure!(
            matches,
            "alg {named:?} is not EdDSA, ES256 or RS256 for its key type"
        );
    }
    Ok(VerifyingKey {
        id: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).context("not a usable key")?,
    })
}

fn decode_base64url(value: &str) -> anyhow::Result<Vec<u8>> {
    base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        value.trim_end_matches('='),
    )
    .context("not base64url")
}

fn decoded_len(value: &str) -> anyhow::Result<usize> {
    Ok(decode_base64url(value)?.len())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Who makes a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody is checked (`INSECURE`): requests name their user and are believed.
    Unchecked,
    /// A user with a verified token.
    User { id: i64, admin: bool },
    /// A service with a verified client certificate and no token, by its identity.
    Service { identity: Arc<str> },
}

impl Caller {
    /// The caller of `request`, as [`Authenticate`] found it.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::internal("the call was not authenticated"))
    }

    /// Fails unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), Status> {
        match self {
            Self::Unchecked | Self::User { admin: true, .. } => Ok(()),
            Self::User { .. } => Err(status_with_reason(
                Code::PermissionDenied,
                Reason::AdminOnly,
                "this call needs the admin role",
            )),
            Self::Service { .. } => Err(token_missing()),
        }
    }

    /// The user a request's `user_id` field names: 0 is the caller; another id must be the
    /// caller's own unless the caller is an admin. Unchecked callers get the field as it is.
    pub fn acting_for(&self, user_id: i64) -> Result<i64, Status> {
        match *self {
            Self::Unchecked => Ok(user_id),
            Self::User { id, .. } if user_id == 0 || user_id == id => Ok(id),
            Self::User { admin: true, .. } => Ok(user_id),
            Self::User { .. } => Err(status_with_reason(
                Code::PermissionDenied,
                Reason::OtherUser,
                "a user may only act for themselves",
            )),
            Self::Service { .. } => Err(token_missing()),
        }
    }

    /// Whether the caller may see what belongs to `owner` (something else's is answered as
    /// not found, so that ids reveal nothing).
    pub fn may_see(&self, owner: i64) -> bool {
        match *self {
            Self::Unchecked | Self::User { admin: true, .. } => true,
            Self::User { id, .. } => id == owner,
            Self::Service { .. } => false,
        }
    }
}

fn token_missing() -> Status {
    status_with_reason(
        Code::Unauthenticated,
        Reason::TokenMissing,
        "this call needs a bearer token in the authorization metadata",
    )
}

/// Finds the caller of every call and puts it in the call's extensions, or answers
/// `UNAUTHENTICATED` before the handler runs. A call with a token is its user's; a call
/// without one on a connection with a verified client certificate is that service's.
#[derive(Debug, Clone)]
pub struct Authenticate {
    tokens: Option<TokenVerifier>,
}

impl Authenticate {
    /// Checks every call's token with `tokens`.
    pub fn new(tokens: TokenVerifier) -> Self {
        Self {
            tokens: Some(tokens),
        }
    }

    /// Believes every call (`INSECURE`).
    pub fn unchecked() -> Self {
        Self { tokens: None }
    }

    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Unchecked);
        };
        let mut values = request.metadata().get_all("authorization").iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(invalid_token("more than one authorization value"));
            }
            let token = value
                .to_str()
                .ok()
                .and_then(bearer)
                .ok_or_else(|| invalid_token("authorization is not a bearer token"))?;
            return match tokens.verify(token) {
                Ok(verified) => Ok(Caller::User {
                    id: verified.user_id,
                    admin: verified.admin,
                }),
                Err(TokenError::Expired) => Err(status_with_reason(
                    Code::Unauthenticated,
                    Reason::TokenExpired,
                    "the token has expired",
                )),
                Err(TokenError::Invalid(why)) => Err(invalid_token(&why)),
            };
        }
        let identity = request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.identity.clone());
        match identity {
            Some(identity) => Ok(Caller::Service { identity }),
            None => Err(token_missing()),
        }
    }
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn invalid_token(why: &str) -> Status {
    status_with_reason(
        Code::Unauthenticated,
        Reason::TokenInvalid,
        format!("invalid token: {why}"),
    )
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.caller(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
