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

/// Event identity: tag, actor, and the actor's message or move number.
type EventKey = (u8, u32, u32);
const LEFT: u8 = 1;
const ENTERED: u8 = 2;
const SAY: u8 = 3;
const GLOBAL: u8 = 4;

/// The run's figures from every worker's records, by the method in the module's doc.
pub fn analyse(input: &Inputs<'_>) -> Analysis {
    let mut out = Analysis::default();
    count_commands(input, &mut out);
    count_traffic(input, &mut out);

    let slots = player_slots(input);
    let closed_at = closed_at(input.players, slots);
    let moves = Moves::from_sent(input, &closed_at, slots);
    let receipts = Receipts::read(input, &moves);
    out.latency = receipts.latency.summaries();
    out.unattributed_presence = receipts.unattributed_presence;

    let mut check = Checker {
        plan: input.plan,
        boundary: input.boundary_us,
        heard: &receipts.heard,
        touches: Touches::new(input.players, &moves),
        connections: Connections::new(input.players, slots),
        deliveries: BTreeMap::new(),
    };
    let mut rooms = Rooms::at_start(input.players, slots);
    for (t, step) in steps(input, &moves, &closed_at) {
        check.step(&mut rooms, t, &step);
    }
    check.ticks(&tick_times(input, &receipts.heard));
    out.deliveries = check.into_deliveries();
    out
}

/// One more than the highest player index anywhere in the records, so per-player tables
/// can be indexed by any of them.
fn player_slots(input: &Inputs<'_>) -> usize {
    input
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
        .unwrap_or(0)
}

fn closed_at(players: &[PlayerRun], slots: usize) -> Vec<Option<u64>> {
    let mut closed_at = vec![None; slots];
    for p in players {
        closed_at[p.idx as usize] = p.closed_us;
    }
    closed_at
}

