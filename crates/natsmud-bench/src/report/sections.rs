//! One scenario's section of the report, and the pieces other report modules reuse.

use std::fmt::Write as _;

use super::{latency, mib, ms, thousands};
use crate::analysis::Delivery;
use crate::load::Mode;
use crate::procs::Usage;
use crate::scenario::ScenarioResult;
use crate::{auth_report, crowd_report};

pub(super) fn usage_row(s: &mut String, name: &str, u: &Usage) {
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

pub(super) fn scenario_section(s: &mut String, r: &ScenarioResult) {
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
