//! Proof that NATS is the path: events published on NATS by someone else reach sockets,
//! players on two nodes sharing one NATS see each other, and the server rides out NATS
//! going away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{NatsServer, TestApp};
use natsmud_protocol::envelope::PresenceData;
use natsmud_protocol::{Envelope, EventType, PlayerId, RoomId, Subject, SubjectPrefix};
use serde_json::{Value, json};

async fn outside_client(url: &str) -> async_nats::Client {
    async_nats::connect(url)
        .await
        .expect("test connects to its nats-server")
}

fn stranger_entering(room: &str) -> Envelope<PresenceData> {
    Envelope::new(
        EventType::PlayerEntered,
        PresenceData {
            player_id: PlayerId::parse("stranger-1").unwrap(),
            player_name: "Stranger".to_owned(),
            message: "Stranger enters the room.".to_owned(),
        },
    )
    .in_room(RoomId::parse(room).unwrap())
    .by_player(PlayerId::parse("stranger-1").unwrap())
}

#[tokio::test]
async fn an_event_published_on_nats_from_outside_reaches_the_rooms_sockets() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    // Carol stands elsewhere and must not hear it.
    let mut carol = app.join("Carol").await;
    let (direction, _) = common::some_exit(&alice.room);
    carol.ask(&format!("go {direction}")).await;
    while alice.next_within(common::QUIET).await.is_some() {}
    while bob.next_within(common::QUIET).await.is_some() {}

    let nats = outside_client(&app.nats.url).await;
    let room = RoomId::parse(&alice.room).unwrap();
    let subject = Subject::player_entered(&room).render(&SubjectPrefix::default());
    assert_eq!(subject, format!("events.player_entered.{}", alice.room));
    nats.publish(subject, stranger_entering(&alice.room).to_bytes())
        .await
        .unwrap();
    nats.flush().await.unwrap();

    for player in [&mut alice, &mut bob] {
        let frame = player.expect(EventType::PlayerEntered).await;
        assert_eq!(frame.data["message"], "Stranger enters the room.");
        assert_eq!(frame.player_id.as_deref(), Some("stranger-1"));
        assert!(frame.sequence_number > 0);
        player.expect_silence().await;
    }
    carol.expect_silence().await;
}

#[tokio::test]
async fn a_subject_prefix_separates_worlds_on_one_nats() {
    let app = TestApp::spawn_with(|config| {
        config.subject_prefix = SubjectPrefix::parse("world1").unwrap();
    })
    .await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let room = RoomId::parse(&alice.room).unwrap();
    let envelope = stranger_entering(&alice.room).to_bytes();

    nats.publish(
        Subject::player_entered(&room).render(&SubjectPrefix::default()),
        envelope.clone(),
    )
    .await
    .unwrap();
    nats.publish(
        format!("world2.events.player_entered.{room}"),
        envelope.clone(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    alice.expect_silence().await;

    let world1 = SubjectPrefix::parse("world1").unwrap();
    nats.publish(Subject::player_entered(&room).render(&world1), envelope)
        .await
        .unwrap();
    assert_eq!(
        alice.expect(EventType::PlayerEntered).await.data["player_name"],
        "Stranger"
    );

    // The server's own events use the prefix too.
    let mut listener = common::subscribe_ready(&nats, "world1.chat.say.>").await;
    nats.flush().await.unwrap();
    let reply = alice.ask("say prefixed").await;
    assert_eq!(reply.event_type, EventType::CommandResponse, "{reply:?}");
    let message = tokio::time::timeout(common::WAIT, futures::StreamExt::next(&mut listener))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.subject.as_str(), format!("world1.chat.say.{room}"));
}

#[tokio::test]
async fn malformed_events_on_nats_are_dropped_and_delivery_goes_on() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let subject = format!("chat.say.{}", alice.room);
    let junk: Vec<(String, Vec<u8>)> =
        [&b"not json"[..], b"[1,2,3]", b"{\"no_event_type\":1}", b""]
            .iter()
            .map(|junk| (subject.clone(), junk.to_vec()))
            .collect();
    publish_then_one_for(&nats, &junk, &mut alice).await;
    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (1): Alice"
    );
    // (At least: tests in one process share the metrics.)
    assert!(
        app.metric("natsmud_events_rejected_total{reason=\"malformed\"}")
            .await
            >= 4.0
    );
}

