//! A connection's life, the same for both transports: attach (take the player's presence,
//! register with the ConnectionManager, send `game_state`, announce `player_entered_game`),
//! run client messages in order, detach (remove, release the presence, announce
//! `player_left_game`).

use std::time::Duration;

use natsmud_protocol::envelope::ResumedData;
use natsmud_protocol::position::splice_position_numbered;
use natsmud_protocol::{ClientMessage, Envelope, ErrorCode, EventType, ProtocolError, RoomId};

use crate::db::Account;
use crate::game::{self, Flow, Session};
use crate::limits::{CommandLimiter, Verdict};
use crate::presence::roster::{Holder, Seen};
use crate::presence::{Departure, PresenceError};
use crate::realtime::Outbound;
use crate::realtime::Wanted;
use crate::realtime::connection_manager::{
    CloseReason, ConnectionHandle, Identity, ManagerError, Queued, Transport,
};
use crate::realtime::mailbox;
use crate::realtime::resume::{NotRecovered, ResumeFrom, View, read_missed};
use crate::startup::AppState;
use crate::telemetry;

/// How long a login waits for a command of the connection it replaces (a move being
/// stored, say) to finish before it takes over anyway.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

pub struct Attached {
    pub conn: ConnectionHandle,
    pub outbound: Outbound,
    pub commands: mailbox::Receiver<ClientMessage>,
    pub limiter: CommandLimiter,
}

// The work of `attach`, `handle` and `detach` is boxed: inline, their futures (6–8 KiB
// each) would be part of every connection task's state for as long as it lives, idle or
// not — most of an idle player's memory (docs/performance.md). A box per command or
// login costs nothing next to the command itself.

/// Lets the player in on this connection; with `resume`, sends what it missed since then
/// right after its greeting (see `realtime::resume`).
pub async fn attach(
    app: &AppState,
    account: &Account,
    transport: Transport,
    resume: Option<ResumeFrom>,
) -> Result<Attached, ManagerError> {
    Box::pin(attach_now(app, account, transport, resume)).await
}

