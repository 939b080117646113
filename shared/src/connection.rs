//! A server's connections: accepted up to a limit of open ones, each counted until it closes,
//! and accept errors (out of file descriptors, say) met with a growing pause instead of a spin.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{CONNECTIONS_OPEN, CONNECTIONS_REFUSED};

/// The first pause after a failed accept; it doubles while accepts keep failing.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause after a failed accept.
const LONGEST_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// How long a connection, once accepted (and past its TLS handshake), may take to send its
/// first bytes (HTTP/2's preface) before it is closed: a silent connection holds no place.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// How many loopback connections may be open past the limit.
pub const LOOPBACK_EXTRA: usize = 8;

/// Accepts the connections of a listener, at most `max_open` open at once: a connection beyond
/// them is closed at once (counted in `ticketing_connections_refused_total`), so that one client
/// opening connections cannot use up the process's file descriptors. Connections from loopback
/// (the health probe's) may go [`LOOPBACK_EXTRA`] past the limit, so that a probe is answered
/// while outsiders hold every place. A failed accept pauses,
/// from 10 ms doubling to 1 s while accepts keep failing; the first failure of a run is logged
/// as a warning, and so is the accept that ends it.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    open: Arc<Semaphore>,
    loopback_extra: Arc<Semaphore>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, max_open: usize) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(max_open.clamp(1, Semaphore::MAX_PERMITS))),
            loopback_extra: Arc::new(Semaphore::new(LOOPBACK_EXTRA)),
        }
    }

    /// The next connection within the limit, with its place among the open ones.
    pub async fn next(&self) -> (TcpStream, SocketAddr, ConnectionSlot) {
        let mut pause = FIRST_ACCEPT_PAUSE;
        let mut failing = false;
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "accepting connections fails; pausing between tries");
                        failing = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LONGEST_ACCEPT_PAUSE);
                    continue;
                }
            };
            if failing {
                tracing::warn!("accepting connections works again");
                failing = false;
                pause = FIRST_ACCEPT_PAUSE;
            }
            let permit = self.open.clone().try_acquire_owned().or_else(|refused| {
                if addr.ip().is_loopback() {
                    self.loopback_extra.clone().try_acquire_owned()
                } else {
                    Err(refused)
                }
            });
            let permit = match permit {
                Ok(permit) => permit,
                Err(_) => {
                    tracing::debug!(?addr, "connection refused at the limit");
                    metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            return (stream, addr, ConnectionSlot::taken(permit));
        }
    }
}

impl Acceptor {
    /// The plaintext connections, as the server takes them.
    pub fn plaintext(
        self,
    ) -> impl futures::Stream<Item = Result<Connection<TcpStream, TcpConnectInfo>, io::Error>> {
        futures::stream::unfold(self, |acceptor| async move {
            let (stream, _, slot) = acceptor.next().await;
            let info = stream.connect_info();
            Some((Ok(Connection::new(stream, info, slot)), acceptor))
        })
    }
}

/// A connection's place among the open ones, counted in `ticketing_connections_open` until it
/// is dropped with its connection.
#[derive(Debug)]
pub struct ConnectionSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionSlot {
    fn taken(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        Self(permit)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// An accepted connection (TCP, or TLS over it) holding its place until it closes, with what
/// its calls learn of it (`info`, in each request's extensions). One that sends nothing within
/// [`FIRST_BYTES_TIMEOUT`] is closed.
#[derive(Debug)]
pub struct Connection<IO, Info> {
    io: IO,
    info: Info,
    _slot: ConnectionSlot,
    /// Until the first bytes are read: when the connection is given up.
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO, Info> Connection<IO, Info> {
    pub fn new(io: IO, info: Info, slot: ConnectionSlot) -> Self {
        Self {
            io,
            info,
            _slot: slot,
            first_bytes: Some(Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT))),
        }
    }
}

impl<IO, Info> Connected for Connection<IO, Info>
where
    Info: Clone + Send + Sync + 'static,
{
    type ConnectInfo = Info;

    fn connect_info(&self) -> Info {
        self.info.clone()
    }
}

impl<IO: AsyncRead + Unpin, Info: Unpin> AsyncRead for Connection<IO, Info> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.first_bytes.is_none() {
            return read;
        }
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_bytes = None,
            Poll::Pending
                if this
                    .first_bytes
                    .as_mut()
                    .is_some_and(|first| first.as_mut().poll(cx).is_ready()) =>
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes within the time a connection has for its first",
                )));
            }
            _ => {}
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin, Info: Unpin> AsyncWrite for Connection<IO, Info> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
