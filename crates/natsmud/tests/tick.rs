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
    // The node was cut off, so Alice is told events may be lost; she comes back.
    loop {
        match alice.next_within(Duration::from_secs(15)).await {
            Some(Received::Closed(Some((4008, _)))) => break,
            Some(Received::Frame(_)) => continue,
            other => panic!("Alice was not told about the outage: {other:?}"),
        }
    }
    let mut alice = app.rejoin(&alice).await;
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

/// Anyone who can publish on NATS can publish a tick. One numbered far ahead must not
/// stop the clock ("drop tick numbers already delivered" would then drop every real one),
/// nor may one from the past repeat a number, nor one a few intervals early hold the real
/// ones back.
#[tokio::test]
async fn a_forged_tick_is_refused_and_the_clock_goes_on() {
    let interval = 100u64;
    let app = TestApp::spawn_with(|config| config.tick_interval_ms = interval).await;
    let mut alice = app.join("Alice").await;
    let first = next_tick(&mut alice).await.data["tick_number"]
        .as_u64()
        .unwrap();
    let nats = app.outside_client().await;
    let at = |tick: u64| {
        natsmud_protocol::envelope::format_timestamp(
            time::OffsetDateTime::UNIX_EPOCH + Duration::from_millis(tick * interval),
        )
    };
    let ahead = first + 40;
    for (number, due) in [
        (1_000_000_000_000u64, "2026-01-01T00:00:00.000Z".to_owned()),
        (first, at(first)),
        (first + 1_000_000, "2099-01-01T00:00:00.000Z".to_owned()),
        // Consistent, but four seconds early.
        (ahead, at(ahead)),
    ] {
        let forged = natsmud_protocol::Envelope::new(
            EventType::GameTick,
            natsmud_protocol::envelope::GameTickData {
                tick_number: number,
                timestamp: due,
                active_players: 0,
            },
        )
        .with_sequence(number);
        nats.publish("events.game_tick", forged.to_bytes())
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    // Real ticks keep coming, each number once, in order (a stall may skip some).
    let mut last = first;
    for _ in 0..10 {
        let tick = next_tick(&mut alice).await.data["tick_number"]
            .as_u64()
            .unwrap();
        assert!(tick > last, "tick {tick} after {last}");
        assert!(tick < ahead, "the early forged tick was delivered");
        last = tick;
    }
    assert!(
        app.metric("natsmud_events_rejected_total{reason=\"stale_tick\"}")
            .await
            >= 4.0
    );
}
