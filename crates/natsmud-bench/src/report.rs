//! docs/benchmarks.md and its plots, from scenario result files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::analysis::{Delivery, Latency};
use crate::floor::FloorResult;
use crate::load::Mode;
use crate::procs::Usage;
use crate::scenario::ScenarioResult;
use crate::{auth_report, crowd_report};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Scenario result files, in the order to report them.
    #[arg(long, num_args = 1.., required = true)]
    pub results: Vec<PathBuf>,
    /// The markdown report to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Directory for the PNG plots (linked from the report relative to it).
    #[arg(long, default_value = "docs/bench")]
    pub plots: PathBuf,
    /// The command that produced the results, named at the top of the report.
    #[arg(long, default_value = "scripts/bench")]
    pub command: String,
    /// Scenarios that were asked for but produced no results file, with why (repeatable,
    /// `name: reason`).
    #[arg(long = "missing")]
    pub missing: Vec<String>,
    /// Results of `natsmud-bench floor` (JSON), reported as the kernel's lower bound.
    #[arg(long)]
    pub floor: Option<PathBuf>,
}

/// Thousands with commas: 20000 → "20,000".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(crate) fn ok(result: &ScenarioResult) -> bool {
    result.status == "ok" && result.outcome.is_some()
}

/// Lost, duplicated, reordered and echoed events of a scenario (all must be zero).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Faults {
    pub missing: u64,
    pub extra: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub echoes: u64,
    pub direct_gaps: u64,
}

impl Faults {
    pub fn of(result: &ScenarioResult) -> Self {
        let Some(o) = &result.outcome else {
            return Self::default();
        };
        let t = o.analysis.totals();
        Self {
            missing: t.missing,
            extra: t.extra,
            duplicates: t.duplicates + o.counters.duplicate_sequence,
            out_of_order: o.counters.out_of_order,
            echoes: o.counters.echoes,
            direct_gaps: o.counters.direct_gaps,
        }
    }

    pub fn total(&self) -> u64 {
        self.missing
            + self.extra
            + self.duplicates
            + self.out_of_order
            + self.echoes
            + self.direct_gaps
    }
}

pub(crate) fn latency(result: &ScenarioResult, kind: &str) -> Option<Latency> {
    let l = result.outcome.as_ref()?.analysis.latency.get(kind)?.clone();
    (l.count > 0).then_some(l)
}

pub fn print_summary(result: &ScenarioResult) {
    eprintln!(
        "bench: {} — {}{}",
        result.name,
        result.status,
        result
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    auth_report::print_summary(result);
    let Some(o) = &result.outcome else { return };
    eprintln!(
        "  players {}/{} connected, {} node(s), {} worker(s), {} disconnect(s)",
        o.setup.connected,
        o.setup.players_requested,
        result.nodes,
        o.setup.worker_processes,
        o.disconnects
    );
    for kind in ["room_event", "say", "presence", "global", "tick"] {
        if let Some(l) = latency(result, kind) {
            eprintln!(
                "  {kind:<10} n={:<9} p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms",
                l.count,
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms)
            );
        }
    }
    let f = Faults::of(result);
    let t = o.analysis.totals();
    eprintln!(
        "  deliveries {:.0}/s; expected {} received {} missing {} extra {} duplicates {} out-of-order {} echoes {} direct gaps {}",
        o.analysis.received_per_sec,
        t.expected,
        t.received,
        f.missing,
        f.extra,
        f.duplicates,
        f.out_of_order,
        f.echoes,
        f.direct_gaps
    );
    let r = &o.resources;
    eprintln!(
        "  server RSS {} MiB, CPU {:.0}% of a core; nats {} MiB, {:.0}%; generator {:.0}%",
        mib(r.server.rss_end_kib),
        r.server.cpu_pct_of_core,
        mib(r.nats.rss_end_kib),
        r.nats.cpu_pct_of_core,
        r.generator.cpu_pct_of_core
    );
    if let Some(m) = &o.idle_memory {
        eprintln!(
            "  idle: {:.1} KiB server RSS per connection",
            m.rss_per_connection_kib
        );
    }
    crowd_report::print_summary(result);
}

pub fn write(args: &ReportArgs) -> Result<()> {
    let mut results = Vec::new();
    let mut unreadable = args.missing.clone();
    for path in &args.results {
        match std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice::<ScenarioResult>(&b).map_err(Into::into))
        {
            Ok(r) => results.push(r),
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    // Active scenarios first, then idle, each kind by players; the other shapes after them.
    results.sort_by_key(|r| (!r.is_standard(), r.mode != Mode::Active, r.players));
    std::fs::create_dir_all(&args.plots)?;
    let plots = match plot_all(&results, &args.plots) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: no plots: {e:#}");
            Vec::new()
        }
    };
    let rel = relative_dir(&args.out, &args.plots);
    let floor = match &args.floor {
        Some(path) => match std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice::<FloorResult>(&b).map_err(Into::into))
        {
            Ok(floor) => Some(floor),
            Err(e) => {
                unreadable.push(format!("{}: {e}", path.display()));
                None
            }
        },
        None => None,
    };
    let mut text = render(&results, &unreadable, args, &plots, &rel);
    if let Some(floor) = &floor {
        text = insert_before(&text, "## Overview", &render_floor(floor, &results));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}

