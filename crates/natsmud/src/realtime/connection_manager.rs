//! The one source of truth for who is connected to this node and which room each player is
//! in, and the fan-out of frames to their sockets.
//!
//! Each connection has a bounded outbound queue drained by one writer task. Delivery never
//! waits: a full queue closes that connection as a slow consumer (4008) and delivery to
//! everyone else goes on. The state lock is a plain `std` lock, only ever held for map
//! operations and `try_send`s, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use natsmud_protocol::{ClientMessage, Envelope, PlayerId, PlayerName, RoomId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One serialised envelope, shared by every recipient (cloning is a reference count).
pub type Frame = Utf8Bytes;

/// A frame waiting in a connection's queue, with when this node got it (for the
/// NATS → socket latency metric).
#[derive(Debug, Clone)]
pub struct Queued {
    pub frame: Frame,
    pub since: Instant,
}

/// How long a reply waits for room in its connection's queue before the connection is
/// closed as a slow consumer.
pub const DIRECT_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Commands a connection accepts from outside its own socket (`POST /api/command`) wait
/// here; more than this and the sender is told to slow down.
pub const COMMAND_QUEUE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// Why the server closes a connection; sent as the WebSocket close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    /// Whether frames already queued are written before the close frame. A slow consumer's
    /// queue is dropped: it is the reason for closing.
    pub drain: bool,
}

impl CloseReason {
    pub const NORMAL: Self = Self {
        code: 1000,
        reason: "goodbye",
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
    pub const UNSUPPORTED: Self = Self {
        code: 1003,
        reason: "binary frames are not supported",
        drain: true,
    };
    pub const TOO_BIG: Self = Self {
        code: 1009,
        reason: "frame too large",
        drain: true,
    };
    pub const REPLACED: Self = Self {
        code: 4001,
        reason: "logged in from another connection",
        drain: true,
    };
    pub const RATE_LIMITED: Self = Self {
        code: 1008,
        reason: "rate limit exceeded",
        drain: true,
    };
    /// NATS dropped events bound for this node: nobody here can know what they missed.
    pub const EVENTS_LOST: Self = Self {
        code: 4008,
        reason: "events lost on the server; reconnect",
        drain: true,
    };
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "slow consumer",
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
}

/// A connected player as the router sees it.
#[derive(Debug)]
struct Member {
    connection: u64,
    name: PlayerName,
    tx: mpsc::Sender<Queued>,
    commands: mpsc::Sender<ClientMessage>,
    kick: Arc<Kick>,
    /// Who whispered to this player last, for `reply`.
    last_whisper_from: Mutex<Option<PlayerId>>,
}

impl Member {
    fn offer(&self, frame: &Frame, since: Instant) -> bool {
        let queued = Queued {
            frame: frame.clone(),
            since,
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
}

#[derive(Debug, Default)]
struct State {
    players: HashMap<PlayerId, (Arc<Member>, RoomId)>,
    rooms: HashMap<RoomId, Vec<(PlayerId, Arc<Member>)>>,
    by_name: HashMap<String, PlayerId>,
    accepting: bool,
}

impl State {
    fn add_to_room(&mut self, room: &RoomId, player: &PlayerId, member: &Arc<Member>) {
        self.rooms
            .entry(room.clone())
            .or_default()
            .push((player.clone(), member.clone()));
    }

    fn remove_from_room(&mut self, room: &RoomId, player: &PlayerId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.retain(|(id, _)| id != player);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }
}

fn slow_consumer(kick: &Kick) {
    if !kick.is_closed() {
        metrics::counter!(crate::telemetry::SLOW_CONSUMERS).increment(1);
    }
    kick.close(CloseReason::SLOW_CONSUMER);
}

/// What a connection's own tasks hold.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub player_id: PlayerId,
    pub name: PlayerName,
    pub connection: u64,
    pub transport: Transport,
    pub kick: Arc<Kick>,
    tx: mpsc::Sender<Queued>,
    direct_sequence: AtomicU64,
}

impl ConnectionHandle {
    /// Sends a direct reply (never through NATS) numbered by this connection's own counter.
    ///
    /// Unlike fan-out, this waits for room in the queue: it runs on the connection's own
    /// command task, so a client that sends commands faster than it reads the replies is
    /// slowed down rather than cut off. One that stops reading altogether is closed as a
    /// slow consumer after [`DIRECT_REPLY_WAIT`].
    pub async fn send_direct<D: Serialize>(&self, envelope: Envelope<D>) {
        let sequence = self.direct_sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = envelope.with_sequence(sequence).to_bytes();
        let Ok(frame) = Frame::try_from(bytes) else {
            return;
        };
        let queued = Queued {
            frame,
            since: Instant::now(),
        };
        let queued = match self.tx.try_send(queued) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(queued)) => queued,
        };
        let kick = &self.kick;
        tokio::select! {
            biased;
            sent = self.tx.send(queued) => drop(sent),
            // A connection closed without draining will never make room.
            _ = async { kick.closed().await; if kick.reason().drain { std::future::pending::<()>().await } } => {}
            _ = tokio::time::sleep(DIRECT_REPLY_WAIT) => slow_consumer(kick),
        }
    }
}

