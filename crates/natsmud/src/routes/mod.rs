//! HTTP routes: small handlers over the shared [`AppState`](crate::startup::AppState).

pub mod auth;
pub mod health;
pub mod ws;

use axum::Router;
use axum::routing::{get, post};

use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/ws", get(ws::upgrade))
        .route("/health", get(health::health))
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
