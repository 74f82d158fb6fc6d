//! `natsmud-bench`: natsmud's load generator and benchmark (issue 5, ../shared/BENCHMARK.md).
//!
//! - `world`: writes the seeded benchmark world for `natsmud --world DIR`.
//! - `run` / `idle`: drive running servers with the standard workload, or with idle
//!   players, and write the results as JSON.
//! - `scenario`: the same from scratch — fresh nats-server, fresh natsmud node(s), fresh
//!   data — and everything stopped at the end; also the crowded room (`--mode crowd`) and
//!   the login wave (`--mode auth`).
//! - `report`: docs/benchmarks.md and its plots from scenario results.
//! - `resume`: reconnecting after a drop — how long a client waits for what it missed,
//!   one at a time and in a storm of simultaneous resumes (fresh servers, like `scenario`).
//! - `telnet`: the same `say`s delivered to WebSocket and to telnet players side by side
//!   (fresh servers, like `scenario`).
//! - `floor`: the kernel's own cost of a fan-out here (no natsmud involved): the lower
//!   bound the figures are compared with.
//! - `worker` (internal): one load-generator process of a run.

mod analysis;
mod auth_report;
mod auth_wave;
mod clock;
mod cluster_probe;
mod cluster_report;
mod crowd;
mod crowd_figures;
mod crowd_report;
mod floor;
mod load;
mod nats_cluster;
mod players;
mod procs;
mod proto;
mod provenance;
mod records;
mod report;
mod resume;
mod rss_sampler;
mod run_result;
mod scenario;
mod telnet;
mod timed;
mod worker;
mod workload;
mod world;

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};

use crate::load::{LoadArgs, Mode, Target};
use crate::scenario::{ScenarioArgs, ScenarioResult};

#[derive(Parser)]
#[command(
    name = "natsmud-bench",
    version,
    about = "natsmud's load generator and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the seeded benchmark world (world.json + zones/*.json).
    World {
        /// Players the world is sized for (about 10 per room).
        #[arg(long)]
        players: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Drive running natsmud node(s) with the standard workload. Start them with the
    /// benchmark's flags (no rate limits or connection caps, cheap password hashing; see
    /// SERVER_FLAGS in scenario.rs), or registration and commands get refused.
    Run(ExternalArgs),
    /// Connect idle players to running node(s): memory per connection, tick fan-out.
    Idle(ExternalArgs),
    /// Start nats-server and natsmud node(s) afresh, run one load, stop them all.
    Scenario(ScenarioArgs),
    /// Write the benchmark report (markdown and PNG plots) from scenario results.
    Report(report::ReportArgs),
    /// Start nats-server and one natsmud node afresh and measure resuming after a drop:
    /// time to get the missed events back, one client at a time and in a storm.
    Resume(resume::ResumeArgs),
    /// Start nats-server and one natsmud node afresh and time the same `say`s at
    /// WebSocket and at telnet recipients, side by side.
    Telnet(telnet::TelnetArgs),
    /// Measure the kernel's own cost of a fan-out: one frame written to each of N
    /// loopback sockets and read back, with no server in between.
    Floor(floor::FloorArgs),
    /// One load-generator process (started by `run`, `idle` and `scenario`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(clap::Args)]
struct ExternalArgs {
    /// Base URL of a natsmud node (repeatable); players are spread over them.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// Pid of a natsmud node, to read its memory and CPU time from /proc (repeatable).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Pid of nats-server, likewise.
    #[arg(long)]
    nats_pid: Option<u32>,
    /// The world the nodes serve (the bench needs its rooms); see `natsmud-bench world`.
    #[arg(long)]
    world: PathBuf,
    /// The nodes' SQLite account database, to place players before they connect.
    #[arg(long)]
    database: Option<PathBuf>,
    /// Scratch directory for the players file and the workers' records.
    #[arg(long, default_value = "target/bench/run")]
    work_dir: PathBuf,
    /// Results file (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Name in the results (default: mode-players).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    load: LoadArgs,
}

/// Runs `work` until it ends or the process is told to stop (Ctrl-C, SIGTERM); either way
/// `work` is dropped before this returns, and with it every child process it started.
async fn interruptible<F: std::future::Future<Output = Result<()>>>(work: F) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
        _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
    }
}

async fn external(args: ExternalArgs, mode: Mode) -> Result<()> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", mode.name(), args.load.players));
    let mut result = ScenarioResult::new(name, mode, &args.load, false, args.servers.len());
    result.ticking_nodes = 0;
    std::fs::create_dir_all(&args.work_dir)?;
    let target = Target {
        servers: args
            .servers
            .iter()
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect(),
        server_pids: args.server_pids.clone(),
        nats_pids: args
            .nats_pid
            .map(|pid| ("nats-server".to_owned(), pid))
            .into_iter()
            .collect(),
        world: args.world.clone(),
        database: args.database.clone(),
    };
    let pid_file = args.work_dir.join("pids");
    let outcome = interruptible(async {
        let outcome =
            load::coordinate(&args.load, mode, &target, &args.work_dir, &pid_file).await?;
        result.outcome = Some(outcome);
        result.status = "ok".into();
        Ok(())
    })
    .await;
    finish(result, outcome, &args.out)
}

fn finish(mut result: ScenarioResult, outcome: Result<()>, out: &std::path::Path) -> Result<()> {
    if let Err(e) = &outcome {
        result.status = "failed".into();
        result.error = Some(format!("{e:#}"));
    }
    result.write(out)?;
    report::print_summary(&result);
    eprintln!("bench: results in {}", out.display());
    outcome
}

fn main() {
    let cli = Cli::parse();
    // A worker is one thread: the coordinator runs as many worker processes as the load
    // needs, and one thread per process spends nothing on cross-thread wake-ups.
    let runtime = match cli.command {
        Cmd::Worker(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("natsmud-bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::World { players, seed, out } => {
            let generated = world::generate(players, seed);
            world::validate(&generated)?;
            generated.write(&out)?;
            eprintln!(
                "bench: wrote {} rooms in {} zones to {}",
                generated.room_count(),
                generated.zones.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Run(args) => external(args, Mode::Active).await,
        Cmd::Idle(args) => external(args, Mode::Idle).await,
        Cmd::Scenario(args) => {
            let nodes = args
                .nodes
                .unwrap_or_else(|| {
                    args.load.players.div_ceil(args.load.per_process.max(1)) as usize
                })
                .max(1);
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", args.mode.name(), args.load.players));
            let mut result = ScenarioResult::new(name, args.mode, &args.load, args.quick, nodes);
            let outcome = interruptible(scenario::run(&args, &mut result)).await;
            finish(result, outcome, &args.out)
        }
        Cmd::Resume(args) => {
            let mut result = resume::ResumeResult::new(&args);
            let outcome = interruptible(resume::run(&args, &mut result)).await;
            run_result::finish(result, outcome, &args.out)
        }
        Cmd::Telnet(args) => {
            let mut result = telnet::TelnetResult::new(&args);
            let outcome = interruptible(telnet::run(&args, &mut result)).await;
            run_result::finish(result, outcome, &args.out)
        }
        Cmd::Report(args) => report::write(&args),
        // Plain threads and blocking sockets: off the runtime's workers.
        Cmd::Floor(args) => tokio::task::spawn_blocking(move || floor::run(&args)).await?,
        Cmd::Worker(args) => {
            worker::run(args).await?;
            // Done and written: leave at once rather than wait for the stdin watcher.
            std::process::exit(0)
        }
    }
}
