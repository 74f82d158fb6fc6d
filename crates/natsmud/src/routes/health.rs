//! `GET /health`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::startup::AppState;

pub async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats_ok = app.publisher.is_connected();
    let status = if nats_ok { "ok" } else { "degraded" };
    let code = if nats_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": status,
            "nats": if nats_ok { "connected" } else { "reconnecting" },
            "presence": if app.presence.is_ready() { "ready" } else { "unavailable" },
            "node_id": app.node_id,
            "tick_leader": app.presence.is_tick_leader(),
            "players_online": app.presence.roster().count(),
            "connected_players": app.manager.connected_count(),
            "nats_traffic": nats_traffic(&app.publisher.statistics()),
            "nats_subscriptions": app.interests.subscription_count(),
            "jwt_secret_matches_cluster": app.secret_check.matches(),
            "jwt_secret_fingerprint": app.secret_check.ours,
            "uptime_secs": app.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}

/// What this node's NATS client has received and sent: what its subscriptions cost.
fn nats_traffic(statistics: &async_nats::Statistics) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "in_messages": statistics.in_messages.load(Relaxed),
        "out_messages": statistics.out_messages.load(Relaxed),
        "in_bytes": statistics.in_bytes.load(Relaxed),
        "out_bytes": statistics.out_bytes.load(Relaxed),
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    metrics::gauge!(crate::telemetry::NATS_CONNECTED).set(if app.publisher.is_connected() {
        1.0
    } else {
        0.0
    });
    crate::telemetry::record_nats_statistics(&app.publisher.statistics());
    let body = crate::telemetry::metrics_handle()
        .map(|handle| handle.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
