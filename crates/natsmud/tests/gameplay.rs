//! Players playing together over real sockets, with every event travelling through a real
//! nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use natsmud::realtime::SubscriptionMode;

use common::{TestApp, some_exit, world};
use natsmud_protocol::EventType;
use serde_json::json;

#[tokio::test]
async fn moving_tells_the_old_room_and_the_new_room_but_not_the_mover() {
    let app = TestApp::spawn().await;
    let start = world().start_room.to_string();
    let (direction, next_room) = some_exit(&start);

    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    let entered = alice.expect(EventType::PlayerEnteredGame).await;
    assert_eq!(entered.data["message"], "Bob has entered the game.");

    // Carol waits in the room Alice walks into.
    let mut carol = app.join("Carol").await;
    carol.ask(&format!("go {direction}")).await;
    alice.expect(EventType::PlayerEnteredGame).await;
    bob.expect(EventType::PlayerEnteredGame).await;
    alice.expect(EventType::PlayerLeft).await;
    bob.expect(EventType::PlayerLeft).await;

    alice.command(&format!("go {direction}")).await;
    let update = alice.expect(EventType::RoomUpdate).await;
    assert_eq!(update.room_id.as_deref(), Some(next_room.as_str()));
    assert_eq!(update.data["room"]["id"], next_room);
    assert_eq!(update.data["occupants"], json!(["Alice", "Carol"]));
    assert_eq!(update.data["occupant_count"], 2);
    assert!(update.data["room"]["exits"].is_object());

    let left = bob.expect(EventType::PlayerLeft).await;
    assert_eq!(left.room_id.as_deref(), Some(start.as_str()));
    assert_eq!(left.player_id.as_deref(), Some(alice.id.as_str()));
    assert_eq!(
        left.data,
        json!({"player_id": alice.id, "player_name": "Alice", "message": "Alice leaves the room."})
    );

    let arrived = carol.expect(EventType::PlayerEntered).await;
    assert_eq!(arrived.room_id.as_deref(), Some(next_room.as_str()));
    assert_eq!(
        arrived.data,
        json!({"player_id": alice.id, "player_name": "Alice", "message": "Alice enters the room."})
    );

    // Nobody gets anything else: no echo to Alice, no duplicate anywhere.
    alice.expect_silence().await;
    bob.expect_silence().await;
    carol.expect_silence().await;
}

#[tokio::test]
async fn say_emote_and_pose_reach_the_room_once_and_never_the_speaker() {
    let app = TestApp::spawn().await;
    let [mut alice, mut bob, mut carol] = app.join_all(["Alice", "Bob", "Carol"]).await;

    let reply = alice.ask("say hello all").await;
    assert_eq!(reply.event_type, EventType::CommandResponse);
    assert_eq!(reply.data["result"], "You say: hello all");
    for listener in [&mut bob, &mut carol] {
        let heard = listener.expect(EventType::ChatMessage).await;
        assert_eq!(heard.data["channel"], "say");
        assert_eq!(heard.data["message"], "Alice says: hello all");
        assert_eq!(heard.data["player_name"], "Alice");
        assert_eq!(heard.data["sender_id"], alice.id);
        assert!(!heard.data_str("message_id").is_empty());
        assert_eq!(heard.room_id.as_deref(), Some(alice.room.as_str()));
    }

    alice
        .send_json(json!({"type": "chat", "data": {"channel": "emote", "message": "waves"}}))
        .await;
    assert_eq!(alice.next_frame().await.data["result"], "Alice waves.");
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice waves."
    );
    assert_eq!(
        carol.expect(EventType::ChatMessage).await.data["message"],
        "Alice waves."
    );

    alice.command("pose leans on the well").await;
    alice.expect(EventType::CommandResponse).await;
    let posed = bob.expect(EventType::ChatMessage).await;
    assert_eq!(posed.data["channel"], "pose");
    assert_eq!(posed.data["message"], "Alice leans on the well");
    carol.expect(EventType::ChatMessage).await;

    for player in [&mut alice, &mut bob, &mut carol] {
        player.expect_silence().await;
    }
}

