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
    assert_eq!(body["presence"], "ready");
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

#[tokio::test]
async fn oversized_auth_bodies_are_refused_with_413() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for path in ["/api/auth/register", "/api/auth/login"] {
        for size in [5 * 1024, 5 * 1024 * 1024] {
            let body = json!({"username": "Alice", "password": "x".repeat(size)});
            let response = http.post(app.url(path)).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 413, "{path}, {size} bytes");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
        }
        // Without a Content-Length the limit holds while the body is read.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            std::iter::once(Ok(br#"{"username":"Alice","password":""#.to_vec()))
                .chain((0..16).map(|_| Ok(vec![b'x'; 1024])))
                .chain(std::iter::once(Ok(br#""}"#.to_vec())))
                .collect();
        let response = http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 413, "{path}, chunked");
    }
}

#[tokio::test]
async fn malformed_auth_bodies_are_explained_without_internal_names() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let cases: [(&str, &str, &str); 8] = [
        ("application/json", r#""just a string""#, "object"),
        ("application/json", "[1, 2]", "object"),
        ("application/json", "null", "object"),
        ("application/json", r#"{"username": "Bob"}"#, "password"),
        (
            "application/json",
            r#"{"password": "long enough"}"#,
            "username",
        ),
        (
            "application/json",
            r#"{"username": 5, "password": "long enough"}"#,
            "username",
        ),
        ("application/json", "{broken", "JSON"),
        (
            "text/plain",
            r#"{"username": "Bob", "password": "long enough"}"#,
            "application/json",
        ),
    ];
    for path in ["/api/auth/register", "/api/auth/login"] {
        for (content_type, body, mentions) in cases {
            let response = http
                .post(app.url(path))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let reply: serde_json::Value = response.json().await.unwrap();
            assert_eq!(
                (status, reply["error"]["code"].as_str()),
                (400, Some("malformed_request")),
                "{path} {body}: {reply}"
            );
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(mentions), "{path} {body}: {message}");
            for internal in [
                "struct",
                "Credentials",
                "invalid type",
                "line 1 column",
                "rejection",
            ] {
                assert!(!message.contains(internal), "{path} {body}: {message}");
            }
        }
    }
}

#[tokio::test]
async fn password_length_counts_characters_not_bytes() {
    let app = TestApp::spawn().await;
    // 200 characters, 400 bytes.
    let accented = "é".repeat(200);
    let (status, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "Elodie", "password": accented}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"username": "Elodie", "password": accented}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (name, password) in [
        ("Longer", "x".repeat(257)),
        ("Longest", "é".repeat(257)),
        ("Short", "é".repeat(7)),
    ] {
        let (status, body) = app
            .post(
                "/api/auth/register",
                &json!({"username": name, "password": password}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_password")),
            "{name}: {body}"
        );
    }
    // Eight characters are enough, whatever their bytes.
    let (status, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "Eight", "password": "ééééé€€€"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn reserved_names_cannot_be_registered_but_existing_ones_still_log_in() {
    let app = TestApp::spawn().await;
    for name in [
        "admin",
        "Administrator",
        "SYSTEM",
        "you",
        "everyone",
        "All",
        "here",
        "server",
        "NatsMud",
        "root",
        "moderator",
        "staff",
        "nobody",
        "someone",
    ] {
        let (status, body) = app
            .post(
                "/api/auth/register",
                &json!({"username": name, "password": "long enough"}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_username")),
            "{name}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("reserved"), "{name}: {message}");
    }
    // Names that merely contain a reserved word are fine.
    app.register("Adminton").await;

    // An account stored before the rule keeps working.
    let passwords = natsmud::auth::Passwords::new(1, 1, 64, 1).unwrap();
    let hash = passwords.hash("correct horse".to_owned()).await.unwrap();
    let accounts = natsmud::db::Accounts::open(&app.config.database_url())
        .await
        .unwrap();
    let id = natsmud_protocol::PlayerId::parse("old-admin").unwrap();
    let name = natsmud_protocol::PlayerName::parse("Admin").unwrap();
    let world = common::world();
    accounts
        .create(&id, &name, &hash, &world.start_room)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"username": "admin", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["player_name"], "Admin");
}
