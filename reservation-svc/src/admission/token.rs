//! Admission tokens: what a user whose turn has come shows HoldSeat, checked on the replica
//! without asking Redis.
//!
//! A token is a JWT signed with HMAC-SHA256 (`HS256`) by a key of `ADMISSION_TOKEN_KEYS_FILE`,
//! a JWKS of symmetric keys (`"kty": "oct"`, each with a `kid` and at least 32 bytes in `k`).
//! Every replica holds the same file: the first key signs and every key verifies, so a key is
//! rotated by adding the new one second, moving it first once every replica has it, and
//! removing the old one once the tokens it signed have expired. The file is read again every
//! `RELOAD_INTERVAL`. A token names its user (`sub`), its schedule (`sch`) and when it ends
//! (`exp`), for the audience [`AUDIENCE`] only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use shared::reload::Reloading;

/// The audience of admission tokens: no access token of the identity provider is one.
pub const AUDIENCE: &str = "ticketing-admission";

/// The fewest bytes of a key (RFC 7518 asks HS256 keys for at least the hash's size).
const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sch: i64,
    /// Seconds since the Unix epoch.
    exp: u64,
    aud: String,
}

/// Why HoldSeat refuses a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("this schedule's seats need an admission token from its waiting room")]
    Missing,
    #[error("the admission token has expired: enter the waiting room again")]
    Expired,
    #[error("the admission token is not valid: {0}")]
    Invalid(&'static str),
}

struct Keys {
    /// The first key's id and key, which signs.
    signing: (String, EncodingKey),
    verifying: Vec<(String, DecodingKey)>,
}

/// Signs and checks admission tokens.
#[derive(Clone)]
pub struct AdmissionTokens {
    keys: Reloading<Keys>,
}

impl std::fmt::Debug for AdmissionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionTokens").finish_non_exhaustive()
    }
}

impl AdmissionTokens {
    /// The keys of `file`, read again every `reload_every`.
    pub fn load(file: PathBuf, reload_every: Option<Duration>) -> anyhow::Result<Self> {
        let keys = Reloading::load("admission token keys", vec![file], reload_every, |files| {
            parse(&files[0])
        })?;
        Ok(Self { keys })
    }

    /// A key of this process alone, for a replica without the file (`INSECURE` only): its
    /// tokens are good on this replica only.
    pub fn of_this_process() -> anyhow::Result<Self> {
        let secret: [u8; 32] = rand::random();
        let keys = Keys {
            signing: ("process".to_owned(), EncodingKey::from_secret(&secret)?),
            verifying: vec![("process".to_owned(), DecodingKey::from_secret(&secret)?)],
        };
        Ok(Self {
            keys: Reloading::fixed("admission token keys", keys),
        })
    }

    /// A token for `user` on `schedule` until `until_ms` (Unix milliseconds).
    pub fn sign(&self, user: i64, schedule: i64, until_ms: i64) -> Result<String, String> {
        let keys = self.keys.current();
        let (kid, key) = &keys.signing;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let claims = Claims {
            sub: user.to_string(),
            sch: schedule,
            // A token is taken through the whole second of its `exp`: it ends a second early
            // rather than outlive its turn.
            exp: u64::try_from(until_ms / 1_000 - 1).unwrap_or(0),
            aud: AUDIENCE.to_owned(),
        };
        jsonwebtoken::encode(&header, &claims, key).map_err(|error| error.to_string())
    }

    /// Whether `token` lets `user` hold seats of `schedule` now.
    pub fn check(&self, token: &str, user: i64, schedule: i64) -> Result<(), TokenRefusal> {
        use jsonwebtoken::errors::ErrorKind;
        let keys = self.keys.current();
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Invalid("not a JWT"))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenRefusal::Invalid("not signed with HS256"));
        }
        let kid = header.kid.ok_or(TokenRefusal::Invalid("it names no key"))?;
        let (_, key) = keys
            .verifying
            .iter()
            .find(|(id, _)| *id == kid)
            .ok_or(TokenRefusal::Invalid("signed by no key of this service"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenRefusal::Expired,
                ErrorKind::InvalidSignature => {
                    TokenRefusal::Invalid("its signature does not verify")
                }
                ErrorKind::InvalidAudience => TokenRefusal::Invalid("not an admission token"),
                _ => TokenRefusal::Invalid("malformed"),
            })?
            .claims;
        if claims.sub != user.to_string() {
            return Err(TokenRefusal::Invalid("another user's"));
        }
        if claims.sch != schedule {
            return Err(TokenRefusal::Invalid("another schedule's"));
        }
        Ok(())
    }
}

