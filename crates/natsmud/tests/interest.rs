//! Interest-based subscriptions: a node listens to the rooms its players are in. A player
//! arriving in a room its node never listened to hears what is said there right after the
//! arrival, across NATS servers of a cluster; a room the node stopped listening to is
//! listened to again when a player comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{NatsCluster, TestApp};
use natsmud_protocol::EventType;

/// A walk from `from` through rooms never visited twice: each step a direction and the
/// room it leads to.
fn walk(from: &str, steps: usize) -> Vec<(String, String)> {
    let world = common::world();
    let mut visited = BTreeSet::from([from.to_owned()]);
    let mut here = from.to_owned();
    let mut path = Vec::new();
    while path.len() < steps {
        let room = world.room(&here).unwrap();
        let Some((direction, next)) = room
            .exits
            .iter()
            .find(|(_, next)| !visited.contains(next.as_str()))
        else {
            break;
        };
        visited.insert(next.to_string());
        path.push((direction.clone(), next.to_string()));
        here = next.to_string();
    }
    path
}

async fn subscriptions(app: &TestApp) -> u64 {
    app.get("/health").await.1["nats_subscriptions"]
        .as_u64()
        .unwrap()
}

/// The arrival is published after the node subscribed to the room, on the same NATS
/// connection, so whatever someone says on hearing of it comes back — even when the two
/// nodes use different servers of a NATS cluster. Repeated in rooms the arriving
/// player's node never listened to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_arriving_hears_what_is_said_on_their_arrival_across_a_nats_cluster() {
    let cluster = NatsCluster::start(3).await;
    let url_n = cluster.servers[0].url.clone();
    let url_m = cluster.servers[1].url.clone();
    let n = TestApp::spawn_with(move |config| config.nats_url = url_n).await;
    let data_dir = n.data_dir.path().to_path_buf();
    let m = TestApp::spawn_with(move |config| {
        config.nats_url = url_m;
        config.data_dir = data_dir;
    })
    .await;
    let (mut alice, mut bob) = common::alice_and_bob(&n, &m).await;

    let path = walk(&alice.room, 12);
    assert!(path.len() >= 6, "the world is too small for this test");
    for (step, (direction, room)) in path.iter().enumerate() {
        // Bob goes ahead; Alice follows into a room her node has not listened to.
        let update = bob.reply(&format!("go {direction}")).await;
        assert_eq!(update.room_id.as_deref(), Some(room.as_str()), "{update:?}");
        alice.until(EventType::PlayerLeft).await;
        let update = alice.reply(&format!("go {direction}")).await;
        assert_eq!(update.room_id.as_deref(), Some(room.as_str()), "{update:?}");
        let arrival = bob.until(EventType::PlayerEntered).await;
        assert_eq!(arrival.data["player_name"], "Alice");
        bob.reply(&format!("say welcome {step}")).await;
        let heard = alice.until(EventType::ChatMessage).await;
        assert_eq!(heard.data["message"], format!("Bob says: welcome {step}"));
    }
}

/// A room the node stopped listening to (nobody of its players there for a while) is
/// listened to again when one of them comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_empty_is_unsubscribed_and_heard_again_on_return() {
    let a = TestApp::spawn().await;
    let b = a.another_node(|_| {}).await;
    let (mut alice, mut bob) = common::alice_and_bob(&a, &b).await;
    let home = alice.room.clone();
    let with_one_room = subscriptions(&a).await;

    let (away, _) = common::some_exit(&home);
    let there = alice.reply(&format!("go {away}")).await.room_id.unwrap();
    bob.until(EventType::PlayerLeft).await;
    // Node A keeps the room a while, then lets it go: back to one room's subscriptions.
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriptions(&a).await > with_one_room {
        assert!(
            Instant::now() < deadline,
            "node A never let the empty room go"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // What Bob says meanwhile is not for Alice.
    bob.command("say nobody from node A hears this").await;
    alice.expect_silence().await;

    let back = common::world()
        .room(&there)
        .unwrap()
        .exits
        .iter()
        .find(|(_, room)| room.as_str() == home)
        .map(|(direction, _)| direction.clone())
        .unwrap();
    let update = alice.reply(&format!("go {back}")).await;
    assert_eq!(update.room_id.as_deref(), Some(home.as_str()));
    bob.until(EventType::PlayerEntered).await;
    bob.reply("say welcome back").await;
    let heard = alice.until(EventType::ChatMessage).await;
    assert_eq!(heard.data["message"], "Bob says: welcome back");
}

/// A NATS server that refuses a node's subscription (here its `max_subscriptions`) names
/// none in its error: the node's players are closed with 4008 `events_lost` rather than
/// left in a room whose events never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_server_refuses_closes_the_players_rather_than_leave_them_deaf() {
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits.conf");
    std::fs::write(&limits, "max_subscriptions: 12\n").unwrap();
    let nats =
        common::NatsServer::start_pinned_with(&["-c".to_owned(), limits.display().to_string()]);
    let url = nats.url.clone();
    let app = TestApp::spawn_with(move |config| config.nats_url = url).await;
    let mut alice = app.join("Alice").await;
    let mut closed = None;
    for (direction, _) in walk(&alice.room, 20) {
        alice.command(&format!("go {direction}")).await;
        loop {
            match alice.next_within(Duration::from_secs(2)).await {
                Some(common::Received::Frame(frame))
                    if frame.event_type == EventType::RoomUpdate =>
                {
                    break;
                }
                Some(common::Received::Frame(_)) => {}
                Some(common::Received::Closed(close)) => {
                    closed = close;
                    break;
                }
                None => panic!("no answer to a move"),
            }
        }
        if closed.is_some() {
            break;
        }
    }
    let (code, reason) = closed.expect("Alice was never told her events may not arrive");
    assert_eq!(code, 4008);
    assert!(reason.starts_with("events_lost"), "{reason}");
    assert!(
        app.metric("natsmud_nats_subscription_refused_total").await >= 1.0,
        "the refusal was not counted"
    );
}

