//! A load-generator worker process: drives a slice of the players over WebSockets and
//! records what each one sends and receives.
//!
//! One process holds at most ~19,900 sockets here (the open-files limit cannot be raised),
//! so the coordinator starts several workers. A worker talks to the coordinator through
//! JSON lines: it prints `progress`/`ready`/`stats`/`done` on stdout, and reads the run's
//! [`Plan`] as one line on stdin. When stdin closes (the coordinator is gone) it exits.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use natsmud_protocol::EventType;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock::{Anchor, now_us};
use crate::players::{PlayerEntry, read_players};
use crate::proto::{self, FrameView, parse_chat_text, parse_frame, timestamp_us};
use crate::records::{
    Counters, Kind, NO_ROOM, Outcome, PlayerRun, Receipt, Sent, SentKind, WorkerOutput,
    write_receipts,
};
use crate::timed::TimedStream;
use crate::workload::{Action, Plan, Schedule, Workload, player_rng};
use crate::world::BenchWorld;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub players_file: PathBuf,
    /// First player index (inclusive) this worker drives.
    #[arg(long)]
    pub from: u32,
    /// Last player index (exclusive).
    #[arg(long)]
    pub to: u32,
    #[arg(long)]
    pub world: PathBuf,
    #[arg(long)]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub worker_id: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Connect and only receive (the idle scenario).
    #[arg(long)]
    pub idle: bool,
    /// Walk each player to its target room after connecting.
    #[arg(long)]
    pub walk: bool,
    /// Comma-separated loopback source addresses for the client sockets.
    #[arg(long, default_value = "127.0.0.1")]
    pub source_addrs: String,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take to open and get its `game_state`.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub workload: Workload,
}

type Ws = WebSocketStream<TimedStream>;

const GLOBAL_STREAM: u32 = u32::MAX - 1;
const TICK_STREAM: u32 = u32::MAX - 2;

const EVENT_TYPES: [EventType; 12] = [
    EventType::GameState,
    EventType::RoomUpdate,
    EventType::CommandResponse,
    EventType::PlayerEntered,
    EventType::PlayerLeft,
    EventType::PlayerEnteredGame,
    EventType::PlayerLeftGame,
    EventType::ChatMessage,
    EventType::GameTick,
    EventType::Error,
    EventType::Pong,
    EventType::Resumed,
];

struct Ctx {
    world: BenchWorld,
    /// Player id → index, for every player of the run (not only this worker's).
    ids: HashMap<String, u32>,
    args: WorkerArgs,
    anchor: Anchor,
    connected: AtomicU64,
    failed: AtomicU64,
    frames: AtomicU64,
    closed: AtomicU64,
}

struct Slot {
    entry: PlayerEntry,
    source: Ipv4Addr,
    server: SocketAddr,
    url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Move { to: u32, sent: usize },
    Chat { sent: usize },
    Walk,
}

/// What one player task hands back.
struct TaskOut {
    run: PlayerRun,
    receipts: Vec<Receipt>,
    sent: Vec<Sent>,
    counters: Counters,
    by_type: [u64; 11],
}

struct Player<'a> {
    ctx: &'a Ctx,
    idx: u32,
    id: String,
    has_state: bool,
    room: u32,
    exits: Vec<(String, u32)>,
    streams: Vec<(u32, u64)>,
    direct_last: u64,
    pending: VecDeque<Pending>,
    plan: Option<Plan>,
    rng: StdRng,
    said: u32,
    globals: u32,
    moves: u32,
    out: TaskOut,
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn server_addr(base: &str) -> Result<(SocketAddr, String)> {
    let host_port = base
        .strip_prefix("http://")
        .with_context(|| format!("server URL {base:?} must start with http://"))?
        .trim_end_matches('/');
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} has no address"))?;
    Ok((addr, host_port.to_owned()))
}

pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>> {
    let sources: Vec<Ipv4Addr> = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("{s:?} is not an IPv4 address"))
        })
        .collect::<Result<_>>()?;
    if sources.is_empty() {
        bail!("no source address");
    }
    Ok(sources)
}

pub async fn run(args: WorkerArgs) -> Result<()> {
    let world = BenchWorld::load(&args.world)?;
    let players = read_players(&args.players_file)?;
    let ids: HashMap<String, u32> = players.iter().map(|p| (p.id.clone(), p.idx)).collect();
    let sources = parse_sources(&args.source_addrs)?;
    let mut addr_cache: HashMap<String, (SocketAddr, String)> = HashMap::new();
    let mut slots = Vec::new();
    for entry in players
        .into_iter()
        .filter(|p| (args.from..args.to).contains(&p.idx))
    {
        if !addr_cache.contains_key(&entry.server) {
            addr_cache.insert(entry.server.clone(), server_addr(&entry.server)?);
        }
        let (server, host_port) = addr_cache
            .get(&entry.server)
            .cloned()
            .with_context(|| format!("no address for {}", entry.server))?;
        slots.push(Slot {
            source: sources[entry.idx as usize % sources.len()],
            server,
            url: format!("ws://{host_port}/api/ws?token={}", entry.token),
            entry,
        });
    }
    let total = slots.len() as u64;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let ctx = Arc::new(Ctx {
        world,
        ids,
        args: args.clone(),
        anchor: Anchor::now(),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    });

    let (plan_tx, plan_rx) = watch::channel(None::<Plan>);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut planned = false;
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if !planned => match serde_json::from_str::<Plan>(&line) {
                    Ok(plan) => {
                        planned = true;
                        let _ = plan_tx.send(Some(plan));
                    }
                    Err(e) => emit(
                        serde_json::json!({"event":"warning","message":format!("bad plan line: {e}")}),
                    ),
                },
                Ok(Some(_)) => {}
                // The coordinator is gone: stop at once; the OS closes the sockets.
                Ok(None) | Err(_) => std::process::exit(3),
            }
        }
    });

    let semaphore = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(slots.len());
    for slot in slots {
        tasks.push(tokio::spawn(run_player(
            ctx.clone(),
            slot,
            semaphore.clone(),
            plan_rx.clone(),
        )));
    }

    // Connection progress until every player has connected or failed, then `ready`.
    let progress_ctx = ctx.clone();
    let reporter = tokio::spawn(async move {
        let ctx = progress_ctx;
        loop {
            let (ok, failed) = (
                ctx.connected.load(Ordering::Relaxed),
                ctx.failed.load(Ordering::Relaxed),
            );
            if ok + failed >= total {
                emit(serde_json::json!({"event":"ready","connected":ok,"failed":failed}));
                break;
            }
            emit(serde_json::json!({"event":"progress","connected":ok,"failed":failed}));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            emit(serde_json::json!({
                "event":"stats",
                "frames":ctx.frames.load(Ordering::Relaxed),
                "closed":ctx.closed.load(Ordering::Relaxed),
            }));
        }
    });

    let mut output = WorkerOutput {
        worker: args.worker_id,
        ..WorkerOutput::default()
    };
    let mut receipts = Vec::new();
    let mut by_type = [0u64; 11];
    for task in tasks {
        let out = task.await.context("a player task panicked")?;
        output.players.push(out.run);
        output.sent.extend(out.sent);
        output.counters.add(&out.counters);
        receipts.extend(out.receipts);
        for (total, n) in by_type.iter_mut().zip(out.by_type) {
            *total += n;
        }
    }
    reporter.abort();
    for (t, n) in EVENT_TYPES.iter().zip(by_type) {
        if n > 0 {
            output.counters.by_type.insert(t.as_str().to_owned(), n);
        }
    }
    output.receipts = receipts.len() as u64;
    let base = args.out_dir.join(format!("worker-{}", args.worker_id));
    write_receipts(&base.with_extension("bin"), &receipts)?;
    let json_path = base.with_extension("json");
    std::fs::write(&json_path, serde_json::to_vec(&output)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    emit(serde_json::json!({"event":"done","receipts":receipts.len()}));
    Ok(())
}

