//! Resume: a player whose socket drops stays in the world for the grace period, and
//! reconnecting with the position of the last event it got brings exactly what it missed,
//! read back from the world's JetStream stream, then live events — none lost, none twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Player, Received, TestApp, WAIT, resume_at};
use natsmud_protocol::envelope::ChatMessageData;
use natsmud_protocol::{
    Envelope, EventType, PlayerId, RoomId, ServerFrame, Subject, SubjectPrefix,
};

fn with_grace(secs: u64) -> impl FnOnce(&mut natsmud::Config) {
    move |config| config.link_dead_grace_secs = secs
}

/// The `resumed` frame after a reconnect's `game_state`.
async fn resumed(player: &mut Player) -> ServerFrame {
    let state = player.expect(EventType::GameState).await;
    player.room = state.room_id.clone().unwrap_or_default();
    assert!(
        state.position.is_some(),
        "a greeting says where it starts: {state:?}"
    );
    player.expect(EventType::Resumed).await
}

fn offset(frame: &ServerFrame) -> u64 {
    let position = frame
        .position
        .as_deref()
        .unwrap_or_else(|| panic!("no position: {frame:?}"));
    position.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A `say` by a stranger in `room`, as anyone on NATS could publish it.
fn stranger_says(room: &RoomId, message: &str) -> (String, bytes::Bytes) {
    let stranger = PlayerId::parse("stranger").unwrap();
    let envelope = Envelope::new(
        EventType::ChatMessage,
        ChatMessageData {
            channel: "say".into(),
            sender_id: stranger.clone(),
            player_name: "Stranger".into(),
            message: message.to_owned(),
            message_id: message.to_owned(),
            target_id: None,
            target_name: None,
            sub_zone: None,
        },
    )
    .in_room(room.clone())
    .by_player(stranger);
    (
        Subject::say(room).render(&SubjectPrefix::default()),
        envelope.to_bytes(),
    )
}

#[tokio::test]
async fn a_dropped_player_resumes_with_exactly_what_it_missed_and_nobody_saw_it_go() {
    let app = TestApp::spawn_with(with_grace(30)).await;
    let [mut alice, mut bob] = app.join_all(["Alice", "Bob"]).await;
    alice.command("say before").await;
    let heard = bob.until(EventType::ChatMessage).await;
    assert_eq!(heard.data_str("message"), "Alice says: before");
    let since = heard.position.clone().expect("chat carries its position");
    alice.expect(EventType::CommandResponse).await;

    // Bob's socket drops (no close handshake, no quit).
    let account = bob.account.clone();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for line in [
        "say one",
        "emote waves",
        "global all of you",
        "whisper Bob psst",
    ] {
        alice.command(line).await;
        alice.expect(EventType::CommandResponse).await;
    }
    // `who` still lists Bob, marked.
    let who = alice.reply("who").await;
    assert_eq!(
        who.data_str("result"),
        "Players online (2): Alice, Bob (link-dead)"
    );
    let mut carol = app.join("Carol").await;
    // Nobody saw Bob leave.
    alice.expect(EventType::PlayerEnteredGame).await;
    alice.expect_silence().await;

    let mut bob = resume_at(&app.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], true, "{answer:?}");
    let expected = [
        "Alice says: one",
        "Alice waves.",
        "Alice says (global): all of you",
        "Alice whispers to you: psst",
        "Carol has entered the game.",
    ];
    assert_eq!(answer.data["missed"], expected.len(), "{answer:?}");
    let mut last = offset(&heard);
    let mut got = Vec::new();
    for _ in expected {
        let frame = bob.next_frame().await;
        assert!(offset(&frame) > last, "positions grow: {frame:?}");
        last = offset(&frame);
        got.push(frame.data_str("message").to_owned());
    }
    assert_eq!(got, expected);
    // Then live, once.
    alice.command("say after").await;
    let live = bob.expect(EventType::ChatMessage).await;
    assert_eq!(live.data_str("message"), "Alice says: after");
    assert!(offset(&live) > last);
    bob.expect_silence().await;
    // And the room never saw Bob come back either.
    alice.expect(EventType::CommandResponse).await;
    alice.expect_silence().await;
    carol.until(EventType::ChatMessage).await;
}

