//! The WebSocket against careless and hostile peers: ping floods, peers that stop reading,
//! protocol violations. Each must end in a bounded time with a clear close, never a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use futures::{SinkExt, StreamExt};
use natsmud_protocol::EventType;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Each ping costs the server a pong; a peer that sends pings and never reads used to
/// grow the server's memory by 133 MiB per million pings. Pings now count against the
/// player's allowance like commands.
#[tokio::test]
async fn a_ping_flood_is_cut_off_like_a_command_flood() {
    let app = TestApp::spawn_with(|config| {
        config.commands_per_sec = 10;
        config.command_burst = 20;
    })
    .await;
    let mut alice = app.join("Alice").await;
    for _ in 0..2_000 {
        if alice
            .socket
            .send(Message::Ping(vec![7u8; 125].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(alice.expect_closed_with(1008).await, "rate limit exceeded");
}

/// A peer that stops reading while its queue never fills (a large queue, frames written
/// as fast as they come) used to pin its writer for good: the write never finished, the
/// idle check never ran and the player never left. Every write has a deadline now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_when_a_write_stalls() {
    let app = TestApp::spawn_with(|config| {
        config.outbound_queue = 100_000;
        config.write_timeout_secs = 1;
    })
    .await;
    let mut alice = app.join("Alice").await;
    let account = app.register("Staller").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/api/ws?token={}", app.addr, account.access_token);
    let (staller, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    alice.expect(EventType::PlayerEnteredGame).await;

    // Enough to fill the kernel's buffers on both sides (a few MiB on loopback).
    let text = "x".repeat(490);
    let started = Instant::now();
    let mut gone = false;
    for batch in 0.. {
        for n in 0..50 {
            alice.command(&format!("say {batch}.{n} {text}")).await;
        }
        let mut answered = 0;
        while answered < 50 {
            let frame = alice.next_frame().await;
            match frame.event_type {
                EventType::CommandResponse => answered += 1,
                EventType::PlayerLeftGame => {
                    assert_eq!(frame.data["player_name"], "Staller");
                    gone = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if gone {
            assert_eq!(
                alice.ask("who").await.data["result"],
                "Players online (1): Alice"
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    assert!(gone, "the peer that stopped reading was never closed");
    assert!(app.metric("natsmud_slow_consumer_disconnects_total").await >= 1.0);
    drop(staller);
}

/// Breaking the WebSocket protocol is answered with 1002, not with 1000 "goodbye" (which
/// a client reads as "you quit").
#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let app = TestApp::spawn().await;
    let account = app.register("Alice").await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let url = format!("ws://{}/api/ws?token={}", app.addr, account.access_token);
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let first = socket.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("game_state"));
    // A client frame must be masked; this one is not.
    socket
        .get_mut()
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(common::WAIT, socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1002));
}
