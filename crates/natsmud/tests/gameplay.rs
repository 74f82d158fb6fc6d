//! Players playing together over real sockets, with every event travelling through a real
//! nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
    let mut bob = app.join("Bob").await;
    let account = app.register("Alice").await;
    let mut first = app.connect(&account).await;
    first.expect(EventType::GameState).await;
    bob.expect(EventType::PlayerEnteredGame).await;

    let mut second = app.connect(&account).await;
    let state = second.expect(EventType::GameState).await;
    assert_eq!(state.data["occupants"], json!(["Alice", "Bob"]));
    let (code, reason) = first.expect_close().await.expect("a close frame");
    assert_eq!(code, 4001, "{reason}");

    // Alice never left the game, so Bob hears nothing; and there is one Alice.
    bob.expect_silence().await;
    assert_eq!(
        bob.ask("who").await.data["result"],
        "Players online (2): Alice, Bob"
    );
    second.command("say still here").await;
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice says: still here"
    );
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
