//! The world's roster as this node knows it: every player online on any node, where each
//! is, and which nodes are alive. A read model of the presence bucket, kept current by the
//! bucket's watch and, a little sooner, by the presence events this node delivers (which
//! carry the revision of the bucket write that caused them). Reads never wait on the
//! network.
//!
//! Every change carries a bucket revision and is applied only if it is newer than what the
//! roster holds for that player, so the watch and the events may arrive in any order.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use natsmud_protocol::{PlayerId, PlayerName};
use slab::Slab;

/// Which node (and which run of it) holds a player's connection. Every node keeps the
/// whole world's roster: the node and incarnation strings are shared by all the players a
/// node holds rather than copied into each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: Arc<str>,
    pub incarnation: Arc<str>,
    pub connection: u64,
}

/// One player as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: PlayerName,
    /// `None` between leaving a room and arriving in the next. Shared with the room's
    /// other occupants once in the roster.
    pub room: Option<Arc<str>>,
    /// `None` when only an event has told of the player so far.
    pub holder: Option<Holder>,
    pub revision: u64,
}

impl Seen {
    /// In the world with no connection: its connection dropped and the grace period runs.
    pub fn is_link_dead(&self) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|holder| holder.connection == super::LINK_DEAD)
    }
}

/// A node's heartbeat as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub incarnation: String,
    pub revision: u64,
}

#[derive(Debug)]
struct Listed {
    id: PlayerId,
    seen: Seen,
}

/// Every node holds an entry for every player of the world, so an entry is kept once (in
/// `listed`) and the indexes hold its slot, not copies of its strings: 0.56 KB a player
/// less than three maps of owned strings took (docs/performance.md).
#[derive(Debug, Default)]
struct State {
    listed: Slab<Listed>,
    /// Slots by player id.
    by_id: HashTable<usize>,
    /// Slots by name, case-insensitively.
    by_name: HashTable<usize>,
    /// Room → its occupants' slots, in no order (sorted by name when listed).
    rooms: HashMap<Arc<str>, Vec<usize>>,
    /// Node ids and incarnations, one copy each.
    strings: HashSet<Arc<str>>,
    hasher: RandomState,
    nodes: HashMap<String, NodeSeen>,
    /// Revisions of players removed (and when), so that an older write arriving later
    /// cannot bring them back; forgotten after a while ([`Roster::forget_departures`]).
    gone: HashMap<PlayerId, (u64, Instant)>,
    /// The watch has delivered everything the bucket held when it started.
    current: bool,
}

fn name_hash(hasher: &RandomState, name: &str) -> u64 {
    let mut hash = hasher.build_hasher();
    for byte in name.bytes() {
        hash.write_u8(byte.to_ascii_lowercase());
    }
    hash.finish()
}

