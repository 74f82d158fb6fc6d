//! The one source of truth for who is connected to this node and which room each player is
//! in, and the fan-out of frames to their sockets.
//!
//! Each connection has a bounded outbound queue drained by one writer task. Delivery never
//! waits: a full queue closes that connection as a slow consumer (4008) and delivery to
//! everyone else goes on.
//!
//! Locks are small and never held across an `.await`:
//! - one per room (the world's rooms are fixed at start), holding the room's members and
//!   its event numbering. A room event is numbered and handed to the room's members under
//!   that room's lock, and a player enters a room (its `game_state` or `room_update`
//!   queued, with the number the room is at) under the same lock, so an arriving player
//!   gets exactly the room's events numbered after the one its greeting names.
//! - one per shard of the player table (who is connected, by id), with a snapshot of the
//!   shard's members that broadcasts (ticks, global chat) walk outside any lock.
//!
//! Lock order, so no two paths can wait on each other: player shard, then the name table,
//! then rooms in increasing index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Instant;

use natsmud_protocol::envelope::splice_sequence;
use natsmud_protocol::{ClientMessage, PlayerId, PlayerName, RoomId, SubZoneId};
use tokio::sync::mpsc;

use super::mailbox;

use super::connection::{COMMAND_QUEUE, Member, NO_ROOM};
pub use super::connection::{
    CloseReason, ConnectionHandle, DIRECT_REPLY_WAIT, Frame, Kick, Queued, Transport,
};
use crate::world::World;

/// Shards of the player table: enough that connects on different workers rarely meet,
/// few enough that a broadcast's walk over them costs nothing.
const SHARDS: usize = 64;

/// The result of registering a connection.
#[derive(Debug)]
pub struct Connected {
    pub handle: ConnectionHandle,
    pub outbound: mailbox::Receiver<Queued>,
    /// Client messages submitted from outside the socket (`POST /api/command`).
    pub commands: mailbox::Receiver<ClientMessage>,
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
    #[error("the server is full")]
    Full,
    #[error("too many commands are waiting; slow down")]
    Busy,
    #[error("no such room")]
    UnknownRoom,
}

/// Who a connection is: its id, and the revision of the presence entry it holds (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub connection: u64,
    pub presence: u64,
    /// Room in the queue beyond the usual: a resuming connection's live events wait there
    /// while its missed ones are read back, and the events both bring (those published
    /// just before it came back) must not overflow it. Only what is queued takes memory.
    pub queue_headroom: usize,
}

/// What a greeting or a `room_update` is made from, read under the room's lock.
#[derive(Debug)]
pub struct Arrival<'a> {
    pub room: &'a RoomId,
    /// Names of the players in the room (the arriving one included), sorted.
    pub occupants: Vec<String>,
    /// The number of the room's last event before the arrival.
    pub sequence: u64,
}

#[derive(Debug, Default)]
struct RoomState {
    /// The number of the room's last event on this node.
    sequence: u64,
    members: Vec<Arc<Member>>,
}

