//! One benchmark scenario from scratch: a fresh directory, the generated world, a fresh
//! nats-server (or NATS cluster), fresh natsmud node(s) sharing one account database, the
//! load run, and everything stopped again — also on error, and on Ctrl-C (every child is
//! killed when dropped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::load::{LoadArgs, Mode, RunOutcome, Target, coordinate};
use crate::procs::Managed;
use crate::provenance::Provenance;
use crate::world;

/// Flags every benchmark node gets when its `natsmud --help` lists them: cheap password
/// hashing (registering 100,000 players must not take an hour), every rate limit and
/// connection cap off (0), quiet logs. The one place to change them: the login wave
/// (auth_wave.rs) takes all of them but the hashing cost, which it measures.
pub const SERVER_FLAGS: &[(&str, &str)] = &[
    ("--password-hash-memory-kib", "8"),
    ("--password-hash-iterations", "1"),
    ("--max-connections", "0"),
    ("--max-connections-per-ip", "0"),
    ("--connects-per-minute", "0"),
    ("--commands-per-sec", "0"),
    ("--auth-per-minute", "0"),
    ("--log", "warn"),
];

/// Worker threads of each node when several nodes share the machine: one more than the
/// cores. With one per core (2 here), a node whose workers are all busy with a tick's
/// fan-out picks up new events only between tasks, behind the fan-out; with a spare one,
/// it is usually parked in the I/O driver and answers at once. Measured on 2 cores
/// (active-10000, 2 nodes; active-20000, 3 nodes) in docs/performance.md. A single node
/// keeps natsmud's default (one per core).
fn shared_machine_worker_threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32) + 1
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Name in the report, e.g. `active-1000` (default: mode-players).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// natsmud server processes (default: players / --per-process, rounded up).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// The natsmud binary (a release build).
    #[arg(long, default_value = "target/release/natsmud")]
    pub natsmud: PathBuf,
    /// The nats-server binary (scripts/install-nats-server prints it).
    #[arg(long)]
    pub nats_server: PathBuf,
    /// Scratch directory for this scenario; emptied first.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Where the results (JSON) go.
    #[arg(long)]
    pub out: PathBuf,
    /// Marks the results as a short smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Worker threads per node (`natsmud --worker-threads`; 0: natsmud's default, one per
    /// core). Default: cores + 1 when several nodes share the machine, else natsmud's
    /// default.
    #[arg(long)]
    pub node_worker_threads: Option<u32>,
    /// nats-servers. Above 1 they form a cluster on loopback, node k talks to server
    /// k % N, and natsmud keeps N replicas of its presence data.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub nats_servers: u16,
    /// `natsmud --subscriptions` for every node; unset: natsmud's default.
    #[arg(long, value_enum)]
    pub subscriptions: Option<Subscriptions>,
    /// Extra flag for every node (repeatable), e.g. `--server-arg=--outbound-queue=512`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub crowd: crate::crowd::CrowdArgs,
    #[command(flatten)]
    pub auth: crate::auth_wave::AuthArgs,
}

/// What a node subscribes to on NATS (`natsmud --subscriptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subscriptions {
    /// The rooms and sub-zones where the node has players.
    Interest,
    /// The whole world's events.
    All,
}

impl Subscriptions {
    pub fn name(self) -> &'static str {
        match self {
            Self::Interest => "interest",
            Self::All => "all",
        }
    }
}