/// `section` placed before the first line that is `heading`, or at the end.
fn insert_before(text: &str, heading: &str, section: &str) -> String {
    match text.find(&format!("\n{heading}\n")) {
        Some(at) => format!("{}\n{section}{}", &text[..at], &text[at..]),
        None => format!("{text}\n{section}"),
    }
}

/// The kernel's own cost of a fan-out, and what it implies for the fan-out targets.
fn render_floor(floor: &FloorResult, results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    let Some(median) = floor.median() else {
        return s;
    };
    let cores = floor.provenance.machine.cpus.max(1) as f64;
    let bound_ms = |players: u64| players as f64 * median.total_cpu_us / cores / 1000.0;
    let _ = writeln!(
        s,
        "## The kernel's floor
"
    );
    let _ = writeln!(
        s,
        "A tick (or a `global`) is one small frame written to every player's socket: one TCP \
         `send` per recipient, whatever the server does around it. `{}` measures just that, with \
         no natsmud, NATS, WebSocket or JSON in the way: {} loopback connections, {} sender \
         thread(s) writing one {}-byte frame to each, and one receiver thread (a tokio task per \
         socket, as in a load-generator worker) stamping each arrival. Median of {} rounds \
         (commit `{}`, {}):\n",
        floor.provenance.command,
        thousands(floor.sockets as u64),
        floor.senders,
        floor.frame_bytes,
        floor.rounds.len(),
        floor.provenance.commit,
        floor.provenance.date
    );
    let _ = writeln!(
        s,
        "| sockets | receipt p50 / p99 / max (ms) | CPU per delivery: send | send + receive |\n| --- | --- | --- | --- |"
    );
    let _ = writeln!(
        s,
        "| {} | {:.1} / {:.1} / {:.1} | {:.1} µs | {:.1} µs |\n",
        thousands(floor.sockets as u64),
        median.p50_ms,
        median.p99_ms,
        median.max_ms,
        median.send_cpu_us,
        median.total_cpu_us
    );
    let _ = write!(
        s,
        "Every delivery costs about {:.1} µs of CPU on this machine for the TCP send and a \
         minimal receive alone. With {} cores shared by server and load generator, reaching N \
         players takes at least N × {:.1} µs / {}: **{:.0} ms for 10,000, {:.0} ms for 20,000 \
         and {:.0} ms for 100,000** — before natsmud parses, routes or frames anything, and \
         before the load generator decodes what it gets. ",
        median.total_cpu_us,
        cores,
        median.total_cpu_us,
        cores,
        bound_ms(10_000),
        bound_ms(20_000),
        bound_ms(100_000)
    );
    let below: Vec<&str> = [
        (bound_ms(20_000) > 50.0, "the 50 ms tick target at 20k"),
        (bound_ms(100_000) > 250.0, "the 250 ms tick target at 100k"),
    ]
    .into_iter()
    .filter_map(|(below, what)| below.then_some(what))
    .collect();
    if !below.is_empty() {
        let _ = write!(
            s,
            "So {} cannot be met on this machine with everything co-located. ",
            below.join(" and ")
        );
    }
    let _ = writeln!(s, "The scenarios' tick p99 against this floor:\n");
    let _ = writeln!(
        s,
        "| scenario | tick p99 (ms) | kernel floor for that many players (ms) | ratio |\n| --- | --- | --- | --- |"
    );
    // The floor bounds the standard fan-outs; a crowd's ticks reach 100 sockets busy with
    // its own bursts, which is another question.
    for r in results.iter().filter(|r| ok(r) && r.is_standard()) {
        let Some(tick) = r
            .outcome
            .as_ref()
            .and_then(|o| o.analysis.latency.get("tick"))
            .filter(|t| t.count > 0)
        else {
            continue;
        };
        let bound = bound_ms(u64::from(r.players));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.1}× |",
            r.name,
            tick.p99_ms,
            bound,
            tick.p99_ms / bound.max(0.001)
        );
    }
    s.push('\n');
    s
}

/// The plots directory as the report links it.
fn relative_dir(report: &Path, plots: &Path) -> String {
    let base = report.parent().unwrap_or(Path::new(""));
    match plots.strip_prefix(base) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => plots.display().to_string(),
    }
}

pub(crate) struct Target<'a> {
    pub figure: &'a str,
    pub target: &'a str,
    pub measured: String,
    pub verdict: &'a str,
}

pub(crate) fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "**pass**",
        Some(false) => "**miss**",
        None => "not measured",
    }
}

