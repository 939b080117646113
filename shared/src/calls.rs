//! What happens to a call between its connection and its handler, in the order the router
//! stacks it:
//!
//! 1. [`Receive`]: a call's request (one message: every call but reflection's) arrives whole,
//!    within `REQUEST_RECEIVE_TIMEOUT` of its headers, within `MAX_REQUEST_BYTES` and within
//!    the byte budgets of its connection and the server ([`crate::connection::Load`]), before
//!    it takes anything else; a stream that sends headers and never a body holds no place. The
//!    call counts on its connection (which is closed when idle) until its answer has been sent.
//! 2. [`Admission`]: a place among the server's calls in flight, or `RESOURCE_EXHAUSTED` at
//!    once (streaming calls take one among the open streams instead), and `RPC_TIMEOUT` for
//!    the whole call.
//!
//!    Both the place and the time are held until the answer's body has been sent (or the
//!    client has gone): a client that does not read its answers keeps its calls counted, and
//!    the connection of an answer still unsent at the deadline is closed. An answer's unsent
//!    bytes count against the byte budgets; one larger than a chunk that does not fit is
//!    refused with `RESOURCE_EXHAUSTED`.
//! 3. [`DecodeErrorsLayer`]: a request that is not a valid message answers `INVALID_ARGUMENT` with a
//!    `BadRequest`, not tonic's `INTERNAL`.
//! 4. [`CatchPanic`]: a panicking handler answers `INTERNAL` for its call alone.
//!
//! Health `Watch` and reflection stream by nature: they are neither received whole nor timed,
//! and are limited in number per connection and per server instead (health checks are never
//! refused at the limit).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::connection::{Buffered, Load, OpenCall, Peer};
use crate::metrics::{RPC_IN_FLIGHT, RPC_SHED, STREAMS_OPEN};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Calls under this path are never refused at the concurrency limit, so that probes still
/// see a busy server as alive.
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The bytes of a gRPC message's frame before the message: a flag and a 4-byte length.
const FRAME_PREFIX_BYTES: usize = 5;

/// What tonic says of a request it cannot decode (its prost codec's `INTERNAL`).
const TONIC_DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Whether the call at `path` streams by nature: health `Watch` and reflection.
fn is_streaming(path: &str) -> bool {
    path == "/grpc.health.v1.Health/Watch" || sends_a_stream(path)
}

/// Whether the call at `path` follows something for long and answers each change (a waiting
/// room's `WatchPosition`): its request is one message, received whole, but its answer lasts as
/// long as the wait, so it is neither timed nor counted among the calls in flight.
fn is_watch(path: &str) -> bool {
    path == "/ticketing.admission.v1.AdmissionService/WatchPosition"
}

/// Whether the client of the call at `path` sends a stream of messages (reflection): every
/// other call's request is one message, received whole before it goes on.
fn sends_a_stream(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

/// Why a call was answered without reaching its handler, as `ticketing_rpc_shed_total` labels
/// it.
#[derive(Debug, Clone, Copy)]
enum Shed {
    /// Every place among the calls in flight was taken.
    Limit,
    /// The request was larger than `MAX_REQUEST_BYTES`.
    TooLarge,
    /// The request's body did not arrive within `REQUEST_RECEIVE_TIMEOUT`.
    SlowRequest,
    /// The answer's body was not taken within the call's time.
    SlowReader,
    /// Too many streaming calls were open, on the connection or in all.
    Streams,
    /// The bytes held for the connection's calls, or all calls, were at their budget.
    Buffers,
}

impl Shed {
    /// Counts the call as shed; the log line is in the call's span, which names its method.
    fn count(self) {
        let reason = match self {
            Self::Limit => "limit",
            Self::TooLarge => "too_large",
            Self::SlowRequest => "slow_request",
            Self::SlowReader => "slow_reader",
            Self::Streams => "streams",
            Self::Buffers => "buffers",
        };
        tracing::debug!(reason, "call shed");
        metrics::counter!(RPC_SHED, "reason" => reason).increment(1);
    }
}

/// Receives a call's request whole before passing it on: within `within` of its headers (else
/// `DEADLINE_EXCEEDED`) and at most `max_message_bytes` of message (else `RESOURCE_EXHAUSTED`).
/// Only reflection, whose client sends a stream, passes as it is.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLayer {
    within: Duration,
    max_body_bytes: usize,
}