/// The keys of a JWKS of symmetric keys, the first one signing.
fn parse(jwks: &[u8]) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_slice(jwks).context("not a JWKS (RFC 7517)")?;
    let mut verifying = Vec::with_capacity(set.keys.len());
    let mut signing = None;
    for jwk in &set.keys {
        let AlgorithmParameters::OctetKey(octets) = &jwk.algorithm else {
            anyhow::bail!("every key must be symmetric (\"kty\": \"oct\")");
        };
        let kid = jwk.common.key_id.clone().context("every key needs a kid")?;
        let secret = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            octets.value.trim_end_matches('='),
        )
        .with_context(|| format!("key {kid}: k is not base64url"))?;
        anyhow::ensure!(
            secret.len() >= MIN_KEY_BYTES,
            "key {kid}: at least {MIN_KEY_BYTES} bytes"
        );
        anyhow::ensure!(
            verifying.iter().all(|(id, _)| *id != kid),
            "key id {kid} appears twice"
        );
        if signing.is_none() {
            signing = Some((kid.clone(), EncodingKey::from_secret(&secret)?));
        }
        verifying.push((kid, DecodingKey::from_secret(&secret)?));
    }
    let signing = signing.context("the JWKS has no key")?;
    Ok(Keys { signing, verifying })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks(keys: &[(&str, [u8; 32])]) -> Vec<u8> {
        let keys: Vec<_> = keys
            .iter()
            .map(|(kid, secret)| {
                serde_json::json!({
                    "kty": "oct",
                    "kid": kid,
                    "alg": "HS256",
                    "k": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default()
    }

    fn tokens(keys: &[(&str, [u8; 32])]) -> AdmissionTokens {
        let parsed = parse(&jwks(keys));
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        AdmissionTokens {
            keys: Reloading::fixed("keys", parsed.unwrap_or_else(|_| unreachable!())),
        }
    }

    fn in_a_minute() -> i64 {
        chrono::Utc::now().timestamp_millis() + 60_000
    }

    #[test]
    fn a_token_lets_its_user_hold_seats_of_its_schedule_only() {
        let tokens = tokens(&[("a", [1; 32])]);
        let token = tokens.sign(7, 3, in_a_minute()).unwrap_or_default();
        assert_eq!(tokens.check(&token, 7, 3), Ok(()));
        assert_eq!(
            tokens.check(&token, 8, 3),
            Err(TokenRefusal::Invalid("another user's"))
        );
        assert_eq!(
            tokens.check(&token, 7, 4),
            Err(TokenRefusal::Invalid("another schedule's"))
        );
        let expired = tokens.sign(7, 3, 1_000).unwrap_or_default();
        assert_eq!(tokens.check(&expired, 7, 3), Err(TokenRefusal::Expired));
        assert!(matches!(
            tokens.check("not.a.token", 7, 3),
            Err(TokenRefusal::Invalid(_))
        ));
    }

    #[test]
    fn every_key_verifies_and_the_first_signs() {
        let old = tokens(&[("old", [1; 32])]);
        let rotated = tokens(&[("new", [2; 32]), ("old", [1; 32])]);
        let by_old = old.sign(7, 3, in_a_minute()).unwrap_or_default();
        assert_eq!(rotated.check(&by_old, 7, 3), Ok(()));
        let by_new = rotated.sign(7, 3, in_a_minute()).unwrap_or_default();
        assert_eq!(
            old.check(&by_new, 7, 3),
            Err(TokenRefusal::Invalid("signed by no key of this service"))
        );
        let forged = tokens(&[("old", [9; 32])])
            .sign(7, 3, in_a_minute())
            .unwrap_or_default();
        assert_eq!(
            old.check(&forged, 7, 3),
            Err(TokenRefusal::Invalid("its signature does not verify"))
        );
    }

    #[test]
    fn short_or_unnamed_keys_are_refused() {
        let short = br#"{"keys":[{"kty":"oct","kid":"a","k":"c2hvcnQ"}]}"#;
        assert!(parse(short).is_err());
        let unnamed =
            br#"{"keys":[{"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;
        assert!(parse(unnamed).is_err());
        assert!(parse(br#"{"keys":[]}"#).is_err());
    }
}
