//! `GET /api/ws?token=…`: one player's WebSocket.
//!
//! Two tasks per connection: this one reads and runs the player's commands in order (with
//! any submitted by `POST /api/command`); a writer task owns the socket's sending half and
//! drains the connection's bounded queue. Whatever ends the connection (the peer, a kick,
//! shutdown), [`session::detach`] removes the player and publishes `player_left_game`, and
//! the writer ends with it: every write has a deadline, and the writer is aborted if it
//! outlives its connection.

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
use natsmud_protocol::{ClientMessage, parse_client_message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::session::{self, Admission, Attached};
use crate::db::Account;
use crate::error::ApiError;
use crate::limits::{CommandLimiter, Verdict};
use crate::realtime::connection::{Gate, Outbound};
use crate::realtime::connection_manager::{CloseReason, ConnectionHandle, Kick, Queued, Transport};
use crate::realtime::mailbox;
use crate::realtime::resume::ResumeFrom;
use crate::startup::AppState;
use crate::telemetry;

const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 16 * 1024;
/// Most bytes the WebSocket layer may hold unwritten. It also queues the pong it owes for
/// each ping it reads; a peer that sends pings and never reads would otherwise grow this
/// buffer without bound.
const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + 128 * 1024;

/// Bound on how long a closing connection may spend writing its last frames: long enough
/// for a slow reader to get through its backlog to the close frame and learn why.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn upgrade(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Only a real upgrade counts as a connection: a plain GET (the web client checking
    // whether its token still works) must not use up the player's reconnect allowance.
    let account = match authenticate(&app, query.get("token").map(String::as_str), ws.is_ok()).await
    {
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
    let resume = query.get("since").map(|since| ResumeFrom::parse(since));
    let max_frame = app.config.max_frame_bytes as usize;
    // The transport refuses frames well above our limit by itself; frames between the two
    // are read and refused by us with 1009 and a reason.
    let transport_limit = (max_frame * 4).max(64 * 1024);
    // Small buffers: most frames are a few hundred bytes, and every idle connection
    // carries these (tungstenite's defaults are 128 KiB each way).
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(transport_limit + WRITE_BUFFER))
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("connection", player = %account.name);
            // Boxed: the connection's task would otherwise keep a moved-from copy of the
            // socket in its state for as long as it lives.
            run_connection(app, Box::new(socket), account, resume).instrument(span)
        })
}

/// Checks the token's signature, expiry and issuer, that its account still exists, that
/// the player has not been reconnecting too often, and that this node has room for one
/// more player (a connection that replaces the player's own always has).
pub async fn authenticate(
    app: &AppState,
    token: Option<&str>,
    connecting: bool,
) -> Result<Account, ApiError> {
    let token = token.filter(|t| !t.is_empty()).ok_or(ApiError::BadToken)?;
    let claims = app.tokens.verify(token).map_err(|_| ApiError::BadToken)?;
    has_room_for(app, &claims.sub)?;
    let account = app
        .accounts
        .find_by_id(&claims.sub)
        .await?
        .ok_or(ApiError::BadToken)?;
    if connecting {
        app.player_limits
            .check_connect(&account.id)
            .map_err(ApiError::RateLimited)?;
    }
    Ok(account)
}

/// Refuses a player this node is full for, before anything costs a database read (a
/// connection that replaces the player's own always has room).
pub fn has_room_for(app: &AppState, player: &str) -> Result<(), ApiError> {
    let max = app.config.max_connections as usize;
    if max > 0 && app.manager.connected_count() >= max && !app.manager.is_connected(player) {
        return Err(ApiError::ServerFull);
    }
    Ok(())
}

async fn run_connection(
    app: AppState,
    mut socket: Box<WebSocket>,
    account: Account,
    resume: Option<ResumeFrom>,
) {
    let _alive = app.connections.token();
    // Boxed, here and in `serve`: a step awaited in place makes the connection's task as
    // large as its largest step for as long as the connection lives, and every idle
    // player keeps that task (docs/performance.md).
    let attaching = Box::pin(session::attach(
        &app,
        &account,
        Transport::WebSocket,
        resume,
    ));
    let attached = match attaching.await {
        Ok(attached) => attached,
        Err(error) => {
            let reason = session::refusal(&error);
            let refusing = Box::pin(tokio::time::timeout(
                CLOSE_WRITE_TIMEOUT,
                socket.send(close_message(reason)),
            ));
            let _ = refusing.await;
            return;
        }
    };
    serve(&app, socket, attached).await;
}