fn cmp_folded(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

fn intern(strings: &mut HashSet<Arc<str>>, value: &Arc<str>) -> Arc<str> {
    match strings.get(&**value) {
        Some(held) => held.clone(),
        None => {
            strings.insert(value.clone());
            value.clone()
        }
    }
}

impl State {
    fn slot(&self, player: &PlayerId) -> Option<usize> {
        let hash = self.hasher.hash_one(player.as_str());
        self.by_id
            .find(hash, |&slot| self.listed[slot].id == *player)
            .copied()
    }

    fn seen(&self, player: &PlayerId) -> Option<&Seen> {
        self.slot(player).map(|slot| &self.listed[slot].seen)
    }

    fn place(&mut self, player: &PlayerId, mut seen: Seen) {
        let id = match self.unplace(player) {
            Some((id, _)) => id,
            None => player.clone(),
        };
        if let Some(holder) = &mut seen.holder {
            holder.node = intern(&mut self.strings, &holder.node);
            holder.incarnation = intern(&mut self.strings, &holder.incarnation);
        }
        if let Some(room) = &mut seen.room
            && let Some((shared, _)) = self.rooms.get_key_value(&**room)
        {
            *room = shared.clone();
        }
        let room = seen.room.clone();
        let name_hash = name_hash(&self.hasher, seen.name.as_str());
        let id_hash = self.hasher.hash_one(id.as_str());
        let slot = self.listed.insert(Listed { id, seen });
        if let Some(room) = room {
            self.rooms.entry(room).or_default().push(slot);
        }
        let (listed, hasher) = (&self.listed, &self.hasher);
        let name = listed[slot].seen.name.as_str();
        // Names are unique: an entry still listed under this one (a stale id) gives way.
        if let Ok(stale) = self.by_name.find_entry(name_hash, |&other| {
            listed[other].seen.name.as_str().eq_ignore_ascii_case(name)
        }) {
            stale.remove();
        }
        self.by_name.insert_unique(name_hash, slot, |&other| {
            self::name_hash(hasher, listed[other].seen.name.as_str())
        });
        self.by_id.insert_unique(id_hash, slot, |&other| {
            hasher.hash_one(listed[other].id.as_str())
        });
    }

    fn unplace(&mut self, player: &PlayerId) -> Option<(PlayerId, Seen)> {
        let hash = self.hasher.hash_one(player.as_str());
        let listed = &self.listed;
        let (slot, _) = self
            .by_id
            .find_entry(hash, |&slot| listed[slot].id == *player)
            .ok()?
            .remove();
        let Listed { id, seen } = self.listed.remove(slot);
        if let Some(room) = &seen.room
            && let Some(occupants) = self.rooms.get_mut(&**room)
        {
            if let Some(at) = occupants.iter().position(|&other| other == slot) {
                occupants.swap_remove(at);
            }
            if occupants.is_empty() {
                self.rooms.remove(&**room);
            }
        }
        let name_hash = name_hash(&self.hasher, seen.name.as_str());
        if let Ok(named) = self.by_name.find_entry(name_hash, |&other| other == slot) {
            named.remove();
        }
        Some((id, seen))
    }

    fn newest(&self, player: &PlayerId) -> u64 {
        let held = self.seen(player).map_or(0, |seen| seen.revision);
        held.max(self.gone.get(player).map_or(0, |(revision, _)| *revision))
    }
}

#[derive(Debug, Default)]
pub struct Roster {
    state: RwLock<State>,
    /// While the watch starts again: the bucket as it is being read anew. Readers keep the
    /// old state until the new one is whole ([`Roster::end_replay`]), so nobody is listed
    /// short meanwhile.
    staging: Mutex<Option<State>>,
}

impl State {
    fn put(&mut self, player: &PlayerId, seen: &Seen) -> bool {
        let mut seen = seen.clone();
        if self
            .gone
            .get(player)
            .is_some_and(|(gone, _)| seen.revision <= *gone)
        {
            return false;
        }
        if let Some(held) = self.seen(player) {
            if seen.revision < held.revision {
                return false;
            }
            // The same write comes several ways: as a departure event (which leaves the
            // player between rooms), as an arrival event (which names no holder), and as
            // the watch's copy. Each fills in what the others left out.
            if seen.revision == held.revision {
                let merged = Seen {
                    name: seen.name,
                    room: held.room.clone().or(seen.room),
                    holder: held.holder.clone().or(seen.holder),
                    revision: seen.revision,
                };
                if &merged == held {
                    return false;
                }
                self.place(player, merged);
                return true;
            }
        }
        // An event names no holder; keep the one the watch told of.
        if seen.holder.is_none() {
            seen.holder = self.seen(player).and_then(|s| s.holder.clone());
        }
        self.gone.remove(player);
        self.place(player, seen);
        true
    }

    fn left_room(&mut self, player: &PlayerId, room: &str, revision: u64) {
        if revision <= self.newest(player) {
            return;
        }
        let Some(seen) = self.seen(player).cloned() else {
            return;
        };
        if seen.room.as_deref() != Some(room) {
            return;
        }
        self.place(
            player,
            Seen {
                room: None,
                revision,
                ..seen
            },
        );
    }

    fn remove(&mut self, player: &PlayerId, revision: u64) {
        let held = self.seen(player).map_or(0, |seen| seen.revision);
        if held > revision {
            return;
        }
        self.unplace(player);
        let gone = self
            .gone
            .entry(player.clone())
            .or_insert((revision, Instant::now()));
        *gone = (gone.0.max(revision), Instant::now());
    }

    fn put_provisional(&mut self, player: &PlayerId, seen: &Seen) {
        if self.slot(player).is_none() {
            self.place(
                player,
                Seen {
                    revision: 0,
                    ..seen.clone()
                },
            );
        }
    }
}

impl Roster {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic mid-update leaves at worst one stale entry, which the next write for that
        // player corrects: better than stopping `who` for good.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn staging(&self) -> MutexGuard<'_, Option<State>> {
        self.staging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change learnt from an event or from this node's own write: to the roster, and to
    /// the one being read anew if there is one (the watch may have passed it already).
    fn change<R>(&self, change: impl Fn(&mut State) -> R) -> R {
        let mut staging = self.staging();
        if let Some(staging) = staging.as_mut() {
            change(staging);
        }
        change(&mut self.write())
    }

    /// A change the watch brought: to the state being read anew, if there is one.
    fn watched<R>(&self, change: impl Fn(&mut State) -> R) -> R {
        let mut staging = self.staging();
        match staging.as_mut() {
            Some(staging) => change(staging),
            None => change(&mut self.write()),
        }
    }

    /// A player is (or arrived) where `seen` says, as of `seen.revision`. Returns whether
    /// it was newer than what the roster held.
    pub fn put(&self, player: &PlayerId, seen: Seen) -> bool {
        self.change(|state| state.put(player, &seen))
    }

    /// [`Roster::put`], from the watch.
    pub fn put_watched(&self, player: &PlayerId, seen: Seen) -> bool {
        self.watched(|state| state.put(player, &seen))
    }

    /// A player left its room (`revision` is the bucket write that moved it on).
    pub fn left_room(&self, player: &PlayerId, room: &str, revision: u64) {
        self.change(|state| state.left_room(player, room, revision));
    }

    /// A player left the game; `revision` is that of the write that removed it, or of the
    /// last write it had (what a departure event carries): anything not newer goes.
    pub fn remove(&self, player: &PlayerId, revision: u64) {
        self.change(|state| state.remove(player, revision));
    }

    /// [`Roster::remove`], from the watch.
    pub fn remove_watched(&self, player: &PlayerId, revision: u64) {
        self.watched(|state| state.remove(player, revision));
    }

    /// Forgets departures older than `age`: by then no older write is still on its way.
    pub fn forget_departures(&self, age: Duration) {
        let now = Instant::now();
        self.change(|state| {
            state
                .gone
                .retain(|_, (_, when)| now.duration_since(*when) < age);
            // Node ids and incarnations no player refers to any more.
            state.strings.retain(|value| Arc::strong_count(value) > 1);
        });
    }

    /// From the watch.
    pub fn node_alive(&self, node: &str, seen: NodeSeen) {
        self.watched(|state| {
            state.nodes.insert(node.to_owned(), seen.clone());
        });
    }

    /// From the watch.
    pub fn node_gone(&self, node: &str) {
        self.watched(|state| {
            state.nodes.remove(node);
        });
    }

    /// Whether a node with this incarnation is alive.
    pub fn is_alive(&self, node: &str, incarnation: &str) -> bool {
        self.read()
            .nodes
            .get(node)
            .is_some_and(|seen| seen.incarnation == incarnation)
    }

    /// The watch starts again from the bucket's current state: it is read into a new
    /// roster while the old one still answers.
    pub fn begin_replay(&self) {
        *self.staging() = Some(State::default());
    }

    /// The watch has delivered everything the bucket held: the new roster takes over.
    pub fn set_current(&self) {
        let mut staging = self.staging();
        if staging.is_none() && self.read().current {
            // Called for every change after the first pass: usually nothing to do.
            return;
        }
        let mut state = self.write();
        if let Some(fresh) = staging.take() {
            *state = fresh;
        }
        state.current = true;
    }

    pub fn is_current(&self) -> bool {
        self.read().current
    }

    pub fn get(&self, player: &PlayerId) -> Option<Seen> {
        self.read().seen(player).cloned()
    }

    /// Players held by a node that is not alive (other than `own`), with their entries.
    pub fn orphans(&self, own: &Holder) -> Vec<(PlayerId, Seen)> {
        let state = self.read();
        state
            .listed
            .iter()
            .filter(|(_, listed)| {
                listed.seen.holder.as_ref().is_some_and(|holder| {
                    let ours = holder.node == own.node && holder.incarnation == own.incarnation;
                    let alive = state
                        .nodes
                        .get(&*holder.node)
                        .is_some_and(|node| *node.incarnation == *holder.incarnation);
                    !ours && !alive
                })
            })
            .map(|(_, listed)| (listed.id.clone(), listed.seen.clone()))
            .collect()
    }

    /// A player this node let in while presence was unavailable: listed until the bucket
    /// says anything of it.
    pub fn put_provisional(&self, player: &PlayerId, seen: Seen) {
        self.change(|state| state.put_provisional(player, &seen));
    }

    /// Players held by this node's run `own` (any connection), with the revision of each
    /// one's entry: ids only, as the sweep looks at all of them and needs the entry of
    /// few ([`Roster::get`]).
    pub fn held_by(&self, own: &Holder) -> Vec<(PlayerId, u64)> {
        self.read()
            .listed
            .iter()
            .filter(|(_, listed)| {
                listed.seen.revision > 0
                    && listed.seen.holder.as_ref().is_some_and(|holder| {
                        holder.node == own.node && holder.incarnation == own.incarnation
                    })
            })
            .map(|(_, listed)| (listed.id.clone(), listed.seen.revision))
            .collect()
    }

    /// Names of the players in `room`, sorted.
    pub fn occupants(&self, room: &str) -> Vec<String> {
        let state = self.read();
        let Some(occupants) = state.rooms.get(room) else {
            return Vec::new();
        };
        let mut names: Vec<&str> = occupants
            .iter()
            .map(|&slot| state.listed[slot].seen.name.as_str())
            .collect();
        names.sort_unstable_by(|a, b| cmp_folded(a, b));
        names.into_iter().map(str::to_owned).collect()
    }

    /// Every player's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<(&str, bool)> = state
            .listed
            .iter()
            .map(|(_, listed)| (listed.seen.name.as_str(), listed.seen.is_link_dead()))
            .collect();
        names.sort_unstable_by(|(a, _), (b, _)| cmp_folded(a, b));
        names
            .into_iter()
            .map(|(name, link_dead)| {
                if link_dead {
                    // Its connection dropped; it is still in the world for the grace period.
                    format!("{name} (link-dead)")
                } else {
                    name.to_owned()
                }
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.read().listed.len()
    }

    /// A player by name, case-insensitively.
    pub fn find_by_name(&self, name: &str) -> Option<(PlayerId, PlayerName)> {
        let state = self.read();
        let hash = name_hash(&state.hasher, name);
        let &slot = state.by_name.find(hash, |&slot| {
            state.listed[slot]
                .seen
                .name
                .as_str()
                .eq_ignore_ascii_case(name)
        })?;
        let listed = &state.listed[slot];
        Some((listed.id.clone(), listed.seen.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PlayerId {
        PlayerId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn seen(name: &str, room: &str, revision: u64) -> Seen {
        Seen {
            name: PlayerName::parse(name).unwrap_or_else(|e| panic!("{e}")),
            room: Some(room.into()),
            holder: None,
            revision,
        }
    }

    /// The watch starting again (a reconnect, a broken watch, a bucket recreated with new
    /// revisions) never lists anyone short meanwhile, and forgets only what the bucket no
    /// longer holds.
    #[test]
    fn a_watch_starting_again_keeps_answering_until_the_bucket_is_read_anew() {
        let roster = Roster::default();
        roster.begin_replay();
        roster.put_watched(&id("a"), seen("Alice", "r1", 10));
        roster.put_watched(&id("g"), seen("Ghost", "r1", 11));
        assert!(
            roster.occupants("r1").is_empty(),
            "not before the first pass"
        );
        roster.set_current();
        assert_eq!(roster.occupants("r1"), vec!["Alice", "Ghost"]);

        // Started again, on a bucket recreated from scratch (revisions from 1).
        roster.begin_replay();
        assert_eq!(
            roster.occupants("r1"),
            vec!["Alice", "Ghost"],
            "still answering"
        );
        roster.put_watched(&id("a"), seen("Alice", "r1", 2));
        // An event of a write the watch has not reached yet: kept in both.
        assert!(roster.put(&id("b"), seen("Bob", "r1", 3)));
        assert_eq!(roster.occupants("r1"), vec!["Alice", "Bob", "Ghost"]);
        roster.set_current();
        // Ghost is gone from the bucket; Alice's lower revision counts in the new bucket.
        assert_eq!(roster.occupants("r1"), vec!["Alice", "Bob"]);
        assert!(roster.is_current());
        assert!(roster.put(&id("a"), seen("Alice", "r2", 4)));
        assert_eq!(roster.occupants("r2"), vec!["Alice"]);
    }

    #[test]
    fn writes_apply_newest_first_whatever_order_they_come_in() {
        let roster = Roster::default();
        assert!(roster.put(&id("b"), seen("Bob", "r1", 5)));
        assert!(roster.put(&id("b"), seen("Bob", "r2", 7)));
        // The watch's copy of revision 5 comes late: ignored.
        assert!(!roster.put(&id("b"), seen("Bob", "r1", 5)));
        assert_eq!(roster.occupants("r2"), vec!["Bob"]);
        assert!(roster.occupants("r1").is_empty());
        // A move at 8: the departure event, then the arrival, then the watch's copy.
        roster.left_room(&id("b"), "r2", 8);
        assert!(roster.occupants("r2").is_empty());
        assert!(roster.put(&id("b"), seen("Bob", "r3", 8)));
        assert!(!roster.put(&id("b"), seen("Bob", "r3", 8)));
        assert_eq!(roster.occupants("r3"), vec!["Bob"]);
        // The departure event of a move coming after the move's arrival changes nothing.
        roster.left_room(&id("b"), "r2", 8);
        assert_eq!(roster.occupants("r3"), vec!["Bob"]);
        // Left r3 at 9; an event of the older arrival does not put him back.
        roster.left_room(&id("b"), "r3", 9);
        assert!(roster.occupants("r3").is_empty());
        assert!(!roster.put(&id("b"), seen("Bob", "r3", 8)));
        roster.remove(&id("b"), 9);
        assert_eq!(roster.count(), 0);
        assert!(
            !roster.put(&id("b"), seen("Bob", "r3", 9)),
            "not newer than the departure"
        );
        assert!(roster.put(&id("b"), seen("Bob", "r4", 12)), "a new login");
        assert_eq!(roster.find_by_name("BOB").map(|(p, _)| p), Some(id("b")));
        // A departure event for an older session does not remove the new one.
        roster.remove(&id("b"), 10);
        assert_eq!(roster.names(), vec!["Bob"]);
    }

    #[test]
    fn the_watch_names_the_holder_an_earlier_event_of_the_same_write_could_not() {
        let roster = Roster::default();
        assert!(roster.put(&id("c"), seen("Carol", "r", 4)));
        let holder = Holder {
            node: "x".into(),
            incarnation: "1".into(),
            connection: 9,
        };
        assert!(roster.put(
            &id("c"),
            Seen {
                holder: Some(holder.clone()),
                ..seen("Carol", "r", 4)
            }
        ));
        assert_eq!(roster.get(&id("c")).and_then(|s| s.holder), Some(holder));
        let own = Holder {
            node: "a".into(),
            incarnation: "1".into(),
            connection: 0,
        };
        assert_eq!(roster.orphans(&own).len(), 1, "node x is not alive");
    }

    #[test]
    fn players_of_dead_nodes_are_orphans() {
        let roster = Roster::default();
        let own = Holder {
            node: "a".into(),
            incarnation: "1".into(),
            connection: 1,
        };
        roster.node_alive(
            "a",
            NodeSeen {
                incarnation: "1".into(),
                revision: 1,
            },
        );
        roster.node_alive(
            "b",
            NodeSeen {
                incarnation: "2".into(),
                revision: 2,
            },
        );
        for (player, node, incarnation, revision) in [
            ("p1", "a", "1", 3),
            ("p2", "b", "2", 4),
            ("p3", "b", "old", 5),
            ("p4", "c", "3", 6),
        ] {
            roster.put(
                &id(player),
                Seen {
                    holder: Some(Holder {
                        node: node.into(),
                        incarnation: incarnation.into(),
                        connection: 1,
                    }),
                    ..seen(&format!("Player{player}"), "r", revision)
                },
            );
        }
        let mut orphans: Vec<String> = roster
            .orphans(&own)
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        orphans.sort();
        assert_eq!(orphans, vec!["p3", "p4"]);
        roster.node_gone("b");
        assert_eq!(roster.orphans(&own).len(), 3);
    }

    fn held(name: &str, room: &str, node: &str, revision: u64) -> Seen {
        Seen {
            holder: Some(Holder {
                node: node.into(),
                incarnation: format!("{node}-run").into(),
                connection: revision,
            }),
            ..seen(name, room, revision)
        }
    }

    /// Every node keeps the whole world: a node's id, its incarnation and a room's id are
    /// kept once however many players refer to them, and let go with the last of them.
    #[test]
    fn players_share_their_node_and_room_strings() {
        let roster = Roster::default();
        roster.put(&id("a"), held("Alice", "pier", "n1", 1));
        roster.put(&id("b"), held("Bob", "pier", "n1", 2));
        let shared = |player: &str| {
            let seen = roster
                .get(&id(player))
                .unwrap_or_else(|| panic!("{player}"));
            let holder = seen.holder.unwrap_or_else(|| panic!("holder"));
            (
                seen.room.unwrap_or_else(|| panic!("room")),
                holder.node,
                holder.incarnation,
            )
        };
        let (room_a, node_a, run_a) = shared("a");
        let (room_b, node_b, run_b) = shared("b");
        assert!(Arc::ptr_eq(&room_a, &room_b));
        assert!(Arc::ptr_eq(&node_a, &node_b));
        assert!(Arc::ptr_eq(&run_a, &run_b));
        drop((room_a, node_a, run_a, room_b, node_b, run_b));

        roster.remove(&id("a"), 3);
        roster.remove(&id("b"), 4);
        roster.forget_departures(Duration::ZERO);
        let state = roster.read();
        assert!(state.strings.is_empty(), "{:?}", state.strings);
        assert!(state.rooms.is_empty());
        assert_eq!(
            state.by_id.len() + state.by_name.len() + state.listed.len(),
            0
        );
    }

    #[test]
    fn names_are_found_and_listed_case_insensitively() {
        let roster = Roster::default();
        roster.put(&id("z"), seen("zed", "r", 1));
        roster.put(&id("a"), seen("Amy", "r", 2));
        roster.put(&id("m"), seen("MAX", "r", 3));
        roster.put(&id("o"), seen("Other", "elsewhere", 4));
        assert_eq!(roster.occupants("r"), vec!["Amy", "MAX", "zed"]);
        assert_eq!(roster.names(), vec!["Amy", "MAX", "Other", "zed"]);
        assert_eq!(roster.find_by_name("max").map(|(p, _)| p), Some(id("m")));
        assert_eq!(roster.find_by_name("Ma"), None);

        // A stale entry under the same name (another id) gives way to the newest; its
        // removal later does not take the name from the new one.
        roster.put(&id("m2"), seen("Max", "r", 5));
        assert_eq!(roster.find_by_name("MAX").map(|(p, _)| p), Some(id("m2")));
        roster.remove(&id("m"), 6);
        assert_eq!(
            roster.find_by_name("max").map(|(p, n)| (p, n.to_string())),
            Some((id("m2"), "Max".to_owned()))
        );
        // Moving keeps the player findable and listed in one room only.
        roster.left_room(&id("m2"), "r", 7);
        assert!(roster.put(&id("m2"), seen("Max", "elsewhere", 7)));
        assert_eq!(roster.occupants("r"), vec!["Amy", "zed"]);
        assert_eq!(roster.occupants("elsewhere"), vec!["Max", "Other"]);
        assert_eq!(roster.find_by_name("max").map(|(p, _)| p), Some(id("m2")));
        assert_eq!(roster.count(), 4);
    }
}
