//! Presence: who is online in the world and where, on every node — one source of truth in
//! NATS (a JetStream KV bucket), read through a local model ([`roster::Roster`]) so that
//! `who`, `look` and greetings never wait on the network.
//!
//! The bucket (`natsmud_presence`, or `natsmud_presence_<prefix>`) holds:
//! - `p.<player>`: the player's name, room, and the node, run (incarnation) and connection
//!   that hold it. Created at login, updated on every move, deleted at logout — always with
//!   the revision the writer last saw, never blindly, so two nodes can never both believe
//!   they hold a player: a second login anywhere takes the entry over (the holder's node
//!   sees it in its watch and closes its connection with 4001).
//! - `n.<node>`: each node's heartbeat, written with a per-key TTL and renewed well within
//!   it. When a node dies the key expires; every other node sees it go, and tries to delete
//!   each of its players' entries with the revision it saw: exactly one succeeds per player
//!   and announces that player's departure.
//! - `l.tick`: the tick leader's lease, the same way: only the node that holds it ticks.
//!
//! Events about presence carry the revision of the write that caused them (NATS header
//! [`PRESENCE_HEADER`]), so a node can apply them to its roster as it delivers them, in
//! whatever order they and the watch arrive.

pub mod roster;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use natsmud_protocol::{PlayerId, PlayerName, RoomId, SubjectPrefix};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::roster::{Holder, NodeSeen, Roster, Seen};
use crate::realtime::{CloseReason, ConnectionManager, EventPublisher};
use crate::telemetry;

/// The NATS header on presence events: the bucket revision of the write they announce.
pub const PRESENCE_HEADER: &str = "Natsmud-Presence";

const LEASE_KEY: &str = "l.tick";

/// How long the roster remembers a departure, so an older write still on its way cannot
/// bring the player back.
const REMEMBER_DEPARTURES: Duration = Duration::from_secs(120);

/// At most this many times [`Presence::outage_settles`] a dead node's players wait for a
/// bucket that keeps failing to settle before they are written off all the same.
const ORPHANS_WAIT_MOST: u32 = 3;

/// An entry of this node's with no connection behind it (a release that failed while NATS
/// was away) is removed once this old.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// The connection an entry names while its player is link-dead: in the world, held by a
/// node, but with no connection (connection ids start at 1).
pub const LINK_DEAD: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence is unavailable: {0}")]
    Unavailable(String),
    #[error("the player's presence was changed by another connection")]
    Taken,
    #[error("the player's presence is changing too fast; try again")]
    Contended,
}

/// How presence is kept; see `docs/configuration.md`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bucket: String,
    pub node_ttl: Duration,
    pub tick_lease: Duration,
    /// Whether this node may lead the tick (the world has a tick).
    pub ticks: bool,
    /// 0: 3 when the NATS server is part of a cluster, else 1.
    pub replicas: usize,
    /// How long a bucket request waits for its answer: a command waiting on one (a move,
    /// a login) answers within it. JetStream's own default is 5 s, which a request in
    /// flight when the NATS connection drops would wait out.
    pub request_timeout: Duration,
    /// How long a player whose connection dropped stays in the world (link-dead).
    pub link_dead_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            bucket: bucket_name(&config.subject_prefix),
            node_ttl: Duration::from_secs(config.node_ttl_secs),
            tick_lease: Duration::from_secs(config.tick_lease_secs),
            ticks: config.tick_interval().is_some(),
            replicas: config.nats_replicas as usize,
            request_timeout: config.publish_timeout(),
            link_dead_grace: config.link_dead_grace(),
        }
    }
}

/// The bucket of a world: its subject prefix in the name, so worlds sharing a NATS never
/// share presence.
pub fn bucket_name(prefix: &SubjectPrefix) -> String {
    if prefix.as_str().is_empty() {
        "natsmud_presence".to_owned()
    } else {
        format!("natsmud_presence_{}", prefix.as_str().replace('.', "_"))
    }
}

fn player_key(player: &str) -> String {
    format!("p.{player}")
}