impl ReceiveLayer {
    pub fn new(within: Duration, max_message_bytes: usize) -> Self {
        Self {
            within,
            max_body_bytes: max_message_bytes.saturating_add(FRAME_PREFIX_BYTES),
        }
    }
}

impl<S> Layer<S> for ReceiveLayer {
    type Service = Receive<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Receive {
            inner,
            layer: *self,
        }
    }
}

/// See [`ReceiveLayer`].
#[derive(Debug, Clone)]
pub struct Receive<S> {
    inner: S,
    layer: ReceiveLayer,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for Receive<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        // Counted on its connection from here until its answer has been sent (see `Admission`).
        let load = request
            .extensions()
            .get::<Peer>()
            .map(|peer| Arc::clone(&peer.load));
        if let Some(load) = &load {
            request.extensions_mut().insert(load.call());
        }
        let path = request.uri().path();
        if sends_a_stream(path) {
            return Box::pin(self.inner.call(request));
        }
        // Health checks are received whatever the budgets hold, so probes see a busy server.
        let mut buffered = load
            .filter(|_| !path.starts_with(HEALTH_PATH_PREFIX))
            .as_ref()
            .map(Load::buffered);
        // The service made ready by `poll_ready` goes with this call; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ReceiveLayer {
            within,
            max_body_bytes,
        } = self.layer;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let received =
                tokio::time::timeout(within, receive(body, max_body_bytes, buffered.as_mut()))
                    .await;
            let refused = match received {
                Ok(Ok(body)) => {
                    let body = tonic::body::Body::new(Full::<Bytes>::new(body));
                    // The request's bytes stay counted until its handler has answered.
                    let answered = inner.call(http::Request::from_parts(parts, body)).await;
                    drop(buffered);
                    return answered;
                }
                Ok(Err(Unreceived::TooLarge)) => {
                    Shed::TooLarge.count();
                    tonic::Status::resource_exhausted(format!(
                        "the request is larger than the server takes ({} bytes of message)",
                        max_body_bytes - FRAME_PREFIX_BYTES
                    ))
                }
                Ok(Err(Unreceived::Buffers)) => {
                    Shed::Buffers.count();
                    tonic::Status::resource_exhausted(BUFFERS_FULL)
                }
                Ok(Err(Unreceived::CutOff)) => {
                    tonic::Status::cancelled("the request's body was cut off")
                }
                Err(_) => {
                    Shed::SlowRequest.count();
                    tonic::Status::deadline_exceeded(format!(
                        "the request's body did not arrive within {within:?} of its headers"
                    ))
                }
            };
            Ok(refused.into_http())
        })
    }
}

/// What a client is told when the bytes held for its connection's calls, or for all calls, are
/// at their budget.
const BUFFERS_FULL: &str = "the server holds as many bytes as it takes for this connection's calls or for all; read \
     your answers, or retry later";

/// Why a request's body was not received.
enum Unreceived {
    TooLarge,
    Buffers,
    CutOff,
}

/// Request bytes never counted against the byte budgets: every request of ours but a long
/// title's fits, so a client that fills the budgets cannot keep others' calls out. What they
/// may hold is bounded all the same: by the streams and connections open, and for at most
/// `REQUEST_RECEIVE_TIMEOUT`.
const FREE_REQUEST_BYTES: usize = 1024;

/// Receives a request's body whole: at most `max_bytes`, each byte past the first
/// [`FREE_REQUEST_BYTES`] held within the budgets of `buffered`.
async fn receive(
    mut body: tonic::body::Body,
    max_bytes: usize,
    mut buffered: Option<&mut Buffered>,
) -> Result<Bytes, Unreceived> {
    let mut received = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Unreceived::CutOff)?.into_data() else {
            continue;
        };
        let size = received.len().saturating_add(data.len());
        if size > max_bytes {
            return Err(Unreceived::TooLarge);
        }
        if size > FREE_REQUEST_BYTES
            && let Some(buffered) = buffered.as_deref_mut()
            && !buffered.hold(size)
        {
            return Err(Unreceived::Buffers);
        }
        received.extend_from_slice(&data);
    }
    Ok(received.freeze())
}

