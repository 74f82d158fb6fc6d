//! `POST /api/command`: a client message from an SSE (or any) connected player. It runs on
//! the player's connection, in order with its other commands; replies arrive on the stream.

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use natsmud_protocol::{PlayerId, parse_client_message};
use serde_json::json;

use crate::error::{ApiError, error_body};
use crate::realtime::connection_manager::ManagerError;
use crate::startup::AppState;

pub async fn submit(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(claims) = token.and_then(|t| app.tokens.verify(t.trim()).ok()) else {
        return ApiError::BadToken.into_response();
    };
    let limit = app.config.max_frame_bytes as usize;
    let Ok(bytes) = to_bytes(body, limit).await else {
        return error_body(
            StatusCode::PAYLOAD_TOO_LARGE,
            "frame_too_large",
            &format!("A command is at most {limit} bytes."),
        );
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return error_body(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "The body must be UTF-8 JSON.",
        );
    };
    let message = match parse_client_message(text) {
        Ok(message) => message,
        Err(error) => {
            return error_body(StatusCode::BAD_REQUEST, error.code.as_str(), &error.message);
        }
    };
    let Ok(player) = PlayerId::parse(&claims.sub) else {
        return ApiError::BadToken.into_response();
    };
    // Checked here rather than on the connection, so the refusal is this response's (and
    // before anything costs a database read).
    if let Err(wait) = app.player_limits.check_command(&player) {
        return ApiError::RateLimited(wait).into_response();
    }
    if !app.manager.is_connected(player.as_str()) {
        return not_connected(&app, &player).await;
    }
    match app.manager.submit(player.as_str(), message) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response(),
        Err(ManagerError::Busy) => ApiError::RateLimited(Duration::from_secs(1)).into_response(),
        Err(_) => not_connected(&app, &player).await,
    }
}

/// 409 for a player who has no open connection, but 401 (as `/api/ws` answers) when the
/// token's account no longer exists.
async fn not_connected(app: &AppState, player: &PlayerId) -> Response {
    match app.accounts.find_by_id(player.as_str()).await {
        Ok(None) => ApiError::BadToken.into_response(),
        Err(error) => ApiError::from(error).into_response(),
        Ok(Some(_)) => error_body(
            StatusCode::CONFLICT,
            "not_connected",
            "Open /api/events (or /api/ws) first; replies arrive there.",
        ),
    }
}
