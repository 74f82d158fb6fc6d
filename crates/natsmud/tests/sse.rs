//! The SSE transport: a full player, side by side with WebSocket players.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Account, TestApp};
use futures::StreamExt;
use natsmud_protocol::{EventType, ServerFrame};
use serde_json::{Value, json};

/// A player on `GET /api/events` + `POST /api/command`.
struct SsePlayer {
    account: Account,
    base: String,
    http: reqwest::Client,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

/// One parsed SSE event.
#[derive(Debug, Default)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl SsePlayer {
    async fn connect(app: &TestApp, account: Account) -> Self {
        Self::connect_from(app, account, None).await
    }

    /// Connects as a browser's EventSource reconnects: with the last id it got.
    async fn connect_from(app: &TestApp, account: Account, last_event_id: Option<&str>) -> Self {
        let http = reqwest::Client::new();
        let mut request = http.get(app.url(&format!("/api/events?token={}", account.access_token)));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            account,
            base: app.url(""),
            http,
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                    } else if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_owned());
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.event = Some(name.to_owned());
                    }
                }
                if event.data.is_empty() && event.event.is_none() {
                    continue; // a comment or keep-alive
                }
                return event;
            }
            let chunk = tokio::time::timeout(common::WAIT, self.body.next())
                .await
                .expect("an SSE event in time")
                .expect("the stream is open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_frame(&mut self) -> ServerFrame {
        let event = self.next_event().await;
        assert_eq!(event.event, None, "{event:?}");
        let frame: ServerFrame = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.id, frame.position, "the id is the position");
        frame
    }

    async fn expect(&mut self, kind: EventType) -> ServerFrame {
        let frame = self.next_frame().await;
        assert_eq!(frame.event_type, kind, "{frame:?}");
        frame
    }

    async fn post(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/command", self.base))
            .bearer_auth(&self.account.access_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn command(&self, line: &str) {
        let (status, body) = self
            .post(json!({"type": "game_command", "data": {"command": line}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test]
async fn an_sse_player_and_a_websocket_player_see_each_other() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let bob_account = app.register("Bob").await;
    let mut bob = SsePlayer::connect(&app, bob_account).await;
    let state = bob.expect(EventType::GameState).await;
    assert_eq!(state.data["occupants"], json!(["Alice", "Bob"]));
    assert_eq!(
        alice.expect(EventType::PlayerEnteredGame).await.data["player_name"],
        "Bob"
    );

    bob.command("say hello from sse").await;
    assert_eq!(
        bob.expect(EventType::CommandResponse).await.data["result"],
        "You say: hello from sse"
    );
    assert_eq!(
        alice.expect(EventType::ChatMessage).await.data["message"],
        "Bob says: hello from sse"
    );

    alice.ask("say hello from ws").await;
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice says: hello from ws"
    );

    let (direction, _) = common::some_exit(&alice.room);
    alice.command(&format!("go {direction}")).await;
    alice.expect(EventType::RoomUpdate).await;
    let left = bob.expect(EventType::PlayerLeft).await;
    assert_eq!(left.data["message"], "Alice leaves the room.");

    bob.command(&format!("go {direction}")).await;
    let update = bob.expect(EventType::RoomUpdate).await;
    assert_eq!(update.data["occupants"], json!(["Alice", "Bob"]));
    assert_eq!(
        alice.expect(EventType::PlayerEntered).await.data["message"],
        "Bob enters the room."
    );

    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (2): Alice, Bob"
    );
    let (status, body) = bob.post(json!({"type": "ping"})).await;
    assert_eq!(status, 202, "{body}");
    bob.expect(EventType::Pong).await;

    // Bad input over POST is answered in the HTTP response.
    let (status, body) = bob.post(json!({"type": "fly"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_message_type"))
    );
    let (status, body) = bob
        .post(json!({"type": "game_command", "data": {"command": "dance"}}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_command"))
    );
    // Errors of running a command arrive on the stream, like on a WebSocket.
    bob.command("whisper Nobody hi").await;
    assert_eq!(
        bob.expect(EventType::Error).await.data["code"],
        "player_not_found"
    );

    // Leaving: the stream is dropped, and the room hears it.
    drop(bob);
    assert_eq!(
        alice.expect(EventType::PlayerLeftGame).await.data["player_name"],
        "Bob"
    );
}

/// An EventSource that reconnects sends the last `id:` it got, which is the position of the
/// last event: the player gets exactly what it missed, and the room never saw it go.
#[tokio::test]
async fn an_sse_client_resumes_with_last_event_id() {
    let app = TestApp::spawn_with(|config| config.link_dead_grace_secs = 30).await;
    let mut alice = app.join("Alice").await;
    let account = app.register("Bob").await;
    let mut bob = SsePlayer::connect(&app, account.clone()).await;
    bob.expect(EventType::GameState).await;
    alice.expect(EventType::PlayerEnteredGame).await;
    alice.command("say first").await;
    let heard = bob.expect(EventType::ChatMessage).await;
    let last_id = heard.position.clone().expect("an SSE id");
    alice.expect(EventType::CommandResponse).await;
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.command("say second").await;
    alice.expect(EventType::CommandResponse).await;
    alice.command("whisper Bob third").await;
    alice.expect(EventType::CommandResponse).await;
    let mut bob = SsePlayer::connect_from(&app, account, Some(&last_id)).await;
    bob.expect(EventType::GameState).await;
    let answer = bob.expect(EventType::Resumed).await;
    assert_eq!(answer.data["recovered"], true, "{answer:?}");
    assert_eq!(answer.data["missed"], 2, "{answer:?}");
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data_str("message"),
        "Alice says: second"
    );
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data_str("message"),
        "Alice whispers to you: third"
    );
    alice.command("say live").await;
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data_str("message"),
        "Alice says: live"
    );
    // Alice never saw Bob leave or come back.
    alice.expect(EventType::CommandResponse).await;
    alice.expect_silence().await;
}

#[tokio::test]
async fn sse_and_command_refuse_bad_tokens_with_401_json() {
    let app = TestApp::spawn().await;
    for query in ["", "?token=", "?token=nope"] {
        let (status, body) = app.get(&format!("/api/events{query}")).await;
        assert_eq!(status, 401, "{query}");
        assert_eq!(body["error"]["code"], "invalid_token");
    }
    let http = reqwest::Client::new();
    let response = http
        .post(app.url("/api/command"))
        .bearer_auth("nope")
        .json(&json!({"type": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");

    // A good token with no open stream: told to connect first.
    let account = app.register("Carol").await;
    let response = http
        .post(app.url("/api/command"))
        .bearer_auth(&account.access_token)
        .json(&json!({"type": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
}

#[tokio::test]
async fn shutdown_tells_sse_clients_why_the_stream_ends() {
    let mut app = TestApp::spawn().await;
    let account = app.register("Bob").await;
    let mut bob = SsePlayer::connect(&app, account).await;
    bob.expect(EventType::GameState).await;
    app.stop().await;
    let event = tokio::time::timeout(Duration::from_secs(5), bob.next_event())
        .await
        .unwrap();
    assert_eq!(event.event.as_deref(), Some("close"), "{event:?}");
    let reason: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(reason["code"], 1001);
}
