//! TLS for the servers and mutual TLS for the calls between services, on rustls with ring.
//!
//! Certificates, keys and CA bundles are PEM files, read again when they change
//! ([`crate::reload`]): a new connection uses the files in force when it is made, and
//! connections already open keep theirs (they are long-lived; rotation works because both
//! certificates are valid for a while).
//!
//! A service's identity is the URI subject alternative name of its certificate,
//! SPIFFE-style: `spiffe://<trust domain>/<service>`, e.g.
//! `spiffe://ticketing.local/reservation-svc`. A server that verifies client certificates
//! hands each call the identity of its connection's certificate ([`Peer`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::Stream;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use crate::connection::Peer;
use crate::connection::{Acceptor, Connection, ConnectionSlot};
use crate::reload::Reloading;

/// Longest a client may take over its TLS handshake before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most TLS handshakes a server runs at once; a connection beyond them is closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// The only application protocol spoken over TLS: gRPC's HTTP/2.
const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a server's certificate, key and (for mutual TLS) client CA are.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Where a client's CA bundle and (for mutual TLS) certificate and key are.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    /// The certificate and key presented to the server, if it asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A server's TLS settings, rebuilt when the files change.
pub type ServerTls = Reloading<Arc<ServerConfig>>;

/// A client's TLS settings, rebuilt when the files change.
pub type ClientTls = Reloading<Arc<ClientConfig>>;

/// Loads a server's TLS settings from `files`, polled every `reload_every` for changes.
pub fn server_tls(
    files: &ServerFiles,
    reload_every: Option<Duration>,
) -> anyhow::Result<ServerTls> {
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.client_ca.clone());
    let mutual = files.client_ca.is_some();
    Reloading::load(
        "server TLS certificate and key",
        paths,
        reload_every,
        move |contents| {
            let config =
                server_config(&contents[0], &contents[1], mutual.then(|| &contents[2][..]))?;
            Ok(Arc::new(config))
        },
    )
}

/// Loads a client's TLS settings from `files`, polled every `reload_every` for changes.
pub fn client_tls(
    files: &ClientFiles,
    reload_every: Option<Duration>,
) -> anyhow::Result<ClientTls> {
    let mut paths = vec![files.ca.clone()];
    if let Some((cert, key)) = &files.identity {
        paths.push(cert.clone());
        paths.push(key.clone());
    }
    Reloading::load(
        "client TLS CA, certificate and key",
        paths,
        reload_every,
        move |contents| {
            let identity = match contents {
                [_, cert, key] => Some((&cert[..], &key[..])),
                _ => None,
            };
            Ok(Arc::new(client_config(&contents[0], identity)?))
        },
    )
}

/// A server configuration from PEM contents: the certificate chain, its key, and the CAs that
/// sign acceptable client certificates (none: clients are not asked for one).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> anyhow::Result<ServerConfig> {
    let chain = certificates(cert_pem).context("the certificate file")?;
    let key = private_key(key_pem).context("the key file")?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let roots = roots(pem).context("the client CA file")?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a pair")?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A client configuration from PEM contents: the CAs that sign acceptable server
/// certificates, and the certificate and key to present, if any.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> anyhow::Result<ClientConfig> {
    let roots = roots(ca_pem).context("the CA file")?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = certificates(cert_pem).context("the client certificate file")?;
            let key = private_key(key_pem).context("the client key file")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not make a pair")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "no PEM certificate in it");
    Ok(chain)
}

fn private_key(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| anyhow::anyhow!("no private key: {error}"))
}

