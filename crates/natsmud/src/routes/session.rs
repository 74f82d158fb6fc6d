//! A connection's life, the same for both transports: attach (register with the
//! ConnectionManager, send `game_state`, announce `player_entered_game`), run client
//! messages in order, detach (remove, announce `player_left_game`).

use std::time::Duration;

use natsmud_protocol::{ClientMessage, ErrorCode, ProtocolError};
use tokio::sync::mpsc;

use crate::db::Account;
use crate::game::{self, Flow, Session};
use crate::limits::{CommandLimiter, Verdict};
use crate::realtime::connection_manager::{
    CloseReason, ConnectionHandle, ManagerError, Queued, Transport,
};
use crate::startup::AppState;
use crate::telemetry;

/// How long a login waits for a command of the connection it replaces (a move being
/// stored, say) to finish before it takes over anyway.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

pub struct Attached {
    pub conn: ConnectionHandle,
    pub outbound: mpsc::Receiver<Queued>,
    pub commands: mpsc::Receiver<ClientMessage>,
    pub limiter: CommandLimiter,
}

pub async fn attach(
    app: &AppState,
    account: &Account,
    transport: Transport,
) -> Result<Attached, ManagerError> {
    let wanted = account
        .room_id
        .as_ref()
        .and_then(|r| app.world.room(r.as_str()))
        .unwrap_or_else(|| app.world.start())
        .id
        .clone();
    let world = &app.world;
    let greeting = |arrival: crate::realtime::connection_manager::Arrival<'_>| {
        // The manager only ever holds rooms of this world.
        let room = world
            .room(arrival.room.as_str())
            .unwrap_or_else(|| world.start());
        game::game_state(&account.id, &account.name, room, arrival)
    };
    // A command of the connection this one replaces finishes first (see `Member::actions`).
    let actions = app.manager.action_lock(&account.id);
    let turn = tokio::time::timeout(TAKEOVER_WAIT, actions.lock()).await;
    if turn.is_err() {
        tracing::warn!("the replaced connection's command did not finish in time; taking over");
    }
    let connected = app.manager.connect(
        account.id.clone(),
        account.name.clone(),
        &wanted,
        transport,
        app.config.max_connections as usize,
        greeting,
    )?;
    drop(turn);
    metrics::gauge!(telemetry::CONNECTIONS, "transport" => transport.as_str()).increment(1.0);
    tracing::info!(
        entered_game = connected.entered_game,
        transport = transport.as_str(),
        "connected"
    );
    let attached = Attached {
        conn: connected.handle,
        outbound: connected.outbound,
        commands: connected.commands,
        limiter: CommandLimiter::new(app.player_limits.clone(), account.id.clone()),
    };
    let session = Session {
        app,
        conn: &attached.conn,
    };
    if connected.entered_game {
        session.announce_presence(&connected.room, true).await;
    }
    Ok(attached)
}

/// Whether a message still has to pass the player's rate limit: `POST /api/command`
/// checks it before accepting a message, so that it can answer 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Check,
    Admitted,
}

/// Runs one client message (or answers why it cannot be read), within the player's rate
/// limit; closes the connection when the player quits or keeps flooding.
pub async fn handle(
    app: &AppState,
    conn: &ConnectionHandle,
    limiter: &mut CommandLimiter,
    admission: Admission,
    message: Result<ClientMessage, ProtocolError>,
) {
    let session = Session { app, conn };
    if admission == Admission::Check {
        match limiter.check() {
            Verdict::Run => {}
            Verdict::Refuse => {
                session
                    .send_error(&ProtocolError::new(
                        ErrorCode::RateLimited,
                        "You are sending commands too fast; wait a moment.",
                    ))
                    .await;
                return;
            }
            Verdict::Disconnect => {
                conn.kick.close(CloseReason::RATE_LIMITED);
                return;
            }
        }
    }
    match message {
        Ok(message) => {
            if session.handle_message(message).await == Flow::Quit {
                conn.kick.close(CloseReason::NORMAL);
            }
        }
        Err(error) => session.send_error(&error).await,
    }
}

pub async fn detach(app: &AppState, conn: &ConnectionHandle) {
    conn.kick.close(CloseReason::NORMAL);
    metrics::gauge!(telemetry::CONNECTIONS, "transport" => conn.transport.as_str()).decrement(1.0);
    if let Some(room) = app.manager.disconnect(conn) {
        Session { app, conn }.announce_presence(&room, false).await;
    }
    tracing::info!(reason = conn.kick.reason().reason, "disconnected");
}
