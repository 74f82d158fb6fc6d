//! Resuming after a drop (`natsmud-bench resume`): how long a client that reconnects with
//! `?since=<position>` waits for `game_state`, `resumed` and every event it missed, read
//! back from the world's JetStream stream.
//!
//! From scratch: a fresh nats-server and one fresh natsmud node (the benchmark's flags,
//! plus a grace long enough that nobody leaves during the run and a missed-event cap above
//! the largest count measured). Two measurements:
//!
//! - one client at a time: a player drops, K events are published into its room from an
//!   outside NATS client (and stored), the player resumes; repeated for each K;
//! - the storm: C players spread over rooms all drop at once, M events go into each room,
//!   and all C resume at once — the node's resume concurrency limit and the stream's
//!   read-back under load.
//!
//! Every resume is checked: `recovered:true`, the count the server announces, and exactly
//! the published events in order. The missed events are `say`s by a stranger, published on
//! the room's subject as any outside publisher could.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use natsmud_protocol::envelope::ChatMessageData;
use natsmud_protocol::{
    Envelope, EventType, PlayerId, RoomId, ServerFrame, Subject, SubjectPrefix,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::analysis::{Latency, histogram, summarize};
use crate::load::Mode;
use crate::players::{self, Registered};
use crate::provenance::Provenance;
use crate::rss_sampler::{RssSampler, cpu_ticks, rss_kib};
use crate::scenario::{SERVER_FLAGS, ScenarioArgs, ScenarioResult, Stack};
use crate::{procs, world};

/// Flags the node gets on top of the benchmark's, unless `--server-arg` sets them: nobody's
/// grace ends during a run, and the largest count measured is under the cap.
const RESUME_FLAGS: &[(&str, &str)] = &[
    ("--link-dead-grace-secs", "120"),
    ("--resume-max-missed", "2000"),
];

/// Who the missed events are from: not a player of the run, so they are in every player's
/// view (a player never gets its own events back).
const STRANGER: &str = "bench_stranger";

/// Pause between dropping a socket and publishing what it will miss. A real client takes
/// longer than this to notice the drop and reconnect; by then the node has read the EOF
/// and holds the player link-dead, which is the case measured (not a takeover of a
/// connection the node still thinks is alive).
const DROP_SETTLE: Duration = Duration::from_millis(50);

/// Publishes in flight at once: under async-nats' default cap of pending acks (5,000), at
/// which a publish would wait for an ack nobody is awaiting yet.
const PUBLISH_CHUNK: usize = 1000;

/// Connections set up at once before the storm (not measured).
const SETUP_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// The natsmud binary (a release build).
    #[arg(long, default_value = "target/release/natsmud")]
    pub natsmud: PathBuf,
    /// The nats-server binary (scripts/install-nats-server prints it).
    #[arg(long)]
    pub nats_server: PathBuf,
    /// Scratch directory; emptied first.
    #[arg(long, default_value = "target/bench/resume")]
    pub work_dir: PathBuf,
    /// Results file (JSON). Not directly in docs/bench/: `report` reads every JSON file
    /// there as a scenario's results.
    #[arg(long)]
    pub out: PathBuf,
    /// Missed-event counts measured one client at a time (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 100, 1000])]
    pub missed: Vec<u32>,
    /// Resumes per missed-event count.
    #[arg(long, default_value_t = 30)]
    pub repeats: u32,
    /// Clients in the storm (0: no storm).
    #[arg(long, default_value_t = 1000)]
    pub storm_clients: u32,
    /// Events published into each of the storm's rooms while its clients are away.
    #[arg(long, default_value_t = 10)]
    pub storm_events: u32,
    /// Storm clients per room (the benchmark world's ~10).
    #[arg(long, default_value_t = 10)]
    pub storm_per_room: u32,
    /// Milliseconds between the missed events being stored and the reconnect. 0: at once,
    /// while the node may still be delivering them live to the players' connections — the
    /// resume then races that delivery, whose events queue on the new connection until
    /// the read-back covers them (and count against `--outbound-queue` meanwhile).
    #[arg(long, default_value_t = 0)]
    pub settle_ms: u64,
    /// Seconds one resume may take (the whole storm too) before it counts as failed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Seed of the generated world.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Extra flag for the node (repeatable), e.g. `--server-arg=--resume-concurrency=64`;
    /// it replaces the bench's own value of that flag.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
}

