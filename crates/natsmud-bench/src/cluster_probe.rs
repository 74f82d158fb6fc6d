//! What each natsmud node received from NATS, and what each nats-server of a cluster
//! carried, over a run's measured window: the cost of a node's subscriptions
//! (`--subscriptions interest` against `all`, DESIGN.md §6).
//!
//! Read once a second while the load runs — each node's `/health` (`nats_traffic`, its NATS
//! client's own counters), each cluster member's `/varz` and `/routez` — and reduced to
//! the change between the first reading inside the window and the last.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::now_us;
use crate::nats_cluster::get_json;
use crate::workload::Plan;

/// One node's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeReading {
    pub in_messages: u64,
    pub out_messages: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subscriptions: u64,
    pub connected_players: u64,
    pub players_online: u64,
    pub tick_leader: bool,
}

/// One nats-server's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerReading {
    pub in_msgs: u64,
    pub out_msgs: u64,
    /// Summed over its routes: messages it received from, and sent to, the other servers.
    pub route_in_msgs: u64,
    pub route_out_msgs: u64,
}

/// Every reading taken at one moment; `None` where a process did not answer.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at_us: u64,
    pub nodes: Vec<Option<NodeReading>>,
    pub servers: Vec<Option<ServerReading>>,
}

/// Reads the nodes and servers once a second until [`Probe::finish`].
pub struct Probe {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
    node_nats_urls: Vec<String>,
}

impl Probe {
    /// `nodes`: the nodes' base URLs; `node_nats_urls`: the NATS URL each was given;
    /// `monitors`: the cluster members' monitoring URLs (none for a single server).
    pub fn start(nodes: Vec<String>, node_nats_urls: Vec<String>, monitors: Vec<String>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let Ok(client) = reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                // Under the server's 10 s keep-alive timeout: a pooled connection is never
                // reused just as the server closes it.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
            else {
                return samples;
            };
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => samples.push(read_all(&client, &nodes, &monitors).await),
                    _ = &mut stopped => break,
                }
            }
            samples
        });
        Self {
            stop,
            task,
            node_nats_urls,
        }
    }

    /// Stops reading; the readings so far, each paired with nothing more.
    pub async fn finish(self) -> Probed {
        let _ = self.stop.send(());
        Probed {
            samples: self.task.await.unwrap_or_default(),
            node_nats_urls: self.node_nats_urls,
        }
    }
}

/// What a [`Probe`] read.
#[derive(Debug, Clone, Default)]
pub struct Probed {
    pub samples: Vec<Sample>,
    pub node_nats_urls: Vec<String>,
}

async fn read_all(client: &reqwest::Client, nodes: &[String], monitors: &[String]) -> Sample {
    let node_reads = nodes.iter().map(|url| read_node(client, url));
    let server_reads = monitors.iter().map(|url| read_server(client, url));
    let (nodes, servers) = tokio::join!(
        futures::future::join_all(node_reads),
        futures::future::join_all(server_reads)
    );
    // The moment of the answers rather than of the asking: the window's edges are a second
    // apart at worst either way, and the rates divide by the readings' own span.
    Sample {
        at_us: now_us(),
        nodes,
        servers,
    }
}