/// One scenario's results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub mode: Mode,
    pub players: u32,
    pub quick: bool,
    /// `ok`, or `failed` with `error`.
    pub status: String,
    pub error: Option<String>,
    pub provenance: Provenance,
    pub nodes: usize,
    /// nats-servers (a cluster when above 1); 0 in results written before it was noted,
    /// which all had one.
    #[serde(default)]
    pub nats_servers: usize,
    /// `--subscriptions` given to the nodes; none: natsmud's default.
    #[serde(default)]
    pub subscriptions: Option<Subscriptions>,
    /// Nodes publishing the game tick (one: the holder of the tick lease).
    pub ticking_nodes: usize,
    pub server_flags: Vec<String>,
    /// Flags of [`SERVER_FLAGS`] this natsmud does not have (left out).
    pub server_flags_missing: Vec<String>,
    pub nats_server_version: String,
    pub load: LoadArgs,
    pub outcome: Option<RunOutcome>,
    /// The crowded room's own figures (`--mode crowd`).
    #[serde(default)]
    pub crowd: Option<crate::crowd_figures::CrowdFigures>,
    /// The login wave's figures (`--mode auth`), which has no load-generator run.
    #[serde(default)]
    pub auth: Option<crate::auth_wave::AuthOutcome>,
    /// What each node received from NATS and each nats-server carried (several nodes).
    #[serde(default)]
    pub cluster: Option<crate::cluster_probe::ClusterFigures>,
}

impl ScenarioResult {
    pub fn new(name: String, mode: Mode, load: &LoadArgs, quick: bool, nodes: usize) -> Self {
        Self {
            name,
            mode,
            players: load.players,
            quick,
            status: "failed".into(),
            error: None,
            provenance: Provenance::here(),
            nodes,
            nats_servers: 1,
            subscriptions: None,
            ticking_nodes: 1,
            server_flags: Vec::new(),
            server_flags_missing: Vec::new(),
            nats_server_version: String::new(),
            load: load.clone(),
            outcome: None,
            crowd: None,
            auth: None,
            cluster: None,
        }
    }

    /// One of the standard workload's scenarios on the standard shape (one nats-server),
    /// which the report's overview, plots and targets compare with one another.
    pub fn is_standard(&self) -> bool {
        self.mode.is_standard() && self.nats_servers <= 1
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

async fn supported_flags(
    natsmud: &Path,
    wanted: &[(&str, &str)],
    worker_threads: u32,
    extra: &[String],
) -> Result<(Vec<String>, Vec<String>)> {
    let help = Command::new(natsmud)
        .arg("--help")
        .output()
        .await
        .with_context(|| format!("running {} --help", natsmud.display()))?;
    let text = String::from_utf8_lossy(&help.stdout);
    let mut have = Vec::new();
    let mut missing = Vec::new();
    let threads = worker_threads.to_string();
    let runtime = [("--worker-threads", threads.as_str())];
    let runtime: &[(&str, &str)] = if worker_threads > 0 { &runtime } else { &[] };
    let listed = |flag: &str| {
        text.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
            .any(|w| w == flag)
    };
    for (flag, value) in wanted.iter().chain(runtime) {
        if listed(flag) {
            have.push(format!("{flag}={value}"));
        } else {
            missing.push(flag.to_string());
        }
    }
    // Several nodes share the machine: none listens for telnet, whose default port they
    // would fight over. An older natsmud has no telnet to turn off, and misses nothing. A
    // caller that binds it on a port of its own (`natsmud-bench telnet`) keeps that, as
    // natsmud refuses a flag given twice.
    let telnet_off = ("--telnet-bind", "0");
    let bound_by_caller = extra
        .iter()
        .any(|a| a == telnet_off.0 || a.starts_with(&format!("{}=", telnet_off.0)));
    if listed(telnet_off.0) && !bound_by_caller {
        have.push(format!("{}={}", telnet_off.0, telnet_off.1));
    }
    Ok((have, missing))
}

async fn wait_healthy(node: &mut Managed, url: &str) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        // Under the server's 10 s keep-alive timeout: a pooled connection is never reused
        // just as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if !node.running() {
            bail!("{} exited at start:\n{}", node.name, node.log_tail(30));
        }
        if let Ok(r) = client.get(format!("{url}/health")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not answer /health within 60 s:\n{}",
                node.name,
                node.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_nats(bin: &Path, dir: &Path, pid_file: &Path) -> Result<(Managed, String)> {
    std::fs::create_dir_all(dir)?;
    let mut command = Command::new(bin);
    // JetStream holds presence and the tick lease; its storage stays in the run's folder.
    command.args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"]);
    command.arg(dir.join("jetstream"));
    command.arg("--ports_file_dir");
    command.arg(dir);
    let mut nats = Managed::spawn(
        "nats-server",
        &mut command,
        &dir.join("nats-server.log"),
        false,
        pid_file,
    )?;
    let ports = dir.join(format!("nats-server_{}.ports", nats.pid));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = value["nats"][0].as_str()
        {
            return Ok((nats, url.to_owned()));
        }
        if !nats.running() {
            bail!("nats-server exited at start:\n{}", nats.log_tail(20));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nats-server wrote no ports file in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh nats-server (or NATS cluster) and natsmud node(s) sharing one account database.
/// Dropping it kills them all; [`Stack::stop`] asks them to stop first.
pub struct Stack {
    /// One nats-server, or the members of the cluster (s1…sN).
    pub nats: Vec<Managed>,
    /// Monitoring base URLs of the cluster's servers (none for a single server).
    pub nats_monitors: Vec<String>,
    pub nodes: Vec<Managed>,
    /// Base URLs of the nodes, e.g. `http://127.0.0.1:8080`.
    pub servers: Vec<String>,
    /// The NATS URL each node was given.
    pub node_nats_urls: Vec<String>,
    pub world_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where every process started for the scenario is noted (see [`Managed::spawn`]).
    pub pid_file: PathBuf,
}

impl Stack {
    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid).collect()
    }

    pub fn target(&self) -> Target {
        Target {
            servers: self.servers.clone(),
            server_pids: self.node_pids(),
            nats_pids: self.nats.iter().map(|n| (n.name.clone(), n.pid)).collect(),
            world: self.world_dir.clone(),
            database: Some(self.data_dir.join("natsmud.db")),
        }
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.stop(Duration::from_secs(15)).await;
        }
        for nats in self.nats {
            nats.stop(Duration::from_secs(5)).await;
        }
    }
}

/// Empties the scenario's directory (nothing of an earlier run may leak into this one).
pub fn fresh_work_dir(work: &Path) -> Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("logs"))?;
    Ok(())
}

