//! `POST /api/auth/register` and `POST /api/auth/login`.

use axum::Json;
use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use natsmud_protocol::{PlayerId, PlayerName};
use serde::{Deserialize, Serialize};

use crate::auth::AuthError;
use crate::error::ApiError;
use crate::startup::AppState;

/// Passwords longer than this are refused before hashing, so nobody can make the server
/// hash megabytes.
const MAX_PASSWORD_BYTES: usize = 256;
const MIN_PASSWORD_CHARS: usize = 8;

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuthResponse {
    pub player_id: String,
    pub player_name: String,
    pub access_token: String,
    pub token_type: String,
}

fn body(payload: Result<Json<Credentials>, JsonRejection>) -> Result<Credentials, ApiError> {
    payload.map(|Json(c)| c).map_err(|e| {
        ApiError::Malformed(format!(
            "expected JSON {{\"username\",\"password\"}}: {}",
            e.body_text()
        ))
    })
}

fn busy(error: AuthError) -> ApiError {
    match error {
        AuthError::Busy(wait) => ApiError::Busy(wait),
        other => ApiError::Internal(other.into()),
    }
}

fn respond(app: &AppState, id: &PlayerId, name: &PlayerName) -> Result<AuthResponse, ApiError> {
    let access_token = app
        .tokens
        .issue(id, name)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(AuthResponse {
        player_id: id.to_string(),
        player_name: name.to_string(),
        access_token,
        token_type: "bearer".to_owned(),
    })
}

pub async fn register(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    payload: Result<Json<Credentials>, JsonRejection>,
) -> Result<(StatusCode, Json<AuthResponse>), ApiError> {
    app.auth_limiter
        .check(peer.ip())
        .map_err(ApiError::RateLimited)?;
    let credentials = body(payload)?;
    let name = PlayerName::parse(credentials.username.trim()).map_err(|_| ApiError::Invalid {
        code: "invalid_username",
        message: "Usernames are 3–20 characters: a letter, then letters, digits or '_'.".to_owned(),
    })?;
    let chars = credentials.password.chars().count();
    if chars < MIN_PASSWORD_CHARS || credentials.password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::Invalid {
            code: "invalid_password",
            message: format!(
                "Passwords are {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters."
            ),
        });
    }
    if app.accounts.find_by_name(&name).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let hash = app
        .passwords
        .hash(credentials.password)
        .await
        .map_err(busy)?;
    let id = PlayerId::parse(&uuid::Uuid::new_v4().to_string())
        .map_err(|e| ApiError::Internal(e.into()))?;
    app.accounts
        .create(&id, &name, &hash, &app.world.start_room)
        .await?;
    tracing::info!(player = %name, "registered");
    Ok((StatusCode::CREATED, Json(respond(&app, &id, &name)?)))
}

pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    payload: Result<Json<Credentials>, JsonRejection>,
) -> Result<Json<AuthResponse>, ApiError> {
    app.auth_limiter
        .check(peer.ip())
        .map_err(ApiError::RateLimited)?;
    let credentials = body(payload)?;
    if credentials.password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::BadCredentials);
    }
    let account = match PlayerName::parse(credentials.username.trim()) {
        Ok(name) => app.accounts.find_by_name(&name).await?,
        Err(_) => None,
    };
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    if !app
        .passwords
        .verify(credentials.password, hash)
        .await
        .map_err(busy)?
    {
        return Err(ApiError::BadCredentials);
    }
    let account = account.ok_or(ApiError::BadCredentials)?;
    Ok(Json(respond(&app, &account.id, &account.name)?))
}