fn targets(results: &[ScenarioResult]) -> Vec<Target<'static>> {
    // The targets are the standard shape's: one nats-server.
    let good: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| ok(r) && r.nats_servers <= 1)
        .collect();
    let active: Vec<&&ScenarioResult> = good.iter().filter(|r| r.mode == Mode::Active).collect();
    let idle: Vec<&&ScenarioResult> = good.iter().filter(|r| r.mode == Mode::Idle).collect();
    let mut out = Vec::new();

    // Concurrent active players: the largest scenario where everyone connected and stayed.
    let held = active
        .iter()
        .filter_map(|r| {
            let o = r.outcome.as_ref()?;
            (o.setup.connected == r.players && o.disconnects == 0).then_some(r.players)
        })
        .max();
    let tried_20k = results
        .iter()
        .any(|r| r.mode == Mode::Active && r.players >= 20_000);
    out.push(Target {
        figure: "concurrent active players on 2 cores (all connected, none dropped)",
        target: "≥ 20,000",
        measured: held.map_or("—".into(), |n| {
            format!("{} (largest run held)", thousands(u64::from(n)))
        }),
        verdict: verdict(tried_20k.then(|| held.is_some_and(|n| n >= 20_000))),
    });
    let at_20k = active.iter().find(|r| r.players >= 20_000);
    let room = at_20k.and_then(|r| latency(r, "room_event"));
    out.push(Target {
        figure: "room-event latency p99 at 20k",
        target: "≤ 20 ms",
        measured: room
            .as_ref()
            .map_or("—".into(), |l| format!("{} ms", ms(l.p99_ms))),
        verdict: verdict(room.map(|l| l.p99_ms <= 20.0)),
    });
    let tick = at_20k.and_then(|r| latency(r, "tick"));
    out.push(Target {
        figure: "tick fan-out p99 at 20k",
        target: "≤ 50 ms",
        measured: tick
            .as_ref()
            .map_or("—".into(), |l| format!("{} ms", ms(l.p99_ms))),
        verdict: verdict(tick.map(|l| l.p99_ms <= 50.0)),
    });
    let memory = idle
        .iter()
        .filter(|r| r.players >= 10_000)
        .min_by_key(|r| r.players)
        .and_then(|r| Some((r.players, r.outcome.as_ref()?.idle_memory.clone()?)));
    out.push(Target {
        figure: "server RSS per idle connection (at 10k idle)",
        target: "≤ 16 KiB",
        measured: memory.as_ref().map_or("—".into(), |(n, m)| {
            format!(
                "{:.1} KiB (at {})",
                m.rss_per_connection_kib,
                thousands(u64::from(*n))
            )
        }),
        verdict: verdict(memory.map(|(_, m)| m.rss_per_connection_kib <= 16.0)),
    });
    let big = idle.iter().max_by_key(|r| r.players);
    let big_tick = big.and_then(|r| latency(r, "tick"));
    let reached = big.and_then(|r| Some((r.players, r.outcome.as_ref()?)));
    let tried_100k = results
        .iter()
        .any(|r| r.mode == Mode::Idle && r.players >= 100_000);
    let failed_100k = results
        .iter()
        .find(|r| r.mode == Mode::Idle && r.players >= 100_000 && !ok(r));
    out.push(Target {
        figure: "connected idle players on 2 cores, ticks reaching all, p99",
        target: "100,000, ≤ 250 ms",
        measured: match (&reached, &big_tick) {
            (Some((_, o)), Some(l)) => format!(
                "{} connected, tick p99 {} ms, {} tick deliveries missing",
                thousands(u64::from(o.setup.connected)),
                ms(l.p99_ms),
                thousands(
                    o.analysis
                        .deliveries
                        .get("game_tick")
                        .map_or(0, |d| d.missing)
                )
            ),
            (Some((_, o)), None) => format!(
                "{} connected, no tick measured",
                thousands(u64::from(o.setup.connected))
            ),
            _ => "—".into(),
        } + &failed_100k.map_or(String::new(), |r| {
            format!(
                "; the {}-player run failed: {}",
                thousands(u64::from(r.players)),
                r.error
                    .as_deref()
                    .unwrap_or("no result")
                    .lines()
                    .next()
                    .unwrap_or("")
            )
        }),
        verdict: verdict(tried_100k.then(|| {
            reached.is_some_and(|(_, o)| {
                o.setup.connected >= 100_000
                    && big_tick.as_ref().is_some_and(|l| l.p99_ms <= 250.0)
                    && o.analysis
                        .deliveries
                        .get("game_tick")
                        .is_some_and(|d| d.missing == 0)
            })
        })),
    });
    out.extend(crowd_report::targets(results));
    out.extend(auth_report::targets(results));
    let mut faults = Faults::default();
    for r in &good {
        let f = Faults::of(r);
        faults.missing += f.missing;
        faults.extra += f.extra;
        faults.duplicates += f.duplicates;
        faults.out_of_order += f.out_of_order;
        faults.echoes += f.echoes;
        faults.direct_gaps += f.direct_gaps;
    }
    out.push(Target {
        figure: "lost / duplicated / reordered / echoed events (all scenarios)",
        target: "0",
        measured: format!(
            "{} lost, {} extra, {} duplicated, {} reordered, {} echoed, {} reply gaps",
            thousands(faults.missing),
            thousands(faults.extra),
            thousands(faults.duplicates),
            thousands(faults.out_of_order),
            thousands(faults.echoes),
            thousands(faults.direct_gaps)
        ),
        verdict: verdict((!good.is_empty()).then_some(faults.total() == 0)),
    });
    out
}

