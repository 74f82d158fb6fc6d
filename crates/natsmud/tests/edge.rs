//! The HTTP edge: slow and idle clients, clients that stop reading, socket caps, response
//! headers and a prompt shutdown. Raw TCP clients show exactly what the server does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use natsmud_protocol::EventType;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads and discards until the server closes the connection; `Some(elapsed)` when it did
/// so within `limit`.
async fn closed_within(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// One response read off a raw connection: status, headers (lower-case names) and body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads one response with a `Content-Length` body; `None` if the connection ends first.
async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut buffer))
            .await
            .expect("a response in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut buffer))
            .await
            .expect("the body in time")
            .ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Opens a connection and asks for `/health` on it, keeping it open.
async fn ask_health(app: &TestApp) -> (TcpStream, Option<RawResponse>) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let sent = stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: natsmud\r\n\r\n")
        .await;
    let response = match sent {
        Ok(()) => read_response(&mut stream).await,
        Err(_) => None,
    };
    (stream, response)
}

/// Opens kept-alive connections until one is refused; returns the ones held open and the
/// refusal.
async fn connect_until_refused(app: &TestApp, at_most: usize) -> (Vec<TcpStream>, RawResponse) {
    let mut held = Vec::new();
    for _ in 0..at_most {
        let (stream, response) = ask_health(app).await;
        let response = response.expect("an answer, 200 or 503");
        if response.status == 200 {
            held.push(stream);
            continue;
        }
        return (held, response);
    }
    panic!("{at_most} connections were all accepted");
}