async fn attach_now(
    app: &AppState,
    account: &Account,
    transport: Transport,
    resume: Option<ResumeFrom>,
) -> Result<Attached, ManagerError> {
    // A command of the connection this one replaces finishes first (see `Member::actions`).
    let actions = app.manager.action_lock(&account.id);
    let turn = tokio::time::timeout(TAKEOVER_WAIT, actions.lock()).await;
    if turn.is_err() {
        tracing::warn!("the replaced connection's command did not finish in time; taking over");
    }
    // Read again now: a move of the connection just replaced may have stored a new room
    // since the token was checked.
    let stored = match app.accounts.find_by_id(account.id.as_str()).await {
        Ok(Some(fresh)) => fresh.room_id,
        _ => account.room_id.clone(),
    };
    let stored_room = stored
        .as_ref()
        .and_then(|r| app.world.room(r.as_str()))
        .unwrap_or_else(|| app.world.start())
        .id
        .clone();
    let connection = app.manager.next_connection_id();
    // This node listens to the room before the player is in it and before anyone hears of
    // the arrival (see `realtime::interest`); before the claim, whose round trip to NATS
    // then has the subscription registered before the roster is read.
    let mut listening = want_room(app, &stored_room).await?;
    // The world's roster next: a player online on another node is taken over from there,
    // in the room it is in.
    let (room, presence, entered_game) = match app
        .presence
        .claim(&account.id, &account.name, &stored_room, connection)
        .await
    {
        Ok(claim) => {
            let room = claim
                .previous_room
                .filter(|room| app.world.room(room.as_str()).is_some());
            let entered = !claim.took_over;
            (
                room.unwrap_or_else(|| stored_room.clone()),
                claim.revision,
                Some(entered),
            )
        }
        Err(PresenceError::Contended) => return Err(ManagerError::Busy),
        Err(error) => {
            // NATS is away: serve this player here; when NATS returns, every connection of
            // this node is closed (events may have been missed) and claims again.
            tracing::warn!(%error, "presence unavailable; letting the player in on this node only");
            app.presence.roster().put_provisional(
                &account.id,
                Seen {
                    name: account.name.clone(),
                    room: Some(stored_room.as_str().into()),
                    holder: Some(Holder {
                        node: app.node_id.as_str().into(),
                        incarnation: "".into(),
                        connection,
                    }),
                    revision: 0,
                },
            );
            (stored_room.clone(), 0, None)
        }
    };
    if room != stored_room {
        // Taken over in another room than the stored one.
        match want_room(app, &room).await {
            Ok(also) => listening.join(also),
            Err(error) => {
                if presence != 0 {
                    let _ = app
                        .presence
                        .release(&account.id, connection, presence)
                        .await;
                }
                return Err(error);
            }
        }
    }
    if listening.fresh() {
        app.presence.caught_up(presence, game::CATCH_UP_WAIT).await;
    }
    let world = &app.world;
    let presence_model = &app.presence;
    let greeting = |arrival: crate::realtime::connection_manager::Arrival<'_>| {
        // The manager only ever holds rooms of this world.
        let room = world
            .room(arrival.room.as_str())
            .unwrap_or_else(|| world.start());
        let occupants = game::occupants_with(presence_model, &room.id, &account.name);
        let greeting = game::game_state(
            &account.id,
            &account.name,
            room,
            occupants,
            arrival.sequence,
        );
        // Where this connection starts in the event stream: a client that got nothing
        // else can resume from here.
        let start = app
            .delivered_through
            .load(std::sync::atomic::Ordering::Acquire);
        app.stream
            .epoch()
            .and_then(|epoch| splice_position_numbered(&greeting, &epoch, start))
            .map_or(greeting, bytes::Bytes::from)
    };
    let connected = app.manager.connect(
        account.id.clone(),
        account.name.clone(),
        &room,
        transport,
        app.config.max_connections as usize,
        Identity {
            connection,
            presence,
            queue_headroom: if resume.is_some() {
                app.config.resume_max_missed as usize
            } else {
                0
            },
        },
        greeting,
    );
    let connected = match connected {
        Ok(connected) => connected,
        Err(error) => {
            // Not let in after all: give the presence back (nobody was told of it).
            if presence != 0 {
                let _ = app
                    .presence
                    .release(&account.id, connection, presence)
                    .await;
            }
            return Err(error);
        }
    };
    drop(listening);
    drop(turn);
    // Whether the player was still in the world (the claim took it over): unknown when
    // presence was unavailable.
    let stayed = entered_game.map(|entered| !entered);
    let entered_game = entered_game.unwrap_or(connected.entered_game);
    metrics::gauge!(telemetry::CONNECTIONS, "transport" => transport.as_str()).increment(1.0);
    tracing::info!(entered_game, transport = transport.as_str(), "connected");
    let mut attached = Attached {
        conn: connected.handle,
        outbound: Outbound::new(connected.outbound),
        commands: connected.commands,
        limiter: CommandLimiter::new(app.player_limits.clone(), account.id.clone()),
    };
    if let Some(resume) = resume {
        resume_missed(app, &mut attached, &connected.room, stayed, resume).await;
    }
    let session = Session {
        game: app.game(),
        conn: &attached.conn,
    };
    if entered_game {
        let revision = (presence != 0).then_some(presence);
        session
            .announce_presence(&connected.room, true, revision)
            .await;
    }
    Ok(attached)
}

/// The reason a connection that could not be let in is closed with.
pub fn refusal(error: &ManagerError) -> CloseReason {
    match error {
        ManagerError::Full => CloseReason::SERVER_FULL,
        ManagerError::Busy => CloseReason::BUSY,
        _ => CloseReason::SHUTDOWN,
    }
}

/// Puts `resumed` and the events the player missed right behind its greeting. `stayed`:
/// whether the player was still in the world (link-dead, or connected elsewhere) when it
/// came back (`None`: unknown, presence was unavailable).
async fn resume_missed(
    app: &AppState,
    attached: &mut Attached,
    room: &RoomId,
    stayed: Option<bool>,
    resume: ResumeFrom,
) {
    let outcome = match resume {
        ResumeFrom::Malformed => Err(NotRecovered::InvalidPosition),
        ResumeFrom::Position(_) if stayed.is_none() => Err(NotRecovered::Unavailable),
        ResumeFrom::Position(_) if stayed == Some(false) => Err(NotRecovered::LeftTheGame),
        ResumeFrom::Position(since) => {
            let sub_zone = &app
                .world
                .room(room.as_str())
                .unwrap_or_else(|| app.world.start())
                .sub_zone;
            let view = View {
                player: &attached.conn.player_id,
                room,
                sub_zone,
            };
            // A storm of resumes reads the stream a few at a time; live events queue
            // for each meanwhile.
            let _slot = app.resume_slots.acquire().await;
            read_missed(
                &app.stream,
                &app.config.subject_prefix,
                (app.config.max_frame_bytes as usize).max(crate::startup::MIN_EVENT_BYTES),
                u64::from(app.config.resume_max_missed),
                &since,
                &view,
            )
            .await
        }
    };
    let data = match &outcome {
        Ok(missed) => ResumedData {
            recovered: true,
            missed: Some(missed.frames.len()),
            reason: None,
        },
        Err(reason) => ResumedData {
            recovered: false,
            missed: None,
            reason: Some(reason.as_str().to_owned()),
        },
    };
    let outcome_label = match &outcome {
        Ok(_) => "recovered",
        Err(reason) => reason.as_str(),
    };
    metrics::counter!(telemetry::RESUMES, "outcome" => outcome_label).increment(1);
    tracing::info!(outcome = outcome_label, missed = ?data.missed, "resume");
    let mut first: Vec<Queued> = attached.outbound.take_greeting().into_iter().collect();
    first.extend(
        attached
            .conn
            .direct_frame(Envelope::new(EventType::Resumed, data)),
    );
    let covered_through = match outcome {
        Ok(missed) => {
            first.extend(missed.frames);
            missed.covered_through
        }
        Err(_) => 0,
    };
    attached.outbound.put_first(first, covered_through);
}

