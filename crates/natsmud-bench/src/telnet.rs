//! Telnet beside WebSocket (`natsmud-bench telnet`, issue 15): the same `say`s, delivered
//! to the same rooms, timed at WebSocket and at telnet recipients.
//!
//! From scratch: a fresh nats-server and one fresh natsmud node (the benchmark's flags,
//! and telnet on a free loopback port). P players, about 10 per room; in every room half
//! connect over WebSocket and half over telnet (logging in on the line with the name and
//! password registered over HTTP, then `colour off`). Only the WebSocket players speak:
//! each `say`s `bench <player> <n> <µs since epoch>` every `--say-every` seconds with a
//! random phase, so both transports receive exactly the same events and differ only in how
//! the node delivers them. Every recipient records receipt minus send time; the receipt
//! is the kernel's receive time of the bytes (`SO_TIMESTAMPNS`, as the load-generator
//! workers stamp theirs), read by one task per connection. Every other player in the
//! speaker's room should get each `say` exactly once; missing, duplicate and misrouted
//! (extra) receipts are counted per transport.
//!
//! Nobody moves, so every room's members are known for the whole run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use natsmud_protocol::EventType;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::analysis::{Latency, histogram, summarize};
use crate::clock::{Anchor, now_us};
use crate::load::Mode;
use crate::players::{self, PASSWORD, Registered, name_of};
use crate::proto::{self, parse_chat_text, parse_frame};
use crate::provenance::Provenance;
use crate::scenario::{SERVER_FLAGS, ScenarioArgs, ScenarioResult};
use crate::timed::TimedStream;
use crate::workload::player_rng;
use crate::world;

/// Connections set up at once (logins hash a password, cheaply with the bench's flags).
const SETUP_CONCURRENCY: usize = 32;

/// Seconds between the last connection being up and the workload starting.
const START_DELAY: Duration = Duration::from_millis(500);

/// A telnet line longer than this is cut: nothing the bench reads is anywhere near it, and
/// a server that never ends a line must not grow the buffer without bound.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct TelnetArgs {
    /// The natsmud binary (a release build).
    #[arg(long, default_value = "target/release/natsmud")]
    pub natsmud: PathBuf,
    /// The nats-server binary (scripts/install-nats-server prints it).
    #[arg(long)]
    pub nats_server: PathBuf,
    /// Scratch directory; emptied first.
    #[arg(long, default_value = "target/bench/telnet")]
    pub work_dir: PathBuf,
    /// Results file (JSON). Not directly in docs/bench/: `report` reads every JSON file
    /// there as a scenario's results.
    #[arg(long)]
    pub out: PathBuf,
    /// Players in all; half WebSocket, half telnet.
    #[arg(long, default_value_t = 200)]
    pub players: u32,
    /// Players per room (the benchmark world's ~10).
    #[arg(long, default_value_t = 10)]
    pub per_room: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Unmeasured seconds of workload before that.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Seconds receiving goes on after the window (for `say`s sent at its end).
    #[arg(long, default_value_t = 3)]
    pub drain: u64,
    /// Seconds between one WebSocket player's `say`s.
    #[arg(long, default_value_t = 10.0)]
    pub say_every: f64,
    /// Seconds one connection may take to get into the game.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Seed of the world and the players' phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Marks the results as a short smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Extra flag for the node (repeatable), e.g. `--server-arg=--outbound-queue=512`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Websocket,
    Telnet,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::Websocket => "WebSocket",
            Self::Telnet => "telnet",
        }
    }

    /// Half and half in every room: consecutive players alternate.
    fn of(idx: u32) -> Self {
        if idx.is_multiple_of(2) {
            Self::Websocket
        } else {
            Self::Telnet
        }
    }
}

/// The results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelnetResult {
    pub name: String,
    /// `ok`, or `failed` with `error`.
    pub status: String,
    pub error: Option<String>,
    pub quick: bool,
    pub provenance: Provenance,
    pub server_flags: Vec<String>,
    pub server_flags_missing: Vec<String>,
    pub nats_server_version: String,
    pub players: u32,
    pub rooms: u32,
    pub per_room: u32,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub say_every_secs: f64,
    /// `say`s sent inside the measured window (all by WebSocket players).
    pub says_in_window: u64,
    /// WebSocket first, then telnet.
    pub transports: Vec<TransportFigures>,
}

/// One transport's recipients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportFigures {
    pub transport: Option<Transport>,
    pub players: u32,
    /// In the game when the workload started.
    pub connected: u32,
    pub connect_failures: BTreeMap<String, u64>,
    /// Connection start → in the game (WebSocket: `game_state`; telnet: the prompt after
    /// the room, logged in and `colour off` answered).
    pub connect: Latency,
    /// Connections that ended before the run did (left out of `expected`).
    pub closed: u32,
    pub closes: BTreeMap<String, u64>,
    /// Receipts of in-window `say`s due to this transport's players.
    pub expected: u64,
    /// Distinct expected receipts.
    pub received: u64,
    pub missing: u64,
    /// The same `say` received again by the same player.
    pub duplicates: u64,
    /// Received by a player not in the speaker's room (or by the speaker).
    pub extra: u64,
    /// Send → the kernel received the bytes at the recipient, first receipts only.
    pub latency: Latency,
    /// The bench's own delay: the kernel receiving the bytes → the bench reading them
    /// (bytes that arrived in the measured window or after).
    pub read_lag_mean_ms: f64,
    pub read_lag_max_ms: f64,
    /// Reads that came without a kernel timestamp (stamped when read instead).
    pub unstamped_reads: u64,
    /// Lines (telnet) or chat frames (WebSocket) that carried the bench marker but could
    /// not be read as a `say` of the run.
    pub unreadable: u64,
    /// `error` frames (WebSocket) received, by code.
    pub errors: BTreeMap<String, u64>,
}