/// Admits a call, or answers it at once, and keeps what it was given until its answer has been
/// sent (or dropped, when the client goes):
///
/// * a unary call takes a place among the server's `MAX_CONCURRENT_RPCS` calls in flight, or is
///   answered `RESOURCE_EXHAUSTED` at once rather than queued behind calls that may be slow (a
///   client can retry elsewhere, and a server under more load than it can take keeps answering
///   the calls it took); health checks pass whatever the load;
/// * it has `RPC_TIMEOUT` in all: a call still running then is answered `DEADLINE_EXCEEDED` and
///   dropped (the handlers run their database work in tasks of their own, so the work ends
///   cleanly, as when a client goes away), and an answer still unsent then is dropped and its
///   stream reset; its place comes back then too, even while HTTP/2 waits on the client's window
///   and leaves the answer's body unpolled ([`Watch`]);
/// * a streaming call (health `Watch`, reflection) is not timed and takes no place among the
///   calls in flight: it takes one among `MAX_STREAMING_CALLS` open streams, and
///   `MAX_STREAMING_CALLS_PER_CONNECTION` on its connection, or is `RESOURCE_EXHAUSTED`;
/// * its answer's unsent bytes count against its connection's and the server's byte budgets.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    places: Arc<Semaphore>,
    watch: Arc<Watch>,
    streams: StreamLimits,
    /// Places of the watch calls ([`is_watch`]), in all.
    watches: StreamLimits,
    timeout: Duration,
}

impl AdmissionLayer {
    pub fn new(
        max_in_flight: NonZeroUsize,
        timeout: Duration,
        max_streams: NonZeroUsize,
        max_streams_per_connection: NonZeroUsize,
        max_watches: NonZeroUsize,
    ) -> Self {
        Self {
            places: Arc::new(Semaphore::new(
                max_in_flight.get().min(Semaphore::MAX_PERMITS),
            )),
            watch: Arc::new(Watch::default()),
            streams: StreamLimits {
                server: Arc::new(Semaphore::new(
                    max_streams.get().min(Semaphore::MAX_PERMITS),
                )),
                connections: StreamsByConnection::default(),
                per_connection: max_streams_per_connection.get(),
            },
            watches: StreamLimits {
                server: Arc::new(Semaphore::new(
                    max_watches.get().min(Semaphore::MAX_PERMITS),
                )),
                connections: StreamsByConnection::default(),
                per_connection: usize::MAX,
            },
            timeout,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            admission: self.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    admission: AdmissionLayer,
}

/// A call answered at once, without reaching its handler.
fn refused<B: Default + Send + 'static>(
    status: tonic::Status,
) -> BoxFuture<Result<http::Response<B>, Infallible>> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Admission<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>, Error = Infallible>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Default + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Answer<ResBody>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let admission = &self.admission;
        let mut held = Held {
            // Counted on its connection since it arrived ([`Receive`]), until its answer is
            // sent.
            _open: request.extensions_mut().remove::<OpenCall>(),
            ..Held::default()
        };
        let peer = request.extensions().get::<Peer>();
        let path = request.uri().path();
        let streams = if is_watch(path) {
            // HTTP/2's limit of streams bounds them per connection.
            Some((&admission.watches, None))
        } else if is_streaming(path) {
            Some((&admission.streams, peer.and_then(|peer| peer.addr)))
        } else {
            None
        };
        if let Some((limits, peer)) = streams {
            let Some(place) = limits.take(peer) else {
                Shed::Streams.count();
                return refused(tonic::Status::resource_exhausted(
                    "too many streaming calls are open, on this connection or in all",
                ));
            };
            held.stream = Some(place);
            let answered = self.inner.call(request);
            return Box::pin(async move {
                let answered = answered.await?;
                Ok(answered.map(|body| Answer::new(body, held)))
            });
        }
        let deadline = Instant::now() + admission.timeout;
        let place = if path.starts_with(HEALTH_PATH_PREFIX) {
            None
        } else {
            let Ok(place) = admission.places.clone().try_acquire_owned() else {
                Shed::Limit.count();
                return refused(tonic::Status::resource_exhausted(
                    "the server is at its limit of calls in flight, retry later",
                ));
            };
            Some(Place::taken(place))
        };
        let load = peer.map(|peer| Arc::clone(&peer.load));
        held.buffered = load.as_ref().map(Load::buffered);
        held.deadline = Some(Deadline {
            at: deadline,
            timer: None,
        });
        let timeout = admission.timeout;
        let watch = Arc::clone(&admission.watch);
        let answered = self.inner.call(request);
        let handled = async move {
            let (parts, mut body) = answered.await?.into_parts();
            // The answer's first frame (a unary call's whole message), read before its headers
            // are sent: an answer beyond the byte budgets is then refused with its code in
            // them, as clients and the call metrics read it.
            let first = body.frame().await;
            Ok::<_, Infallible>((parts, body, first))
        };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, handled).await {
                Ok(handled) => {
                    let (parts, body, first) = handled?;
                    let mut answer = Answer::new(body, held);
                    let data = match &first {
                        Some(Ok(frame)) => frame.data_ref(),
                        _ => None,
                    };
                    if data.is_some_and(|data| !answer.hold_answer(data)) {
                        Shed::Buffers.count();
                        return Ok(tonic::Status::resource_exhausted(BUFFERS_FULL).into_http());
                    }
                    answer.first = Some(first.map(|frame| frame.map_err(Into::into)));
                    // Answered: from here the place is held until the answer has been sent, or
                    // taken back at the deadline.
                    answer.held.ticket = place.map(|place| watch.hold(place, deadline, load));
                    Ok(http::Response::from_parts(parts, answer))
                }
                Err(_elapsed) => {
                    tracing::warn!(?timeout, "call timed out");
                    let timed_out = tonic::Status::deadline_exceeded(
                        "the call took longer than the server allows",
                    );
                    Ok(timed_out.into_http())
                }
            }
        })
    }
}