fn roots(pem: &[u8]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A client configuration for a health probe of the server with `files`, run next to it:
/// the server is not verified, and the server's own certificate is presented when clients
/// must have one.
pub fn probe_config(files: &ServerFiles) -> anyhow::Result<ClientTls> {
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("cannot read {}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .with_context(|| format!("cannot read {}", files.key.display()))?;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = if files.client_ca.is_some() {
        builder.with_client_auth_cert(certificates(&cert)?, private_key(&key)?)?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Reloading::fixed("probe TLS", Arc::new(config)))
}

/// Accepts any server certificate (whose handshake signature still verifies): for a probe of
/// the process next to it only.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The identity a certificate (DER) names: its first URI subject alternative name.
pub fn identity_of(cert: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
}

/// A server's accepted TLS connection, with what its calls learn of it.
pub type TlsConnection = Connection<tokio_rustls::server::TlsStream<TcpStream>>;

/// The TLS connections of `listener`. Accepting never waits for a handshake: each runs in a
/// task of its own within [`HANDSHAKE_TIMEOUT`], with the settings in force when the connection
/// came. At most [`MAX_HANDSHAKES`] run at once, and at most [`MAX_HANDSHAKES_PER_PEER`] from
/// one address (loopback, where the health probe comes from, is not counted per address): a
/// connection beyond either is closed at once, so clients that open connections and never
/// finish a handshake cannot keep others out. A connection whose handshake fails (no trusted
/// client certificate, not TLS, too slow) is closed without reaching the server. Connections
/// are accepted by `acceptor`, within its limit of open ones.
pub fn accept(
    acceptor: Acceptor,
    tls: ServerTls,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> {
    let (done, connections) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let per_peer = PeerCounts::default();
        loop {
            let (stream, addr, open) = tokio::select! {
                accepted = acceptor.next() => accepted,
                () = done.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!(crate::metrics::TLS_HANDSHAKES_REFUSED).increment(1);
                continue;
            };
            let peer = if addr.ip().is_loopback() {
                None
            } else {
                let Some(peer) = PeerSlot::take(&per_peer, addr.ip()) else {
                    metrics::counter!(crate::metrics::TLS_HANDSHAKES_REFUSED).increment(1);
                    continue;
                };
                Some(peer)
            };
            let acceptor = TlsAcceptor::from(tls.current().as_ref().clone());
            let done = done.clone();
            tokio::spawn(async move {
                let connection = handshake(stream, addr, acceptor, open).await;
                drop((slot, peer));
                if let Some(connection) = connection {
                    let _ = done.send(Ok(connection)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Most handshakes running at once from one address.
const MAX_HANDSHAKES_PER_PEER: usize = 16;

/// Handshakes running, by the address they come from.
type PeerCounts = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// A handshake counted against its peer's address until dropped.
struct PeerSlot {
    counts: PeerCounts,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, or `None` when it already has [`MAX_HANDSHAKES_PER_PEER`].
    fn take(counts: &PeerCounts, ip: std::net::IpAddr) -> Option<Self> {
        let mut locked = counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = locked.entry(ip).or_default();
        if *count >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut locked = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = locked.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                locked.remove(&self.ip);
            }
        }
    }
}

async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    open: ConnectionSlot,
) -> Option<TlsConnection> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(?addr, %error, "TLS handshake failed");
            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
            return None;
        }
        Err(_) => {
            tracing::debug!(?addr, "TLS handshake timed out");
            metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
            return None;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| identity_of(cert))
        .map(Arc::from);
    let peer = Peer {
        addr: Some(addr),
        identity,
        load: Arc::clone(open.load()),
    };
    Some(Connection::new(stream, peer, open))
}

/// A channel to `endpoint` (`https://host:port`) over TLS with the settings in force at each
/// (re)connection, presenting the client certificate when the settings have one.
pub fn channel(
    endpoint: &str,
    tls: ClientTls,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    channel_at(endpoint, None, tls, timeout)
}

/// Like [`channel`], but to `addr` (one of the addresses `endpoint`'s host resolves to),
/// checking the server's certificate against `endpoint`'s host name all the same; with HTTP/2
/// keepalive, so that a dead peer is found while no call is sent. A balancing client makes one
/// per address.
pub fn channel_to(
    endpoint: &str,
    addr: SocketAddr,
    tls: ClientTls,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    channel_at(endpoint, Some(addr), tls, timeout)
}

fn channel_at(
    endpoint: &str,
    addr: Option<SocketAddr>,
    tls: ClientTls,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    let uri: Uri = endpoint.parse().context("not a URI")?;
    anyhow::ensure!(
        uri.scheme_str() == Some("https"),
        "a TLS endpoint is https://host:port"
    );
    let host = uri.host().context("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    // The trimmed brackets of an IPv6 literal make it a server name rustls can parse.
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .context("not a host name or an IP address")?;
    // tonic is given the plain scheme: the TLS is this connector's.
    let plain = match addr {
        Some(addr) => format!("http://{addr}"),
        None => format!("http://{host}:{port}"),
    };
    let connector = tower::service_fn(move |_: Uri| {
        let connector = TlsConnector::from(tls.current().as_ref().clone());
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let stream = match addr {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect((host.trim_matches(['[', ']']), port)).await?,
            };
            stream.set_nodelay(true)?;
            let stream = connector.connect(server_name, stream).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(plain)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let endpoint = match addr {
        Some(_) => with_keepalive(endpoint),
        None => endpoint,
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// HTTP/2 pings every 10 s while a connection is open, even idle; no answer within 5 s closes
/// it (and its calls fail over to the other addresses).
pub fn with_keepalive(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    endpoint
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}