#[tokio::test]
async fn a_burst_of_200_events_arrives_complete_and_in_order() {
    let app = TestApp::spawn().await;
    let [mut alice, mut bob, mut carol] = app.join_all(["Alice", "Bob", "Carol"]).await;

    for i in 0..200 {
        alice.command(&format!("say {i}")).await;
    }
    for i in 0..200 {
        assert_eq!(
            alice.expect(EventType::CommandResponse).await.data["result"],
            format!("You say: {i}")
        );
    }
    for listener in [&mut bob, &mut carol] {
        let mut last_sequence = 0;
        for i in 0..200 {
            let frame = listener.expect(EventType::ChatMessage).await;
            assert_eq!(
                frame.data["message"],
                format!("Alice says: {i}"),
                "{} out of order",
                listener.name
            );
            assert!(
                frame.sequence_number > last_sequence,
                "sequence must increase: {frame:?}"
            );
            if last_sequence > 0 {
                assert_eq!(
                    frame.sequence_number,
                    last_sequence + 1,
                    "gap in the room's numbering"
                );
            }
            last_sequence = frame.sequence_number;
        }
        listener.expect_silence().await;
    }
}

#[tokio::test]
async fn whisper_reaches_only_its_target_and_reply_goes_back() {
    let app = TestApp::spawn().await;
    let [mut alice, mut bob, mut carol] = app.join_all(["Alice", "Bob", "Carol"]).await;

    let sent = alice.ask("whisper bob meet me at the pier").await;
    assert_eq!(
        sent.data["result"],
        "You whisper to Bob: meet me at the pier"
    );
    let heard = bob.expect(EventType::ChatMessage).await;
    assert_eq!(heard.data["channel"], "whisper");
    assert_eq!(
        heard.data["message"],
        "Alice whispers to you: meet me at the pier"
    );
    assert_eq!(heard.data["target_id"], bob.id);
    assert_eq!(heard.data["target_name"], "Bob");
    assert_eq!(heard.data["sender_id"], alice.id);
    carol.expect_silence().await;

    assert_eq!(
        bob.ask("reply on my way").await.data["result"],
        "You whisper to Alice: on my way"
    );
    assert_eq!(
        alice.expect(EventType::ChatMessage).await.data["message"],
        "Bob whispers to you: on my way"
    );
    carol.expect_silence().await;

    carol.command("reply hello?").await;
    carol.expect_error("no_reply_target").await;
    carol.command("whisper Nobody hi").await;
    carol.expect_error("player_not_found").await;
}

#[tokio::test]
async fn global_reaches_everyone_and_local_only_the_sub_zone() {
    let app = TestApp::spawn().await;
    let world = world();
    let start = world.start();
    // Dave walks until he is in another sub-zone than the start room.
    let (far_direction, far_room) = {
        let mut found = None;
        for (direction, target) in &start.exits {
            if world.room(target.as_str()).unwrap().sub_zone != start.sub_zone {
                found = Some((direction.clone(), target.clone()));
            }
        }
        found.expect("the start room borders another sub-zone")
    };
    let near = start.exits.iter().find(|(_, target)| {
        world.room(target.as_str()).unwrap().sub_zone == start.sub_zone && *target != &far_room
    });

    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    let mut dave = app.join("Dave").await;
    dave.ask(&format!("go {far_direction}")).await;
    if let Some((direction, _)) = near {
        // Bob is in the same sub-zone but another room: local still reaches him.
        bob.ask(&format!("go {direction}")).await;
    }
    // Drain the arrival and movement notices.
    while alice.next_within(common::QUIET).await.is_some() {}
    while bob.next_within(common::QUIET).await.is_some() {}
    while dave.next_within(common::QUIET).await.is_some() {}

    assert_eq!(
        alice.ask("local anyone near the square?").await.data["result"],
        "You say (local): anyone near the square?"
    );
    let heard = bob.expect(EventType::ChatMessage).await;
    assert_eq!(heard.data["channel"], "local");
    // The sub-zone is the stream local chat is numbered in.
    assert_eq!(heard.data["sub_zone"], start.sub_zone.as_str());
    assert_eq!(
        heard.data["message"],
        "Alice says (local): anyone near the square?"
    );
    dave.expect_silence().await;
    alice.expect_silence().await;

    alice.ask("global hello world").await;
    for listener in [&mut bob, &mut dave] {
        let heard = listener.expect(EventType::ChatMessage).await;
        assert_eq!(heard.data["channel"], "global");
        assert_eq!(heard.data["message"], "Alice says (global): hello world");
    }
    alice.expect_silence().await;
}