/// The results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResumeResult {
    pub name: String,
    /// `ok`, or `failed` with `error`.
    pub status: String,
    pub error: Option<String>,
    pub provenance: Provenance,
    pub server_flags: Vec<String>,
    pub server_flags_missing: Vec<String>,
    pub nats_server_version: String,
    pub repeats: u32,
    /// `--settle-ms`: the pause between the missed events being stored and the reconnect.
    #[serde(default)]
    pub settle_ms: u64,
    /// One client at a time, by missed-event count.
    pub by_missed: Vec<MissedRow>,
    /// Read-back consumers left on the stream after the one-at-a-time resumes.
    pub consumers_left_after_single: Option<usize>,
    pub storm: Option<Storm>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MissedRow {
    pub missed: u32,
    pub resumes: u32,
    /// `recovered:true` with exactly the published events, in order.
    pub recovered: u32,
    /// What went wrong otherwise, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connect started → the last missed event received, recovered resumes only.
    pub latency: Latency,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Storm {
    pub clients: u32,
    pub rooms: u32,
    pub events_per_room: u32,
    /// Clients connected and caught up before the drop (the others sit the storm out).
    pub connected: u32,
    pub setup_failures: BTreeMap<String, u64>,
    /// `recovered:true` with exactly the room's events, in order.
    pub recovered: u32,
    pub failures: BTreeMap<String, u64>,
    /// Per client: connect started → its last missed event received (recovered only).
    pub latency: Latency,
    /// Every client starting to connect → the last recovered client done.
    pub wall_secs: f64,
    pub node_rss_before_kib: u64,
    /// Highest node RSS sampled (every 20 ms) during the storm.
    pub node_rss_peak_kib: u64,
    pub node_rss_after_kib: u64,
    pub node_cpu_secs: f64,
    pub nats_cpu_secs: f64,
    /// Consumers on the event stream a second after the storm: the node deletes each
    /// read-back consumer when done with it, so anything here leaked (until its 30 s
    /// inactivity threshold).
    pub consumers_left: Option<usize>,
    pub consumers_left_names: Vec<String>,
}

impl ResumeResult {
    pub fn new(args: &ResumeArgs) -> Self {
        Self {
            name: "resume".to_owned(),
            status: "failed".to_owned(),
            provenance: Provenance::here(),
            repeats: args.repeats,
            settle_ms: args.settle_ms,
            ..Self::default()
        }
    }
}

impl crate::run_result::RunResult for ResumeResult {
    fn outcome_fields(&mut self) -> (&mut String, &mut Option<String>) {
        (&mut self.status, &mut self.error)
    }

    fn markdown(&self) -> String {
        markdown(self)
    }
}

/// `start_stack` takes a scenario's arguments; parsing them (rather than spelling out the
/// struct) gives every other field its usual default.
fn stack_args(args: &ResumeArgs, players: u32) -> Result<ScenarioArgs> {
    #[derive(clap::Parser)]
    struct StackCli {
        #[command(flatten)]
        scenario: ScenarioArgs,
    }
    let mut argv: Vec<OsString> = ["resume", "--mode", "idle", "--nodes", "1", "--players"]
        .into_iter()
        .map(OsString::from)
        .collect();
    argv.push(players.to_string().into());
    for (flag, value) in [
        ("--natsmud", &args.natsmud),
        ("--nats-server", &args.nats_server),
        ("--work-dir", &args.work_dir),
        ("--out", &args.out),
    ] {
        argv.push(flag.into());
        argv.push(value.into());
    }
    for arg in server_args(&args.server_args) {
        argv.push(format!("--server-arg={arg}").into());
    }
    use clap::Parser;
    StackCli::try_parse_from(argv)
        .map(|cli| cli.scenario)
        .map_err(|e| anyhow!("bad node arguments: {e}"))
}

/// [`RESUME_FLAGS`] but those `extra` sets (natsmud refuses a flag given twice), then
/// `extra`.
fn server_args(extra: &[String]) -> Vec<String> {
    let sets = |flag: &str| {
        extra
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    RESUME_FLAGS
        .iter()
        .filter(|(flag, _)| !sets(flag))
        .map(|(flag, value)| format!("{flag}={value}"))
        .chain(extra.iter().cloned())
        .collect()
}

pub async fn run(args: &ResumeArgs, result: &mut ResumeResult) -> Result<()> {
    crate::scenario::fresh_work_dir(&args.work_dir)?;
    // The one-at-a-time player gets a room of its own; the storm's clients share the rest.
    let players = args.storm_clients + 1;
    let generated = world::generate(players as usize, args.seed);
    let mut rooms: Vec<String> = generated
        .zones
        .iter()
        .flat_map(|z| z.rooms.iter().map(|r| r.id.clone()))
        .collect();
    rooms.sort();
    if rooms.len() < 2 {
        bail!("the generated world has fewer than two rooms");
    }
    let scenario = stack_args(args, players)?;
    let mut noted = ScenarioResult::new("resume".to_owned(), Mode::Idle, &scenario.load, false, 1);
    let stack =
        crate::scenario::start_stack(&scenario, &mut noted, &generated, SERVER_FLAGS).await?;
    result.server_flags = noted.server_flags;
    result.server_flags_missing = noted.server_flags_missing;
    result.nats_server_version = noted.nats_server_version;
    let outcome = measure(args, result, &stack, &rooms, players).await;
    stack.stop().await;
    outcome
}

async fn measure(
    args: &ResumeArgs,
    result: &mut ResumeResult,
    stack: &Stack,
    rooms: &[String],
    players: u32,
) -> Result<()> {
    let server = stack
        .servers
        .first()
        .context("the stack has no natsmud node")?;
    let nats_url = stack
        .node_nats_urls
        .first()
        .context("the stack has no nats-server")?;
    let bar = crate::load::bar(u64::from(players), "registering");
    let (registered, failed) = players::register_all(&stack.servers, players, 32, &bar).await?;
    bar.finish_and_clear();
    if !failed.is_empty() {
        bail!(
            "{} of {players} registrations failed: {:?}",
            failed.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }
    let storm_rooms = storm_room_count(args, rooms.len());
    // Player 0 alone in the first room; storm client i in room 1 + (i - 1) % storm_rooms.
    let placement: Vec<(String, String)> = registered
        .iter()
        .map(|r| (r.id.clone(), rooms[room_of(r.idx, storm_rooms)].clone()))
        .collect();
    players::place_in_database(&stack.data_dir.join("natsmud.db"), &placement).await?;
    let nats = async_nats::connect(nats_url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let js = jetstream::new(nats);
    let host = server.trim_start_matches("http://").to_owned();
    let limit = Duration::from_secs(args.timeout.max(1));

    let single = registered
        .first()
        .context("no player registered for the one-at-a-time resumes")?;
    let room = RoomId::parse(&rooms[0]).map_err(|e| anyhow!("room {}: {e}", rooms[0]))?;
    one_at_a_time(args, result, &js, &host, single, &room, limit).await?;
    result.consumers_left_after_single = Some(consumers(&js).await?.len());

    if args.storm_clients > 0 {
        let mut storm = Storm {
            clients: args.storm_clients,
            rooms: storm_rooms as u32,
            events_per_room: args.storm_events,
            ..Storm::default()
        };
        let outcome = run_storm(
            args,
            &mut storm,
            &js,
            &host,
            &registered[1..],
            rooms,
            stack,
            limit,
        )
        .await;
        result.storm = Some(storm);
        outcome?;
    }
    Ok(())
}

/// Rooms the storm uses: enough for `--storm-per-room` clients each, but the world's
/// rooms other than the first.
fn storm_room_count(args: &ResumeArgs, world_rooms: usize) -> usize {
    let wanted = args.storm_clients.div_ceil(args.storm_per_room.max(1)) as usize;
    wanted.clamp(1, world_rooms.saturating_sub(1).max(1))
}

fn room_of(idx: u32, storm_rooms: usize) -> usize {
    if idx == 0 {
        0
    } else {
        1 + (idx as usize - 1) % storm_rooms
    }
}

type Ws = WebSocketStream<TcpStream>;

fn ws_url(host: &str, token: &str, since: Option<&str>) -> String {
    match since {
        Some(since) => format!("ws://{host}/api/ws?token={token}&since={since}"),
        None => format!("ws://{host}/api/ws?token={token}"),
    }
}

async fn open(host: &str, url: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    // Small read buffers: the storm holds a thousand sockets and frames are small.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(reply) => {
                format!("HTTP {}", reply.status().as_u16())
            }
            other => format!("handshake: {}", short(&other.to_string())),
        })?;
    Ok(ws)
}

fn short(text: &str) -> String {
    text.chars().take(100).collect()
}

/// The next frame other than a tick (ticks carry no position and come whenever).
async fn next_event(ws: &mut Ws) -> Result<ServerFrame, String> {
    loop {
        let message = match ws.next().await {
            None => return Err("closed: the connection ended".to_owned()),
            Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => {
                let frame: ServerFrame = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("unreadable frame: {e}"))?;
                if frame.event_type != EventType::GameTick {
                    return Ok(frame);
                }
            }
            Message::Close(close) => {
                return Err(match close {
                    Some(c) => format!("closed {}: {}", u16::from(c.code), short(&c.reason)),
                    None => "closed".to_owned(),
                });
            }
            _ => {}
        }
    }
}

