//! Real certificates and real tokens for tests, made in the test: a CA of its own, server and
//! client certificates with SPIFFE-style identities (or expired, or of another CA), and a
//! token issuer with its JWKS (Ed25519, P-256, or RSA through the `openssl` command).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::security::SecurityArgs;
use crate::tls::ClientFiles;

/// The issuer and audience of the test tokens.
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "ticketing-test";

/// A directory of PEM files, removed with this value.
#[derive(Debug)]
pub struct PkiDir {
    path: PathBuf,
}

impl PkiDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "ticketing-pki-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in the directory (atomically, as a Secret update does).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        let partial = self.path.join(format!(".{name}.partial"));
        std::fs::write(&partial, contents).expect("write a PKI file");
        std::fs::rename(&partial, &path).expect("move a PKI file into place");
        path
    }
}

impl Default for PkiDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PkiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes the pair as `<name>.pem` and `<name>-key.pem`.
    pub fn write(&self, dir: &PkiDir, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.write(&format!("{name}.pem"), &self.cert_pem),
            dir.write(&format!("{name}-key.pem"), &self.key_pem),
        )
    }
}

/// A certificate authority of a test's own.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1` that is also a client certificate,
    /// naming `identity`.
    pub fn server(&self, identity: &str) -> Leaf {
        self.leaf(identity, true, false)
    }

    /// A client certificate naming `identity`.
    pub fn client(&self, identity: &str) -> Leaf {
        self.leaf(identity, false, false)
    }

    /// A client certificate naming `identity` that expired years ago.
    pub fn expired_client(&self, identity: &str) -> Leaf {
        self.leaf(identity, false, true)
    }

    fn leaf(&self, identity: &str, server: bool, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, identity);
        params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("an URI"))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params.subject_alt_names.extend([
                SanType::DnsName("localhost".try_into().expect("a name")),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ]);
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Signs tokens with one key, and says its JWKS.
#[derive(Debug)]
pub struct TokenIssuer {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl TokenIssuer {
    /// An Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&key.serialize_der()),
            jwk: serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(key.public_key_raw()),
            }),
        }
    }

    /// A P-256 key (ES256).
    pub fn es256(kid: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let point = key.public_key_raw();
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// A 2048-bit RSA key (RS256), made by the `openssl` command.
    pub fn rs256(kid: &str) -> Self {
        let dir = PkiDir::new();
        let key_path = dir.path().join("rsa.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key_path)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "openssl genpkey: {made:?}");
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&key_path)
            .output()
            .expect("openssl runs");
        let modulus = String::from_utf8(modulus.stdout).expect("text");
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n = hex::decode(hex).expect("hex modulus");
        let pem = std::fs::read(&key_path).expect("the RSA key");
        Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&pem).expect("an RSA key"),
            jwk: serde_json::json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB",
            }),
        }
    }

    /// The JWKS of this issuer's key.
    pub fn jwks(&self) -> String {
        jwks(&[self])
    }

    /// A token of `user_id` with `roles`, valid from a minute ago for an hour.
    pub fn token(&self, user_id: i64, roles: &[&str]) -> String {
        let now = unix_now();
        self.sign(&serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": user_id.to_string(),
            "iat": now, "nbf": now - 60, "exp": now + 3600, "roles": roles,
        }))
    }

    /// A token with exactly these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a signed token")
    }
}

/// The JWKS of several issuers' keys.
pub fn jwks(issuers: &[&TokenIssuer]) -> String {
    let keys: Vec<&serde_json::Value> = issuers.iter().map(|issuer| &issuer.jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// A service's whole secure set-up in one directory: its server certificate, the CA that signs
/// every certificate of the test, and the token issuer's JWKS.
#[derive(Debug)]
pub struct SecureSetup {
    pub dir: PkiDir,
    pub ca: TestCa,
    pub tokens: TokenIssuer,
    pub ca_file: PathBuf,
    pub jwks_file: PathBuf,
}

impl SecureSetup {
    pub fn new() -> Self {
        let dir = PkiDir::new();
        let ca = TestCa::new("test CA");
        let tokens = TokenIssuer::ed25519("test-key");
        let ca_file = dir.write("ca.pem", &ca.pem());
        let jwks_file = dir.write("jwks.json", &tokens.jwks());
        Self {
            dir,
            ca,
            tokens,
            ca_file,
            jwks_file,
        }
    }

    /// Security settings of a server named `name` (files `<name>.pem`, `<name>-key.pem`) with
    /// identity `identity`, requiring client certificates when `mutual`.
    pub fn server(&self, name: &str, identity: &str, mutual: bool) -> SecurityArgs {
        let (cert, key) = self.ca.server(identity).write(&self.dir, name);
        SecurityArgs {
            insecure: false,
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
            tls_client_ca_file: mutual.then(|| self.ca_file.clone()),
            auth_jwks_file: Some(self.jwks_file.clone()),
            auth_issuer: Some(ISSUER.to_owned()),
            auth_audience: Some(AUDIENCE.to_owned()),
            reload_interval: std::time::Duration::from_millis(100),
        }
    }

    /// Client files trusting this setup's CA, presenting a certificate of `identity` (written as
    /// `<name>.pem`) when given.
    pub fn client(&self, name: &str, identity: Option<&str>) -> ClientFiles {
        ClientFiles {
            ca: self.ca_file.clone(),
            identity: identity.map(|identity| self.ca.client(identity).write(&self.dir, name)),
        }
    }
}

/// The environment that gives a service process `args`: `INSECURE` and the variables of its
/// TLS files, tokens and reload interval.
pub fn environment(args: &SecurityArgs) -> Vec<(&'static str, String)> {
    let path = |path: &Option<PathBuf>| path.as_ref().map(|path| path.display().to_string());
    [
        ("INSECURE", Some(args.insecure.to_string())),
        ("TLS_CERT_FILE", path(&args.tls_cert_file)),
        ("TLS_KEY_FILE", path(&args.tls_key_file)),
        ("TLS_CLIENT_CA_FILE", path(&args.tls_client_ca_file)),
        ("AUTH_JWKS_FILE", path(&args.auth_jwks_file)),
        ("AUTH_ISSUER", args.auth_issuer.clone()),
        ("AUTH_AUDIENCE", args.auth_audience.clone()),
        (
            "RELOAD_INTERVAL",
            Some(humantime::format_duration(args.reload_interval).to_string()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect()
}

impl Default for SecureSetup {
    fn default() -> Self {
        Self::new()
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("a token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A channel over TLS with `files` to the test server at `addr` (by the name `localhost`).
pub fn tls_channel(addr: std::net::SocketAddr, files: &ClientFiles) -> tonic::transport::Channel {
    let tls = crate::tls::client_tls(files, None).expect("client TLS settings");
    crate::tls::channel(
        &format!("https://localhost:{}", addr.port()),
        tls,
        std::time::Duration::from_secs(5),
    )
    .expect("a channel")
}

/// Asserts that `answer` is refused with `code` and the `ErrorInfo` reason `reason`.
pub fn assert_refused<T: std::fmt::Debug>(
    answer: Result<T, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) {
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        crate::error::reason_of(&status).as_deref(),
        Some(reason),
        "{status:?}"
    );
}
