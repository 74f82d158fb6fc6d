//! Logs (tracing) and metrics (Prometheus text at `GET /metrics`).
//!
//! Metric names, all prefixed `natsmud_`:
//! - `connections{transport}` (gauge): open WebSocket, SSE and telnet connections.
//! - `events_published_total{event_type}`, `events_publish_failed_total{event_type}`.
//! - `publish_seconds` (histogram): handing one event to NATS.
//! - `events_received_total`: events read from NATS; `events_rejected_total{reason}`: ones
//!   refused by the checks of `realtime::nats_handler` (malformed, wrong kind, …).
//! - `events_delivered_total`: frames queued for sockets (one per recipient).
//! - `delivery_seconds` (histogram): NATS → socket, from the event's arrival at this node to
//!   its frame being written to one recipient's socket.
//! - `slow_consumer_disconnects_total`, `ticks_total`, `ticks_failed_total`.
//! - `nats_connected` (gauge, 0/1), `nats_reconnects_total`, `nats_slow_consumer_total`.
//! - `presence_lost_total`: times this node's heartbeat expired and its players were
//!   closed; `heartbeat_renewed_total`: times it lapsed while the presence bucket could
//!   not answer or answered late (a JetStream election, an overloaded server) and was
//!   renewed, its players kept;
//!   `presence_written_off_total`: players of dead nodes whose departure this node
//!   announced; `tick_leader` (gauge, 0/1): whether this node holds the tick lease.
//! - `nats_in_messages_total`, `nats_out_messages_total`, `nats_in_bytes_total`,
//!   `nats_out_bytes_total`: the NATS client's own traffic counts (what this node receives
//!   from NATS is what its subscriptions cost).
//! - `sockets_open` (gauge): accepted TCP sockets open, of every kind;
//!   `sockets_refused_total{reason}` (`per_ip`, `max_sockets`): answered 503 and closed;
//!   `accept_errors_total`; `write_timeouts_total`: connections closed because a write made
//!   no progress for `write_timeout_secs`.
//! - `password_hashes_in_flight` (gauge), `password_hashing_refused_total`: logins and
//!   registrations refused with 503 `busy` because the hashing queue was full.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "natsmud_connections";
pub const EVENTS_PUBLISHED: &str = "natsmud_events_published_total";
pub const EVENTS_PUBLISH_FAILED: &str = "natsmud_events_publish_failed_total";
pub const PUBLISH_SECONDS: &str = "natsmud_publish_seconds";
pub const EVENTS_RECEIVED: &str = "natsmud_events_received_total";
pub const EVENTS_REJECTED: &str = "natsmud_events_rejected_total";
pub const EVENTS_DELIVERED: &str = "natsmud_events_delivered_total";
pub const DELIVERY_SECONDS: &str = "natsmud_delivery_seconds";
pub const SLOW_CONSUMERS: &str = "natsmud_slow_consumer_disconnects_total";
pub const TICKS: &str = "natsmud_ticks_total";
pub const TICKS_FAILED: &str = "natsmud_ticks_failed_total";
pub const NATS_CONNECTED: &str = "natsmud_nats_connected";
pub const NATS_RECONNECTS: &str = "natsmud_nats_reconnects_total";
pub const NATS_SLOW_CONSUMER: &str = "natsmud_nats_slow_consumer_total";
pub const NATS_SUBSCRIPTION_REFUSED: &str = "natsmud_nats_subscription_refused_total";
pub const PRESENCE_LOST: &str = "natsmud_presence_lost_total";
pub const HEARTBEAT_RENEWED: &str = "natsmud_heartbeat_renewed_total";
pub const PRESENCE_WRITTEN_OFF: &str = "natsmud_presence_written_off_total";
pub const TICK_LEADER: &str = "natsmud_tick_leader";
pub const NATS_IN_MESSAGES: &str = "natsmud_nats_in_messages_total";
pub const NATS_OUT_MESSAGES: &str = "natsmud_nats_out_messages_total";
pub const NATS_IN_BYTES: &str = "natsmud_nats_in_bytes_total";
pub const NATS_OUT_BYTES: &str = "natsmud_nats_out_bytes_total";
pub const NATS_SUBSCRIPTIONS: &str = "natsmud_nats_subscriptions";
pub const EVENTS_CAUGHT_UP: &str = "natsmud_events_caught_up_total";
pub const EVENTS_HEARD_TWICE: &str = "natsmud_events_heard_twice_total";
pub const RESUMES: &str = "natsmud_resumes_total";
pub const RESUMED_EVENTS: &str = "natsmud_resumed_events_total";
pub const RESUME_SECONDS: &str = "natsmud_resume_seconds";
pub const LINK_DEAD: &str = "natsmud_link_dead_total";
pub const SOCKETS_OPEN: &str = "natsmud_sockets_open";
pub const SOCKETS_REFUSED: &str = "natsmud_sockets_refused_total";
pub const ACCEPT_ERRORS: &str = "natsmud_accept_errors_total";
pub const WRITE_TIMEOUTS: &str = "natsmud_write_timeouts_total";
pub const PASSWORD_HASHES_IN_FLIGHT: &str = "natsmud_password_hashes_in_flight";
pub const PASSWORD_HASHING_REFUSED: &str = "natsmud_password_hashing_refused_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test process share it)
/// and returns its handle.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open player connections by transport");
    describe_counter!(EVENTS_PUBLISHED, "Events published to NATS, by event type");
    describe_counter!(
        EVENTS_PUBLISH_FAILED,
        "Events that could not be published, by event type"
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Time to hand one event to NATS"
    );
    describe_counter!(EVENTS_RECEIVED, "Events received from NATS");
    describe_counter!(
        EVENTS_REJECTED,
        "Events from NATS refused by their checks, by reason"
    );
    describe_counter!(EVENTS_DELIVERED, "Frames queued for player sockets");
    describe_histogram!(
        DELIVERY_SECONDS,
        Unit::Seconds,
        "From an event's arrival from NATS to its write to a socket"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed because their queue was full"
    );
    describe_counter!(TICKS, "Game ticks published");
    describe_counter!(TICKS_FAILED, "Game ticks that could not be published");
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS");
    describe_counter!(NATS_RECONNECTS, "Reconnections to NATS after a disconnect");
    describe_counter!(
        EVENTS_HEARD_TWICE,
        "Events two subscriptions of this node brought (while it changed what it listens to), delivered once"
    );
    describe_counter!(
        EVENTS_CAUGHT_UP,
        "Events read back from the event stream after a NATS reconnect, for this node's players"
    );
    describe_counter!(
        RESUMES,
        "Connections that asked to resume, by outcome (recovered, or the reason not)"
    );
    describe_counter!(RESUMED_EVENTS, "Missed events sent to resuming connections");
    describe_histogram!(
        RESUME_SECONDS,
        Unit::Seconds,
        "Reading back a resuming connection's missed events"
    );
    describe_counter!(
        LINK_DEAD,
        "Connections that dropped without quit, their player kept in the world for the grace period"
    );
    describe_counter!(
        PRESENCE_LOST,
        "Times this node's heartbeat expired and its players were closed"
    );
    describe_counter!(
        HEARTBEAT_RENEWED,
        "Times this node's heartbeat lapsed while presence could not answer and was renewed"
    );
    describe_counter!(
        PRESENCE_WRITTEN_OFF,
        "Players of dead nodes whose departure this node announced"
    );
    describe_gauge!(TICK_LEADER, "1 while this node holds the tick lease");
    describe_counter!(NATS_IN_MESSAGES, "Messages this node received from NATS");
    describe_counter!(NATS_OUT_MESSAGES, "Messages this node sent to NATS");
    describe_counter!(NATS_IN_BYTES, "Bytes this node received from NATS");
    describe_counter!(NATS_OUT_BYTES, "Bytes this node sent to NATS");
    describe_gauge!(
        NATS_SUBSCRIPTIONS,
        "NATS subscriptions this node holds (rooms and sub-zones with its players, and the world's)"
    );
    describe_counter!(
        NATS_SLOW_CONSUMER,
        "Times NATS reported this node too slow for its subscription"
    );
    describe_counter!(
        NATS_SUBSCRIPTION_REFUSED,
        "Subscriptions the NATS server refused (permissions, or its subscription limit)"
    );
    describe_gauge!(SOCKETS_OPEN, "Accepted TCP sockets open, of every kind");
    describe_counter!(
        SOCKETS_REFUSED,
        "Sockets answered 503 and closed at accept, by cap (per_ip, max_sockets)"
    );
    describe_counter!(ACCEPT_ERRORS, "Errors accepting a TCP connection");
    describe_counter!(
        WRITE_TIMEOUTS,
        "Connections closed because a write to the client made no progress in time"
    );
    describe_gauge!(PASSWORD_HASHES_IN_FLIGHT, "Password hashes being computed");
    describe_counter!(
        PASSWORD_HASHING_REFUSED,
        "Logins and registrations refused because the hashing queue was full"
    );
}

/// Copies the NATS client's traffic counts into the metrics (called when scraped).
pub fn record_nats_statistics(statistics: &async_nats::Statistics) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics::counter!(NATS_IN_MESSAGES).absolute(statistics.in_messages.load(Relaxed));
    metrics::counter!(NATS_OUT_MESSAGES).absolute(statistics.out_messages.load(Relaxed));
    metrics::counter!(NATS_IN_BYTES).absolute(statistics.in_bytes.load(Relaxed));
    metrics::counter!(NATS_OUT_BYTES).absolute(statistics.out_bytes.load(Relaxed));
}

/// Histograms keep raw samples until folded; fold them regularly even when nobody scrapes,
/// so memory stays flat.
pub async fn run_upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// Initialises logging for the binary: human-readable, or JSON lines.
pub fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
}
