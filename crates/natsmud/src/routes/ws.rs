//! `GET /api/ws?token=…`: one player's WebSocket.
//!
//! One task per connection: it reads, runs the player's commands in order (with any
//! submitted by `POST /api/command`), and writes the connection's bounded queue to the
//! socket as frames arrive. Whatever ends the connection (the peer, a kick, shutdown),
//! [`session::detach`] removes the player and publishes `player_left_game`, then the
//! connection writes what it owes and its close frame: every write has a deadline.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::OptionFuture;
use futures::{Sink, SinkExt, Stream};
use natsmud_protocol::{ClientMessage, ProtocolError, parse_client_message};
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

/// A connection once attached. One task does everything: it reads the socket, runs the
/// player's commands one at a time (reading no further while one runs, so they keep
/// their order), and writes the connection's queue — so an idle player keeps one task.
async fn serve(app: &AppState, socket: Box<WebSocket>, attached: Attached) {
    let Attached {
        conn,
        outbound,
        mut commands,
        limiter,
    } = attached;
    let mut link = Link {
        socket,
        outbound,
        backlog: Backlog {
            frames: std::collections::VecDeque::new(),
        },
        kick: conn.kick.clone(),
        // Looked up once: the registry lookup behind the macro costs more than recording.
        delivery_seconds: metrics::histogram!(telemetry::DELIVERY_SECONDS),
        ping_owed: false,
        unflushed: false,
        stalled_since: None,
        read_ended: false,
    };
    let ended = play(app, &conn, &mut link, &mut commands, limiter).await;
    Box::pin(close(app, &conn, link, ended)).await;
}

/// How a connection's main loop ended.
enum Ended {
    /// The connection is closing (its [`Kick`] says why): what it owes, then the close
    /// frame.
    Closing,
    /// A write failed: nothing more can be written.
    Broken,
}

fn ended(broken: bool) -> Ended {
    if broken {
        Ended::Broken
    } else {
        Ended::Closing
    }
}

/// A command being run, holding the player's allowance until it is done.
type Running<'a> = Pin<Box<dyn Future<Output = CommandLimiter> + Send + 'a>>;

fn run_command<'a>(
    app: &'a AppState,
    conn: &'a ConnectionHandle,
    mut limiter: CommandLimiter,
    admission: Admission,
    message: Result<ClientMessage, ProtocolError>,
) -> Running<'a> {
    Box::pin(async move {
        session::handle(app, conn, &mut limiter, admission, message).await;
        limiter
    })
}