/// Anyone who can publish on NATS can publish on the world's subjects: what reaches a
/// socket is only what a client can rely on.
#[tokio::test]
async fn events_from_nats_are_checked_before_they_reach_a_socket() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let room = alice.room.clone();
    let stranger = || serde_json::to_value(stranger_entering(&room)).unwrap();
    let mut refused: Vec<(String, Value, &str)> = Vec::new();

    let mut no_data = stranger();
    no_data.as_object_mut().unwrap().remove("data");
    refused.push((
        format!("events.player_entered.{room}"),
        no_data,
        "malformed",
    ));
    let mut array_data = stranger();
    array_data["data"] = json!(["stranger-1", "Stranger", "x"]);
    refused.push((
        format!("events.player_entered.{room}"),
        array_data,
        "malformed",
    ));
    // A departure published on a chat subject would take a player off others' lists.
    let mut left = stranger();
    left["event_type"] = json!("player_left");
    refused.push((format!("chat.say.{room}"), left.clone(), "wrong_kind"));
    refused.push((format!("events.player_entered.{room}"), left, "wrong_kind"));
    let mut elsewhere = stranger();
    elsewhere["room_id"] = json!("somewhere_else");
    refused.push((
        format!("events.player_entered.{room}"),
        elsewhere,
        "room_mismatch",
    ));
    let mut someone_else = stranger();
    someone_else["player_id"] = json!(alice.id);
    refused.push((
        format!("events.player_entered.{room}"),
        someone_else,
        "actor_mismatch",
    ));
    let mut numbered = stranger();
    numbered["sequence_number"] = json!(999_999);
    refused.push((
        format!("events.player_entered.{room}"),
        numbered,
        "numbered",
    ));
    let mut huge = stranger();
    huge["data"]["message"] = json!("x".repeat(512 * 1024));
    refused.push((format!("events.player_entered.{room}"), huge, "too_large"));
    let before = app.metric("natsmud_events_rejected_total").await;
    for (subject, payload, _) in &refused {
        nats.publish(subject.clone(), payload.to_string().into())
            .await
            .unwrap();
    }
    nats.publish(
        format!("events.player_entered.{room}"),
        stranger_entering(&room).to_bytes(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();

    // Only the well-formed event arrives.
    let frame = alice.expect(EventType::PlayerEntered).await;
    assert_eq!(frame.data["player_name"], "Stranger");
    let text = serde_json::to_string(&frame).unwrap();
    assert!(text.contains("Stranger enters the room."));
    alice.expect_silence().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.metric("natsmud_events_rejected_total").await < before + refused.len() as f64 {
        assert!(Instant::now() < deadline, "not every refusal was counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reason in [
        "malformed",
        "wrong_kind",
        "room_mismatch",
        "actor_mismatch",
        "numbered",
        "too_large",
    ] {
        let expected = refused.iter().filter(|(_, _, r)| *r == reason).count() as f64;
        let counted = app
            .metric(&format!(
                "natsmud_events_rejected_total{{reason=\"{reason}\"}}"
            ))
            .await;
        assert!(counted >= expected, "{reason}: {counted} < {expected}");
    }
}

/// Messages the node's NATS client has received so far.
async fn in_messages(app: &TestApp) -> u64 {
    app.get("/health").await.1["nats_traffic"]["in_messages"]
        .as_u64()
        .unwrap()
}

fn invented_room_events(room: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|n| {
            let mut invented = serde_json::to_value(stranger_entering(room)).unwrap();
            invented["room_id"] = json!(format!("invented_{n}"));
            let subject = format!("events.player_entered.invented_{n}");
            (subject, invented.to_string().into_bytes())
        })
        .collect()
}

/// Publishes `events`, then a stranger's arrival in `player`'s room, and checks that the
/// arrival, and nothing else, reaches the player.
async fn publish_then_one_for(
    nats: &async_nats::Client,
    events: &[(String, Vec<u8>)],
    player: &mut common::Player,
) {
    for (subject, payload) in events {
        nats.publish(subject.clone(), payload.clone().into())
            .await
            .unwrap();
    }
    nats.publish(
        format!("events.player_entered.{}", player.room),
        stranger_entering(&player.room).to_bytes(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let frame = player.expect(EventType::PlayerEntered).await;
    assert_eq!(frame.data["player_name"], "Stranger");
    player.expect_silence().await;
}

/// A node subscribes to the rooms its players are in: events for any other room, real or
/// invented, are never even delivered to it by NATS.
#[tokio::test]
async fn events_for_rooms_without_the_nodes_players_never_reach_it() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let received_before = in_messages(&app).await;
    let (_, other_room) = common::some_exit(&alice.room);
    let mut published = invented_room_events(&alice.room, 2000);
    for _ in 0..500 {
        let mut elsewhere = serde_json::to_value(stranger_entering(&other_room)).unwrap();
        elsewhere["room_id"] = json!(other_room);
        published.push((
            format!("events.player_entered.{other_room}"),
            elsewhere.to_string().into_bytes(),
        ));
    }
    publish_then_one_for(&nats, &published, &mut alice).await;
    let received = in_messages(&app).await - received_before;
    // The one event for Alice's room, plus the node's own heartbeats and presence traffic.
    assert!(
        received < 100,
        "{received} messages reached the node for 2,501 published"
    );
}

/// With `--subscriptions all` the node hears every room; events for rooms the world does
/// not have are refused before anything is numbered or kept for them.
#[tokio::test]
async fn a_node_hearing_everything_refuses_rooms_the_world_lacks() {
    let app = TestApp::spawn_with(|config| {
        config.subscriptions = natsmud::realtime::SubscriptionMode::All;
    })
    .await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let before = app
        .metric("natsmud_events_rejected_total{reason=\"unknown_place\"}")
        .await;
    let invented = invented_room_events(&alice.room, 2000);
    publish_then_one_for(&nats, &invented, &mut alice).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let wanted = before + invented.len() as f64;
    while app
        .metric("natsmud_events_rejected_total{reason=\"unknown_place\"}")
        .await
        < wanted
    {
        assert!(
            Instant::now() < deadline,
            "not every unknown place was counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On a NATS shared with other applications (no subject prefix), their traffic never
/// reaches the node: it subscribes to its own subjects only.
#[tokio::test]
async fn other_traffic_on_a_shared_nats_never_reaches_the_node() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let nats = outside_client(&app.nats.url).await;
    let received_before = in_messages(&app).await;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    for n in 0..50_000u32 {
        let subject = match n % 3 {
            0 => "orders.created".to_owned(),
            1 => format!("telemetry.host{}.cpu", n % 97),
            _ => "a.b.c.d.e".to_owned(),
        };
        nats.publish(subject, payload.clone()).await.unwrap();
    }
    nats.publish(
        format!("events.player_entered.{}", alice.room),
        stranger_entering(&alice.room).to_bytes(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    alice.expect(EventType::PlayerEntered).await;
    let received = in_messages(&app).await - received_before;
    assert!(received < 100, "the node received {received} messages");
    assert_eq!(app.metric("natsmud_nats_slow_consumer_total").await, 0.0);
    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (1): Alice"
    );
}

#[tokio::test]
async fn players_on_two_nodes_sharing_one_nats_hear_each_other() {
    let node_a = TestApp::spawn().await;
    let nats_url = node_a.nats.url.clone();
    let shared_dir = node_a.data_dir.path().to_path_buf();
    // Node B: its own process state, the same NATS and the same account database.
    let node_b = TestApp::spawn_with(|config| {
        config.nats_url = nats_url;
        config.data_dir = shared_dir;
    })
    .await;

    let mut alice = node_a.join("Alice").await;
    let bob_account = node_a.register("Bob").await;
    let mut bob = node_b.connect(&bob_account).await;
    bob.expect(EventType::GameState).await;
    let entered = alice.expect(EventType::PlayerEnteredGame).await;
    assert_eq!(entered.data["player_name"], "Bob");

    bob.ask("say hello from node b").await;
    assert_eq!(
        alice.expect(EventType::ChatMessage).await.data["message"],
        "Bob says: hello from node b"
    );
    alice.ask("say hello from node a").await;
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice says: hello from node a"
    );
    alice.expect_silence().await;
    bob.expect_silence().await;
}

#[tokio::test]
async fn nats_going_away_fails_fast_and_the_server_recovers_when_it_returns() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    assert_eq!(app.get("/health").await.1["nats"], "connected");

    let port = app.nats.port;
    app.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/health").await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/health never reported NATS down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/health").await.1["status"], "degraded");

    let asked = Instant::now();
    alice.command("say is anyone there?").await;
    alice.expect_error("event_bus_unavailable").await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the error must not wait for NATS"
    );
    // Commands that need no other player still work, and the socket stays open.
    assert!(alice.ask("look").await.data_str("result").contains("Exits"));

    app.nats = NatsServer::start_on(Some(port));
    // Cut off from NATS, the node may have missed events: its players are told so and
    // reconnect, rather than carry on silently behind.
    for player in [&mut alice, &mut bob] {
        let reason = player.expect_closed_with(4008).await;
        assert!(reason.starts_with("events_lost"), "{reason}");
    }
    app.wait_until_ready(Duration::from_secs(15)).await;
    let mut alice = app.rejoin(&alice).await;
    let mut bob = app.rejoin(&bob).await;
    // (Bob's closed connection may announce his departure before he is back.)
    while alice.next_frame().await.event_type != EventType::PlayerEnteredGame {}
    // The subscriptions are restored: chat flows again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        alice.command("say back again").await;
        let reply = alice.next_frame().await;
        if reply.event_type == EventType::CommandResponse {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing never recovered: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice says: back again"
    );
}