impl TelnetResult {
    pub fn new(args: &TelnetArgs) -> Self {
        Self {
            name: "telnet".to_owned(),
            status: "failed".to_owned(),
            quick: args.quick,
            provenance: Provenance::here(),
            players: args.players,
            per_room: args.per_room,
            duration_secs: args.duration,
            warmup_secs: args.warmup,
            say_every_secs: args.say_every,
            ..Self::default()
        }
    }
}

impl crate::run_result::RunResult for TelnetResult {
    fn outcome_fields(&mut self) -> (&mut String, &mut Option<String>) {
        (&mut self.status, &mut self.error)
    }

    fn markdown(&self) -> String {
        markdown(self)
    }
}

/// `start_stack` takes a scenario's arguments; parsing them (rather than spelling out the
/// struct) gives every other field its usual default.
fn stack_args(args: &TelnetArgs, telnet: SocketAddr) -> Result<ScenarioArgs> {
    #[derive(clap::Parser)]
    struct StackCli {
        #[command(flatten)]
        scenario: ScenarioArgs,
    }
    let mut argv: Vec<OsString> = ["telnet", "--mode", "idle", "--nodes", "1", "--players"]
        .into_iter()
        .map(OsString::from)
        .collect();
    argv.push(args.players.to_string().into());
    for (flag, value) in [
        ("--natsmud", &args.natsmud),
        ("--nats-server", &args.nats_server),
        ("--work-dir", &args.work_dir),
        ("--out", &args.out),
    ] {
        argv.push(flag.into());
        argv.push(value.into());
    }
    argv.push(format!("--server-arg=--telnet-bind={telnet}").into());
    for arg in &args.server_args {
        argv.push(format!("--server-arg={arg}").into());
    }
    use clap::Parser;
    StackCli::try_parse_from(argv)
        .map(|cli| cli.scenario)
        .map_err(|e| anyhow!("bad node arguments: {e}"))
}

/// Room (index into the sorted room list) of player `idx`: `per_room` consecutive players
/// share one, wrapping round when the world has fewer rooms.
fn room_of(idx: u32, per_room: u32, rooms: usize) -> usize {
    (idx / per_room.max(1)) as usize % rooms.max(1)
}

pub async fn run(args: &TelnetArgs, result: &mut TelnetResult) -> Result<()> {
    if args.players < 2 {
        bail!("--players must be at least 2 (one per transport)");
    }
    crate::scenario::fresh_work_dir(&args.work_dir)?;
    let generated = world::generate(args.players as usize, args.seed);
    let mut rooms: Vec<String> = generated
        .zones
        .iter()
        .flat_map(|z| z.rooms.iter().map(|r| r.id.clone()))
        .collect();
    rooms.sort();
    let used = (args.players.div_ceil(args.per_room.max(1)) as usize).min(rooms.len());
    result.rooms = used as u32;
    let telnet_addr: SocketAddr = ([127, 0, 0, 1], crate::scenario::free_port()?).into();
    let scenario = stack_args(args, telnet_addr)?;
    let mut noted = ScenarioResult::new("telnet".to_owned(), Mode::Idle, &scenario.load, false, 1);
    let stack =
        crate::scenario::start_stack(&scenario, &mut noted, &generated, SERVER_FLAGS).await?;
    result.server_flags = noted.server_flags;
    result.server_flags_missing = noted.server_flags_missing;
    result.nats_server_version = noted.nats_server_version;
    let outcome = async {
        let server = stack
            .servers
            .first()
            .context("the stack has no natsmud node")?;
        let bar = crate::load::bar(u64::from(args.players), "registering");
        let (registered, failed) =
            players::register_all(&stack.servers, args.players, 32, &bar).await?;
        bar.finish_and_clear();
        if !failed.is_empty() {
            bail!(
                "{} of {} registrations failed: {:?}",
                failed.len(),
                args.players,
                failed.iter().take(5).collect::<Vec<_>>()
            );
        }
        let placement: Vec<(String, String)> = registered
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    rooms[room_of(r.idx, args.per_room, used)].clone(),
                )
            })
            .collect();
        players::place_in_database(&stack.data_dir.join("natsmud.db"), &placement).await?;
        measure(args, result, server, telnet_addr, &registered, used).await
    }
    .await;
    stack.stop().await;
    outcome
}

/// One `say` sent by a WebSocket player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentSay {
    sender: u32,
    n: u32,
    sent_us: u64,
}

/// One `say` received: who got whose n-th `say`, and when the bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Receipt {
    recipient: u32,
    sender: u32,
    n: u32,
    recv_us: u64,
}