/// Writes `world` into the scenario's directory and starts nats-server (or a cluster of
/// `--nats-servers`) and `result.nodes` natsmud node(s) on it with those of `wanted` flags this natsmud has,
/// noting in `result` the flags and the nats-server version.
pub async fn start_stack(
    args: &ScenarioArgs,
    result: &mut ScenarioResult,
    world: &world::Generated,
    wanted: &[(&str, &str)],
) -> Result<Stack> {
    let work = &args.work_dir;
    result.nats_servers = usize::from(args.nats_servers);
    result.subscriptions = args.subscriptions;
    let pid_file = work.join("pids");
    let world_dir = work.join("world");
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir)?;
    world::validate(world)?;
    world.write(&world_dir)?;

    result.nats_server_version = Command::new(&args.nats_server)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let worker_threads = args.node_worker_threads.unwrap_or(if result.nodes > 1 {
        shared_machine_worker_threads()
    } else {
        0
    });
    let (flags, missing) =
        supported_flags(&args.natsmud, wanted, worker_threads, &args.server_args).await?;
    result.server_flags = flags.clone();
    result.server_flags.extend(args.server_args.iter().cloned());
    result.server_flags_missing = missing;
    if !result.server_flags_missing.is_empty() {
        eprintln!(
            "bench: this natsmud has no {}; running without",
            result.server_flags_missing.join(", ")
        );
    }

    let (nats, nats_urls, nats_monitors) = if args.nats_servers > 1 {
        let cluster = crate::nats_cluster::start(
            &args.nats_server,
            &work.join("nats"),
            usize::from(args.nats_servers),
            &pid_file,
        )
        .await?;
        (cluster.servers, cluster.urls, cluster.monitors)
    } else {
        let (nats, url) = start_nats(&args.nats_server, &work.join("nats"), &pid_file).await?;
        (vec![nats], vec![url], Vec::new())
    };
    // Flags every node shares beyond SERVER_FLAGS, noted with them in the results.
    let mut shared: Vec<String> = Vec::new();
    if args.nats_servers > 1 {
        shared.push(format!("--nats-replicas={}", args.nats_servers));
    }
    if let Some(mode) = args.subscriptions {
        shared.push(format!("--subscriptions={}", mode.name()));
    }
    result.server_flags.extend(shared.iter().cloned());
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    // One account database for every node (a player registered through one logs in at
    // any); each node keeps its own data directory.
    let database_url = format!("sqlite://{}", data_dir.join("natsmud.db").display());
    let mut nodes: Vec<Managed> = Vec::new();
    let mut servers = Vec::new();
    let mut node_nats_urls = Vec::new();
    for k in 0..result.nodes {
        let port = free_port()?;
        let nats_url = &nats_urls[k % nats_urls.len()];
        let node_dir = data_dir.join(format!("node-{}", k + 1));
        std::fs::create_dir_all(&node_dir)?;
        let mut command = Command::new(&args.natsmud);
        command
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--nats-url", nats_url])
            .args(["--node-id", &format!("node-{}", k + 1)])
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["--database-url", &database_url])
            // In the environment rather than on the command line, which /proc shows to all.
            .env("NATSMUD_JWT_SECRET", &secret)
            .arg("--world")
            .arg(&world_dir)
            // Every node knows the world's tick; the one holding the tick lease publishes it.
            .args(["--tick-interval-ms", "10000"])
            .args(&flags)
            .args(&shared)
            .args(&args.server_args);
        let log = work.join("logs").join(format!("natsmud-{}.log", k + 1));
        let mut node = Managed::spawn(
            &format!("natsmud-{}", k + 1),
            &mut command,
            &log,
            false,
            &pid_file,
        )?;
        let url = format!("http://127.0.0.1:{port}");
        // The first node creates the database; the others start once it is up.
        if k == 0 {
            wait_healthy(&mut node, &url).await?;
        }
        nodes.push(node);
        servers.push(url);
        node_nats_urls.push(nats_url.clone());
    }
    for (node, url) in nodes.iter_mut().zip(&servers).skip(1) {
        wait_healthy(node, url).await?;
    }
    eprintln!(
        "bench: {} nats-server(s) ({}) and {} natsmud node(s) up",
        nats.len(),
        result.nats_server_version,
        nodes.len()
    );
    Ok(Stack {
        nats,
        nats_monitors,
        nodes,
        servers,
        node_nats_urls,
        world_dir,
        data_dir,
        pid_file,
    })
}