/// The connection's life until it closes: commands from the socket and from `POST
/// /api/command`, the queue written as frames arrive, pings, and the deadlines on each.
async fn play(
    app: &AppState,
    conn: &ConnectionHandle,
    link: &mut Link,
    commands: &mut mailbox::Receiver<ClientMessage>,
    limiter: CommandLimiter,
) -> Ended {
    let kick = &conn.kick;
    let max_frame = app.config.max_frame_bytes as usize;
    let write_timeout = app.config.write_timeout();
    let ping_every = app.config.ws_ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // `None` while a command runs: the command holds it.
    let mut limiter = Some(limiter);
    let mut running: Option<Running<'_>> = None;
    // Boxed, and only while a write is stalled: every idle connection would carry it.
    let mut stall_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut commands_open = true;
    let mut closing = false;
    let mut broken = false;
    let mut held: Option<(Gate, GateWait)> = None;
    // One waiter for the whole connection: a new one per wake-up registers and unlinks
    // itself each time (polling it still takes the token's lock).
    let closed = kick.closed();
    tokio::pin!(closed);
    loop {
        let reading = running.is_none() && !closing;
        // A close that throws the queue away stops the writing; one that drains goes on
        // writing while the last command finishes, so nothing it answers is lost.
        let writing = !broken && (!closing || kick.reason().drain);
        // The wait for a held frame's gate lives as long as that gate holds the front:
        // rebuilt on every wake-up it would cost a timer and an allocation per frame
        // while a flood waits behind it.
        match (writing.then(|| link.backlog.blocked_by()).flatten(), &held) {
            (Some(gate), Some(waiting)) if waiting.0.is_same(&gate) => {}
            (Some(gate), _) => held = Some((gate.clone(), Box::pin(gate_opened(gate)))),
            (None, _) => held = None,
        }
        let gate_waited = held.is_some();
        tokio::select! {
            biased;
            () = &mut closed, if !closing => {
                closing = true;
                if running.is_none() {
                    return ended(broken);
                }
            }
            done = OptionFuture::from(running.as_mut()), if running.is_some() => {
                running = None;
                limiter = done;
                if closing {
                    return ended(broken);
                }
            }
            _ = OptionFuture::from(stall_deadline.as_mut()), if stall_deadline.is_some() => {
                match link.stalled_since {
                    Some(since) if since.elapsed() >= write_timeout => {
                        stall_deadline = None;
                        crate::realtime::connection::slow_consumer(kick);
                    }
                    // The stall that armed it ended; a later one may have begun.
                    Some(since) => {
                        stall_deadline = Some(Box::pin(tokio::time::sleep_until((since + write_timeout).into())));
                    }
                    None => stall_deadline = None,
                }
            }
            _ = OptionFuture::from(held.as_mut().map(|(_, opened)| opened)), if gate_waited => held = None,
            event = std::future::poll_fn(|cx| link.poll_event(cx, reading, writing, gate_waited)) => match event {
                // A frame came to the front behind a gate nobody waits on yet.
                Event::Held => {}
                Event::Stalled => {
                    if stall_deadline.is_none() {
                        stall_deadline = Some(Box::pin(tokio::time::sleep(write_timeout)));
                    }
                }
                Event::WriteFailed(error) => {
                    broken = true;
                    let reason = close_reason_for_write(error);
                    if reason == CloseReason::SLOW_CONSUMER {
                        crate::realtime::connection::slow_consumer(kick);
                    } else {
                        kick.close(reason);
                    }
                }
                Event::Read(message) => {
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            kick.close(close_reason_for(error));
                            continue;
                        }
                        None => {
                            kick.close(CloseReason::NORMAL);
                            continue;
                        }
                    };
                    last_seen = Instant::now();
                    let Some(allowance) = limiter.take() else {
                        continue;
                    };
                    match message {
                        Message::Text(text) => {
                            if text.len() > max_frame {
                                kick.close(CloseReason::TOO_BIG);
                                limiter = Some(allowance);
                                continue;
                            }
                            let message = parse_client_message(text.as_str());
                            running = Some(run_command(app, conn, allowance, Admission::Check, message));
                        }
                        Message::Binary(_) => {
                            kick.close(CloseReason::UNSUPPORTED);
                            limiter = Some(allowance);
                        }
                        Message::Close(_) => {
                            kick.close(CloseReason::NORMAL);
                            limiter = Some(allowance);
                        }
                        // Each ping costs a pong: pings count against the player's
                        // allowance like commands, so a flood of them is cut off as one
                        // of commands is.
                        Message::Ping(_) | Message::Pong(_) => {
                            let mut allowance = allowance;
                            if allowance.check() == Verdict::Disconnect {
                                kick.close(CloseReason::RATE_LIMITED);
                            }
                            limiter = Some(allowance);
                        }
                    }
                }
            },
            submitted = commands.recv(), if reading && commands_open => match submitted {
                Some(message) => {
                    if let Some(allowance) = limiter.take() {
                        running = Some(run_command(app, conn, allowance, Admission::Admitted, Ok(message)));
                    }
                }
                None => commands_open = false,
            },
            _ = ping.tick(), if !closing => {
                if last_seen.elapsed() > 2 * ping_every {
                    kick.close(CloseReason::PING_TIMEOUT);
                } else {
                    link.ping_owed = true;
                }
            }
        }
    }
}

