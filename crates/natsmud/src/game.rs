//! Game logic: runs one player's commands. Anything other players see is published through
//! the EventPublisher; only the actor's own replies (command_response, room_update, error)
//! go straight to the actor's socket.
//!
//! It takes the parts of the server it uses ([`Game`]), not the whole application state:
//! the world, this node's connections, the world's roster, the event bus and the store.

use natsmud_protocol::command::HELP_TEXT;
use natsmud_protocol::envelope::{
    ChatMessageData, CommandResponseData, Empty, ErrorData, GameStateData, PlayerInfo,
    PresenceData, RoomUpdateData,
};
use natsmud_protocol::{
    ClientMessage, Command, Direction, Envelope, ErrorCode, EventType, PlayerId, PlayerName,
    ProtocolError, RoomId, Subject,
};

use crate::db::RoomWriter;
use crate::presence::{Presence, PresenceError};
use crate::realtime::connection::{Gate, OpenOnDrop};
use crate::realtime::connection_manager::ConnectionHandle;
use crate::realtime::{CloseReason, ConnectionManager, EventPublisher, Interests, PublishError};
use crate::world::{Room, World};

/// How long a player entering a place this node just started listening to waits for the
/// presence watch to catch up before the room's occupants are listed: usually a
/// millisecond or two; past it they are listed as the roster has them.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What the game logic uses of the server.
#[derive(Clone, Copy)]
pub struct Game<'a> {
    pub world: &'a World,
    /// This node's connections: where its players are, and their sockets.
    pub manager: &'a ConnectionManager,
    /// The world's roster: who is online anywhere, and where.
    pub presence: &'a Presence,
    pub publisher: &'a EventPublisher,
    /// What this node listens to: a player's new room first.
    pub interests: &'a Interests,
    pub rooms: &'a RoomWriter,
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// One player's session: the commands of one connection, run in order.
pub struct Session<'a> {
    pub game: Game<'a>,
    pub conn: &'a ConnectionHandle,
}

