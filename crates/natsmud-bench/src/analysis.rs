//! Turns the records of every worker into the run's figures: latency percentiles, delivery
//! rates, and expected versus received deliveries.
//!
//! - Chat carries its send time in its text and a tick its scheduled time, so their latency
//!   is read straight from the receipt. A presence event (`player_entered`/`player_left`)
//!   carries nothing of ours: it is matched with the mover's latest move into (or out of)
//!   that room sent before the receipt, found in the mover's worker's log.
//! - Expected recipients come from a replay of every player's room over time (from the
//!   rooms at the start and every move sent). A player who entered or left an event's room
//!   within ±`boundary` of it is not checked for that event: which side of the race it ends
//!   up on is legitimately either. "Within" compares spans, not instants: a move takes
//!   effect somewhere between its sending and its answer, and an event is routed somewhere
//!   between its sending and its last receipt (or its sender's answer), so under load, when
//!   those spans reach seconds, the race window widens with them. Everything else must match exactly: a recipient expected
//!   and not reached is *missing*, one reached and not expected is *extra*, one reached
//!   twice is a *duplicate*.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::records::{Kind, NO_ROOM, Outcome, PlayerRun, Receipt, Sent, SentKind};
use crate::workload::Plan;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Expected versus received for one kind of event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Events of this kind sent (or ticked) inside the measured window.
    pub events: u64,
    /// Of those, events checked recipient by recipient.
    pub checked: u64,
    /// Events not checked (the speaker's room is unknown: it had disconnected).
    pub excluded: u64,
    /// Recipients not checked because they entered or left the event's room (or joined or
    /// left the game) while it could have been routed, ±boundary.
    pub uncertain: u64,
    pub expected: u64,
    /// Distinct expected recipients reached.
    pub received: u64,
    pub missing: u64,
    pub extra: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// `room_event` (say + presence), `say`, `presence`, `global`, `tick`.
    pub latency: BTreeMap<String, Latency>,
    /// `say`, `player_entered`, `player_left`, `global`, `game_tick`.
    pub deliveries: BTreeMap<String, Delivery>,
    /// Events received during the window, all kinds.
    pub received_in_window: u64,
    pub received_per_sec: f64,
    pub received_per_sec_by_kind: BTreeMap<String, f64>,
    /// Presence events that matched no move sent.
    pub unattributed_presence: u64,
    /// `player_entered_game`/`player_left_game` received during the window: players
    /// joining or leaving, which a steady run should not have.
    pub churn_events: u64,
    /// Commands sent during the window, by kind.
    pub commands: BTreeMap<String, u64>,
    pub commands_failed: u64,
    pub commands_unconfirmed: u64,
}

impl Analysis {
    pub fn totals(&self) -> Delivery {
        let mut t = Delivery::default();
        for d in self.deliveries.values() {
            t.events += d.events;
            t.checked += d.checked;
            t.excluded += d.excluded;
            t.uncertain += d.uncertain;
            t.expected += d.expected;
            t.received += d.received;
            t.missing += d.missing;
            t.extra += d.extra;
            t.duplicates += d.duplicates;
        }
        t
    }
}

pub struct Inputs<'a> {
    pub players: &'a [PlayerRun],
    pub sent: &'a [Sent],
    pub receipts: &'a [Receipt],
    pub plan: Plan,
    pub boundary_us: u64,
    /// The game tick's period; 0 when unknown (then the ticks seen are the ticks expected).
    pub tick_interval_ms: u64,
    /// Nodes the players were spread over, player `i` on node `i % nodes`. Above 1, room
    /// events are also measured apart by whether sender and recipient share a node, and
    /// ticks by the recipient's node.
    pub nodes: usize,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant figures: valid bounds, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|e| panic!("hdrhistogram refused valid bounds: {e}"))
}

