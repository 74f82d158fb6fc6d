//! Bad input gets a clear error and the connection stays; what cannot be answered closes
//! the socket with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use futures::SinkExt;
use natsmud_protocol::EventType;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn each_kind_of_bad_message_gets_its_error_code_and_the_socket_stays_open() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let start = common::world();
    let room = start.start();
    let blocked = natsmud_protocol::Direction::ALL
        .into_iter()
        .find(|d| room.exit(*d).is_none())
        .expect("the start room lacks some direction");

    let cases: Vec<(String, &str)> = vec![
        ("{not json".to_owned(), "invalid_json"),
        ("[]".to_owned(), "invalid_message"),
        (json!({"data": {}}).to_string(), "invalid_message"),
        (
            json!({"type": "teleport"}).to_string(),
            "unknown_message_type",
        ),
        (
            json!({"type": "game_command"}).to_string(),
            "invalid_message",
        ),
        (
            json!({"type": "game_command", "data": {"command": "dance"}}).to_string(),
            "unknown_command",
        ),
        (
            json!({"type": "game_command", "data": {"command": "say"}}).to_string(),
            "missing_argument",
        ),
        (
            json!({"type": "game_command", "data": {"command": "go"}}).to_string(),
            "missing_argument",
        ),
        (
            json!({"type": "game_command", "data": {"command": "go", "args": ["sideways"]}})
                .to_string(),
            "invalid_direction",
        ),
        (
            json!({"type": "game_command", "data": {"command": "go", "args": [blocked.name()]}})
                .to_string(),
            "no_exit",
        ),
        (
            json!({"type": "game_command", "data": {"command": "whisper Nobody hi"}}).to_string(),
            "player_not_found",
        ),
        (
            json!({"type": "chat", "data": {"channel": "say"}}).to_string(),
            "invalid_message",
        ),
        (
            json!({"type": "chat", "data": {"channel": "say", "message": "x".repeat(600)}})
                .to_string(),
            "message_too_long",
        ),
    ];
    let mut last_sequence = 1; // game_state was 1
    for (text, code) in cases {
        alice.send_text(text.clone()).await;
        let frame = alice.expect_error(code).await;
        assert!(!frame.data_str("message").is_empty(), "{text}: no message");
        assert_eq!(
            frame.sequence_number,
            last_sequence + 1,
            "direct replies count up by one"
        );
        last_sequence = frame.sequence_number;
    }
    alice.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        alice.expect(EventType::Pong).await.sequence_number,
        last_sequence + 1
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_the_socket_with_1009() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let big = json!({"type": "chat", "data": {"channel": "say", "message": "x".repeat(9 * 1024)}});
    alice.send_json(big).await;
    let (code, reason) = alice.expect_close().await.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
}

#[tokio::test]
async fn a_huge_frame_beyond_the_transport_limit_also_closes_with_1009() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let _ = alice
        .socket
        .send(Message::text("x".repeat(1024 * 1024)))
        .await;
    let (code, _) = alice.expect_close().await.expect("a close frame");
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn binary_frames_are_refused_with_a_reason() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    alice
        .socket
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let (code, reason) = alice.expect_close().await.expect("a close frame");
    assert_eq!(code, 1003);
    assert!(reason.contains("binary"), "{reason}");
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade_with_401_json() {
    let app = TestApp::spawn().await;
    let account = app.register("Alice").await;
    let forged = {
        let mut parts: Vec<String> = account.access_token.split('.').map(str::to_owned).collect();
        parts[2] = "c2lnbmF0dXJl".to_owned();
        parts.join(".")
    };
    for query in ["", "?token=", "?token=garbage", &format!("?token={forged}")] {
        let response = reqwest::Client::new()
            .get(app.url(&format!("/api/ws{query}")))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{query}");
    }
    let url = format!("ws://{}/api/ws?token=garbage", app.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}