impl Session<'_> {
    fn me(&self) -> &PlayerId {
        &self.conn.player_id
    }

    fn my_name(&self) -> &PlayerName {
        &self.conn.name
    }

    pub async fn send_error(&self, error: &ProtocolError) {
        self.conn
            .send_direct(Envelope::new(
                EventType::Error,
                ErrorData {
                    code: error.code.as_str().to_owned(),
                    message: error.message.clone(),
                },
            ))
            .await;
    }

    async fn respond(&self, result: impl Into<String>) {
        self.conn
            .send_direct(Envelope::new(
                EventType::CommandResponse,
                CommandResponseData {
                    result: result.into(),
                },
            ))
            .await;
    }

    fn current_room(&self) -> Result<&Room, ProtocolError> {
        self.game
            .manager
            .room_of(self.conn)
            .and_then(|id| self.game.world.room(id.as_str()))
            .ok_or_else(not_connected)
    }

    fn require_event_bus(&self) -> Result<(), ProtocolError> {
        if self.game.publisher.is_connected() {
            Ok(())
        } else {
            Err(bus_error(&PublishError::Unavailable))
        }
    }

    /// Tells the room the player arrived in the game (login) or left it (disconnect);
    /// `revision`: of the presence write it announces, when there was one.
    pub async fn announce_presence(&self, room: &RoomId, entered: bool, revision: Option<u64>) {
        let name = self.my_name();
        let (event_type, subject, message) = if entered {
            (
                EventType::PlayerEnteredGame,
                Subject::player_entered(room),
                format!("{name} has entered the game."),
            )
        } else {
            (
                EventType::PlayerLeftGame,
                Subject::player_left(room),
                format!("{name} has left the game."),
            )
        };
        let envelope = presence_envelope(event_type, self.me(), name, room, message);
        // A failure is logged and counted by the publisher; the login or logout stands.
        let _ = match revision {
            Some(revision) => {
                self.game
                    .publisher
                    .publish_presence(subject, &envelope, revision)
                    .await
            }
            None => self.game.publisher.publish(subject, &envelope).await,
        };
    }

    /// Runs one client message from either transport.
    pub async fn handle_message(&self, message: ClientMessage) -> Flow {
        match message {
            ClientMessage::Ping => {
                self.conn
                    .send_direct(Envelope::new(EventType::Pong, Empty {}))
                    .await;
                Flow::Continue
            }
            ClientMessage::Command(command) => self.run(command).await,
        }
    }

    pub async fn run(&self, command: Command) -> Flow {
        match self.execute(command).await {
            Ok(flow) => flow,
            Err(error) => {
                self.send_error(&error).await;
                Flow::Continue
            }
        }
    }

    async fn execute(&self, command: Command) -> Result<Flow, ProtocolError> {
        match command {
            Command::Look => {
                let room = self.current_room()?;
                self.respond(describe(room, &self.occupants(&room.id)))
                    .await;
            }
            Command::Go(direction) => self.go(direction).await?,
            Command::Say(text) => {
                self.room_chat("say", format!("{} says: {text}", self.my_name()))
                    .await?;
                self.respond(format!("You say: {text}")).await;
            }
            Command::Emote(text) => {
                let line = format!("{} {}", self.my_name(), punctuated(&text));
                self.room_chat("emote", line.clone()).await?;
                self.respond(line).await;
            }
            Command::Pose(text) => {
                let line = format!("{} {}", self.my_name(), text);
                self.room_chat("pose", line.clone()).await?;
                self.respond(line).await;
            }
            Command::Whisper { target, message } => {
                let (target_id, target_name) = self
                    .game
                    .presence
                    .roster()
                    .find_by_name(&target)
                    .ok_or_else(|| player_not_found(&target))?;
                self.whisper(target_id, target_name, &message).await?;
            }
            Command::Reply(message) => {
                let target_id = self.conn.last_whisper_from().ok_or_else(|| {
                    ProtocolError::new(ErrorCode::NoReplyTarget, "Nobody has whispered to you yet.")
                })?;
                let target_name = self
                    .game
                    .presence
                    .roster()
                    .get(&target_id)
                    .map(|seen| seen.name)
                    .ok_or_else(|| {
                        ProtocolError::new(ErrorCode::PlayerNotFound, "They are no longer online.")
                    })?;
                self.whisper(target_id, target_name, &message).await?;
            }
            Command::Local(text) => {
                self.require_event_bus()?;
                let room = self.current_room()?;
                let mut envelope =
                    self.chat_envelope("local", format!("{} says (local): {text}", self.my_name()));
                envelope.data.sub_zone = Some(room.sub_zone.clone());
                self.game
                    .publisher
                    .publish(Subject::local(&room.sub_zone), &envelope)
                    .await
                    .map_err(|e| bus_error(&e))?;
                self.respond(format!("You say (local): {text}")).await;
            }
            Command::Global(text) => {
                self.require_event_bus()?;
                let envelope = self.chat_envelope(
                    "global",
                    format!("{} says (global): {text}", self.my_name()),
                );
                self.game
                    .publisher
                    .publish(Subject::Global, &envelope)
                    .await
                    .map_err(|e| bus_error(&e))?;
                self.respond(format!("You say (global): {text}")).await;
            }
            Command::Who => {
                let names = self.game.presence.roster().names();
                self.respond(format!(
                    "Players online ({}): {}",
                    names.len(),
                    names.join(", ")
                ))
                .await;
            }
            Command::Help => self.respond(HELP_TEXT).await,
            Command::Quit => {
                self.respond("Goodbye. The fog closes behind you.").await;
                return Ok(Flow::Quit);
            }
        }
        Ok(Flow::Continue)
    }

    /// Moves the player, all or nothing as far as anyone can tell: either the reply is an
    /// `error` and nothing changed (the player is where it was, nothing was published,
    /// nothing stored), or the reply is `room_update` and the move stands. The one step
    /// that can fail for a reason a retry would fix — telling the old room, which needs
    /// NATS — comes first; from then on the move stands: the player enters the new room
    /// (its `room_update` queued as it does, see `ConnectionManager::move_to`), the new
    /// room is told, and the room is stored. The `room_update` is written to the mover only
    /// once the room is stored, so an answered move survives a crash, but nobody else waits
    /// for the database. Should storing or telling the new room fail, the mover is told so
    /// after the `room_update`.
    async fn go(&self, direction: Direction) -> Result<(), ProtocolError> {
        // A login of the same player waits for this to finish before it takes over, so a
        // replaced connection can never move its successor.
        let actions = self.conn.actions();
        let _turn = actions.lock().await;
        let from = self.current_room()?;
        let to_id = from.exit(direction).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NoExit,
                format!("You cannot go {direction} from here."),
            )
        })?;
        let to =
            self.game.world.room(to_id.as_str()).ok_or_else(|| {
                ProtocolError::new(ErrorCode::Internal, "That way leads nowhere.")
            })?;
        self.require_event_bus()?;
        // Room for the `room_update` first: a connection that is closing moves nowhere.
        let Some(permit) = self.conn.reserve().await else {
            return Err(not_connected());
        };
        // This node listens to the new room before the player is in it and before anyone
        // hears of the arrival (see `realtime::interest`).
        let listening = self
            .game
            .interests
            .want(&to.id, &to.sub_zone)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot listen to the room a player is moving to");
                ProtocolError::new(
                    ErrorCode::EventBusUnavailable,
                    "The world cannot hear that room right now; try again.",
                )
            })?;
        let name = self.my_name();
        // The world's roster first (it names the holder of the player, so a connection that
        // was taken over elsewhere finds out here and moves nowhere).
        let held = self.conn.presence_revision();
        let revision = if held == 0 {
            None
        } else {
            match self
                .game
                .presence
                .moved(self.me(), name, &to.id, self.conn.connection, held)
                .await
            {
                Ok(revision) => Some(revision),
                Err(PresenceError::Taken) => {
                    self.conn.kick.close(CloseReason::REPLACED);
                    return Err(not_connected());
                }
                Err(error) => return Err(presence_error(&error)),
            }
        };
        let left = presence_envelope(
            EventType::PlayerLeft,
            self.me(),
            name,
            &from.id,
            format!("{name} leaves the room."),
        );
        let published = match revision {
            Some(revision) => {
                self.game
                    .publisher
                    .publish_presence(Subject::player_left(&from.id), &left, revision)
                    .await
            }
            None => {
                self.game
                    .publisher
                    .publish(Subject::player_left(&from.id), &left)
                    .await
            }
        };
        if let Err(error) = published {
            // Nobody heard of it: put the roster back, and the move never happened.
            if let Some(revision) = revision {
                match self
                    .game
                    .presence
                    .moved(self.me(), name, &from.id, self.conn.connection, revision)
                    .await
                {
                    Ok(back) => self.conn.set_presence_revision(back),
                    Err(error) => {
                        tracing::warn!(%error, "could not put the player's presence back after a refused move");
                        self.conn.set_presence_revision(revision);
                    }
                }
            }
            return Err(bus_error(&error));
        }
        if let Some(revision) = revision {
            self.conn.set_presence_revision(revision);
            if listening.fresh() {
                self.game.presence.caught_up(revision, CATCH_UP_WAIT).await;
            }
        }

        // The move stands now. In the new room at once (the `room_update` queued behind a
        // gate that opens when the room is stored), then the new room is told and the room
        // stored side by side.
        let stored_gate = Gate::default();
        let opener = OpenOnDrop(stored_gate.clone());
        self.game
            .manager
            .move_to(
                self.conn,
                &to.id,
                permit,
                Some(stored_gate.clone()),
                |arrival| {
                    let occupants = occupants_with(self.game.presence, &to.id, name);
                    room_update(to, occupants, arrival.sequence)
                        .with_sequence(self.conn.next_direct_sequence())
                        .to_bytes()
                },
            )
            .map_err(|_| not_connected())?;
        let store = async {
            let stored = self.game.rooms.store(self.me(), &to.id).await;
            drop(opener);
            stored
        };
        let entered = presence_envelope(
            EventType::PlayerEntered,
            self.me(),
            name,
            &to.id,
            format!("{name} enters the room."),
        );
        let arrive = async {
            let subject = Subject::player_entered(&to.id);
            match revision {
                Some(revision) => {
                    self.game
                        .publisher
                        .publish_presence(subject, &entered, revision)
                        .await
                }
                None => self.game.publisher.publish(subject, &entered).await,
            }
        };
        let (stored, entered) = tokio::join!(store, arrive);
        if let Err(error) = &stored {
            tracing::error!(%error, "could not store the player's room after a move");
            self.respond(
                "Your move stands, but your new room could not be saved: after a server restart you may find yourself where you were.",
            )
            .await;
        }
        if let Err(error) = entered {
            self.respond(format!(
                "You arrive, but nobody here noticed: the world could not hear you ({error})."
            ))
            .await;
        }
        Ok(())
    }

    /// Publishes speech to the actor's room on the channel's subject.
    async fn room_chat(&self, channel: &'static str, line: String) -> Result<(), ProtocolError> {
        self.require_event_bus()?;
        let room = self.current_room()?;
        let subject = match channel {
            "say" => Subject::say(&room.id),
            "emote" => Subject::emote(&room.id),
            _ => Subject::pose(&room.id),
        };
        let envelope = self.chat_envelope(channel, line).in_room(room.id.clone());
        self.game
            .publisher
            .publish(subject, &envelope)
            .await
            .map_err(|e| bus_error(&e))
    }

    async fn whisper(
        &self,
        target_id: PlayerId,
        target_name: PlayerName,
        message: &str,
    ) -> Result<(), ProtocolError> {
        if &target_id == self.me() {
            self.respond("You mutter to yourself.").await;
            return Ok(());
        }
        self.require_event_bus()?;
        let mut envelope = self.chat_envelope(
            "whisper",
            format!("{} whispers to you: {message}", self.my_name()),
        );
        envelope.data.target_id = Some(target_id.clone());
        envelope.data.target_name = Some(target_name.to_string());
        self.game
            .publisher
            .publish(Subject::whisper(&target_id), &envelope)
            .await
            .map_err(|e| bus_error(&e))?;
        self.respond(format!("You whisper to {target_name}: {message}"))
            .await;
        Ok(())
    }

    fn chat_envelope(&self, channel: &str, message: String) -> Envelope<ChatMessageData> {
        Envelope::new(
            EventType::ChatMessage,
            ChatMessageData {
                channel: channel.to_owned(),
                sender_id: self.me().clone(),
                player_name: self.my_name().to_string(),
                message,
                message_id: uuid::Uuid::new_v4().simple().to_string(),
                target_id: None,
                target_name: None,
                sub_zone: None,
            },
        )
        .by_player(self.me().clone())
    }

    fn occupants(&self, room: &RoomId) -> Vec<String> {
        self.game.presence.roster().occupants(room.as_str())
    }
}