/// Connects without resuming; the frames up to `game_state`.
async fn join(host: &str, token: &str) -> Result<Ws, String> {
    let mut ws = open(host, &ws_url(host, token, None)).await?;
    let state = next_event(&mut ws).await?;
    if state.event_type != EventType::GameState {
        return Err(format!(
            "expected game_state, got {}",
            state.event_type.as_str()
        ));
    }
    Ok(ws)
}

/// Reads until the `say` with `marker` as its id; the position of the last event read,
/// the marker's. Everything before it in the room has then been received, so a resume
/// from there misses exactly what is published next.
async fn until_marker(ws: &mut Ws, marker: &str) -> Result<String, String> {
    loop {
        let frame = next_event(ws).await?;
        if frame.event_type == EventType::ChatMessage && frame.data_str("message_id") == marker {
            return frame
                .position
                .ok_or_else(|| "the marker has no position".to_owned());
        }
    }
}

/// A `say` by the stranger in `room`, with `id` as its message id.
fn stranger_says(room: &RoomId, id: &str) -> Result<Envelope<ChatMessageData>> {
    let stranger = PlayerId::parse(STRANGER).map_err(|e| anyhow!("{STRANGER}: {e}"))?;
    Ok(Envelope::new(
        EventType::ChatMessage,
        ChatMessageData {
            channel: "say".into(),
            sender_id: stranger.clone(),
            player_name: "Stranger".into(),
            message: format!("Stranger says: {id}"),
            message_id: id.to_owned(),
            target_id: None,
            target_name: None,
            sub_zone: None,
        },
    )
    .in_room(room.clone())
    .by_player(stranger))
}

