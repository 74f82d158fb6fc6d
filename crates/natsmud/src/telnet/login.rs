//! Login on the line: a name and a password, or `create` for a new character (a name and
//! the password twice). The accounts, rules and per-address rate limit are the HTTP API's
//! (`routes::auth`); passwords are typed with the client's echo off.

use std::net::SocketAddr;

use super::{Ended, Wire};
use crate::db::Account;
use crate::error::ApiError;
use crate::routes::auth::{
    MIN_PASSWORD_CHARS, check_password, create_account, find_account, new_name, new_password,
};
use crate::startup::AppState;

/// Failed attempts (unknown name, wrong password, a name that cannot be had, passwords
/// that differ) before the connection is closed.
pub const MAX_FAILURES: u32 = 3;

const WARN: &str = "31";

/// Logs a player in (or creates one); `Err` when the connection ends first.
pub(super) async fn login(
    app: &AppState,
    wire: &mut Wire,
    peer: SocketAddr,
) -> Result<Account, Ended> {
    let banner = format!(
        "\r\n{}\r\n{}\r\n\r\nType your character's name, or 'create' to make a new one.",
        app.world.name, app.world.description
    );
    wire.say(None, &banner).await;
    let mut failures = 0;
    while failures < MAX_FAILURES {
        wire.prompt("Name: ").await?;
        let name = wire.line(app).await?;
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let attempt = if name.eq_ignore_ascii_case("create") || name.eq_ignore_ascii_case("new") {
            create(app, wire, peer).await?
        } else {
            enter(app, wire, peer, name).await?
        };
        match attempt {
            Some(account) => return Ok(account),
            None => failures += 1,
        }
    }
    wire.say(Some(WARN), "Too many failed attempts; goodbye.")
        .await;
    Err(Ended::Said)
}

/// One login as `name`: `Ok(None)` for a failed attempt (the client was told why).
async fn enter(
    app: &AppState,
    wire: &mut Wire,
    peer: SocketAddr,
    name: &str,
) -> Result<Option<Account>, Ended> {
    limited(app, wire, peer).await?;
    let account = match find_account(app, name).await {
        Ok(Some(account)) => account,
        Ok(None) => {
            let shown: String = name.chars().take(20).collect();
            wire.say(
                Some(WARN),
                &format!("There is no character named '{shown}'. Type 'create' to make one."),
            )
            .await;
            return Ok(None);
        }
        Err(error) => return Err(fail(wire, &error).await),
    };
    let password = secret(app, wire, "Password: ").await?;
    match check_password(app, Some(account), password).await {
        Ok(account) => Ok(Some(account)),
        Err(ApiError::BadCredentials) => {
            wire.say(Some(WARN), "Wrong password.").await;
            Ok(None)
        }
        Err(error) => Err(fail(wire, &error).await),
    }
}

/// Creates a character: `Ok(None)` for a failed attempt (the client was told why).
async fn create(
    app: &AppState,
    wire: &mut Wire,
    peer: SocketAddr,
) -> Result<Option<Account>, Ended> {
    wire.prompt("Choose a name (3-20 characters: a letter, then letters, digits or _): ")
        .await?;
    let typed = wire.line(app).await?;
    limited(app, wire, peer).await?;
    let name = match new_name(&typed) {
        Ok(name) => name,
        Err(error) => {
            wire.say(Some(WARN), &error.to_string()).await;
            return Ok(None);
        }
    };
    match find_account(app, name.as_str()).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            taken(wire, &name.to_string()).await;
            return Ok(None);
        }
        Err(error) => return Err(fail(wire, &error).await),
    }
    let password = secret(
        app,
        wire,
        &format!("Choose a password (at least {MIN_PASSWORD_CHARS} characters): "),
    )
    .await?;
    if let Err(error) = new_password(&password) {
        wire.say(Some(WARN), &error.to_string()).await;
        return Ok(None);
    }
    let again = secret(app, wire, "Type it again: ").await?;
    if again != password {
        wire.say(Some(WARN), "The passwords differ.").await;
        return Ok(None);
    }
    match create_account(app, name.clone(), password).await {
        Ok(account) => {
            wire.say(None, &format!("Welcome to the world, {name}."))
                .await;
            Ok(Some(account))
        }
        Err(ApiError::UsernameTaken) => {
            taken(wire, &name.to_string()).await;
            Ok(None)
        }
        Err(error) => Err(fail(wire, &error).await),
    }
}

async fn taken(wire: &mut Wire, name: &str) {
    wire.say(
        Some(WARN),
        &format!("The name {name} is taken; choose another."),
    )
    .await;
}

/// Reads a password with the client's echo off; the line end the client did not echo is
/// written for it.
async fn secret(app: &AppState, wire: &mut Wire, prompt: &str) -> Result<String, Ended> {
    let off = wire.telnet.echo_off();
    wire.send(&off).await?;
    wire.prompt(prompt).await?;
    let typed = wire.line(app).await;
    let on = wire.telnet.echo_on();
    let mut out = on.to_vec();
    out.extend_from_slice(b"\r\n");
    wire.send(&out).await?;
    typed
}

/// The per-address limit on login and register attempts, as the HTTP API counts them.
async fn limited(app: &AppState, wire: &mut Wire, peer: SocketAddr) -> Result<(), Ended> {
    match app.auth_limiter.check(peer.ip()) {
        Ok(()) => Ok(()),
        Err(wait) => Err(fail(wire, &ApiError::RateLimited(wait)).await),
    }
}

/// Tells the client why it cannot log in now (rate limited, busy, broken).
async fn fail(wire: &mut Wire, error: &ApiError) -> Ended {
    if let ApiError::Internal(source) = error {
        tracing::error!(error = format!("{source:#}"), "telnet login failed");
    }
    let text = match error {
        ApiError::RateLimited(_) | ApiError::Busy(_) => {
            let mut text = error.to_string();
            if let Some(first) = text.get(..1) {
                text = first.to_uppercase() + &text[1..];
            }
            format!("{text}.")
        }
        _ => "Something went wrong on our side; try again later.".to_owned(),
    };
    wire.say(Some(WARN), &text).await;
    Ended::Said
}
