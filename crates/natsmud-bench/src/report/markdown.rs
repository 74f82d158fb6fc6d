//! docs/benchmarks.md: its overall layout (floor, overview, plots, each section, method).

use std::fmt::Write as _;

use crate::floor::FloorResult;
use crate::scenario::ScenarioResult;

use super::sections::scenario_section;
use super::targets::{fanout_targets, targets};
use super::{Faults, ReportArgs, latency, mib, ms, ok, thousands};

/// The kernel's own cost of a fan-out, and what it implies for the fan-out targets.
pub(super) fn render_floor(floor: &FloorResult, results: &[ScenarioResult]) -> String {
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
    let _ = writeln!(
        s,
        "\nThe fan-out targets (issue 14), each against this run's floor:\n\n\
         | figure | target | measured | result |\n| --- | --- | --- | --- |"
    );
    for t in fanout_targets(results, bound_ms) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.figure, t.target, t.measured, t.verdict
        );
    }
    s.push('\n');
    s
}

pub(super) fn render(
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
    telnet_section(&mut s, &args.plots);
    method(&mut s);
    s
}

/// The resume measurements (`natsmud-bench resume`), when `scripts/bench` ran them: they
/// live in a folder of their own, as `report` takes every JSON file of docs/bench/ for a
/// scenario's results.
pub(super) fn resume_section(s: &mut String, plots: &std::path::Path) {
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

/// Telnet beside WebSocket (`natsmud-bench telnet`), when `scripts/bench` ran it: in a
/// folder of its own for the same reason as the resume measurements.
pub(super) fn telnet_section(s: &mut String, plots: &std::path::Path) {
    let path = plots.join("telnet").join("telnet.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    match serde_json::from_str::<crate::telnet::TelnetResult>(&text) {
        Ok(result) => s.push_str(&crate::telnet::markdown(&result)),
        Err(error) => {
            let _ = writeln!(
                s,
                "## Telnet beside WebSocket\n\n{} could not be read: {error}\n",
                path.display()
            );
        }
    }
}

/// One row per standard-workload scenario.
pub(super) fn overview_table(s: &mut String, standard: &[&ScenarioResult]) {
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

/// How many worker threads the co-located nodes ran, from their flags.
pub(super) fn worker_threads_note(results: &[ScenarioResult]) -> String {
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

pub(super) fn method(s: &mut String) {
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
few minutes, whose report goes to target/bench-quick/ and leaves this one be; `--only active-20000,idle-10000,resume,telnet` \
to run some scenarios again here; `--duration`, `--warmup`, \
`--idle-duration`, `--crowd-duration` for the windows). It takes the open-files limit to its maximum, builds the \
release binaries and installs the pinned nats-server.\n\
- `natsmud-bench scenario --mode active --players N --nats-server BIN …` runs one scenario from \
scratch (`--mode crowd`, `--mode auth` for the crowded room and the login wave); `natsmud-bench world --players N --out DIR` writes the world; `natsmud-bench run` and \
`natsmud-bench idle` drive node(s) you started yourself (`--server URL`, `--server-pid`, \
`--nats-pid`, `--world`, `--database`); `natsmud-bench report` rewrites this page from results \
files. Each has `--help`.\n",
    );
}