async fn connect(slot: &Slot) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(slot.source), 0))
        .map_err(|e| format!("bind {}: {e}", slot.source))?;
    let stream = socket
        .connect(slot.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let stream = TimedStream::new(stream);
    // Small buffers: a worker holds thousands of sockets and frames are small.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(slot.url.as_str(), stream, Some(config))
            .await
            .map_err(|e| format!("websocket: {e}"))?;
    Ok(ws)
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn short(error: &str) -> String {
    error.chars().take(120).collect()
}

async fn run_player(
    ctx: Arc<Ctx>,
    slot: Slot,
    semaphore: Arc<Semaphore>,
    mut plan_rx: watch::Receiver<Option<Plan>>,
) -> TaskOut {
    let mut p = Player::new(&ctx, &slot.entry);
    let permit = semaphore.acquire_owned().await.ok();
    let connect_timeout = Duration::from_secs(ctx.args.connect_timeout);
    let mut ws = match timeout(connect_timeout, connect(&slot)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return p.failed(e),
        Err(_) => return p.failed("connect timed out".into()),
    };
    match timeout(connect_timeout, p.until_state(&mut ws)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return p.failed(e),
        Err(_) => return p.failed("no game_state in time".into()),
    }
    if ctx.args.walk
        && slot.entry.target != p.room
        && let Err(e) = p.walk(&mut ws, slot.entry.target).await
    {
        if p.out.run.closed_us.is_some() {
            return p.failed(format!("walking: {e}"));
        }
        *p.out
            .counters
            .errors
            .entry(format!("walk: {e}"))
            .or_default() += 1;
    }
    drop(permit);
    p.out.run.connected = true;
    ctx.connected.fetch_add(1, Ordering::Relaxed);

    let mut schedule: Option<Schedule> = None;
    loop {
        if p.plan.is_none() {
            let plan = *plan_rx.borrow();
            if let Some(plan) = plan {
                p.plan = Some(plan);
                p.out.run.room_at_start = p.room;
                if !ctx.args.idle {
                    schedule = Some(Schedule::new(
                        &ctx.args.workload,
                        &mut p.rng,
                        p.idx,
                        plan.t0_us,
                    ));
                }
            }
        }
        let due = schedule.as_ref().and_then(|s| s.next_due());
        let due_at = due.map(|(_, t)| ctx.anchor.instant_of(t));
        let stop_at = p.plan.map(|plan| ctx.anchor.instant_of(plan.stop_us));
        tokio::select! {
            biased;
            changed = plan_rx.changed(), if p.plan.is_none() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = sleep_opt(stop_at), if stop_at.is_some() => break,
            _ = sleep_opt(due_at), if due_at.is_some() => {
                let Some((action, _)) = due else { continue };
                if let Some(s) = schedule.as_mut() {
                    s.advance(action);
                }
                if let Some(line) = p.act(action) {
                    p.out.counters.commands_sent += 1;
                    if let Err(e) = ws.send(Message::text(proto::command(&line))).await {
                        p.closed(format!("send failed: {}", short(&e.to_string())));
                        break;
                    }
                }
            }
            message = ws.next() => {
                if !p.on_message(message, ws.get_ref().last_rx_us()) {
                    break;
                }
            }
        }
    }
    p.out.counters.unstamped_reads = ws.get_ref().unstamped_reads();
    p.out
}

impl<'a> Player<'a> {
    fn new(ctx: &'a Ctx, entry: &PlayerEntry) -> Self {
        Self {
            ctx,
            idx: entry.idx,
            id: entry.id.clone(),
            has_state: false,
            room: NO_ROOM,
            exits: Vec::new(),
            streams: Vec::with_capacity(8),
            direct_last: 0,
            pending: VecDeque::new(),
            plan: None,
            rng: player_rng(ctx.args.seed, entry.idx),
            said: 0,
            globals: 0,
            moves: 0,
            out: TaskOut {
                run: PlayerRun {
                    idx: entry.idx,
                    connected: false,
                    connected_us: 0,
                    room_at_start: NO_ROOM,
                    closed_us: None,
                    close: None,
                    connect_error: None,
                },
                receipts: Vec::new(),
                sent: Vec::new(),
                counters: Counters::default(),
                by_type: [0; 11],
            },
        }
    }

    fn failed(mut self, error: String) -> TaskOut {
        self.ctx.failed.fetch_add(1, Ordering::Relaxed);
        self.out.run.connect_error = Some(short(&error));
        self.out
    }

    fn closed(&mut self, how: String) {
        if self.out.run.closed_us.is_none() {
            self.ctx.closed.fetch_add(1, Ordering::Relaxed);
            self.out.run.closed_us = Some(now_us());
            self.out.run.close = Some(how);
        }
    }

    /// Handles one read from the socket; false when the connection is over.
    /// `arrived_us`: when the kernel received the bytes that completed the message.
    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        arrived_us: u64,
    ) -> bool {
        match message {
            Some(Ok(Message::Text(text))) => {
                let now = now_us();
                let arrived = if arrived_us == 0 {
                    now
                } else {
                    arrived_us.min(now)
                };
                let lag = now - arrived;
                self.out.counters.read_lag_sum_us += lag;
                self.out.counters.read_lag_max_us = self.out.counters.read_lag_max_us.max(lag);
                self.on_frame(text.as_str(), arrived);
                true
            }
            Some(Ok(Message::Close(frame))) => {
                let how = match frame {
                    Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                    None => "close without code".to_owned(),
                };
                self.closed(how);
                false
            }
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                self.closed(format!("error: {}", short(&e.to_string())));
                false
            }
            None => {
                self.closed("connection ended without close frame".to_owned());
                false
            }
        }
    }

    async fn until_state(&mut self, ws: &mut Ws) -> Result<(), String> {
        while !self.has_state {
            if !self.on_message(ws.next().await, ws.get_ref().last_rx_us()) {
                return Err(format!(
                    "closed before game_state: {}",
                    self.out.run.close.clone().unwrap_or_default()
                ));
            }
            if !self.has_state {
                self.out.counters.before_game_state += 1;
            }
        }
        Ok(())
    }

    /// Walks a shortest path to `target`, one confirmed step at a time.
    async fn walk(&mut self, ws: &mut Ws, target: u32) -> Result<(), String> {
        let path = self
            .ctx
            .world
            .path(self.room, target)
            .ok_or_else(|| "no path to the target room".to_owned())?;
        for direction in path {
            self.pending.push_back(Pending::Walk);
            ws.send(Message::text(proto::command(&format!("go {direction}"))))
                .await
                .map_err(|e| format!("send: {e}"))?;
            let step = async {
                while !self.pending.is_empty() {
                    if !self.on_message(ws.next().await, ws.get_ref().last_rx_us()) {
                        return Err("closed while walking".to_owned());
                    }
                }
                Ok(())
            };
            timeout(Duration::from_secs(30), step)
                .await
                .map_err(|_| "a step was not confirmed in 30 s".to_owned())??;
        }
        Ok(())
    }

    /// The command line for a due action, logged as sent now.
    fn act(&mut self, action: Action) -> Option<String> {
        let sent_us = now_us();
        match action {
            Action::Move => {
                if self
                    .pending
                    .iter()
                    .any(|p| matches!(p, Pending::Move { .. } | Pending::Walk))
                    || self.exits.is_empty()
                {
                    self.out.counters.moves_skipped += 1;
                    return None;
                }
                let (direction, to) =
                    self.exits[self.rng.random_range(0..self.exits.len())].clone();
                self.out.sent.push(Sent {
                    kind: SentKind::Move,
                    actor: self.idx,
                    n: self.moves,
                    sent_us,
                    room: self.room,
                    to,
                    outcome: Outcome::Unconfirmed,
                    replied_us: 0,
                });
                self.moves += 1;
                self.pending.push_back(Pending::Move {
                    to,
                    sent: self.out.sent.len() - 1,
                });
                Some(format!("go {direction}"))
            }
            Action::Say | Action::Global => {
                let (kind, verb, n) = if action == Action::Say {
                    self.said += 1;
                    (SentKind::Say, "say", self.said)
                } else {
                    self.globals += 1;
                    (SentKind::Global, "global", self.globals)
                };
                self.out.sent.push(Sent {
                    kind,
                    actor: self.idx,
                    n,
                    sent_us,
                    room: self.room,
                    to: NO_ROOM,
                    outcome: Outcome::Unconfirmed,
                    replied_us: 0,
                });
                self.pending.push_back(Pending::Chat {
                    sent: self.out.sent.len() - 1,
                });
                Some(format!("{verb} {}", proto::chat_text(self.idx, n, sent_us)))
            }
        }
    }

    fn check_stream(&mut self, stream: u32, sequence: u64) {
        match self.streams.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, last)) => {
                if sequence == *last {
                    self.out.counters.duplicate_sequence += 1;
                } else if sequence < *last {
                    self.out.counters.out_of_order += 1;
                } else {
                    *last = sequence;
                }
            }
            None => self.streams.push((stream, sequence)),
        }
    }

    fn check_direct(&mut self, sequence: u64) {
        let expected = self.direct_last + 1;
        if sequence == self.direct_last {
            self.out.counters.duplicate_sequence += 1;
        } else if sequence < self.direct_last {
            self.out.counters.out_of_order += 1;
        } else {
            if sequence > expected {
                self.out.counters.direct_gaps += 1;
            }
            self.direct_last = sequence;
        }
    }

    fn settle(&mut self, sent: usize, outcome: Outcome, replied_us: u64) {
        if let Some(s) = self.out.sent.get_mut(sent) {
            s.outcome = outcome;
            s.replied_us = replied_us;
        }
    }

    fn set_room(&mut self, frame: &FrameView<'_>) -> Option<u32> {
        let room = frame.data.room.as_ref()?;
        let world = &self.ctx.world;
        let idx = world.room_index(&room.id)?;
        self.room = idx;
        self.exits = room
            .exits
            .iter()
            .filter_map(|(d, id)| world.room_index(id).map(|r| (d.clone(), r)))
            .collect();
        Some(idx)
    }

    fn record(&mut self, kind: Kind, actor: u32, key: u32, room: u32, sent_us: u64, recv_us: u64) {
        if self.plan.is_some() {
            self.out.receipts.push(Receipt {
                kind,
                recipient: self.idx,
                actor,
                key,
                room,
                sent_us,
                recv_us,
            });
        }
    }

    fn on_frame(&mut self, text: &str, recv_us: u64) {
        self.out.counters.frames += 1;
        if self.out.counters.frames.is_multiple_of(64) {
            self.ctx.frames.fetch_add(64, Ordering::Relaxed);
        }
        let Some(frame) = parse_frame(text) else {
            self.out.counters.unparsed += 1;
            return;
        };
        if let Some(i) = EVENT_TYPES.iter().position(|t| *t == frame.event_type) {
            self.out.by_type[i] += 1;
        }
        let seq = frame.sequence_number;
        match frame.event_type {
            EventType::GameState => {
                self.check_direct(seq);
                if self.has_state {
                    self.out.counters.unexpected_replies += 1;
                }
                if self.set_room(&frame).is_some() {
                    self.has_state = true;
                    self.out.run.connected_us = recv_us;
                } else {
                    self.out.counters.unparsed += 1;
                }
            }
            EventType::RoomUpdate => {
                self.check_direct(seq);
                let room = self.set_room(&frame);
                match self.pending.pop_front() {
                    Some(Pending::Move { to, sent }) => {
                        if room != Some(to) {
                            self.out.counters.room_mismatch += 1;
                        }
                        self.settle(sent, Outcome::Ok, recv_us);
                    }
                    Some(Pending::Walk) => {}
                    Some(other) => {
                        self.out.counters.unexpected_replies += 1;
                        self.pending.push_front(other);
                    }
                    None => self.out.counters.unexpected_replies += 1,
                }
            }
            EventType::CommandResponse => {
                self.check_direct(seq);
                match self.pending.pop_front() {
                    Some(Pending::Chat { sent }) => self.settle(sent, Outcome::Ok, recv_us),
                    Some(other) => {
                        self.out.counters.unexpected_replies += 1;
                        self.pending.push_front(other);
                    }
                    None => self.out.counters.unexpected_replies += 1,
                }
            }
            EventType::Error => {
                self.check_direct(seq);
                let code = frame.data.code.as_deref().unwrap_or("unknown").to_owned();
                *self.out.counters.errors.entry(code).or_default() += 1;
                match self.pending.pop_front() {
                    Some(Pending::Move { sent, .. } | Pending::Chat { sent }) => {
                        self.settle(sent, Outcome::Error, recv_us)
                    }
                    Some(Pending::Walk) => {}
                    None => self.out.counters.unexpected_replies += 1,
                }
            }
            EventType::Pong | EventType::Resumed => self.check_direct(seq),
            EventType::PlayerEntered
            | EventType::PlayerLeft
            | EventType::PlayerEnteredGame
            | EventType::PlayerLeftGame => {
                let room = frame
                    .room_id
                    .as_deref()
                    .and_then(|r| self.ctx.world.room_index(r));
                let actor = frame
                    .data
                    .player_id
                    .as_deref()
                    .or(frame.player_id.as_deref());
                let (Some(room), Some(actor)) = (room, actor) else {
                    self.out.counters.unparsed += 1;
                    return;
                };
                self.check_stream(room, seq);
                if actor == self.id {
                    self.out.counters.echoes += 1;
                }
                let Some(&actor) = self.ctx.ids.get(actor) else {
                    return;
                };
                let kind = match frame.event_type {
                    EventType::PlayerEntered => Kind::Entered,
                    EventType::PlayerLeft => Kind::Left,
                    EventType::PlayerEnteredGame => Kind::EnteredGame,
                    _ => Kind::LeftGame,
                };
                self.record(kind, actor, 0, room, 0, recv_us);
            }
            EventType::ChatMessage => {
                let global = frame.data.channel.as_deref() == Some("global");
                let room = if global {
                    Some(GLOBAL_STREAM)
                } else {
                    frame
                        .room_id
                        .as_deref()
                        .and_then(|r| self.ctx.world.room_index(r))
                };
                let Some(stream) = room else {
                    self.out.counters.unparsed += 1;
                    return;
                };
                self.check_stream(stream, seq);
                let sender = frame
                    .data
                    .sender_id
                    .as_deref()
                    .or(frame.player_id.as_deref());
                if sender == Some(self.id.as_str()) {
                    self.out.counters.echoes += 1;
                }
                let Some((actor, n, sent_us)) =
                    frame.data.message.as_deref().and_then(parse_chat_text)
                else {
                    return;
                };
                let (kind, room) = if global {
                    (Kind::Global, NO_ROOM)
                } else {
                    (Kind::Say, stream)
                };
                self.record(kind, actor, n, room, sent_us, recv_us);
            }
            EventType::GameTick => {
                self.check_stream(TICK_STREAM, seq);
                let tick = frame.data.tick_number.unwrap_or(seq);
                let sent = frame
                    .data
                    .timestamp
                    .as_deref()
                    .and_then(timestamp_us)
                    .unwrap_or(0);
                self.record(Kind::Tick, 0, tick as u32, NO_ROOM, sent, recv_us);
            }
        }
    }
}