/// A place among the calls in flight, counted in `ticketing_rpc_in_flight` while held.
#[derive(Debug)]
struct Place(#[allow(dead_code)] OwnedSemaphorePermit);

impl Place {
    fn taken(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(RPC_IN_FLIGHT).increment(1.0);
        Self(permit)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        metrics::gauge!(RPC_IN_FLIGHT).decrement(1.0);
    }
}

/// How often [`Watch`] takes back the places of calls past their time.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The places of the answered calls, each until its call's deadline. A call gives its place
/// back when its answer has been sent; one whose answer is still unsent at its deadline (HTTP/2
/// waiting on the client's window, without polling the answer's body again) has it taken back
/// by a task of the server's, which looks every [`WATCH_INTERVAL`] while places are held, and
/// its connection closed ([`Load::answer_late`]): the answer, and its memory, go with it.
#[derive(Debug, Default)]
struct Watch {
    held: std::sync::Mutex<WatchedPlaces>,
}

#[derive(Debug, Default)]
struct WatchedPlaces {
    by_ticket: HashMap<u64, Watched>,
    next_ticket: u64,
    /// Whether the task that takes places back runs.
    watching: bool,
}

/// An answered call's place, until when, and its connection.
#[derive(Debug)]
struct Watched {
    _place: Place,
    until: Instant,
    connection: Option<Arc<Load>>,
}

impl Watch {
    /// Holds `place` until the returned ticket is dropped, or at most until `until`, when the
    /// call's `connection` is closed.
    fn hold(
        self: &Arc<Self>,
        place: Place,
        until: Instant,
        connection: Option<Arc<Load>>,
    ) -> Ticket {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = held.next_ticket;
        held.next_ticket += 1;
        held.by_ticket.insert(
            ticket,
            Watched {
                _place: place,
                until,
                connection,
            },
        );
        if !held.watching {
            held.watching = true;
            tokio::spawn(Self::take_back_late_places(Arc::downgrade(self)));
        }
        Ticket {
            watch: Arc::clone(self),
            ticket,
        }
    }

    /// Takes back the places past their time until none is held (or the server is gone).
    async fn take_back_late_places(watch: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let Some(watch) = watch.upgrade() else {
                return;
            };
            let late = {
                let mut held = watch.held.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                let before = held.by_ticket.len();
                held.by_ticket.retain(|_, watched| {
                    let on_time = watched.until > now;
                    if !on_time && let Some(connection) = &watched.connection {
                        connection.answer_late();
                    }
                    on_time
                });
                let late = before - held.by_ticket.len();
                if held.by_ticket.is_empty() {
                    held.watching = false;
                    for _ in 0..late {
                        Shed::SlowReader.count();
                    }
                    return;
                }
                late
            };
            for _ in 0..late {
                Shed::SlowReader.count();
            }
        }
    }
}

