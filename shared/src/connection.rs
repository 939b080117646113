//! A server's connections: accepted up to a limit of open ones, each counted until it closes,
//! and accept errors (out of file descriptors, say) met with a growing pause instead of a spin;
//! closed when they stay without a call; and the bytes held for their calls, within a budget
//! per connection and per server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::metrics::{
    BUFFERED_BYTES, CONNECTIONS_IDLE_CLOSED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED,
};
use crate::server::{MAX_CONNECTION_AGE, MAX_CONNECTION_AGE_GRACE, ServerArgs};

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
///
/// Each connection gets its [`Load`]: its calls (it is closed after `IDLE_CONNECTION_TIMEOUT`
/// without one) and the bytes held for them, within `MAX_BUFFERED_BYTES_PER_CONNECTION` and,
/// with every other connection's, `MAX_BUFFERED_BYTES`.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    open: Arc<Semaphore>,
    loopback_extra: Arc<Semaphore>,
    buffers: Arc<ServerBuffers>,
    max_buffered_per_connection: usize,
    idle_timeout: Duration,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limits: &ServerArgs) -> Self {
        Self {
            listener,
            open: Arc::new(Semaphore::new(
                limits.max_connections.get().min(Semaphore::MAX_PERMITS),
            )),
            loopback_extra: Arc::new(Semaphore::new(LOOPBACK_EXTRA)),
            buffers: Arc::new(ServerBuffers {
                held: AtomicUsize::new(0),
                max: limits.max_buffered_bytes,
            }),
            max_buffered_per_connection: limits.max_buffered_bytes_per_connection,
            idle_timeout: limits.idle_connection_timeout,
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
            let load = Arc::new(Load {
                calls: AtomicUsize::new(0),
                idle_since: AtomicU64::new(0),
                idle_timeout: self.idle_timeout,
                waker: AtomicWaker::new(),
                late: AtomicBool::new(false),
                buffered: AtomicUsize::new(0),
                max_buffered: self.max_buffered_per_connection,
                server: Arc::clone(&self.buffers),
            });
            load.idle_from(Instant::now());
            return (stream, addr, ConnectionSlot::taken(permit, load));
        }
    }
}

impl Acceptor {
    /// The plaintext connections, as the server takes them.
    pub fn plaintext(
        self,
    ) -> impl futures::Stream<Item = Result<Connection<TcpStream>, io::Error>> {
        futures::stream::unfold(self, |acceptor| async move {
            let (stream, addr, slot) = acceptor.next().await;
            let peer = Peer {
                addr: Some(addr),
                identity: None,
                load: Arc::clone(&slot.load),
            };
            Some((Ok(Connection::new(stream, peer, slot)), acceptor))
        })
    }
}

/// What a call knows of its connection (a request extension of every call): the client's
/// address, the identity of the certificate it presented over TLS, if any, and the
/// connection's [`Load`].
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub identity: Option<Arc<str>>,
    pub load: Arc<Load>,
}

/// The bytes a server holds for the calls of all its connections, and the most it may.
#[derive(Debug)]
struct ServerBuffers {
    held: AtomicUsize,
    max: usize,
}

/// Adds `bytes` to `held` if the sum stays within `max`.
fn try_add(held: &AtomicUsize, max: usize, bytes: usize) -> bool {
    held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
        now.checked_add(bytes).filter(|sum| *sum <= max)
    })
    .is_ok()
}

/// What a connection's calls weigh: how many are open (a connection without one for
/// `idle_timeout` is closed) and the bytes held for them.
#[derive(Debug)]
pub struct Load {
    calls: AtomicUsize,
    /// When the last call ended, in milliseconds of [`Instant`] since [`process_start`].
    idle_since: AtomicU64,
    idle_timeout: Duration,
    /// The connection's reading task, woken when its last call ends.
    waker: AtomicWaker,
    /// A call's answer was not taken within its time ([`Load::answer_late`]).
    late: AtomicBool,
    buffered: AtomicUsize,
    max_buffered: usize,
    server: Arc<ServerBuffers>,
}

