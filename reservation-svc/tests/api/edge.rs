//! What one client can take from the server: requests received whole before they hold a place,
//! places held until the answer is sent, bytes within budgets, connections and streams within
//! limits, health unmoved by load, and the codes of requests the server will not take. The
//! tests of an attack run a server process of their own and end by reading its metrics back
//! to zero.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use shared::error::violated_fields;
use shared::proto::reservation::v1 as pb;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use shared::metrics::{
    BUFFERED_BYTES, CONNECTIONS_IDLE_CLOSED, CONNECTIONS_OPEN, RPC_IN_FLIGHT, RPC_SHED,
    STREAMS_OPEN,
};
use shared::test_support::metric_value;

use crate::helpers::{
    Client, ReplicaProcess, TestApp, channel, restartable_port, spawn_app, spawn_app_with,
};

const CREATE_CONCERT: &str = "/ticketing.reservation.v1.ReservationService/CreateConcert";
const LIST_SEATS: &str = "/ticketing.reservation.v1.ReservationService/ListSeats";

/// Sends and receives message bytes as they are, to put bytes no client library would encode
/// on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn raw_call(app: &TestApp, path: &'static str, message: Vec<u8>) -> tonic::Status {
    raw_call_at(app.addr, path, message).await
}

async fn raw_call_at(addr: SocketAddr, path: &'static str, message: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(message),
        PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .expect_err("refused")
}

/// A reservation-svc process of its own on a test app's database and Redis, with `settings`
/// in its environment, so that its metrics count its calls alone.
struct OwnServer {
    addr: SocketAddr,
    metrics: SocketAddr,
    _process: ReplicaProcess,
}

impl OwnServer {
    async fn start(app: &TestApp, settings: &[(&str, &str)]) -> Self {
        let metrics = SocketAddr::from(([127, 0, 0, 1], restartable_port()));
        let metrics_addr = metrics.to_string();
        let mut env = vec![("RESERVATION_METRICS_ADDR", metrics_addr.as_str())];
        env.extend_from_slice(settings);
        let process = ReplicaProcess::start(&app.config, &env).await;
        Self {
            addr: process.addr,
            metrics,
            _process: process,
        }
    }

    /// A client on a connection of its own, made at its first call.
    fn client(&self) -> Client {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .expect("an endpoint");
        Client::new(endpoint.connect_lazy())
    }