/// What one connection's task hands back.
#[derive(Debug, Default)]
struct ConnOut {
    idx: u32,
    sent: Vec<SentSay>,
    receipts: Vec<Receipt>,
    closed: Option<String>,
    read_lag_sum_us: u64,
    read_lag_max_us: u64,
    reads: u64,
    unstamped_reads: u64,
    unreadable: u64,
    errors: BTreeMap<String, u64>,
}

impl ConnOut {
    /// When a read's bytes arrived (`stamp_us`, or now without one), noting the bench's
    /// delay in reading them when they arrived from `since_us` on: what queued while the
    /// other connections were set up is no delay of the run.
    fn read(&mut self, stamp_us: u64, since_us: u64) -> u64 {
        let now = now_us();
        let at = if stamp_us == 0 {
            now
        } else {
            stamp_us.min(now)
        };
        if at >= since_us {
            let lag = now - at;
            self.reads += 1;
            self.read_lag_sum_us += lag;
            self.read_lag_max_us = self.read_lag_max_us.max(lag);
        }
        at
    }
}

/// When the workload runs (µs since the epoch).
#[derive(Debug, Clone, Copy)]
struct Window {
    t0_us: u64,
    from_us: u64,
    until_us: u64,
    stop_us: u64,
}

type Ws = WebSocketStream<TimedStream>;

/// A connection in the game and how long it took to get there, or why it did not.
type Joined = Result<(Conn, Duration), String>;

/// A connection in the game, before the workload starts.
enum Conn {
    Ws(Box<Ws>),
    Telnet(TimedStream, TelnetLines),
}

async fn measure(
    args: &TelnetArgs,
    result: &mut TelnetResult,
    server: &str,
    telnet_addr: SocketAddr,
    registered: &[Registered],
    rooms: usize,
) -> Result<()> {
    let host = server.trim_start_matches("http://").to_owned();
    let http_addr: SocketAddr = host
        .parse()
        .with_context(|| format!("the node's address {host:?}"))?;
    let limit = Duration::from_secs(args.connect_timeout.max(1));
    let bar = crate::load::bar(registered.len() as u64, "connecting");
    let joined: Vec<(u32, Joined)> = futures::stream::iter(registered)
        .map(|r| {
            let host = host.clone();
            let bar = bar.clone();
            async move {
                let started = Instant::now();
                let conn = match Transport::of(r.idx) {
                    Transport::Websocket => timeout(limit, join_ws(http_addr, &host, &r.token))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned())),
                    Transport::Telnet => timeout(limit, join_telnet(telnet_addr, r.idx))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned())),
                };
                bar.inc(1);
                (r.idx, conn.map(|c| (c, started.elapsed())))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    bar.finish_and_clear();

    let mut figures: BTreeMap<Transport, TransportFigures> =
        [Transport::Websocket, Transport::Telnet]
            .into_iter()
            .map(|t| {
                (
                    t,
                    TransportFigures {
                        transport: Some(t),
                        ..TransportFigures::default()
                    },
                )
            })
            .collect();
    let mut connect_times: BTreeMap<Transport, hdrhistogram::Histogram<u64>> = BTreeMap::new();
    let mut conns = Vec::new();
    for (idx, joined) in joined {
        let transport = Transport::of(idx);
        let f = figures.entry(transport).or_default();
        f.players += 1;
        match joined {
            Ok((conn, took)) => {
                f.connected += 1;
                connect_times
                    .entry(transport)
                    .or_insert_with(histogram)
                    .saturating_record(micros(took));
                conns.push((idx, conn));
            }
            Err(e) => *f.connect_failures.entry(e).or_default() += 1,
        }
    }
    for (t, h) in &connect_times {
        if let Some(f) = figures.get_mut(t) {
            f.connect = summarize(h);
        }
    }
    let count = |t: Transport| figures.get(&t).map_or(0, |f| f.connected);
    eprintln!(
        "bench: telnet: {} WebSocket and {} telnet players in the game in {} rooms; {} s \
         warm-up, {} s measured",
        count(Transport::Websocket),
        count(Transport::Telnet),
        rooms,
        args.warmup,
        args.duration
    );
    if conns.is_empty() {
        result.transports = figures.into_values().collect();
        bail!("no player got into the game");
    }

    let anchor = Anchor::now();
    let t0_us = now_us() + START_DELAY.as_micros() as u64;
    let from_us = t0_us + args.warmup * 1_000_000;
    let until_us = from_us + args.duration * 1_000_000;
    let window = Window {
        t0_us,
        from_us,
        until_us,
        stop_us: until_us + args.drain * 1_000_000,
    };
    let say_every_us = (args.say_every.max(0.001) * 1e6) as u64;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(idx, conn)| {
            let mut rng = player_rng(args.seed, idx);
            let first_say = t0_us + rng.random_range(0..say_every_us);
            tokio::spawn(async move {
                match conn {
                    Conn::Ws(ws) => run_ws(*ws, idx, window, anchor, first_say, say_every_us).await,
                    Conn::Telnet(stream, lines) => {
                        run_telnet(stream, lines, idx, window, anchor).await
                    }
                }
            })
        })
        .collect();
    let mut outs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outs.push(task.await.context("a connection task panicked")?);
    }

    let members: Vec<Vec<u32>> = {
        let mut members = vec![Vec::new(); rooms.max(1)];
        for out in &outs {
            if out.closed.is_none() {
                members[room_of(out.idx, args.per_room, rooms)].push(out.idx);
            }
        }
        members
    };
    let room = |idx: u32| room_of(idx, args.per_room, rooms);
    let sent: Vec<SentSay> = outs.iter().flat_map(|o| o.sent.iter().copied()).collect();
    let receipts: Vec<Receipt> = outs
        .iter()
        .filter(|o| o.closed.is_none())
        .flat_map(|o| o.receipts.iter().copied())
        .collect();
    let tally = tally(
        &sent,
        &receipts,
        &members,
        room,
        window.from_us,
        window.until_us,
    );
    result.says_in_window = tally.says;
    for out in &outs {
        let f = figures.entry(Transport::of(out.idx)).or_default();
        if let Some(how) = &out.closed {
            f.closed += 1;
            *f.closes.entry(how.clone()).or_default() += 1;
        }
        f.unstamped_reads += out.unstamped_reads;
        f.unreadable += out.unreadable;
        for (code, n) in &out.errors {
            *f.errors.entry(code.clone()).or_default() += n;
        }
        f.read_lag_max_ms = f.read_lag_max_ms.max(out.read_lag_max_us as f64 / 1000.0);
    }
    for (t, f) in figures.iter_mut() {
        let (sum, reads) = outs
            .iter()
            .filter(|o| Transport::of(o.idx) == *t)
            .fold((0u64, 0u64), |(s, n), o| {
                (s + o.read_lag_sum_us, n + o.reads)
            });
        f.read_lag_mean_ms = if reads == 0 {
            0.0
        } else {
            sum as f64 / reads as f64 / 1000.0
        };
        if let Some(c) = tally.by_transport.get(t) {
            f.expected = c.expected;
            f.received = c.received;
            f.missing = c.expected.saturating_sub(c.received);
            f.duplicates = c.duplicates;
            f.extra = c.extra;
            f.latency = summarize(&c.latency);
        }
    }
    result.transports = figures.into_values().collect();
    for f in &result.transports {
        eprintln!(
            "bench: telnet: {:>9}: {} receipts; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             missing {}, duplicates {}, extra {}",
            f.transport.map_or("?", Transport::label),
            f.latency.count,
            f.latency.p50_ms,
            f.latency.p99_ms,
            f.latency.max_ms,
            f.missing,
            f.duplicates,
            f.extra
        );
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn short(text: &str) -> String {
    text.chars().take(100).collect()
}

/// Counts for one transport's recipients.
struct Counts {
    expected: u64,
    received: u64,
    duplicates: u64,
    extra: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            expected: 0,
            received: 0,
            duplicates: 0,
            extra: 0,
            latency: histogram(),
        }
    }
}