/// Publishes each (room, message id) as the stranger's `say` and returns once the stream
/// has stored every one (its acks), so a resume that follows reads them all back.
async fn publish(js: &jetstream::Context, events: &[(RoomId, String)]) -> Result<()> {
    let prefix = SubjectPrefix::default();
    for chunk in events.chunks(PUBLISH_CHUNK) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (room, id) in chunk {
            let subject = Subject::say(room).render(&prefix);
            let payload = stranger_says(room, id)?.to_bytes();
            acks.push(
                js.publish(subject, payload)
                    .await
                    .context("publishing to NATS")?,
            );
        }
        for ack in acks {
            ack.await
                .context("the event stream did not store an event")?;
        }
    }
    Ok(())
}

/// Publishes `marker` into `room` and reads `ws` up to it: the position to resume from.
async fn catch_up(
    ws: &mut Ws,
    js: &jetstream::Context,
    room: &RoomId,
    marker: &str,
    limit: Duration,
) -> Result<String> {
    publish(js, &[(room.clone(), marker.to_owned())]).await?;
    timeout(limit, until_marker(ws, marker))
        .await
        .map_err(|_| anyhow!("the marker {marker} did not arrive within {limit:?}"))?
        .map_err(|e| anyhow!("waiting for the marker {marker}: {e}"))
}

/// The names of the consumers on the world's event stream.
async fn consumers(js: &jetstream::Context) -> Result<Vec<String>> {
    let stream = js
        .get_stream(SubjectPrefix::default().stream_name())
        .await
        .context("looking up the event stream")?;
    let mut names = stream.consumer_names();
    let mut out = Vec::new();
    while let Some(name) = names.next().await {
        out.push(name.context("listing the event stream's consumers")?);
    }
    Ok(out)
}

/// A resume that got everything it should have.
struct Resumed {
    ws: Ws,
    /// Connect started → the last missed event received.
    took: Duration,
    /// Where to resume from next time.
    last: String,
}

