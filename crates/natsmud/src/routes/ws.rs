//! `GET /api/ws?token=…`: one player's WebSocket.
//!
//! Two tasks per connection: this one reads and runs the player's commands in order; a
//! writer task owns the socket's sending half and drains the connection's bounded queue.
//! Whatever ends the connection (the peer, a kick, shutdown), the player is removed from
//! the ConnectionManager and `player_left_game` is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use natsmud_protocol::envelope::Empty;
use natsmud_protocol::{ClientMessage, Envelope, EventType, parse_client_message};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::db::Account;
use crate::error::ApiError;
use crate::game::{Flow, Session};
use crate::realtime::Frame;
use crate::realtime::connection_manager::{CloseReason, Kick};
use crate::startup::AppState;

/// Bound on how long a closing connection may spend writing its last frames.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn upgrade(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let account = match authenticate(&app, query.get("token").map(String::as_str)).await {
        Ok(account) => account,
        Err(error) => return error.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::Malformed(format!(
                "expected a WebSocket upgrade: {}",
                rejection.body_text()
            ))
            .into_response();
        }
    };
    let max_frame = app.config.max_frame_bytes as usize;
    // The transport refuses frames well above our limit by itself; frames between the two
    // are read and refused by us with 1009 and a reason.
    let transport_limit = (max_frame * 4).max(64 * 1024);
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("connection", player = %account.name);
            run_connection(app, socket, account).instrument(span)
        })
}

/// Checks the token's signature, expiry and issuer, and that its account still exists.
pub async fn authenticate(app: &AppState, token: Option<&str>) -> Result<Account, ApiError> {
    let token = token.filter(|t| !t.is_empty()).ok_or(ApiError::BadToken)?;
    let claims = app.tokens.verify(token).map_err(|_| ApiError::BadToken)?;
    app.accounts
        .find_by_id(&claims.sub)
        .await?
        .ok_or(ApiError::BadToken)
}

async fn run_connection(app: AppState, mut socket: WebSocket, account: Account) {
    let room = account
        .room_id
        .as_ref()
        .and_then(|r| app.world.room(r.as_str()))
        .unwrap_or_else(|| app.world.start())
        .id
        .clone();
    let connected = match app
        .manager
        .connect(account.id.clone(), account.name.clone(), room)
    {
        Ok(connected) => connected,
        Err(_) => {
            let reason = CloseReason::SHUTDOWN;
            let _ = socket.send(close_message(reason)).await;
            return;
        }
    };
    let conn = connected.handle;
    tracing::info!(entered_game = connected.entered_game, "connected");
    let (sink, stream) = socket.split();
    let last_seen = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writer = tokio::spawn(
        write_loop(
            sink,
            connected.outbound,
            conn.kick.clone(),
            app.config.ws_ping_interval(),
            last_seen.clone(),
            started,
        )
        .in_current_span(),
    );

    let session = Session {
        app: &app,
        conn: &conn,
    };
    let Some(room) = app.world.room(connected.room.as_str()) else {
        conn.kick.close(CloseReason::NORMAL);
        return;
    };
    session.send_game_state(room);
    if connected.entered_game {
        session.announce_presence(&room.id, true).await;
    }

    read_loop(&session, stream, &last_seen, started).await;

    conn.kick.close(CloseReason::NORMAL);
    if tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, writer)
        .await
        .is_err()
    {
        tracing::warn!("writer did not finish in time");
    }
    if let Some(room) = app.manager.disconnect(&conn.player_id, conn.connection) {
        session.announce_presence(&room, false).await;
    }
    tracing::info!(reason = conn.kick.reason().reason, "disconnected");
}

async fn read_loop(
    session: &Session<'_>,
    mut stream: SplitStream<WebSocket>,
    last_seen: &AtomicU64,
    started: Instant,
) {
    let kick = &session.conn.kick;
    let max_frame = session.app.config.max_frame_bytes as usize;
    loop {
        let message = tokio::select! {
            biased;
            _ = kick.closed() => return,
            message = stream.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                kick.close(close_reason_for(error));
                return;
            }
            None => return,
        };
        last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match message {
            Message::Text(text) => {
                if text.len() > max_frame {
                    kick.close(CloseReason::TOO_BIG);
                    return;
                }
                match parse_client_message(text.as_str()) {
                    Ok(ClientMessage::Ping) => {
                        session
                            .conn
                            .send_direct(Envelope::new(EventType::Pong, Empty {}));
                    }
                    Ok(ClientMessage::Command(command)) => {
                        if session.run(command).await == Flow::Quit {
                            kick.close(CloseReason::NORMAL);
                            return;
                        }
                    }
                    Err(error) => session.send_error(&error),
                }
            }
            Message::Binary(_) => {
                kick.close(CloseReason::UNSUPPORTED);
                return;
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

fn close_reason_for(error: axum::Error) -> CloseReason {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(error) => match *error {
            tungstenite::Error::Capacity(_) => CloseReason::TOO_BIG,
            tungstenite::Error::Utf8(_) => CloseReason {
                code: 1007,
                reason: "text frames must be valid UTF-8",
                drain: true,
            },
            _ => CloseReason::NORMAL,
        },
        Err(_) => CloseReason::NORMAL,
    }
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }))
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Frame>,
    kick: Arc<Kick>,
    ping_every: Duration,
    last_seen: Arc<AtomicU64>,
    started: Instant,
) {
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = kick.closed() => break,
            frame = outbound.recv() => {
                let Some(frame) = frame else { break };
                // A peer that stops reading blocks this send; a kick must still end it.
                let sent = tokio::select! {
                    biased;
                    _ = kick.closed() => break,
                    sent = sink.send(Message::Text(frame)) => sent,
                };
                if sent.is_err() {
                    kick.close(CloseReason::NORMAL);
                    return;
                }
            }
            _ = ping.tick() => {
                let idle_ms = (started.elapsed().as_millis() as u64)
                    .saturating_sub(last_seen.load(Ordering::Relaxed));
                if idle_ms > 2 * ping_every.as_millis() as u64 {
                    kick.close(CloseReason::PING_TIMEOUT);
                    break;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    kick.close(CloseReason::NORMAL);
                    return;
                }
            }
        }
    }
    let reason = kick.reason();
    let farewell = async {
        if reason.drain {
            while let Ok(frame) = outbound.try_recv() {
                sink.feed(Message::Text(frame)).await?;
            }
        }
        sink.send(close_message(reason)).await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, farewell).await;
}
