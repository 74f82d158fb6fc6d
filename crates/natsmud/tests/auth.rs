//! Registration and login over HTTP, and what a restart keeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use natsmud_protocol::EventType;
use serde_json::json;

#[tokio::test]
async fn register_and_login() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "Alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["player_name"], "Alice");
    assert_eq!(body["token_type"], "bearer");
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let id = body["player_id"].as_str().unwrap().to_owned();

    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"username": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["player_id"], id);
    assert_eq!(body["player_name"], "Alice");
}

#[tokio::test]
async fn registration_errors_are_json_with_fitting_statuses() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    let cases = [
        (
            json!({"username": "ALICE", "password": "another one"}),
            409,
            "username_taken",
        ),
        (
            json!({"username": "al", "password": "long enough"}),
            422,
            "invalid_username",
        ),
        (
            json!({"username": "9lives", "password": "long enough"}),
            422,
            "invalid_username",
        ),
        (
            json!({"username": "Bob", "password": "short"}),
            422,
            "invalid_password",
        ),
        (json!({"username": "Bob"}), 400, "malformed_request"),
        (json!("just a string"), 400, "malformed_request"),
    ];
    for (body, status, code) in cases {
        let (got, response) = app.post("/api/auth/register", &body).await;
        assert_eq!(
            (got, response["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {response}"
        );
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let response = reqwest::Client::new()
        .post(app.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn login_refuses_bad_credentials_alike() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    for body in [
        json!({"username": "Alice", "password": "wrong password"}),
        json!({"username": "Nobody", "password": "correct horse"}),
        json!({"username": "!!", "password": "correct horse"}),
    ] {
        let (status, response) = app.post("/api/auth/login", &body).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(response["error"]["code"], "invalid_credentials");
    }
}

#[tokio::test]
async fn health_reports_nats_and_players() {
    let app = TestApp::spawn().await;
    let _alice = app.join("Alice").await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["nats"], "connected");
    assert_eq!(body["connected_players"], 1);
    let (status, body) = app.get("/no/such/thing").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_restart_keeps_accounts_and_puts_players_back_where_they_were() {
    // No configured secret: the generated one is kept in the data directory.
    let mut app = TestApp::spawn_with(|config| config.jwt_secret = None).await;
    let account = app.register("Alice").await;
    let mut alice = app.connect(&account).await;
    let start = alice.expect(EventType::GameState).await.room_id.unwrap();
    let (direction, next_room) = common::some_exit(&start);
    alice.command(&format!("go {direction}")).await;
    alice.expect(EventType::RoomUpdate).await;
    drop(alice);

    app.restart().await;

    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"username": "Alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The token from before the restart is still good, too.
    let mut alice = app.connect(&account).await;
    let state = alice.expect(EventType::GameState).await;
    assert_eq!(state.room_id.as_deref(), Some(next_room.as_str()));
    assert_eq!(state.data["room"]["id"], next_room);
    assert_eq!(state.data["player"]["name"], "Alice");
}