/// The first frame of a connection: who you are, where, who is here (you included), and
/// where the room's numbering stands. It is the connection's direct frame number 1.
pub fn game_state(
    player: &PlayerId,
    name: &PlayerName,
    room: &Room,
    occupants: Vec<String>,
    room_sequence: u64,
) -> bytes::Bytes {
    Envelope::new(
        EventType::GameState,
        GameStateData {
            player: PlayerInfo {
                id: player.clone(),
                name: name.to_string(),
            },
            room: room.view(),
            occupant_count: occupants.len(),
            occupants,
            room_sequence,
        },
    )
    .in_room(room.id.clone())
    .by_player(player.clone())
    .with_sequence(1)
    .to_bytes()
}

/// The mover's `room_update`, unnumbered.
/// Who is in `room` as the world's roster says, `me` among them (the roster may not have
/// heard of an arrival yet when presence is unavailable), sorted.
pub fn occupants_with(presence: &Presence, room: &RoomId, me: &PlayerName) -> Vec<String> {
    let mut occupants = presence.roster().occupants(room.as_str());
    let mine = me.to_string();
    if !occupants
        .iter()
        .any(|name| name.eq_ignore_ascii_case(&mine))
    {
        occupants.push(mine);
        occupants.sort_unstable_by_key(|name| name.to_ascii_lowercase());
    }
    occupants
}