/// The result of registering a connection.
#[derive(Debug)]
pub struct Connected {
    pub handle: ConnectionHandle,
    pub outbound: mpsc::Receiver<Queued>,
    /// Client messages submitted from outside the socket (`POST /api/command`).
    pub commands: mpsc::Receiver<ClientMessage>,
    /// The room the player is in (for a replacing login, the room it already was in).
    pub room: RoomId,
    /// False when this connection replaced another one of the same player, who therefore
    /// never left the game.
    pub entered_game: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("you are no longer connected")]
    NotConnected,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("too many commands are waiting; slow down")]
    Busy,
}

#[derive(Debug)]
pub struct ConnectionManager {
    state: RwLock<State>,
    next_connection: AtomicU64,
    queue_capacity: usize,
}

impl ConnectionManager {
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            state: RwLock::new(State {
                accepting: true,
                ..State::default()
            }),
            next_connection: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave these maps half-updated in a way
        // that matters more than stopping delivery would, so a poisoned lock is used as is.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection for `player` in `room`. A second connection of the same
    /// player replaces the first (closed with 4001) and keeps its room.
    ///
    /// `greeting` makes the connection's first frame (direct sequence 1) from the room and
    /// its occupants; it is queued before the player joins the room, so no event can come
    /// first.
    pub fn connect(
        &self,
        player: PlayerId,
        name: PlayerName,
        room: RoomId,
        transport: Transport,
        greeting: impl FnOnce(&RoomId, Vec<String>) -> bytes::Bytes,
    ) -> Result<Connected, ManagerError> {
        let (tx, outbound) = mpsc::channel(self.queue_capacity);
        let (command_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let kick = Arc::new(Kick::default());
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member {
            connection,
            name: name.clone(),
            tx: tx.clone(),
            commands: command_tx,
            kick: kick.clone(),
            last_whisper_from: Mutex::new(None),
        });
        let mut state = self.write();
        if !state.accepting {
            return Err(ManagerError::ShuttingDown);
        }
        let (room, entered_game) = match state.players.remove(&player) {
            Some((old, old_room)) => {
                old.kick.close(CloseReason::REPLACED);
                state.remove_from_room(&old_room, &player);
                (old_room, false)
            }
            None => (room, true),
        };
        let mut occupants: Vec<String> = state
            .rooms
            .get(&room)
            .map(|members| members.iter().map(|(_, m)| m.name.to_string()).collect())
            .unwrap_or_default();
        occupants.push(name.to_string());
        occupants.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        let greeting = greeting(&room, occupants);
        if !greeting.is_empty()
            && let Ok(frame) = Frame::try_from(greeting)
        {
            // The queue is new and empty: this cannot be full.
            let _ = tx.try_send(Queued {
                frame,
                since: Instant::now(),
            });
        }
        state.add_to_room(&room, &player, &member);
        state.by_name.insert(name.folded(), player.clone());
        state.players.insert(player.clone(), (member, room.clone()));
        drop(state);
        Ok(Connected {
            handle: ConnectionHandle {
                player_id: player,
                name,
                connection,
                transport,
                kick,
                tx,
                direct_sequence: AtomicU64::new(1),
            },
            outbound,
            commands,
            room,
            entered_game,
        })
    }