    /// Scrapes the metrics every 100 ms until `reached` holds for them, for up to `within`.
    async fn metrics_until(&self, within: Duration, reached: impl Fn(&str) -> bool) -> String {
        let started = tokio::time::Instant::now();
        loop {
            let (code, text) = shared::test_support::http_get(self.metrics, "/metrics").await;
            assert_eq!(code, 200, "{text}");
            if reached(&text) || started.elapsed() > within {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Once its clients have gone, every place among the calls, streaming call, byte held and
    /// connection comes back to zero.
    async fn assert_all_given_back(&self) {
        let gauges = [
            RPC_IN_FLIGHT,
            STREAMS_OPEN,
            BUFFERED_BYTES,
            CONNECTIONS_OPEN,
        ];
        let text = self
            .metrics_until(Duration::from_secs(15), |text| {
                gauges
                    .iter()
                    .all(|gauge| metric_value(text, gauge, &[]) == 0.0)
            })
            .await;
        for gauge in gauges {
            assert_eq!(metric_value(&text, gauge, &[]), 0.0, "{gauge}");
        }
    }
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_resource_exhausted_and_writes_nothing() {
    let app = spawn_app().await;
    let before = app.rows_written().await;
    let status = app
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "x".repeat(5 * 1024 * 1024),
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(app.rows_written().await, before);
}

#[tokio::test]
async fn a_request_that_is_no_valid_message_is_invalid_argument_and_writes_nothing() {
    let app = spawn_app().await;
    let before = app.rows_written().await;
    let cases: [(&str, Vec<u8>); 2] = [
        // Field 1 (title), a string of two bytes that are not UTF-8.
        ("a string that is not UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        // Field 1 as a varint of eleven bytes: longer than any varint.
        (
            "a varint too long",
            [vec![0x08], vec![0xff; 10], vec![0x01]].concat(),
        ),
    ];
    for (case, message) in cases {
        let status = raw_call(&app, CREATE_CONCERT, message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), [""], "{case}: a BadRequest");
    }
    assert_eq!(app.rows_written().await, before);
}

/// An HTTP/2 connection of its own, for streams no gRPC client would send: `window` bytes of
/// flow-control window for each answer.
async fn h2_connection(addr: SocketAddr, window: u32) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

fn grpc_request(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request")
}

/// A gRPC message's frame: no compression, the length, the message.
fn frame(message: &[u8]) -> bytes::Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// `count` calls for the largest page of the schedule's seats, on a connection of their own
/// whose 1 KiB window is never given back: the answers' headers come, their bodies cannot.
async fn unread_pages(
    addr: SocketAddr,
    schedule_id: i64,
    count: usize,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    Vec<http::Response<h2::RecvStream>>,
) {
    let request = frame(&prost::Message::encode_to_vec(&pb::ListSeatsRequest {
        schedule_id,
        page_size: 5_000,
        page_token: String::new(),
    }));
    let mut h2 = h2_connection(addr, 1_024).await;
    let mut unread = Vec::new();
    for _ in 0..count {
        h2 = h2.ready().await.expect("a stream");
        let (response, mut body) = h2
            .send_request(grpc_request(addr, LIST_SEATS), false)
            .expect("headers sent");
        body.send_data(request.clone(), true).expect("request sent");
        unread.push(response.await.expect("the answer's headers"));
    }
    (h2, unread)
}

fn code_of(response: &http::Response<h2::RecvStream>) -> Option<Code> {
    tonic::Status::from_header_map(response.headers()).map(|status| status.code())
}

#[tokio::test]
async fn streams_that_never_send_their_request_hold_no_place_and_end_at_the_receive_deadline() {
    let app = spawn_app().await;
    let server = OwnServer::start(
        &app,
        &[
            ("MAX_CONCURRENT_RPCS", "4"),
            ("REQUEST_RECEIVE_TIMEOUT", "2s"),
        ],
    )
    .await;
    let mut h2 = h2_connection(server.addr, 65_535).await;
    let mut stalled = Vec::new();
    // As many as one connection may open at once.
    for _ in 0..100 {
        h2 = h2.ready().await.expect("a stream");
        let (response, body) = h2
            .send_request(grpc_request(server.addr, CREATE_CONCERT), false)
            .expect("headers sent");
        // The body stream is kept, never written to nor ended.
        stalled.push((response, body));
    }

    // A hundred streams wait for their bodies; the four places are free for everyone else.
    let concert = server
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Well behaved".to_owned(),
        })
        .await
        .expect("a well-behaved call is served");
    assert!(concert.into_inner().id > 0);

    for (response, _body) in stalled {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered at the receive deadline")
            .expect("a response");
        assert_eq!(code_of(&response), Some(Code::DeadlineExceeded));
    }
    drop(h2);
    server.assert_all_given_back().await;
}

#[tokio::test]
async fn an_answer_nobody_reads_holds_its_place_until_the_call_time_ends_then_its_connection_closes()
 {
    let app = spawn_app().await;
    let server =
        OwnServer::start(&app, &[("MAX_CONCURRENT_RPCS", "2"), ("RPC_TIMEOUT", "3s")]).await;
    // About 10 bytes a seat: several of the server's 16 KiB chunks, far more than the reader's
    // 1 KiB window.
    let schedule_id = app.schedule_with_seats(5_000).await;
    let (h2, unread) = unread_pages(server.addr, schedule_id, 2).await;
    for response in &unread {
        assert_eq!(code_of(response), None, "answering");
    }

    // Both places are held by answers not yet sent.
    let status = server
        .client()
        .list_seats(pb::ListSeatsRequest {
            schedule_id,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .expect_err("no place left");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // At the call's deadline the unsent answers are dropped and their places come back.
    let started = tokio::time::Instant::now();
    loop {
        match server
            .client()
            .list_seats(pb::ListSeatsRequest {
                schedule_id,
                page_size: 5_000,
                page_token: String::new(),
            })
            .await
        {
            Ok(seats) => {
                assert_eq!(seats.into_inner().seats.len(), 5_000);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "the places never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    // Read now, past the deadline, an answer ends in a reset rather than in a full reply.
    for response in unread {
        let mut body = response.into_body();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(data) = body.data().await {
                let data = data?;
                let _ = body.flow_control().release_capacity(data.len());
            }
            Ok::<_, h2::Error>(())
        })
        .await
        .expect("the answer ends");
        assert!(read.is_err(), "a reset, not a full reply");
    }
    // Its client left answers untaken past their time: the connection is closed with them.
    assert!(h2.ready().await.is_err(), "the connection is closed");
    server.assert_all_given_back().await;
}

#[tokio::test]
async fn a_connection_beyond_the_limit_is_closed_at_once_and_its_place_comes_back() {
    // The test's own client holds one of the three; loopback (where the test runs, and the
    // health probe) may go a few past the limit.
    let app = spawn_app().await;
    let server = OwnServer::start(&app, &[("MAX_CONNECTIONS", "3")]).await;
    let mut client = server.client();
    client
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("served");
    let mut held = Vec::new();
    for _ in 0..2 + shared::connection::LOOPBACK_EXTRA {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Let the server take them.
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(
        !served_on_a_new_connection(&server).await,
        "a fourth connection is closed"
    );
    // The connections within the limit are served.
    client
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("served");

    drop(held.pop());
    let started = tokio::time::Instant::now();
    while !served_on_a_new_connection(&server).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((held, client));
    server.assert_all_given_back().await;
}

/// Whether a call on a connection of its own is answered.
async fn served_on_a_new_connection(server: &OwnServer) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
    else {
        return false;
    };
    crate::helpers::Client::new(channel)
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn streaming_calls_are_limited_per_connection_and_per_server_and_their_places_come_back() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let app = spawn_app().await;
    let server = OwnServer::start(
        &app,
        &[
            ("MAX_STREAMING_CALLS", "6"),
            ("MAX_STREAMING_CALLS_PER_CONNECTION", "4"),
            // Open streams take no place among the calls in flight: one is enough beside them.
            ("MAX_CONCURRENT_RPCS", "1"),
        ],
    )
    .await;
    let watch = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .watch(HealthCheckRequest::default())
            .await
            .map(tonic::Response::into_inner)
    };

    let first = channel(server.addr).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(
            watch(first.clone())
                .await
                .expect("a watch within the limits"),
        );
    }
    let status = watch(first.clone())
        .await
        .expect_err("a fifth on one connection");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let second = channel(server.addr).await;
    for _ in 0..2 {
        open.push(watch(second.clone()).await.expect("on another connection"));
    }
    let status = watch(second.clone())
        .await
        .expect_err("a seventh on the server");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Unary calls are not held up by open streams.
    server
        .client()
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("served");

    // A closed stream gives its place back.
    drop(open.pop());
    let started = tokio::time::Instant::now();
    loop {
        match watch(second.clone()).await {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "never given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop((open, first, second));
    server.assert_all_given_back().await;
}

#[tokio::test]
async fn reflection_can_be_switched_off() {
    let app = spawn_app_with(|config| config.server.reflection = false).await;
    let mut client =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            channel(app.addr).await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let answered = async {
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await?
            .into_inner();
        replies.message().await
    }
    .await;
    let status = answered.expect_err("no reflection");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app().await;
    let mut silent = TcpStream::connect(app.addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        shared::connection::FIRST_BYTES_TIMEOUT + Duration::from_secs(5),
        async {
            // The server's own preface may come first; then the end.
            loop {
                match silent.read(&mut byte).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        },
    )
    .await;
    assert!(closed.is_ok(), "the silent connection was closed");
}

#[tokio::test]
async fn unread_answers_stop_at_the_connections_byte_budget_and_everything_comes_back_to_zero() {
    let app = spawn_app().await;
    let schedule_id = app.schedule_with_seats(5_000).await;
    let server = OwnServer::start(
        &app,
        &[
            ("MAX_BUFFERED_BYTES_PER_CONNECTION", "200000"),
            ("IDLE_CONNECTION_TIMEOUT", "2s"),
        ],
    )
    .await;
    // Ten pages of 5,000 seats (about 50 KB each) that the client never reads.
    let (h2, unread) = unread_pages(server.addr, schedule_id, 10).await;
    let during = server
        .metrics_until(Duration::from_secs(10), |text| {
            metric_value(text, RPC_SHED, &[("reason", "buffers")]) >= 1.0
        })
        .await;
    let held = metric_value(&during, BUFFERED_BYTES, &[]);
    assert!(
        held > 0.0 && held <= 200_000.0,
        "unread answers held within the budget: {held}"
    );
    assert!(metric_value(&during, RPC_SHED, &[("reason", "buffers")]) >= 1.0);
    // Refused before its headers went: counted, and told, with its code.
    let refused = [("method", LIST_SEATS), ("status", "RESOURCE_EXHAUSTED")];
    assert!(metric_value(&during, shared::metrics::RPC_REQUESTS, &refused) >= 1.0);

    // Another connection is served meanwhile, its page whole.
    let mut client = server.client();
    let page = client
        .list_seats(pb::ListSeatsRequest {
            schedule_id,
            page_size: 5_000,
            page_token: String::new(),
        })
        .await
        .expect("a well-behaved call is served");
    assert_eq!(page.into_inner().seats.len(), 5_000);

    // The attacker leaves; the well-behaved client's connection, idle, is closed: every
    // budget, place and connection comes back to zero.
    drop((unread, h2));
    let after = server
        .metrics_until(Duration::from_secs(15), |text| {
            metric_value(text, CONNECTIONS_OPEN, &[]) == 0.0
                && metric_value(text, BUFFERED_BYTES, &[]) == 0.0
                && metric_value(text, RPC_IN_FLIGHT, &[]) == 0.0
        })
        .await;
    for gauge in [CONNECTIONS_OPEN, BUFFERED_BYTES, RPC_IN_FLIGHT] {
        assert_eq!(metric_value(&after, gauge, &[]), 0.0, "{gauge}");
    }
    assert_eq!(metric_value(&after, CONNECTIONS_IDLE_CLOSED, &[]), 1.0);
    // A client whose connection went idle connects again.
    client
        .list_concerts(pb::ListConcertsRequest::default())
        .await
        .expect("served on a new connection");
}

#[tokio::test]
async fn requests_stalled_past_the_byte_budget_keep_out_large_requests_only() {
    let app = spawn_app().await;
    let server = OwnServer::start(
        &app,
        &[
            ("MAX_BUFFERED_BYTES_PER_CONNECTION", "100000"),
            ("MAX_BUFFERED_BYTES", "100000"),
        ],
    )
    .await;
    // Two streams each send 48 KiB of a 60 KiB message and stall: the budget is full.
    let mut h2 = h2_connection(server.addr, 65_535).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        h2 = h2.ready().await.expect("a stream");
        let (response, mut body) = h2
            .send_request(grpc_request(server.addr, CREATE_CONCERT), false)
            .expect("headers sent");
        let mut partial = vec![0, 0, 0, 0xf0, 0x00];
        partial.resize(5 + 48 * 1024, b'x');
        body.send_data(partial.into(), false)
            .expect("part of the message");
        stalled.push((response, body));
    }
    let held = server
        .metrics_until(Duration::from_secs(10), |text| {
            metric_value(text, BUFFERED_BYTES, &[]) >= 90_000.0
        })
        .await;
    assert!(metric_value(&held, BUFFERED_BYTES, &[]) <= 100_000.0);

    // A larger request is refused; small ones and health checks pass.
    let status = raw_call_at(server.addr, CREATE_CONCERT, vec![b'x'; 8 * 1024]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server
        .client()
        .create_concert(pb::CreateConcertRequest {
            title: "Small enough".to_owned(),
        })
        .await
        .expect("a small request is served");
    let health = tonic_health::pb::health_client::HealthClient::new(channel(server.addr).await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is answered");
    assert_eq!(health.into_inner().status, 1, "SERVING");

    drop((stalled, h2));
    server.assert_all_given_back().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_serving_while_every_pooled_connection_is_busy() {
    use crate::stalls::{commit, hold_open, waiting_for_a_lock};
    use tonic_health::pb::health_check_response::ServingStatus;
    let app = spawn_app_with(|config| {
        config.db.db_pool_size = 2;
        config.db.db_acquire_timeout = Duration::from_millis(500);
        config.db.db_lock_timeout = Duration::from_secs(10);
    })
    .await;
    let schedule_id = app.schedule_with_seats(10).await;
    // Holds wait on a lock of the test's: both pooled connections are busy, and more holds
    // wait for one.
    let table = hold_open(
        app.db.url(),
        "LOCK TABLE reservations IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let holds: Vec<_> = (1..=6)
        .map(|seat_no| {
            let client = app.client();
            tokio::spawn(crate::helpers::hold_via(
                client,
                i64::from(seat_no),
                schedule_id,
                seat_no,
            ))
        })
        .collect();
    let started = tokio::time::Instant::now();
    while waiting_for_a_lock(app.db.url()).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "holds wait");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Busy is not down: through several health checks, each longer than a wait for a pooled
    // connection, the service stays SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(app.addr).await);
    for _ in 0..30 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "ticketing.reservation.v1.ReservationService".to_owned(),
            })
            .await
            .expect("health")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    commit(table).await;
    for hold in holds {
        let _ = hold.await.expect("a hold's task");
    }
}

/// An error's status comes in the headers that end its stream ("trailers-only"), as gRPC
/// clients other than tonic's (grpc-go: grpcurl, ghz) require: headers followed by an empty
/// data frame would read to them as a stream closed without its trailers.
#[tokio::test]
async fn an_error_answer_ends_its_stream_with_its_headers() {
    let app = crate::helpers::spawn_app().await;
    let mut h2 = h2_connection(app.addr, 65_535).await;
    h2 = h2.ready().await.expect("a stream");
    // GetReservation of id 0: INVALID_ARGUMENT, answered by the handler.
    let (response, mut body) = h2
        .send_request(
            grpc_request(
                app.addr,
                "/ticketing.reservation.v1.ReservationService/GetReservation",
            ),
            false,
        )
        .expect("headers sent");
    body.send_data(frame(&[]), true).expect("the message");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered")
        .expect("a response");
    assert_eq!(code_of(&response), Some(Code::InvalidArgument));
    assert!(
        response.body().is_end_stream(),
        "the headers end the stream: {response:?}"
    );
}
