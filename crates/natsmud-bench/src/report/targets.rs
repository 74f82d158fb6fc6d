//! The targets of ../shared/BENCHMARK.md and whether each result meets them.

use super::{Faults, latency, ms, ok, thousands};
use crate::load::Mode;
use crate::scenario::ScenarioResult;
use crate::{auth_report, crowd_report};

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

pub(super) fn targets(results: &[ScenarioResult]) -> Vec<Target<'static>> {
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

/// The fan-out targets of issue 14, which need the kernel's floor measured in the same run
/// (`floor_ms`: the least a fan-out to that many players can take here): tick p99 within
/// 1.2× of it at 10k and 20k active and at 100k idle, room events at 10k and 20k, and
/// memory per idle connection at 100k.
pub(super) fn fanout_targets(
    results: &[ScenarioResult],
    floor_ms: impl Fn(u64) -> f64,
) -> Vec<Target<'static>> {
    let standard: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| ok(r) && r.is_standard())
        .collect();
    let large_active = || {
        standard
            .iter()
            .filter(|r| r.mode == Mode::Active && r.players >= 10_000)
    };
    let large_idle = || {
        standard
            .iter()
            .filter(|r| r.mode == Mode::Idle && r.players >= 100_000)
    };
    let ratios: Vec<(&str, f64)> = large_active()
        .chain(large_idle())
        .filter_map(|r| {
            let tick = latency(r, "tick")?;
            Some((
                r.name.as_str(),
                tick.p99_ms / floor_ms(u64::from(r.players)).max(0.001),
            ))
        })
        .collect();
    let rooms: Vec<(&str, f64)> = large_active()
        .filter_map(|r| Some((r.name.as_str(), latency(r, "room_event")?.p99_ms)))
        .collect();
    let memory: Vec<(&str, f64)> = large_idle()
        .filter_map(|r| {
            let m = r.outcome.as_ref()?.idle_memory.as_ref()?;
            Some((r.name.as_str(), m.rss_per_connection_kib))
        })
        .collect();
    let listed = |figures: &[(&str, f64)], show: &dyn Fn(f64) -> String| {
        if figures.is_empty() {
            return "—".to_owned();
        }
        figures
            .iter()
            .map(|(name, v)| format!("{name} {}", show(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all_within = |figures: &[(&str, f64)], bound: f64| {
        (!figures.is_empty()).then(|| figures.iter().all(|(_, v)| *v <= bound))
    };
    vec![
        Target {
            figure: "tick fan-out p99 against the floor of the same run (10k and 20k active, 100k idle)",
            target: "≤ 1.2×",
            measured: listed(&ratios, &|v| format!("{v:.1}×")),
            verdict: verdict(all_within(&ratios, 1.2)),
        },
        Target {
            figure: "room-event latency p99 at 10k and 20k active (ticks and `global` running)",
            target: "≤ 20 ms",
            measured: listed(&rooms, &|v| format!("{} ms", ms(v))),
            verdict: verdict(all_within(&rooms, 20.0)),
        },
        Target {
            figure: "server RSS per idle connection at 100k idle",
            target: "≤ 8 KiB",
            measured: listed(&memory, &|v| format!("{v:.1} KiB")),
            verdict: verdict(all_within(&memory, 8.0)),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(name: &str) -> ScenarioResult {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/bench")
            .join(format!("{name}.json"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_fan_out_targets_name_each_large_scenario_against_the_floor() {
        let results: Vec<ScenarioResult> = ["active-1000", "active-10000", "active-20000"]
            .into_iter()
            .chain(["idle-10000", "idle-100000"])
            .map(committed)
            .collect();
        let strict = fanout_targets(&results, |players| players as f64 * 1e-9);
        assert_eq!(strict.len(), 3);
        for t in &strict {
            assert_eq!(t.verdict, "**miss**", "{}: {}", t.figure, t.measured);
        }
        assert!(strict[0].measured.contains("active-10000"));
        assert!(strict[0].measured.contains("idle-100000"));
        assert!(!strict[0].measured.contains("active-1000 "));
        assert!(strict[1].measured.contains("active-20000"));
        assert!(strict[2].measured.starts_with("idle-100000 "));
        // A floor as slow as the fan-outs themselves: every ratio within bounds.
        let lenient = fanout_targets(&results, |players| players as f64 * 1.0);
        assert_eq!(lenient[0].verdict, "**pass**");
        for t in fanout_targets(&[], |_| 1.0) {
            assert_eq!(t.verdict, "not measured");
        }
    }
}