/// A call's hold on its place in [`Watch`]; dropping it gives the place back.
#[derive(Debug)]
struct Ticket {
    watch: Arc<Watch>,
    ticket: u64,
}

impl Ticket {
    /// Gives the place back; whether it was still held (not yet taken back for being late).
    fn release(&self) -> bool {
        let place = self
            .watch
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_ticket
            .remove(&self.ticket);
        place.is_some()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// The limits of streaming calls: `server` places in all, `per_connection` on one connection
/// (told apart by the client's address and port).
#[derive(Debug, Clone)]
struct StreamLimits {
    server: Arc<Semaphore>,
    connections: StreamsByConnection,
    per_connection: usize,
}

/// Open streams by connection.
type StreamsByConnection = Arc<std::sync::Mutex<HashMap<SocketAddr, usize>>>;

impl StreamLimits {
    /// A place for a stream of the connection from `peer`, if both limits allow one.
    fn take(&self, peer: Option<SocketAddr>) -> Option<StreamPlace> {
        let server = self.server.clone().try_acquire_owned().ok()?;
        let connection = match peer {
            Some(peer) => {
                let mut open = self
                    .connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let count = open.entry(peer).or_default();
                if *count >= self.per_connection {
                    return None;
                }
                *count += 1;
                Some((self.connections.clone(), peer))
            }
            None => None,
        };
        metrics::gauge!(STREAMS_OPEN).increment(1.0);
        Some(StreamPlace {
            _server: server,
            connection,
        })
    }
}

/// A streaming call's place, in all and on its connection, given back when dropped.
#[derive(Debug)]
struct StreamPlace {
    _server: OwnedSemaphorePermit,
    connection: Option<(StreamsByConnection, SocketAddr)>,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        metrics::gauge!(STREAMS_OPEN).decrement(1.0);
        if let Some((connections, peer)) = &self.connection {
            let mut open = connections.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = open.get_mut(peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(peer);
                }
            }
        }
    }
}

/// The most bytes of an answer handed to HTTP/2 at once: one frame's worth (HTTP/2's default
/// largest frame). HTTP/2 takes a chunk as soon as the stream's window lets out a byte of it
/// and keeps the rest until the window lets it out; in small chunks the body is only done, and
/// its call's place and time only given back, once all but the last chunk are out, and what a
/// client does not take stays in the answer, counted in the byte budgets.
const ANSWER_CHUNK_BYTES: usize = 16 * 1024;

/// A call's answer, with what the call holds until it has been sent ([`Admission`]): it hands
/// its data on in chunks of [`ANSWER_CHUNK_BYTES`], within the byte budgets, and ends in an
/// error, which resets its stream, if it is not sent by its call's deadline.
#[derive(Debug, Default)]
pub struct Answer<B> {
    inner: B,
    /// What is left of a data frame larger than a chunk.
    rest: Bytes,
    /// What the call holds until the answer has been sent.
    held: Held,
    /// The answer was refused for the budgets: it ends with its trailers.
    refused: bool,
    /// What the answer's body gave when first polled, before its headers were sent
    /// ([`Admission`]), to be handed on first.
    first: Option<Option<Result<Frame<Bytes>, BoxError>>>,
}

/// What a call holds from its admission until its answer has been sent (or dropped); each
/// piece gives itself back when dropped.
#[derive(Debug, Default)]
struct Held {
    /// The call's place among the calls in flight.
    ticket: Option<Ticket>,
    /// A streaming call's place.
    stream: Option<StreamPlace>,
    /// When the answer must have been sent.
    deadline: Option<Deadline>,
    /// The call, counted on its connection while this is held.
    _open: Option<OpenCall>,
    /// The bytes of the answer not yet sent, within the budgets: the rest and the chunk last
    /// handed on, which HTTP/2 may still hold.
    buffered: Option<Buffered>,
}