fn render(
    results: &[ScenarioResult],
    unreadable: &[String],
    args: &ReportArgs,
    plots: &[(String, String)],
    plot_dir: &str,
) -> String {
    let mut s = String::new();
    let quick = results.iter().any(|r| r.quick);
    let first = results.first();
    let _ = writeln!(s, "# natsmud benchmarks\n");
    if quick {
        let _ = writeln!(
            s,
            "> **Quick run.** This report comes from `{}`: a smoke test with few players and short \
             windows, which shows that the benchmark works end to end. Its figures are not the \
             benchmark's; run `scripts/bench` (without `--quick`) on a quiet machine for those.\n",
            args.command
        );
    }
    let _ = writeln!(
        s,
        "Generated by `{}`, which builds the release binaries, runs every scenario below from \
         scratch and writes this page and its plots. The standard workload and the targets are \
         those of `../shared/BENCHMARK.md`; the load generator is the `natsmud-bench` crate.\n",
        args.command
    );
    if let Some(r) = first {
        let m = &r.provenance.machine;
        let _ = writeln!(
            s,
            "- **Machine:** {} cores ({}), {} GiB memory, Linux {}; open-files limit {} per process.",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.open_files_limit.map_or("unknown".into(), thousands)
        );
        let _ = writeln!(
            s,
            "- **Commit:** `{}`; **date:** {} (each scenario below names its own).",
            r.provenance.commit, r.provenance.date
        );
        let _ = writeln!(
            s,
            "- **Co-located:** nats-server, every natsmud node and every load-generator process \
             run on this one machine and share its {} cores; the generator's own CPU time is \
             reported with each scenario.",
            m.cpus
        );
        let _ = writeln!(
            s,
            "- **Processes:** the open-files limit ({}) is a hard limit here and cannot be raised \
             (no CAP_SYS_RESOURCE), so one process holds at most about 19,900 sockets. Scenarios \
             above {} players per process therefore run several natsmud nodes sharing one \
             nats-server and one account database (one of them, the holder of the tick lease, \
             publishes the game tick; each node receives through NATS the events its players can \
             see{}), \
             and several load-generator processes. Each scenario says how many.\n",
            m.open_files_limit.map_or("unknown".into(), thousands),
            thousands(u64::from(r.load.per_process)),
            worker_threads_note(results)
        );
    }
    for u in unreadable {
        let _ = writeln!(s, "- **Not run / no results:** {u}");
    }
    if !unreadable.is_empty() {
        s.push('\n');
    }

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| figure | target | measured | result |\n| --- | --- | --- | --- |"
    );
    for t in targets(results) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.figure, t.target, t.measured, t.verdict
        );
    }
    s.push('\n');

    let standard: Vec<&ScenarioResult> = results.iter().filter(|r| r.is_standard()).collect();
    let _ = writeln!(s, "## Overview\n");
    if standard.is_empty() {
        let _ = writeln!(
            s,
            "No scenario of the standard workload in these results; the sections below have their own figures.\n"
        );
    } else {
        overview_table(&mut s, &standard);
    }

    if !plots.is_empty() {
        let _ = writeln!(s, "## Plots\n");
        for (file, caption) in plots {
            let _ = writeln!(s, "![{caption}]({plot_dir}/{file})\n");
        }
    }

    let mut compared = false;
    for r in results {
        if r.nats_servers > 1 && !compared {
            // Hand-written observations on the cluster runs, kept beside their results.
            let notes = std::fs::read_to_string(args.plots.join("cluster-notes.md")).ok();
            crate::cluster_report::comparison(&mut s, results, &args.command, notes.as_deref());
            compared = true;
        }
        scenario_section(&mut s, r);
    }
    resume_section(&mut s, &args.plots);
    method(&mut s);
    s
}

/// The resume measurements (`natsmud-bench resume`), when `scripts/bench` ran them: they
/// live in a folder of their own, as `report` takes every JSON file of docs/bench/ for a
/// scenario's results.
fn resume_section(s: &mut String, plots: &std::path::Path) {
    let path = plots.join("resume").join("resume.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    match serde_json::from_str::<crate::resume::ResumeResult>(&text) {
        Ok(result) => s.push_str(&crate::resume::markdown(&result)),
        Err(error) => {
            let _ = writeln!(
                s,
                "## Resuming after a drop\n\n{} could not be read: {error}\n",
                path.display()
            );
        }
    }
}

