//! Connecting to NATS: reconnect forever, never give up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::realtime::{CloseReason, ConnectionManager};
use crate::telemetry;

/// Connects in the background: the server starts (degraded) when NATS is away and
/// recovers by itself whenever NATS comes back, however long that takes.
///
/// When NATS reports that this node's subscription overflowed (a "slow consumer": events
/// for this node were dropped), every local connection is closed with 4008 so that no
/// player silently misses an event; they reconnect and carry on.
pub async fn connect(
    config: &Config,
    manager: Arc<ConnectionManager>,
) -> anyhow::Result<async_nats::Client> {
    let urls: Vec<&str> = config
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let was_connected = Arc::new(AtomicBool::new(false));
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
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics::gauge!(telemetry::NATS_CONNECTED).set(1.0);
                        if was_connected.swap(true, Ordering::Relaxed) {
                            metrics::counter!(telemetry::NATS_RECONNECTS).increment(1);
                            tracing::info!("NATS reconnected");
                        } else {
                            tracing::info!("NATS connected");
                        }
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
    Ok(client)
}
