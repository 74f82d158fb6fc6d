//! HTTP routes: small handlers over the shared [`AppState`](crate::startup::AppState).

pub mod auth;
pub mod command;
pub mod health;
pub mod session;
pub mod sse;
pub mod web;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/auth/register",
            post(auth::register).layer(DefaultBodyLimit::max(auth::MAX_BODY_BYTES)),
        )
        .route(
            "/api/auth/login",
            post(auth::login).layer(DefaultBodyLimit::max(auth::MAX_BODY_BYTES)),
        )
        .route("/api/ws", get(ws::upgrade))
        .route("/api/events", get(sse::events))
        .route("/api/command", post(command::submit))
        .route("/metrics", get(health::metrics))
        .route("/health", get(health::health))
        .route("/", get(web::index))
        .route("/static/{*path}", get(web::asset))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> axum::response::Response {
    crate::error::error_body(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}