struct Tally {
    says: u64,
    by_transport: BTreeMap<Transport, Counts>,
}

/// Expected versus received for the `say`s sent in `[from_us, until_us)`: each should
/// reach every other member of its speaker's room (`members`, the players still connected
/// at the end, by room) exactly once.
fn tally(
    sent: &[SentSay],
    receipts: &[Receipt],
    members: &[Vec<u32>],
    room: impl Fn(u32) -> usize,
    from_us: u64,
    until_us: u64,
) -> Tally {
    let in_window: HashMap<(u32, u32), &SentSay> = sent
        .iter()
        .filter(|s| (from_us..until_us).contains(&s.sent_us))
        .map(|s| ((s.sender, s.n), s))
        .collect();
    let mut by_transport: BTreeMap<Transport, Counts> = BTreeMap::new();
    for say in in_window.values() {
        let Some(members) = members.get(room(say.sender)) else {
            continue;
        };
        for &m in members.iter().filter(|&&m| m != say.sender) {
            by_transport.entry(Transport::of(m)).or_default().expected += 1;
        }
    }
    let mut seen: HashSet<(u32, u32, u32)> = HashSet::new();
    for r in receipts {
        let Some(say) = in_window.get(&(r.sender, r.n)) else {
            continue;
        };
        let c = by_transport.entry(Transport::of(r.recipient)).or_default();
        if r.recipient == say.sender || room(r.recipient) != room(say.sender) {
            c.extra += 1;
        } else if !seen.insert((r.recipient, r.sender, r.n)) {
            c.duplicates += 1;
        } else {
            c.received += 1;
            c.latency
                .saturating_record(r.recv_us.saturating_sub(say.sent_us).max(1));
        }
    }
    Tally {
        says: in_window.len() as u64,
        by_transport,
    }
}

// ---- WebSocket players ----

async fn open_timed(addr: SocketAddr) -> Result<TimedStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    // Small writes (a line, a frame) must go at once, as a real client's do.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {}", e.kind()))?;
    Ok(TimedStream::new(stream))
}

/// Connects and reads up to `game_state`.
async fn join_ws(addr: SocketAddr, host: &str, token: &str) -> Result<Conn, String> {
    let stream = open_timed(addr).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let url = format!("ws://{host}/api/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(reply) => {
                format!("HTTP {}", reply.status().as_u16())
            }
            other => format!("handshake: {}", short(&other.to_string())),
        })?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if parse_frame(text.as_str()).is_some_and(|f| f.event_type == EventType::GameState)
                {
                    return Ok(Conn::Ws(Box::new(ws)));
                }
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err("closed before game_state".to_owned());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
        }
    }
}