/// The wait for a held frame's gate (see [`gate_opened`]).
type GateWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Waits for `gate`, and opens it after [`GATE_WAIT`]: a frame is late, never lost.
async fn gate_opened(gate: Gate) {
    if tokio::time::timeout(GATE_WAIT, gate.opened())
        .await
        .is_err()
    {
        tracing::warn!("a frame waited {GATE_WAIT:?} for its move to be stored; sending it anyway");
        gate.open();
    }
}

/// Once the main loop is done: the player out of the world, then the last frames.
async fn close(app: &AppState, conn: &ConnectionHandle, mut link: Link, ended: Ended) {
    // Out of the room first: the last frames may take a while to reach a peer that reads
    // slowly, and nobody should see a player who is already gone.
    session::detach(app, conn).await;
    if matches!(ended, Ended::Broken) {
        return;
    }
    let reason = conn.kick.reason();
    if tokio::time::timeout(CLOSE_WRITE_TIMEOUT, link.farewell(reason))
        .await
        .is_err()
    {
        tracing::debug!("the last frames were not all written in time");
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

/// What a poll of the socket brought.
enum Event {
    /// A message from the peer; `None` when its stream ended.
    Read(Option<Result<Message, axum::Error>>),
    /// A write began waiting for the peer to read: its deadline starts now.
    Stalled,
    /// Writing stopped at a frame behind a closed gate.
    Held,
    WriteFailed(axum::Error),
}

/// What writing did.
enum Wrote {
    /// Everything queued is written and flushed.
    Idle,
    /// More to do: it waits for the socket, a gate, or its next turn (already woken).
    Busy,
    /// As `Busy`, and the socket has just stopped taking data.
    Stalled,
}

/// The socket and what is to be written to it.
struct Link {
    socket: Box<WebSocket>,
    outbound: Outbound,
    backlog: Backlog,
    kick: Arc<Kick>,
    delivery_seconds: metrics::Histogram,
    /// A ping is to be sent before the next frame.
    ping_owed: bool,
    /// Frames handed to the socket and not yet flushed.
    unflushed: bool,
    /// Since when the socket has taken no data while we had some for it.
    stalled_since: Option<Instant>,
    /// The peer's stream has ended: it must not be polled again.
    read_ended: bool,
}

/// Messages read and thrown away in one poll while closing, before others get a turn.
const DISCARD_BATCH: usize = 64;

impl Link {
    /// Writes what it can, then reads one message if `reading`. `gate_waited`: whether
    /// the caller already waits on the gate of the frame at the backlog's front.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        reading: bool,
        writing: bool,
        gate_waited: bool,
    ) -> Poll<Event> {
        if writing {
            match self.poll_write(cx) {
                Err(error) => return Poll::Ready(Event::WriteFailed(error)),
                Ok(Wrote::Stalled) => return Poll::Ready(Event::Stalled),
                Ok(Wrote::Idle | Wrote::Busy) => {}
            }
            if !gate_waited && self.backlog.blocked_by().is_some() {
                return Poll::Ready(Event::Held);
            }
        }
        if reading
            && !self.read_ended
            && let Poll::Ready(message) = Pin::new(&mut *self.socket).poll_next(cx)
        {
            self.read_ended = message.is_none();
            return Poll::Ready(Event::Read(message));
        }
        Poll::Pending
    }

    /// Takes queued frames into the backlog: one when it is empty, or all that wait
    /// while its front frame is held behind a gate (so that the wait does not fill the
    /// connection's queue).
    fn take_queued(&mut self, cx: &mut Context<'_>) {
        while self.backlog.frames.is_empty() || self.backlog.blocked_by().is_some() {
            match self.outbound.poll_recv(cx) {
                Poll::Ready(Some(queued)) => {
                    if !self.backlog.push(queued, &self.kick) {
                        return;
                    }
                }
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    /// Writes the pending ping and the backlog's frames up to the first behind a closed
    /// gate (at most [`WRITE_BATCH`] at a time), then flushes once: a burst costs one
    /// write call, not one per frame.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<Wrote, axum::Error> {
        let mut fed = 0;
        while fed < WRITE_BATCH {
            if !self.ping_owed {
                self.take_queued(cx);
                if self.backlog.frames.is_empty() || self.backlog.blocked_by().is_some() {
                    break;
                }
            }
            match Pin::new(&mut *self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => self.stalled_since = None,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(self.stalled()),
            }
            if self.ping_owed {
                self.ping_owed = false;
                Pin::new(&mut *self.socket).start_send(Message::Ping(Bytes::new()))?;
            } else if let Some(Queued { frame, since, .. }) = self.backlog.frames.pop_front() {
                Pin::new(&mut *self.socket).start_send(Message::Text(frame))?;
                self.delivery_seconds.record(since.elapsed().as_secs_f64());
            }
            self.unflushed = true;
            fed += 1;
        }
        if self.unflushed {
            match Pin::new(&mut *self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.stalled_since = None;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(self.stalled()),
            }
        }
        if self.backlog.frames.is_empty() && self.backlog.frames.capacity() > 0 {
            // An idle connection keeps no buffer between bursts.
            self.backlog.frames = std::collections::VecDeque::new();
        }
        if fed == WRITE_BATCH {
            // More may wait: its turn comes after the other work of this task.
            cx.waker().wake_by_ref();
            return Ok(Wrote::Busy);
        }
        if self.backlog.frames.is_empty() && !self.ping_owed {
            Ok(Wrote::Idle)
        } else {
            Ok(Wrote::Busy)
        }
    }

    fn stalled(&mut self) -> Wrote {
        if self.stalled_since.is_some() {
            return Wrote::Busy;
        }
        self.stalled_since = Some(Instant::now());
        Wrote::Stalled
    }

    /// The connection's last frames: what it still owes if its close drains, then the
    /// close frame, while reading (and throwing away) until the peer answers it —
    /// closing a socket with unread input makes the kernel reset it, and the peer's
    /// kernel may then throw away our close frame before the peer reads it.
    async fn farewell(&mut self, reason: CloseReason) {
        let mut step = if reason.drain {
            Farewell::Owed
        } else {
            Farewell::CloseFrame
        };
        loop {
            let gate = match step {
                Farewell::Owed => self.backlog.blocked_by(),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = OptionFuture::from(gate.map(|gate| Box::pin(async move { gate.opened().await }))), if gate.is_some() => {}
                () = std::future::poll_fn(|cx| self.poll_farewell(cx, reason, &mut step)) => return,
            }
        }
    }

    fn poll_farewell(
        &mut self,
        cx: &mut Context<'_>,
        reason: CloseReason,
        step: &mut Farewell,
    ) -> Poll<()> {
        self.discard_input(cx);
        loop {
            match step {
                Farewell::Owed => match self.poll_write(cx) {
                    Ok(Wrote::Idle) => *step = Farewell::CloseFrame,
                    Ok(Wrote::Busy | Wrote::Stalled) => return Poll::Pending,
                    Err(_) => return Poll::Ready(()),
                },
                Farewell::CloseFrame => match Pin::new(&mut *self.socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if Pin::new(&mut *self.socket)
                            .start_send(close_message(reason))
                            .is_err()
                        {
                            return Poll::Ready(());
                        }
                        *step = Farewell::Closing;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                },
                Farewell::Closing => match Pin::new(&mut *self.socket).poll_close(cx) {
                    Poll::Ready(_) => *step = Farewell::Sent,
                    Poll::Pending => return Poll::Pending,
                },
                Farewell::Sent if self.read_ended => return Poll::Ready(()),
                Farewell::Sent => return Poll::Pending,
            }
        }
    }

    fn discard_input(&mut self, cx: &mut Context<'_>) {
        for _ in 0..DISCARD_BATCH {
            if self.read_ended {
                return;
            }
            match Pin::new(&mut *self.socket).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Close(_)) | Err(_)) | None) => self.read_ended = true,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Pending => return,
            }
        }
        cx.waker().wake_by_ref();
    }
}

/// Where a connection's farewell is.
enum Farewell {
    /// Writing the frames it owes.
    Owed,
    CloseFrame,
    /// The close frame handed over: flushing it.
    Closing,
    /// Waiting for the peer's answer.
    Sent,
}
