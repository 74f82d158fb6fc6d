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
    let deadline = axum::middleware::from_fn_with_state(state.clone(), within_deadline);
    Router::new()
        .route(
            "/api/auth/register",
            post(auth::register)
                .layer(DefaultBodyLimit::max(auth::MAX_BODY_BYTES))
                .layer(deadline.clone()),
        )
        .route(
            "/api/auth/login",
            post(auth::login)
                .layer(DefaultBodyLimit::max(auth::MAX_BODY_BYTES))
                .layer(deadline.clone()),
        )
        .route("/api/ws", get(ws::upgrade))
        .route("/api/events", get(sse::events))
        .route("/api/command", post(command::submit).layer(deadline))
        .route("/metrics", get(health::metrics))
        .route("/health", get(health::health))
        .route("/", get(web::index))
        .route("/static/{*path}", get(web::asset))
        .fallback(not_found)
        .with_state(state)
}

/// `/health` and `/metrics` alone, for `--admin-bind`: an address of their own, outside
/// the socket caps, so a node full of players (or under a flood) still answers its
/// orchestrator.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/health", get(health::health))
        .fallback(not_found)
        .with_state(state)
}

/// How long a request with a body (login, register, a command) may take to arrive and be
/// answered: the header timeout covers only the request's head, and a body trickled a byte
/// at a time would otherwise hold its socket for good. The same length as the header
/// timeout.
async fn within_deadline(
    axum::extract::State(app): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let deadline = app.config.http_header_timeout();
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => crate::error::error_body(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "The request took too long to arrive.",
        ),
    }
}

async fn not_found() -> axum::response::Response {
    crate::error::error_body(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}