fn assert_too_many_connections(refusal: &RawResponse) {
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(
        refusal.json()["error"]["code"],
        "too_many_connections",
        "{refusal:?}"
    );
    assert!(
        refusal.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(refusal.header("connection"), Some("close"));
    assert!(
        refusal
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some(),
        "{refusal:?}"
    );
    assert_eq!(refusal.header("content-type"), Some("application/json"));
}

const HEADER_TIMEOUT_SECS: u64 = 2;
/// Room for a loaded test machine; the server would otherwise never close these at all.
const MARGIN: Duration = Duration::from_secs(8);

fn header_timeout_limit() -> Duration {
    Duration::from_secs(HEADER_TIMEOUT_SECS) + MARGIN
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte a second: every read makes progress, the head never ends.
    let trickle = tokio::spawn(async move {
        for byte in
            b"GET /health HTTP/1.1\r\nHost: natsmud\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let closed = closed_within(&mut reader, header_timeout_limit()).await;
    trickle.abort();
    assert!(closed.is_some(), "the trickling client was never closed");
    // The server still serves everyone else.
    assert_eq!(app.get("/health").await.0, 200);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let closed = closed_within(&mut stream, header_timeout_limit()).await;
    assert!(closed.is_some(), "the silent client was never closed");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: natsmud\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await.expect("a response");
    assert_eq!(response.status, 401);
    assert_ne!(response.header("connection"), Some("close"));
    let closed = closed_within(&mut stream, header_timeout_limit()).await;
    assert!(
        closed.is_some(),
        "the idle kept-alive connection was never closed"
    );
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_with_503() {
    let app = TestApp::spawn_with(|c| c.max_connections_per_ip = 3).await;
    let (mut held, refusal) = connect_until_refused(&app, 10).await;
    // The harness's own pooled connection may hold one of the three.
    assert!((2..=3).contains(&held.len()), "held {}", held.len());
    assert_too_many_connections(&refusal);
    // A closed connection frees its place.
    drop(held.pop());
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (stream, response) = ask_health(&app).await;
        if response.is_some_and(|r| r.status == 200) {
            held.push(stream);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sockets_beyond_max_sockets_are_refused_with_503_and_the_server_recovers() {
    let app = TestApp::spawn_with(|c| c.max_sockets = 4).await;
    let (held, refusal) = connect_until_refused(&app, 10).await;
    assert!((3..=4).contains(&held.len()), "held {}", held.len());
    assert_too_many_connections(&refusal);
    drop(held);
    // Once sockets close, everything works again: HTTP, the database, NATS.
    let deadline = Instant::now() + common::WAIT;
    while ask_health(&app).await.1.is_none_or(|r| r.status != 200) {
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut alice = app.join("Alice").await;
    assert_eq!(
        alice.ask("say still here").await.event_type,
        EventType::CommandResponse
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_closed_by_the_write_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.write_timeout_secs = 2;
        // Far longer than the test: only the write timeout can close the reader.
        c.http_header_timeout_secs = 600;
    })
    .await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;

    let account = app.register("Sink").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sink = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/events?token={} HTTP/1.1\r\nHost: natsmud\r\nAccept: text/event-stream\r\n\r\n",
        account.access_token
    );
    sink.write_all(request.as_bytes()).await.unwrap();
    alice.expect(EventType::PlayerEnteredGame).await;
    bob.expect(EventType::PlayerEnteredGame).await;

    // The room is busy; Sink reads nothing.
    let text = "x".repeat(400);
    let started = Instant::now();
    let talker = tokio::spawn(async move {
        let mut said = 0u32;
        let mut sink_left = false;
        while started.elapsed() < Duration::from_secs(8) {
            alice.command(&format!("say {said} {text}")).await;
            // Sink may be dropped as a slow consumer meanwhile; that news is not a reply.
            loop {
                let frame = alice.next_frame().await;
                match frame.event_type {
                    EventType::CommandResponse => break,
                    EventType::PlayerLeftGame if !sink_left => sink_left = true,
                    other => panic!("Alice got {other:?}"),
                }
            }
            said += 1;
        }
        (alice, said, sink_left)
    });
    let listener = tokio::spawn(async move {
        let mut heard = 0u32;
        loop {
            match bob.next_within(Duration::from_secs(2)).await {
                Some(common::Received::Frame(frame)) => {
                    if frame.event_type == EventType::ChatMessage {
                        heard += 1;
                    }
                }
                Some(common::Received::Closed(close)) => panic!("Bob was closed: {close:?}"),
                None => return (bob, heard),
            }
        }
    });
    let (mut alice, said, sink_left) = talker.await.unwrap();
    let (mut bob, heard) = listener.await.unwrap();
    assert_eq!(heard, said, "Bob heard every line while Sink sat there");

    // Reading now, Sink finds its connection already closed: whatever was in flight, then
    // the end. (Had it been left open, the stream would go on for as long as we read.)
    let closed = closed_within(
        &mut sink,
        Duration::from_secs(20).saturating_sub(started.elapsed()),
    )
    .await;
    assert!(
        closed.is_some(),
        "the stalled SSE connection was never closed"
    );
    assert_eq!(app.get("/health").await.0, 200);
    if !sink_left {
        // Where the socket buffers are deep, the write only stalls after the talk ends.
        let left = alice.expect(EventType::PlayerLeftGame).await;
        assert_eq!(left.data_str("player_name"), "Sink", "{left:?}");
    }
    alice.command("say after").await;
    alice.expect(EventType::CommandResponse).await;
    let heard = loop {
        let frame = bob.next_frame().await;
        if frame.event_type == EventType::ChatMessage {
            break frame;
        }
    };
    assert!(heard.data_str("message").ends_with("after"), "{heard:?}");
}

#[tokio::test]
async fn web_client_responses_forbid_framing() {
    let app = TestApp::spawn().await;
    for path in ["/", "/static/app.js"] {
        let response = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(
            headers.get("x-frame-options").and_then(|v| v.to_str().ok()),
            Some("DENY"),
            "{path}"
        );
        let policy = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_players_with_1001_and_returns_promptly_despite_slow_http_clients() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let account = app.register("Bob").await;
    let mut bob = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/events?token={} HTTP/1.1\r\nHost: natsmud\r\n\r\n",
        account.access_token
    );
    bob.write_all(request.as_bytes()).await.unwrap();
    alice.expect(EventType::PlayerEnteredGame).await;
    // An idle kept-alive connection and a client in the middle of its request head.
    let (_idle, response) = ask_health(&app).await;
    assert_eq!(response.map(|r| r.status), Some(200));
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();

    let alice_closed = tokio::spawn(async move { alice.expect_close().await });
    // The SSE stream is not cut by the HTTP layer: it ends with the application's reason.
    let bob_closed = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match tokio::time::timeout(common::WAIT, bob.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buffer[..n]),
                _ => return String::from_utf8_lossy(&seen).to_string(),
            }
        }
    });
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    let (code, reason) = alice_closed.await.unwrap().expect("a close frame");
    assert_eq!(code, 1001, "{reason}");
    let stream = bob_closed.await.unwrap();
    assert!(
        stream.contains("event: close") && stream.contains("1001"),
        "{stream}"
    );
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[tokio::test]
async fn websocket_and_sse_streams_outlive_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_secs = 1).await;
    let mut alice = app.join("Alice").await;
    let account = app.register("Bob").await;
    let mut bob = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/events?token={} HTTP/1.1\r\nHost: natsmud\r\n\r\n",
        account.access_token
    );
    bob.write_all(request.as_bytes()).await.unwrap();
    alice.expect(EventType::PlayerEnteredGame).await;
    // Quiet for well over the header timeout: neither stream is a request waiting for
    // its head.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut carol = app.join("Carol").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    carol.ask("say still there?").await;
    let heard = alice.expect(EventType::ChatMessage).await;
    assert_eq!(heard.data["message"], "Carol says: still there?");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Carol says: still there?") {
        let n = tokio::time::timeout(common::WAIT, bob.read(&mut buffer))
            .await
            .expect("the SSE stream is still open")
            .unwrap();
        assert!(n > 0, "the SSE stream was closed");
        seen.extend_from_slice(&buffer[..n]);
    }
}

/// The admin address answers `/health` outside the socket caps: a node full of sockets
/// still answers its orchestrator.
#[tokio::test]
async fn the_admin_address_answers_health_when_the_node_is_full() {
    let admin_port = common::free_port();
    let app = TestApp::spawn_with(|c| {
        c.max_sockets = 2;
        c.admin_bind = Some(format!("127.0.0.1:{admin_port}").parse().unwrap());
    })
    .await;
    let (held, refusal) = connect_until_refused(&app, 10).await;
    assert_too_many_connections(&refusal);
    let health = reqwest::get(format!("http://127.0.0.1:{admin_port}/health"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    drop(held);
}

/// A request body trickled a byte at a time cannot hold its socket: the request gets 408
/// once the header timeout has passed.
#[tokio::test]
async fn a_trickled_request_body_gets_408() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: natsmud\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_response(&mut stream).await.expect("an answer");
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.json()["error"]["code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}
