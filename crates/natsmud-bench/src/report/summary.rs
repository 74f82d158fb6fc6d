//! The one-screen summary a scenario prints when it ends (stderr).

use super::{Faults, latency, mib, ms};
use crate::scenario::ScenarioResult;
use crate::{auth_report, crowd_report};

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