fn node_key(node: &str) -> String {
    format!("n.{node}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlayerRecord {
    name: String,
    room: String,
    node: String,
    incarnation: String,
    connection: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    incarnation: String,
    started_ms: u64,
}

/// A player's departure from the game, to announce to its room.
#[derive(Debug, Clone)]
pub struct Departure {
    pub player: PlayerId,
    pub name: PlayerName,
    pub room: RoomId,
    /// The presence revision the player last had, when it had one.
    pub revision: Option<u64>,
}

/// Most departures kept for announcing later; beyond it the oldest are dropped (their
/// players' nodes close everyone on reconnect anyway).
const UNANNOUNCED_MAX: usize = 10_000;

/// What a login found: the revision it now holds, and whether it took the player over
/// from another connection (the player never left the game, and keeps its room).
#[derive(Debug)]
pub struct Claim {
    pub revision: u64,
    pub took_over: bool,
    pub previous_room: Option<RoomId>,
}

/// A write to the bucket, and what the revision check found.
enum Written {
    Ok(u64),
    Conflict,
}

#[derive(Clone)]
pub struct Presence(Arc<Inner>);

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    own: Holder,
    roster: Roster,
    manager: Arc<ConnectionManager>,
    /// The bucket, once it is known to exist (again after a NATS restart lost it).
    store: RwLock<Option<kv::Store>>,
    leader: AtomicBool,
    /// Notified when the connection to NATS comes back, so the watch starts afresh.
    restart: Arc<tokio::sync::Notify>,
    /// Notified when the tick lease is seen to go, so a follower tries for it at once.
    lease_free: tokio::sync::Notify,
    /// Departures whose announcement could not be published (NATS was away): published
    /// when it is back, so other nodes' players do not keep a ghost.
    unannounced: std::sync::Mutex<Vec<Departure>>,
    heartbeat: AtomicU64,
    /// Whether this node's last heartbeat renewal was answered: until it is again after a
    /// failure, logins may not get an entry.
    heartbeat_answered: AtomicBool,
    /// When the bucket last failed to answer this node (a JetStream leader election, a
    /// lost connection). Heartbeats lapse in an outage longer than the node TTL without
    /// any node dying: judging a node dead waits until the bucket has answered for a
    /// while, and a node finding its own heartbeat lapsed renews it.
    trouble: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The newest bucket revision the watch has applied to the roster (0 after a restart).
    watched: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.0.own.node)
            .finish()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Presence {
    /// `reconnected` is notified whenever the NATS connection comes back.
    pub fn new(
        client: async_nats::Client,
        settings: Settings,
        node: String,
        incarnation: String,
        manager: Arc<ConnectionManager>,
        reconnected: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self(Arc::new(Inner {
            js: {
                let mut js = jetstream::new(client.clone());
                js.set_timeout(settings.request_timeout);
                js
            },
            client,
            settings,
            own: Holder {
                node: node.into(),
                incarnation: incarnation.into(),
                connection: 0,
            },
            roster: Roster::default(),
            manager,
            store: RwLock::new(None),
            leader: AtomicBool::new(false),
            restart: reconnected,
            lease_free: tokio::sync::Notify::new(),
            unannounced: std::sync::Mutex::new(Vec::new()),
            heartbeat: AtomicU64::new(0),
            heartbeat_answered: AtomicBool::new(false),
            trouble: std::sync::Mutex::new(None),
            watched: tokio::sync::watch::Sender::new(0),
        }))
    }

    pub fn node(&self) -> &str {
        &self.0.own.node
    }

    pub fn roster(&self) -> &Roster {
        &self.0.roster
    }

    /// Waits (at most `wait`) until the roster holds every bucket write up to `revision`,
    /// this node's own write included. A node that just started listening to a room has
    /// heard none of its earlier arrivals and departures as events: what it lists there must
    /// come from the watch, and everything written before its own write is in the roster
    /// once the watch has passed that write.
    pub async fn caught_up(&self, revision: u64, wait: Duration) -> bool {
        if revision == 0 {
            return true;
        }
        let mut watched = self.0.watched.subscribe();
        tokio::time::timeout(wait, watched.wait_for(|seen| *seen >= revision))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    pub fn is_tick_leader(&self) -> bool {
        self.0.leader.load(Ordering::Acquire)
    }

    /// Waits (at most `wait`) until the roster holds what the bucket held: before that,
    /// `who` and greetings would miss players of other nodes.
    pub async fn ready(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Whether a login here now gets an entry every node sees, and a roster of the whole
    /// world (before that, players are let in on this node only and closed once it is).
    pub fn is_ready(&self) -> bool {
        self.0.roster.is_current()
            && self.0.heartbeat_answered.load(Ordering::Acquire)
            && self.heartbeat_held().is_ok()
    }

    fn troubled(&self) {
        *self.0.trouble.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now());
    }

    /// A write answered this late counts as trouble: heartbeats renewed every third of the
    /// TTL, each answered this late, are stored more than a TTL apart and lapse with every
    /// write succeeding; and a bucket this slow for one node is as slow for the others
    /// (they must not take each other for dead).
    fn slow_answer(&self) -> Duration {
        self.0.settings.node_ttl / 2
    }

    /// Whether the bucket has answered this node, and in time, for `window`.
    fn calm_for(&self, window: Duration) -> bool {
        self.0
            .trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|since| since.elapsed() >= window)
    }

    /// How long after an outage a lapsed heartbeat is still the outage's doing: its node
    /// renews it within a third of the TTL of the bucket's return, well inside this.
    fn outage_settles(&self) -> Duration {
        self.0.settings.node_ttl * 2
    }

    fn store(&self) -> Result<kv::Store, PresenceError> {
        if self.0.client.connection_state() != async_nats::connection::State::Connected {
            return Err(PresenceError::Unavailable("NATS is not connected".into()));
        }
        self.0
            .store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| PresenceError::Unavailable("the presence bucket is not ready".into()))
    }

    /// The bucket, once this node's heartbeat is in it: other nodes must know this node is
    /// alive before it holds any player, or they would write the player off.
    fn heartbeat_held(&self) -> Result<kv::Store, PresenceError> {
        let store = self.store()?;
        if self.0.heartbeat.load(Ordering::Acquire) == 0 {
            return Err(PresenceError::Unavailable(
                "this node's heartbeat is not in the bucket yet".into(),
            ));
        }
        Ok(store)
    }

    fn holder(&self, connection: u64) -> Holder {
        Holder {
            connection,
            ..self.0.own.clone()
        }
    }

    fn record(&self, name: &PlayerName, room: &RoomId, connection: u64) -> PlayerRecord {
        PlayerRecord {
            name: name.to_string(),
            room: room.to_string(),
            node: self.0.own.node.to_string(),
            incarnation: self.0.own.incarnation.to_string(),
            connection,
        }
    }

    /// Writes `value` (or a delete marker) to `key` if its last revision is `expected` (0:
    /// the key has none), with a per-key TTL if asked.
    async fn write(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
        ttl: Option<Duration>,
        delete: bool,
    ) -> Result<Written, PresenceError> {
        let store_name = &self.0.settings.bucket;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        if let Some(ttl) = ttl {
            headers.insert("Nats-TTL", format!("{}s", ttl.as_secs().max(1)).as_str());
        }
        if delete {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!("$KV.{store_name}.{key}");
        let sent = self
            .0
            .js
            .publish_with_headers(subject, headers, value.clone())
            .await
            .map_err(|e| {
                self.troubled();
                PresenceError::Unavailable(e.to_string())
            })?;
        // Trouble while the answer is late, not only once it comes: a node judging others
        // must not find itself calm while its own write hangs.
        let mut waiting = std::pin::pin!(sent.into_future());
        let answer = loop {
            match tokio::time::timeout(self.slow_answer(), waiting.as_mut()).await {
                Ok(answer) => break answer,
                Err(_) => self.troubled(),
            }
        };
        let written = match answer {
            Ok(ack) => Ok(Written::Ok(ack.sequence)),
            Err(error) => match error.kind() {
                jetstream::context::PublishErrorKind::WrongLastSequence => Ok(Written::Conflict),
                // The answer is lost, not necessarily the write: one stored all the same
                // and taken for failed would leave the key a revision ahead of its
                // writer (its next write refused as if another had taken the key) and
                // saying what its writer thinks did not happen.
                jetstream::context::PublishErrorKind::TimedOut if !delete => {
                    match self.entry(key).await {
                        Ok(Some((revision, Some(stored))))
                            if revision > expected && stored == value =>
                        {
                            Ok(Written::Ok(revision))
                        }
                        _ => Err(PresenceError::Unavailable(error.to_string())),
                    }
                }
                _ => Err(PresenceError::Unavailable(error.to_string())),
            },
        };
        if written.is_err() {
            self.troubled();
        }
        written
    }

    /// The current entry of `key`: its revision and value, or the revision of the marker
    /// left where it was deleted or expired (value `None`), or `None` if it never was.
    async fn entry(&self, key: &str) -> Result<Option<(u64, Option<Bytes>)>, PresenceError> {
        let store = self.store()?;
        let entry = store
            .entry(key)
            .await
            .map_err(|e| PresenceError::Unavailable(e.to_string()))?;
        Ok(entry.map(|entry| match entry.operation {
            kv::Operation::Put => (entry.revision, Some(entry.value)),
            kv::Operation::Delete | kv::Operation::Purge => (entry.revision, None),
        }))
    }

    /// Creates `key` if it holds nothing (never written, deleted or expired); `Conflict` if
    /// it holds a value.
    async fn create(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<Written, PresenceError> {
        if let Written::Ok(revision) = self.write(key, value.clone(), 0, ttl, false).await? {
            return Ok(Written::Ok(revision));
        }
        match self.entry(key).await? {
            Some((marker, None)) => self.write(key, value, marker, ttl, false).await,
            // A create of ours whose answer was lost (the value names this node's run).
            Some((revision, Some(stored))) if stored == value => Ok(Written::Ok(revision)),
            _ => Ok(Written::Conflict),
        }
    }

    /// Takes the player's entry for this connection: creates it, or takes it over from the
    /// connection that holds it (on this node or another), keeping its room.
    pub async fn claim(
        &self,
        player: &PlayerId,
        name: &PlayerName,
        room: &RoomId,
        connection: u64,
    ) -> Result<Claim, PresenceError> {
        self.heartbeat_held()?;
        let key = player_key(player.as_str());
        for _ in 0..5 {
            let record = self.record(name, room, connection);
            let bytes = to_bytes(&record);
            if let Written::Ok(revision) = self.create(&key, bytes, None).await? {
                self.note(player, name, room, connection, revision);
                return Ok(Claim {
                    revision,
                    took_over: false,
                    previous_room: None,
                });
            }
            let Some((revision, Some(value))) = self.entry(&key).await? else {
                continue;
            };
            let previous_room = serde_json::from_slice::<PlayerRecord>(&value)
                .ok()
                .and_then(|previous| RoomId::parse(&previous.room).ok());
            let keep = previous_room.clone().unwrap_or_else(|| room.clone());
            let bytes = to_bytes(&self.record(name, &keep, connection));
            if let Written::Ok(revision) = self.write(&key, bytes, revision, None, false).await? {
                self.note(player, name, &keep, connection, revision);
                return Ok(Claim {
                    revision,
                    took_over: true,
                    previous_room,
                });
            }
        }
        Err(PresenceError::Contended)
    }

    /// Moves the player's entry to `room`; `revision` is the one this connection holds.
    /// `Taken` when another connection took the player over meanwhile.
    pub async fn moved(
        &self,
        player: &PlayerId,
        name: &PlayerName,
        room: &RoomId,
        connection: u64,
        revision: u64,
    ) -> Result<u64, PresenceError> {
        self.moved_from(player, name, room, connection, Some(connection), revision)
            .await
    }

    /// [`Presence::moved`] by the connection `holder` (the one at `revision`; `None`: not a
    /// connection of this node's, as when taking a dead node's player over) writing an
    /// entry for `connection`.
    async fn moved_from(
        &self,
        player: &PlayerId,
        name: &PlayerName,
        room: &RoomId,
        connection: u64,
        holder: Option<u64>,
        revision: u64,
    ) -> Result<u64, PresenceError> {
        self.store()?;
        let key = player_key(player.as_str());
        let bytes = to_bytes(&self.record(name, room, connection));
        let mut expected = revision;
        for _ in 0..2 {
            match self
                .write(&key, bytes.clone(), expected, None, false)
                .await?
            {
                Written::Ok(revision) => {
                    self.note(player, name, room, connection, revision);
                    return Ok(revision);
                }
                Written::Conflict => {
                    // A write of this same connection's whose answer never came (it gave
                    // up on it) may hold the key: then nobody took the player over.
                    match self.entry(&key).await? {
                        Some((newer, Some(value)))
                            if holder.is_some_and(|holder| self.written_by(&value, holder)) =>
                        {
                            expected = newer;
                        }
                        _ => return Err(PresenceError::Taken),
                    }
                }
            }
        }
        Err(PresenceError::Taken)
    }

    /// Whether a player entry was written by this node's connection `connection` (in this
    /// run of the node).
    fn written_by(&self, value: &[u8], connection: u64) -> bool {
        serde_json::from_slice::<PlayerRecord>(value).is_ok_and(|record| {
            record.connection == connection
                && record.node == *self.0.own.node
                && record.incarnation == *self.0.own.incarnation
        })
    }

    /// Removes the player's entry if this node's `connection` (at `revision`) still holds
    /// it. The revision it removed when it did (the departure is this connection's to
    /// announce); `None` when another connection holds the player.
    pub async fn release(
        &self,
        player: &PlayerId,
        connection: u64,
        revision: u64,
    ) -> Result<Option<u64>, PresenceError> {
        self.store()?;
        let key = player_key(player.as_str());
        let mut expected = revision;
        for _ in 0..2 {
            match self.write(&key, Bytes::new(), expected, None, true).await? {
                Written::Ok(_) => {
                    self.0.roster.remove(player, expected);
                    return Ok(Some(expected));
                }
                // As in `moved_from`: a write of this connection's whose answer was lost
                // (a refused move stored all the same) is still this connection's entry.
                Written::Conflict => match self.entry(&key).await? {
                    Some((newer, Some(value))) if self.written_by(&value, connection) => {
                        expected = newer;
                    }
                    _ => return Ok(None),
                },
            }
        }
        Err(PresenceError::Contended)
    }

    /// Keeps the player in the world with no connection (link-dead) for the grace period,
    /// if the connection at `revision` still holds it: a login within the grace takes the
    /// entry over and the player never left; otherwise this node's sweep writes it off
    /// and announces the departure once. `Taken` when another connection holds it already.
    pub async fn link_dead(
        &self,
        player: &PlayerId,
        name: &PlayerName,
        room: &RoomId,
        connection: u64,
        revision: u64,
    ) -> Result<u64, PresenceError> {
        self.moved_from(player, name, room, LINK_DEAD, Some(connection), revision)
            .await
    }

    /// The grace a link-dead player gets (zero: none).
    pub fn link_dead_grace(&self) -> Duration {
        self.0.settings.link_dead_grace
    }

    /// This node's own write, in its roster at once (the watch will bring the same).
    fn note(
        &self,
        player: &PlayerId,
        name: &PlayerName,
        room: &RoomId,
        connection: u64,
        revision: u64,
    ) {
        self.0.roster.put(
            player,
            Seen {
                name: name.clone(),
                room: Some(room.as_str().into()),
                holder: Some(self.holder(connection)),
                revision,
            },
        );
    }

    /// Keeps presence: the bucket, its watch, this node's heartbeat, the tick lease, and
    /// the departures of players whose node died. Runs until `stop`.
    pub async fn run(self, publisher: Arc<EventPublisher>, stop: CancellationToken) {
        let watch = self.clone().watch(stop.clone());
        let heartbeat = self.clone().heartbeat(stop.clone());
        let lease = self.clone().lease(stop.clone());
        let sweep = self.clone().sweep(publisher, stop);
        tokio::join!(watch, heartbeat, lease, sweep);
    }

    async fn ensure_bucket(&self) -> Result<kv::Store, String> {
        let replicas = match self.0.settings.replicas {
            0 if self.0.client.server_info().cluster.is_some() => 3,
            0 => 1,
            n => n,
        };
        let config = kv::Config {
            bucket: self.0.settings.bucket.clone(),
            description: "natsmud: who is online, where, and which nodes are alive".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            // Per-key TTLs for heartbeats and the lease, and a marker when one expires, so
            // that the watch sees the key go.
            limit_markers: Some(self.0.settings.node_ttl.max(Duration::from_secs(1))),
            ..Default::default()
        };
        self.0
            .js
            .create_or_update_key_value(config)
            .await
            .map_err(|e| e.to_string())
    }

    /// Mirrors the bucket into the roster, starting again whenever the watch breaks or
    /// the NATS connection comes back.
    async fn watch(self, stop: CancellationToken) {
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt = async {
                let store = self.ensure_bucket().await?;
                let empty = store
                    .status()
                    .await
                    .map(|status| status.values() == 0)
                    .unwrap_or(false);
                // With history: every key's current value first, then changes. (`watch_all` brings
                // changes only, so a node starting late, or watching again after a reconnect,
                // would never learn of players who stay put.)
                let mut entries = store
                    .watch_with_history(">")
                    .await
                    .map_err(|e| e.to_string())?;
                self.0.roster.begin_replay();
                self.0.watched.send_replace(0);
                *self.0.store.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
                if empty {
                    self.0.roster.set_current();
                }
                tracing::info!(bucket = %self.0.settings.bucket, "watching presence");
                loop {
                    tokio::select! {
                        () = self.0.restart.notified() => return Ok::<(), String>(()),
                        entry = entries.next() => match entry {
                            Some(Ok(entry)) => self.apply(entry),
                            Some(Err(error)) => return Err(error.to_string()),
                            None => return Err("the presence watch ended".into()),
                        },
                    }
                }
            };
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = attempt => result,
            };
            if let Err(error) = result {
                self.troubled();
                tracing::warn!(%error, "presence watch interrupted; starting it again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(2));
            } else {
                wait = Duration::from_millis(100);
            }
        }
    }

    /// One change seen in the bucket.
    fn apply(&self, entry: kv::Entry) {
        let removed = matches!(
            entry.operation,
            kv::Operation::Delete | kv::Operation::Purge
        );
        if let Some(player) = entry
            .key
            .strip_prefix("p.")
            .and_then(|p| PlayerId::parse(p).ok())
        {
            if removed {
                self.0.roster.remove_watched(&player, entry.revision);
                // Someone removed an entry this node still serves (it was thought dead):
                // its player starts over rather than stay where nobody else sees it.
                self.0.manager.kick_if_presence_older(
                    &player,
                    entry.revision,
                    None,
                    CloseReason::EVENTS_LOST,
                );
            } else if let Ok(record) = serde_json::from_slice::<PlayerRecord>(&entry.value)
                && let Ok(name) = PlayerName::parse(&record.name)
            {
                let holder = Holder {
                    node: record.node.into(),
                    incarnation: record.incarnation.into(),
                    connection: record.connection,
                };
                let ours =
                    holder.node == self.0.own.node && holder.incarnation == self.0.own.incarnation;
                self.0.roster.put_watched(
                    &player,
                    Seen {
                        name,
                        room: Some(record.room.into()),
                        holder: Some(holder.clone()),
                        revision: entry.revision,
                    },
                );
                // Taken over by a login elsewhere (or by another connection here), or, as
                // link-dead, by a node that took this one for dead: that player starts over.
                let reason = if !ours && holder.connection == LINK_DEAD {
                    CloseReason::EVENTS_LOST
                } else {
                    CloseReason::REPLACED
                };
                self.0.manager.kick_if_presence_older(
                    &player,
                    entry.revision,
                    ours.then_some(holder.connection),
                    reason,
                );
            }
        } else if entry.key == LEASE_KEY && removed {
            self.0.lease_free.notify_one();
        } else if let Some(node) = entry.key.strip_prefix("n.") {
            tracing::debug!(%node, removed, revision = entry.revision, "node heartbeat");
            if removed {
                self.0.roster.node_gone(node);
            } else if let Ok(record) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                self.0.roster.node_alive(
                    node,
                    NodeSeen {
                        incarnation: record.incarnation,
                        revision: entry.revision,
                    },
                );
            }
        }
        if entry.seen_current {
            // Only once the roster answers from this watch does its revision count.
            self.0.roster.set_current();
            self.0.watched.send_if_modified(|seen| {
                let newer = entry.revision > *seen;
                if newer {
                    *seen = entry.revision;
                }
                newer
            });
        }
    }

    /// Keeps this node's heartbeat key alive. If it was lost (this node stalled past its
    /// TTL and the others wrote it off), every local connection starts over.
    async fn heartbeat(self, stop: CancellationToken) {
        let ttl = self.0.settings.node_ttl;
        let key = node_key(&self.0.own.node);
        let value = to_bytes(&NodeRecord {
            incarnation: self.0.own.incarnation.to_string(),
            started_ms: unix_ms(),
        });
        let mut every = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            if self.store().is_err() {
                self.troubled();
                self.0.heartbeat_answered.store(false, Ordering::Release);
                failing = true;
                continue;
            }
            let held = self.0.heartbeat.load(Ordering::Acquire);
            let written = if held == 0 {
                self.create(&key, value.clone(), Some(ttl)).await
            } else {
                self.write(&key, value.clone(), held, Some(ttl), false)
                    .await
            };
            match written {
                Ok(Written::Ok(revision)) => self.0.heartbeat.store(revision, Ordering::Release),
                Ok(Written::Conflict) if held != 0 => {
                    self.heartbeat_conflict(&key, &value, ttl).await;
                }
                Ok(Written::Conflict) => tracing::error!(
                    node = %self.0.own.node,
                    "another node with this node id is alive; give every node its own --node-id"
                ),
                Err(error) => {
                    self.troubled();
                    self.0.heartbeat_answered.store(false, Ordering::Release);
                    failing = true;
                    tracing::warn!(%error, "could not renew this node's heartbeat");
                    continue;
                }
            }
            self.0.heartbeat_answered.store(true, Ordering::Release);
            if std::mem::take(&mut failing) {
                // Players let in meanwhile hold no entry: nobody elsewhere sees them.
                let kicked = self.0.manager.kick_unclaimed(CloseReason::EVENTS_LOST);
                if kicked > 0 {
                    tracing::warn!(
                        kicked,
                        "presence answers again: closing the players let in without an entry, so they claim one"
                    );
                }
            }
        }
        // A clean stop: let the others know at once rather than after the TTL.
        let held = self.0.heartbeat.load(Ordering::Acquire);
        if held != 0 {
            let _ = self.write(&key, Bytes::new(), held, None, true).await;
        }
    }

    /// This node's heartbeat is not at the revision it last wrote.
    async fn heartbeat_conflict(&self, key: &str, value: &Bytes, ttl: Duration) {
        match self.entry(key).await {
            // A write of ours that timed out and was stored all the same.
            Ok(Some((revision, Some(stored)))) if stored == *value => {
                self.0.heartbeat.store(revision, Ordering::Release);
                return;
            }
            Ok(_) => {}
            Err(_) => {
                self.troubled();
                return;
            }
        }
        if self.calm_for(self.outage_settles()) {
            tracing::error!(
                "this node's heartbeat expired; the others have written its players off: closing them"
            );
            metrics::counter!(telemetry::PRESENCE_LOST).increment(1);
            self.0.manager.kick_all(CloseReason::EVENTS_LOST);
            self.0.heartbeat.store(0, Ordering::Release);
            return;
        }
        // It lapsed while nobody could write (every node's did), and the others wait for
        // the bucket to settle before judging a node: renewed now, this node's players
        // stay. One that another node took over meanwhile (if this node alone was cut
        // off) is closed when the watch brings that entry.
        tracing::warn!("this node's heartbeat lapsed while presence was unavailable; renewing it");
        metrics::counter!(telemetry::HEARTBEAT_RENEWED).increment(1);
        let renewed = match self.create(key, value.clone(), Some(ttl)).await {
            Ok(Written::Ok(revision)) => revision,
            _ => 0,
        };
        self.0.heartbeat.store(renewed, Ordering::Release);
    }

    /// Holds or seeks the tick lease (when the world has a tick).
    async fn lease(self, stop: CancellationToken) {
        if !self.0.settings.ticks {
            return;
        }
        let lease = self.0.settings.tick_lease;
        let value = Bytes::from(format!("{}:{}", self.0.own.node, self.0.own.incarnation));
        let mut held: u64 = 0;
        let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
                () = self.0.lease_free.notified(), if held == 0 => {}
            }
            if self.store().is_err() {
                held = 0;
                self.0.leader.store(false, Ordering::Release);
                continue;
            }
            let written = if held == 0 {
                self.create(LEASE_KEY, value.clone(), Some(lease)).await
            } else {
                self.write(LEASE_KEY, value.clone(), held, Some(lease), false)
                    .await
            };
            match written {
                Ok(Written::Ok(revision)) => {
                    if held == 0 {
                        tracing::info!("this node now leads the game tick");
                    }
                    held = revision;
                    self.0.leader.store(true, Ordering::Release);
                }
                Ok(Written::Conflict) | Err(_) => {
                    if held != 0 {
                        tracing::warn!("this node lost the tick lease");
                    }
                    held = 0;
                    self.0.leader.store(false, Ordering::Release);
                }
            }
        }
        self.0.leader.store(false, Ordering::Release);
        if held != 0 {
            let _ = self.write(LEASE_KEY, Bytes::new(), held, None, true).await;
        }
    }

    /// Announces the departure of players whose node is gone (exactly one surviving node
    /// wins each delete), and removes entries of this node's that no connection holds.
    async fn sweep(self, publisher: Arc<EventPublisher>, stop: CancellationToken) {
        let mut every =
            tokio::time::interval((self.0.settings.node_ttl / 2).max(Duration::from_millis(250)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When each dead-looking node (and run) was first seen so while the bucket was in
        // trouble: one node's wait must not shorten another's.
        let mut orphans_waiting: std::collections::HashMap<(Arc<str>, Arc<str>), Instant> =
            std::collections::HashMap::new();
        let mut unheld: std::collections::HashMap<PlayerId, (u64, Instant)> =
            std::collections::HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            self.0.roster.forget_departures(REMEMBER_DEPARTURES);
            if publisher.is_connected() {
                self.announce_kept(&publisher).await;
            }
            if !self.0.roster.is_current() || self.store().is_err() {
                continue;
            }
            let grace = self.0.settings.link_dead_grace;
            // A node whose heartbeat went while the bucket could not answer us either may
            // only have been unable to renew it: it gets the time to.
            // Not forever, though: a bucket failing now and then (an overloaded server)
            // must not keep a dead node's players listed.
            let mut orphans = self.0.roster.orphans(&self.0.own);
            if orphans.is_empty() || self.calm_for(self.outage_settles()) {
                orphans_waiting.clear();
            } else {
                let now = Instant::now();
                let mut waiting = std::collections::HashMap::new();
                orphans.retain(|(_, seen)| {
                    let Some(holder) = &seen.holder else {
                        return false;
                    };
                    let run = (holder.node.clone(), holder.incarnation.clone());
                    let since = orphans_waiting.get(&run).copied().unwrap_or(now);
                    waiting.insert(run, since);
                    now.duration_since(since) >= self.outage_settles() * ORPHANS_WAIT_MOST
                });
                orphans_waiting = waiting;
            }
            for (player, seen) in orphans {
                if grace.is_zero() {
                    self.write_off(&publisher, &player, &seen).await;
                } else {
                    // A dead node's players get the grace too, counted from now: they can
                    // reconnect to another node and resume without anyone seeing them go.
                    self.adopt_link_dead(&player, &seen).await;
                }
            }
            // Entries of this node's without a connection here: link-dead players, and
            // releases that failed.
            let now = Instant::now();
            let mut still = std::collections::HashMap::new();
            for (player, revision) in self.0.roster.held_by(&self.0.own) {
                if self.0.manager.holds_presence(&player, revision) {
                    continue;
                }
                let Some(seen) = self
                    .0
                    .roster
                    .get(&player)
                    .filter(|seen| seen.revision == revision)
                else {
                    continue;
                };
                if let Some(holder) = &seen.holder
                    && holder.connection != LINK_DEAD
                    && self
                        .0
                        .manager
                        .adopt_own_presence(&player, holder.connection, revision)
                {
                    tracing::info!(player = %seen.name, revision, "a connection's write whose answer was lost is its own");
                    continue;
                }
                let since = unheld
                    .get(&player)
                    .filter(|(revision, _)| *revision == seen.revision)
                    .map_or(now, |(_, since)| *since);
                let link_dead = seen
                    .holder
                    .as_ref()
                    .is_some_and(|holder| holder.connection == LINK_DEAD);
                let wait = if link_dead { grace } else { ORPHAN_GRACE };
                if now.duration_since(since) >= wait {
                    self.write_off(&publisher, &player, &seen).await;
                } else {
                    still.insert(player, (seen.revision, since));
                }
            }
            unheld = still;
        }
    }

    /// Takes a dead node's player over as link-dead (if its entry is still as seen), so
    /// that this node's sweep writes it off when the grace is over.
    async fn adopt_link_dead(&self, player: &PlayerId, seen: &Seen) {
        let Some(room) = seen.room.as_deref().and_then(|r| RoomId::parse(r).ok()) else {
            return;
        };
        if self
            .moved_from(player, &seen.name, &room, LINK_DEAD, None, seen.revision)
            .await
            .is_ok()
        {
            tracing::info!(player = %seen.name, "a node is gone: its player is link-dead here for the grace period");
        }
    }

    /// Announces a departure (`player_left_game` to the room); kept and tried again when
    /// NATS is back if it cannot be published now.
    pub async fn announce_departure(&self, publisher: &EventPublisher, departure: Departure) {
        if publish_departure(publisher, &departure).await.is_err() {
            let mut unannounced = self.0.unannounced.lock().unwrap_or_else(|e| e.into_inner());
            if unannounced.len() >= UNANNOUNCED_MAX {
                unannounced.remove(0);
            }
            unannounced.push(departure);
        }
    }

    /// Publishes the departures kept while NATS was away.
    async fn announce_kept(&self, publisher: &EventPublisher) {
        let kept =
            std::mem::take(&mut *self.0.unannounced.lock().unwrap_or_else(|e| e.into_inner()));
        for departure in kept {
            self.announce_departure(publisher, departure).await;
        }
    }

    /// Deletes a player's entry if it is still at the revision seen, and if so announces
    /// the departure (`player_left_game` to its room).
    async fn write_off(&self, publisher: &EventPublisher, player: &PlayerId, seen: &Seen) {
        let key = player_key(player.as_str());
        match self
            .write(&key, Bytes::new(), seen.revision, None, true)
            .await
        {
            Ok(Written::Ok(_)) => {
                self.0.roster.remove(player, seen.revision);
                metrics::counter!(telemetry::PRESENCE_WRITTEN_OFF).increment(1);
                let Some(room) = seen.room.as_deref().and_then(|r| RoomId::parse(r).ok()) else {
                    return;
                };
                tracing::info!(player = %seen.name, "a node is gone: announcing its player's departure");
                self.announce_departure(
                    publisher,
                    Departure {
                        player: player.clone(),
                        name: seen.name.clone(),
                        room,
                        revision: Some(seen.revision),
                    },
                )
                .await;
            }
            Ok(Written::Conflict) | Err(_) => {}
        }
    }
}

async fn publish_departure(
    publisher: &EventPublisher,
    departure: &Departure,
) -> Result<(), crate::realtime::PublishError> {
    let envelope = crate::game::presence_envelope(
        natsmud_protocol::EventType::PlayerLeftGame,
        &departure.player,
        &departure.name,
        &departure.room,
        format!("{} has left the game.", departure.name),
    );
    let subject = natsmud_protocol::Subject::player_left(&departure.room);
    match departure.revision {
        Some(revision) => {
            publisher
                .publish_presence(subject, &envelope, revision)
                .await
        }
        None => publisher.publish(subject, &envelope).await,
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Plain structs of strings and numbers always serialise.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_world_has_its_own_bucket() {
        assert_eq!(bucket_name(&SubjectPrefix::default()), "natsmud_presence");
        let prefix = SubjectPrefix::parse("w1.eu").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bucket_name(&prefix), "natsmud_presence_w1_eu");
    }
}
