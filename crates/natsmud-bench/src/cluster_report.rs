//! The report's part for scenarios on a NATS cluster: "Three nodes, three NATS servers",
//! `--subscriptions interest` beside `all`, and each such scenario's per-node and
//! per-server figures.

use std::fmt::Write as _;

use crate::cluster_probe::ClusterFigures;
use crate::load::RunOutcome;
use crate::procs::Usage;
use crate::report::{Faults, latency, mib, ms, ok, thousands};
use crate::scenario::ScenarioResult;

/// The heading's note of a scenario's shape when it is not the standard one.
pub fn shape(r: &ScenarioResult) -> String {
    let mut out = String::new();
    if r.nats_servers > 1 {
        let _ = write!(
            out,
            ", {} nodes on {} clustered nats-servers",
            r.nodes, r.nats_servers
        );
    }
    if let Some(mode) = r.subscriptions {
        let _ = write!(out, ", `--subscriptions {}`", mode.name());
    }
    out
}

/// CPU seconds and end RSS of the process named `name` in `usage`.
fn process<'a>(usage: &'a Usage, name: &str) -> Option<&'a (String, u64, f64)> {
    usage.per_process.iter().find(|(n, _, _)| n == name)
}

fn pct(cpu_secs: f64, r: &ScenarioResult) -> f64 {
    cpu_secs / r.load.duration.max(1e-9) * 100.0
}

/// Side by side, every scenario run on a NATS cluster: the section the comparison of
/// interest-based subscriptions with `all` is read from.
/// `notes`: hand-written observations (`docs/bench/cluster-notes.md`), placed at the end.
pub fn comparison(s: &mut String, results: &[ScenarioResult], command: &str, notes: Option<&str>) {
    let runs: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| r.nats_servers > 1 && ok(r))
        .collect();
    let _ = writeln!(s, "## Three nodes, three NATS servers\n");
    let _ = writeln!(
        s,
        "The standard workload on the shape of DESIGN.md §6: three nats-servers clustered on \
         loopback (routes between all three, JetStream on each, natsmud's presence kept in 3 \
         replicas, `--nats-replicas 3`), and three natsmud nodes, node *i* connected to server \
         *i* only, with distinct node ids and data directories but one account database (one \
         SQLite file) and one JWT secret. Player *k* registers and plays on node *k* mod 3; \
         starting rooms are uniform at random, so the players of every node are spread over \
         the whole world. Each column is one run from scratch; `--subscriptions` is the only \
         difference between them. Room events whose sender is on another node than the \
         recipient have crossed at least one NATS route; the game tick, published by the \
         holder of the tick lease, reaches two thirds of the players through another node.\n"
    );
    if runs.is_empty() {
        let _ = writeln!(s, "No such scenario succeeded in these results.\n");
        return;
    }
    let _ = writeln!(s, "- **Report written by:** `{command}`");
    for r in &runs {
        let m = &r.provenance.machine;
        // The scripts/bench line that reruns just this scenario as it ran.
        let _ = writeln!(
            s,
            "- `{}`: `scripts/bench --only {} --duration {} --warmup {}`; commit `{}`, {}; {} cores ({}), {} GiB.",
            r.name,
            r.name,
            r.load.duration,
            r.load.warmup,
            r.provenance.commit,
            r.provenance.date,
            m.cpus,
            m.cpu_model,
            m.memory_gib
        );
    }
    s.push('\n');
    let header: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "`{}` ({})",
                r.name,
                r.subscriptions.map_or("natsmud's default", |m| m.name())
            )
        })
        .collect();
    let _ = writeln!(s, "| figure | {} |", header.join(" | "));
    let _ = writeln!(s, "| --- |{}", " --- |".repeat(runs.len()));
    let row = |s: &mut String, label: &str, cell: &dyn Fn(&ScenarioResult) -> String| {
        let cells: Vec<String> = runs.iter().map(|r| cell(r)).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    };
    let lat = |kind: &'static str| {
        move |r: &ScenarioResult| {
            latency(r, kind).map_or("–".into(), |l| {
                format!("{} / {}", ms(l.p50_ms), ms(l.p99_ms))
            })
        }
    };
    row(s, "players connected", &|r| {
        r.outcome
            .as_ref()
            .map_or("–".into(), |o| thousands(u64::from(o.setup.connected)))
    });
    row(s, "measured window (s)", &|r| {
        format!("{}", r.load.duration)
    });
    row(s, "room events p50 / p99 (ms)", &lat("room_event"));
    row(
        s,
        "… sender on the same node p50 / p99 (ms)",
        &lat("room_event_same_node"),
    );
    row(
        s,
        "… sender on another node p50 / p99 (ms)",
        &lat("room_event_cross_node"),
    );
    row(s, "game tick p50 / p99 (ms)", &lat("tick"));
    row(s, "lost / extra / duplicated / reordered / echoed", &|r| {
        let f = Faults::of(r);
        format!(
            "{} / {} / {} / {} / {}",
            thousands(f.missing),
            thousands(f.extra),
            thousands(f.duplicates),
            thousands(f.out_of_order),
            thousands(f.echoes)
        )
    });
    let nodes = runs.iter().map(|r| r.nodes).max().unwrap_or(0);
    for k in 0..nodes {
        row(
            s,
            &format!("natsmud-{}: NATS messages received /s", k + 1),
            &|r| {
                node(r, k).map_or("–".into(), |n| {
                    format!(
                        "{}{}",
                        thousands(n.in_per_sec.round() as u64),
                        if n.tick_leader { " (ticks)" } else { "" }
                    )
                })
            },
        );
    }
    row(s, "NATS messages received /s, all nodes", &|r| {
        r.cluster.as_ref().map_or("–".into(), |c| {
            thousands(c.nodes.iter().map(|n| n.in_per_sec).sum::<f64>().round() as u64)
        })
    });
    for k in 0..nodes {
        row(
            s,
            &format!("natsmud-{}: NATS subscriptions (end / most)", k + 1),
            &|r| {
                node(r, k).map_or("–".into(), |n| {
                    format!(
                        "{} / {}",
                        thousands(n.subscriptions_end),
                        thousands(n.subscriptions_max)
                    )
                })
            },
        );
    }
    for k in 0..nodes {
        let name = format!("natsmud-{}", k + 1);
        row(s, &format!("{name}: CPU (% of a core) / RSS (MiB)"), &|r| {
            usage_cell(r, |o| &o.resources.server, &name)
        });
    }
    row(s, "natsmud, all nodes: CPU (% of a core)", &|r| {
        r.outcome.as_ref().map_or("–".into(), |o| {
            format!("{:.0}", o.resources.server.cpu_pct_of_core)
        })
    });
    let servers = runs.iter().map(|r| r.nats_servers).max().unwrap_or(0);
    for k in 0..servers {
        let name = format!("nats-s{}", k + 1);
        row(s, &format!("{name}: CPU (% of a core) / RSS (MiB)"), &|r| {
            usage_cell(r, |o| &o.resources.nats, &name)
        });
    }
    row(s, "nats-servers, all: CPU (% of a core)", &|r| {
        r.outcome.as_ref().map_or("–".into(), |o| {
            format!("{:.0}", o.resources.nats.cpu_pct_of_core)
        })
    });
    row(s, "messages over routes /s (sent, all servers)", &|r| {
        r.cluster.as_ref().map_or("–".into(), |c| {
            let sent: u64 = c.servers.iter().map(|v| v.route_out_msgs).sum();
            thousands((sent as f64 / c.window_secs.max(1e-9)).round() as u64)
        })
    });
    row(s, "load generator CPU (% of a core)", &|r| {
        r.outcome.as_ref().map_or("–".into(), |o| {
            format!("{:.0}", o.resources.generator.cpu_pct_of_core)
        })
    });
    s.push('\n');
    let _ = writeln!(
        s,
        "A node's NATS messages received are its NATS client's own count (`nats_traffic.in_messages` \
         of `/health`) over the measured window: room and zone events, presence changes from the \
         roster's watch, ticks, global chat and JetStream replies. CPU is over the measured \
         window; RSS at its end. Route messages are what the servers sent one another \
         (`/routez`), events and JetStream replication together.\n"
    );
    savings(s, &runs);
    if let Some(notes) = notes {
        let _ = writeln!(s, "{}\n", notes.trim_end());
    }
}