/// A connection once attached: its reader here, its writer in a task of its own.
async fn serve(app: &AppState, socket: Box<WebSocket>, attached: Attached) {
    let Attached {
        conn,
        outbound,
        mut commands,
        mut limiter,
    } = attached;
    let (sink, mut stream) = socket.split();
    let reader_done = CancellationToken::new();
    let last_seen = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writer = AbortOnDropHandle::new(tokio::spawn(
        write_loop(Writer {
            sink,
            outbound,
            kick: conn.kick.clone(),
            reader_done: reader_done.clone(),
            ping_every: app.config.ws_ping_interval(),
            write_timeout: app.config.write_timeout(),
            last_seen: last_seen.clone(),
            started,
        })
        .in_current_span(),
    ));
    let inputs = Inputs {
        stream: &mut stream,
        commands: &mut commands,
        limiter: &mut limiter,
    };
    read_loop(app, &conn, inputs, &last_seen, started).await;
    reader_done.cancel();
    Box::pin(close(app, &conn, stream, writer)).await;
}

/// Once the reader is done: the player out of the world, the writer's last frames out.
async fn close(
    app: &AppState,
    conn: &ConnectionHandle,
    mut stream: SplitStream<Box<WebSocket>>,
    writer: AbortOnDropHandle<()>,
) {
    // Out of the room at once: the writer may spend a while on a peer that reads slowly,
    // and nobody should see a player who is already gone.
    session::detach(app, conn).await;
    // Keep reading (and discarding) until the peer answers our close frame: closing a
    // socket with unread input makes the kernel reset it, and the peer's kernel may then
    // throw away our close frame before the peer reads it.
    let discard = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let (written, _) = tokio::join!(
        tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, writer),
        tokio::time::timeout(CLOSE_WRITE_TIMEOUT, discard),
    );
    // A writer still stuck on the socket is aborted as its handle drops here.
    if written.is_err() {
        tracing::warn!("writer did not finish in time; aborted");
    }
}

/// Where a WebSocket connection's commands come from, and their allowance.
struct Inputs<'a> {
    stream: &'a mut SplitStream<Box<WebSocket>>,
    commands: &'a mut mailbox::Receiver<ClientMessage>,
    limiter: &'a mut CommandLimiter,
}

async fn read_loop(
    app: &AppState,
    conn: &ConnectionHandle,
    inputs: Inputs<'_>,
    last_seen: &AtomicU64,
    started: Instant,
) {
    let Inputs {
        stream,
        commands,
        limiter,
    } = inputs;
    let kick = &conn.kick;
    let max_frame = app.config.max_frame_bytes as usize;
    // One waiter for the whole connection: a new one per message registers and unlinks
    // itself each time (polling it still takes the token's lock).
    let closed = kick.closed();
    tokio::pin!(closed);
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut closed => return,
            submitted = commands.recv() => {
                if let Some(message) = submitted {
                    session::handle(app, conn, limiter, Admission::Admitted, Ok(message)).await;
                }
                continue;
            }
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
                let message = parse_client_message(text.as_str());
                session::handle(app, conn, limiter, Admission::Check, message).await;
            }
            Message::Binary(_) => {
                kick.close(CloseReason::UNSUPPORTED);
                return;
            }
            Message::Close(_) => return,
            // Each ping costs a pong: pings count against the player's allowance like
            // commands, so a flood of them is cut off as one of commands is.
            Message::Ping(_) | Message::Pong(_) => {
                if limiter.check() == Verdict::Disconnect {
                    kick.close(CloseReason::RATE_LIMITED);
                    return;
                }
            }
        }
    }
}

fn close_reason_for(error: axum::Error) -> CloseReason {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(error) => match *error {
            tungstenite::Error::Capacity(_) => CloseReason::TOO_BIG,
            tungstenite::Error::Utf8(_) => CloseReason::INVALID_UTF8,
            // A peer that vanishes without a close frame did not break the protocol.
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => CloseReason::NORMAL,
            tungstenite::Error::Protocol(_) => CloseReason::PROTOCOL_ERROR,
            tungstenite::Error::WriteBufferFull(_) => CloseReason::SLOW_CONSUMER,
            _ => CloseReason::NORMAL,
        },
        Err(_) => CloseReason::NORMAL,
    }
}