/// One row per standard-workload scenario.
fn overview_table(s: &mut String, standard: &[&ScenarioResult]) {
    let _ = writeln!(
        s,
        "| scenario | players connected | nodes | generator processes | room event p50 / p99 / p99.9 (ms) | tick p50 / p99 / max (ms) | deliveries/s | server RSS (MiB) | server CPU (% of a core) | faults |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in standard.iter().copied() {
        let Some(o) = &r.outcome else {
            let _ = writeln!(
                s,
                "| {} | failed: {} | {} | | | | | | | |",
                r.name,
                r.error
                    .as_deref()
                    .unwrap_or("no result")
                    .replace('|', "/")
                    .lines()
                    .next()
                    .unwrap_or(""),
                r.nodes
            );
            continue;
        };
        let room = latency(r, "room_event").map_or("—".into(), |l| {
            format!("{} / {} / {}", ms(l.p50_ms), ms(l.p99_ms), ms(l.p999_ms))
        });
        let tick = latency(r, "tick").map_or("—".into(), |l| {
            format!("{} / {} / {}", ms(l.p50_ms), ms(l.p99_ms), ms(l.max_ms))
        });
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
            r.name,
            thousands(u64::from(o.setup.connected)),
            thousands(u64::from(o.setup.players_requested)),
            r.nodes,
            o.setup.worker_processes,
            room,
            tick,
            thousands(o.analysis.received_per_sec.round() as u64),
            mib(o.resources.server.rss_end_kib),
            o.resources.server.cpu_pct_of_core,
            thousands(Faults::of(r).total())
        );
    }
    s.push('\n');
}

fn usage_row(s: &mut String, name: &str, u: &Usage) {
    let _ = writeln!(
        s,
        "| {name} | {} | {} | {} | {} | {:.1} | {:.0} |",
        u.processes,
        mib(u.rss_start_kib),
        mib(u.rss_end_kib),
        mib(u.rss_max_kib),
        u.cpu_secs,
        u.cpu_pct_of_core
    );
}

fn scenario_section(s: &mut String, r: &ScenarioResult) {
    let mode = match r.mode {
        Mode::Active => "standard workload",
        Mode::Idle => "idle players, game tick only",
        Mode::Crowd => return crowd_report::section(s, r),
        Mode::Auth => return auth_report::section(s, r),
    };
    let _ = writeln!(
        s,
        "## Scenario `{}`: {} players, {mode}{}{}\n",
        r.name,
        thousands(u64::from(r.players)),
        crate::cluster_report::shape(r),
        if r.quick { " (quick run)" } else { "" }
    );
    provenance_lines(s, r);
    let Some(o) = &r.outcome else {
        failed_line(s, r);
        return;
    };
    let st = &o.setup;
    processes_line(s, r, st);
    flags_line(s, r);
    let _ = writeln!(
        s,
        "- **World:** {} rooms in {} zones ({} sub-zones), seed {}; **placement:** {}.",
        thousands(st.rooms as u64),
        st.zones,
        st.sub_zones,
        r.load.seed,
        st.placement
    );
    let w = &r.load.workload;
    if r.mode == Mode::Active {
        let _ = writeln!(
            s,
            "- **Workload:** each player moves every {} s, says every {} s; one player in {} speaks on `global` every {} s; random phases. {} s warm-up, **{} s measured**, {} s drain.",
            w.move_every,
            w.say_every,
            w.global_one_in,
            w.global_every,
            r.load.warmup,
            r.load.duration,
            r.load.drain
        );
    } else {
        let _ = writeln!(
            s,
            "- **Workload:** none; players only receive the game tick. {} s settle, **{} s measured**.",
            r.load.warmup, r.load.duration
        );
    }
    players_line(s, st);

    let _ = writeln!(
        s,
        "| latency (ms) | samples | p50 | p90 | p99 | p99.9 | max | mean |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (kind, label) in [
        (
            "room_event",
            "room events (say + presence), command sent → received",
        ),
        (
            "room_event_same_node",
            "room events, sender and recipient on the same node",
        ),
        (
            "room_event_cross_node",
            "room events across nodes (sender on another node)",
        ),
        ("say", "`say` → each listener"),
        (
            "presence",
            "move → `player_entered`/`player_left` at each occupant",
        ),
        ("global", "`global` → everyone"),
        ("tick", "game tick: scheduled time → received, every player"),
    ] {
        if let Some(l) = latency(r, kind) {
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(l.count),
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms),
                ms(l.mean_ms)
            );
        }
    }
    s.push('\n');
    deliveries(s, r, o);
    frame_checks(s, o);
    resources_table(s, o);
    if let Some(c) = &r.cluster {
        crate::cluster_report::details(s, r, o, c);
    }
    if let Some(m) = &o.idle_memory {
        let _ = writeln!(
            s,
            "**Idle memory:** natsmud RSS (all nodes) {} MiB with the players registered but not connected, {} MiB with {} connected at the end of the window: **{:.1} KiB per connection**.\n",
            mib(m.server_rss_before_kib),
            mib(m.server_rss_after_kib),
            thousands(u64::from(m.connected)),
            m.rss_per_connection_kib
        );
    }
}

/// The command, commit, date and machine of a scenario (markdown bullets).
pub(crate) fn provenance_lines(s: &mut String, r: &ScenarioResult) {
    let _ = writeln!(s, "- **Command:** `{}`", r.provenance.command);
    let _ = writeln!(
        s,
        "- **Commit:** `{}`; **date:** {}; **machine:** {} cores, {} GiB",
        r.provenance.commit,
        r.provenance.date,
        r.provenance.machine.cpus,
        r.provenance.machine.memory_gib
    );
}

pub(crate) fn failed_line(s: &mut String, r: &ScenarioResult) {
    let _ = writeln!(
        s,
        "- **Failed:** {}\n",
        r.error.as_deref().unwrap_or("no result").replace('\n', " ")
    );
}

