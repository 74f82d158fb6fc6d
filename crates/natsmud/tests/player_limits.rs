//! Limits that hold per player, whatever the player does with its connections: command
//! rate, reconnects, the node's player cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use natsmud_protocol::EventType;
use serde_json::{Value, json};

async fn ws_status(app: &TestApp, token: &str) -> Result<(), (u16, Value, Option<String>)> {
    let url = format!("ws://{}/api/ws?token={token}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body, retry))
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// Reconnecting after each burst used to give a fresh allowance each time (702 `say`s a
/// second from one account).
#[tokio::test]
async fn the_command_rate_follows_the_player_across_reconnects() {
    let app = TestApp::spawn_with(|config| {
        config.commands_per_sec = 1;
        config.command_burst = 5;
    })
    .await;
    let mut alice = app.join("Alice").await;
    for n in 0..5 {
        assert_eq!(
            alice.ask(&format!("say {n}")).await.event_type,
            EventType::CommandResponse
        );
    }
    drop(alice.socket.close(None).await);
    let account = alice.account.clone();
    let mut again = app.connect(&account).await;
    again.expect(EventType::GameState).await;
    again.command("say one more").await;
    again.expect_error("rate_limited").await;
}

#[tokio::test]
async fn a_player_cannot_reconnect_without_limit() {
    let app = TestApp::spawn_with(|config| config.connects_per_minute = 3).await;
    let account = app.register("Alice").await;
    for _ in 0..3 {
        let mut player = app.connect(&account).await;
        player.expect(EventType::GameState).await;
    }
    let (status, body, retry) = ws_status(&app, &account.access_token).await.unwrap_err();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    let (status, body) = app
        .get(&format!("/api/events?token={}", account.access_token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    // Other players are not affected.
    app.join("Bob").await;
}

async fn post_command(app: &TestApp, token: &str, line: &str) -> (u16, Value, Option<String>) {
    let response = reqwest::Client::new()
        .post(app.url("/api/command"))
        .bearer_auth(token)
        .json(&json!({"type": "game_command", "data": {"command": line}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), retry)
}

/// `POST /api/command` answers a refusal in its own response (429), as the docs say,
/// instead of 202 and an error on the stream; and a token whose account is gone gets 401
/// there as on `/api/ws`.
#[tokio::test]
async fn post_command_refuses_in_its_answer() {
    let app = TestApp::spawn_with(|config| {
        config.commands_per_sec = 1;
        config.command_burst = 2;
    })
    .await;
    let mut alice = app.join("Alice").await;
    let token = alice.account.access_token.clone();
    for _ in 0..2 {
        assert_eq!(post_command(&app, &token, "look").await.0, 202);
        alice.expect(EventType::CommandResponse).await;
    }
    let (status, body, retry) = post_command(&app, &token, "look").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(retry.is_some());
    alice.expect_silence().await;

    let bob = app.register("Bob").await;
    let accounts = natsmud::db::Accounts::open(&app.config.database_url())
        .await
        .unwrap();
    accounts
        .delete(&natsmud_protocol::PlayerId::parse(&bob.player_id).unwrap())
        .await
        .unwrap();
    let (status, body, _) = post_command(&app, &bob.access_token, "look").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    let carol = app.register("Carol").await;
    let (status, body, _) = post_command(&app, &carol.access_token, "look").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_connected"))
    );
}

/// The player cap counts players, so a login that only replaces a player's own
/// connection is let in when the node is full, and a rush of logins cannot overshoot it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_cap_lets_a_replacement_in_and_holds_under_a_rush() {
    let app = TestApp::spawn_with(|config| config.max_connections = 3).await;
    let mut players = Vec::new();
    for name in ["Alice", "Bob", "Carol"] {
        players.push(app.join(name).await);
    }
    let alice_again = app.rejoin(&players[0]).await;
    assert_eq!(alice_again.name, "Alice");
    let dave = app.register("Dave").await;
    let (status, body, _) = ws_status(&app, &dave.access_token).await.unwrap_err();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("server_full"))
    );
    drop(players);
    drop(alice_again);
    let deadline = std::time::Instant::now() + common::WAIT;
    while app.get("/health").await.1["connected_players"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "players did not leave"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Twenty players rush in at once: three get in, the others are refused.
    let mut accounts = Vec::new();
    for n in 0..20 {
        accounts.push(app.register(&format!("Rusher{n}")).await);
    }
    let rush = accounts.into_iter().map(|account| {
        let addr = app.addr.to_string();
        tokio::spawn(async move {
            let url = format!("ws://{addr}/api/ws?token={}", account.access_token);
            let Ok((socket, _)) = tokio_tungstenite::connect_async(url).await else {
                return None;
            };
            let mut player = common::Player {
                name: account.player_name.clone(),
                id: account.player_id.clone(),
                room: String::new(),
                socket,
                account,
            };
            match player.next_within(common::WAIT).await {
                Some(common::Received::Frame(frame))
                    if frame.event_type == EventType::GameState =>
                {
                    Some(player)
                }
                // Let in by the early check, refused when registering: closed with 1013.
                Some(common::Received::Closed(Some((1013, _)))) => None,
                other => panic!("unexpected {other:?}"),
            }
        })
    });
    let mut admitted = Vec::new();
    for joined in futures::future::join_all(rush).await {
        if let Some(player) = joined.unwrap() {
            admitted.push(player);
        }
    }
    assert_eq!(admitted.len(), 3);
    assert_eq!(app.get("/health").await.1["connected_players"], 3);
}