async fn sleep_at(anchor: Anchor, us: u64) {
    sleep_until(anchor.instant_of(us)).await
}

/// A WebSocket player: `say`s on its schedule and reads every frame as it comes.
async fn run_ws(
    mut ws: Ws,
    idx: u32,
    window: Window,
    anchor: Anchor,
    first_say: u64,
    every_us: u64,
) -> ConnOut {
    let mut out = ConnOut {
        idx,
        ..ConnOut::default()
    };
    let mut next_say = first_say.max(window.t0_us);
    let mut n = 0u32;
    loop {
        // No `say` after the window: the drain only collects what is under way.
        let speaking = next_say < window.until_us;
        tokio::select! {
            biased;
            _ = sleep_at(anchor, window.stop_us) => break,
            message = ws.next() => {
                let stamp = ws.get_ref().last_rx_us();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        let at = out.read(stamp, window.from_us);
                        on_ws_frame(&mut out, text.as_str(), at);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        out.closed = Some(match frame {
                            Some(f) => format!("close {}", u16::from(f.code)),
                            None => "close without code".to_owned(),
                        });
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        out.closed = Some(format!("read: {}", short(&e.to_string())));
                        break;
                    }
                    None => {
                        out.closed = Some("ended without close frame".to_owned());
                        break;
                    }
                }
            }
            _ = sleep_at(anchor, next_say), if speaking => {
                n += 1;
                next_say += every_us;
                let sent_us = now_us();
                let line = format!("say {}", proto::chat_text(idx, n, sent_us));
                if let Err(e) = ws.send(Message::text(proto::command(&line))).await {
                    out.closed = Some(format!("send: {}", short(&e.to_string())));
                    break;
                }
                out.sent.push(SentSay { sender: idx, n, sent_us });
            }
        }
    }
    out.unstamped_reads = ws.get_ref().unstamped_reads();
    out
}

fn on_ws_frame(out: &mut ConnOut, text: &str, at_us: u64) {
    let Some(frame) = parse_frame(text) else {
        return;
    };
    match frame.event_type {
        EventType::ChatMessage => {
            let Some(message) = frame.data.message.as_deref() else {
                return;
            };
            match parse_chat_text(message) {
                Some((sender, n, _)) => out.receipts.push(Receipt {
                    recipient: out.idx,
                    sender,
                    n,
                    recv_us: at_us,
                }),
                None if message.contains(proto::CHAT_MARK) => out.unreadable += 1,
                None => {}
            }
        }
        EventType::Error => {
            let code = frame.data.code.as_deref().unwrap_or("unknown").to_owned();
            *out.errors.entry(code).or_default() += 1;
        }
        _ => {}
    }
}

// ---- telnet players ----

/// What the server's byte stream holds once telnet commands are taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelnetItem {
    /// A line of text, ANSI escapes removed.
    Line(String),
    /// Text the server marked as a prompt (ended by IAC GA or IAC EOR, no line end).
    Prompt(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum IacState {
    #[default]
    Data,
    Iac,
    /// After WILL, WONT, DO or DONT: the option byte comes next.
    Option,
    /// Inside IAC SB … IAC SE.
    Sub,
    SubIac,
}

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const GA: u8 = 249;
const EOR: u8 = 239;

/// Client-side reading of a telnet byte stream: drops negotiation and subnegotiation
/// (GMCP and the like), ends lines at LF, ends prompts at GA, and survives any of it being
/// split across reads. The bench negotiates nothing, as `nc` would not: the server then
/// sends no GMCP and does not wrap lines.
#[derive(Debug, Default)]
pub struct TelnetLines {
    state: IacState,
    line: Vec<u8>,
}

impl TelnetLines {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<TelnetItem>) {
        for &b in bytes {
            self.state = match self.state {
                IacState::Data => match b {
                    IAC => IacState::Iac,
                    b'\n' => {
                        let line = self.take();
                        out.push(TelnetItem::Line(line));
                        IacState::Data
                    }
                    // CR LF ends a line at its LF; CR NUL is a bare CR.
                    b'\r' | 0 => IacState::Data,
                    _ => {
                        self.push(b);
                        IacState::Data
                    }
                },
                IacState::Iac => match b {
                    IAC => {
                        self.push(IAC);
                        IacState::Data
                    }
                    251..=254 => IacState::Option,
                    SB => IacState::Sub,
                    GA | EOR => {
                        let prompt = self.take();
                        out.push(TelnetItem::Prompt(prompt));
                        IacState::Data
                    }
                    _ => IacState::Data,
                },
                IacState::Option => IacState::Data,
                IacState::Sub => match b {
                    IAC => IacState::SubIac,
                    _ => IacState::Sub,
                },
                IacState::SubIac => match b {
                    SE => IacState::Data,
                    _ => IacState::Sub,
                },
            };
        }
    }

    fn push(&mut self, b: u8) {
        if self.line.len() < MAX_LINE {
            self.line.push(b);
        }
    }

    fn take(&mut self) -> String {
        let text = strip_ansi(&String::from_utf8_lossy(&self.line));
        self.line.clear();
        text
    }
}

