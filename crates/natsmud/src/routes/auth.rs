//! `POST /api/auth/register` and `POST /api/auth/login`.

use axum::Json;
use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use natsmud_protocol::{PlayerId, PlayerName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::AuthError;
use crate::db::Account;
use crate::error::ApiError;
use crate::startup::AppState;

/// Largest register or login body. Credentials are short (a 256-character password is at
/// most 1 KiB of UTF-8, 3 KiB as JSON escapes), so anything larger is not a login.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// Passwords longer than this are refused before hashing, so nobody can make the server
/// hash megabytes.
const MAX_PASSWORD_CHARS: usize = 256;
pub const MIN_PASSWORD_CHARS: usize = 8;

const EXPECTED: &str = r#"send {"username": "…", "password": "…"}"#;

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

/// Reads the credentials, explaining in plain words what is wrong with a bad body (the
/// extractor's own messages name Rust types).
fn body(payload: Result<Json<Value>, JsonRejection>) -> Result<Credentials, ApiError> {
    let value = match payload {
        Ok(Json(value)) => value,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        Err(JsonRejection::MissingJsonContentType(_)) => {
            return Err(ApiError::Malformed(format!(
                "the body must be JSON, sent with Content-Type: application/json; {EXPECTED}"
            )));
        }
        Err(JsonRejection::JsonSyntaxError(_) | JsonRejection::JsonDataError(_)) => {
            return Err(ApiError::Malformed(format!(
                "the body is not valid JSON; {EXPECTED}"
            )));
        }
        Err(_) => {
            return Err(ApiError::Malformed(
                "the request body could not be read".to_owned(),
            ));
        }
    };
    let Value::Object(mut fields) = value else {
        return Err(ApiError::Malformed(format!(
            "the body must be a JSON object; {EXPECTED}"
        )));
    };
    let mut field = |name: &str| match fields.remove(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ApiError::Malformed(format!(
            "\"{name}\" must be a string; {EXPECTED}"
        ))),
        None => Err(ApiError::Malformed(format!(
            "\"{name}\" is missing; {EXPECTED}"
        ))),
    };
    Ok(Credentials {
        username: field("username")?,
        password: field("password")?,
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
    payload: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<AuthResponse>), ApiError> {
    app.auth_limiter
        .check(peer.ip())
        .map_err(ApiError::RateLimited)?;
    let credentials = body(payload)?;
    let name = new_name(&credentials.username)?;
    new_password(&credentials.password)?;
    let account = create_account(&app, name, credentials.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(respond(&app, &account.id, &account.name)?),
    ))
}

pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    payload: Result<Json<Value>, JsonRejection>,
) -> Result<Json<AuthResponse>, ApiError> {
    app.auth_limiter
        .check(peer.ip())
        .map_err(ApiError::RateLimited)?;
    let credentials = body(payload)?;
    let account = find_account(&app, &credentials.username).await?;
    let account = check_password(&app, account, credentials.password).await?;
    Ok(Json(respond(&app, &account.id, &account.name)?))
}

/// A name for a new account, checked as registering checks it (the telnet login too).
pub fn new_name(username: &str) -> Result<PlayerName, ApiError> {
    let name = PlayerName::parse(username.trim()).map_err(|_| ApiError::Invalid {
        code: "invalid_username",
        message: "Usernames are 3–20 characters: a letter, then letters, digits or '_'.".to_owned(),
    })?;
    if name.is_reserved() {
        return Err(ApiError::Invalid {
            code: "invalid_username",
            message: format!("The name {name} is reserved; choose another."),
        });
    }
    Ok(name)
}

/// Refuses a password for a new account that is too short or too long.
pub fn new_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(ApiError::Invalid {
            code: "invalid_password",
            message: format!(
                "Passwords are {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters."
            ),
        });
    }
    Ok(())
}

/// Stores a new account (`name` and `password` checked by [`new_name`] and
/// [`new_password`]); `UsernameTaken` when the name is someone's already.
pub async fn create_account(
    app: &AppState,
    name: PlayerName,
    password: String,
) -> Result<Account, ApiError> {
    if app.accounts.find_by_name(&name).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let hash = app.passwords.hash(password).await.map_err(busy)?;
    let id = PlayerId::parse(&uuid::Uuid::new_v4().to_string())
        .map_err(|e| ApiError::Internal(e.into()))?;
    app.accounts
        .create(&id, &name, &hash, &app.world.start_room)
        .await?;
    tracing::info!(player = %name, "registered");
    Ok(Account {
        id,
        name,
        password_hash: hash,
        room_id: None,
    })
}

/// The account of `username`, if there is one (a name that cannot be one has none).
pub async fn find_account(app: &AppState, username: &str) -> Result<Option<Account>, ApiError> {
    Ok(match PlayerName::parse(username.trim()) {
        Ok(name) => app.accounts.find_by_name(&name).await?,
        Err(_) => None,
    })
}

/// `account` when `password` is its password. Without an account the password is still
/// checked (against a dummy hash), so that an unknown name costs what a wrong password does.
pub async fn check_password(
    app: &AppState,
    account: Option<Account>,
    password: String,
) -> Result<Account, ApiError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::BadCredentials);
    }
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    if !app.passwords.verify(password, hash).await.map_err(busy)? {
        return Err(ApiError::BadCredentials);
    }
    account.ok_or(ApiError::BadCredentials)
}