/// When an answer must have been sent. Its timer is set only once the body has to wait: most
/// answers are sent whole in their first polls, without a timer.
#[derive(Debug)]
struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Whether the deadline has passed; when not, wakes the task at it.
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

impl<B> Answer<B> {
    fn new(inner: B, held: Held) -> Self {
        Self {
            inner,
            rest: Bytes::new(),
            held,
            refused: false,
            first: None,
        }
    }

    /// The next chunk of `data`, the rest kept for the next poll.
    fn chunk(&mut self, mut data: Bytes) -> Frame<Bytes> {
        if data.len() > ANSWER_CHUNK_BYTES {
            self.rest = data.split_off(ANSWER_CHUNK_BYTES);
        }
        Frame::data(data)
    }

    /// The answer was not sent by its deadline: its stream is reset.
    fn expire(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Counted once per call: here, unless the watch took its place back first.
        if self.held.ticket.as_ref().is_none_or(Ticket::release) {
            Shed::SlowReader.count();
        }
        self.release();
        // A reset with CANCEL: the client hears its call was cancelled, not an internal error.
        Poll::Ready(Some(Err(Box::new(h2::Error::from(h2::Reason::CANCEL)))))
    }

    /// The call is over: whatever it held goes.
    fn release(&mut self) {
        self.held = Held::default();
    }

    /// Holds a data frame of the answer within the budgets; `false` when they are full. An
    /// answer of one chunk always passes, so that no call whose handler has done its work (a
    /// hold, a payment) loses its answer to the budget: a list's pages are what grows.
    fn hold_answer(&mut self, data: &Bytes) -> bool {
        match &mut self.held.buffered {
            Some(buffered) if data.len() > ANSWER_CHUNK_BYTES => buffered.hold(data.len()),
            _ => true,
        }
    }

    /// A frame of the answer after its first (which is judged before the headers are sent) is
    /// larger than the budgets let through now: the answer ends here with
    /// `RESOURCE_EXHAUSTED` in its trailers.
    fn refuse(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Shed::Buffers.count();
        self.refused = true;
        self.release();
        let (mut trailers, ()) = tonic::Status::resource_exhausted(BUFFERS_FULL)
            .into_http::<()>()
            .into_parts();
        trailers.headers.remove(http::header::CONTENT_TYPE);
        Poll::Ready(Some(Ok(Frame::trailers(trailers.headers))))
    }
}

impl<B> Body for Answer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        if this
            .held
            .deadline
            .as_ref()
            .is_some_and(|deadline| Instant::now() >= deadline.at)
        {
            return this.expire();
        }
        // Polled again: HTTP/2 has the chunk handed on last, and sends it as the window allows.
        if let Some(buffered) = &mut this.held.buffered
            && buffered.bytes() > this.rest.len()
        {
            buffered.hold(this.rest.len());
        }
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            return Poll::Ready(Some(Ok(this.chunk(rest))));
        }
        let polled = match this.first.take() {
            Some(first) => Poll::Ready(first),
            None => Pin::new(&mut this.inner)
                .poll_frame(cx)
                .map(|polled| polled.map(|frame| frame.map_err(Into::into))),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !this.hold_answer(&data) => this.refuse(),
                Ok(data) => Poll::Ready(Some(Ok(this.chunk(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(error))) => {
                this.release();
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this
                    .held
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.passed(cx))
                {
                    this.expire()
                } else {
                    Poll::Pending
                }
            }
        }
    }

    /// An answer whose body ended before its first frame (an error's, whose status is all in
    /// its headers) is over: HTTP/2 then ends the stream with those headers, the "trailers-only"
    /// answer that gRPC clients (grpc-go's, so grpcurl and ghz) read a status from; an empty
    /// data frame after them would be read as a stream closed without its trailers.
    fn is_end_stream(&self) -> bool {
        if self.refused {
            return true;
        }
        if !self.rest.is_empty() {
            return false;
        }
        match &self.first {
            Some(None) => true,
            Some(Some(_)) => false,
            None => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// Answers a request that tonic could not decode (not a valid message of the method's type:
/// a bad varint, a string that is not UTF-8) with `INVALID_ARGUMENT` and a `BadRequest`, where
/// tonic answers `INTERNAL`: the fault is the caller's, and nothing was run. A plain mapping of
/// the answer, so no future of its own per call.
pub type DecodeErrorsLayer = tower::util::MapResponseLayer<
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

/// The [`DecodeErrorsLayer`].
pub fn decode_errors_layer() -> DecodeErrorsLayer {
    tower::util::MapResponseLayer::new(decode_errors)
}

fn decode_errors(answered: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    // INTERNAL (13) only: every other answer passes without its status being parsed.
    if answered
        .headers()
        .get("grpc-status")
        .is_none_or(|code| code.as_bytes() != b"13")
    {
        return answered;
    }
    let Some(status) = tonic::Status::from_header_map(answered.headers()) else {
        return answered;
    };
    match status.message().strip_prefix(TONIC_DECODE_FAILURE) {
        Some(detail) => {
            let detail = detail.trim_start_matches(':').trim();
            crate::error::invalid_field(
                "",
                format!("not a valid message of this method's request type: {detail}"),
            )
            .into_http()
        }
        None => answered,
    }
}

/// Turns a panic in a handler into an `INTERNAL` answer for that call alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// See [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CatchPanic<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let future = match call {
            Ok(future) => future,
            Err(panic) => {
                return Box::pin(std::future::ready(Ok(panic_response(&method, &*panic))));
            }
        };
        Box::pin(
            AssertUnwindSafe(future)
                .catch_unwind()
                .map(move |outcome| match outcome {
                    Ok(result) => result,
                    Err(panic) => Ok(panic_response(&method, &*panic)),
                }),
        )
    }
}

