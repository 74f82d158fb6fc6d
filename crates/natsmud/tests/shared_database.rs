//! Nodes sharing one database (DESIGN.md §6): with PostgreSQL, nodes with data directories
//! of their own (as on different machines) share accounts and rooms; a node started with
//! another JWT secret than the others says so in its log and on `/health`, with SQLite and
//! with PostgreSQL. PostgreSQL tests start a server of their own, and are skipped, saying
//! so, where PostgreSQL is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Postgres, TestApp};
use natsmud_protocol::EventType;
use serde_json::json;

/// Another node of `first`'s world on the same NATS, with its own data directory, using
/// `database_url` (none: the SQLite file in `first`'s data directory).
async fn another_node(
    first: &TestApp,
    database_url: Option<&str>,
    adjust: impl FnOnce(&mut natsmud::Config),
) -> TestApp {
    let nats_url = first.nats.url.clone();
    let database_url = database_url
        .map(str::to_owned)
        .unwrap_or_else(|| first.config.database_url());
    TestApp::spawn_with(move |config| {
        config.nats_url = nats_url;
        config.database_url = Some(database_url);
        adjust(config);
    })
    .await
}

async fn on_postgres(pg: &Postgres) -> TestApp {
    let url = pg.url.clone();
    TestApp::spawn_with(move |config| config.database_url = Some(url)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_postgres_share_accounts_and_rooms() {
    let Some(pg) = Postgres::start("nodes_on_postgres_share_accounts_and_rooms") else {
        return;
    };
    let mut a = on_postgres(&pg).await;
    let b = another_node(&a, Some(&pg.url), |_| {}).await;
    assert_ne!(a.data_dir.path(), b.data_dir.path());

    let mut alice = a.join("Alice").await;
    let (direction, next) = common::some_exit(&alice.room);
    let update = alice.reply(&format!("go {direction}")).await;
    assert_eq!(update.event_type, EventType::RoomUpdate, "{update:?}");
    assert_eq!(update.room_id.as_deref(), Some(next.as_str()));
    alice.command("quit").await;
    alice.expect_close().await;
    // Node A is gone: whatever B knows of Alice, it has from the database.
    a.stop().await;

    let (status, body) = b
        .post(
            "/api/auth/login",
            &json!({"username": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let account: common::Account = serde_json::from_value(body).unwrap();
    assert_eq!(account.player_name, "Alice");
    assert_eq!(account.player_id, alice.id);
    let mut again = b.connect(&account).await;
    let state = again.expect(EventType::GameState).await;
    assert_eq!(state.room_id.as_deref(), Some(next.as_str()), "{state:?}");

    // A name taken on one node is taken on the other, whatever its case.
    let (status, body) = b
        .post(
            "/api/auth/register",
            &json!({"username": "ALICE", "password": "another horse"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "username_taken");
}

/// Node `first` and a node with another secret on `database_url`: the first reports a
/// match, the other a mismatch with a different fingerprint, and refuses the first's tokens.
async fn a_node_with_another_secret_says_so(first: TestApp, database_url: Option<&str>) {
    let other = another_node(&first, database_url, |config| {
        config.jwt_secret = Some(natsmud::config::Secret::new("another-secret-entirely"));
    })
    .await;
    let (_, ours) = first.get("/health").await;
    let (_, theirs) = other.get("/health").await;
    assert_eq!(ours["jwt_secret_matches_cluster"], true, "{ours}");
    assert_eq!(theirs["jwt_secret_matches_cluster"], false, "{theirs}");
    let fingerprint = |health: &serde_json::Value| {
        health["jwt_secret_fingerprint"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(fingerprint(&ours).len(), 16);
    assert_ne!(fingerprint(&ours), fingerprint(&theirs));
    assert!(!theirs.to_string().contains("another-secret"), "{theirs}");

    // Why it matters: a token from the first node is refused by the other.
    let account = first.register("Alice").await;
    let submit = |app: &TestApp| {
        reqwest::Client::new()
            .post(app.url("/api/command"))
            .bearer_auth(&account.access_token)
            .json(&json!({"type": "ping"}))
            .send()
    };
    assert_ne!(submit(&first).await.unwrap().status().as_u16(), 401);
    assert_eq!(submit(&other).await.unwrap().status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_says_so_on_sqlite() {
    a_node_with_another_secret_says_so(TestApp::spawn().await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_says_so_on_postgres() {
    let Some(pg) = Postgres::start("a_node_with_another_secret_says_so_on_postgres") else {
        return;
    };
    a_node_with_another_secret_says_so(on_postgres(&pg).await, Some(&pg.url)).await;
}

/// A database that cannot be reached or is not supported stops the node at start, saying
/// why, without printing the database password.
#[test]
fn an_unusable_database_url_fails_at_start_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let closed = common::free_port();
    for (url, why) in [
        (
            format!("postgres://natsmud:pw-hunter2@127.0.0.1:{closed}/mud"),
            "Connection refused",
        ),
        (
            "mysql://natsmud:pw-hunter2@127.0.0.1/mud".to_owned(),
            "unsupported database URL",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_natsmud"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--telnet-bind",
                "0",
                "--database-url",
                &url,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains(why), "{said}");
        assert!(said.contains("natsmud:***@127.0.0.1"), "{said}");
        assert!(!said.contains("hunter2"), "{said}");
    }
}