#[tokio::test]
async fn who_look_help_and_quit() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let mut bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;

    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (2): Alice, Bob"
    );
    let look = alice.ask("l").await.data_str("result").to_owned();
    let start = world();
    assert!(look.starts_with(&start.start().name), "{look}");
    assert!(look.contains("Here: Alice, Bob"), "{look}");
    assert!(
        alice
            .ask("help")
            .await
            .data_str("result")
            .contains("whisper")
    );

    let bye = bob.ask("quit").await;
    assert_eq!(bye.event_type, EventType::CommandResponse);
    assert_eq!(bob.expect_close().await.map(|(code, _)| code), Some(1000));
    let left = alice.expect(EventType::PlayerLeftGame).await;
    assert_eq!(left.data["message"], "Bob has left the game.");
    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (1): Alice"
    );
}

#[tokio::test]
async fn a_second_login_replaces_the_first_connection() {
    let app = TestApp::spawn().await;
    common::a_second_login_replaces_the_first(&app, &app).await;
}

#[tokio::test]
async fn disconnecting_leaves_no_ghost() {
    let app = TestApp::spawn().await;
    let mut alice = app.join("Alice").await;
    let bob = app.join("Bob").await;
    alice.expect(EventType::PlayerEnteredGame).await;
    drop(bob);
    let left = alice.expect(EventType::PlayerLeftGame).await;
    assert_eq!(left.data["player_name"], "Bob");
    assert_eq!(
        alice.ask("who").await.data["result"],
        "Players online (1): Alice"
    );
    let look = alice.ask("look").await;
    assert!(!look.data_str("result").contains("Bob"));
}