/// Reconnects with `url` (which carries `since`) and checks the answer: `game_state`,
/// `resumed` with `recovered:true` and the right count, then exactly `expected` (message
/// ids) in order.
async fn resume_one(host: &str, url: &str, expected: &[String]) -> Result<Resumed, String> {
    let started = Instant::now();
    let mut ws = open(host, url).await?;
    let state = next_event(&mut ws).await?;
    if state.event_type != EventType::GameState {
        return Err(format!(
            "expected game_state, got {}",
            state.event_type.as_str()
        ));
    }
    let answer = next_event(&mut ws).await?;
    if answer.event_type != EventType::Resumed {
        return Err(format!(
            "expected resumed, got {}",
            answer.event_type.as_str()
        ));
    }
    if answer.data.get("recovered").and_then(|v| v.as_bool()) != Some(true) {
        return Err(format!(
            "recovered:false ({})",
            short(answer.data_str("reason"))
        ));
    }
    let missed = answer.data.get("missed").and_then(|v| v.as_u64());
    if missed != Some(expected.len() as u64) {
        return Err(format!(
            "announced {} missed, {} were published",
            missed.map_or_else(|| "no count of".to_owned(), |n| n.to_string()),
            expected.len()
        ));
    }
    let mut last = state.position;
    for id in expected {
        let frame = next_event(&mut ws).await?;
        if frame.event_type != EventType::ChatMessage || frame.data_str("message_id") != id {
            return Err(format!(
                "a missed event is not the one published next (got {})",
                frame.event_type.as_str()
            ));
        }
        last = frame.position;
    }
    let took = started.elapsed();
    let last = last.ok_or_else(|| "no position to resume from next time".to_owned())?;
    Ok(Resumed { ws, took, last })
}

async fn settle(args: &ResumeArgs) {
    if args.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn or_timed_out(
    outcome: Result<Result<Resumed, String>, tokio::time::error::Elapsed>,
) -> Result<Resumed, String> {
    outcome.unwrap_or_else(|_| Err("timed out".to_owned()))
}

async fn one_at_a_time(
    args: &ResumeArgs,
    result: &mut ResumeResult,
    js: &jetstream::Context,
    host: &str,
    player: &Registered,
    room: &RoomId,
    limit: Duration,
) -> Result<()> {
    let rejoin = |n: u32| async move {
        let mut ws = timeout(limit, join(host, &player.token))
            .await
            .map_err(|_| anyhow!("connecting the one-at-a-time player timed out"))?
            .map_err(|e| anyhow!("connecting the one-at-a-time player: {e}"))?;
        let last = catch_up(&mut ws, js, room, &format!("single.sync.{n}"), limit).await?;
        Ok::<_, anyhow::Error>((ws, last))
    };
    let mut rejoins = 0;
    let (mut ws, mut last) = rejoin(rejoins).await?;
    for &k in &args.missed {
        eprintln!(
            "bench: {} resumes of one client, {k} missed event(s) each",
            args.repeats
        );
        let mut row = MissedRow {
            missed: k,
            ..MissedRow::default()
        };
        let mut took = histogram();
        for rep in 0..args.repeats {
            // No close frame: the socket just goes, as when a network drops.
            drop(ws);
            tokio::time::sleep(DROP_SETTLE).await;
            let ids: Vec<String> = (0..k).map(|n| format!("single.{k}.{rep}.{n}")).collect();
            let events: Vec<(RoomId, String)> =
                ids.iter().map(|id| (room.clone(), id.clone())).collect();
            publish(js, &events).await?;
            settle(args).await;
            let url = ws_url(host, &player.token, Some(&last));
            row.resumes += 1;
            match or_timed_out(timeout(limit, resume_one(host, &url, &ids)).await) {
                Ok(done) => {
                    row.recovered += 1;
                    took.saturating_record(micros(done.took));
                    ws = done.ws;
                    last = done.last;
                }
                Err(reason) => {
                    *row.failures.entry(reason).or_default() += 1;
                    // Where that connection stands is unknown: start again from a known
                    // position.
                    rejoins += 1;
                    (ws, last) = rejoin(rejoins).await?;
                }
            }
        }
        row.latency = summarize(&took);
        eprintln!(
            "bench:   {}/{} recovered; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            row.recovered,
            row.resumes,
            row.latency.p50_ms,
            row.latency.p99_ms,
            row.latency.max_ms,
            failures_text(&row.failures)
        );
        result.by_missed.push(row);
    }
    // Leave for good: the player's room hears it once, and nothing waits on its grace.
    let _ = ws.send(Message::text(crate::proto::command("quit"))).await;
    Ok(())
}

fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!("; failed: {}", failures_list(failures))
    }
}

/// `2 × timed out, 1 × HTTP 503`.
fn failures_list(failures: &BTreeMap<String, u64>) -> String {
    let list: Vec<String> = failures.iter().map(|(r, n)| format!("{n} × {r}")).collect();
    list.join(", ")
}

/// Milliseconds for the table; a dash when nothing was measured.
fn ms_cell(latency: &Latency, value: f64, digits: usize) -> String {
    if latency.count == 0 {
        "—".to_owned()
    } else {
        format!("{value:.digits$}")
    }
}

