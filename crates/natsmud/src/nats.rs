//! Connecting to NATS: reconnect forever, never give up; close the local connections when
//! this node may have missed events; refuse a NATS server too old for natsmud.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::realtime::{CloseReason, ConnectionManager};
use crate::telemetry;

/// The oldest nats-server natsmud runs against: presence keeps node heartbeats and the
/// tick lease as KV keys with a per-key TTL, which needs 2.11; async-nats's KV calls fail
/// against 2.9 (see DESIGN.md §5).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

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
/// Asks the NATS handler to catch this node's players up on what the world's event stream
/// stored since `since` (shortly before the NATS connection dropped).
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    pub since: time::OffsetDateTime,
}

/// How long before a disconnect catching up starts reading: events in flight then may
/// not have arrived.
const IN_FLIGHT_MARGIN: time::Duration = time::Duration::seconds(2);

pub async fn connect(
    config: &Config,
    manager: Arc<ConnectionManager>,
    fatal: Arc<Fatal>,
    reconnected: Arc<tokio::sync::Notify>,
    catch_ups: tokio::sync::mpsc::UnboundedSender<CatchUp>,
) -> anyhow::Result<async_nats::Client> {
    let urls: Vec<&str> = config
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let gaps = Arc::new(Gaps {
        manager,
        reconnected,
        handled_connects: AtomicU64::new(0),
        last_slow_consumer: std::sync::Mutex::new(None),
        catch_ups,
        disconnected_at: std::sync::Mutex::new(None),
    });
    let callback_gaps = gaps.clone();
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
            let gaps = callback_gaps.clone();
            let client = callback_client.clone();
            let fatal = fatal.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics::gauge!(telemetry::NATS_CONNECTED).set(1.0);
                        if let Some(client) = client.get() {
                            gaps.check(client);
                        }
                        tokio::spawn(async move {
                            tokio::time::sleep(VERSION_CHECK_DELAY).await;
                            if let Some(client) = client.get()
                                && let Err(problem) = check_server(&client.server_info())
                            {
                                fatal.raise(problem);
                            }
                        });
                    }
                    async_nats::Event::Disconnected => {
                        gaps.disconnected();
                        metrics::gauge!(telemetry::NATS_CONNECTED).set(0.0);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => gaps.slow_consumer(sid),
                    async_nats::Event::ServerError(async_nats::ServerError::Other(error))
                        if refuses_a_subscription(&error) =>
                    {
                        gaps.subscription_refused(&error);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(urls.as_slice())
        .await?;
    let _ = client_cell.set(client.clone());
    // Events can be dropped (async-nats's event queue is bounded, and a flood of slow-consumer
    // events can fill it), so the connection counter is also checked now and then: a
    // reconnect is never missed.
    let watched = client.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(GAP_CHECK_EVERY);
        loop {
            every.tick().await;
            gaps.check(&watched);
            if Arc::strong_count(&gaps) == 1 {
                return;
            }
        }
    });
    Ok(client)
}

/// How often the connection counter is read as a check that no reconnect went unseen.
const GAP_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Closing a node's connections at most this often for NATS slow-consumer notices (async-nats
/// reports one per dropped message) and refused subscriptions.
const SLOW_CONSUMER_CLOSE_EVERY: Duration = Duration::from_secs(1);

/// Notices gaps in what this node received from NATS and closes its connections with
/// `events_lost` when there was one.
struct Gaps {
    manager: Arc<ConnectionManager>,
    reconnected: Arc<tokio::sync::Notify>,
    /// The client's connection count last acted on.
    handled_connects: AtomicU64,
    last_slow_consumer: std::sync::Mutex<Option<std::time::Instant>>,
    catch_ups: tokio::sync::mpsc::UnboundedSender<CatchUp>,
    /// When the connection last dropped (the first drop of an outage).
    disconnected_at: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

impl Gaps {
    /// Acts once on each new connection to NATS (whichever of the event and the periodic
    /// check sees it first).
    fn check(&self, client: &async_nats::Client) {
        if client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
        let connects = client.statistics().connects.load(Ordering::Acquire);
        let handled = self.handled_connects.swap(connects, Ordering::AcqRel);
        if connects <= handled {
            return;
        }
        let again = handled > 0;
        if again {
            metrics::counter!(telemetry::NATS_RECONNECTS).increment(1);
            self.reconnected.notify_one();
            let dropped = self
                .disconnected_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(time::OffsetDateTime::now_utc);
            tracing::warn!("NATS connected after a gap; catching this node's players up");
            let _ = self.catch_ups.send(CatchUp {
                since: dropped - IN_FLIGHT_MARGIN,
            });
        } else if self.manager.connected_count() > 0 {
            // Players let in before NATS was ever reached: this node has no position to
            // catch them up from.
            tracing::warn!(
                "NATS connected after a gap; closing this node's connections: events may have been missed"
            );
            self.manager.kick_all(CloseReason::EVENTS_LOST);
        } else {
            tracing::info!("NATS connected");
        }
    }