/// Runs the scenario, filling `result` as it goes (so a failure still reports how far it
/// got). Every process started here is stopped before returning.
pub async fn run(args: &ScenarioArgs, result: &mut ScenarioResult) -> Result<()> {
    match args.mode {
        Mode::Crowd => return crate::crowd::run(args, result).await,
        Mode::Auth => return crate::auth_wave::run(args, result).await,
        Mode::Active | Mode::Idle => {}
    }
    fresh_work_dir(&args.work_dir)?;
    let generated = world::generate(args.load.players as usize, args.load.seed);
    let stack = start_stack(args, result, &generated, SERVER_FLAGS).await?;
    // Per-node NATS traffic matters once there are several nodes to compare.
    let probe = (stack.nodes.len() > 1 || stack.nats.len() > 1).then(|| {
        crate::cluster_probe::Probe::start(
            stack.servers.clone(),
            stack.node_nats_urls.clone(),
            stack.nats_monitors.clone(),
        )
    });
    let outcome = coordinate(
        &args.load,
        args.mode,
        &stack.target(),
        &args.work_dir,
        &stack.pid_file,
    )
    .await;
    if let Some(probe) = probe {
        let probed = probe.finish().await;
        if let Ok(outcome) = &outcome
            && let Some(plan) = &outcome.plan
        {
            result.cluster = crate::cluster_probe::figures(&probed, plan);
        }
    }
    stack.stop().await;
    result.outcome = Some(outcome?);
    result.status = "ok".into();
    Ok(())
}
