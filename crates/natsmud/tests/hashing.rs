//! Password hashing under a wave of logins: a fixed number at once, a short queue, and a
//! quick, explained refusal beyond it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};

/// What one register or login attempt got.
struct Reply {
    status: u16,
    code: Option<String>,
    retry_after: Option<u64>,
}

async fn attempt(http: &reqwest::Client, url: String, name: &str) -> Reply {
    let response = http
        .post(url)
        .json(&json!({"username": name, "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        retry_after,
    }
}

fn assert_busy(reply: &Reply, what: &str) {
    assert_eq!(reply.code.as_deref(), Some("busy"), "{what}");
    assert!(
        reply.retry_after.is_some_and(|s| s >= 1),
        "{what}: 503 without a Retry-After"
    );
}

/// A cost that makes one hash take a noticeable while in the build under test.
fn slow_hashing(config: &mut natsmud::Config) {
    if cfg!(debug_assertions) {
        config.password_hash_memory_kib = 8 * 1024;
        config.password_hash_iterations = 3;
    } else {
        config.password_hash_memory_kib = 64 * 1024;
        config.password_hash_iterations = 8;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_registrations_is_served_or_refused_with_retry_after_and_retries_succeed() {
    const PLAYERS: usize = 200;
    let app = TestApp::spawn_with(|config| {
        config.hashing_concurrency = 2;
        config.hashing_queue = 4;
        config.password_hash_memory_kib = 1024;
        config.password_hash_iterations = 2;
    })
    .await;
    let url = app.url("/api/auth/register");
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..PLAYERS).map(|i| format!("Player{i}")).collect();
    let replies =
        futures::future::join_all(names.iter().map(|name| attempt(&http, url.clone(), name))).await;
    let mut refused = Vec::new();
    for (name, reply) in names.iter().zip(&replies) {
        match reply.status {
            201 => {}
            503 => {
                assert_busy(reply, name);
                refused.push(name.clone());
            }
            other => panic!("{name} got {other}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "{PLAYERS} at once on 2 threads and a queue of 4 were all accepted"
    );
    assert!(app.metric("natsmud_password_hashing_refused_total").await >= refused.len() as f64);

    // Coming back later, everyone gets in.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !refused.is_empty() {
        assert!(Instant::now() < deadline, "{} never got in", refused.len());
        let mut still = Vec::new();
        for name in refused {
            let reply = attempt(&http, url.clone(), &name).await;
            match reply.status {
                201 => {}
                503 => {
                    assert_busy(&reply, &name);
                    still.push(name);
                }
                other => panic!("{name} got {other} on retry"),
            }
        }
        refused = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let login = attempt(&http, app.url("/api/auth/login"), "Player199").await;
    assert_eq!(login.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_while_the_hashing_queue_is_full_is_refused_at_once() {
    let app = TestApp::spawn_with(|config| {
        config.hashing_concurrency = 1;
        config.hashing_queue = 1;
        slow_hashing(config);
    })
    .await;
    let http = reqwest::Client::new();
    // One hashing, one waiting: the next is turned away.
    let burst: Vec<_> = (0..4)
        .map(|i| {
            let http = http.clone();
            let url = app.url("/api/auth/register");
            tokio::spawn(async move { attempt(&http, url, &format!("Early{i}")).await })
        })
        .collect();
    let mut pending = burst;
    let first_refusal = loop {
        assert!(!pending.is_empty(), "nothing was refused");
        let (reply, _, rest) = futures::future::select_all(pending).await;
        pending = rest;
        let reply = reply.unwrap();
        if reply.status == 503 {
            break reply;
        }
    };
    assert_busy(&first_refusal, "a registration beyond the queue");

    // The queue is still full (a hash takes a while here): a login is refused at once.
    let asked = Instant::now();
    let login = attempt(&http, app.url("/api/auth/login"), "Early0").await;
    let waited = asked.elapsed();
    assert_eq!(login.status, 503, "the login was not refused");
    assert_busy(&login, "a login while the queue is full");
    assert!(waited < Duration::from_secs(2), "refusing took {waited:?}");
    for task in pending {
        let reply = task.await.unwrap();
        assert!(matches!(reply.status, 201 | 503), "{}", reply.status);
    }
}
