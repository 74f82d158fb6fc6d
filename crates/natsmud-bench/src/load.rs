//! The coordinator of a load run: registers the players, places them, starts the worker
//! processes, hands them one plan, samples /proc while they run, and analyses what they
//! recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::analysis::{Analysis, Inputs, analyse};
use crate::clock::{Anchor, now_us};
use crate::players::{self, PlayerEntry};
use crate::procs::{self, Managed, Tracker, Usage};
use crate::records::{Counters, PlayerRun, Receipt, Sent, WorkerOutput, read_receipts};
use crate::workload::{Plan, Workload};
use crate::world::BenchWorld;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The standard workload: moves, says, global chat, ticks.
    Active,
    /// Connected players doing nothing; only ticks reach them.
    Idle,
    /// The crowded room: everyone in one room, moving to the next one and back every
    /// 1.5 s (`scenario` only; see crowd.rs).
    Crowd,
    /// A wave of concurrent registrations, then logins, at the default hashing cost:
    /// the server's memory (`scenario` only; see auth_wave.rs).
    Auth,
}

impl Mode {
    /// The scenario name's prefix, e.g. `active` in `active-1000`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Idle => "idle",
            Mode::Crowd => "crowd",
            Mode::Auth => "auth",
        }
    }

    /// The standard workload's scenarios (active, idle), which the report's overview,
    /// plots and scale targets compare with one another.
    pub fn is_standard(self) -> bool {
        matches!(self, Mode::Active | Mode::Idle)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Write each player's starting room into the server's account database before it
    /// connects (needs --database); falls back to `walk` if that fails.
    Database,
    /// Walk each player from the start room to its room after connecting.
    Walk,
    /// Leave everyone in the start room.
    None,
}

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct LoadArgs {
    /// Players to connect.
    #[arg(long)]
    pub players: u32,
    /// Seed of the world, the rooms players start in, their phases and their exits.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds of workload before measuring starts.
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// Seconds the workers keep receiving after the window, so events sent at its end
    /// still arrive.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Load-generator worker processes (default: players / --per-process, rounded up).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most connections one process (a worker, a server node) should hold: the open-files
    /// limit here is 20,000 and cannot be raised.
    #[arg(long, default_value_t = 9000)]
    pub per_process: u32,
    /// Loopback source addresses for client sockets (127.0.0.2 and up): about 28,000
    /// ephemeral ports each.
    #[arg(long, default_value_t = 16)]
    pub source_addrs: u8,
    /// Connections each worker sets up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    pub register_concurrency: usize,
    /// Seconds to wait for every worker to finish connecting.
    #[arg(long, default_value_t = 900)]
    pub connect_timeout: u64,
    /// An event is not checked recipient by recipient when another move touched its room
    /// within this many milliseconds (boundary races).
    #[arg(long, default_value_t = 1000)]
    pub boundary_ms: u64,
    /// The servers' tick period, to know which ticks were due (0: only those seen).
    #[arg(long, default_value_t = 10_000)]
    pub tick_interval_ms: u64,
    #[arg(long, value_enum, default_value = "database")]
    pub placement: Placement,
    #[command(flatten)]
    pub workload: Workload,
}