fn count_commands(input: &Inputs<'_>, out: &mut Analysis) {
    for s in input
        .sent
        .iter()
        .filter(|s| input.plan.in_window(s.sent_us))
    {
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

/// Receipts by arrival, whatever they are and whether or not they can be attributed.
fn count_traffic(input: &Inputs<'_>, out: &mut Analysis) {
    let plan = input.plan;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for r in input.receipts.iter().filter(|r| plan.in_window(r.recv_us)) {
        out.received_in_window += 1;
        *by_kind.entry(r.kind.name().to_owned()).or_default() += 1;
        if matches!(r.kind, Kind::EnteredGame | Kind::LeftGame) {
            out.churn_events += 1;
        }
    }
    let secs = plan.measured_secs().max(1e-9);
    out.received_per_sec = out.received_in_window as f64 / secs;
    out.received_per_sec_by_kind = by_kind
        .into_iter()
        .map(|(k, v)| (k, v as f64 / secs))
        .collect();
}

#[derive(Clone, Copy)]
struct Move {
    sent_us: u64,
    /// The latest it can have taken effect: its answer, or the end of the run.
    done_us: u64,
    from: u32,
    to: u32,
    n: u32,
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

/// The moves that happened (all but those refused), per actor, in the order sent.
struct Moves(Vec<Vec<Move>>);

impl Moves {
    fn from_sent(input: &Inputs<'_>, closed_at: &[Option<u64>], slots: usize) -> Self {
        let mut moves: Vec<Vec<Move>> = vec![Vec::new(); slots];
        for s in input.sent {
            if s.kind == SentKind::Move && s.outcome != Outcome::Error {
                moves[s.actor as usize].push(Move {
                    sent_us: s.sent_us,
                    done_us: done_us(s, &input.plan, closed_at[s.actor as usize]),
                    from: s.room,
                    to: s.to,
                    n: s.n,
                });
            }
        }
        for list in &mut moves {
            list.sort_by_key(|m| m.sent_us);
        }
        Self(moves)
    }

    fn of(&self, actor: u32) -> &[Move] {
        self.0.get(actor as usize).map_or(&[], Vec::as_slice)
    }

    /// The move a presence receipt reports: of the actor's last four moves sent before it
    /// arrived, the latest out of (or into) its room.
    fn reported_by(&self, r: &Receipt) -> Option<&Move> {
        let list = self.of(r.actor);
        let pos = list.partition_point(|m| m.sent_us <= r.recv_us);
        list[..pos].iter().rev().take(4).find(|m| {
            if r.kind == Kind::Left {
                m.from == r.room
            } else {
                m.to == r.room
            }
        })
    }

    /// The room `player` was in at `t`, by the moves sent until then.
    fn room_at(&self, player: &PlayerRun, t: u64) -> u32 {
        self.of(player.idx)
            .iter()
            .rev()
            .find(|m| m.sent_us <= t)
            .map(|m| m.to)
            .unwrap_or(player.room_at_start)
    }
}

struct Latencies {
    nodes: usize,
    say: Histogram<u64>,
    presence: Histogram<u64>,
    global: Histogram<u64>,
    tick: Histogram<u64>,
    /// Room events whose sender's node is (same) or is not (cross) the recipient's.
    room_same_node: Histogram<u64>,
    room_cross_node: Histogram<u64>,
    tick_by_node: Vec<Histogram<u64>>,
}

impl Latencies {
    fn new(nodes: usize) -> Self {
        let nodes = nodes.max(1);
        Self {
            nodes,
            say: histogram(),
            presence: histogram(),
            global: histogram(),
            tick: histogram(),
            room_same_node: histogram(),
            room_cross_node: histogram(),
            tick_by_node: (0..nodes).map(|_| histogram()).collect(),
        }
    }

    fn node_of(&self, player: u32) -> usize {
        player as usize % self.nodes
    }

    fn room_event(&mut self, actor: u32, recipient: u32, us: u64) {
        if self.node_of(actor) == self.node_of(recipient) {
            self.room_same_node.saturating_record(us);
        } else {
            self.room_cross_node.saturating_record(us);
        }
    }

    fn tick(&mut self, recipient: u32, us: u64) {
        self.tick.saturating_record(us);
        let node = self.node_of(recipient);
        self.tick_by_node[node].saturating_record(us);
    }

    fn summaries(&self) -> BTreeMap<String, Latency> {
        let mut room = histogram();
        let _ = room.add(&self.say);
        let _ = room.add(&self.presence);
        let mut out: BTreeMap<String, Latency> = [
            ("room_event", &room),
            ("say", &self.say),
            ("presence", &self.presence),
            ("global", &self.global),
            ("tick", &self.tick),
        ]
        .into_iter()
        .map(|(name, h)| (name.to_owned(), summarize(h)))
        .collect();
        if self.nodes > 1 {
            out.insert(
                "room_event_same_node".into(),
                summarize(&self.room_same_node),
            );
            out.insert(
                "room_event_cross_node".into(),
                summarize(&self.room_cross_node),
            );
            for (k, h) in self.tick_by_node.iter().enumerate() {
                out.insert(format!("tick_node_{}", k + 1), summarize(h));
            }
        }
        out
    }
}

#[derive(Default)]
struct Recipients {
    players: Vec<u32>,
    /// The last receipt: the event was routed before then.
    last_us: u64,
}

/// Who received each event of the window.
#[derive(Default)]
struct Heard {
    events: HashMap<EventKey, Recipients>,
    /// Ticks by their scheduled time.
    ticks: BTreeMap<u64, Vec<u32>>,
}

impl Heard {
    fn add(&mut self, key: EventKey, r: &Receipt) {
        let e = self.events.entry(key).or_default();
        e.players.push(r.recipient);
        e.last_us = e.last_us.max(r.recv_us);
    }

    fn players(&self, key: EventKey) -> &[u32] {
        self.events.get(&key).map_or(&[], |e| e.players.as_slice())
    }

    fn last_us(&self, key: EventKey) -> u64 {
        self.events.get(&key).map_or(0, |e| e.last_us)
    }

    fn tick(&self, t: u64) -> &[u32] {
        self.ticks.get(&t).map_or(&[], Vec::as_slice)
    }
}

/// Every receipt of an event sent in the window, timed and attributed to its event.
struct Receipts {
    latency: Latencies,
    heard: Heard,
    unattributed_presence: u64,
}

impl Receipts {
    fn read(input: &Inputs<'_>, moves: &Moves) -> Self {
        let mut out = Self {
            latency: Latencies::new(input.nodes),
            heard: Heard::default(),
            unattributed_presence: 0,
        };
        for r in input.receipts {
            match r.kind {
                Kind::Entered | Kind::Left => out.presence(r, moves, &input.plan),
                Kind::Say | Kind::Global => out.chat(r, &input.plan),
                Kind::Tick => out.tick(r, &input.plan),
                // Counted with the traffic: they belong to no event of ours.
                Kind::EnteredGame | Kind::LeftGame => {}
            }
        }
        out
    }

    /// Presence carries no send time: its latency runs from the move it reports.
    fn presence(&mut self, r: &Receipt, moves: &Moves, plan: &Plan) {
        let Some(m) = moves.reported_by(r) else {
            if plan.in_window(r.recv_us) {
                self.unattributed_presence += 1;
            }
            return;
        };
        if !plan.in_window(m.sent_us) {
            return;
        }
        let us = r.recv_us.saturating_sub(m.sent_us).max(1);
        self.latency.presence.saturating_record(us);
        self.latency.room_event(r.actor, r.recipient, us);
        let tag = if r.kind == Kind::Left { LEFT } else { ENTERED };
        self.heard.add((tag, r.actor, m.n), r);
    }

    fn chat(&mut self, r: &Receipt, plan: &Plan) {
        if !plan.in_window(r.sent_us) {
            return;
        }
        let us = latency_us(r);
        let tag = if r.kind == Kind::Say {
            self.latency.say.saturating_record(us);
            self.latency.room_event(r.actor, r.recipient, us);
            SAY
        } else {
            self.latency.global.saturating_record(us);
            GLOBAL
        };
        self.heard.add((tag, r.actor, r.key), r);
    }

    fn tick(&mut self, r: &Receipt, plan: &Plan) {
        if !plan.in_window(r.sent_us) {
            return;
        }
        self.latency.tick(r.recipient, latency_us(r));
        self.heard
            .ticks
            .entry(r.sent_us)
            .or_default()
            .push(r.recipient);
    }
}

/// From the send time the event carries; at least 1 µs, the histograms' floor.
fn latency_us(r: &Receipt) -> u64 {
    r.recv_us.saturating_sub(r.sent_us).max(1)
}

/// When each room was touched by a move or a departure (from, until), and by whom.
struct Touches {
    /// Per room, touches by start.
    by_room: HashMap<u32, Vec<(u64, u64, u32)>>,
    /// Per room, the longest touch, to bound the search for those overlapping a span.
    longest: HashMap<u32, u64>,
}

impl Touches {
    fn new(players: &[PlayerRun], moves: &Moves) -> Self {
        let mut by_room: HashMap<u32, Vec<(u64, u64, u32)>> = HashMap::new();
        // Every move, also those after the window: an event near its end is routed while
        // they take effect.
        for (actor, list) in moves.0.iter().enumerate() {
            for m in list {
                for room in [m.from, m.to] {
                    by_room
                        .entry(room)
                        .or_default()
                        .push((m.sent_us, m.done_us, actor as u32));
                }
            }
        }
        for p in players {
            if let (true, Some(closed)) = (p.connected, p.closed_us) {
                by_room
                    .entry(moves.room_at(p, closed))
                    .or_default()
                    .push((closed, closed, p.idx));
            }
        }
        let mut longest: HashMap<u32, u64> = HashMap::new();
        for (room, list) in by_room.iter_mut() {
            list.sort_unstable();
            let span = list.iter().map(|&(from, until, _)| until - from).max();
            longest.insert(*room, span.unwrap_or(0));
        }
        Self { by_room, longest }
    }

    /// Players who entered or left `room` while the event (sent at `from`, routed by
    /// `until`) could have been routed, ±boundary (sorted): which side of the race they end
    /// up on is legitimately either, so they are neither expected nor counted for that
    /// event. The actor's own move is no race (it is the event, or was processed in order
    /// before the actor's `say`).
    fn uncertain(
        &self,
        room: u32,
        (from, until): (u64, u64),
        boundary: u64,
        actor: u32,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = self.by_room.get(&room).map_or_else(Vec::new, |list| {
            let lo_t = from.saturating_sub(boundary);
            let hi_t = until.max(from) + boundary;
            let reach = self.longest.get(&room).copied().unwrap_or(0);
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
    }
}

/// Each player's connection: from its first frame until it closed, if it did.
struct Connections(Vec<Option<(u64, Option<u64>)>>);

impl Connections {
    fn new(players: &[PlayerRun], slots: usize) -> Self {
        let mut connected_at = vec![None; slots];
        for p in players.iter().filter(|p| p.connected) {
            connected_at[p.idx as usize] = Some((p.connected_us, p.closed_us));
        }
        Self(connected_at)
    }

    /// Players connected at `t` (sorted), and those whose connection began or ended within
    /// ±boundary of it (sorted), which are neither expected nor counted.
    fn at(&self, t: u64, boundary: u64, except: Option<u32>) -> (Vec<u32>, Vec<u32>) {
        let mut sure = Vec::new();
        let mut unsure = Vec::new();
        for (idx, c) in self.0.iter().enumerate() {
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
}

/// Who is in which room, as the replay has got so far.
struct Rooms {
    room_of: Vec<u32>,
    members: HashMap<u32, Vec<u32>>,
}

impl Rooms {
    fn at_start(players: &[PlayerRun], slots: usize) -> Self {
        let mut rooms = Self {
            room_of: vec![NO_ROOM; slots],
            members: HashMap::new(),
        };
        for p in players {
            if p.connected && p.room_at_start != NO_ROOM {
                rooms.enter(p.idx, p.room_at_start);
            }
        }
        rooms
    }

    fn room_of(&self, player: u32) -> u32 {
        self.room_of[player as usize]
    }

    fn enter(&mut self, player: u32, room: u32) {
        self.room_of[player as usize] = room;
        self.members.entry(room).or_default().push(player);
    }

    fn leave(&mut self, player: u32) {
        let room = &mut self.room_of[player as usize];
        if let Some(list) = self.members.get_mut(room)
            && let Some(i) = list.iter().position(|&p| p == player)
        {
            list.swap_remove(i);
        }
        *room = NO_ROOM;
    }

    /// Who should hear `actor` in `room`.
    fn others_in(&self, room: u32, actor: u32) -> Vec<u32> {
        self.members
            .get(&room)
            .map(|v| v.iter().copied().filter(|&p| p != actor).collect())
            .unwrap_or_default()
    }
}

enum Step {
    Move { actor: u32, m: Move },
    Say { actor: u32, n: u32, done_us: u64 },
    Global { actor: u32, n: u32 },
    Close { player: u32 },
}

/// Everything that changes who is where or expects recipients, in time order. At the same
/// instant a departure comes first, then a move, then chat: chat is checked against the
/// rooms as they are after them.
fn steps(input: &Inputs<'_>, moves: &Moves, closed_at: &[Option<u64>]) -> Vec<(u64, Step)> {
    const CLOSE: u8 = 0;
    const MOVE: u8 = 1;
    const CHAT: u8 = 2;
    let plan = input.plan;
    let mut steps: Vec<(u64, u8, Step)> = Vec::new();
    for (actor, list) in moves.0.iter().enumerate() {
        for m in list {
            let actor = actor as u32;
            steps.push((m.sent_us, MOVE, Step::Move { actor, m: *m }));
        }
    }
    for p in input.players {
        if let (true, Some(closed)) = (p.connected, p.closed_us) {
            steps.push((closed, CLOSE, Step::Close { player: p.idx }));
        }
    }
    for s in input.sent {
        if s.outcome == Outcome::Error || !plan.in_window(s.sent_us) {
            continue;
        }
        let (actor, n) = (s.actor, s.n);
        let step = match s.kind {
            SentKind::Say => Step::Say {
                actor,
                n,
                done_us: done_us(s, &plan, closed_at[actor as usize]),
            },
            SentKind::Global => Step::Global { actor, n },
            SentKind::Move => continue,
        };
        steps.push((s.sent_us, CHAT, step));
    }
    // Stable: steps at the same instant and order stay in the order of the records.
    steps.sort_by_key(|(t, order, _)| (*t, *order));
    steps.into_iter().map(|(t, _, step)| (t, step)).collect()
}

/// Ticks expected in the window: by the tick's period when known, else those seen.
fn tick_times(input: &Inputs<'_>, heard: &Heard) -> Vec<u64> {
    let plan = input.plan;
    let mut times: Vec<u64> = if input.tick_interval_ms > 0 {
        let period = input.tick_interval_ms * 1000;
        let first = plan.measure_from_us.div_ceil(period);
        (first..)
            .map(|k| k * period)
            .take_while(|&t| t < plan.measure_until_us)
            .collect()
    } else {
        heard.ticks.keys().copied().collect()
    };
    times.dedup();
    times
}

/// Compares expected with received recipients, event by event, per kind.
struct Checker<'a> {
    plan: Plan,
    boundary: u64,
    heard: &'a Heard,
    touches: Touches,
    connections: Connections,
    deliveries: BTreeMap<&'static str, Delivery>,
}

impl Checker<'_> {
    /// Checks the events of `step`, then applies it to `rooms`.
    fn step(&mut self, rooms: &mut Rooms, t: u64, step: &Step) {
        match *step {
            Step::Move { actor, m } => {
                if self.plan.in_window(t) {
                    self.room_event(
                        rooms,
                        "player_left",
                        (LEFT, actor, m.n),
                        m.from,
                        (t, m.done_us),
                    );
                    self.room_event(
                        rooms,
                        "player_entered",
                        (ENTERED, actor, m.n),
                        m.to,
                        (t, m.done_us),
                    );
                }
                rooms.leave(actor);
                rooms.enter(actor, m.to);
            }
            Step::Close { player } => rooms.leave(player),
            Step::Say { actor, n, done_us } => {
                let room = rooms.room_of(actor);
                if room == NO_ROOM {
                    let d = self.deliveries.entry("say").or_default();
                    d.events += 1;
                    d.excluded += 1;
                } else {
                    self.room_event(rooms, "say", (SAY, actor, n), room, (t, done_us));
                }
            }
            Step::Global { actor, n } => {
                let (expected, uncertain) = self.connections.at(t, self.boundary, Some(actor));
                let got = self.heard.players((GLOBAL, actor, n));
                let d = self.deliveries.entry("global").or_default();
                d.events += 1;
                compare_certain(expected, got, &uncertain, d);
            }
        }
    }

    /// An event heard by the others in `room`, sent at `sent` and routed by `done` (the
    /// sender's answer) or by its last receipt, whichever is later.
    fn room_event(
        &mut self,
        rooms: &Rooms,
        name: &'static str,
        key: EventKey,
        room: u32,
        (sent, done): (u64, u64),
    ) {
        let actor = key.1;
        let routed_by = done.max(self.heard.last_us(key));
        let uncertain = self
            .touches
            .uncertain(room, (sent, routed_by), self.boundary, actor);
        let expected = rooms.others_in(room, actor);
        let d = self.deliveries.entry(name).or_default();
        d.events += 1;
        compare_certain(expected, self.heard.players(key), &uncertain, d);
    }

    /// Every player connected at a tick's time is expected to get it.
    fn ticks(&mut self, times: &[u64]) {
        for &t in times {
            let (expected, uncertain) = self.connections.at(t, self.boundary, None);
            let d = self.deliveries.entry("game_tick").or_default();
            d.events += 1;
            compare_certain(expected, self.heard.tick(t), &uncertain, d);
        }
    }

    fn into_deliveries(self) -> BTreeMap<String, Delivery> {
        self.deliveries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
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

    /// Every figure of one small run, beyond the scene: a global heard twice by one player,
    /// a refused move, an unanswered say, a say from a player already gone, a presence
    /// event matching no move, and a player leaving the game.
    #[test]
    fn a_small_run_counts_every_kind_of_command_and_receipt() {
        let (mut players, mut commands, mut receipts) = scene();
        let at = |s: u64| T0 + s * S;
        players.push(player(3, 30));
        players[3].closed_us = Some(at(42));
        commands.push(sent(SentKind::Global, 1, 2, at(35), 10, NO_ROOM));
        commands.push(sent(SentKind::Say, 3, 1, at(44), 30, NO_ROOM));
        commands.push(Sent {
            outcome: Outcome::Error,
            ..sent(SentKind::Move, 2, 2, at(55), 20, 10)
        });
        commands.push(Sent {
            outcome: Outcome::Unconfirmed,
            replied_us: 0,
            ..sent(SentKind::Say, 0, 1, at(60), 20, NO_ROOM)
        });
        receipts.push(got(Kind::Tick, 3, 0, 0, NO_ROOM, at(30), at(30) + 4_000));
        for recipient in [0, 2, 2, 3] {
            receipts.push(got(
                Kind::Global,
                recipient,
                1,
                2,
                NO_ROOM,
                at(35),
                at(35) + 2_000,
            ));
        }
        receipts.push(got(Kind::Say, 2, 0, 1, 20, at(60), at(60) + 1_500));
        receipts.push(got(Kind::Entered, 0, 1, 0, 99, 0, at(45)));
        receipts.push(got(Kind::LeftGame, 0, 3, 0, NO_ROOM, 0, at(42) + 1_000));
        let a = run(&players, &commands, &receipts, 0);

        let commands: Vec<(&str, u64)> = a.commands.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(commands, [("global", 1), ("move", 2), ("say", 4)]);
        assert_eq!((a.commands_failed, a.commands_unconfirmed), (1, 1));
        assert_eq!((a.unattributed_presence, a.churn_events), (1, 1));
        assert_eq!(a.received_in_window, 14);
        assert!((a.received_per_sec - 14.0 / 60.0).abs() < 1e-9);
        assert!((a.received_per_sec_by_kind["global"] - 4.0 / 60.0).abs() < 1e-9);
        let count = |name: &str| a.latency[name].count;
        assert_eq!(
            [
                count("room_event"),
                count("say"),
                count("presence"),
                count("global"),
                count("tick")
            ],
            [4, 2, 2, 4, 4]
        );

        let delivery = |events, checked, excluded, expected, duplicates| Delivery {
            events,
            checked,
            excluded,
            uncertain: 0,
            expected,
            received: expected,
            missing: 0,
            extra: 0,
            duplicates,
        };
        let deliveries: Vec<(&str, Delivery)> = a
            .deliveries
            .iter()
            .map(|(k, d)| (k.as_str(), d.clone()))
            .collect();
        assert_eq!(
            deliveries,
            [
                // 0, 2 and 3 were connected; 1 spoke.
                ("game_tick", delivery(1, 1, 0, 4, 0)),
                ("global", delivery(1, 1, 0, 3, 1)),
                ("player_entered", delivery(1, 1, 0, 1, 0)),
                ("player_left", delivery(1, 1, 0, 1, 0)),
                // 1 alone, 2 heard by 0, 0 heard by 2; 3 had gone.
                ("say", delivery(4, 3, 1, 2, 0)),
            ]
        );
    }
}