/// Whether a message still has to pass the player's rate limit: `POST /api/command`
/// checks it before accepting a message, so that it can answer 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Check,
    Admitted,
}

/// Listens to `room` and its sub-zone; refused as busy (try again) when NATS will not
/// take the subscription.
async fn want_room(app: &AppState, room: &RoomId) -> Result<Wanted, ManagerError> {
    let sub_zone = &app
        .world
        .room(room.as_str())
        .unwrap_or_else(|| app.world.start())
        .sub_zone;
    app.interests.want(room, sub_zone).await.map_err(|error| {
        tracing::warn!(%error, "cannot listen to the player's room; refusing the login");
        ManagerError::Busy
    })
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
    Box::pin(handle_now(app, conn, limiter, admission, message)).await
}

async fn handle_now(
    app: &AppState,
    conn: &ConnectionHandle,
    limiter: &mut CommandLimiter,
    admission: Admission,
    message: Result<ClientMessage, ProtocolError>,
) {
    let session = Session {
        game: app.game(),
        conn,
    };
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
                conn.kick.close(CloseReason::QUIT);
            }
        }
        Err(error) => session.send_error(&error).await,
    }
}

/// Takes the player out of this connection (leaving the world, or link-dead).
pub async fn detach(app: &AppState, conn: &ConnectionHandle) {
    Box::pin(detach_now(app, conn)).await
}

async fn detach_now(app: &AppState, conn: &ConnectionHandle) {
    conn.kick.close(CloseReason::NORMAL);
    metrics::gauge!(telemetry::CONNECTIONS, "transport" => conn.transport.as_str()).decrement(1.0);
    if let Some(room) = app.manager.disconnect(conn)
        && !kept_link_dead(app, conn, &room).await
    {
        announce_departure(app, conn, &room).await;
    }
    tracing::info!(reason = conn.kick.reason().reason, "disconnected");
}

/// Keeps the player in the world, link-dead, when its connection dropped without `quit`
/// (see `Presence::link_dead`): true when it stays (or another connection holds it).
async fn kept_link_dead(app: &AppState, conn: &ConnectionHandle, room: &RoomId) -> bool {
    let reason = conn.kick.reason();
    let held = conn.presence_revision();
    if app.presence.link_dead_grace().is_zero()
        || held == 0
        || reason == CloseReason::QUIT
        || reason == CloseReason::REPLACED
    {
        return false;
    }
    match app
        .presence
        .link_dead(&conn.player_id, &conn.name, room, conn.connection, held)
        .await
    {
        Ok(_) => {
            metrics::counter!(telemetry::LINK_DEAD).increment(1);
            tracing::info!(
                grace_secs = app.presence.link_dead_grace().as_secs(),
                "link-dead: the player stays in the world for the grace period"
            );
            true
        }
        // Another login holds the player now: it never left.
        Err(PresenceError::Taken) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot keep the player link-dead; it leaves");
            false
        }
    }
}

/// Gives the player's presence back and, when this connection was still the one holding
/// it, tells the room. A presence that cannot be given back now (NATS away) is left to the
/// node's sweep, which removes it — and announces the departure — once it can.
async fn announce_departure(app: &AppState, conn: &ConnectionHandle, room: &RoomId) {
    let departure = |revision| Departure {
        player: conn.player_id.clone(),
        name: conn.name.clone(),
        room: room.clone(),
        revision,
    };
    let held = conn.presence_revision();
    if held == 0 {
        app.presence.roster().remove(&conn.player_id, 0);
        app.presence
            .announce_departure(&app.publisher, departure(None))
            .await;
        return;
    }
    match app
        .presence
        .release(&conn.player_id, conn.connection, held)
        .await
    {
        Ok(Some(released)) => {
            app.presence
                .announce_departure(&app.publisher, departure(Some(released)))
                .await;
        }
        // Another login (here or elsewhere) holds the player now: it never left.
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "could not release the player's presence; the sweep will");
        }
    }
}