pub(crate) fn processes_line(s: &mut String, r: &ScenarioResult, st: &crate::load::Setup) {
    let _ = writeln!(
        s,
        "- **Processes:** {} natsmud node(s) ({} publishing ticks every 10 s), {} ({}), {} load-generator worker process(es) plus the coordinator; client sockets bound to {} loopback source addresses.",
        r.nodes,
        r.ticking_nodes,
        if r.nats_servers > 1 {
            format!("{} nats-servers in one cluster", r.nats_servers)
        } else {
            "1 nats-server".to_owned()
        },
        if r.nats_server_version.is_empty() {
            "version unknown"
        } else {
            r.nats_server_version.as_str()
        },
        st.worker_processes,
        st.source_addresses
    );
}

pub(crate) fn flags_line(s: &mut String, r: &ScenarioResult) {
    let _ = writeln!(
        s,
        "- **Server flags:** `{}`{}",
        r.server_flags.join(" "),
        if r.server_flags_missing.is_empty() {
            String::new()
        } else {
            format!(
                " (not available in this build, left out: `{}`)",
                r.server_flags_missing.join(" ")
            )
        }
    );
}

pub(crate) fn players_line(s: &mut String, st: &crate::load::Setup) {
    let _ = writeln!(
        s,
        "- **Players:** {} requested, {} registered in {:.1} s, {} connected in {:.1} s{}{}.\n",
        thousands(u64::from(st.players_requested)),
        thousands(u64::from(st.registered)),
        st.registration_secs,
        thousands(u64::from(st.connected)),
        st.connect_secs,
        if st.registration_failures.is_empty() {
            String::new()
        } else {
            format!("; registration failures: {:?}", st.registration_failures)
        },
        if st.connect_failures.is_empty() {
            String::new()
        } else {
            format!("; connection failures: {:?}", st.connect_failures)
        }
    );
}