/// A node whose players are in more than its share of the world listens to all of it (two
/// subscriptions instead of one per room and sub-zone) and, once they are in few places
/// again, to each of them. Across both changes a player hears every event of their room
/// once and in order — for a moment two subscriptions bring them — and a player in a room
/// the node never subscribed to hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_to_the_whole_world_while_its_players_are_in_much_of_it_losing_nothing() {
    let world = common::world();
    let places = world.rooms().count() + world.sub_zones().count();
    // The whole world past 6 places; each place again below 3.
    let share = 6.5 / places as f64;
    let a = TestApp::spawn_with(move |config| config.interest_max_share = share).await;
    let [mut carol, mut alice] = a.join_all(["Carol", "Alice"]).await;
    let home = carol.room.clone();
    let by_place = subscriptions(&a).await;
    assert!(by_place > 2, "{by_place} subscriptions");

    // A steady flow of numbered says in Carol's room, from outside, all along.
    let nats = a.outside_client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    // About 1,000 a second, so that some are said while two subscriptions bring the room.
    let talker = common::talk_until(nats.clone(), home.clone(), 5, stop.clone());
    let listener = tokio::spawn(async move {
        let mut heard = Vec::new();
        loop {
            let frame = carol
                .until_within(EventType::ChatMessage, Duration::from_secs(90))
                .await;
            match frame.data["message"].as_str().unwrap() {
                "Talker says: end" => return heard,
                said => heard.push(said["Talker says: ".len()..].parse::<u64>().unwrap()),
            }
        }
    });

    // Alice walks through new rooms until the node listens to the whole world.
    let path = walk(&home, 8);
    assert!(path.len() >= 6, "the world is too small for this test");
    let mut steps = path.iter();
    while subscriptions(&a).await > 2 {
        let Some((direction, room)) = steps.next() else {
            panic!("node A never listened to the whole world");
        };
        let update = alice.reply(&format!("go {direction}")).await;
        assert_eq!(update.room_id.as_deref(), Some(room.as_str()), "{update:?}");
    }
    // One more room, which the node does not subscribe to on its own: Alice hears it.
    let (direction, room) = steps.next().expect("a room left to walk to");
    let update = alice.reply(&format!("go {direction}")).await;
    assert_eq!(update.room_id.as_deref(), Some(room.as_str()), "{update:?}");
    assert_eq!(subscriptions(&a).await, 2);
    common::say_from_outside(&nats, room, "anyone here?", 1).await;
    let heard = alice.until(EventType::ChatMessage).await;
    assert_eq!(heard.data["message"], "Talker says: anyone here?");

    // Alice leaves; once her rooms are forgotten the node listens to each place again.
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(45);
    while subscriptions(&a).await <= 2 {
        assert!(
            Instant::now() < deadline,
            "node A never went back to listening to places"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Past both changes, then the last word.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let said = talker.await.unwrap();
    common::say_from_outside(&nats, &home, "end", said + 1).await;
    let heard = listener.await.unwrap();
    let expected: Vec<u64> = (1..=said).collect();
    assert_eq!(
        heard.len(),
        expected.len(),
        "heard {} of {said}",
        heard.len()
    );
    assert_eq!(heard, expected);
}

/// An event published straight onto the live subjects (where only the stream should
/// publish: operators deny them to clients, docs/protocol.md) with a position far ahead of
/// the stream's does not silence its room: the check against events heard twice applies
/// only while a change of subscriptions makes two of them bring a place.
#[tokio::test]
async fn a_forged_far_ahead_position_does_not_silence_a_room() {
    let a = TestApp::spawn().await;
    let mut alice = a.join("Alice").await;
    let room = natsmud_protocol::RoomId::parse(&alice.room).unwrap();
    let nats = a.outside_client().await;

    let subject = natsmud_protocol::Subject::say(&room).render(&Default::default());
    let forged = common::say_envelope(&room, "forger-1", "Forger", "from the future", 1);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_SEQUENCE, "1000000000000");
    nats.publish_with_headers(
        natsmud_protocol::subject::live(&subject),
        headers,
        forged.to_bytes(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let heard = alice.until(EventType::ChatMessage).await;
    assert_eq!(heard.data["message"], "Forger says: from the future");

    common::say_from_outside(&nats, room.as_str(), "still heard", 2).await;
    let heard = alice
        .until_within(EventType::ChatMessage, Duration::from_secs(10))
        .await;
    assert_eq!(heard.data["message"], "Talker says: still heard");
}
