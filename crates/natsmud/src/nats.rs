//! Connecting to NATS: reconnect forever, never give up; close the local connections when
//! this node may have missed events; refuse a NATS server too old for natsmud.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::realtime::{CloseReason, ConnectionManager};
use crate::telemetry;

/// The oldest nats-server natsmud runs against. Several filter subjects on one JetStream
/// consumer (replaying a player's view after a reconnect) need 2.10; async-nats's KV calls
/// fail against 2.9 (see DESIGN.md §5).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// How long after a reconnect the server's INFO is read again (the client stores it just
/// after it reports the connection).
const VERSION_CHECK_DELAY: Duration = Duration::from_millis(200);

/// Set when this process must stop because NATS cannot serve it, with the reason.
#[derive(Debug, Default)]
pub struct Fatal {
    token: CancellationToken,
    reason: OnceLock<String>,
}

impl Fatal {
    pub fn raise(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub async fn raised(&self) -> String {
        self.token.cancelled().await;
        self.reason.get().cloned().unwrap_or_default()
    }
}

/// Connects in the background: the server starts (degraded) when NATS is away and
/// recovers by itself whenever NATS comes back, however long that takes.
///
/// Core NATS delivers at most once: events published while this node was disconnected,
/// and those in flight when the connection dropped, never reach it. So when the connection
/// comes back, every local connection is closed with 4008 `events_lost`: their players
/// reconnect (announcing themselves again, which also repairs what other nodes missed of
/// them) and start from a fresh `game_state` instead of silently missing events. The same
/// happens when NATS reports that this node's subscription overflowed (a slow consumer).
pub async fn connect(
    config: &Config,
    manager: Arc<ConnectionManager>,
    fatal: Arc<Fatal>,
) -> anyhow::Result<async_nats::Client> {
    let urls: Vec<&str> = config
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let was_connected = Arc::new(AtomicBool::new(false));
    let client_cell: Arc<OnceLock<async_nats::Client>> = Arc::new(OnceLock::new());
    let mut options = match &config.nats_creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.nats_token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.nats_tls_cert, &config.nats_tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let callback_client = client_cell.clone();
    let client = options
        .require_tls(config.nats_require_tls)
        .name("natsmud")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // Short, capped backoff: a restarted NATS is found within a second or two.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(5)).min(1000))
        })
        .event_callback(move |event| {
            let was_connected = was_connected.clone();
            let manager = manager.clone();
            let client = callback_client.clone();
            let fatal = fatal.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics::gauge!(telemetry::NATS_CONNECTED).set(1.0);
                        let reconnected = was_connected.swap(true, Ordering::AcqRel);
                        if reconnected {
                            metrics::counter!(telemetry::NATS_RECONNECTS).increment(1);
                        }
                        // Players connected while this node had no NATS (a drop, or a
                        // start without it) missed whatever other nodes published meanwhile.
                        if reconnected || manager.connected_count() > 0 {
                            tracing::warn!(
                                "NATS connected after a gap; closing this node's connections: events may have been missed"
                            );
                            manager.kick_all(CloseReason::EVENTS_LOST);
                        } else {
                            tracing::info!("NATS connected");
                        }
                        tokio::spawn(async move {
                            tokio::time::sleep(VERSION_CHECK_DELAY).await;
                            if let Some(client) = client.get()
                                && let Err(problem) = check_version(&client.server_info().version)
                            {
                                fatal.raise(problem);
                            }
                        });
                    }
                    async_nats::Event::Disconnected => {
                        metrics::gauge!(telemetry::NATS_CONNECTED).set(0.0);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        metrics::counter!(telemetry::NATS_SLOW_CONSUMER).increment(1);
                        tracing::error!(
                            sid,
                            "NATS slow consumer: this node dropped events; closing its connections"
                        );
                        manager.kick_all(CloseReason::EVENTS_LOST);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(urls.as_slice())
        .await?;
    let _ = client_cell.set(client.clone());
    Ok(client)
}

/// `Err` with a message for the operator when `version` is older than
/// [`MIN_SERVER_VERSION`].
pub fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found >= MIN_SERVER_VERSION {
        return Ok(());
    }
    let (major, minor) = MIN_SERVER_VERSION;
    Err(format!(
        "the NATS server is version {version}, older than {major}.{minor}, which natsmud needs \
         (JetStream consumers with several filter subjects, and KV). Use a newer nats-server: \
         scripts/install-nats-server installs the pinned one"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_servers_older_than_the_minimum() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("v2.10.0").is_ok());
        assert!(check_version("3.0.0-beta").is_ok());
        let refusal = check_version("2.9.10").err().unwrap_or_default();
        assert!(
            refusal.contains("2.9.10") && refusal.contains("2.10"),
            "{refusal}"
        );
        assert!(check_version("").is_err());
    }
}