/// The mover's `room_update` comes before any event of the room it enters and says where
/// that room's numbering stands, so that nothing is lost unseen right after a move: the
/// first event of the new room is the next number, even while the room is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_answers_before_any_event_of_the_new_room_and_says_where_its_numbering_stands() {
    let app = TestApp::spawn().await;
    let start = world().start_room.to_string();
    let (there, busy_room) = some_exit(&start);
    let back = world()
        .room(&busy_room)
        .unwrap()
        .exits
        .iter()
        .find(|(_, target)| target.as_str() == start)
        .map(|(direction, _)| direction.clone())
        .expect("the exit leads back");
    let mut alice = app.join("Alice").await;

    // Someone on another NATS connection talks in the busy room steadily.
    let nats = app.outside_client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    // About 4,000 a second: dozens of events of the new room during each move, and no
    // more than a test client starved of CPU (tests run in parallel) reads; faster, and it
    // is cut off as a slow consumer, rightly.
    let talker = common::talk_until(nats, busy_room.clone(), 20, stop.clone());

    for _ in 0..15 {
        alice.command(&format!("go {there}")).await;
        // Until the room_update, only frames of the old room (or none) may come.
        let update = loop {
            let frame = alice.next_frame().await;
            if frame.event_type == EventType::RoomUpdate {
                break frame;
            }
            assert_ne!(
                frame.room_id.as_deref(),
                Some(busy_room.as_str()),
                "{frame:?}"
            );
        };
        assert_eq!(update.room_id.as_deref(), Some(busy_room.as_str()));
        let mut expected = update.data["room_sequence"]
            .as_u64()
            .expect("room_update names the room's number");
        // Alice's own arrival takes one number she does not see; nothing else may be missing.
        let mut skipped_own = false;
        for _ in 0..20 {
            let frame = alice.next_frame().await;
            assert_eq!(
                frame.room_id.as_deref(),
                Some(busy_room.as_str()),
                "{frame:?}"
            );
            if frame.sequence_number == expected + 2 && !skipped_own {
                skipped_own = true;
                expected += 1;
            }
            assert_eq!(
                frame.sequence_number,
                expected + 1,
                "a gap after the move: {frame:?}"
            );
            expected = frame.sequence_number;
        }
        alice.command(&format!("go {back}")).await;
        loop {
            let frame = alice.next_frame().await;
            if frame.event_type == EventType::RoomUpdate {
                assert_eq!(frame.room_id.as_deref(), Some(start.as_str()));
                break;
            }
        }
        // Nothing of the busy room after leaving it (but what was already on its way).
        while let Some(common::Received::Frame(frame)) = alice.next_within(common::QUIET).await {
            assert_ne!(
                frame.room_id.as_deref(),
                Some(busy_room.as_str()),
                "{frame:?}"
            );
        }
    }
    stop.cancel();
    talker.await.unwrap();
}

/// A move either happens for everyone or not at all: with NATS going away in the middle of
/// a stream of moves, each is answered by `room_update` (it happened) or an error (nothing
/// changed), and the player is where the answers say — in the node's memory and in the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_all_or_nothing_when_nats_fails_mid_command() {
    let mut app = TestApp::spawn().await;
    let start = world().start_room.to_string();
    let (there, next) = some_exit(&start);
    let back = world()
        .room(&next)
        .unwrap()
        .exits
        .iter()
        .find(|(_, target)| target.as_str() == start)
        .map(|(direction, _)| direction.clone())
        .expect("the exit leads back");
    let mut alice = app.join("Alice").await;
    let moves = 400;
    for n in 0..moves {
        let direction = if n % 2 == 0 { &there } else { &back };
        alice.command(&format!("go {direction}")).await;
    }
    // NATS goes away while the moves are being run.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let port = app.nats.port;
    app.nats.stop();

    let mut at = start.clone();
    let (mut moved, mut refused) = (0, 0);
    let mut answered = 0;
    while answered < moves {
        let frame = alice.next_frame().await;
        match frame.event_type {
            EventType::RoomUpdate => {
                at = frame.room_id.clone().unwrap();
                moved += 1;
                answered += 1;
            }
            EventType::Error => {
                let code = frame.data_str("code");
                assert!(
                    code == "event_bus_unavailable" || code == "no_exit",
                    "{frame:?}"
                );
                refused += 1;
                answered += 1;
            }
            // A move that stood but whose arrival could not be announced says so.
            EventType::CommandResponse => {
                assert!(
                    frame.data_str("result").contains("nobody here noticed"),
                    "{frame:?}"
                )
            }
            other => panic!("unexpected {other:?}: {frame:?}"),
        }
    }
    assert!(moved > 0 && refused > 0, "moved {moved}, refused {refused}");
    let look = alice.ask("look").await;
    let room_name = world().room(&at).unwrap().name.clone();
    assert!(
        look.data_str("result").starts_with(room_name.as_str()),
        "{look:?} vs {at}"
    );

    // Back on NATS, the node closes Alice (events may have been lost); the database puts
    // her where the answers said.
    app.nats = common::NatsServer::start_on(Some(port));
    alice.expect_closed_with(4008).await;
    let alice = app.rejoin(&alice).await;
    assert_eq!(alice.room, at);
}