fn panic_response<B: Default>(
    method: &str,
    panic: &(dyn std::any::Any + Send),
) -> http::Response<B> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(method, panic = %message, "handler panicked");
    tonic::Status::internal("internal error").into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Panics;

    impl Service<http::Request<()>> for Panics {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async { panic!("boom") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let mut service = CatchPanicLayer.layer(Panics);
        let response = service
            .call(http::Request::new(()))
            .await
            .unwrap_or_else(|never| match never {});
        let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status set");
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    /// Answers once `gate` gives it a permit.
    #[derive(Clone)]
    struct Waits {
        gate: Arc<Semaphore>,
    }

    impl Service<http::Request<()>> for Waits {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.gate.clone();
            Box::pin(async move {
                let _passed = gate.acquire().await;
                Ok(http::Response::new(tonic::body::Body::default()))
            })
        }
    }

    fn admission(max_in_flight: usize, timeout: Duration) -> AdmissionLayer {
        let places = NonZeroUsize::new(max_in_flight).expect("some");
        AdmissionLayer::new(
            places,
            timeout,
            NonZeroUsize::MIN,
            NonZeroUsize::MIN,
            NonZeroUsize::MIN,
        )
    }

    fn request(path: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.uri_mut() = path.parse().expect("a path");
        request
    }

    fn code<B>(response: &http::Response<B>) -> tonic::Code {
        tonic::Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |s| s.code())
    }

    #[tokio::test]
    async fn a_call_beyond_the_limit_is_refused_at_once_but_a_health_check_passes() {
        let gate = Arc::new(Semaphore::new(0));
        let mut service = admission(1, Duration::from_secs(60)).layer(Waits { gate: gate.clone() });
        let admitted = tokio::spawn(service.call(request("/pkg.Service/Slow")));

        let refused = service
            .call(request("/pkg.Service/Slow"))
            .now_or_never()
            .expect("answered without waiting")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&refused), tonic::Code::ResourceExhausted);
        let health = tokio::spawn(service.call(request("/grpc.health.v1.Health/Check")));

        gate.add_permits(2);
        let answered = admitted
            .await
            .expect("task")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&answered), tonic::Code::Ok);
        let checked = health
            .await
            .expect("task")
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&checked), tonic::Code::Ok);
    }

    #[tokio::test]
    async fn a_call_past_the_timeout_answers_deadline_exceeded() {
        let closed = Arc::new(Semaphore::new(0));
        let mut service = admission(8, Duration::from_millis(20)).layer(Waits { gate: closed });
        let response = service
            .call(request("/pkg.Service/Slow"))
            .await
            .unwrap_or_else(|never| match never {});
        assert_eq!(code(&response), tonic::Code::DeadlineExceeded);
    }
}