impl LoadArgs {
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| self.players.div_ceil(self.per_process.max(1)) as usize)
            .max(1)
    }

    fn sources(&self) -> String {
        (0..self.source_addrs.clamp(1, 250))
            .map(|i| format!("127.0.0.{}", i + 2))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The servers a run talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URLs, e.g. `http://127.0.0.1:8080`; player `i` uses `servers[i % len]`.
    pub servers: Vec<String>,
    pub server_pids: Vec<u32>,
    /// nats-server processes by name (one, or a cluster's members).
    pub nats_pids: Vec<(String, u32)>,
    pub world: PathBuf,
    /// The servers' SQLite account database, for `--placement database`.
    pub database: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Setup {
    pub players_requested: u32,
    pub registered: u32,
    pub registration_failures: BTreeMap<String, u64>,
    pub connected: u32,
    pub connect_failures: BTreeMap<String, u64>,
    pub worker_processes: usize,
    pub source_addresses: u8,
    pub rooms: usize,
    pub zones: usize,
    pub sub_zones: usize,
    pub placement: String,
    pub registration_secs: f64,
    pub connect_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub server: Usage,
    pub nats: Usage,
    pub generator: Usage,
}

/// Server memory per idle connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleMemory {
    /// Server RSS (all nodes) with the players registered but not connected.
    pub server_rss_before_kib: u64,
    /// Server RSS at the end of the window, everyone connected.
    pub server_rss_after_kib: u64,
    pub connected: u32,
    pub rss_per_connection_kib: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunOutcome {
    pub setup: Setup,
    pub plan: Option<Plan>,
    pub analysis: Analysis,
    pub counters: Counters,
    pub disconnects: u64,
    pub close_reasons: BTreeMap<String, u64>,
    pub resources: Resources,
    pub idle_memory: Option<IdleMemory>,
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Groups error texts: long numbers (ports, addresses' tails, ids) become `N`, so thousands
/// of failures make a short list.
fn bucket(reason: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in reason.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            out.push_str(if digits.len() >= 4 { "N" } else { &digits });
            digits.clear();
        }
        out.push(c);
    }
    out.trim().chars().take(100).collect()
}

struct Worker {
    proc: Managed,
    stdin: Option<tokio::process::ChildStdin>,
}

pub async fn coordinate(
    args: &LoadArgs,
    mode: Mode,
    target: &Target,
    work_dir: &Path,
    pid_file: &Path,
) -> Result<RunOutcome> {
    let mut outcome = RunOutcome::default();
    let world = BenchWorld::load(&target.world)?;
    let n = args.players;
    let workers = args.worker_count();
    let setup = &mut outcome.setup;
    setup.players_requested = n;
    setup.worker_processes = workers;
    setup.source_addresses = args.source_addrs;
    setup.rooms = world.room_count();
    setup.zones = world.zones;
    setup.sub_zones = world.sub_zones;
    if let Some(limit) = procs::open_files_limit() {
        let per_worker = n.div_ceil(workers as u32) as u64;
        if per_worker + 64 > limit {
            bail!(
                "{per_worker} connections per worker exceed the open-files limit {limit}: use more --workers"
            );
        }
    }

    // 1. Register everyone.
    eprintln!(
        "bench: registering {n} players on {} node(s)",
        target.servers.len()
    );
    let started = std::time::Instant::now();
    let progress = bar(u64::from(n), "register");
    let (registered, failures) =
        players::register_all(&target.servers, n, args.register_concurrency, &progress).await?;
    progress.finish_and_clear();
    setup.registration_secs = started.elapsed().as_secs_f64();
    setup.registered = registered.len() as u32;
    for f in &failures {
        *setup.registration_failures.entry(bucket(f)).or_default() += 1;
    }
    eprintln!(
        "bench: registered {} in {:.1} s ({} failed)",
        registered.len(),
        setup.registration_secs,
        failures.len()
    );
    if registered.is_empty() {
        bail!(
            "no player could register: {:?}",
            setup.registration_failures
        );
    }

    // 2. Starting rooms: uniform at random (seeded), so neighbours in the list share
    //    neither room nor node.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x706c_6163_6500);
    let rooms = world.room_count() as u32;
    let entries: Vec<PlayerEntry> = registered
        .iter()
        .map(|r| PlayerEntry {
            idx: r.idx,
            name: players::name_of(r.idx),
            id: r.id.clone(),
            token: r.token.clone(),
            server: r.server.clone(),
            target: match args.placement {
                Placement::None => world.start,
                _ => rng.random_range(0..rooms),
            },
        })
        .collect();
    let mut walk = args.placement == Placement::Walk;
    if args.placement == Placement::Database {
        match &target.database {
            Some(db) => {
                let rows: Vec<(String, String)> = entries
                    .iter()
                    .map(|e| (e.id.clone(), world.ids[e.target as usize].clone()))
                    .collect();
                if let Err(e) = players::place_in_database(db, &rows).await {
                    eprintln!(
                        "bench: could not place players in {} ({e:#}); walking them instead",
                        db.display()
                    );
                    walk = true;
                }
            }
            None => {
                eprintln!("bench: no --database given; walking players to their rooms");
                walk = true;
            }
        }
    }
    setup.placement = match (args.placement, walk) {
        (Placement::None, _) => "none: everyone in the start room".into(),
        (_, true) => "walk: each player walks a shortest path to a random room after connecting".into(),
        _ => "database: each player's starting room (uniform at random) written to the account database before connecting".into(),
    };
    let players_file = work_dir.join("players.tsv");
    players::write_players(&players_file, &entries)?;

    let mut tracker = Tracker::default();
    for (i, pid) in target.server_pids.iter().enumerate() {
        tracker.add("server", &format!("natsmud-{}", i + 1), *pid);
    }
    for (name, pid) in &target.nats_pids {
        tracker.add("nats", name, *pid);
    }
    tracker.add("generator", "coordinator", std::process::id());
    let rss_before = tracker.sum_rss("server");

    // 3. Workers connect their slices.
    let exe = std::env::current_exe().context("locating natsmud-bench")?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, serde_json::Value)>();
    let mut procs_list: Vec<Worker> = Vec::with_capacity(workers);
    for w in 0..workers {
        let from = (u64::from(n) * w as u64 / workers as u64) as u32;
        let to = (u64::from(n) * (w as u64 + 1) / workers as u64) as u32;
        let mut command = Command::new(&exe);
        command
            .arg("worker")
            .args(["--players-file", &players_file.to_string_lossy()])
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--world", &target.world.to_string_lossy()])
            .args(["--out-dir", &work_dir.to_string_lossy()])
            .args(["--worker-id", &w.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--source-addrs", &args.sources()])
            .args([
                "--connect-concurrency",
                &args.connect_concurrency.to_string(),
            ])
            .args(["--move-every", &args.workload.move_every.to_string()])
            .args(["--say-every", &args.workload.say_every.to_string()])
            .args(["--global-every", &args.workload.global_every.to_string()])
            .args(["--global-one-in", &args.workload.global_one_in.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if mode == Mode::Idle {
            command.arg("--idle");
        }
        if walk {
            command.arg("--walk");
        }
        let log = work_dir.join(format!("worker-{w}.log"));
        let mut proc = Managed::spawn(&format!("worker-{w}"), &mut command, &log, true, pid_file)?;
        tracker.add("generator", &format!("worker-{w}"), proc.pid);
        let stdout = proc.child.stdout.take().context("worker stdout")?;
        let stdin = proc.child.stdin.take();
        let tx = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = tx.send((w, value));
                }
            }
            let _ = tx.send((w, serde_json::json!({"event":"exit"})));
        });
        procs_list.push(Worker { proc, stdin });
    }
    drop(events_tx);

    eprintln!("bench: {workers} worker process(es) connecting {n} players");
    let started = std::time::Instant::now();
    let progress = bar(u64::from(setup.registered), "connect");
    let mut status: Vec<(u64, u64, bool)> = vec![(0, 0, false); workers];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout);
    while !status.iter().all(|s| s.2) {
        let (w, value) = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => bail!("every worker exited while connecting"),
            Err(_) => bail!(
                "workers did not finish connecting within {} s (raise --connect-timeout)",
                args.connect_timeout
            ),
        };
        let get = |k: &str| value.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        match value.get("event").and_then(|e| e.as_str()) {
            Some("progress") => status[w] = (get("connected"), get("failed"), false),
            Some("ready") => status[w] = (get("connected"), get("failed"), true),
            Some("exit") => bail!(
                "worker {w} exited while connecting:\n{}",
                procs_list[w].proc.log_tail(20)
            ),
            _ => {}
        }
        progress.set_position(status.iter().map(|s| s.0 + s.1).sum());
    }
    progress.finish_and_clear();
    setup.connect_secs = started.elapsed().as_secs_f64();
    let connected: u64 = status.iter().map(|s| s.0).sum();
    let failed: u64 = status.iter().map(|s| s.1).sum();
    eprintln!(
        "bench: {connected} connected, {failed} failed, in {:.1} s",
        setup.connect_secs
    );

    // 4. One plan for everyone, a moment from now.
    let t0_us = now_us() + 2_000_000;
    let secs = |s: f64| (s.max(0.0) * 1e6) as u64;
    let measure_from_us = t0_us + secs(args.warmup);
    let measure_until_us = measure_from_us + secs(args.duration);
    let plan = Plan {
        t0_us,
        measure_from_us,
        measure_until_us,
        stop_us: measure_until_us + secs(args.drain),
    };
    outcome.plan = Some(plan);
    let line = format!("{}\n", serde_json::to_string(&plan)?);
    for w in &mut procs_list {
        if let Some(stdin) = w.stdin.as_mut() {
            stdin
                .write_all(line.as_bytes())
                .await
                .context("sending the plan to a worker")?;
            stdin.flush().await?;
        }
    }
    let anchor = Anchor::now();
    eprintln!(
        "bench: {} s warm-up, {} s measured, {} s drain",
        args.warmup, args.duration, args.drain
    );
    let total = plan.stop_us.saturating_sub(now_us()) / 1_000_000;
    let progress = bar(total.max(1), "run");
    let mut frames: Vec<u64> = vec![0; workers];
    let mut closed: Vec<u64> = vec![0; workers];
    let mut begun = false;
    let mut ended = false;
    let mut done = vec![false; workers];
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    let finish_deadline = anchor.instant_of(plan.stop_us) + Duration::from_secs(300);
    while !done.iter().all(|d| *d) {
        tokio::select! {
            _ = sampler.tick() => {
                let now = now_us();
                if !begun && now >= plan.measure_from_us {
                    tracker.begin();
                    begun = true;
                } else if begun && !ended && now >= plan.measure_until_us {
                    tracker.end();
                    ended = true;
                } else if begun && !ended {
                    tracker.tick();
                }
                progress.set_position(now.saturating_sub(t0_us) / 1_000_000);
                progress.set_message(format!(
                    "{} frames, {} closed",
                    frames.iter().sum::<u64>(),
                    closed.iter().sum::<u64>()
                ));
                if tokio::time::Instant::now() > finish_deadline {
                    bail!("workers did not finish within 300 s of the plan's end");
                }
            }
            event = events.recv() => {
                let Some((w, value)) = event else { break };
                match value.get("event").and_then(|e| e.as_str()) {
                    Some("stats") => {
                        frames[w] = value.get("frames").and_then(|v| v.as_u64()).unwrap_or(0);
                        closed[w] = value.get("closed").and_then(|v| v.as_u64()).unwrap_or(0);
                    }
                    Some("done") => done[w] = true,
                    Some("exit") if !done[w] => bail!(
                        "worker {w} exited before finishing:\n{}",
                        procs_list[w].proc.log_tail(20)
                    ),
                    _ => {}
                }
            }
        }
    }
    progress.finish_and_clear();
    if !ended {
        tracker.end();
    }
    let ticks = procs::clock_ticks_per_sec();
    outcome.resources = Resources {
        server: tracker.usage("server", ticks),
        nats: tracker.usage("nats", ticks),
        generator: tracker.usage("generator", ticks),
    };
    for w in procs_list {
        drop(w.stdin);
        w.proc.stop(Duration::from_secs(10)).await;
    }

    // 5. Read back and analyse.
    eprintln!("bench: analysing");
    let Records {
        players: all_players,
        sent,
        receipts,
        counters,
    } = read_records(work_dir, workers)?;
    outcome.counters = counters;
    let setup = &mut outcome.setup;
    setup.connected = all_players.iter().filter(|p| p.connected).count() as u32;
    for p in &all_players {
        if let Some(e) = &p.connect_error {
            *setup.connect_failures.entry(bucket(e)).or_default() += 1;
        }
        if let Some(c) = &p.close {
            outcome.disconnects += 1;
            *outcome.close_reasons.entry(c.clone()).or_default() += 1;
        }
    }
    if mode == Mode::Idle {
        let after = outcome.resources.server.rss_end_kib;
        let connected = outcome.setup.connected;
        outcome.idle_memory = Some(IdleMemory {
            server_rss_before_kib: rss_before,
            server_rss_after_kib: after,
            connected,
            rss_per_connection_kib: after.saturating_sub(rss_before) as f64
                / f64::from(connected.max(1)),
        });
    }
    let boundary_us = args.boundary_ms * 1000;
    let tick_interval_ms = args.tick_interval_ms;
    let nodes = target.servers.len();
    outcome.analysis = tokio::task::spawn_blocking(move || {
        analyse(&Inputs {
            players: &all_players,
            sent: &sent,
            receipts: &receipts,
            plan,
            boundary_us,
            tick_interval_ms,
            nodes,
        })
    })
    .await
    .context("analysis panicked")?;
    Ok(outcome)
}

/// What every worker of a run recorded, together.
#[derive(Debug, Default)]
pub struct Records {
    pub players: Vec<PlayerRun>,
    pub sent: Vec<Sent>,
    pub receipts: Vec<Receipt>,
    pub counters: Counters,
}

/// Reads back the records `workers` worker processes wrote into `work_dir`.
pub fn read_records(work_dir: &Path, workers: usize) -> Result<Records> {
    let mut records = Records::default();
    for w in 0..workers {
        let base = work_dir.join(format!("worker-{w}"));
        let json = base.with_extension("json");
        let output: WorkerOutput = serde_json::from_slice(
            &std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?,
        )
        .with_context(|| format!("parsing {}", json.display()))?;
        read_receipts(&base.with_extension("bin"), &mut records.receipts)?;
        records.counters.add(&output.counters);
        records.players.extend(output.players);
        records.sent.extend(output.sent);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_keep_codes_and_drop_ports() {
        assert_eq!(super::bucket("HTTP 429"), "HTTP 429");
        assert_eq!(
            super::bucket("connect: refused 127.0.0.1:45678 (os error 111)"),
            "connect: refused 127.0.0.1:N (os error 111)"
        );
    }
}