async fn read_node(client: &reqwest::Client, url: &str) -> Option<NodeReading> {
    let health = get_json(client, &format!("{url}/health")).await.ok()?;
    let traffic = &health["nats_traffic"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Some(NodeReading {
        in_messages: traffic["in_messages"].as_u64()?,
        out_messages: n(&traffic["out_messages"]),
        in_bytes: n(&traffic["in_bytes"]),
        out_bytes: n(&traffic["out_bytes"]),
        subscriptions: n(&health["nats_subscriptions"]),
        connected_players: n(&health["connected_players"]),
        players_online: n(&health["players_online"]),
        tick_leader: health["tick_leader"].as_bool().unwrap_or(false),
    })
}

async fn read_server(client: &reqwest::Client, url: &str) -> Option<ServerReading> {
    let varz = get_json(client, &format!("{url}/varz")).await.ok()?;
    let routez = get_json(client, &format!("{url}/routez")).await.ok()?;
    let routes = routez["routes"].as_array()?;
    let sum = |key: &str| routes.iter().filter_map(|r| r[key].as_u64()).sum();
    Some(ServerReading {
        in_msgs: varz["in_msgs"].as_u64()?,
        out_msgs: varz["out_msgs"].as_u64().unwrap_or(0),
        route_in_msgs: sum("in_msgs"),
        route_out_msgs: sum("out_msgs"),
    })
}

/// One node over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeTraffic {
    pub name: String,
    /// The NATS server it talked to.
    pub nats_url: String,
    /// Players on it at the window's end.
    pub connected_players: u64,
    /// Players in the world's presence roster as it saw it at the window's end.
    pub players_online: u64,
    /// NATS subscriptions at the window's end, and the most seen during it.
    pub subscriptions_end: u64,
    pub subscriptions_max: u64,
    /// It held the tick lease at any reading in the window.
    pub tick_leader: bool,
    /// Messages its NATS client received (events, presence watch, JetStream replies)
    /// and sent during the window, and per second.
    pub in_messages: u64,
    pub in_per_sec: f64,
    pub out_messages: u64,
    pub out_per_sec: f64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// One nats-server of a cluster over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerTraffic {
    pub name: String,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_per_sec: f64,
    pub out_per_sec: f64,
    pub route_in_msgs: u64,
    pub route_out_msgs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterFigures {
    /// Seconds between the first and the last reading inside the measured window.
    pub window_secs: f64,
    pub nodes: Vec<NodeTraffic>,
    pub servers: Vec<ServerTraffic>,
}

/// The change over the measured window of `plan`, from the first reading inside it to the
/// last; `None` with fewer than two readings there.
pub fn figures(probed: &Probed, plan: &Plan) -> Option<ClusterFigures> {
    let inside: Vec<&Sample> = probed
        .samples
        .iter()
        .filter(|s| s.at_us >= plan.measure_from_us && s.at_us <= plan.measure_until_us)
        .collect();
    let (first, last) = (inside.first()?, inside.last()?);
    if last.at_us <= first.at_us {
        return None;
    }
    let secs = (last.at_us - first.at_us) as f64 / 1e6;
    let delta = |a: u64, b: u64| b.saturating_sub(a);
    let nodes = (0..last.nodes.len())
        .map(|k| {
            let a = first.nodes.get(k).copied().flatten().unwrap_or_default();
            let b = last.nodes.get(k).copied().flatten().unwrap_or_default();
            let seen = inside
                .iter()
                .filter_map(|s| s.nodes.get(k).copied().flatten());
            let (max_subs, leader) = seen.fold((0, false), |(m, l), r| {
                (m.max(r.subscriptions), l || r.tick_leader)
            });
            NodeTraffic {
                name: format!("natsmud-{}", k + 1),
                nats_url: probed.node_nats_urls.get(k).cloned().unwrap_or_default(),
                connected_players: b.connected_players,
                players_online: b.players_online,
                subscriptions_end: b.subscriptions,
                subscriptions_max: max_subs,
                tick_leader: leader,
                in_messages: delta(a.in_messages, b.in_messages),
                in_per_sec: delta(a.in_messages, b.in_messages) as f64 / secs,
                out_messages: delta(a.out_messages, b.out_messages),
                out_per_sec: delta(a.out_messages, b.out_messages) as f64 / secs,
                in_bytes: delta(a.in_bytes, b.in_bytes),
                out_bytes: delta(a.out_bytes, b.out_bytes),
            }
        })
        .collect();
    let servers = (0..last.servers.len())
        .map(|k| {
            let a = first.servers.get(k).copied().flatten().unwrap_or_default();
            let b = last.servers.get(k).copied().flatten().unwrap_or_default();
            ServerTraffic {
                name: format!("nats-s{}", k + 1),
                in_msgs: delta(a.in_msgs, b.in_msgs),
                out_msgs: delta(a.out_msgs, b.out_msgs),
                in_per_sec: delta(a.in_msgs, b.in_msgs) as f64 / secs,
                out_per_sec: delta(a.out_msgs, b.out_msgs) as f64 / secs,
                route_in_msgs: delta(a.route_in_msgs, b.route_in_msgs),
                route_out_msgs: delta(a.route_out_msgs, b.route_out_msgs),
            }
        })
        .collect();
    Some(ClusterFigures {
        window_secs: secs,
        nodes,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(in_messages: u64, subscriptions: u64, tick_leader: bool) -> Option<NodeReading> {
        Some(NodeReading {
            in_messages,
            subscriptions,
            tick_leader,
            ..NodeReading::default()
        })
    }

    #[test]
    fn takes_the_change_between_the_window_s_first_and_last_readings() {
        let plan = Plan {
            t0_us: 0,
            measure_from_us: 10_000_000,
            measure_until_us: 20_000_000,
            stop_us: 23_000_000,
        };
        let at = |at_us, a, b| Sample {
            at_us,
            nodes: vec![a, b],
            servers: vec![Some(ServerReading {
                in_msgs: at_us / 1000,
                ..ServerReading::default()
            })],
        };
        let probed = Probed {
            samples: vec![
                at(9_500_000, node(5, 1, false), node(5, 1, false)),
                at(10_500_000, node(100, 3, false), node(50, 2, true)),
                // A node that did not answer keeps neither its counters nor the window.
                at(15_000_000, node(300, 9, true), None),
                at(18_500_000, node(900, 4, false), node(450, 2, false)),
                at(21_000_000, node(5000, 1, false), node(5000, 1, false)),
            ],
            node_nats_urls: vec!["nats://a".into(), "nats://b".into()],
        };
        let f = figures(&probed, &plan).unwrap_or_else(|| panic!("no figures"));
        assert_eq!(f.window_secs, 8.0);
        assert_eq!(f.nodes[0].in_messages, 800);
        assert_eq!(f.nodes[0].in_per_sec, 100.0);
        assert_eq!(f.nodes[0].subscriptions_max, 9);
        assert!(f.nodes[0].tick_leader);
        assert_eq!(f.nodes[1].in_messages, 400);
        assert!(f.nodes[1].tick_leader);
        assert_eq!(f.nodes[1].nats_url, "nats://b");
        assert_eq!(f.servers[0].in_msgs, 8000);
    }

    #[test]
    fn no_figures_without_two_readings_in_the_window() {
        let plan = Plan {
            t0_us: 0,
            measure_from_us: 10,
            measure_until_us: 20,
            stop_us: 30,
        };
        let probed = Probed {
            samples: vec![Sample {
                at_us: 15,
                ..Sample::default()
            }],
            node_nats_urls: Vec::new(),
        };
        assert!(figures(&probed, &plan).is_none());
    }
}