pub fn summarize(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Event identity for the received map.
type EventKey = (u8, u32, u32);
const LEFT: u8 = 1;
const ENTERED: u8 = 2;
const SAY: u8 = 3;
const GLOBAL: u8 = 4;

#[derive(Clone, Copy)]
struct Move {
    sent_us: u64,
    /// The latest it can have taken effect: its answer, or the end of the run.
    done_us: u64,
    from: u32,
    to: u32,
    n: u32,
}

enum Step {
    Move {
        actor: u32,
        m: Move,
    },
    Chat {
        kind: SentKind,
        actor: u32,
        n: u32,
        done_us: u64,
    },
    Close {
        player: u32,
    },
}

/// The latest a command can have taken effect: its answer; unanswered, the end of its
/// player's connection (or of the run). An answer without a time (records of an older
/// generator) counts as immediate, as the checker used to assume, rather than as open-ended:
/// an open span would leave everyone near it unchecked and hide real losses.
fn done_us(sent: &Sent, plan: &Plan, closed_us: Option<u64>) -> u64 {
    let open_until = closed_us.unwrap_or(plan.stop_us).min(plan.stop_us);
    match sent.outcome {
        Outcome::Ok | Outcome::Error if sent.replied_us >= sent.sent_us => sent.replied_us,
        Outcome::Ok | Outcome::Error => sent.sent_us,
        Outcome::Unconfirmed => open_until.max(sent.sent_us),
    }
}

pub fn analyse(input: &Inputs<'_>) -> Analysis {
    let plan = input.plan;
    let boundary = input.boundary_us;
    let mut out = Analysis::default();
    let size = input
        .players
        .iter()
        .map(|p| p.idx as usize + 1)
        .chain(input.sent.iter().map(|s| s.actor as usize + 1))
        .chain(
            input
                .receipts
                .iter()
                .map(|r| r.actor.max(r.recipient) as usize + 1),
        )
        .max()
        .unwrap_or(0);

    let mut closed_at: Vec<Option<u64>> = vec![None; size];
    for p in input.players {
        closed_at[p.idx as usize] = p.closed_us;
    }
    // Moves that happened, per actor, in time order.
    let mut moves: Vec<Vec<Move>> = vec![Vec::new(); size];
    for s in input.sent {
        if s.kind == SentKind::Move && s.outcome != Outcome::Error {
            moves[s.actor as usize].push(Move {
                sent_us: s.sent_us,
                done_us: done_us(s, &plan, closed_at[s.actor as usize]),
                from: s.room,
                to: s.to,
                n: s.n,
            });
        }
        if plan.in_window(s.sent_us) {
            let name = match s.kind {
                SentKind::Move => "move",
                SentKind::Say => "say",
                SentKind::Global => "global",
            };
            *out.commands.entry(name.to_owned()).or_default() += 1;
            match s.outcome {
                Outcome::Error => out.commands_failed += 1,
                Outcome::Unconfirmed => out.commands_unconfirmed += 1,
                Outcome::Ok => {}
            }
        }
    }
    for list in &mut moves {
        list.sort_by_key(|m| m.sent_us);
    }

    // Latency, and who received what.
    let mut h_say = histogram();
    let mut h_presence = histogram();
    let mut h_global = histogram();
    let mut h_tick = histogram();
    let nodes = input.nodes.max(1);
    let node_of = |player: u32| player as usize % nodes;
    // Room events whose sender's node is (same) or is not (cross) the recipient's.
    let mut h_room_same = histogram();
    let mut h_room_cross = histogram();
    let mut h_tick_node: Vec<Histogram<u64>> = (0..nodes).map(|_| histogram()).collect();
    let mut room_split = |actor: u32, recipient: u32, latency: u64| {
        if node_of(actor) == node_of(recipient) {
            h_room_same.saturating_record(latency);
        } else {
            h_room_cross.saturating_record(latency);
        }
    };
    let mut received: HashMap<EventKey, Vec<u32>> = HashMap::new();
    // The last receipt of each event: it was routed before then.
    let mut last_receipt: HashMap<EventKey, u64> = HashMap::new();
    let mut tick_received: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for r in input.receipts {
        if plan.in_window(r.recv_us) {
            out.received_in_window += 1;
            *by_kind.entry(r.kind.name().to_owned()).or_default() += 1;
        }
        let latency = r.recv_us.saturating_sub(r.sent_us).max(1);
        match r.kind {
            Kind::Entered | Kind::Left => {
                let list = &moves[r.actor as usize];
                let pos = list.partition_point(|m| m.sent_us <= r.recv_us);
                let found = list[..pos].iter().rev().take(4).find(|m| {
                    if r.kind == Kind::Left {
                        m.from == r.room
                    } else {
                        m.to == r.room
                    }
                });
                match found {
                    Some(m) => {
                        if plan.in_window(m.sent_us) {
                            let lat = r.recv_us.saturating_sub(m.sent_us).max(1);
                            h_presence.saturating_record(lat);
                            room_split(r.actor, r.recipient, lat);
                            let tag = if r.kind == Kind::Left { LEFT } else { ENTERED };
                            received
                                .entry((tag, r.actor, m.n))
                                .or_default()
                                .push(r.recipient);
                            let last = last_receipt.entry((tag, r.actor, m.n)).or_default();
                            *last = (*last).max(r.recv_us);
                        }
                    }
                    None => {
                        if plan.in_window(r.recv_us) {
                            out.unattributed_presence += 1;
                        }
                    }
                }
            }
            Kind::Say | Kind::Global => {
                if plan.in_window(r.sent_us) {
                    let (h, tag) = if r.kind == Kind::Say {
                        (&mut h_say, SAY)
                    } else {
                        (&mut h_global, GLOBAL)
                    };
                    h.saturating_record(latency);
                    if r.kind == Kind::Say {
                        room_split(r.actor, r.recipient, latency);
                    }
                    received
                        .entry((tag, r.actor, r.key))
                        .or_default()
                        .push(r.recipient);
                    let last = last_receipt.entry((tag, r.actor, r.key)).or_default();
                    *last = (*last).max(r.recv_us);
                }
            }
            Kind::Tick => {
                if plan.in_window(r.sent_us) {
                    h_tick.saturating_record(latency);
                    h_tick_node[node_of(r.recipient)].saturating_record(latency);
                    tick_received
                        .entry(r.sent_us)
                        .or_default()
                        .push(r.recipient);
                }
            }
            Kind::EnteredGame | Kind::LeftGame => {
                if plan.in_window(r.recv_us) {
                    out.churn_events += 1;
                }
            }
        }
    }
    let secs = plan.measured_secs().max(1e-9);
    out.received_per_sec = out.received_in_window as f64 / secs;
    out.received_per_sec_by_kind = by_kind
        .into_iter()
        .map(|(k, v)| (k, v as f64 / secs))
        .collect();
    let mut h_room = histogram();
    let _ = h_room.add(&h_say);
    let _ = h_room.add(&h_presence);
    for (name, h) in [
        ("room_event", &h_room),
        ("say", &h_say),
        ("presence", &h_presence),
        ("global", &h_global),
        ("tick", &h_tick),
    ] {
        out.latency.insert(name.to_owned(), summarize(h));
    }
    if nodes > 1 {
        out.latency
            .insert("room_event_same_node".into(), summarize(&h_room_same));
        out.latency
            .insert("room_event_cross_node".into(), summarize(&h_room_cross));
        for (k, h) in h_tick_node.iter().enumerate() {
            out.latency
                .insert(format!("tick_node_{}", k + 1), summarize(h));
        }
    }

    // Replay rooms over time and compare expected with received recipients.
    let mut room_of: Vec<u32> = vec![NO_ROOM; size];
    let mut members: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut connected_at: Vec<Option<(u64, Option<u64>)>> = vec![None; size];
    for p in input.players {
        if p.connected {
            connected_at[p.idx as usize] = Some((p.connected_us, p.closed_us));
            if p.room_at_start != NO_ROOM {
                room_of[p.idx as usize] = p.room_at_start;
                members.entry(p.room_at_start).or_default().push(p.idx);
            }
        }
    }
    // When each room was touched by a move or a departure (from, until), and by whom.
    let mut touches: HashMap<u32, Vec<(u64, u64, u32)>> = HashMap::new();
    let mut steps: Vec<(u64, u8, Step)> = Vec::new();
    // Every move, also those after the window: an event near its end is routed while
    // they take effect.
    for (actor, list) in moves.iter().enumerate() {
        for m in list {
            touches
                .entry(m.from)
                .or_default()
                .push((m.sent_us, m.done_us, actor as u32));
            touches
                .entry(m.to)
                .or_default()
                .push((m.sent_us, m.done_us, actor as u32));
            steps.push((
                m.sent_us,
                1,
                Step::Move {
                    actor: actor as u32,
                    m: *m,
                },
            ));
        }
    }
    for p in input.players {
        if let (true, Some(closed)) = (p.connected, p.closed_us) {
            let last_room = moves[p.idx as usize]
                .iter()
                .rev()
                .find(|m| m.sent_us <= closed)
                .map(|m| m.to)
                .unwrap_or(p.room_at_start);
            touches
                .entry(last_room)
                .or_default()
                .push((closed, closed, p.idx));
            steps.push((closed, 0, Step::Close { player: p.idx }));
        }
    }
    for s in input.sent {
        if s.kind != SentKind::Move && s.outcome != Outcome::Error && plan.in_window(s.sent_us) {
            steps.push((
                s.sent_us,
                2,
                Step::Chat {
                    kind: s.kind,
                    actor: s.actor,
                    n: s.n,
                    done_us: done_us(s, &plan, closed_at[s.actor as usize]),
                },
            ));
        }
    }
    // Per room, touches by start, and the longest one (to bound the search below).
    let mut longest: HashMap<u32, u64> = HashMap::new();
    for (room, list) in touches.iter_mut() {
        list.sort_unstable();
        let span = list.iter().map(|&(from, until, _)| until - from).max();
        longest.insert(*room, span.unwrap_or(0));
    }
    steps.sort_by_key(|(t, order, _)| (*t, *order));
    // Players who entered or left `room` while the event (sent at `from`, routed by
    // `until`) could have been routed, ±boundary (sorted): which side of the race they end
    // up on is legitimately either, so they are neither expected nor counted for that
    // event. The actor's own move is no race (it is the event, or was processed in order
    // before the actor's `say`).
    let uncertain_in = |room: u32, from: u64, until: u64, actor: u32| -> Vec<u32> {
        let mut out: Vec<u32> = touches.get(&room).map_or_else(Vec::new, |list| {
            let lo_t = from.saturating_sub(boundary);
            let hi_t = until.max(from) + boundary;
            let reach = longest.get(&room).copied().unwrap_or(0);
            let lo = list.partition_point(|&(start, _, _)| start < lo_t.saturating_sub(reach));
            let hi = list.partition_point(|&(start, _, _)| start <= hi_t);
            list[lo..hi]
                .iter()
                .filter(|&&(_, end, p)| end >= lo_t && p != actor)
                .map(|&(_, _, p)| p)
                .collect()
        });
        out.sort_unstable();
        out.dedup();
        out
    };
    let empty = Vec::new();
    let mut deliveries: BTreeMap<&'static str, Delivery> = BTreeMap::new();
    let check = |members: &HashMap<u32, Vec<u32>>,
                 d: &mut Delivery,
                 room: u32,
                 (from, until): (u64, u64),
                 actor: u32,
                 got: &[u32]| {
        let uncertain = uncertain_in(room, from, until, actor);
        let expected: Vec<u32> = members
            .get(&room)
            .map(|v| v.iter().copied().filter(|&p| p != actor).collect())
            .unwrap_or_default();
        compare_certain(expected, got, &uncertain, d);
    };
    for (t, _, step) in &steps {
        match step {
            Step::Move { actor, m } => {
                if plan.in_window(*t) {
                    for (name, room, tag) in [
                        ("player_left", m.from, LEFT),
                        ("player_entered", m.to, ENTERED),
                    ] {
                        let d = deliveries.entry(name).or_default();
                        d.events += 1;
                        let key = (tag, *actor, m.n);
                        let got = received.get(&key).unwrap_or(&empty);
                        let last = last_receipt.get(&key).copied().unwrap_or(0);
                        check(&members, d, room, (*t, m.done_us.max(last)), *actor, got);
                    }
                }
                let a = *actor as usize;
                let current = room_of[a];
                if let Some(list) = members.get_mut(&current)
                    && let Some(i) = list.iter().position(|p| p == actor)
                {
                    list.swap_remove(i);
                }
                room_of[a] = m.to;
                members.entry(m.to).or_default().push(*actor);
            }
            Step::Close { player } => {
                let a = *player as usize;
                if let Some(list) = members.get_mut(&room_of[a])
                    && let Some(i) = list.iter().position(|p| p == player)
                {
                    list.swap_remove(i);
                }
                room_of[a] = NO_ROOM;
            }
            Step::Chat {
                kind,
                actor,
                n,
                done_us,
            } => {
                if *kind == SentKind::Say {
                    let d = deliveries.entry("say").or_default();
                    d.events += 1;
                    let room = room_of[*actor as usize];
                    if room == NO_ROOM {
                        d.excluded += 1;
                        continue;
                    }
                    let key = (SAY, *actor, *n);
                    let got = received.get(&key).unwrap_or(&empty);
                    let last = last_receipt.get(&key).copied().unwrap_or(0);
                    check(&members, d, room, (*t, (*done_us).max(last)), *actor, got);
                } else {
                    let d = deliveries.entry("global").or_default();
                    d.events += 1;
                    let (expected, uncertain) =
                        everyone_connected(&connected_at, *t, boundary, Some(*actor));
                    let got = received.get(&(GLOBAL, *actor, *n)).unwrap_or(&empty);
                    compare_certain(expected, got, &uncertain, d);
                }
            }
        }
    }

    // Ticks: every player connected at the tick's time is expected to get it.
    let mut tick_times: Vec<u64> = if input.tick_interval_ms > 0 {
        let period = input.tick_interval_ms * 1000;
        let first = plan.measure_from_us.div_ceil(period);
        (first..)
            .map(|k| k * period)
            .take_while(|&t| t < plan.measure_until_us)
            .collect()
    } else {
        tick_received.keys().copied().collect()
    };
    tick_times.dedup();
    for t in tick_times {
        let d = deliveries.entry("game_tick").or_default();
        d.events += 1;
        let (expected, uncertain) = everyone_connected(&connected_at, t, boundary, None);
        let got = tick_received.get(&t).unwrap_or(&empty);
        compare_certain(expected, got, &uncertain, d);
    }
    out.deliveries = deliveries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    out
}

/// Players connected at `t` (sorted), and those whose connection began or ended within
/// ±boundary of it (sorted), which are neither expected nor counted.
fn everyone_connected(
    connected_at: &[Option<(u64, Option<u64>)>],
    t: u64,
    boundary: u64,
    except: Option<u32>,
) -> (Vec<u32>, Vec<u32>) {
    let mut sure = Vec::new();
    let mut unsure = Vec::new();
    for (idx, c) in connected_at.iter().enumerate() {
        let Some((from, until)) = c else { continue };
        let idx = idx as u32;
        if Some(idx) == except {
            continue;
        }
        let near = |x: u64| x.abs_diff(t) <= boundary;
        if near(*from) || until.is_some_and(near) {
            unsure.push(idx);
        } else if *from < t && until.is_none_or(|u| u > t) {
            sure.push(idx);
        }
    }
    (sure, unsure)
}

/// Compares expected with received recipients, leaving out the `uncertain` (sorted) on
/// both sides and counting them.
fn compare_certain(expected: Vec<u32>, got: &[u32], uncertain: &[u32], d: &mut Delivery) {
    let certain = |p: &u32| uncertain.binary_search(p).is_err();
    let mut expected: Vec<u32> = expected.into_iter().filter(certain).collect();
    let got: Vec<u32> = got.iter().copied().filter(certain).collect();
    d.uncertain += uncertain.len() as u64;
    compare(&mut expected, &got, d);
}

fn compare(expected: &mut [u32], got: &[u32], d: &mut Delivery) {
    d.checked += 1;
    expected.sort_unstable();
    let mut got = got.to_vec();
    got.sort_unstable();
    let before = got.len();
    got.dedup();
    d.duplicates += (before - got.len()) as u64;
    d.expected += expected.len() as u64;
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < got.len() {
        match (expected.get(i), got.get(j)) {
            (Some(e), Some(g)) if e == g => {
                d.received += 1;
                i += 1;
                j += 1;
            }
            (Some(e), Some(g)) if e < g => {
                d.missing += 1;
                i += 1;
            }
            (Some(_), None) => {
                d.missing += 1;
                i += 1;
            }
            _ => {
                d.extra += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn plan() -> Plan {
        Plan {
            t0_us: T0,
            measure_from_us: T0 + 10 * S,
            measure_until_us: T0 + 70 * S,
            stop_us: T0 + 73 * S,
        }
    }

    fn player(idx: u32, room: u32) -> PlayerRun {
        PlayerRun {
            idx,
            connected: true,
            connected_us: T0 - 5 * S,
            room_at_start: room,
            closed_us: None,
            close: None,
            connect_error: None,
        }
    }

    fn sent(kind: SentKind, actor: u32, n: u32, at: u64, room: u32, to: u32) -> Sent {
        Sent {
            kind,
            actor,
            n,
            sent_us: at,
            room,
            to,
            outcome: Outcome::Ok,
            replied_us: at + 1000,
        }
    }

    fn got(
        kind: Kind,
        recipient: u32,
        actor: u32,
        key: u32,
        room: u32,
        sent: u64,
        recv: u64,
    ) -> Receipt {
        Receipt {
            kind,
            recipient,
            actor,
            key,
            room,
            sent_us: sent,
            recv_us: recv,
        }
    }

    /// Players 0 and 1 in room 10, player 2 in room 20. At +20 s player 0 moves 10 → 20;
    /// at +40 s player 1 says in room 10 (alone now); at +50 s player 2 says in room 20.
    fn scene() -> (Vec<PlayerRun>, Vec<Sent>, Vec<Receipt>) {
        let players = vec![player(0, 10), player(1, 10), player(2, 20)];
        let move_at = T0 + 20 * S;
        let sent = vec![
            sent(SentKind::Move, 0, 0, move_at, 10, 20),
            sent(SentKind::Say, 1, 1, T0 + 40 * S, 10, NO_ROOM),
            sent(SentKind::Say, 2, 1, T0 + 50 * S, 20, NO_ROOM),
        ];
        let receipts = vec![
            got(Kind::Left, 1, 0, 0, 10, 0, move_at + 2_000),
            got(Kind::Entered, 2, 0, 0, 20, 0, move_at + 3_000),
            got(Kind::Say, 0, 2, 1, 20, T0 + 50 * S, T0 + 50 * S + 1_000),
            got(
                Kind::Tick,
                0,
                0,
                0,
                NO_ROOM,
                T0 + 30 * S,
                T0 + 30 * S + 5_000,
            ),
            got(
                Kind::Tick,
                1,
                0,
                0,
                NO_ROOM,
                T0 + 30 * S,
                T0 + 30 * S + 6_000,
            ),
            got(
                Kind::Tick,
                2,
                0,
                0,
                NO_ROOM,
                T0 + 30 * S,
                T0 + 30 * S + 7_000,
            ),
        ];
        (players, sent, receipts)
    }

    fn run(players: &[PlayerRun], sent: &[Sent], receipts: &[Receipt], tick_ms: u64) -> Analysis {
        analyse(&Inputs {
            players,
            sent,
            receipts,
            plan: plan(),
            boundary_us: S,
            tick_interval_ms: tick_ms,
            nodes: 1,
        })
    }

    #[test]
    fn room_events_and_ticks_are_measured_apart_by_node() {
        let (players, sent, receipts) = scene();
        // Two nodes: players 0 and 2 on node 1, player 1 on node 2.
        let a = analyse(&Inputs {
            players: &players,
            sent: &sent,
            receipts: &receipts,
            plan: plan(),
            boundary_us: S,
            tick_interval_ms: 0,
            nodes: 2,
        });
        // 0 leaves past 1 (across), enters past 2 (same node); 2 speaks to 0 (same node).
        assert_eq!(a.latency["room_event_same_node"].count, 2);
        assert_eq!(a.latency["room_event_cross_node"].count, 1);
        assert_eq!(a.latency["tick_node_1"].count, 2);
        assert_eq!(a.latency["tick_node_2"].count, 1);
        let single = run(&players, &sent, &receipts, 0);
        assert!(!single.latency.contains_key("room_event_cross_node"));
    }

    #[test]
    fn a_clean_run_has_nothing_missing_and_measures_latency() {
        let (players, sent, receipts) = scene();
        let a = run(&players, &sent, &receipts, 0);
        let t = a.totals();
        assert_eq!((t.missing, t.extra, t.duplicates), (0, 0, 0), "{a:#?}");
        assert_eq!(a.deliveries["player_left"].expected, 1);
        assert_eq!(a.deliveries["player_entered"].expected, 1);
        assert_eq!(
            a.deliveries["say"].expected, 1,
            "player 1 alone, player 2 heard by 0"
        );
        assert_eq!(a.deliveries["game_tick"].expected, 3);
        assert_eq!(a.latency["presence"].count, 2);
        assert!((a.latency["presence"].max_ms - 3.0).abs() < 0.01);
        assert_eq!(a.latency["room_event"].count, 3);
        assert!((a.latency["tick"].p50_ms - 6.0).abs() < 0.01);
        assert_eq!(a.unattributed_presence, 0);
        assert_eq!(a.commands["move"], 1);
    }

    #[test]
    fn finds_missing_extra_and_duplicate_deliveries() {
        let (players, sent, mut receipts) = scene();
        receipts.remove(1); // player 2 never hears player 0 arrive
        receipts.push(receipts[1]); // player 0 hears player 2's say twice
        receipts.push(got(Kind::Say, 1, 2, 1, 20, T0 + 50 * S, T0 + 50 * S + 900)); // 1 is not in 20
        let a = run(&players, &sent, &receipts, 10_000);
        assert_eq!(a.deliveries["player_entered"].missing, 1);
        assert_eq!(a.deliveries["say"].duplicates, 1);
        assert_eq!(a.deliveries["say"].extra, 1);
        // Ticks at +10..+60 s every 10 s: six, of which one reached everyone.
        assert_eq!(a.deliveries["game_tick"].events, 6);
        assert_eq!(a.deliveries["game_tick"].missing, 15);
    }

    #[test]
    fn players_moving_near_an_event_are_not_checked_for_it() {
        let (mut players, mut sent, mut receipts) = scene();
        // Player 2 says in room 20 half a second after player 0 walked in; player 3, in
        // room 20 all along, hears it and is checked; player 0 is not, either way.
        players.push(player(3, 20));
        let said = T0 + 20 * S + S / 2;
        sent[2].sent_us = said;
        receipts[2].sent_us = said;
        receipts[2].recv_us = said + 800;
        receipts.push(got(Kind::Say, 3, 2, 1, 20, said, said + 900));
        receipts.push(got(Kind::Entered, 3, 0, 0, 20, 0, T0 + 20 * S + 2_500));
        receipts.push(got(
            Kind::Tick,
            3,
            0,
            0,
            NO_ROOM,
            T0 + 30 * S,
            T0 + 30 * S + 5_000,
        ));
        let a = run(&players, &sent, &receipts, 0);
        let say = &a.deliveries["say"];
        assert_eq!((say.checked, say.uncertain), (2, 1), "{say:?}");
        assert_eq!(
            (say.expected, say.received, say.extra, say.missing),
            (1, 1, 0, 0)
        );
        assert_eq!(a.deliveries["player_entered"].expected, 2);
        assert_eq!(a.totals().missing + a.totals().extra, 0, "{a:#?}");
    }

    /// Under load an event can be routed seconds after it was sent: its race window runs
    /// from its sending to its answer (or last receipt), not a fixed ±boundary.
    #[test]
    fn a_slowly_answered_say_widens_the_race_window() {
        let (players, mut sent, mut receipts) = scene();
        // Player 2 says in room 20 three seconds before player 0's move is sent, but the
        // say is answered (and heard) only five seconds later: player 0 may have arrived.
        let said = T0 + 17 * S;
        sent[2].sent_us = said;
        sent[2].replied_us = said + 5 * S;
        receipts[2].sent_us = said;
        receipts[2].recv_us = said + 5 * S;
        let a = run(&players, &sent, &receipts, 0);
        let say = &a.deliveries["say"];
        assert_eq!(
            (say.uncertain, say.extra, say.missing),
            (1, 0, 0),
            "{say:?}"
        );
        // The same receipt with a prompt answer is a real extra delivery.
        sent[2].replied_us = said + 1_000;
        receipts[2].recv_us = said + 1_000;
        let a = run(&players, &sent, &receipts, 0);
        assert_eq!(a.deliveries["say"].extra, 1, "{:?}", a.deliveries["say"]);
    }

    /// A move can take effect seconds after it was sent: until its answer, it races with
    /// every event routed meanwhile.
    #[test]
    fn a_slowly_answered_move_widens_the_race_window() {
        let (players, mut commands, mut receipts) = scene();
        // Player 0's move 10 → 20 is sent at +20 s but answered only at +25 s; player 2
        // says in room 20 at +23 s, answered at once, and player 0 does not hear it.
        commands[0].replied_us = T0 + 25 * S;
        let said = T0 + 23 * S;
        commands[2].sent_us = said;
        commands[2].replied_us = said + 1_000;
        receipts.remove(2);
        let a = run(&players, &commands, &receipts, 0);
        let say = &a.deliveries["say"];
        assert_eq!((say.uncertain, say.missing), (1, 0), "{say:?}");
        // Answered at once, the move is done by +23 s: player 0 should have heard it.
        commands[0].replied_us = commands[0].sent_us + 1_000;
        let a = run(&players, &commands, &receipts, 0);
        assert_eq!(a.deliveries["say"].missing, 1, "{:?}", a.deliveries["say"]);
    }

    /// An answer without a time is taken as immediate, not as open until the run's end.
    #[test]
    fn an_answer_without_a_time_does_not_hide_losses() {
        let (players, mut commands, mut receipts) = scene();
        commands[0].replied_us = 0;
        let said = T0 + 23 * S;
        commands[2].sent_us = said;
        commands[2].replied_us = said + 1_000;
        receipts.remove(2);
        let a = run(&players, &commands, &receipts, 0);
        assert_eq!(a.deliveries["say"].missing, 1, "{:?}", a.deliveries["say"]);
    }

    /// A move sent just after the window still races with an event routed at its end.
    #[test]
    fn moves_after_the_window_race_with_events_at_its_end() {
        let (players, mut commands, mut receipts) = scene();
        // Player 2 says in room 20 at the window's last moment and is answered 400 ms
        // later; player 0 leaves room 20 at +100 ms, after the window, and does not hear it.
        let said = plan().measure_until_us - 1;
        commands[2].sent_us = said;
        commands[2].replied_us = said + 400_000;
        receipts.remove(2);
        commands.push(sent(SentKind::Move, 0, 1, said + 100_000, 20, 10));
        let a = run(&players, &commands, &receipts, 0);
        let say = &a.deliveries["say"];
        assert_eq!((say.uncertain, say.missing), (1, 0), "{say:?}");
    }

    #[test]
    fn departed_players_are_not_expected() {
        let (mut players, sent, receipts) = scene();
        players[0].closed_us = Some(T0 + 45 * S);
        let a = run(&players, &sent, &receipts, 0);
        // Player 0 left before player 2 spoke: its receipt is now extra.
        assert_eq!(a.deliveries["say"].extra, 1);
        assert_eq!(a.deliveries["say"].expected, 0);
    }
}
