//! One player connection as the rest of the server sees it: its bounded outbound queue,
//! its close signal ([`Kick`]), and the direct replies only its own player receives.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use natsmud_protocol::{ClientMessage, Envelope, PlayerId, PlayerName};
use serde::Serialize;
use tokio::sync::mpsc;

use super::mailbox;
use tokio_util::sync::CancellationToken;

/// One serialised envelope, shared by every recipient (cloning is a reference count).
pub type Frame = Utf8Bytes;

/// A frame waiting in a connection's queue, with when this node got it (for the
/// NATS → socket latency metric).
#[derive(Debug, Clone)]
pub struct Queued {
    pub frame: Frame,
    pub since: Instant,
    /// When set, the frame (and so every frame after it) is not written before the gate
    /// opens: a mover's `room_update` waits for the move to be stored, while the events
    /// others see of the move do not.
    pub gate: Option<Gate>,
}

impl Queued {
    pub fn new(frame: Frame) -> Self {
        Self {
            frame,
            since: Instant::now(),
            gate: None,
        }
    }
}

/// What a connection's writer sends, in order: first the frames a resume put in front
/// (the greeting, `resumed`, the missed events), then the connection's queue — less the
/// live events the missed ones already covered, so that nothing comes twice at the seam.
#[derive(Debug)]
pub struct Outbound {
    first: std::collections::VecDeque<Queued>,
    queue: mailbox::Receiver<Queued>,
    /// Live events up to this stream sequence were sent among the missed ones (0: none).
    covered_through: u64,
}

impl Outbound {
    pub fn new(queue: mailbox::Receiver<Queued>) -> Self {
        Self {
            first: std::collections::VecDeque::new(),
            queue,
            covered_through: 0,
        }
    }

    /// Sends `frames` before anything queued, and drops queued events up to
    /// `covered_through`.
    pub fn put_first(&mut self, frames: Vec<Queued>, covered_through: u64) {
        self.first.extend(frames);
        self.covered_through = covered_through;
    }

    /// The greeting `connect` queued (always first in the queue), taken out so that a
    /// resume can put its frames right behind it.
    pub fn take_greeting(&mut self) -> Option<Queued> {
        self.queue.try_recv().ok()
    }

    pub async fn recv(&mut self) -> Option<Queued> {
        if let Some(queued) = self.first.pop_front() {
            return Some(queued);
        }
        loop {
            let queued = self.queue.recv().await?;
            if self.fresh(&queued) {
                return Some(queued);
            }
        }
    }

    pub fn try_recv(&mut self) -> Result<Queued, mpsc::error::TryRecvError> {
        if let Some(queued) = self.first.pop_front() {
            return Ok(queued);
        }
        loop {
            let queued = self.queue.try_recv()?;
            if self.fresh(&queued) {
                return Ok(queued);
            }
        }
    }

    fn fresh(&mut self, queued: &Queued) -> bool {
        if self.covered_through == 0 {
            return true;
        }
        match natsmud_protocol::position::frame_offset(queued.frame.as_bytes()) {
            Some(offset) if offset <= self.covered_through => false,
            // Positions only grow along a connection: nothing later can be covered.
            Some(_) => {
                self.covered_through = 0;
                true
            }
            None => true,
        }
    }
}

/// Opens once; frames behind it wait until then (see [`Queued::gate`]).
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Gate {
    pub fn open(&self) {
        self.0.open.store(true, Ordering::Release);
        self.0.opened.notify_waiters();
    }

    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }

    pub async fn opened(&self) {
        loop {
            let opened = self.0.opened.notified();
            if self.is_open() {
                return;
            }
            opened.await;
        }
    }
}

/// Opens `gate` when dropped, so a frame held behind it is never held for good, whatever
/// happens to the work it waits for.
#[derive(Debug)]
pub struct OpenOnDrop(pub Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// How long a reply waits for room in its connection's queue before the connection is
/// closed as a slow consumer.
pub const DIRECT_REPLY_WAIT: Duration = Duration::from_secs(5);

/// Commands a connection accepts from outside its own socket (`POST /api/command`) wait
/// here; more than this and the sender is told to slow down.
pub const COMMAND_QUEUE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    Telnet,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::Telnet => "telnet",
        }
    }
}