/// A storm client, connected and caught up to its room's marker.
struct Ready {
    room: usize,
    token: String,
    last: String,
}

#[allow(clippy::too_many_arguments)]
async fn run_storm(
    args: &ResumeArgs,
    storm: &mut Storm,
    js: &jetstream::Context,
    host: &str,
    registered: &[Registered],
    rooms: &[String],
    stack: &Stack,
    limit: Duration,
) -> Result<()> {
    let storm_rooms = storm.rooms as usize;
    let room_ids: Vec<RoomId> = rooms
        .iter()
        .map(|r| RoomId::parse(r).map_err(|e| anyhow!("room {r}: {e}")))
        .collect::<Result<_>>()?;
    eprintln!(
        "bench: storm: connecting {} clients in {storm_rooms} rooms",
        registered.len()
    );
    let joined: Vec<(usize, String, Result<Ws, String>)> = futures::stream::iter(registered)
        .map(|r| async move {
            let ws = timeout(limit, join(host, &r.token))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            (room_of(r.idx, storm_rooms), r.token.clone(), ws)
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let mut joined_ok = Vec::new();
    for (room, token, ws) in joined {
        match ws {
            Ok(ws) => joined_ok.push((room, token, ws)),
            Err(e) => *storm.setup_failures.entry(e).or_default() += 1,
        }
    }
    let used: std::collections::BTreeSet<usize> = joined_ok.iter().map(|c| c.0).collect();
    let marker = |room: usize| format!("storm.sync.{room}");
    let markers: Vec<(RoomId, String)> = used
        .iter()
        .map(|&r| (room_ids[r].clone(), marker(r)))
        .collect();
    publish(js, &markers).await?;
    let caught_up = futures::future::join_all(joined_ok.into_iter().map(
        |(room, token, mut ws)| async move {
            let at = timeout(limit, until_marker(&mut ws, &marker(room)))
                .await
                .unwrap_or_else(|_| Err("timed out waiting for the marker".to_owned()));
            at.map(|last| (Ready { room, token, last }, ws))
        },
    ))
    .await;
    let mut ready = Vec::new();
    let mut sockets = Vec::new();
    for c in caught_up {
        match c {
            Ok((client, ws)) => {
                ready.push(client);
                sockets.push(ws);
            }
            Err(e) => *storm.setup_failures.entry(e).or_default() += 1,
        }
    }
    storm.connected = ready.len() as u32;
    eprintln!(
        "bench: storm: {} clients caught up; all drop, {} event(s) into each room, all resume",
        ready.len(),
        args.storm_events
    );
    drop(sockets);
    // A thousand EOFs take the node a moment; a real crowd takes longer than this to come
    // back after a network blip.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected: BTreeMap<usize, std::sync::Arc<Vec<String>>> = used
        .iter()
        .map(|&r| {
            let ids = (0..args.storm_events)
                .map(|n| format!("storm.{r}.{n}"))
                .collect();
            (r, std::sync::Arc::new(ids))
        })
        .collect();
    let events: Vec<(RoomId, String)> = expected
        .iter()
        .flat_map(|(&r, ids)| {
            let room = &room_ids[r];
            ids.iter().map(move |id| (room.clone(), id.clone()))
        })
        .collect();
    publish(js, &events).await?;
    settle(args).await;

    let node_pids = stack.node_pids();
    let nats_pids: Vec<u32> = stack.nats.iter().map(|n| n.pid).collect();
    storm.node_rss_before_kib = rss_kib(&node_pids);
    let node_cpu = cpu_ticks(&node_pids);
    let nats_cpu = cpu_ticks(&nats_pids);
    let sampler = RssSampler::start(node_pids.clone(), Duration::from_millis(20));
    let started = Instant::now();
    let tasks: Vec<_> = ready
        .iter()
        .map(|c| {
            let host = host.to_owned();
            let url = ws_url(&host, &c.token, Some(&c.last));
            let expected = expected.get(&c.room).cloned().unwrap_or_default();
            tokio::spawn(async move {
                let outcome =
                    or_timed_out(timeout(limit, resume_one(&host, &url, &expected)).await);
                (outcome, Instant::now())
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(
            task.await
                .unwrap_or_else(|e| (Err(format!("client task: {e}")), Instant::now())),
        );
    }
    let peak = sampler.stop().await;
    let ticks = procs::clock_ticks_per_sec() as f64;
    storm.node_cpu_secs = cpu_ticks(&node_pids).saturating_sub(node_cpu) as f64 / ticks;
    storm.nats_cpu_secs = cpu_ticks(&nats_pids).saturating_sub(nats_cpu) as f64 / ticks;
    storm.node_rss_peak_kib = peak.max_kib;
    storm.node_rss_after_kib = rss_kib(&node_pids);
    let mut took = histogram();
    let mut last_done = started;
    let mut kept = Vec::new();
    for (outcome, at) in outcomes {
        match outcome {
            Ok(done) => {
                storm.recovered += 1;
                took.saturating_record(micros(done.took));
                last_done = last_done.max(at);
                kept.push(done.ws);
            }
            Err(reason) => *storm.failures.entry(reason).or_default() += 1,
        }
    }
    storm.wall_secs = last_done.duration_since(started).as_secs_f64();
    storm.latency = summarize(&took);
    eprintln!(
        "bench: storm: {}/{} recovered in {:.2} s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
        storm.recovered,
        storm.connected,
        storm.wall_secs,
        storm.latency.p50_ms,
        storm.latency.p99_ms,
        storm.latency.max_ms,
        failures_text(&storm.failures)
    );
    // Each read-back consumer is deleted before its events are sent, so one still here a
    // second later was left behind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left = consumers(js).await?;
    storm.consumers_left = Some(left.len());
    storm.consumers_left_names = left.into_iter().take(20).collect();
    drop(kept);
    Ok(())
}

fn kib_as_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The results as markdown for docs/benchmarks.md.
pub fn markdown(r: &ResumeResult) -> String {
    let m = &r.provenance.machine;
    let mut out = String::new();
    out.push_str("## Resuming after a drop\n\n");
    out.push_str(&format!(
        "`{}` — {} on commit {}, {}; {} × {}, {} GiB, Linux {}. One natsmud node and one \
         nats-server ({}); node flags: `{}`.\n\n",
        r.provenance.command,
        r.status,
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
    let reconnect = if r.settle_ms == 0 {
        "as soon as they are stored".to_owned()
    } else {
        format!("{} ms after they are stored", r.settle_ms)
    };
    if !r.by_missed.is_empty() {
        out.push_str(&format!(
            "One client at a time: it drops (no close frame), K events go into its room, it \
             reconnects with `since` {reconnect}. Time from starting the connect to having \
             `game_state`, `resumed` and all K events.\n\n"
        ));
        out.push_str("| Missed (K) | Resumes | Recovered | p50 ms | p99 ms | max ms |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|\n");
        for row in &r.by_missed {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.missed,
                row.resumes,
                row.recovered,
                ms_cell(&row.latency, row.latency.p50_ms, 2),
                ms_cell(&row.latency, row.latency.p99_ms, 2),
                ms_cell(&row.latency, row.latency.max_ms, 2)
            ));
        }
        let failures: BTreeMap<String, u64> = r
            .by_missed
            .iter()
            .flat_map(|row| row.failures.iter())
            .fold(BTreeMap::new(), |mut all, (reason, n)| {
                *all.entry(reason.clone()).or_default() += n;
                all
            });
        if !failures.is_empty() {
            out.push_str(&format!("\nFailures: {}.\n", failures_list(&failures)));
        }
        out.push('\n');
    }
    if let Some(s) = &r.storm {
        out.push_str(&format!(
            "Storm: {} clients in {} rooms drop at once, {} events go into each room, all \
             reconnect at once with `since` {reconnect}.\n\n",
            s.clients, s.rooms, s.events_per_room
        ));
        out.push_str(
            "| Clients | Recovered | Failed | p50 ms | p99 ms | max ms | All done in | \
             Node RSS before → peak → after (MiB) | Node CPU s | NATS CPU s | Consumers left |\n",
        );
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} s | {} → {} → {} | {:.2} | {:.2} | {} |\n",
            s.connected,
            s.recovered,
            s.failures.values().sum::<u64>(),
            ms_cell(&s.latency, s.latency.p50_ms, 1),
            ms_cell(&s.latency, s.latency.p99_ms, 1),
            ms_cell(&s.latency, s.latency.max_ms, 1),
            s.wall_secs,
            kib_as_mib(s.node_rss_before_kib),
            kib_as_mib(s.node_rss_peak_kib),
            kib_as_mib(s.node_rss_after_kib),
            s.node_cpu_secs,
            s.nats_cpu_secs,
            s.consumers_left
                .map_or_else(|| "?".to_owned(), |n| n.to_string())
        ));
        if !s.failures.is_empty() {
            out.push_str(&format!("\nFailures: {}.\n", failures_list(&s.failures)));
        }
        if !s.setup_failures.is_empty() {
            out.push_str(&format!(
                "\nNot connected before the drop (left out): {}.\n",
                failures_list(&s.setup_failures)
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use natsmud_protocol::ingress::{Route, check};

    fn args(extra: &[&str]) -> ResumeArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            resume: ResumeArgs,
        }
        use clap::Parser;
        let mut argv = vec!["x", "--nats-server", "nats", "--out", "o.json"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .resume
    }

    #[test]
    fn the_bench_flags_give_way_to_the_callers() {
        assert_eq!(
            server_args(&[]),
            ["--link-dead-grace-secs=120", "--resume-max-missed=2000"]
        );
        let extra = vec![
            "--resume-max-missed=50".to_owned(),
            "--resume-concurrency=8".to_owned(),
        ];
        assert_eq!(
            server_args(&extra),
            [
                "--link-dead-grace-secs=120",
                "--resume-max-missed=50",
                "--resume-concurrency=8"
            ]
        );
    }

    #[test]
    fn the_node_gets_the_scenario_defaults_and_the_resume_flags() {
        let a = args(&["--server-arg=--resume-concurrency=4"]);
        assert_eq!(a.missed, [1, 100, 1000]);
        assert_eq!((a.repeats, a.storm_clients, a.storm_events), (30, 1000, 10));
        let scenario = stack_args(&a, 1001).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(scenario.load.players, 1001);
        assert_eq!(scenario.nodes, Some(1));
        assert_eq!(scenario.nats_servers, 1);
        assert_eq!(
            scenario.server_args,
            [
                "--link-dead-grace-secs=120",
                "--resume-max-missed=2000",
                "--resume-concurrency=4"
            ]
        );
        let a = args(&["--missed", "5,7", "--storm-clients", "0"]);
        assert_eq!(a.missed, [5, 7]);
    }

    #[test]
    fn the_single_client_has_a_room_of_its_own() {
        let a = args(&["--storm-clients", "1000"]);
        assert_eq!(storm_room_count(&a, 101), 100);
        assert_eq!(storm_room_count(&a, 50), 49);
        assert_eq!(room_of(0, 100), 0);
        assert_eq!(room_of(1, 100), 1);
        assert_eq!(room_of(100, 100), 100);
        assert_eq!(room_of(101, 100), 1);
        let a = args(&["--storm-clients", "5"]);
        assert_eq!(storm_room_count(&a, 4), 1);
    }

    #[test]
    fn the_strangers_say_is_an_event_the_server_accepts_for_the_room() {
        let room = RoomId::parse("z000_r001").unwrap_or_else(|e| panic!("{e}"));
        let prefix = SubjectPrefix::default();
        let subject = Subject::say(&room).render(&prefix);
        let payload = stranger_says(&room, "storm.1.0")
            .unwrap_or_else(|e| panic!("{e:#}"))
            .to_bytes();
        let parsed = Subject::parse(&prefix, &subject).unwrap_or_else(|| panic!("{subject}"));
        let route = check(parsed, &payload, 8192).unwrap_or_else(|e| panic!("{e:?}"));
        let Route::Room {
            room: to, actor, ..
        } = route
        else {
            panic!("not a room event: {route:?}")
        };
        assert_eq!((to.as_str(), actor.as_str()), ("z000_r001", STRANGER));
    }

    #[test]
    fn the_table_shows_each_count_and_the_storm() {
        let mut r = ResumeResult::new(&args(&[]));
        r.by_missed.push(MissedRow {
            missed: 100,
            resumes: 3,
            recovered: 2,
            failures: [("timed out".to_owned(), 1)].into(),
            latency: Latency {
                count: 2,
                p50_ms: 1.5,
                ..Latency::default()
            },
        });
        r.storm = Some(Storm {
            clients: 50,
            connected: 50,
            recovered: 50,
            consumers_left: Some(0),
            ..Storm::default()
        });
        let text = markdown(&r);
        assert!(text.contains("| 100 | 3 | 2 | 1.50 |"), "{text}");
        assert!(text.contains("1 × timed out"), "{text}");
        assert!(text.contains("| 50 | 50 | 0 | — |"), "{text}");
        assert!(text.contains("Failures: 1 × timed out."), "{text}");
        assert!(text.contains("as soon as they are stored"), "{text}");
        r.settle_ms = 200;
        assert!(markdown(&r).contains("200 ms after they are stored"));
    }
}