/// What `interest` saved against `all` at the same number of players, in words.
fn savings(s: &mut String, runs: &[&ScenarioResult]) {
    use crate::scenario::Subscriptions;
    for interest in runs
        .iter()
        .filter(|r| r.subscriptions == Some(Subscriptions::Interest))
    {
        let Some(all) = runs.iter().find(|r| {
            r.subscriptions == Some(Subscriptions::All)
                && r.players == interest.players
                && r.nodes == interest.nodes
        }) else {
            continue;
        };
        let received = |r: &ScenarioResult| {
            r.cluster
                .as_ref()
                .map_or(0.0, |c| c.nodes.iter().map(|n| n.in_per_sec).sum::<f64>())
        };
        let cpu = |r: &ScenarioResult| {
            r.outcome
                .as_ref()
                .map_or(0.0, |o| o.resources.server.cpu_pct_of_core)
        };
        let (ri, ra) = (received(interest), received(all));
        let (ci, ca) = (cpu(interest), cpu(all));
        if ra <= 0.0 || ca <= 0.0 {
            continue;
        }
        let _ = writeln!(
            s,
            "**Interest against all, {} players:** the nodes received {} NATS messages/s \
             together with `interest` and {} with `all` ({:+.0} %); natsmud used {:.0} % of a \
             core with `interest` and {:.0} % with `all` ({:+.0} %).\n",
            thousands(u64::from(interest.players)),
            thousands(ri.round() as u64),
            thousands(ra.round() as u64),
            (ri / ra - 1.0) * 100.0,
            ci,
            ca,
            (ci / ca - 1.0) * 100.0
        );
    }
}

