//! Faults and abuse: NATS outages, slow consumers, floods, limits, bad frames and tokens,
//! crashes. Each test fails if the behaviour regresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{NatsServer, TestApp};
use futures::{SinkExt, StreamExt};
use natsmud_protocol::EventType;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn wait_for_health(app: &TestApp, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while app.get("/health").await.0 != status {
        assert!(Instant::now() < deadline, "/health never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Says `text` until it is accepted (publishing recovers a moment after NATS returns).
async fn say_until_heard(speaker: &mut common::Player, listener: &mut common::Player, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = speaker.ask(&format!("say {text}")).await;
        if reply.event_type == EventType::CommandResponse {
            break;
        }
        assert_eq!(reply.data["code"], "event_bus_unavailable");
        assert!(Instant::now() < deadline, "publishing never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heard = listener.expect(EventType::ChatMessage).await;
    assert_eq!(
        heard.data["message"],
        format!("{} says: {text}", speaker.name)
    );
}

#[tokio::test]
async fn a_thirty_second_nats_outage_is_ridden_out() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;

    let port = app.nats.port;
    app.nats.stop();
    wait_for_health(&app, 503, Duration::from_secs(10)).await;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        // The sockets stay open and commands answer at once with a clear error.
        let asked = Instant::now();
        alice.command("say anyone?").await;
        alice.expect_error("event_bus_unavailable").await;
        assert!(asked.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(app.get("/metrics").await.0 == 200);
    app.nats = NatsServer::start_on(Some(port));
    // The node was cut off: its players are told events may be lost, and come back.
    for player in [&mut alice, &mut bob] {
        let reason = player.expect_closed_with(4008).await;
        assert!(reason.starts_with("events_lost"), "{reason}");
    }
    app.wait_until_ready(Duration::from_secs(15)).await;
    let mut alice = app.rejoin(&alice).await;
    let mut bob = app.rejoin(&bob).await;
    while alice.next_within(common::QUIET).await.is_some() {}
    while bob.next_within(common::QUIET).await.is_some() {}
    say_until_heard(&mut alice, &mut bob, "we are back").await;
}

/// NATS stalls while a move's presence write is on its way: the node gives up on the
/// answer and refuses the move, and the write is stored when NATS wakes. The player's next
/// move finds the entry a revision ahead of what its connection holds, written by that
/// same connection: not a takeover (the node closed it with 4001 `replaced` and an
/// `internal` error before), and the move goes through.
/// NATS stalls while the player's move is on its way: the node gives up on the answer and
/// refuses the move; NATS wakes (and stores the presence write) as this returns.
async fn a_move_refused_for_a_stall(app: &TestApp, player: &mut common::Player, direction: &str) {
    app.nats.freeze();
    player.command(&format!("go {direction}")).await;
    let refused = player
        .until_within(EventType::Error, Duration::from_secs(15))
        .await;
    assert_eq!(
        refused.data_str("code"),
        "event_bus_unavailable",
        "{refused:?}"
    );
    app.nats.thaw();
}

/// Alice and Bob in the start room (returned), and Alice's move out of it refused for a
/// stall of NATS, its presence write stored all the same.
async fn alice_and_bob_after_a_move_a_stall_lost()
-> (TestApp, String, common::Player, common::Player) {
    let app = TestApp::spawn().await;
    let start = common::world().start_room.to_string();
    let (direction, _) = common::some_exit(&start);
    let mut alice = app.join("Alice").await;
    let bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    a_move_refused_for_a_stall(&app, &mut alice, &direction).await;
    (app, start, alice, bob)
}

#[tokio::test]
async fn a_move_whose_answer_a_stall_lost_is_not_taken_for_a_takeover() {
    let app = TestApp::spawn().await;
    let start = common::world().start_room.to_string();
    let (direction, next_room) = common::some_exit(&start);
    let mut alice = app.join("Alice").await;

    a_move_refused_for_a_stall(&app, &mut alice, &direction).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    alice.command(&format!("go {direction}")).await;
    loop {
        match alice.next_within(Duration::from_secs(10)).await {
            Some(common::Received::Frame(frame)) if frame.event_type == EventType::RoomUpdate => {
                assert_eq!(frame.room_id.as_deref(), Some(next_room.as_str()));
                break;
            }
            Some(common::Received::Frame(frame)) => {
                assert_ne!(frame.event_type, EventType::Error, "{frame:?}");
            }
            other => panic!("no room_update: {other:?}"),
        }
    }
    assert_eq!(
        alice.reply("who").await.data["result"],
        "Players online (1): Alice"
    );
}

/// The same lost answer, then `quit`: the entry the refused move left is still the
/// player's own, so the quit removes it and the room hears of the departure at once, from
/// the room the player was in (before, the quit took the entry for another login's and
/// said nothing; the sweep wrote the player off later, in the refused move's room).
#[tokio::test]
async fn a_quit_after_a_move_whose_answer_a_stall_lost_is_announced_at_once() {
    let (_app, start, mut alice, mut bob) = alice_and_bob_after_a_move_a_stall_lost().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    alice.command("quit").await;
    let left = bob
        .until_within(EventType::PlayerLeftGame, Duration::from_secs(5))
        .await;
    assert_eq!(left.data_str("player_name"), "Alice", "{left:?}");
    assert_eq!(left.room_id.as_deref(), Some(start.as_str()), "{left:?}");
    assert_eq!(
        bob.reply("who").await.data["result"],
        "Players online (1): Bob"
    );
}

/// The same lost answer, then nothing: the player idles past the time after which a node
/// writes off an entry of its own that no connection of its holds (10 s). The entry is
/// the idle connection's own write, so it is taken as that connection's, not written off:
/// the player stays, unannounced (before, it was written off, announced as gone from the
/// refused move's room and closed with 4008).
#[tokio::test]
async fn a_player_idle_after_a_move_whose_answer_a_stall_lost_stays() {
    let (_app, _, mut alice, mut bob) = alice_and_bob_after_a_move_a_stall_lost().await;

    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(14) {
        for player in [&mut alice, &mut bob] {
            match player.next_within(Duration::from_millis(100)).await {
                Some(common::Received::Closed(close)) => {
                    panic!("{} was closed: {close:?}", player.name)
                }
                Some(common::Received::Frame(frame)) => {
                    assert_ne!(frame.event_type, EventType::PlayerLeftGame, "{frame:?}");
                }
                None => {}
            }
        }
    }
    assert_eq!(
        bob.reply("who").await.data["result"],
        "Players online (2): Alice, Bob"
    );
}

#[tokio::test]
async fn a_server_started_without_nats_reports_degraded_and_heals() {
    // A port with no NATS on it yet.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let app =
        TestApp::spawn_with(|config| config.nats_url = format!("nats://127.0.0.1:{port}")).await;
    let (status, health) = app.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (503, Some("degraded")));
    assert_eq!(health["presence"], "unavailable");
    // Players can still log in and look around.
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.command("say hello?").await;
    alice.expect_error("event_bus_unavailable").await;

    let _nats = NatsServer::start_on(Some(port));
    // Connected while the node had no NATS, they may have missed what other nodes
    // published: they are told so, and come back.
    for player in [&mut alice, &mut bob] {
        let reason = player.expect_closed_with(4008).await;
        assert!(reason.starts_with("events_lost"), "{reason}");
    }
    app.wait_until_ready(Duration::from_secs(15)).await;
    let mut alice = app.rejoin(&alice).await;
    let mut bob = app.rejoin(&bob).await;
    while alice.next_within(common::QUIET).await.is_some() {}
    while bob.next_within(common::QUIET).await.is_some() {}
    say_until_heard(&mut alice, &mut bob, "now it works").await;
}

const BATCH: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_with_4008_and_the_others_keep_up() {
    // The queue absorbs bursts (the router hands over up to ~128 events before yielding);
    // the stalled client overflows it all the same.
    let app = TestApp::spawn_with(|config| config.outbound_queue = 256).await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;

    // Staller reads nothing, with a tiny receive buffer so the stall shows quickly.
    let account = app.register("Staller").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/api/ws?token={}", app.addr, account.access_token);
    let (mut staller, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    alice.expect(EventType::PlayerEnteredGame).await;
    bob.expect(EventType::PlayerEnteredGame).await;

    // Alice talks in batches (Bob listening, Alice reading her replies) until the server
    // drops the staller: its queue fills once the kernel's socket buffers are full.
    let text = "x".repeat(450);
    let started = Instant::now();
    let mut dropped = false;
    for batch in 0..30 {
        let listener = tokio::spawn(async move {
            let mut i = 0;
            while i < BATCH {
                let heard = bob.next_frame().await;
                if heard.event_type == EventType::PlayerLeftGame {
                    assert_eq!(heard.data["player_name"], "Staller");
                    continue;
                }
                assert_eq!(heard.event_type, EventType::ChatMessage);
                assert!(
                    heard
                        .data_str("message")
                        .starts_with(&format!("Alice says: {batch}.{i} "))
                );
                i += 1;
            }
            bob
        });
        let (mut alice_out, mut alice_in) = alice.socket.split();
        let replies = tokio::spawn(async move {
            let mut answered = 0;
            while answered < BATCH {
                match alice_in.next().await {
                    Some(Ok(Message::Text(_))) => answered += 1,
                    Some(Ok(_)) => {}
                    other => panic!("Alice's socket ended: {other:?}"),
                }
            }
            alice_in
        });
        for i in 0..BATCH {
            let message = json!({"type": "game_command", "data": {"command": format!("say {batch}.{i} {text}")}});
            alice_out
                .send(Message::text(message.to_string()))
                .await
                .unwrap();
        }
        let alice_in = replies.await.unwrap();
        alice.socket = alice_out.reunite(alice_in).unwrap();
        bob = listener.await.unwrap();
        let who = bob.ask("who").await;
        if who.data["result"] == "Players online (2): Alice, Bob" {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stalled client was never dropped");
    // Bob heard every one of Alice's lines, and quickly, while the staller sat there.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the stalled client slowed the others"
    );
    // Reading now, the staller finds the reason at the end of its backlog.
    let close = loop {
        match tokio::time::timeout(common::WAIT, staller.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4008));
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("natsmud_slow_consumer_disconnects_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn command_floods_are_refused_then_disconnected() {
    let app = TestApp::spawn_with(|config| {
        config.commands_per_sec = 2;
        config.command_burst = 3;
    })
    .await;
    let mut alice = app.join("Alice").await;
    for i in 0..6 {
        alice.command(&format!("say {i}")).await;
    }
    let mut answered = 0;
    let mut refused = 0;
    for _ in 0..6 {
        let frame = alice.next_frame().await;
        match frame.event_type {
            EventType::CommandResponse => answered += 1,
            EventType::Error => {
                assert_eq!(frame.data["code"], "rate_limited");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        answered >= 3 && refused >= 1,
        "answered {answered}, refused {refused}"
    );
    for i in 0..200 {
        if alice
            .socket
            .send(Message::text(json!({"type":"ping","n":i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = alice.expect_close().await.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let app = TestApp::spawn_with(|config| config.auth_per_minute = 3).await;
    for attempt in 0..3 {
        let (status, _) = app
            .post(
                "/api/auth/login",
                &json!({"username": "Nobody", "password": "wrong password"}),
            )
            .await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    let response = reqwest::Client::new()
        .post(app.url("/api/auth/register"))
        .json(&json!({"username": "Mallory", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_with_503() {
    let app = TestApp::spawn_with(|config| config.max_connections = 1).await;
    let _alice = app.join("Alice").await;
    let bob = app.register("Bob").await;
    let url = format!("ws://{}/api/ws?token={}", app.addr, bob.access_token);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["code"], "server_full");
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_utf8_text_frames_close_with_1007() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x7b], OpCode::Data(Data::Text), true);
    alice.socket.send(Message::Frame(frame)).await.unwrap();
    let (code, _) = alice.expect_close().await.expect("a close frame");
    assert_eq!(code, 1007);
}

#[tokio::test]
async fn nobody_can_speak_as_someone_else_and_text_is_cleaned() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    // Fields naming another actor are ignored: the actor is the authenticated connection.
    alice
        .send_json(json!({"type": "chat", "data": {"channel": "say", "message": "hi\u{0007}\u{001b}[31m there ",
            "sender_id": bob.id, "player_id": bob.id, "player_name": "Bob"}, "player_id": bob.id}))
        .await;
    alice.expect(EventType::CommandResponse).await;
    let heard = bob.expect(EventType::ChatMessage).await;
    assert_eq!(heard.data["sender_id"], alice.id);
    assert_eq!(heard.player_id.as_deref(), Some(alice.id.as_str()));
    assert_eq!(heard.data["message"], "Alice says: hi[31m there");
}

#[tokio::test]
async fn forged_expired_and_orphaned_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let account = app.register("Alice").await;
    let secret = app.config.jwt_secret.clone().unwrap().expose().to_owned();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let sign = |claims: serde_json::Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let claims = |exp: u64, iss: &str| json!({"sub": account.player_id, "name": "Alice", "iss": iss, "iat": now, "exp": exp});
    let cases = [
        ("expired", sign(claims(now - 3600, "natsmud"), &secret)),
        (
            "wrong issuer",
            sign(claims(now + 3600, "elsewhere"), &secret),
        ),
        (
            "wrong key",
            sign(claims(now + 3600, "natsmud"), "not-the-secret"),
        ),
        ("malformed", "a.b.c".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = app.get(&format!("/api/events?token={token}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_token")),
            "{what}"
        );
    }
    // A valid token whose account was deleted.
    let accounts = natsmud::db::Accounts::open(&app.config.database_url())
        .await
        .unwrap();
    accounts
        .delete(&natsmud_protocol::PlayerId::parse(&account.player_id).unwrap())
        .await
        .unwrap();
    let (status, _) = app
        .get(&format!("/api/events?token={}", account.access_token))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn accounts_and_rooms_survive_kill_dash_nine() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let cheap = [
        "--password-hash-memory-kib",
        "64",
        "--password-hash-iterations",
        "1",
    ];
    let (mut first, addr) = common::spawn_binary(&nats.url, data.path(), &cheap);
    let account = common::register_at(&addr, "Alice").await;
    let mut alice = common::connect_at(&addr, &account).await;
    let start = alice.expect(EventType::GameState).await.room_id.unwrap();
    let (direction, next_room) = common::some_exit(&start);
    alice.command(&format!("go {direction}")).await;
    alice.expect(EventType::RoomUpdate).await;

    first.kill().unwrap(); // SIGKILL: no shutdown code runs.
    first.wait().unwrap();

    let (mut second, addr) = common::spawn_binary(&nats.url, data.path(), &cheap);
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": "Alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut alice = common::connect_at(&addr, &account).await;
    let state = alice.expect(EventType::GameState).await;
    assert_eq!(state.room_id.as_deref(), Some(next_room.as_str()));
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn shutdown_under_load_answers_every_command_it_applied() {
    let mut app = TestApp::spawn().await;
    let alice = app.join("Alice").await;
    let observer = async_nats::connect(&app.nats.url).await.unwrap();
    let mut says = common::subscribe_ready(&observer, &format!("chat.say.{}", alice.room)).await;
    observer.flush().await.unwrap();

    let (mut sink, mut stream) = alice.socket.split();
    let sender = tokio::spawn(async move {
        for i in 0..5_000 {
            let message = json!({"type": "game_command", "data": {"command": format!("say {i}")}});
            if sink.send(Message::text(message.to_string())).await.is_err() {
                break;
            }
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut answered = BTreeSet::new();
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            match message {
                Message::Text(text) => {
                    let frame: natsmud_protocol::ServerFrame =
                        serde_json::from_str(text.as_str()).unwrap();
                    if frame.event_type == EventType::CommandResponse {
                        let n: u32 = frame
                            .data_str("result")
                            .trim_start_matches("You say: ")
                            .parse()
                            .unwrap();
                        answered.insert(n);
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let answered = reader.await.unwrap();
    let _ = sender.await;
    let mut published = BTreeSet::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), says.next()).await
    {
        let frame: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let n: u32 = frame["data"]["message"]
            .as_str()
            .unwrap()
            .trim_start_matches("Alice says: ")
            .parse()
            .unwrap();
        published.insert(n);
    }
    assert!(
        !answered.is_empty(),
        "some commands ran before the shutdown"
    );
    assert_eq!(
        answered, published,
        "every applied command was answered, and only those"
    );
    let expected: BTreeSet<u32> = (0..answered.len() as u32).collect();
    assert_eq!(
        answered, expected,
        "commands ran in order with none skipped"
    );
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_two_ping_intervals() {
    let app = TestApp::spawn_with(|config| config.ws_ping_secs = 1).await;
    let mut watcher = app.join("Watcher").await;
    let account = app.register("Ghost").await;
    // Not reading means not answering the server's pings.
    let mut ghost = app.connect(&account).await;
    watcher.expect(EventType::PlayerEnteredGame).await;
    let left = tokio::time::timeout(
        Duration::from_secs(6),
        watcher.expect(EventType::PlayerLeftGame),
    )
    .await
    .expect("the silent peer is dropped within a few seconds");
    assert_eq!(left.data["player_name"], "Ghost");
    let (code, reason) = ghost.expect_close().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1001, "ping timeout"));
    // The watcher answered its pings all along (its client replies as it reads).
    assert_eq!(
        watcher.ask("who").await.data["result"],
        "Players online (1): Watcher"
    );
}
