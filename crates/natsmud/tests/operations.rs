//! Running natsmud: the binary's configuration, graceful shutdown on SIGTERM, health and
//! metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{NatsServer, TestApp};
use futures::StreamExt;
use natsmud_protocol::EventType;

#[tokio::test]
async fn sigterm_drains_players_tells_the_world_and_exits_zero() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    // Without a grace: with one, a node shutting down leaves its players link-dead, so
    // that they resume on another node (tests/resume.rs).
    let (mut child, addr) =
        common::spawn_binary(&nats.url, data.path(), &["--link-dead-grace-secs", "0"]);
    let mut players = Vec::new();
    for name in ["Alice", "Bob"] {
        let account = common::register_at(&addr, name).await;
        let mut player = common::connect_at(&addr, &account).await;
        player.expect(EventType::GameState).await;
        players.push(player);
    }
    players[0].expect(EventType::PlayerEnteredGame).await;

    let observer = async_nats::connect(&nats.url).await.unwrap();
    let mut left = common::subscribe_ready(&observer, "events.player_left.>").await;
    observer.flush().await.unwrap();

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for player in &mut players {
        let (code, reason) = player.expect_close().await.expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
    }
    let mut announced = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(common::WAIT, left.next())
            .await
            .unwrap()
            .unwrap();
        let frame: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(frame["event_type"], "player_left_game");
        announced.push(frame["data"]["player_name"].as_str().unwrap().to_owned());
    }
    announced.sort();
    assert_eq!(announced, ["Alice", "Bob"]);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "natsmud did not exit in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn invalid_configuration_fails_at_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("natsmud.toml");
    std::fs::write(&file, "tick_interval_ms = 5\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tick_interval_ms") && stderr.contains("too short"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .args(["--subject-prefix", "bad prefix!"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("subject-prefix"));

    let world = dir.path().join("world");
    std::fs::create_dir_all(world.join("zones")).unwrap();
    std::fs::write(
        world.join("world.json"),
        r#"{"name":"W","start_room":"r1"}"#,
    )
    .unwrap();
    std::fs::write(
        world.join("zones/z.json"),
        r#"{"id":"z","name":"Z","sub_zones":[{"id":"s","name":"S"}],"rooms":[{"id":"r1","name":"R","description":"d","sub_zone":"s","exits":{"north":"r404"}}]}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .arg("--world")
        .arg(&world)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("z.json") && stderr.contains("room r1") && stderr.contains("r404"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--bind",
        "--nats-url",
        "--nats-creds",
        "--subject-prefix",
        "--tick-interval-ms",
        "--data-dir",
        "--database-url",
        "--jwt-secret",
        "--world",
        "--outbound-queue",
        "--max-frame-bytes",
        "--telnet-bind",
        "--telnet-idle-secs",
        "--log",
        "--log-json",
        "--config",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[tokio::test]
async fn metrics_count_connections_events_and_latency() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    alice.ask("say counted").await;
    bob.expect(EventType::ChatMessage).await;
    let text = app.metrics_text().await;
    for needle in [
        "natsmud_connections{transport=\"websocket\"}",
        "natsmud_events_published_total{event_type=\"chat_message\"}",
        "natsmud_publish_seconds_bucket",
        "natsmud_delivery_seconds_bucket",
        "natsmud_events_received_total",
        "natsmud_events_delivered_total",
        "natsmud_nats_connected 1",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
}

/// The nats-server older than natsmud supports that this machine can run (Debian's 2.9,
/// which scripts/test extracts into target/tools when it is not installed), if any.
fn old_nats_server() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var("NATSMUD_OLD_NATS_SERVER").ok(),
        Some("/usr/sbin/nats-server".to_owned()),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(std::path::PathBuf::from)
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .output()
                .ok()
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .is_some_and(|version| {
                    natsmud::nats::check_version(version.trim().trim_start_matches("nats-server: "))
                        .is_err()
                })
        })
}

/// DESIGN.md §5: natsmud refuses a NATS server too old for what it needs, with a message
/// that says so, rather than warning and failing later.
#[test]
fn a_nats_server_too_old_for_natsmud_is_refused_at_start() {
    let Some(old) = old_nats_server() else {
        println!("skipped: no nats-server older than 2.11 here (scripts/test extracts Debian's)");
        return;
    };
    let nats = NatsServer::start_binary(&old, None);
    let (status, stderr) = natsmud_against(&nats.url);
    assert!(!status.success());
    assert!(stderr.contains("older than 2.11"), "{stderr}");
}

/// Runs the natsmud binary against `nats_url` until it exits (20 s at most): its exit
/// status and what it wrote to stderr.
fn natsmud_against(nats_url: &str) -> (std::process::ExitStatus, String) {
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--telnet-bind",
            "0",
            "--nats-url",
            nats_url,
            "--tick-interval-ms",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("natsmud kept running against a NATS server it cannot use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Presence lives in JetStream: a server without it is refused at start, saying so.
#[test]
fn a_nats_server_without_jetstream_is_refused_at_start() {
    // Later flags win: `-js=false` undoes the harness's `-js`.
    let nats = NatsServer::start_pinned_with(&["-js=false".to_owned()]);
    let (status, stderr) = natsmud_against(&nats.url);
    assert!(!status.success());
    assert!(stderr.contains("without JetStream"), "{stderr}");
}
