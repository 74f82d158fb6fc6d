//! HTTP errors: one enum, mapped to a status and a JSON body in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("invalid username or password")]
    BadCredentials,
    #[error("missing, invalid or expired access token")]
    BadToken,
    #[error("that username is taken")]
    UsernameTaken,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server is full; try again later")]
    ServerFull,
    #[error("too many attempts; try again in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the server is busy; try again in {} s", retry_after_secs(*.0))]
    Busy(std::time::Duration),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_request"),
            Self::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::BadCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::BadToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::UsernameTaken => (StatusCode::CONFLICT, "username_taken"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::ServerFull => (StatusCode::SERVICE_UNAVAILABLE, "server_full"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The JSON error body every endpoint uses.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(error) = &self {
            tracing::error!(error = format!("{error:#}"), "request failed");
        }
        let mut response = error_body(status, code, &self.to_string());
        if let Self::RateLimited(wait) | Self::Busy(wait) = &self
            && let Ok(value) =
                axum::http::HeaderValue::from_str(&retry_after_secs(*wait).to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> Self {
        match error {
            crate::db::DbError::UsernameTaken => Self::UsernameTaken,
            other => Self::Internal(other.into()),
        }
    }
}