/// Events received, commands sent, and the expected-vs-received table.
pub(crate) fn deliveries(s: &mut String, r: &ScenarioResult, o: &crate::load::RunOutcome) {
    let a = &o.analysis;
    let by_kind: Vec<String> = a
        .received_per_sec_by_kind
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    let _ = writeln!(
        s,
        "**Deliveries:** {} events received in the window, {:.0}/s ({}). Commands sent in the window: {}; failed {}, unanswered {}.\n",
        thousands(a.received_in_window),
        a.received_per_sec,
        by_kind.join(", "),
        if a.commands.is_empty() {
            "none".to_owned()
        } else {
            a.commands
                .iter()
                .map(|(k, v)| format!("{k} {}", thousands(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        },
        a.commands_failed,
        a.commands_unconfirmed
    );
    let _ = writeln!(
        s,
        "| expected vs received | events | checked | recipients not checked (entered/left while it was routed, ±{} ms) | expected deliveries | received | missing | extra | duplicates |",
        r.load.boundary_ms
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |s: &mut String, name: &str, d: &Delivery| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(d.events),
            thousands(d.checked),
            thousands(d.uncertain),
            thousands(d.expected),
            thousands(d.received),
            thousands(d.missing),
            thousands(d.extra),
            thousands(d.duplicates)
        );
    };
    for (name, d) in &a.deliveries {
        row(s, name, d);
    }
    row(s, "**all**", &a.totals());
    s.push('\n');
}

/// The per-frame checks and the load generator's own delay.
pub(crate) fn frame_checks(s: &mut String, o: &crate::load::RunOutcome) {
    let a = &o.analysis;
    let c = &o.counters;
    let errors: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let closes: Vec<String> = o
        .close_reasons
        .iter()
        .map(|(k, v)| format!("`{k}` × {v}"))
        .collect();
    let _ = writeln!(
        s,
        "**Checks on every frame:** {} frames; duplicate sequence numbers {}, out of order {}, own events echoed {}, gaps in direct replies {}, unreadable frames {}, frames before `game_state` {}, room mismatches {}, presence events matching no move {}, players joining/leaving during the window {}, moves skipped (previous one unanswered) {}. Error frames: {}. Disconnects: {}{}.\n",
        thousands(c.frames),
        c.duplicate_sequence,
        c.out_of_order,
        c.echoes,
        c.direct_gaps,
        c.unparsed,
        c.before_game_state,
        c.room_mismatch,
        a.unattributed_presence,
        a.churn_events,
        c.moves_skipped,
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        },
        o.disconnects,
        if closes.is_empty() {
            String::new()
        } else {
            format!(" ({})", closes.join(", "))
        }
    );
    let _ = writeln!(
        s,
        "**Load generator's own delay** (kernel received a frame → generator read it; not part of the latencies above): mean {} ms, max {} ms; {} socket reads had no kernel timestamp and count from when they were read.\n",
        ms(c.read_lag_sum_us as f64 / c.frames.max(1) as f64 / 1000.0),
        ms(c.read_lag_max_us as f64 / 1000.0),
        thousands(c.unstamped_reads)
    );
}

pub(crate) fn resources_table(s: &mut String, o: &crate::load::RunOutcome) {
    let _ = writeln!(
        s,
        "| resources in the window | processes | RSS start (MiB) | RSS end (MiB) | RSS max (MiB) | CPU (s) | CPU (% of a core) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    usage_row(s, "natsmud (all nodes)", &o.resources.server);
    usage_row(s, "nats-server", &o.resources.nats);
    usage_row(s, "load generator", &o.resources.generator);
    s.push('\n');
}

/// How many worker threads the co-located nodes ran, from their flags.
fn worker_threads_note(results: &[ScenarioResult]) -> String {
    let Some(shared) = results.iter().find(|r| r.nodes > 1) else {
        return String::new();
    };
    match shared
        .server_flags
        .iter()
        .rev()
        .find_map(|f| f.strip_prefix("--worker-threads="))
    {
        Some(n) => format!(
            "; each node runs {n} worker threads (`--worker-threads {n}`), which measured \
             better than one per core for co-located nodes: see docs/performance.md"
        ),
        None => "; each node runs natsmud's default worker threads (one per core)".to_owned(),
    }
}

fn method(s: &mut String) {
    s.push_str(
        "## How it is measured\n\n\
- **One clock.** Every process reads the same real-time clock. A `say` or `global` carries \
its send time in its text (`bench <player> <n> <µs>`); a tick carries its scheduled time \
(`data.timestamp`). A presence event carries nothing of ours: it is matched, after the run, with \
the mover's latest move out of (or into) that room sent before the receipt, from the mover's \
generator process's log. *Received* is when the bytes reached the client socket: the kernel's \
receive timestamp (`SO_TIMESTAMPNS`, the same real-time clock), so the load generator's own \
queueing on the shared cores is not counted against the server; that delay is reported apart \
for each scenario. Latency is receipt minus send, per recipient (HdrHistogram, µs).\n\
- **Window.** After connecting, all players start the workload at one moment with random \
phases; the warm-up is not measured; events sent (ticks scheduled) inside the measured window \
count, and the generator keeps receiving for the drain time after it.\n\
- **Expected vs received.** The coordinator replays every player's room over time (from the \
`game_state` rooms and every move sent) and computes, for each event sent in the window, who \
should receive it: the other occupants of the room (presence, `say`), every connected player \
(`global`, ticks). A player who entered or left the event's room (or joined or left the game) \
while the event could have been routed is not checked for that event, either way: which side of \
such a race it lands on is legitimately either. The spans compared are the move's (sent → \
answered: it took effect in between) and the event's (sent → its last receipt or its sender's \
answer), each widened by the run's margin (`--boundary-ms`, 1 s unless a scenario's table \
says otherwise); at low load that is about that margin around the event, and an overloaded run, whose commands take seconds, widens it by itself (each room sees \
about one arrival and one departure a second under this workload, so this leaves out roughly a \
third of the recipients, more under overload: the tables show how many). Everyone else must \
match exactly: *missing* (expected, not received), *extra* (received, not expected), \
*duplicates* (received twice). The mover's and the speaker's own commands are processed in \
order, so their rooms are known exactly.\n\
- **Checks on every frame.** Sequence numbers must increase strictly per stream (per room for \
room events, the tick number for ticks, the connection's counter for direct replies, which must \
also have no gaps); no player may receive an event whose actor it is.\n\
- **Placement.** All players register first (argon2 set cheap with the server's flags), then \
each one's starting room (uniform at random, seeded) is written to the account database before \
it connects: without that every player would start in the start room and every login would be \
announced to everyone already there. This is setup, not measured.\n\
- **Resources.** RSS (VmRSS) and CPU time (utime + stime) come from /proc for every natsmud \
node, nats-server and every generator process, sampled once a second; CPU is over the measured \
window. Idle memory per connection is (natsmud RSS at the end of the window − natsmud RSS with \
everyone registered but nobody connected) / players connected, summed over nodes. RSS is \
the processes' own memory; the kernel's socket buffers are not in it.\n\
- **Source addresses.** One client address reaches one server port through at most ~28,000 \
ephemeral ports, so client sockets are bound to 127.0.0.2, 127.0.0.3, … before connecting.\n\
\n\
## Reproduce\n\
\n\
- `scripts/bench` runs everything above and rewrites this page (`--quick` for a smoke run of a \
few minutes; `--only active-20000,idle-10000` for some scenarios; `--duration`, `--warmup`, \
`--idle-duration`, `--crowd-duration` for the windows). It takes the open-files limit to its maximum, builds the \
release binaries and installs the pinned nats-server.\n\
- `natsmud-bench scenario --mode active --players N --nats-server BIN …` runs one scenario from \
scratch (`--mode crowd`, `--mode auth` for the crowded room and the login wave); `natsmud-bench world --players N --out DIR` writes the world; `natsmud-bench run` and \
`natsmud-bench idle` drive node(s) you started yourself (`--server URL`, `--server-pid`, \
`--nats-pid`, `--world`, `--database`); `natsmud-bench report` rewrites this page from results \
files. Each has `--help`.\n",
    );
}

struct Series {
    label: String,
    color: plotters::style::RGBColor,
    points: Vec<(f64, f64)>,
}

fn font_bytes() -> Option<&'static [u8]> {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            return Some(Box::leak(bytes.into_boxed_slice()));
        }
    }
    None
}