fn node(r: &ScenarioResult, k: usize) -> Option<&crate::cluster_probe::NodeTraffic> {
    r.cluster.as_ref()?.nodes.get(k)
}

fn usage_cell(r: &ScenarioResult, group: impl Fn(&RunOutcome) -> &Usage, name: &str) -> String {
    r.outcome
        .as_ref()
        .and_then(|o| process(group(o), name))
        .map_or("–".into(), |(_, rss, cpu)| {
            format!("{:.0} / {}", pct(*cpu, r), mib(*rss))
        })
}

/// A scenario's per-node and per-server figures, under its resources table.
pub fn details(s: &mut String, r: &ScenarioResult, o: &RunOutcome, c: &ClusterFigures) {
    let _ = writeln!(
        s,
        "| node | NATS server | players (end) | NATS msgs in /s | NATS msgs out /s | MiB in | subscriptions (end / most) | tick p50 / p99 (ms) | CPU (% of a core) | RSS (MiB) |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (k, n) in c.nodes.iter().enumerate() {
        let tick = latency(r, &format!("tick_node_{}", k + 1)).map_or("–".into(), |l| {
            format!("{} / {}", ms(l.p50_ms), ms(l.p99_ms))
        });
        let (cpu, rss) = process(&o.resources.server, &n.name)
            .map_or(("–".into(), "–".into()), |(_, rss, cpu)| {
                (format!("{:.0}", pct(*cpu, r)), mib(*rss))
            });
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {:.1} | {} / {} | {tick} | {cpu} | {rss} |",
            n.name,
            if n.tick_leader { " (ticks)" } else { "" },
            n.nats_url,
            thousands(n.connected_players),
            thousands(n.in_per_sec.round() as u64),
            thousands(n.out_per_sec.round() as u64),
            n.in_bytes as f64 / (1024.0 * 1024.0),
            thousands(n.subscriptions_end),
            thousands(n.subscriptions_max),
        );
    }
    s.push('\n');
    if c.servers.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "| nats-server | msgs in /s | msgs out /s | route msgs in | route msgs out | CPU (% of a core) | RSS (MiB) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for v in &c.servers {
        let (cpu, rss) = process(&o.resources.nats, &v.name)
            .map_or(("–".into(), "–".into()), |(_, rss, cpu)| {
                (format!("{:.0}", pct(*cpu, r)), mib(*rss))
            });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {cpu} | {rss} |",
            v.name,
            thousands(v.in_per_sec.round() as u64),
            thousands(v.out_per_sec.round() as u64),
            thousands(v.route_in_msgs),
            thousands(v.route_out_msgs),
        );
    }
    let _ = writeln!(
        s,
        "\nTraffic over {:.0} s of readings inside the measured window.\n",
        c.window_secs
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_probe::NodeTraffic;
    use crate::load::{LoadArgs, Mode};
    use crate::scenario::Subscriptions;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn result(mode: Subscriptions, per_node_in: f64, cpu_pct: f64) -> ScenarioResult {
        let load = Args::parse_from(["x", "--players", "3000"]).load;
        let name = format!("cluster-{}-3000", mode.name());
        let mut r = ScenarioResult::new(name, Mode::Active, &load, false, 3);
        r.status = "ok".into();
        r.nats_servers = 3;
        r.subscriptions = Some(mode);
        let mut outcome = RunOutcome::default();
        outcome.resources.server.cpu_pct_of_core = cpu_pct;
        r.outcome = Some(outcome);
        r.cluster = Some(ClusterFigures {
            window_secs: 60.0,
            nodes: (0..3)
                .map(|k| NodeTraffic {
                    name: format!("natsmud-{}", k + 1),
                    in_per_sec: per_node_in,
                    tick_leader: k == 0,
                    ..NodeTraffic::default()
                })
                .collect(),
            servers: Vec::new(),
        });
        r
    }

    #[test]
    fn compares_interest_with_all_and_keeps_cluster_runs_out_of_the_standard_ones() {
        let results = [
            result(Subscriptions::All, 1000.0, 80.0),
            result(Subscriptions::Interest, 250.0, 60.0),
        ];
        assert!(results.iter().all(|r| !r.is_standard()));
        let mut s = String::new();
        comparison(&mut s, &results, "scripts/bench", Some("### Notes\n"));
        assert!(s.starts_with("## Three nodes, three NATS servers\n"), "{s}");
        assert!(
            s.contains("| natsmud-1: NATS messages received /s | 1,000 (ticks) | 250 (ticks) |"),
            "{s}"
        );
        assert!(
            s.contains(
                "received 750 NATS messages/s together with `interest` and 3,000 with `all` (-75 %)"
            ),
            "{s}"
        );
        assert!(
            s.contains("60 % of a core with `interest` and 80 % with `all` (-25 %)"),
            "{s}"
        );
        assert!(s.trim_end().ends_with("### Notes"), "{s}");
        assert_eq!(
            shape(&results[1]),
            ", 3 nodes on 3 clustered nats-servers, `--subscriptions interest`"
        );
    }
}