/// The instant the idle times of connections count from.
fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Load {
    /// A call open on the connection, until dropped.
    pub fn call(self: &Arc<Self>) -> OpenCall {
        self.calls.fetch_add(1, Ordering::AcqRel);
        OpenCall(Arc::clone(self))
    }

    /// Bytes held for a call, none so far: see [`Buffered::hold`].
    pub fn buffered(self: &Arc<Self>) -> Buffered {
        Buffered {
            load: Arc::clone(self),
            bytes: 0,
        }
    }

    fn idle_from(&self, at: Instant) {
        let since = at.saturating_duration_since(process_start()).as_millis();
        self.idle_since
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// When the connection is to be closed for want of calls, if it has none now (and has an
    /// idle time: 0 means none).
    fn idle_deadline(&self) -> Option<Instant> {
        if self.idle_timeout.is_zero() || self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        (process_start() + since).checked_add(self.idle_timeout)
    }

    /// A call of the connection was not taken by its client within its time: the connection is
    /// closed, and the answers it holds with it.
    pub fn answer_late(&self) {
        self.late.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A call counted on its connection until dropped; a clone is counted as another.
#[derive(Debug)]
pub struct OpenCall(Arc<Load>);

impl Clone for OpenCall {
    fn clone(&self) -> Self {
        self.0.call()
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        // The time first: whoever sees no call open sees when the last one ended.
        self.0.idle_from(Instant::now());
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

/// Bytes held for one call (its request as it arrives, or its answer until sent), counted
/// against its connection's budget and the server's, and given back when dropped.
#[derive(Debug)]
pub struct Buffered {
    load: Arc<Load>,
    bytes: usize,
}

impl Buffered {
    /// Holds `bytes` in all for the call from now on: fewer always, more only within both
    /// budgets (otherwise nothing changes and it answers false).
    pub fn hold(&mut self, bytes: usize) -> bool {
        let load = &self.load;
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            if !try_add(&load.buffered, load.max_buffered, more) {
                return false;
            }
            if !try_add(&load.server.held, load.server.max, more) {
                load.buffered.fetch_sub(more, Ordering::AcqRel);
                return false;
            }
            metrics::gauge!(BUFFERED_BYTES).increment(more as f64);
        } else if bytes < self.bytes {
            let less = self.bytes - bytes;
            load.buffered.fetch_sub(less, Ordering::AcqRel);
            load.server.held.fetch_sub(less, Ordering::AcqRel);
            metrics::gauge!(BUFFERED_BYTES).decrement(less as f64);
        }
        self.bytes = bytes;
        true
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.hold(0);
    }
}

/// A connection's place among the open ones, counted in `ticketing_connections_open` until it
/// is dropped with its connection.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    load: Arc<Load>,
}

impl ConnectionSlot {
    fn taken(permit: OwnedSemaphorePermit, load: Arc<Load>) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        Self {
            _permit: permit,
            load,
        }
    }

    /// What the connection's calls weigh.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// An accepted connection (TCP, or TLS over it) holding its place until it closes, with what
/// its calls learn of it ([`Peer`], in each request's extensions). One that sends nothing
/// within [`FIRST_BYTES_TIMEOUT`] is closed, so is one without a call for its idle time, and
/// every one is closed [`MAX_CONNECTION_AGE_GRACE`] after the server asked it to go away at
/// [`MAX_CONNECTION_AGE`], whatever its calls.
#[derive(Debug)]
pub struct Connection<IO> {
    io: IO,
    peer: Peer,
    _slot: ConnectionSlot,
    /// Until the first bytes are read: when the connection is given up.
    first_bytes: Option<Pin<Box<Sleep>>>,
    /// While the connection has no call: when it is closed.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the connection is closed whatever its calls.
    end_of_life: Pin<Box<Sleep>>,
    /// When bytes were last read: a connection is never closed as idle within
    /// [`IDLE_READ_GRACE`] of them, so that a call just read has reached its handler.
    last_read: Instant,
}

/// How long after reading bytes a connection may not be closed as idle.
const IDLE_READ_GRACE: Duration = Duration::from_secs(1);

impl<IO> Connection<IO> {
    pub fn new(io: IO, peer: Peer, slot: ConnectionSlot) -> Self {
        Self {
            io,
            peer,
            _slot: slot,
            first_bytes: Some(Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT))),
            idle: None,
            end_of_life: Box::pin(tokio::time::sleep(
                MAX_CONNECTION_AGE + MAX_CONNECTION_AGE_GRACE,
            )),
            last_read: Instant::now(),
        }
    }

    /// Whether the connection has been without a call for its idle time; when not, wakes the
    /// task when it will have, or when its last call ends.
    fn idle_for_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let load = &self.peer.load;
        load.waker.register(cx.waker());
        let Some(deadline) = load.idle_deadline() else {
            self.idle = None;
            return false;
        };
        let deadline = deadline.max(self.last_read + IDLE_READ_GRACE);
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<IO> Connected for Connection<IO> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && buf.filled().len() > before
        {
            this.last_read = Instant::now();
        }
        if this.peer.load.late.load(Ordering::Acquire) {
            tracing::debug!(peer = ?this.peer.addr, "closing a connection whose client left an answer untaken");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an answer was not taken within its call's time",
            )));
        }
        if read.is_pending() && this.end_of_life.as_mut().poll(cx).is_ready() {
            tracing::debug!(peer = ?this.peer.addr, "closing a connection at the end of its life");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived its age and grace",
            )));
        }
        if read.is_pending() && this.first_bytes.is_none() && this.idle_for_too_long(cx) {
            tracing::debug!(peer = ?this.peer.addr, "closing a connection without calls");
            metrics::counter!(CONNECTIONS_IDLE_CLOSED).increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no call within the time a connection may stay without one",
            )));
        }
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

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(max_buffered: usize, server: &Arc<ServerBuffers>) -> Arc<Load> {
        let load = Arc::new(Load {
            calls: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            idle_timeout: Duration::from_secs(1),
            waker: AtomicWaker::new(),
            late: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            max_buffered,
            server: Arc::clone(server),
        });
        load.idle_from(Instant::now());
        load
    }

    /// Whether `took` is `expected`, to the millisecond the timers keep.
    fn about(took: Duration, expected: Duration) -> bool {
        took.abs_diff(expected) <= Duration::from_millis(2)
    }

    #[test]
    fn bytes_are_held_within_the_connections_budget_and_the_servers() {
        let server = Arc::new(ServerBuffers {
            held: AtomicUsize::new(0),
            max: 150,
        });
        let (one, other) = (load(100, &server), load(100, &server));
        let mut first = one.buffered();
        assert!(first.hold(80));
        let mut second = one.buffered();
        assert!(!second.hold(30), "past the connection's 100");
        assert_eq!(second.bytes(), 0);
        let mut third = other.buffered();
        assert!(!third.hold(80), "past the server's 150");
        assert!(third.hold(70));
        assert!(first.hold(20), "fewer always");
        assert!(second.hold(30));
        drop((first, second, third));
        assert_eq!(server.held.load(Ordering::Acquire), 0);
        assert_eq!(one.buffered.load(Ordering::Acquire), 0);
    }

    /// A connection over an in-memory pipe, past its first bytes, with the client's end.
    async fn open_connection(load: &Arc<Load>) -> (Connection<tokio::io::DuplexStream>, impl Drop) {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a place");
        let peer = Peer {
            addr: None,
            identity: None,
            load: Arc::clone(load),
        };
        let slot = ConnectionSlot::taken(permit, Arc::clone(load));
        let mut connection = Connection::new(server, peer, slot);
        client.write_all(b"x").await.expect("first bytes");
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut connection, &mut byte)
            .await
            .expect("read");
        (connection, client)
    }

    /// How long reading the connection takes to fail, the client saying nothing.
    async fn closed_after(connection: &mut Connection<tokio::io::DuplexStream>) -> Duration {
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(connection, &mut byte).await;
        assert!(read.is_err(), "closed, not read: {read:?}");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_calls_closes_at_its_idle_time_and_any_at_its_end_of_life() {
        let server = Arc::new(ServerBuffers {
            held: AtomicUsize::new(0),
            max: 0,
        });
        let idle = load(0, &server);
        let (mut connection, _client) = open_connection(&idle).await;
        let took = closed_after(&mut connection).await;
        assert!(about(took, Duration::from_secs(1)), "{took:?}");

        let busy = load(0, &server);
        let (mut connection, _client) = open_connection(&busy).await;
        let _call = busy.call();
        let took = closed_after(&mut connection).await;
        assert!(
            about(took, MAX_CONNECTION_AGE + MAX_CONNECTION_AGE_GRACE),
            "{took:?}"
        );
    }

    #[test]
    fn a_connection_is_idle_from_its_last_calls_end() {
        let server = Arc::new(ServerBuffers {
            held: AtomicUsize::new(0),
            max: 0,
        });
        let load = load(0, &server);
        let call = load.call();
        let copy = call.clone();
        assert_eq!(load.idle_deadline(), None);
        drop(call);
        assert_eq!(load.idle_deadline(), None, "one call is still open");
        let before = Instant::now();
        drop(copy);
        let deadline = load.idle_deadline().expect("idle");
        // Stored to the millisecond.
        assert!(deadline + Duration::from_millis(1) >= before + Duration::from_secs(1));
        assert!(deadline <= Instant::now() + Duration::from_secs(1));
    }
}
