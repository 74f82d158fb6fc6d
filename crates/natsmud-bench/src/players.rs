//! Benchmark players: registration over HTTP, the players file the workers read, and the
//! starting-room placement.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Deserialize;

pub const PASSWORD: &str = "natsmud-bench-password";

pub fn name_of(idx: u32) -> String {
    format!("b_{idx:06}")
}

/// One line of the players file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerEntry {
    pub idx: u32,
    pub name: String,
    pub id: String,
    pub token: String,
    /// Base URL of the node this player uses, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// Room index the player should start in.
    pub target: u32,
}

pub fn write_players(path: &Path, players: &[PlayerEntry]) -> Result<()> {
    let mut text = String::with_capacity(players.len() * 300);
    for p in players {
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            p.idx, p.name, p.id, p.token, p.server, p.target
        ));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn read_players(path: &Path) -> Result<Vec<PlayerEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 6 {
            bail!("{}:{}: expected 6 fields", path.display(), n + 1);
        }
        let number = |s: &str| -> Result<u32> {
            s.parse()
                .with_context(|| format!("{}:{}: {s:?} is not a number", path.display(), n + 1))
        };
        out.push(PlayerEntry {
            idx: number(f[0])?,
            name: f[1].to_owned(),
            id: f[2].to_owned(),
            token: f[3].to_owned(),
            server: f[4].to_owned(),
            target: number(f[5])?,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct AuthReply {
    player_id: String,
    access_token: String,
}

/// What registering one player gave.
#[derive(Debug, Clone)]
pub struct Registered {
    pub idx: u32,
    pub id: String,
    pub token: String,
    pub server: String,
}

/// Registers (or, when the name is taken, logs in) players `0..count`, player `i` on
/// `servers[i % len]`. Transient failures are retried; players that still fail are left
/// out and reported in the error list.
pub async fn register_all(
    servers: &[String],
    count: u32,
    concurrency: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Registered>, Vec<String>)> {
    if servers.is_empty() {
        bail!("no server to register players on");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        // Under the server's 10 s keep-alive timeout: a pooled connection is never reused
        // just as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let results: Vec<Result<Registered, String>> = futures::stream::iter(0..count)
        .map(|idx| {
            let client = client.clone();
            let server = servers[idx as usize % servers.len()].clone();
            let bar = bar.clone();
            let done = done.clone();
            async move {
                let result = register_one(&client, &server, idx).await;
                done.fetch_add(1, Ordering::Relaxed);
                bar.inc(1);
                result.map(|(id, token)| Registered {
                    idx,
                    id,
                    token,
                    server,
                })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(r) => ok.push(r),
            Err(e) => failed.push(e),
        }
    }
    ok.sort_by_key(|r| r.idx);
    Ok((ok, failed))
}

async fn register_one(
    client: &reqwest::Client,
    server: &str,
    idx: u32,
) -> Result<(String, String), String> {
    let body = serde_json::json!({"username": name_of(idx), "password": PASSWORD});
    let mut last = String::new();
    for attempt in 0..6u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let reply = client
            .post(format!("{server}/api/auth/register"))
            .json(&body)
            .send()
            .await;
        let reply = match reply {
            Ok(r) if r.status().as_u16() == 409 => {
                client
                    .post(format!("{server}/api/auth/login"))
                    .json(&body)
                    .send()
                    .await
            }
            other => other,
        };
        match reply {
            Ok(r) if r.status().is_success() => match r.json::<AuthReply>().await {
                Ok(a) => return Ok((a.player_id, a.access_token)),
                Err(e) => last = format!("bad auth reply: {e}"),
            },
            Ok(r) => {
                let status = r.status().as_u16();
                last = format!("HTTP {status}");
                if !(status == 429 || status >= 500) {
                    return Err(last);
                }
            }
            Err(e) => last = format!("request failed: {e}"),
        }
    }
    Err(last)
}

/// Writes each player's starting room into the server's account database (the room a
/// player is put in when it connects), in one transaction. Setup only: nothing measured
/// happens before the players connect. Fails on a schema the bench does not know.
pub async fn place_in_database(database: &Path, rooms: &[(String, String)]) -> Result<()> {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let url = format!("sqlite://{}", database.display());
    let mut conn = SqliteConnectOptions::from_str(&url)?
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    let mut tx = conn.begin().await?;
    for (player, room) in rooms {
        let done = sqlx::query("UPDATE players SET room_id = ? WHERE id = ?")
            .bind(room)
            .bind(player)
            .execute(&mut *tx)
            .await
            .context("updating players.room_id")?;
        if done.rows_affected() != 1 {
            bail!("player {player} is not in {}", database.display());
        }
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn players_file_round_trips() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("players.tsv");
        let players: Vec<PlayerEntry> = (0..3)
            .map(|i| PlayerEntry {
                idx: i,
                name: name_of(i),
                id: format!("id-{i}"),
                token: format!("tok.{i}.x"),
                server: "http://127.0.0.1:8080".into(),
                target: i * 2,
            })
            .collect();
        write_players(&path, &players).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_players(&path).unwrap_or_else(|e| panic!("{e}")),
            players
        );
        assert!(natsmud_protocol::PlayerName::parse(&name_of(123_456)).is_ok());
    }
}