/// `text` without ANSI escape sequences (CSI `ESC [ … final`, and two-byte `ESC x`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // A CSI runs to its final byte; any other escape is two characters.
        if let Some('[') = chars.next() {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// (sender, n, sent_us) of a line `b_000004 says: bench 4 7 1700000000000000`: a `say` of
/// the run whose speaker's name matches the player number in the text. A prompt left in
/// front (`> `) is skipped.
pub fn parse_say_line(line: &str) -> Option<(u32, u32, u64)> {
    let mut line = line.trim_end();
    while let Some(rest) = line.strip_prefix("> ") {
        line = rest;
    }
    let (name, _) = line.split_once(" says: ")?;
    let (sender, n, sent) = parse_chat_text(line)?;
    (name == name_of(sender)).then_some((sender, n, sent))
}

/// Logs in on the line as player `idx` and turns colour off; returns once the answer to
/// that has come and the prompt after it.
async fn join_telnet(addr: SocketAddr, idx: u32) -> Result<Conn, String> {
    let mut stream = open_timed(addr).await?;
    let mut lines = TelnetLines::default();
    let mut items = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut step = 0;
    let name = name_of(idx);
    loop {
        for item in items.drain(..) {
            let reply: Option<String> = match (&item, step) {
                (TelnetItem::Prompt(p), 0) if p.trim_end().ends_with("Name:") => {
                    step = 1;
                    Some(name.clone())
                }
                (TelnetItem::Prompt(p), 1) if p.trim_end().ends_with("Password:") => {
                    step = 2;
                    Some(PASSWORD.to_owned())
                }
                (TelnetItem::Line(l), 2) if l.starts_with("Welcome, ") => {
                    step = 3;
                    None
                }
                (TelnetItem::Prompt(_), 3) => {
                    step = 4;
                    Some("colour off".to_owned())
                }
                (TelnetItem::Line(l), 4) if l.contains("Colour is off.") => {
                    step = 5;
                    None
                }
                (TelnetItem::Prompt(_), 5) => return Ok(Conn::Telnet(stream, lines)),
                (TelnetItem::Line(l), 1 | 2)
                    if l.contains("Wrong password") || l.contains("no character named") =>
                {
                    return Err(format!("login refused: {}", short(l)));
                }
                _ => None,
            };
            if let Some(reply) = reply {
                stream
                    .write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .map_err(|e| format!("write: {}", e.kind()))?;
            }
        }
        let read = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        if read == 0 {
            return Err(format!("closed while logging in (step {step})"));
        }
        lines.feed(&buf[..read], &mut items);
    }
}

/// A telnet player: only listens, stamping each read.
async fn run_telnet(
    mut stream: TimedStream,
    mut lines: TelnetLines,
    idx: u32,
    window: Window,
    anchor: Anchor,
) -> ConnOut {
    let mut out = ConnOut {
        idx,
        ..ConnOut::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut items = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = sleep_at(anchor, window.stop_us) => break,
            read = stream.read(&mut buf) => {
                let read = match read {
                    Ok(0) => {
                        out.closed = Some("closed by the server".to_owned());
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        out.closed = Some(format!("read: {}", e.kind()));
                        break;
                    }
                };
                // Every line completed by this read arrived with its last bytes.
                let at = out.read(stream.last_rx_us(), window.from_us);
                lines.feed(&buf[..read], &mut items);
                for item in items.drain(..) {
                    let TelnetItem::Line(line) = item else { continue };
                    match parse_say_line(&line) {
                        Some((sender, n, _)) => out.receipts.push(Receipt {
                            recipient: idx,
                            sender,
                            n,
                            recv_us: at,
                        }),
                        None if line.contains(" says: bench ") => out.unreadable += 1,
                        None => {}
                    }
                }
            }
        }
    }
    out.unstamped_reads = stream.unstamped_reads();
    out
}

// ---- the report ----

fn ms_cell(latency: &Latency, value: f64) -> String {
    if latency.count == 0 {
        "—".to_owned()
    } else {
        format!("{value:.2}")
    }
}

fn list(map: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = map.iter().map(|(r, n)| format!("{n} × {r}")).collect();
    items.join(", ")
}

