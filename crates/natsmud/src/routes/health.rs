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
            "connected_players": app.manager.connected_count(),
            "uptime_secs": app.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    metrics::gauge!(crate::telemetry::NATS_CONNECTED).set(if app.publisher.is_connected() {
        1.0
    } else {
        0.0
    });
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