/// Drops and resumes while a publisher keeps a few thousand events a second coming: every
/// event arrives exactly once, in order, across every seam.
#[tokio::test]
async fn resuming_under_a_stream_of_events_loses_nothing_and_repeats_nothing() {
    let app = TestApp::spawn_with(|config| {
        config.link_dead_grace_secs = 30;
        config.outbound_queue = 8192;
    })
    .await;
    let mut bob = app.join("Bob").await;
    let room = RoomId::parse(&bob.room).unwrap();
    let nats = app.outside_client().await;
    let total = 6000u32;
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            let (subject, payload) = stranger_says(&room, &n.to_string());
            nats.publish(subject, payload).await.unwrap();
            if n % 30 == 29 {
                // ~3,000 a second.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        nats.flush().await.unwrap();
    });
    let mut next = 0u32;
    let mut position: Option<String> = None;
    let mut drops = 0;
    while next < total {
        if next >= (drops + 1) * 900 && drops < 5 {
            // Drop without a word, then come back from the last position seen.
            let account = bob.account.clone();
            drop(bob);
            drops += 1;
            tokio::time::sleep(Duration::from_millis(50 * drops as u64)).await;
            let since = position.clone().expect("a position to resume from");
            bob = resume_at(&app.addr.to_string(), &account, &since).await;
            let answer = resumed(&mut bob).await;
            assert_eq!(answer.data["recovered"], true, "{answer:?}");
            continue;
        }
        let frame = match bob.next_within(WAIT).await {
            Some(Received::Frame(frame)) => frame,
            other => panic!("expected event {next}, got {other:?}"),
        };
        if frame.event_type != EventType::ChatMessage {
            continue;
        }
        assert_eq!(
            frame.data_str("message"),
            next.to_string(),
            "lost or repeated at a seam: {frame:?}"
        );
        position = frame.position.clone();
        next += 1;
    }
    assert_eq!(drops, 5);
    publisher.await.unwrap();
    bob.expect_silence().await;
}

#[tokio::test]
async fn when_the_grace_ends_the_player_leaves_once_and_cannot_resume() {
    let app = TestApp::spawn_with(|config| {
        config.link_dead_grace_secs = 1;
        config.node_ttl_secs = 1;
    })
    .await;
    let [mut alice, mut bob] = app.join_all(["Alice", "Bob"]).await;
    alice.command("say hello").await;
    let since = bob.until(EventType::ChatMessage).await.position.unwrap();
    alice.expect(EventType::CommandResponse).await;
    let account = bob.account.clone();
    drop(bob);
    let left = alice.expect(EventType::PlayerLeftGame).await;
    assert_eq!(left.data_str("player_name"), "Bob");
    alice.expect_silence().await;
    let mut bob = resume_at(&app.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], false, "{answer:?}");
    assert_eq!(answer.data["reason"], "left_the_game");
    // Back in the game, announced as a newcomer.
    alice.expect(EventType::PlayerEnteredGame).await;
}

#[tokio::test]
async fn quitting_leaves_at_once_even_with_a_grace() {
    let app = TestApp::spawn_with(with_grace(30)).await;
    let [mut alice, mut bob] = app.join_all(["Alice", "Bob"]).await;
    bob.command("quit").await;
    bob.expect_closed_with(1000).await;
    let left = alice.expect(EventType::PlayerLeftGame).await;
    assert_eq!(left.data_str("player_name"), "Bob");
}

#[tokio::test]
async fn a_position_past_the_window_or_from_another_epoch_is_not_recovered() {
    let app = TestApp::spawn_with(|config| {
        config.link_dead_grace_secs = 30;
        config.stream_max_age_secs = 1;
    })
    .await;
    let [mut alice, mut bob] = app.join_all(["Alice", "Bob"]).await;
    alice.command("say soon gone").await;
    let since = bob.until(EventType::ChatMessage).await.position.unwrap();
    alice.expect(EventType::CommandResponse).await;
    let account = bob.account.clone();
    drop(bob);
    alice.command("say also gone").await;
    alice.expect(EventType::CommandResponse).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bob = resume_at(&app.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], false, "{answer:?}");
    assert_eq!(answer.data["reason"], "window_exceeded");
    // The fresh game_state stands and live events follow.
    alice.command("say now").await;
    assert_eq!(
        bob.until(EventType::ChatMessage).await.data_str("message"),
        "Alice says: now"
    );

    // The stream goes (deleted here; a memory stream also goes with a NATS restart) and
    // is created again by the next publish: a new epoch.
    alice.command("say before the end").await;
    let since = bob.until(EventType::ChatMessage).await.position.unwrap();
    let js = async_nats::jetstream::new(app.outside_client().await);
    js.delete_stream(SubjectPrefix::default().stream_name())
        .await
        .unwrap();
    drop(bob);
    alice.command("say into a new stream").await;
    alice.until(EventType::CommandResponse).await;
    let mut bob = resume_at(&app.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], false, "{answer:?}");
    assert_eq!(answer.data["reason"], "epoch_changed");

    drop(bob);
    let mut bob = resume_at(&app.addr.to_string(), &account, "not-a-position").await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["reason"], "invalid_position", "{answer:?}");
}

#[tokio::test]
async fn too_many_missed_events_are_not_sent() {
    let app = TestApp::spawn_with(|config| {
        config.link_dead_grace_secs = 30;
        config.resume_max_missed = 3;
    })
    .await;
    let [mut alice, mut bob] = app.join_all(["Alice", "Bob"]).await;
    alice.command("say start").await;
    let since = bob.until(EventType::ChatMessage).await.position.unwrap();
    alice.expect(EventType::CommandResponse).await;
    let account = bob.account.clone();
    drop(bob);
    for n in 0..5 {
        alice.command(&format!("say {n}")).await;
        alice.expect(EventType::CommandResponse).await;
    }
    let mut bob = resume_at(&app.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], false, "{answer:?}");
    assert_eq!(answer.data["reason"], "too_many");
}