/// Why the server closes a connection; sent as the WebSocket close frame (SSE: the
/// `close` event). Each reason text starts with a stable word a client can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    /// Whether frames already queued are written before the close frame. A slow consumer's
    /// queue is dropped: it is the reason for closing.
    pub drain: bool,
}

impl CloseReason {
    /// The player quit: it leaves the game at once.
    pub const QUIT: Self = Self {
        code: 1000,
        reason: "goodbye",
        drain: true,
    };
    /// The peer went away (or closed): its player is link-dead for the grace period.
    pub const NORMAL: Self = Self {
        code: 1000,
        reason: "closed",
        drain: true,
    };
    pub const SHUTDOWN: Self = Self {
        code: 1001,
        reason: "server shutting down",
        drain: true,
    };
    pub const PING_TIMEOUT: Self = Self {
        code: 1001,
        reason: "ping timeout",
        drain: false,
    };
    /// A telnet player sent nothing for the idle timeout (MUD clients have no pings).
    pub const IDLE: Self = Self {
        code: 1001,
        reason: "idle timeout",
        drain: true,
    };
    pub const PROTOCOL_ERROR: Self = Self {
        code: 1002,
        reason: "protocol error",
        drain: false,
    };
    pub const UNSUPPORTED: Self = Self {
        code: 1003,
        reason: "binary frames are not supported",
        drain: true,
    };
    pub const INVALID_UTF8: Self = Self {
        code: 1007,
        reason: "text frames must be valid UTF-8",
        drain: true,
    };
    pub const RATE_LIMITED: Self = Self {
        code: 1008,
        reason: "rate limit exceeded",
        drain: true,
    };
    pub const TOO_BIG: Self = Self {
        code: 1009,
        reason: "frame too large",
        drain: true,
    };
    /// The node is at its player limit (checked when the connection registers, which
    /// for a WebSocket is after the upgrade).
    pub const SERVER_FULL: Self = Self {
        code: 1013,
        reason: "server full; try again later",
        drain: true,
    };
    /// The login could not be completed now (NATS would not take what it needed, or
    /// another login of the same player was racing it).
    pub const BUSY: Self = Self {
        code: 1013,
        reason: "busy; try again",
        drain: true,
    };
    pub const REPLACED: Self = Self {
        code: 4001,
        reason: "logged in from another connection",
        drain: true,
    };
    /// This node missed events bound for its players (its NATS connection dropped, or
    /// NATS dropped messages for it): nobody here can know what they missed.
    pub const EVENTS_LOST: Self = Self {
        code: 4008,
        reason: "events_lost: the server missed events; reconnect",
        drain: true,
    };
    /// This connection fell behind: its queue filled, or a write made no progress.
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "slow_consumer: the connection fell too far behind; reconnect",
        drain: false,
    };
}

/// Closes a connection from anywhere (the router, a replacing login, shutdown) even when
/// its queue is full.
#[derive(Debug, Default)]
pub struct Kick {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl Kick {
    /// The first reason wins; later ones are ignored.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn reason(&self) -> CloseReason {
        self.reason.get().copied().unwrap_or(CloseReason::NORMAL)
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    /// Resolves when the connection closes without writing its queue: a queue that
    /// will never drain cannot make room.
    pub async fn closed_without_drain(&self) {
        self.closed().await;
        if self.reason().drain {
            std::future::pending::<()>().await
        }
    }
}

pub(crate) fn slow_consumer(kick: &Kick) {
    if !kick.is_closed() {
        metrics::counter!(crate::telemetry::SLOW_CONSUMERS).increment(1);
    }
    kick.close(CloseReason::SLOW_CONSUMER);
}

/// The room index of a member that is in no room (replaced, or disconnected).
pub(crate) const NO_ROOM: usize = usize::MAX;

/// A connected player as the router sees it: one per connection.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) player: PlayerId,
    pub(crate) name: PlayerName,
    pub(crate) connection: u64,
    pub(crate) tx: mailbox::Sender<Queued>,
    pub(crate) commands: mailbox::Sender<ClientMessage>,
    pub(crate) kick: Arc<Kick>,
    /// Index of the room the member is in, or [`NO_ROOM`]. Written only under the lock of
    /// the room it leaves or enters.
    pub(crate) room: AtomicUsize,
    /// Who whispered to this player last, for `reply`.
    pub(crate) last_whisper_from: Mutex<Option<PlayerId>>,
    /// The whisper stream's numbering, for this connection.
    pub(crate) whispers: AtomicU64,
    /// The revision of the player's presence entry this connection holds (0: none, when
    /// presence was unavailable as it connected).
    pub(crate) presence: AtomicU64,
    /// Held while one of the player's commands changes where the player is, and by a login
    /// of the same player while it takes over: a command of a replaced connection can
    /// never act on its successor. Shared by all of a player's connections.
    pub(crate) actions: Arc<tokio::sync::Mutex<()>>,
}

