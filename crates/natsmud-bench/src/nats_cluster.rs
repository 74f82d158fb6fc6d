//! A NATS cluster of several nats-servers on loopback, each with JetStream, for the
//! scenarios where natsmud nodes each talk to their own server (DESIGN.md §6): what a
//! route hop and replicated presence cost.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::procs::Managed;

/// Started cluster members; dropping them kills them.
pub struct Cluster {
    pub servers: Vec<Managed>,
    /// Client URL of each server, `nats://127.0.0.1:PORT`.
    pub urls: Vec<String>,
    /// Monitoring base URL of each server, `http://127.0.0.1:PORT` (/varz, /routez, /jsz).
    pub monitors: Vec<String>,
}

/// A loopback port nobody listens on at the moment of asking. nats-server binds it a
/// moment later; [`start`] checks each one is served before it returns, so a port taken in
/// between fails the scenario rather than joining a stranger.
fn free_port(taken: &[u16]) -> Result<u16> {
    for _ in 0..32 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let port = listener.local_addr()?.port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port after 32 tries")
}

/// Starts `count` clustered nats-servers named s1…sN with JetStream (storage under `dir`)
/// and waits until every one has routes to all the others and JetStream has a meta leader.
pub async fn start(bin: &Path, dir: &Path, count: usize, pid_file: &Path) -> Result<Cluster> {
    let mut taken = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..count {
        let mut three = [0u16; 3];
        for p in &mut three {
            *p = free_port(&taken)?;
            taken.push(*p);
        }
        ports.push(three);
    }
    let mut servers = Vec::with_capacity(count);
    for (i, [client, cluster, monitor]) in ports.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let own = dir.join(&name);
        std::fs::create_dir_all(&own)?;
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{}", p[1]))
            .collect();
        let mut command = Command::new(bin);
        command
            .args(["-a", "127.0.0.1", "-p", &client.to_string()])
            .args(["-m", &monitor.to_string()])
            .args(["-n", &name])
            .args(["-js", "-sd"])
            .arg(own.join("jetstream"))
            .args(["--cluster_name", "natsmud-bench"])
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
            .args(["--routes", &routes.join(",")]);
        servers.push(Managed::spawn(
            &format!("nats-{name}"),
            &mut command,
            &own.join("nats-server.log"),
            false,
            pid_file,
        )?);
    }
    let cluster = Cluster {
        urls: ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p[0]))
            .collect(),
        monitors: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{}", p[2]))
            .collect(),
        servers,
    };
    wait_formed(cluster).await
}

/// Every server routed to every other, and a JetStream meta leader elected: before then
/// natsmud could not create its replicated presence buckets.
async fn wait_formed(mut cluster: Cluster) -> Result<Cluster> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let count = cluster.servers.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for server in &mut cluster.servers {
            if !server.running() {
                bail!("{} exited at start:\n{}", server.name, server.log_tail(20));
            }
        }
        let mut routed = 0;
        let mut leader = String::new();
        for (i, monitor) in cluster.monitors.iter().enumerate() {
            let own = format!("s{}", i + 1);
            if let Ok(routez) = get_json(&client, &format!("{monitor}/routez")).await {
                // Several routes per peer (route pooling): count the distinct peers.
                let mut peers: Vec<&str> = routez["routes"]
                    .as_array()
                    .map(|routes| {
                        routes
                            .iter()
                            .filter_map(|r| r["remote_name"].as_str())
                            .filter(|n| *n != own)
                            .collect()
                    })
                    .unwrap_or_default();
                peers.sort_unstable();
                peers.dedup();
                if peers.len() + 1 >= count {
                    routed += 1;
                }
            }
            if leader.is_empty()
                && let Ok(jsz) = get_json(&client, &format!("{monitor}/jsz")).await
            {
                leader = jsz["meta_cluster"]["leader"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        if routed == count && !leader.is_empty() {
            eprintln!("bench: NATS cluster of {count} formed, JetStream meta leader {leader}");
            return Ok(cluster);
        }
        if tokio::time::Instant::now() > deadline {
            let tails: Vec<String> = cluster
                .servers
                .iter()
                .map(|s| format!("{}:\n{}", s.name, s.log_tail(10)))
                .collect();
            bail!(
                "the NATS cluster did not form within 60 s ({routed} of {count} servers routed to all, meta leader {leader:?}):\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let response = client.get(url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}