/// The results as markdown for docs/benchmarks.md.
pub fn markdown(r: &TelnetResult) -> String {
    let m = &r.provenance.machine;
    let mut out = String::new();
    out.push_str("## Telnet beside WebSocket\n\n");
    out.push_str(&format!(
        "`{}` — {}{} on commit {}, {}; {} × {}, {} GiB, Linux {}. One natsmud node and one \
         nats-server ({}); node flags: `{}`.\n\n",
        r.provenance.command,
        r.status,
        if r.quick { " (quick run)" } else { "" },
        r.provenance.commit,
        r.provenance.date,
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        r.nats_server_version,
        r.server_flags.join(" ")
    ));
    if let Some(e) = &r.error {
        out.push_str(&format!("**Failed:** {e}\n\n"));
    }
    out.push_str(&format!(
        "{} players in {} rooms (about {} per room), in every room half on WebSocket and half \
         on telnet (WebSocket: a token from the HTTP login; telnet: name and password on the \
         line, then `colour off`, no telnet option negotiated). Only the \
         WebSocket players speak: a `say` every {} s each, random phase, {} s of warm-up then \
         {} s measured ({} `say`s). Every other player in the room should receive each one \
         once; latency is the send time carried in the text to the kernel's receive time at \
         the recipient's socket (WebSocket: the `chat_message` frame; telnet: the line \
         `<name> says: …`).\n\n",
        r.players,
        r.rooms,
        r.per_room,
        r.say_every_secs,
        r.warmup_secs,
        r.duration_secs,
        r.says_in_window
    ));
    out.push_str(
        "| recipients | players in game | receipts | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms \
         | expected | missing | duplicates | extra | connect → in game p50 / max ms |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for f in &r.transports {
        let l = &f.latency;
        out.push_str(&format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            f.transport.map_or("?", Transport::label),
            f.connected,
            f.players,
            l.count,
            ms_cell(l, l.p50_ms),
            ms_cell(l, l.p90_ms),
            ms_cell(l, l.p99_ms),
            ms_cell(l, l.p999_ms),
            ms_cell(l, l.max_ms),
            f.expected,
            f.missing,
            f.duplicates,
            f.extra,
            ms_cell(&f.connect, f.connect.p50_ms),
            ms_cell(&f.connect, f.connect.max_ms),
        ));
    }
    out.push('\n');
    let mut notes = Vec::new();
    for f in &r.transports {
        let label = f.transport.map_or("?", Transport::label);
        if !f.connect_failures.is_empty() {
            notes.push(format!(
                "{label} players not in the game: {}",
                list(&f.connect_failures)
            ));
        }
        if !f.closes.is_empty() {
            notes.push(format!(
                "{label} connections closed during the run (left out of expected): {}",
                list(&f.closes)
            ));
        }
        if !f.errors.is_empty() {
            notes.push(format!("{label} error frames: {}", list(&f.errors)));
        }
        if f.unreadable > 0 {
            notes.push(format!(
                "{label}: {} bench `say`s that could not be read",
                f.unreadable
            ));
        }
    }
    let lag: Vec<String> = r
        .transports
        .iter()
        .map(|f| {
            format!(
                "{} {:.2} ms mean, {:.1} ms max",
                f.transport.map_or("?", Transport::label),
                f.read_lag_mean_ms,
                f.read_lag_max_ms
            )
        })
        .collect();
    notes.push(format!(
        "the bench's own delay from the kernel's receipt to its read (not in the latency): {}",
        lag.join("; ")
    ));
    for note in notes {
        out.push_str(&format!("- {note}.\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<TelnetItem> {
        let mut lines = TelnetLines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.feed(chunk, &mut out);
        }
        out
    }

    fn line(text: &str) -> TelnetItem {
        TelnetItem::Line(text.to_owned())
    }

    #[test]
    fn say_lines_are_read_through_ansi_prompts_and_negotiation() {
        let stream: &[u8] = b"\xff\xfb\xc9\xff\xfb\x46\xff\xfd\x1f\xff\xfd\x18\
            \r\nArkham\r\n\r\nType your character's name, or 'create' to make a new one.\r\n\
            Name: \xff\xf9\
            \x1b[36mb_000002 says: bench 2 7 1700000000000123\x1b[0m\r\n\
            \xff\xfa\xc9Comm.Channel.Text {\"text\":\"x\xff\xff\"}\xff\xf0\
            > \xff\xf9\r\nb_000004 says: bench 4 1 1700000000000999\r\n> \xff\xf9";
        let items = feed_all(&[stream]);
        assert_eq!(
            items,
            [
                line(""),
                line("Arkham"),
                line(""),
                line("Type your character's name, or 'create' to make a new one."),
                TelnetItem::Prompt("Name: ".to_owned()),
                line("b_000002 says: bench 2 7 1700000000000123"),
                TelnetItem::Prompt("> ".to_owned()),
                line(""),
                line("b_000004 says: bench 4 1 1700000000000999"),
                TelnetItem::Prompt("> ".to_owned()),
            ]
        );
        let says: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                TelnetItem::Line(l) => parse_say_line(l),
                TelnetItem::Prompt(_) => None,
            })
            .collect();
        assert_eq!(
            says,
            [(2, 7, 1_700_000_000_000_123), (4, 1, 1_700_000_000_000_999)]
        );
    }

    #[test]
    fn lines_and_commands_split_across_reads_come_out_whole() {
        let stream: &[u8] = b"> \xff\xf9\r\n\x1b[36mb_000010 says: bench 10 3 42\x1b[0m\r\n\
            \xff\xfa\xc9Room.Players []\xff\xf0b_000012 says: bench 12 1 43\r\n";
        let whole = feed_all(&[stream]);
        // Every split point, including inside IAC sequences, ANSI escapes and CR LF.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(feed_all(&[a, b]), whole, "cut at {cut}");
        }
        // And one byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes), whole);
        let says: Vec<_> = whole
            .iter()
            .filter_map(|i| match i {
                TelnetItem::Line(l) => parse_say_line(l),
                TelnetItem::Prompt(_) => None,
            })
            .collect();
        assert_eq!(says, [(10, 3, 42), (12, 1, 43)]);
    }

    #[test]
    fn only_says_of_the_run_are_read() {
        assert_eq!(
            parse_say_line("b_000003 says: bench 3 9 100"),
            Some((3, 9, 100))
        );
        // A prompt left at the start of the line (no IAC GA seen).
        assert_eq!(
            parse_say_line("> > b_000003 says: bench 3 9 100\r"),
            Some((3, 9, 100))
        );
        // The name must be the speaker's.
        assert_eq!(parse_say_line("b_000004 says: bench 3 9 100"), None);
        assert_eq!(
            parse_say_line("b_000003 says (global): bench 3 9 100"),
            None
        );
        assert_eq!(parse_say_line("You say: bench 3 9 100"), None);
        assert_eq!(parse_say_line("b_000003 says: hello"), None);
        assert_eq!(parse_say_line("b_000003 says: bench 3 x 100"), None);
        assert_eq!(parse_say_line(""), None);
    }

    #[test]
    fn ansi_escapes_go_and_text_stays() {
        assert_eq!(strip_ansi("\x1b[1;36mRiver St\x1b[0m"), "River St");
        assert_eq!(strip_ansi("a\x1b[31"), "a");
        assert_eq!(strip_ansi("plain ü"), "plain ü");
        assert_eq!(strip_ansi("\x1b7x"), "x");
    }

    #[test]
    fn an_endless_line_is_capped() {
        let mut lines = TelnetLines::default();
        let mut out = Vec::new();
        let junk = vec![b'x'; MAX_LINE * 3];
        lines.feed(&junk, &mut out);
        lines.feed(b"\n", &mut out);
        assert!(matches!(&out[..], [TelnetItem::Line(l)] if l.len() == MAX_LINE));
    }

    #[test]
    fn every_other_member_of_the_room_is_expected_once() {
        // Rooms of 4: players 0-3 and 4-7; 0 and 2 (WebSocket) speak in room 0.
        let room = |idx: u32| room_of(idx, 4, 2);
        let members = vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]];
        let sent = [
            SentSay {
                sender: 0,
                n: 1,
                sent_us: 1_000,
            },
            SentSay {
                sender: 2,
                n: 1,
                sent_us: 2_000,
            },
            // Before the window: its receipts are not counted.
            SentSay {
                sender: 0,
                n: 0,
                sent_us: 10,
            },
        ];
        let got = |recipient, sender, n, recv_us| Receipt {
            recipient,
            sender,
            n,
            recv_us,
        };
        let receipts = [
            got(1, 0, 1, 1_500),
            got(2, 0, 1, 1_200),
            got(3, 0, 1, 1_900),
            got(3, 0, 1, 1_950),
            got(0, 2, 1, 2_100),
            got(5, 2, 1, 2_200),
            got(1, 0, 0, 50),
        ];
        let t = tally(&sent, &receipts, &members, room, 100, 10_000);
        assert_eq!(t.says, 2);
        let ws = &t.by_transport[&Transport::Websocket];
        let tn = &t.by_transport[&Transport::Telnet];
        // WebSocket recipients: 2 of 0's say, 0 of 2's say.
        assert_eq!(
            (ws.expected, ws.received, ws.duplicates, ws.extra),
            (2, 2, 0, 0)
        );
        // Telnet recipients: 1 and 3 of each say; 3 twice of 0's, 2's reaches neither,
        // and 5 (another room) got it anyway.
        assert_eq!(
            (tn.expected, tn.received, tn.duplicates, tn.extra),
            (4, 2, 1, 1)
        );
        assert_eq!(tn.latency.max(), 900);
        assert_eq!(ws.latency.min(), 100);
    }

    #[test]
    fn half_of_each_room_is_on_telnet() {
        let per_room: Vec<usize> = (0..10u32)
            .filter(|&i| Transport::of(i) == Transport::Telnet && room_of(i, 10, 20) == 0)
            .map(|i| i as usize)
            .collect();
        assert_eq!(per_room, [1, 3, 5, 7, 9]);
        assert_eq!(room_of(25, 10, 2), 0);
    }

    #[test]
    fn the_node_listens_for_telnet_where_the_bench_connects() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            telnet: TelnetArgs,
        }
        use clap::Parser;
        let args = Cli::try_parse_from(["x", "--nats-server", "nats", "--out", "o.json"])
            .unwrap_or_else(|e| panic!("{e}"))
            .telnet;
        assert_eq!((args.players, args.duration, args.warmup), (200, 30, 5));
        let addr: SocketAddr = ([127, 0, 0, 1], 4567).into();
        let scenario = stack_args(&args, addr).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(scenario.server_args, ["--telnet-bind=127.0.0.1:4567"]);
        assert_eq!(scenario.nodes, Some(1));
    }

    #[test]
    fn the_table_has_a_row_per_transport() {
        let r = TelnetResult {
            transports: vec![
                TransportFigures {
                    transport: Some(Transport::Websocket),
                    players: 2,
                    connected: 2,
                    expected: 10,
                    received: 10,
                    latency: Latency {
                        count: 10,
                        p50_ms: 1.25,
                        ..Latency::default()
                    },
                    ..TransportFigures::default()
                },
                TransportFigures {
                    transport: Some(Transport::Telnet),
                    players: 2,
                    connected: 1,
                    connect_failures: [("timed out".to_owned(), 1)].into(),
                    ..TransportFigures::default()
                },
            ],
            ..TelnetResult::default()
        };
        let text = markdown(&r);
        assert!(text.contains("| WebSocket | 2 / 2 | 10 | 1.25 |"), "{text}");
        assert!(text.contains("| telnet | 1 / 2 | 0 | — |"), "{text}");
        assert!(
            text.contains("telnet players not in the game: 1 × timed out"),
            "{text}"
        );
    }
}