impl Member {
    /// Queues a frame without waiting; a full queue closes this connection as a slow
    /// consumer. True when queued.
    pub(crate) fn offer(&self, frame: &Frame, since: Instant) -> bool {
        let queued = Queued {
            frame: frame.clone(),
            since,
            gate: None,
        };
        match self.tx.try_send(queued) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slow_consumer(&self.kick);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) fn remember_whisper_from(&self, sender: PlayerId) {
        match self.last_whisper_from.lock() {
            Ok(mut last) => *last = Some(sender),
            Err(poisoned) => *poisoned.into_inner() = Some(sender),
        }
    }
}

/// What a connection's own tasks hold.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub player_id: PlayerId,
    pub name: PlayerName,
    pub connection: u64,
    pub transport: Transport,
    pub kick: Arc<Kick>,
    pub(crate) member: Arc<Member>,
    direct_sequence: AtomicU64,
}

impl ConnectionHandle {
    pub(crate) fn new(member: Arc<Member>, transport: Transport) -> Self {
        Self {
            player_id: member.player.clone(),
            name: member.name.clone(),
            connection: member.connection,
            transport,
            kick: member.kick.clone(),
            member,
            // The greeting (`game_state`) is direct frame 1.
            direct_sequence: AtomicU64::new(1),
        }
    }

    /// The next number of this connection's direct stream.
    pub(crate) fn next_direct_sequence(&self) -> u64 {
        self.direct_sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Who whispered to this player last on this connection.
    pub fn last_whisper_from(&self) -> Option<PlayerId> {
        self.member
            .last_whisper_from
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The lock a command holds while it changes where the player is.
    pub fn actions(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.member.actions.clone()
    }

    /// The revision of the presence entry this connection holds (0: none).
    pub fn presence_revision(&self) -> u64 {
        self.member.presence.load(Ordering::Acquire)
    }

    pub fn set_presence_revision(&self, revision: u64) {
        self.member.presence.store(revision, Ordering::Release);
    }

    /// Serialises a direct reply with the next number of this connection's direct stream.
    pub(crate) fn direct_frame<D: Serialize>(&self, envelope: Envelope<D>) -> Option<Queued> {
        let bytes = envelope
            .with_sequence(self.next_direct_sequence())
            .to_bytes();
        Frame::try_from(bytes).ok().map(Queued::new)
    }

    /// Sends a direct reply (never through NATS) numbered by this connection's own counter.
    ///
    /// Unlike fan-out, this waits for room in the queue: it runs on the connection's own
    /// command task, so a client that sends commands faster than it reads the replies is
    /// slowed down rather than cut off. One that stops reading altogether is closed as a
    /// slow consumer after [`DIRECT_REPLY_WAIT`].
    pub async fn send_direct<D: Serialize>(&self, envelope: Envelope<D>) {
        let Some(permit) = self.reserve().await else {
            return;
        };
        if let Some(queued) = self.direct_frame(envelope) {
            permit.send(queued);
        }
    }

    /// A place in this connection's queue, waited for as [`send_direct`](Self::send_direct)
    /// waits; `None` when the connection is closing and will never make room.
    pub async fn reserve(&self) -> Option<mailbox::Permit<'_, Queued>> {
        match self.member.tx.try_reserve() {
            Ok(permit) => return Some(permit),
            Err(mpsc::error::TrySendError::Closed(())) => return None,
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        let kick = &self.kick;
        tokio::select! {
            biased;
            permit = self.member.tx.reserve() => permit.ok(),
            _ = kick.closed_without_drain() => None,
            _ = tokio::time::sleep(DIRECT_REPLY_WAIT) => {
                slow_consumer(kick);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_holds_until_it_opens_and_dropping_its_opener_opens_it() {
        let gate = Gate::default();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(OpenOnDrop(gate.clone()));
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(gate.is_open());
        gate.opened().await;
    }
}