    fn disconnected(&self) {
        let mut at = self
            .disconnected_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if at.is_none() {
            *at = Some(time::OffsetDateTime::now_utc());
        }
    }

    fn slow_consumer(&self, sid: u64) {
        metrics::counter!(telemetry::NATS_SLOW_CONSUMER).increment(1);
        if self.closing_is_due() {
            tracing::error!(
                sid,
                "NATS slow consumer: this node dropped events; closing its connections"
            );
            self.manager.kick_all(CloseReason::EVENTS_LOST);
        }
    }

    /// The server refused a subscription (it names none): some room's players would hear
    /// nothing from it, so they are told rather than left deaf.
    fn subscription_refused(&self, error: &str) {
        metrics::counter!(telemetry::NATS_SUBSCRIPTION_REFUSED).increment(1);
        if self.closing_is_due() {
            tracing::error!(
                %error,
                "the NATS server refused a subscription of this node (a permission, or its \
                 max_subscriptions); closing its connections: their events may not arrive"
            );
            self.manager.kick_all(CloseReason::EVENTS_LOST);
        }
    }

    /// Whether closing every connection again is due (at most once a second).
    fn closing_is_due(&self) -> bool {
        let now = std::time::Instant::now();
        let mut last = self
            .last_slow_consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < SLOW_CONSUMER_CLOSE_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Whether a server `-ERR` refuses a subscription: a permissions violation for one, or the
/// connection's subscription limit.
fn refuses_a_subscription(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    (error.contains("permissions violation") && error.contains("subscription"))
        || error.contains("maximum subscriptions")
}

/// `Err` with a message for the operator when the server is too old or runs without
/// JetStream.
pub fn check_server(info: &async_nats::ServerInfo) -> Result<(), String> {
    check_version(&info.version)?;
    if !info.jetstream {
        return Err(format!(
            "the NATS server (version {}) runs without JetStream, which natsmud needs for \
             presence; start it with -js (scripts/run does)",
            info.version
        ));
    }
    Ok(())
}

/// `Err` with a message for the operator when `version` is older than
/// [`MIN_SERVER_VERSION`].
pub fn check_version(version: &str) -> Result<(), String> {
    // A server that does not say (a proxy, say) is given the benefit of the doubt; what it
    // cannot do fails later with its own message.
    if version.trim().is_empty() {
        return Ok(());
    }
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
         (JetStream KV with per-key TTLs). Use a newer nats-server: \
         scripts/install-nats-server installs the pinned one"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_a_refused_subscription_from_other_server_errors() {
        assert!(refuses_a_subscription(
            "Permissions Violation for Subscription to \"chat.say.hall\""
        ));
        assert!(refuses_a_subscription("Maximum Subscriptions Exceeded"));
        assert!(!refuses_a_subscription(
            "Permissions Violation for Publish to \"chat.say.hall\""
        ));
        assert!(!refuses_a_subscription("Stale Connection"));
    }

    #[test]
    fn refuses_servers_older_than_the_minimum() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("v2.11.0").is_ok());
        assert!(check_version("2.10.26").is_err());
        assert!(check_version("3.0.0-beta").is_ok());
        let refusal = check_version("2.9.10").err().unwrap_or_default();
        assert!(
            refusal.contains("2.9.10") && refusal.contains("2.11"),
            "{refusal}"
        );
        assert!(
            check_version("").is_ok(),
            "an unknown version is not refused"
        );
    }
}
