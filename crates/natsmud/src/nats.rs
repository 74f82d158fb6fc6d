//! Connecting to NATS: reconnect forever, never give up.

use std::time::Duration;

use crate::config::Config;

/// Connects in the background: the server starts (degraded) when NATS is away and
/// recovers by itself whenever NATS comes back, however long that takes.
pub async fn connect(config: &Config) -> Result<async_nats::Client, async_nats::ConnectError> {
    let urls: Vec<&str> = config
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    async_nats::ConnectOptions::new()
        .name("natsmud")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // Short, capped backoff: a restarted NATS is found within a second or two.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(5)).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::error!(sid, "NATS slow consumer: this node dropped events")
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(urls.as_slice())
        .await
}