/// Why a write failed: a socket whose writes stopped making progress (the socket layer's
/// write deadline) is a slow consumer; anything else means the peer is gone.
fn close_reason_for_write(error: axum::Error) -> CloseReason {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(error) => match *error {
            tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                CloseReason::SLOW_CONSUMER
            }
            tungstenite::Error::WriteBufferFull(_) => CloseReason::SLOW_CONSUMER,
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

/// Frames written before one flush: a burst costs one write call, not one per frame.
const WRITE_BATCH: usize = 64;

/// Frames a writer holds while a gate before them is closed (a mover's `room_update`
/// waiting for its room to be stored), so that the wait does not fill the connection's
/// queue. More than this and the connection is closed as a slow consumer.
const HELD_MAX: usize = 4096;

/// Longest a gate is waited for: the room is stored long before this, or something is
/// wrong with the database; the frames go out anyway.
pub(crate) const GATE_WAIT: Duration = Duration::from_secs(30);

/// What the writer task owns.
struct Writer {
    sink: SplitSink<Box<WebSocket>, Message>,
    outbound: Outbound,
    kick: Arc<Kick>,
    /// Cancelled once the reader has run its last command (and queued its last reply).
    reader_done: CancellationToken,
    ping_every: Duration,
    /// Longest a write may take; a peer that stops reading is closed as a slow consumer.
    write_timeout: Duration,
    last_seen: Arc<AtomicU64>,
    started: Instant,
}

/// Frames taken from the queue and not yet written, in order. The front one may wait
/// behind a closed gate.
struct Backlog {
    frames: std::collections::VecDeque<Queued>,
}

impl Backlog {
    /// The front frame's gate, if it is closed.
    fn blocked_by(&self) -> Option<Gate> {
        self.frames
            .front()
            .and_then(|queued| queued.gate.clone())
            .filter(|gate| !gate.is_open())
    }

    fn push(&mut self, queued: Queued, kick: &Kick) -> bool {
        if self.frames.len() >= HELD_MAX {
            crate::realtime::connection::slow_consumer(kick);
            return false;
        }
        self.frames.push_back(queued);
        true
    }
}

/// Writes the backlog's frames up to the first one behind a closed gate (and what else is
/// queued, at most [`WRITE_BATCH`] in all), then flushes once.
async fn write_ready(
    sink: &mut SplitSink<Box<WebSocket>, Message>,
    outbound: &mut Outbound,
    backlog: &mut Backlog,
    kick: &Kick,
    delivery_seconds: &metrics::Histogram,
) -> Result<(), axum::Error> {
    let mut written = 0;
    while written < WRITE_BATCH {
        if backlog.frames.is_empty() {
            match outbound.try_recv() {
                Ok(queued) => {
                    backlog.push(queued, kick);
                }
                Err(_) => break,
            }
        }
        if backlog.blocked_by().is_some() {
            break;
        }
        let Some(Queued { frame, since, .. }) = backlog.frames.pop_front() else {
            break;
        };
        sink.feed(Message::Text(frame)).await?;
        delivery_seconds.record(since.elapsed().as_secs_f64());
        written += 1;
    }
    if backlog.frames.is_empty() {
        // An idle connection keeps no buffer between bursts.
        backlog.frames = std::collections::VecDeque::new();
    }
    sink.flush().await
}

/// How a write attempt ended.
enum Wrote {
    Done,
    /// The connection was closed meanwhile.
    Closed,
    Failed(axum::Error),
}

async fn write_loop(writer: Writer) {
    let Writer {
        mut sink,
        mut outbound,
        kick,
        reader_done,
        ping_every,
        write_timeout,
        last_seen,
        started,
    } = writer;
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // Looked up once: the registry lookup behind the macro costs more than the recording.
    let delivery_seconds = metrics::histogram!(telemetry::DELIVERY_SECONDS);
    let mut backlog = Backlog {
        frames: std::collections::VecDeque::new(),
    };
    // One waiter each for the whole connection: a new one per wake-up registers and
    // unlinks itself each time (polling it still takes the token's lock).
    let closed = kick.closed();
    tokio::pin!(closed);
    let abandoned = kick.closed_without_drain();
    tokio::pin!(abandoned);
    loop {
        if let Some(gate) = backlog.blocked_by() {
            // Held until the gate opens, taking in (not writing) what comes meanwhile. A
            // close that drains waits for it too: the frames behind the gate are answers.
            let took = tokio::select! {
                biased;
                _ = &mut abandoned => break,
                () = gate.opened() => true,
                queued = outbound.recv() => match queued {
                    Some(queued) => backlog.push(queued, &kick),
                    None => false,
                },
                () = Box::pin(tokio::time::sleep(GATE_WAIT)) => {
                    tracing::warn!("a frame waited {GATE_WAIT:?} for its move to be stored; sending it anyway");
                    gate.open();
                    true
                }
            };
            if !took {
                break;
            }
            continue;
        }
        if backlog.frames.is_empty() {
            tokio::select! {
                biased;
                _ = &mut closed => break,
                queued = outbound.recv() => match queued {
                    Some(queued) => {
                        backlog.push(queued, &kick);
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    let idle_ms = (started.elapsed().as_millis() as u64)
                        .saturating_sub(last_seen.load(Ordering::Relaxed));
                    if idle_ms > 2 * ping_every.as_millis() as u64 {
                        kick.close(CloseReason::PING_TIMEOUT);
                        break;
                    }
                    let wrote = tokio::select! {
                        biased;
                        _ = &mut abandoned => Wrote::Closed,
                        sent = Box::pin(tokio::time::timeout(write_timeout, sink.send(Message::Ping(Bytes::new())))) => settle(sent, &kick),
                    };
                    match finish(wrote, &kick) {
                        Next::Go => {}
                        Next::Farewell => break,
                        Next::Stop => return,
                    }
                }
            }
            continue;
        }
        // Frames to write. Only a close that throws the queue away interrupts the write:
        // one that drains lets it finish (it has its deadline), so nothing taken is lost.
        let wrote = tokio::select! {
            biased;
            _ = &mut abandoned => Wrote::Closed,
            // Boxed: held only while writing, it would otherwise make every idle writer
            // task as large as a write.
            sent = Box::pin(tokio::time::timeout(write_timeout, write_ready(&mut sink, &mut outbound, &mut backlog, &kick, &delivery_seconds))) => settle(sent, &kick),
        };
        match finish(wrote, &kick) {
            Next::Go => {}
            Next::Farewell => break,
            Next::Stop => return,
        }
    }
    let farewell = Box::pin(tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        farewell(sink, outbound, backlog, reader_done, kick.reason()),
    ));
    let _ = farewell.await;
}

/// The writer's last frames: what the connection still owes if its close drains, then the
/// close frame.
async fn farewell(
    mut sink: SplitSink<Box<WebSocket>, Message>,
    mut outbound: Outbound,
    mut backlog: Backlog,
    reader_done: CancellationToken,
    reason: CloseReason,
) -> Result<(), axum::Error> {
    if reason.drain {
        // Every command the reader accepted is answered before the close frame.
        loop {
            tokio::select! {
                biased;
                queued = outbound.recv() => match queued {
                    Some(queued) => backlog.frames.push_back(queued),
                    None => break,
                },
                _ = reader_done.cancelled() => break,
            }
        }
        while let Ok(queued) = outbound.try_recv() {
            backlog.frames.push_back(queued);
        }
        while let Some(queued) = backlog.frames.pop_front() {
            if let Some(gate) = &queued.gate {
                gate.opened().await;
            }
            sink.feed(Message::Text(queued.frame)).await?;
        }
    }
    sink.send(close_message(reason)).await?;
    sink.close().await
}

/// A write's result, with a deadline passed counted as a slow consumer.
fn settle(
    sent: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
    kick: &Kick,
) -> Wrote {
    match sent {
        Ok(Ok(())) => Wrote::Done,
        Ok(Err(error)) => Wrote::Failed(error),
        Err(_) => {
            crate::realtime::connection::slow_consumer(kick);
            Wrote::Closed
        }
    }
}

/// What the writer does after a write.
enum Next {
    Go,
    /// The connection is closing: write what is owed, then the close frame.
    Farewell,
    /// The socket failed: nothing more can be written.
    Stop,
}

fn finish(wrote: Wrote, kick: &Kick) -> Next {
    match wrote {
        Wrote::Done => Next::Go,
        Wrote::Closed => Next::Farewell,
        Wrote::Failed(error) => {
            let reason = close_reason_for_write(error);
            if reason == CloseReason::SLOW_CONSUMER {
                crate::realtime::connection::slow_consumer(kick);
            } else {
                kick.close(reason);
            }
            Next::Stop
        }
    }
}