/// Core NATS delivers at most once: what other connections publish while this node is
/// cut off never reaches it. Its players must learn that, not sit on a quiet socket.
#[tokio::test]
async fn a_node_that_missed_events_while_cut_off_closes_its_players_with_events_lost() {
    let mut app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let port = app.nats.port;
    app.nats.stop();
    app.nats = NatsServer::start_on(Some(port));
    // Published on the restarted NATS at once, most likely before natsmud is back on it.
    let nats = outside_client(&app.nats.url).await;
    nats.publish(
        format!("events.player_entered.{}", alice.room),
        stranger_entering(&alice.room).to_bytes(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let close = loop {
        assert!(Instant::now() < deadline, "Alice was left open and behind");
        match alice.next_within(Duration::from_secs(1)).await {
            Some(common::Received::Closed(close)) => break close,
            Some(common::Received::Frame(_)) | None => continue,
        }
    };
    let (code, reason) = close.unwrap();
    assert_eq!(code, 4008);
    assert!(reason.starts_with("events_lost"), "{reason}");
    // Her player reconnects and is back in the world.
    let mut alice = app.rejoin(&alice).await;
    assert!(alice.ask("look").await.data_str("result").contains("Exits"));
}

/// A burst from one publisher, alternating a room's `events.` and `chat.` subjects, reaches
/// the room in the order it was published, however many messages wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_both_subject_families_arrives_in_publish_order() {
    burst_in_publish_order(natsmud::realtime::SubscriptionMode::Interest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_both_subject_families_arrives_in_publish_order_hearing_everything() {
    burst_in_publish_order(natsmud::realtime::SubscriptionMode::All).await;
}

async fn burst_in_publish_order(mode: natsmud::realtime::SubscriptionMode) {
    // Room for the whole burst in Alice's queue: this is about order, not slow readers.
    let app = TestApp::spawn_with(|config| {
        config.outbound_queue = 8192;
        config.subscriptions = mode;
    })
    .await;
    let mut alice = app.join("Alice").await;
    let room = RoomId::parse(&alice.room).unwrap();
    let nats = outside_client(&app.nats.url).await;
    let burst = 3000u64;
    for n in 0..burst {
        let stranger = PlayerId::parse(&format!("stranger-{n}")).unwrap();
        let (subject, payload) = if n % 2 == 0 {
            let envelope = Envelope::new(
                EventType::PlayerLeft,
                PresenceData {
                    player_id: stranger.clone(),
                    player_name: "Stranger".to_owned(),
                    message: format!("{n}"),
                },
            )
            .in_room(room.clone())
            .by_player(stranger);
            (Subject::player_left(&room), envelope.to_bytes())
        } else {
            let envelope = Envelope::new(
                EventType::ChatMessage,
                natsmud_protocol::envelope::ChatMessageData {
                    channel: "say".into(),
                    sender_id: stranger.clone(),
                    player_name: "Stranger".into(),
                    message: format!("{n}"),
                    message_id: n.to_string(),
                    target_id: None,
                    target_name: None,
                    sub_zone: None,
                },
            )
            .in_room(room.clone())
            .by_player(stranger);
            (Subject::say(&room), envelope.to_bytes())
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            natsmud_protocol::ORDER_HEADER,
            format!("outside.{n}").as_str(),
        );
        nats.publish_with_headers(subject.render(&SubjectPrefix::default()), headers, payload)
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    for n in 0..burst {
        let frame = alice.next_frame().await;
        assert_eq!(
            frame.data_str("message"),
            n.to_string(),
            "out of order: {frame:?}"
        );
    }
}
