//! The world's roster as this node knows it: every player online on any node, where each
//! is, and which nodes are alive. A read model of the presence bucket, kept current by the
//! bucket's watch and, a little sooner, by the presence events this node delivers (which
//! carry the revision of the bucket write that caused them). Reads never wait on the
//! network.
//!
//! Every change carries a bucket revision and is applied only if it is newer than what the
//! roster holds for that player, so the watch and the events may arrive in any order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use natsmud_protocol::{PlayerId, PlayerName};

/// Which node (and which run of it) holds a player's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub incarnation: String,
    pub connection: u64,
}

/// One player as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: PlayerName,
    /// `None` between leaving a room and arriving in the next.
    pub room: Option<String>,
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

#[derive(Debug, Default)]
struct State {
    players: HashMap<PlayerId, Seen>,
    /// Room → folded name → name: each room's occupants, in the order they are listed.
    rooms: HashMap<String, BTreeMap<String, PlayerName>>,
    names: HashMap<String, PlayerId>,
    nodes: HashMap<String, NodeSeen>,
    /// Revisions of players removed (and when), so that an older write arriving later
    /// cannot bring them back; forgotten after a while ([`Roster::forget_departures`]).
    gone: HashMap<PlayerId, (u64, Instant)>,
    /// The watch has delivered everything the bucket held when it started.
    current: bool,
}

impl State {
    fn place(&mut self, player: &PlayerId, seen: Seen) {
        self.unplace(player);
        if let Some(room) = &seen.room {
            self.rooms
                .entry(room.clone())
                .or_default()
                .insert(seen.name.folded(), seen.name.clone());
        }
        self.names.insert(seen.name.folded(), player.clone());
        self.players.insert(player.clone(), seen);
    }

    fn unplace(&mut self, player: &PlayerId) -> Option<Seen> {
        let seen = self.players.remove(player)?;
        if let Some(room) = &seen.room
            && let Some(occupants) = self.rooms.get_mut(room)
        {
            occupants.remove(&seen.name.folded());
            if occupants.is_empty() {
                self.rooms.remove(room);
            }
        }
        if self.names.get(&seen.name.folded()) == Some(player) {
            self.names.remove(&seen.name.folded());
        }
        Some(seen)
    }

    fn newest(&self, player: &PlayerId) -> u64 {
        let held = self.players.get(player).map_or(0, |seen| seen.revision);
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
        if let Some(held) = self.players.get(player) {
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
            seen.holder = self.players.get(player).and_then(|s| s.holder.clone());
        }
        self.gone.remove(player);
        self.place(player, seen);
        true
    }

    fn left_room(&mut self, player: &PlayerId, room: &str, revision: u64) {
        if revision <= self.newest(player) {
            return;
        }
        let Some(seen) = self.players.get(player).cloned() else {
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
        let held = self.players.get(player).map_or(0, |seen| seen.revision);
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
        if !self.players.contains_key(player) {
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
        self.read().players.get(player).cloned()
    }

    /// Players held by a node that is not alive (other than `own`), with their entries.
    pub fn orphans(&self, own: &Holder) -> Vec<(PlayerId, Seen)> {
        let state = self.read();
        state
            .players
            .iter()
            .filter(|(_, seen)| {
                seen.holder.as_ref().is_some_and(|holder| {
                    let ours = holder.node == own.node && holder.incarnation == own.incarnation;
                    let alive = state
                        .nodes
                        .get(&holder.node)
                        .is_some_and(|node| node.incarnation == holder.incarnation);
                    !ours && !alive
                })
            })
            .map(|(id, seen)| (id.clone(), seen.clone()))
            .collect()
    }

    /// A player this node let in while presence was unavailable: listed until the bucket
    /// says anything of it.
    pub fn put_provisional(&self, player: &PlayerId, seen: Seen) {
        self.change(|state| state.put_provisional(player, &seen));
    }

    /// Players held by this node's run `own` (any connection), with their entries.
    pub fn held_by(&self, own: &Holder) -> Vec<(PlayerId, Seen)> {
        self.read()
            .players
            .iter()
            .filter(|(_, seen)| {
                seen.revision > 0
                    && seen.holder.as_ref().is_some_and(|holder| {
                        holder.node == own.node && holder.incarnation == own.incarnation
                    })
            })
            .map(|(id, seen)| (id.clone(), seen.clone()))
            .collect()
    }

    /// Names of the players in `room`, sorted.
    pub fn occupants(&self, room: &str) -> Vec<String> {
        self.read()
            .rooms
            .get(room)
            .map(|occupants| occupants.values().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Every player's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<(&PlayerName, bool)> = state
            .players
            .values()
            .map(|s| (&s.name, s.is_link_dead()))
            .collect();
        names.sort_unstable_by_key(|(name, _)| name.folded());
        names
            .into_iter()
            .map(|(name, link_dead)| {
                if link_dead {
                    // Its connection dropped; it is still in the world for the grace period.
                    format!("{name} (link-dead)")
                } else {
                    name.to_string()
                }
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.read().players.len()
    }

    /// A player by name, case-insensitively.
    pub fn find_by_name(&self, name: &str) -> Option<(PlayerId, PlayerName)> {
        let state = self.read();
        let id = state.names.get(&name.to_ascii_lowercase())?;
        let seen = state.players.get(id)?;
        Some((id.clone(), seen.name.clone()))
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
            room: Some(room.to_owned()),
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
}
