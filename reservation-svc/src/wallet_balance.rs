//! A channel to wallet-svc balanced over every address its host name resolves to (a headless
//! Service's pods), resolved again periodically: one connection per address, each call to the
//! less loaded of two (power of two choices), an address gone from the answer dropped, a new
//! one added. A name that cannot be resolved keeps the addresses last known.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::Uri;
use shared::tls::ClientTls;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;
use tower::util::BoxCloneSyncService;

/// The channel a balanced client calls through.
pub type BalancedChannel =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, ChannelError>;

/// Why a call found no connection to the wallet (every address unreachable, none known yet).
/// A type of its own rather than a `BoxError`, whose `Into<BoxError>` the compiler cannot
/// prove for every lifetime inside the payment's futures.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ChannelError(tower::BoxError);

/// What resolves the wallet's name to its addresses (the system's resolver, or a test's).
pub type Resolve = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver, for `host:port`.
pub fn lookup(host: String, port: u16) -> Resolve {
    Arc::new(move || {
        let host = host.clone();
        Box::pin(async move {
            Ok(
                tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                    .await?
                    .collect(),
            )
        })
    })
}

/// Calls queued for the balancer at most.
const BUFFER: usize = 1024;

/// A channel over every address `resolve` answers, asked again every `every`, each address's
/// connection made like `endpoint`'s (over TLS with `tls` when given, its certificate checked
/// against `endpoint`'s host name). Must run in a Tokio runtime; the resolver task ends when
/// the channel's last clone is dropped.
pub fn balanced(
    endpoint: &str,
    timeout: Duration,
    tls: Option<ClientTls>,
    every: Duration,
    resolve: Option<Resolve>,
) -> anyhow::Result<BalancedChannel> {
    let uri: Uri = endpoint.parse().context("not a URI")?;
    let host = uri.host().context("no host")?.to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let resolve = resolve.unwrap_or_else(|| lookup(host, port));
    let endpoint = endpoint.to_owned();
    // Checked once here, so that the task's connections cannot fail to build.
    let connect = move |addr: SocketAddr| -> anyhow::Result<Channel> {
        match &tls {
            Some(tls) => shared::tls::channel_to(&endpoint, addr, tls.clone(), timeout),
            None => Ok(shared::tls::with_keepalive(
                Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout),
            )
            .connect_lazy()),
        }
    };
    connect(SocketAddr::from(([127, 0, 0, 1], port)))?;

    let (changes, discovered) =
        tokio::sync::mpsc::channel::<Result<Change<SocketAddr, Channel>, Infallible>>(64);
    let balance = tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
        tokio_stream::wrappers::ReceiverStream::new(discovered),
        tower::load::CompleteOnResponse::default(),
    ));
    let buffered = tower::buffer::Buffer::new(balance, BUFFER);
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let addrs: HashSet<SocketAddr> = match resolve().await {
                Ok(addrs) if !addrs.is_empty() => addrs.into_iter().collect(),
                Ok(_) => {
                    tracing::warn!(
                        "wallet-svc's name resolves to no address; keeping the last known"
                    );
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot resolve wallet-svc's name; keeping the last known addresses");
                    continue;
                }
            };
            for gone in known.difference(&addrs) {
                tracing::info!(addr = %gone, "wallet-svc address gone");
                if changes.send(Ok(Change::Remove(*gone))).await.is_err() {
                    return;
                }
            }
            for new in addrs.difference(&known) {
                let channel = match connect(*new) {
                    Ok(channel) => channel,
                    Err(error) => {
                        tracing::warn!(addr = %new, %error, "cannot make a wallet-svc channel");
                        continue;
                    }
                };
                tracing::info!(addr = %new, "wallet-svc address found");
                if changes
                    .send(Ok(Change::Insert(*new, channel)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            known = addrs;
        }
    });
    Ok(BoxCloneSyncService::new(tower::ServiceExt::map_err(
        buffered,
        ChannelError,
    )))
}