impl RoomState {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.members.iter().map(|m| m.name.to_string()).collect();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names
    }

    fn remove(&mut self, member: &Arc<Member>) -> bool {
        match self.members.iter().position(|m| Arc::ptr_eq(m, member)) {
            Some(at) => {
                self.members.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct RoomSlot {
    id: RoomId,
    state: Mutex<RoomState>,
    /// Whether the node listens to this room for its players (see [`ConnectionManager::listens_to`]).
    listened: AtomicBool,
}

#[derive(Debug)]
struct Shard {
    accepting: bool,
    by_id: HashMap<PlayerId, Arc<Member>>,
    /// The members as a broadcast walks them; rebuilt after a change, when next needed.
    snapshot: Option<Arc<[Arc<Member>]>>,
    /// Each player's action lock, shared by its successive connections (see
    /// [`Member::actions`]); dropped once nothing holds it.
    actions: HashMap<PlayerId, Weak<tokio::sync::Mutex<()>>>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            accepting: true,
            by_id: HashMap::new(),
            snapshot: None,
            actions: HashMap::new(),
        }
    }
}

#[derive(Debug)]
pub struct ConnectionManager {
    rooms: Vec<RoomSlot>,
    room_index: HashMap<RoomId, usize>,
    /// Each sub-zone's rooms, by index, in increasing order (the order they are locked in).
    sub_zones: HashMap<SubZoneId, Vec<usize>>,
    shards: Vec<Mutex<Shard>>,
    by_name: RwLock<HashMap<String, Arc<Member>>>,
    connected: AtomicUsize,
    next_connection: AtomicU64,
    queue_capacity: usize,
    shutting_down: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves at worst a stale entry, which is
    // better than refusing every later connection, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(player: &str) -> usize {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    (SEED.get_or_init(Default::default).hash_one(player) as usize) % SHARDS
}

impl ConnectionManager {
    /// A manager for the rooms of `world`, each connection queueing at most
    /// `queue_capacity` frames.
    pub fn new(world: &World, queue_capacity: usize) -> Self {
        let mut ids: Vec<RoomId> = world.rooms().map(|room| room.id.clone()).collect();
        ids.sort();
        let room_index: HashMap<RoomId, usize> = ids
            .iter()
            .enumerate()
            .map(|(index, id)| (id.clone(), index))
            .collect();
        let sub_zones = world
            .sub_zones()
            .map(|(sub_zone, rooms)| {
                let mut indexes: Vec<usize> = rooms
                    .iter()
                    .filter_map(|room| room_index.get(room).copied())
                    .collect();
                indexes.sort_unstable();
                (sub_zone.clone(), indexes)
            })
            .collect();
        Self {
            rooms: ids
                .into_iter()
                .map(|id| RoomSlot {
                    id,
                    state: Mutex::new(RoomState::default()),
                    listened: AtomicBool::new(true),
                })
                .collect(),
            room_index,
            sub_zones,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            by_name: RwLock::new(HashMap::new()),
            connected: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn shard(&self, player: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(player)])
    }

    fn room_state(&self, index: usize) -> Option<MutexGuard<'_, RoomState>> {
        self.rooms.get(index).map(|slot| lock(&slot.state))
    }

    /// The room index of a room of this world.
    pub fn room_index(&self, room: &str) -> Option<usize> {
        self.room_index.get(room).copied()
    }

    /// Whether events of `room` are for this node: a node that listens to the whole
    /// world while subscribing by interest hears every room, and drops the events of those
    /// it would not have subscribed to before reading them (they cost it no more than
    /// they did when it subscribed to rooms one by one). Every room is listened to until
    /// [`ConnectionManager::set_listened`] says otherwise.
    pub fn listens_to(&self, room: &str) -> bool {
        self.room_index(room)
            .is_none_or(|index| self.rooms[index].listened.load(Ordering::Acquire))
    }

    /// For a node that subscribes by interest: no room until its players want one.
    pub fn listen_to_no_room(&self) {
        for slot in &self.rooms {
            slot.listened.store(false, Ordering::Release);
        }
    }

    pub fn set_listened(&self, room: &str, listened: bool) {
        if let Some(index) = self.room_index(room) {
            self.rooms[index]
                .listened
                .store(listened, Ordering::Release);
        }
    }

    /// Rooms and sub-zones of the world.
    pub fn place_count(&self) -> usize {
        self.rooms.len() + self.sub_zones.len()
    }

    pub fn has_sub_zone(&self, sub_zone: &str) -> bool {
        self.sub_zones.contains_key(sub_zone)
    }

    /// The lock that `player`'s commands hold while they move the player, shared by all of
    /// its connections. A login takes it before replacing a connection.
    pub fn action_lock(&self, player: &PlayerId) -> Arc<tokio::sync::Mutex<()>> {
        let mut shard = self.shard(player.as_str());
        if let Some(lock) = shard.actions.get(player).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the locks nobody holds any more, now and then, so the map stays the size
        // of the players who are connected or connecting.
        if shard.actions.len() > 2 * shard.by_id.len() + 16 {
            shard.actions.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        shard.actions.insert(player.clone(), Arc::downgrade(&lock));
        lock
    }

    /// An id for a connection about to register (its presence entry names it first).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection for `player` in `room`. A second connection of the same
    /// player replaces the first (closed with 4001) and keeps its room.
    ///
    /// `greeting` makes the connection's first frame (direct sequence 1) from the room; it
    /// is queued under the room's lock before the player joins it, so no event of the room
    /// comes first and every event numbered after `Arrival::sequence` follows it.
    ///
    /// `max_players` (0: no limit) bounds the players connected here; a connection that
    /// replaces one of the same player is always let in.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &self,
        player: PlayerId,
        name: PlayerName,
        room: &RoomId,
        transport: Transport,
        max_players: usize,
        identity: Identity,
        greeting: impl FnOnce(Arrival<'_>) -> bytes::Bytes,
    ) -> Result<Connected, ManagerError> {
        let wanted = self
            .room_index(room.as_str())
            .ok_or(ManagerError::UnknownRoom)?;
        let (tx, outbound) = mailbox::mailbox(self.queue_capacity + identity.queue_headroom);
        let (command_tx, commands) = mailbox::mailbox(COMMAND_QUEUE);
        let connection = identity.connection;

        let mut shard = self.shard(player.as_str());
        if !shard.accepting {
            return Err(ManagerError::ShuttingDown);
        }
        let old = shard.by_id.get(&player).cloned();
        if old.is_none() {
            let reserved = self
                .connected
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (max_players == 0 || n < max_players).then_some(n + 1)
                });
            if reserved.is_err() {
                return Err(ManagerError::Full);
            }
        }
        let actions = match shard.actions.get(&player).and_then(Weak::upgrade) {
            Some(lock) => lock,
            None => {
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                shard.actions.insert(player.clone(), Arc::downgrade(&lock));
                lock
            }
        };
        let member = Arc::new(Member {
            player: player.clone(),
            name: name.clone(),
            connection,
            tx,
            commands: command_tx,
            kick: Arc::new(Kick::default()),
            room: std::sync::atomic::AtomicUsize::new(NO_ROOM),
            last_whisper_from: std::sync::Mutex::new(None),
            whispers: AtomicU64::new(0),
            presence: AtomicU64::new(identity.presence),
            actions,
        });
        let index = match &old {
            Some(old) => {
                old.kick.close(CloseReason::REPLACED);
                match self.leave_room(old) {
                    Some(index) => index,
                    None => wanted,
                }
            }
            None => wanted,
        };
        {
            let mut names = self.by_name.write().unwrap_or_else(|e| e.into_inner());
            names.insert(name.folded(), member.clone());
        }
        let slot = &self.rooms[index];
        {
            let mut state = lock(&slot.state);
            let mut occupants = state.names();
            occupants.push(name.to_string());
            occupants.sort_unstable_by_key(|n| n.to_ascii_lowercase());
            let greeting = greeting(Arrival {
                room: &slot.id,
                occupants,
                sequence: state.sequence,
            });
            if !greeting.is_empty()
                && let Ok(frame) = Frame::try_from(greeting)
            {
                // The queue is new and empty: this cannot be full.
                let _ = member.tx.try_send(Queued::new(frame));
            }
            member.room.store(index, Ordering::Release);
            state.members.push(member.clone());
        }
        shard.by_id.insert(player, member.clone());
        shard.snapshot = None;
        drop(shard);
        Ok(Connected {
            handle: ConnectionHandle::new(member, transport),
            outbound,
            commands,
            room: slot.id.clone(),
            entered_game: old.is_none(),
        })
    }

    /// Takes `member` out of its room; returns the room's index.
    fn leave_room(&self, member: &Arc<Member>) -> Option<usize> {
        loop {
            let index = member.room.load(Ordering::Acquire);
            let mut state = self.room_state(index)?;
            // A move may have changed the member's room between the load and the lock.
            if member.room.load(Ordering::Acquire) != index {
                continue;
            }
            state.remove(member);
            member.room.store(NO_ROOM, Ordering::Release);
            return Some(index);
        }
    }

    /// Removes the connection if it is still the player's current one; returns the room the
    /// player left, so the caller can tell it.
    pub fn disconnect(&self, handle: &ConnectionHandle) -> Option<RoomId> {
        let member = &handle.member;
        let mut shard = self.shard(member.player.as_str());
        let current = shard
            .by_id
            .get(&member.player)
            .is_some_and(|m| Arc::ptr_eq(m, member));
        if !current {
            return None;
        }
        shard.by_id.remove(&member.player);
        shard.snapshot = None;
        self.connected.fetch_sub(1, Ordering::AcqRel);
        {
            let mut names = self.by_name.write().unwrap_or_else(|e| e.into_inner());
            if names
                .get(&member.name.folded())
                .is_some_and(|m| Arc::ptr_eq(m, member))
            {
                names.remove(&member.name.folded());
            }
        }
        let index = self.leave_room(member)?;
        drop(shard);
        Some(self.rooms[index].id.clone())
    }

    /// Hands a client message to the player's connection, which runs it in order with the
    /// ones from its own socket.
    pub fn submit(&self, player: &str, message: ClientMessage) -> Result<(), ManagerError> {
        let member = self
            .shard(player)
            .by_id
            .get(player)
            .cloned()
            .ok_or(ManagerError::NotConnected)?;
        member.commands.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ManagerError::Busy,
            mpsc::error::TrySendError::Closed(_) => ManagerError::NotConnected,
        })
    }

    /// Moves this connection's player to `to`. Under the two rooms' locks: out of the old
    /// room, `update` (the mover's `room_update`) queued with `permit`, into the new room —
    /// so the mover's next frame of the new room is the one numbered after
    /// `Arrival::sequence`. The `room_update` is written only once `gate` opens. Returns
    /// the room left. Fails when this connection is no longer the player's (replaced or
    /// closed).
    pub fn move_to(
        &self,
        handle: &ConnectionHandle,
        to: &RoomId,
        permit: mailbox::Permit<'_, Queued>,
        gate: Option<super::connection::Gate>,
        update: impl FnOnce(Arrival<'_>) -> bytes::Bytes,
    ) -> Result<RoomId, ManagerError> {
        let member = &handle.member;
        let to_index = self
            .room_index(to.as_str())
            .ok_or(ManagerError::UnknownRoom)?;
        loop {
            let from_index = member.room.load(Ordering::Acquire);
            if from_index == NO_ROOM {
                return Err(ManagerError::NotConnected);
            }
            let (mut from, mut into) = if from_index == to_index {
                (None, lock(&self.rooms[to_index].state))
            } else if from_index < to_index {
                let from = lock(&self.rooms[from_index].state);
                (Some(from), lock(&self.rooms[to_index].state))
            } else {
                let into = lock(&self.rooms[to_index].state);
                (Some(lock(&self.rooms[from_index].state)), into)
            };
            if member.room.load(Ordering::Acquire) != from_index {
                continue;
            }
            match from.as_mut() {
                Some(from) => {
                    if !from.remove(member) {
                        return Err(ManagerError::NotConnected);
                    }
                }
                None => {
                    if !into.remove(member) {
                        return Err(ManagerError::NotConnected);
                    }
                }
            }
            let mut occupants = into.names();
            occupants.push(member.name.to_string());
            occupants.sort_unstable_by_key(|n| n.to_ascii_lowercase());
            let bytes = update(Arrival {
                room: &self.rooms[to_index].id,
                occupants,
                sequence: into.sequence,
            });
            if let Ok(frame) = Frame::try_from(bytes) {
                permit.send(Queued {
                    gate,
                    ..Queued::new(frame)
                });
            }
            member.room.store(to_index, Ordering::Release);
            into.members.push(member.clone());
            return Ok(self.rooms[from_index].id.clone());
        }
    }

    /// The room this connection's player is in; `None` once the connection is replaced or
    /// closed.
    pub fn room_of(&self, handle: &ConnectionHandle) -> Option<RoomId> {
        let index = handle.member.room.load(Ordering::Acquire);
        self.rooms.get(index).map(|slot| slot.id.clone())
    }

    /// Whether nobody on this node is in `room` (a room of another world: true).
    pub fn room_is_empty(&self, room: &str) -> bool {
        self.room_index(room)
            .and_then(|index| self.room_state(index))
            .is_none_or(|state| state.members.is_empty())
    }

    /// Whether nobody on this node is in any room of `sub_zone`.
    pub fn sub_zone_is_empty(&self, sub_zone: &str) -> bool {
        self.sub_zones.get(sub_zone).is_none_or(|rooms| {
            rooms
                .iter()
                .all(|&index| lock(&self.rooms[index].state).members.is_empty())
        })
    }

    /// Names of the players in `room`, sorted.
    pub fn occupants(&self, room: &RoomId) -> Vec<String> {
        self.room_index(room.as_str())
            .and_then(|index| self.room_state(index))
            .map(|state| state.names())
            .unwrap_or_default()
    }

    /// A connected player by name, case-insensitively.
    pub fn find_by_name(&self, name: &str) -> Option<(PlayerId, PlayerName)> {
        let names = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let member = names.get(&name.to_ascii_lowercase())?;
        Some((member.player.clone(), member.name.clone()))
    }

    pub fn name_of(&self, player: &PlayerId) -> Option<PlayerName> {
        self.shard(player.as_str())
            .by_id
            .get(player)
            .map(|m| m.name.clone())
    }

    pub fn is_connected(&self, player: &str) -> bool {
        self.shard(player).by_id.contains_key(player)
    }

    /// Every connected player's name, sorted.
    pub fn who(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.connected_count());
        for shard in &self.shards {
            names.extend(lock(shard).by_id.values().map(|m| m.name.to_string()));
        }
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names
    }

    pub fn connected_count(&self) -> usize {
        self.connected.load(Ordering::Acquire)
    }

    /// Numbers a room event (the room's next number, spliced into `payload`) and queues it
    /// for the room's members except the actor. `None` when `room` is not a room of this
    /// world or `payload` is not a JSON object; else how many got it.
    pub fn deliver_room(
        &self,
        room: &str,
        actor: Option<&str>,
        payload: &[u8],
        since: Instant,
    ) -> Option<usize> {
        let index = self.room_index(room)?;
        let mut state = lock(&self.rooms[index].state);
        let frame = Frame::try_from(splice_sequence(payload, state.sequence + 1)?).ok()?;
        state.sequence += 1;
        Some(offer_all(&state.members, actor, &frame, since))
    }

    /// Delivers to the members of every room of `sub_zone`, except the actor. All of the
    /// sub-zone's rooms are held at once, so a player walking between two of them gets the
    /// event exactly once. `None` when the sub-zone is not one of this world's.
    pub fn deliver_sub_zone(
        &self,
        sub_zone: &str,
        actor: Option<&str>,
        frame: &Frame,
        since: Instant,
    ) -> Option<usize> {
        let rooms = self.sub_zones.get(sub_zone)?;
        let states: Vec<MutexGuard<'_, RoomState>> = rooms
            .iter()
            .map(|&index| lock(&self.rooms[index].state))
            .collect();
        Some(
            states
                .iter()
                .map(|state| offer_all(&state.members, actor, frame, since))
                .sum(),
        )
    }

    /// Delivers to every connected player, except the actor. No lock is held while the
    /// frames are handed out: each shard's member list is a snapshot.
    pub fn deliver_all(&self, actor: Option<&str>, frame: &Frame, since: Instant) -> usize {
        let mut delivered = 0;
        for shard in &self.shards {
            let snapshot = {
                let mut shard = lock(shard);
                match &shard.snapshot {
                    Some(snapshot) => snapshot.clone(),
                    None => {
                        let snapshot: Arc<[Arc<Member>]> = shard.by_id.values().cloned().collect();
                        shard.snapshot = Some(snapshot.clone());
                        snapshot
                    }
                }
            };
            delivered += offer_all(&snapshot, actor, frame, since);
        }
        delivered
    }

    /// Numbers a whisper in its target's whisper stream and queues it, remembering the
    /// sender for `reply`: how many got it (0: the target is not connected here). `None`
    /// when no frame can be made of `payload` (no number is taken then).
    pub fn deliver_whisper(
        &self,
        target: &str,
        sender: Option<PlayerId>,
        payload: &[u8],
        since: Instant,
    ) -> Option<usize> {
        let Some(member) = self.shard(target).by_id.get(target).cloned() else {
            return Some(0);
        };
        // Only the NATS handler's one task numbers whispers.
        let sequence = member.whispers.load(Ordering::Acquire) + 1;
        let frame =
            splice_sequence(payload, sequence).and_then(|bytes| Frame::try_from(bytes).ok())?;
        member.whispers.store(sequence, Ordering::Release);
        if let Some(sender) = sender {
            member.remember_whisper_from(sender);
        }
        Some(usize::from(member.offer(&frame, since)))
    }

    /// Closes the player's connection here if the presence entry at `revision` is newer
    /// than the one it holds and is not its own (`own_connection`: the connection the entry
    /// names, when it is this node's).
    pub fn kick_if_presence_older(
        &self,
        player: &PlayerId,
        revision: u64,
        own_connection: Option<u64>,
        reason: CloseReason,
    ) {
        let Some(member) = self.shard(player.as_str()).by_id.get(player).cloned() else {
            return;
        };
        if own_connection == Some(member.connection) {
            return;
        }
        let held = member.presence.load(Ordering::Acquire);
        if held != 0 && held < revision {
            member.kick.close(reason);
        }
    }

    /// Whether a connection here holds the player's presence entry at `revision` (or a
    /// newer one).
    pub fn holds_presence(&self, player: &PlayerId, revision: u64) -> bool {
        self.shard(player.as_str())
            .by_id
            .get(player)
            .is_some_and(|member| member.presence.load(Ordering::Acquire) >= revision)
    }

    /// Takes `revision` as the one the player's connection `connection` holds, if that
    /// connection is here and holds an older one: the entry is a write of its own whose
    /// answer was lost (a move refused for the silence, stored all the same). True when
    /// the connection holds `revision` (or a newer one) now.
    pub fn adopt_own_presence(&self, player: &PlayerId, connection: u64, revision: u64) -> bool {
        let Some(member) = self.shard(player.as_str()).by_id.get(player).cloned() else {
            return false;
        };
        if member.connection != connection {
            return false;
        }
        // Only ever raised, and never from 0 (a connection let in without an entry).
        member
            .presence
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held != 0 && held < revision).then_some(revision)
            })
            .map_or_else(|held| held >= revision, |_| true)
    }

    /// Closes every open connection with `reason`, still accepting new ones.
    pub fn kick_all(&self, reason: CloseReason) {
        for shard in &self.shards {
            for member in lock(shard).by_id.values() {
                member.kick.close(reason);
            }
        }
    }

    /// Closes the connections let in while presence could not be written (they hold no
    /// entry, revision 0: nobody elsewhere sees them), so that they log in again and
    /// claim one. Returns how many.
    pub fn kick_unclaimed(&self, reason: CloseReason) -> usize {
        let mut kicked = 0;
        for shard in &self.shards {
            for member in lock(shard).by_id.values() {
                if member.presence.load(Ordering::Acquire) == 0 {
                    member.kick.close(reason);
                    kicked += 1;
                }
            }
        }
        kicked
    }

    /// Stops new connections and closes every open one with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        self.shutting_down.store(true, Ordering::Release);
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.accepting = false;
            for member in shard.by_id.values() {
                member.kick.close(reason);
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

fn offer_all(members: &[Arc<Member>], actor: Option<&str>, frame: &Frame, since: Instant) -> usize {
    members
        .iter()
        .filter(|member| Some(member.player.as_str()) != actor)
        .filter(|member| member.offer(frame, since))
        .count()
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

    /// The built-in world and two rooms joined by an exit.
    fn setup(queue: usize) -> (ConnectionManager, RoomId, RoomId) {
        let world = World::built_in().unwrap_or_else(|e| panic!("{e}"));
        let start = world.start().id.clone();
        let next = world
            .start()
            .exits
            .values()
            .next()
            .cloned()
            .unwrap_or_else(|| panic!("the start room has an exit"));
        (ConnectionManager::new(&world, queue), start, next)
    }

    fn identity(manager: &ConnectionManager) -> Identity {
        Identity {
            queue_headroom: 0,
            connection: manager.next_connection_id(),
            presence: 0,
        }
    }

    fn join(manager: &ConnectionManager, who: &str, at: &RoomId) -> Connected {
        manager
            .connect(
                id(&who.to_ascii_lowercase()),
                name(who),
                at,
                Transport::WebSocket,
                0,
                identity(manager),
                |view| bytes::Bytes::from(format!("{{\"room_sequence\":{}}}", view.sequence)),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn walk(
        manager: &ConnectionManager,
        who: &Connected,
        to: &RoomId,
    ) -> Result<RoomId, ManagerError> {
        let permit = who
            .handle
            .member
            .tx
            .try_reserve()
            .unwrap_or_else(|e| panic!("{e}"));
        manager.move_to(&who.handle, to, permit, None, |view| {
            bytes::Bytes::from(format!("{{\"room_sequence\":{}}}", view.sequence))
        })
    }

    fn frames(connected: &mut Connected) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(queued) = connected.outbound.try_recv() {
            out.push(queued.frame.to_string());
        }
        out
    }

    #[test]
    fn membership_has_no_ghosts() {
        let (manager, r1, r2) = setup(4);
        let a = join(&manager, "Alice", &r1);
        let _b = join(&manager, "Bob", &r1);
        assert_eq!(manager.occupants(&r1), vec!["Alice", "Bob"]);
        assert_eq!(walk(&manager, &a, &r2).ok(), Some(r1.clone()));
        assert_eq!(manager.occupants(&r1), vec!["Bob"]);
        assert_eq!(manager.occupants(&r2), vec!["Alice"]);
        // A replacing login keeps the room and closes the old connection.
        let a2 = join(&manager, "Alice", &r1);
        assert_eq!(a2.room, r2);
        assert!(!a2.entered_game);
        assert_eq!(a.handle.kick.reason(), CloseReason::REPLACED);
        // The old connection's cleanup must not remove the new one.
        assert_eq!(manager.disconnect(&a.handle), None);
        assert_eq!(manager.occupants(&r2), vec!["Alice"]);
        assert_eq!(manager.disconnect(&a2.handle), Some(r2.clone()));
        assert!(manager.occupants(&r2).is_empty());
        assert_eq!(manager.who(), vec!["Bob"]);
        assert_eq!(manager.connected_count(), 1);
        assert!(manager.find_by_name("alice").is_none());
        assert!(manager.find_by_name("BOB").is_some());
    }

    #[test]
    fn a_replaced_connection_cannot_move_its_successor() {
        let (manager, r1, r2) = setup(4);
        let old = join(&manager, "Alice", &r1);
        let new = join(&manager, "Alice", &r1);
        assert!(matches!(
            walk(&manager, &old, &r2),
            Err(ManagerError::NotConnected)
        ));
        assert_eq!(manager.occupants(&r1), vec!["Alice"]);
        assert!(manager.occupants(&r2).is_empty());
        assert_eq!(manager.room_of(&old.handle), None);
        assert_eq!(manager.room_of(&new.handle), Some(r1));
    }

    #[test]
    fn greetings_and_moves_name_where_the_room_numbering_stands() {
        let (manager, r1, r2) = setup(16);
        let mut bob = join(&manager, "Bob", &r2);
        for _ in 0..3 {
            manager.deliver_room(r2.as_str(), None, br#"{"x":1}"#, Instant::now());
        }
        let mut alice = join(&manager, "Alice", &r1);
        assert_eq!(frames(&mut alice), vec![r#"{"room_sequence":0}"#]);
        walk(&manager, &alice, &r2).unwrap_or_else(|e| panic!("{e}"));
        manager.deliver_room(r2.as_str(), None, br#"{"x":2}"#, Instant::now());
        assert_eq!(
            frames(&mut alice),
            vec![
                r#"{"room_sequence":3}"#.to_owned(),
                r#"{"sequence_number":4,"x":2}"#.to_owned()
            ]
        );
        assert_eq!(frames(&mut bob).len(), 5);
        let mut carol = join(&manager, "Carol", &r2);
        assert_eq!(frames(&mut carol), vec![r#"{"room_sequence":4}"#]);
    }

    #[test]
    fn full_queue_closes_only_that_connection() {
        let (manager, r, _) = setup(3);
        let slow = join(&manager, "Slow", &r);
        let mut fast = join(&manager, "Fast", &r);
        let _ = frames(&mut fast);
        for i in 0..4 {
            manager.deliver_room(
                r.as_str(),
                None,
                format!("{{\"n\":{i}}}").as_bytes(),
                Instant::now(),
            );
            assert_eq!(frames(&mut fast).len(), 1);
        }
        assert_eq!(slow.handle.kick.reason(), CloseReason::SLOW_CONSUMER);
        assert!(!fast.handle.kick.is_closed());
    }

    #[test]
    fn actor_is_skipped_and_broadcasts_reach_everyone_once() {
        let (manager, r1, r2) = setup(8);
        let mut a = join(&manager, "Alice", &r1);
        let mut b = join(&manager, "Bob", &r1);
        let mut c = join(&manager, "Carol", &r2);
        for connected in [&mut a, &mut b, &mut c] {
            let _ = frames(connected);
        }
        assert_eq!(
            manager.deliver_room(r1.as_str(), Some("alice"), b"{}", Instant::now()),
            Some(1)
        );
        assert!(frames(&mut a).is_empty());
        assert_eq!(frames(&mut b).len(), 1);
        assert_eq!(
            manager.deliver_all(Some("bob"), &Frame::from("{}"), Instant::now()),
            2
        );
        assert_eq!(
            (
                frames(&mut a).len(),
                frames(&mut b).len(),
                frames(&mut c).len()
            ),
            (1, 0, 1)
        );
        // Events for rooms this world does not have are refused, not numbered.
        assert_eq!(
            manager.deliver_room("nowhere", None, b"{}", Instant::now()),
            None
        );
    }

    #[test]
    fn the_player_limit_holds_but_lets_a_replacement_in() {
        let (manager, r, _) = setup(4);
        let connect = |who: &str| {
            manager.connect(
                id(who),
                name(who),
                &r,
                Transport::WebSocket,
                2,
                identity(&manager),
                |_| bytes::Bytes::new(),
            )
        };
        assert!(connect("Alice").is_ok());
        assert!(connect("Bob").is_ok());
        assert!(matches!(connect("Carol"), Err(ManagerError::Full)));
        assert!(connect("Alice").is_ok(), "a replacement needs no new slot");
        assert_eq!(manager.connected_count(), 2);
    }
}