    /// Removes the connection if it is still the player's current one; returns the room the
    /// player left, so the caller can tell it.
    pub fn disconnect(&self, player: &PlayerId, connection: u64) -> Option<RoomId> {
        let mut state = self.write();
        let current = state
            .players
            .get(player)
            .is_some_and(|(member, _)| member.connection == connection);
        if !current {
            return None;
        }
        let (member, room) = state.players.remove(player)?;
        state.remove_from_room(&room, player);
        state.by_name.remove(&member.name.folded());
        Some(room)
    }

    /// Hands a client message to the player's connection, which runs it in order with the
    /// ones from its own socket.
    pub fn submit(&self, player: &str, message: ClientMessage) -> Result<(), ManagerError> {
        let state = self.read();
        let (member, _) = state
            .players
            .get(player)
            .ok_or(ManagerError::NotConnected)?;
        member.commands.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ManagerError::Busy,
            mpsc::error::TrySendError::Closed(_) => ManagerError::NotConnected,
        })
    }

    /// Moves a connected player; returns the room it left.
    pub fn move_player(&self, player: &PlayerId, to: &RoomId) -> Result<RoomId, ManagerError> {
        let mut state = self.write();
        let (member, from) = state
            .players
            .get(player)
            .map(|(m, r)| (m.clone(), r.clone()))
            .ok_or(ManagerError::NotConnected)?;
        state.remove_from_room(&from, player);
        state.add_to_room(to, player, &member);
        if let Some(entry) = state.players.get_mut(player) {
            entry.1 = to.clone();
        }
        Ok(from)
    }

    pub fn room_of(&self, player: &PlayerId) -> Option<RoomId> {
        self.read()
            .players
            .get(player)
            .map(|(_, room)| room.clone())
    }

    /// Names of the players in `room`, sorted.
    pub fn occupants(&self, room: &RoomId) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<String> = state
            .rooms
            .get(room)
            .map(|members| members.iter().map(|(_, m)| m.name.to_string()).collect())
            .unwrap_or_default();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names
    }

    /// A connected player by name, case-insensitively.
    pub fn find_by_name(&self, name: &str) -> Option<(PlayerId, PlayerName)> {
        let state = self.read();
        let id = state.by_name.get(&name.to_ascii_lowercase())?;
        let (member, _) = state.players.get(id)?;
        Some((id.clone(), member.name.clone()))
    }

    pub fn name_of(&self, player: &PlayerId) -> Option<PlayerName> {
        self.read().players.get(player).map(|(m, _)| m.name.clone())
    }

    pub fn last_whisper_from(&self, player: &PlayerId) -> Option<PlayerId> {
        let state = self.read();
        let (member, _) = state.players.get(player)?;
        member
            .last_whisper_from
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Every connected player's name, sorted.
    pub fn who(&self) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<String> = state
            .players
            .values()
            .map(|(m, _)| m.name.to_string())
            .collect();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names
    }

    pub fn connected_count(&self) -> usize {
        self.read().players.len()
    }

    /// Delivers to the members of `room`, except the actor. Returns how many got it.
    pub fn deliver_room(
        &self,
        room: &str,
        actor: Option<&str>,
        frame: &Frame,
        since: Instant,
    ) -> usize {
        let state = self.read();
        deliver_to_members(state.rooms.get(room), actor, frame, since)
    }

    /// Delivers to the members of each of `rooms`, except the actor.
    pub fn deliver_rooms(
        &self,
        rooms: &[RoomId],
        actor: Option<&str>,
        frame: &Frame,
        since: Instant,
    ) -> usize {
        let state = self.read();
        rooms
            .iter()
            .map(|room| deliver_to_members(state.rooms.get(room), actor, frame, since))
            .sum()
    }

    /// Delivers to every connected player, except the actor.
    pub fn deliver_all(&self, actor: Option<&str>, frame: &Frame, since: Instant) -> usize {
        let state = self.read();
        state
            .players
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != actor)
            .filter(|(_, (member, _))| member.offer(frame, since))
            .count()
    }

    /// Delivers a whisper to its target, remembering the sender for `reply`.
    pub fn deliver_whisper(
        &self,
        target: &str,
        sender: Option<PlayerId>,
        frame: &Frame,
        since: Instant,
    ) -> usize {
        let state = self.read();
        let Some((member, _)) = state.players.get(target) else {
            return 0;
        };
        if let Some(sender) = sender {
            match member.last_whisper_from.lock() {
                Ok(mut last) => *last = Some(sender),
                Err(poisoned) => *poisoned.into_inner() = Some(sender),
            }
        }
        usize::from(member.offer(frame, since))
    }

    /// Closes every open connection with `reason`, still accepting new ones.
    pub fn kick_all(&self, reason: CloseReason) {
        let state = self.read();
        for (member, _) in state.players.values() {
            member.kick.close(reason);
        }
    }

    /// Stops new connections and closes every open one with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let mut state = self.write();
        state.accepting = false;
        for (member, _) in state.players.values() {
            member.kick.close(reason);
        }
    }
}