fn room_update(
    room: &Room,
    occupants: Vec<String>,
    room_sequence: u64,
) -> Envelope<RoomUpdateData> {
    Envelope::new(
        EventType::RoomUpdate,
        RoomUpdateData {
            room: room.view(),
            occupant_count: occupants.len(),
            occupants,
            room_sequence,
        },
    )
    .in_room(room.id.clone())
}

/// A presence event (`player_entered`, `player_left`, `player_entered_game`,
/// `player_left_game`) about `player` in `room`.
pub(crate) fn presence_envelope(
    event_type: EventType,
    player: &PlayerId,
    name: &PlayerName,
    room: &RoomId,
    message: String,
) -> Envelope<PresenceData> {
    Envelope::new(
        event_type,
        PresenceData {
            player_id: player.clone(),
            player_name: name.to_string(),
            message,
        },
    )
    .in_room(room.clone())
    .by_player(player.clone())
}

fn bus_error(error: &PublishError) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::EventBusUnavailable,
        format!("The world cannot hear you right now ({error}); try again in a moment."),
    )
}

fn presence_error(error: &PresenceError) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::EventBusUnavailable,
        format!("The world cannot follow you right now ({error}); try again in a moment."),
    )
}

fn not_connected() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        "This connection is no longer in the game; reconnect.",
    )
}

fn player_not_found(name: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::PlayerNotFound,
        format!("No player named '{name}' is online."),
    )
}

fn punctuated(text: &str) -> String {
    if text.ends_with(['.', '!', '?', '"', '\'']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The text of `look`.
pub fn describe(room: &Room, occupants: &[String]) -> String {
    let exits: Vec<&str> = room.exits.keys().map(String::as_str).collect();
    let mut text = format!(
        "{}\n{}\nExits: {}",
        room.name,
        room.description,
        if exits.is_empty() {
            "none".to_owned()
        } else {
            exits.join(", ")
        }
    );
    if !occupants.is_empty() {
        text.push_str(&format!("\nHere: {}", occupants.join(", ")));
    }
    text
}