/// A player whose node is gone resumes on another node of the world: the grace counts from
/// when the node is found dead, and the missed events come from the shared stream.
#[tokio::test]
async fn a_player_resumes_on_another_node_when_its_node_dies() {
    let grace = |config: &mut natsmud::Config| {
        config.link_dead_grace_secs = 30;
        config.node_ttl_secs = 1;
    };
    let a = TestApp::spawn_with(grace).await;
    let mut b = a.another_node(grace).await;
    let mut alice = a.join("Alice").await;
    let account = b.register("Bob").await;
    let mut bob = b.connect(&account).await;
    bob.expect(EventType::GameState).await;
    alice.until(EventType::PlayerEnteredGame).await;
    alice.command("say before").await;
    let since = bob.until(EventType::ChatMessage).await.position.unwrap();
    alice.expect(EventType::CommandResponse).await;
    // Bob's node stops without a word to anyone (its heartbeat simply stops).
    b.stop().await;
    drop(bob);
    alice.command("say while you were away").await;
    alice.expect(EventType::CommandResponse).await;
    // Found dead after the heartbeat's TTL; still nobody sees Bob go.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut bob = resume_at(&a.addr.to_string(), &account, &since).await;
    let answer = resumed(&mut bob).await;
    assert_eq!(answer.data["recovered"], true, "{answer:?}");
    assert_eq!(answer.data["missed"], 1, "{answer:?}");
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data_str("message"),
        "Alice says: while you were away"
    );
    alice.expect_silence().await;
}

/// A node whose NATS server goes away reconnects to another server of the cluster and
/// catches its players up from the stream on what other nodes published meanwhile: every
/// event once, in order. (If it cannot, it closes them with 4008 `events_lost` and they
/// resume: nothing is lost silently either way; the test says which happened.)
#[tokio::test]
async fn a_node_that_loses_its_nats_server_catches_its_players_up() {
    let mut cluster = common::NatsCluster::start(3).await;
    // Node A knows only server 0 (it learns the others from the cluster); node B only
    // servers 1 and 2, so that losing server 0 touches node A alone.
    let urls_a = cluster.servers[0].url.clone();
    let urls_b = format!("{},{}", cluster.servers[1].url, cluster.servers[2].url);
    let a = TestApp::spawn_with(move |config| {
        config.nats_url = urls_a;
        config.link_dead_grace_secs = 60;
    })
    .await;
    let b = a.another_node(move |config| config.nats_url = urls_b).await;
    let mut bob = b.join("Bob").await;
    let account = a.register("Alice").await;
    let mut alice = a.connect(&account).await;
    let greeting = alice.expect(EventType::GameState).await;
    bob.until(EventType::PlayerEnteredGame).await;

    cluster.servers[0].stop();
    let total = 30;
    let speaker = tokio::spawn(async move {
        let mut said = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while said < total {
            let reply = bob.reply(&format!("say {said}")).await;
            if reply.event_type == EventType::CommandResponse
                && reply.data_str("result").starts_with("You say")
            {
                said += 1;
            } else {
                // The event bus is electing (NATS cluster): try again.
                assert!(tokio::time::Instant::now() < deadline, "{reply:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        bob
    });
    let mut next = 0;
    // The last position received, as a client keeps it: the greeting's until an event
    // comes (the node may lose NATS before Bob's first word reaches Alice).
    let mut position: Option<String> = greeting.position.clone();
    let mut resumed_after_close = false;
    while next < total {
        match alice.next_within(Duration::from_secs(30)).await {
            Some(Received::Frame(frame)) => {
                if frame.position.is_some() {
                    position = frame.position.clone();
                }
                if frame.event_type != EventType::ChatMessage {
                    continue;
                }
                assert_eq!(
                    frame.data_str("message"),
                    format!("Bob says: {next}"),
                    "{frame:?}"
                );
                next += 1;
            }
            Some(Received::Closed(close)) => {
                let (code, reason) = close.expect("a close frame with a reason");
                assert_eq!(code, 4008, "{reason}");
                assert!(reason.starts_with("events_lost"), "{reason}");
                let since = position.clone().expect("a position");
                // While the cluster elects the stream's leader the stream may not answer
                // (`unavailable`): a client tries again from the same position.
                let mut tries = 0;
                alice = loop {
                    let mut again = resume_at(&a.addr.to_string(), &account, &since).await;
                    let answer = resumed(&mut again).await;
                    if answer.data["recovered"] == true {
                        break again;
                    }
                    assert_eq!(answer.data["reason"], "unavailable", "{answer:?}");
                    tries += 1;
                    assert!(tries < 40, "the stream never answered");
                    drop(again);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                resumed_after_close = true;
            }
            None => panic!("Alice heard {next} of {total}"),
        }
    }
    let _bob = speaker.await.unwrap();
    println!(
        "CATCH_UP: {}",
        if resumed_after_close {
            "closed with events_lost, then resumed"
        } else {
            "caught up without a close"
        }
    );
    alice.expect_silence().await;
}