fn deliver_to_members(
    members: Option<&Vec<(PlayerId, Arc<Member>)>>,
    actor: Option<&str>,
    frame: &Frame,
    since: Instant,
) -> usize {
    members.map_or(0, |members| {
        members
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != actor)
            .filter(|(_, member)| member.offer(frame, since))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PlayerId {
        PlayerId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }
    fn name(s: &str) -> PlayerName {
        PlayerName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }
    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn membership_has_no_ghosts() {
        let manager = ConnectionManager::new(4);
        let a = manager
            .connect(
                id("a"),
                name("Alice"),
                room("r1"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let _b = manager
            .connect(
                id("b"),
                name("Bob"),
                room("r1"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(manager.occupants(&room("r1")), vec!["Alice", "Bob"]);
        assert_eq!(
            manager.move_player(&id("a"), &room("r2")).ok(),
            Some(room("r1"))
        );
        assert_eq!(manager.occupants(&room("r1")), vec!["Bob"]);
        assert_eq!(manager.occupants(&room("r2")), vec!["Alice"]);
        // A replacing login keeps the room and closes the old connection.
        let a2 = manager
            .connect(
                id("a"),
                name("Alice"),
                room("r1"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a2.room, room("r2"));
        assert!(!a2.entered_game);
        assert_eq!(a.handle.kick.reason(), CloseReason::REPLACED);
        // The old connection's cleanup must not remove the new one.
        assert_eq!(manager.disconnect(&id("a"), a.handle.connection), None);
        assert_eq!(manager.occupants(&room("r2")), vec!["Alice"]);
        assert_eq!(
            manager.disconnect(&id("a"), a2.handle.connection),
            Some(room("r2"))
        );
        assert!(manager.occupants(&room("r2")).is_empty());
        assert_eq!(manager.who(), vec!["Bob"]);
        assert!(manager.find_by_name("alice").is_none());
        assert!(manager.find_by_name("BOB").is_some());
    }

    #[test]
    fn full_queue_closes_only_that_connection() {
        let manager = ConnectionManager::new(2);
        let slow = manager
            .connect(
                id("s"),
                name("Slow"),
                room("r"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut fast = manager
            .connect(
                id("f"),
                name("Fast"),
                room("r"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3 {
            let frame = Frame::from(format!("{{\"n\":{i}}}"));
            manager.deliver_room("r", None, &frame, Instant::now());
            assert!(fast.outbound.try_recv().is_ok());
        }
        assert_eq!(slow.handle.kick.reason(), CloseReason::SLOW_CONSUMER);
        assert!(!fast.handle.kick.is_closed());
    }

    #[test]
    fn actor_is_skipped() {
        let manager = ConnectionManager::new(4);
        let mut a = manager
            .connect(
                id("a"),
                name("Alice"),
                room("r"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let mut b = manager
            .connect(
                id("b"),
                name("Bob"),
                room("r"),
                Transport::WebSocket,
                |_, _| bytes::Bytes::new(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            manager.deliver_room("r", Some("a"), &Frame::from("{}"), Instant::now()),
            1
        );
        assert!(a.outbound.try_recv().is_err());
        assert!(b.outbound.try_recv().is_ok());
        assert_eq!(
            manager.deliver_all(Some("b"), &Frame::from("{}"), Instant::now()),
            1
        );
        assert!(a.outbound.try_recv().is_ok());
    }
}
