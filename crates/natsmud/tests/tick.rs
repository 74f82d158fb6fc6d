//! The game tick, through NATS, to every player.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{NatsServer, Player, Received, TestApp};
use natsmud_protocol::EventType;

async fn next_tick(player: &mut Player) -> natsmud_protocol::ServerFrame {
    loop {
        let frame = player.next_frame().await;
        if frame.event_type == EventType::GameTick {
            return frame;
        }
    }
}

#[tokio::test]
async fn every_player_gets_every_tick_in_order() {
    let app = TestApp::spawn_with(|config| config.tick_interval_ms = 100).await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;

    // Bob joined later: line both up on Bob's first tick.
    let bob_first = next_tick(&mut bob).await.data["tick_number"]
        .as_u64()
        .unwrap();
    let mut alice_tick = 0;
    while alice_tick < bob_first {
        alice_tick = next_tick(&mut alice).await.data["tick_number"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(alice_tick, bob_first, "both get the same tick numbers");
    for expected in bob_first + 1..bob_first + 26 {
        for player in [&mut alice, &mut bob] {
            let tick = next_tick(player).await;
            assert_eq!(
                tick.data["tick_number"], expected,
                "{} missed or repeated a tick",
                player.name
            );
            assert_eq!(
                tick.sequence_number, expected,
                "a tick's sequence is its number"
            );
            assert_eq!(tick.data["active_players"], 2);
            assert_eq!(tick.data_str("timestamp"), tick.timestamp);
        }
    }
}

#[tokio::test]
async fn ticks_follow_the_wall_clock_grid() {
    let app = TestApp::spawn_with(|config| config.tick_interval_ms = 200).await;
    let mut alice = app.join("Alice").await;
    for _ in 0..5 {
        let tick = next_tick(&mut alice).await;
        let number = tick.data["tick_number"].as_u64().unwrap();
        let stamp = natsmud_protocol::envelope::parse_timestamp(&tick.timestamp).unwrap();
        let due_ms = (stamp.unix_timestamp_nanos() / 1_000_000) as u64;
        assert_eq!(due_ms, number * 200, "tick N is due at N × interval");
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        assert!(
            now_ms >= due_ms && now_ms - due_ms < 2_000,
            "tick {number} arrived {} ms late",
            now_ms - due_ms
        );
    }
}

#[tokio::test]
async fn ticks_stop_at_shutdown() {
    let mut app = TestApp::spawn_with(|config| config.tick_interval_ms = 100).await;
    let nats = async_nats::connect(&app.nats.url).await.unwrap();
    let mut ticks = common::subscribe_ready(&nats, "events.game_tick").await;
    nats.flush().await.unwrap();
    tokio::time::timeout(common::WAIT, futures::StreamExt::next(&mut ticks))
        .await
        .unwrap();
    app.stop().await;
    // Drain what was in flight, then nothing more may come.
    while tokio::time::timeout(
        Duration::from_millis(50),
        futures::StreamExt::next(&mut ticks),
    )
    .await
    .is_ok()
    {}
    let late = tokio::time::timeout(
        Duration::from_millis(400),
        futures::StreamExt::next(&mut ticks),
    )
    .await;
    assert!(late.is_err(), "a tick was published after shutdown");
}

#[tokio::test]
async fn a_tick_while_nats_is_down_is_counted_as_failed_and_ticking_resumes() {
    let mut app = TestApp::spawn_with(|config| config.tick_interval_ms = 100).await;
    let mut alice = app.join("Alice").await;
    next_tick(&mut alice).await;
    let failed_before = app.metric("natsmud_ticks_failed_total").await;

    let port = app.nats.port;
    app.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.metric("natsmud_ticks_failed_total").await <= failed_before {
        assert!(Instant::now() < deadline, "no failed tick was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.nats = NatsServer::start_on(Some(port));
    // Ticks reach Alice again, with numbers that kept counting through the outage.
    let before = loop {
        match alice.next_within(Duration::from_secs(15)).await {
            Some(Received::Frame(frame)) if frame.event_type == EventType::GameTick => {
                break frame.data["tick_number"].as_u64().unwrap();
            }
            Some(Received::Frame(_)) => continue,
            other => panic!("no tick after NATS returned: {other:?}"),
        }
    };
    let after = next_tick(&mut alice).await.data["tick_number"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);
}