fn plot_all(results: &[ScenarioResult], dir: &Path) -> Result<Vec<(String, String)>> {
    use plotters::style::full_palette::{BLUE, GREEN, ORANGE, PURPLE, RED};
    let bytes = font_bytes()
        .ok_or_else(|| anyhow!("no TTF font found (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("the font could not be read"))?;
    let good: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| ok(r) && r.is_standard())
        .collect();
    let mut active: Vec<&&ScenarioResult> =
        good.iter().filter(|r| r.mode == Mode::Active).collect();
    active.sort_by_key(|r| r.players);
    let mut idle: Vec<&&ScenarioResult> = good.iter().filter(|r| r.mode == Mode::Idle).collect();
    idle.sort_by_key(|r| r.players);
    let x = |r: &ScenarioResult| f64::from(r.players);
    let lat = |rs: &[&&ScenarioResult], kind: &str, f: fn(&Latency) -> f64| -> Vec<(f64, f64)> {
        rs.iter()
            .filter_map(|r| latency(r, kind).map(|l| (x(r), f(&l))))
            .collect()
    };
    let mut made = Vec::new();
    if !active.is_empty() {
        let series = vec![
            Series {
                label: "room event p50".into(),
                color: BLUE,
                points: lat(&active, "room_event", |l| l.p50_ms),
            },
            Series {
                label: "room event p99".into(),
                color: RED,
                points: lat(&active, "room_event", |l| l.p99_ms),
            },
            Series {
                label: "room event p99.9".into(),
                color: PURPLE,
                points: lat(&active, "room_event", |l| l.p999_ms),
            },
            Series {
                label: "tick fan-out p99".into(),
                color: GREEN,
                points: lat(&active, "tick", |l| l.p99_ms),
            },
        ];
        line_chart(
            &dir.join("latency.png"),
            "Latency vs active players",
            "players",
            "ms",
            &series,
        )?;
        made.push((
            "latency.png".to_owned(),
            "Latency percentiles vs active players".to_owned(),
        ));
        let usage = |f: fn(&crate::load::Resources) -> &Usage| -> Vec<(f64, f64)> {
            active
                .iter()
                .filter_map(|r| Some((x(r), f(&r.outcome.as_ref()?.resources).cpu_pct_of_core)))
                .collect()
        };
        let series = vec![
            Series {
                label: "natsmud (all nodes)".into(),
                color: RED,
                points: usage(|r| &r.server),
            },
            Series {
                label: "nats-server".into(),
                color: BLUE,
                points: usage(|r| &r.nats),
            },
            Series {
                label: "load generator".into(),
                color: ORANGE,
                points: usage(|r| &r.generator),
            },
        ];
        line_chart(
            &dir.join("cpu.png"),
            "CPU vs active players (100% = one core; 2 cores)",
            "players",
            "% of a core",
            &series,
        )?;
        made.push(("cpu.png".to_owned(), "CPU use vs active players".to_owned()));
    }
    let rss = |rs: &[&&ScenarioResult]| -> Vec<(f64, f64)> {
        rs.iter()
            .filter_map(|r| {
                Some((
                    x(r),
                    r.outcome.as_ref()?.resources.server.rss_end_kib as f64 / 1024.0,
                ))
            })
            .collect()
    };
    if !good.is_empty() {
        let series = vec![
            Series {
                label: "natsmud RSS, active".into(),
                color: RED,
                points: rss(&active),
            },
            Series {
                label: "natsmud RSS, idle".into(),
                color: BLUE,
                points: rss(&idle),
            },
        ];
        line_chart(
            &dir.join("rss.png"),
            "natsmud memory (all nodes) vs players",
            "players",
            "MiB",
            &series,
        )?;
        made.push(("rss.png".to_owned(), "natsmud RSS vs players".to_owned()));
    }
    if !idle.is_empty() {
        let series = vec![
            Series {
                label: "tick fan-out p50".into(),
                color: BLUE,
                points: lat(&idle, "tick", |l| l.p50_ms),
            },
            Series {
                label: "tick fan-out p99".into(),
                color: RED,
                points: lat(&idle, "tick", |l| l.p99_ms),
            },
            Series {
                label: "tick fan-out max".into(),
                color: PURPLE,
                points: lat(&idle, "tick", |l| l.max_ms),
            },
        ];
        line_chart(
            &dir.join("idle-tick.png"),
            "Tick fan-out vs idle players",
            "players",
            "ms",
            &series,
        )?;
        made.push((
            "idle-tick.png".to_owned(),
            "Tick fan-out latency vs idle players".to_owned(),
        ));
    }
    Ok(made)
}

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.08;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| thousands(v.max(0.0).round() as u64))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(20_000), "20,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn links_plots_relative_to_the_report() {
        assert_eq!(
            relative_dir(Path::new("docs/benchmarks.md"), Path::new("docs/bench")),
            "bench"
        );
    }
}