/// A command still running on a replaced connection never acts on the connection that
/// replaced it: a login waits for the old connection's move to finish, and what the new
/// connection is told matches where the player is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_never_moves_the_player_of_its_successor() {
    let app = TestApp::spawn().await;
    let start = world().start_room.to_string();
    let (there, next) = some_exit(&start);
    let back = world()
        .room(&next)
        .unwrap()
        .exits
        .iter()
        .find(|(_, target)| target.as_str() == start)
        .map(|(direction, _)| direction.clone())
        .expect("the exit leads back");
    let mut alice = app.join("Alice").await;
    for n in 0..20 {
        let direction = if alice.room == start { &there } else { &back };
        // The move and the new login race.
        alice.command(&format!("go {direction}")).await;
        if n % 2 == 0 {
            tokio::time::sleep(std::time::Duration::from_micros(200 * (n as u64 % 5))).await;
        }
        let mut successor = app.rejoin(&alice).await;
        let look = successor.ask("look").await;
        let told = world().room(&successor.room).unwrap().name.clone();
        assert!(
            look.data_str("result").starts_with(told.as_str()),
            "told {} but in {:?}",
            successor.room,
            look.data_str("result")
        );
        assert_eq!(
            alice.expect_closed_with(4001).await,
            "logged in from another connection"
        );
        alice = successor;
    }
}

/// A room's events travel on `events.` and `chat.` subjects; what one player does must
/// reach the others in the order done, whether the node hears the room on one
/// subscription (by interest) or on two (`--subscriptions all`, where the publish-order
/// stamps restore it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_players_speech_and_moves_reach_each_room_in_the_order_done() {
    speech_and_moves_in_order(SubscriptionMode::Interest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_players_speech_and_moves_reach_each_room_in_the_order_done_hearing_everything() {
    speech_and_moves_in_order(SubscriptionMode::All).await;
}

async fn speech_and_moves_in_order(mode: SubscriptionMode) {
    let app = TestApp::spawn_with(|config| config.subscriptions = mode).await;
    let start = world().start_room.to_string();
    let (there, next) = some_exit(&start);
    let back = world()
        .room(&next)
        .unwrap()
        .exits
        .iter()
        .find(|(_, target)| target.as_str() == start)
        .map(|(direction, _)| direction.clone())
        .expect("the exit leads back");
    let [mut alice, mut bob, mut carol] = app.join_all(["Alice", "Bob", "Carol"]).await;
    carol.ask(&format!("go {there}")).await;
    while alice.next_within(common::QUIET).await.is_some() {}
    while bob.next_within(common::QUIET).await.is_some() {}
    while carol.next_within(common::QUIET).await.is_some() {}

    let rounds = 60;
    for n in 0..rounds {
        alice.command(&format!("say bye {n}")).await;
        alice.command(&format!("go {there}")).await;
        alice.command(&format!("say hi {n}")).await;
        alice.command(&format!("go {back}")).await;
    }
    let mut expected_bob = Vec::new();
    let mut expected_carol = Vec::new();
    for n in 0..rounds {
        expected_bob.push(format!("Alice says: bye {n}"));
        expected_bob.push("Alice leaves the room.".to_owned());
        expected_bob.push("Alice enters the room.".to_owned());
        expected_carol.push("Alice enters the room.".to_owned());
        expected_carol.push(format!("Alice says: hi {n}"));
        expected_carol.push("Alice leaves the room.".to_owned());
    }
    for (listener, expected) in [(&mut bob, expected_bob), (&mut carol, expected_carol)] {
        let mut heard = Vec::new();
        while heard.len() < expected.len() {
            let frame = listener.next_frame().await;
            heard.push(frame.data_str("message").to_owned());
        }
        assert_eq!(
            heard, expected,
            "{} heard Alice out of order",
            listener.name
        );
    }
}
