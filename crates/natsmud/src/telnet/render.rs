//! Frames as a MUD client shows them: each envelope the player receives becomes text lines
//! (ANSI colour unless turned off, wrapped to the client's width) and, for clients that
//! speak GMCP, the structured messages Mudlet's mapper and chat windows read.

use natsmud_protocol::{Direction, EventType, ServerFrame};
use serde_json::{Value, json};

use super::codec::{self, Input};
use crate::startup::AppState;

const RESET: &str = "\x1b[0m";
const ROOM_NAME: &str = "1;36";
const EXITS: &str = "32";
const PEOPLE: &str = "33";
const ERROR: &str = "31";
const WHISPER: &str = "35";
const WIDE_CHAT: &str = "1;34";
const SAY: &str = "36";
const TICK: &str = "2";

/// Narrowest width text is wrapped to, whatever a client reports.
const MIN_WIDTH: usize = 20;

/// What the client asked for and told us: the same during login and play.
#[derive(Debug, Clone)]
pub struct Client {
    pub colour: bool,
    pub ticks: bool,
    /// Columns (NAWS); `None`: unknown, lines are not wrapped.
    pub width: Option<u16>,
    pub terminal: Option<String>,
    pub gmcp: bool,
    /// GMCP packages the client listed in `Core.Supports` (lower case, without version);
    /// `None`: it listed none, so everything is sent.
    pub supports: Option<Vec<String>>,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            colour: true,
            ticks: false,
            width: None,
            terminal: None,
            gmcp: false,
            supports: None,
        }
    }
}

impl Client {
    /// Takes in what the client negotiated; appends to `out` whatever answers it.
    /// (Lines are the session's business and never come here.)
    pub fn absorb(&mut self, app: &AppState, input: Input, out: &mut Vec<u8>) {
        match input {
            Input::Line(_) => {}
            Input::Send(bytes) => out.extend_from_slice(&bytes),
            Input::Width(width) => self.width = (width > 0).then_some(width),
            Input::TerminalType(name) => {
                tracing::debug!(terminal = %name, "client terminal type");
                self.terminal = Some(name);
            }
            Input::GmcpOn => self.gmcp = true,
            Input::Gmcp { package, data } => self.gmcp_message(&package, &data, out),
            Input::MsspWanted => out.extend_from_slice(&codec::mssp(&mssp_variables(app))),
        }
    }

    fn gmcp_message(&mut self, package: &str, data: &str, out: &mut Vec<u8>) {
        let listed = || -> Vec<String> {
            serde_json::from_str::<Vec<String>>(data)
                .unwrap_or_default()
                .iter()
                .filter_map(|entry| entry.split_whitespace().next())
                .map(str::to_ascii_lowercase)
                .take(64)
                .collect()
        };
        match package.to_ascii_lowercase().as_str() {
            "core.hello" => {
                tracing::debug!(hello = %data.chars().take(200).collect::<String>(), "GMCP client")
            }
            "core.supports.set" => self.supports = Some(listed()),
            "core.supports.add" => {
                let supports = self.supports.get_or_insert_with(Vec::new);
                for package in listed() {
                    if !supports.contains(&package) && supports.len() < 64 {
                        supports.push(package);
                    }
                }
            }
            "core.supports.remove" => {
                let gone = listed();
                if let Some(supports) = &mut self.supports {
                    supports.retain(|package| !gone.contains(package));
                }
            }
            "core.ping" if self.gmcp => {
                out.extend_from_slice(&codec::gmcp("Core.Ping", &Value::Null))
            }
            _ => {}
        }
    }

    /// Whether `package` (e.g. `Room.Info`) goes to this client.
    fn wants(&self, package: &str) -> bool {
        if !self.gmcp {
            return false;
        }
        let package = package.to_ascii_lowercase();
        self.supports.as_ref().is_none_or(|supports| {
            supports.iter().any(|listed| {
                package == *listed
                    || package
                        .strip_prefix(listed.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
        })
    }

    fn send_gmcp(&self, package: &str, data: &Value, out: &mut Vec<u8>) {
        if self.wants(package) {
            out.extend_from_slice(&codec::gmcp(package, data));
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour && !text.is_empty() {
            format!("\x1b[{code}m{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// `text` (which may hold several lines) wrapped to the client's width, in `code`'s
    /// colour (`None`: plain), each line ended with CR LF.
    fn lines(&self, code: Option<&str>, text: &str, out: &mut Vec<u8>) {
        for line in text.lines() {
            for piece in wrap(line, self.width.map(usize::from)) {
                let piece = match code {
                    Some(code) => self.paint(code, &piece),
                    None => piece,
                };
                out.extend_from_slice(piece.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Greedy word wrap to `width - 1` columns (a line as wide as the screen makes some
/// terminals add an empty one); a word longer than that is cut.
pub fn wrap(line: &str, width: Option<usize>) -> Vec<String> {
    let Some(width) = width.map(|w| w.saturating_sub(1).max(MIN_WIDTH)) else {
        return vec![line.to_owned()];
    };
    if line.chars().count() <= width {
        return vec![line.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    let mut used = 0;
    for word in line.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let needed = word.len() + usize::from(used > 0);
            if used + needed <= width {
                if used > 0 {
                    current.push(' ');
                }
                current.extend(word.iter());
                used += needed;
                break;
            }
            if used > 0 {
                // Spaces that only padded the line out are not worth a line of their own.
                out.push(std::mem::take(&mut current).trim_end().to_owned());
                used = 0;
                continue;
            }
            // A word wider than the line: cut it.
            let rest = word.split_off(width.min(word.len()));
            out.push(word.iter().collect());
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if used > 0 || out.is_empty() {
        out.push(current);
    }
    out
}

/// A room's number for clients that want one (Mudlet's mapper keys rooms by integer):
/// FNV-1a of the room id, in 31 bits, never 0. The same on every node and every run.
pub fn room_number(id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff).max(1)
}

/// The MSSP variables a crawler reads (see docs/telnet.md).
pub fn mssp_variables(app: &AppState) -> Vec<(&'static str, String)> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| {
            now.as_secs()
                .saturating_sub(app.started.elapsed().as_secs())
        })
        .unwrap_or(0);
    let areas: std::collections::BTreeSet<&str> =
        app.world.rooms().map(|room| room.zone.as_str()).collect();
    vec![
        ("NAME", app.world.name.clone()),
        ("PLAYERS", app.presence.roster().names().len().to_string()),
        ("UPTIME", started.to_string()),
        ("CODEBASE", format!("natsmud {}", env!("CARGO_PKG_VERSION"))),
        ("AREAS", areas.len().to_string()),
        ("ROOMS", app.world.room_count().to_string()),
        ("ANSI", "1".to_owned()),
        ("GMCP", "1".to_owned()),
        ("MCCP", "0".to_owned()),
        ("MSDP", "0".to_owned()),
        ("UTF-8", "1".to_owned()),
        ("VT100", "0".to_owned()),
        ("XTERM 256 COLORS", "0".to_owned()),
    ]
}

/// One connection's view of the game: its client's settings, and where its player is and
/// with whom (kept from the frames, for GMCP's `Room.Players`).
#[derive(Debug, Default)]
pub struct View {
    pub client: Client,
    me: String,
    room: Option<Value>,
    occupants: Vec<String>,
}

impl View {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }

    /// Renders one frame into `out`; true when it printed text (so a prompt follows).
    pub fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(frame) = serde_json::from_slice::<ServerFrame>(frame) else {
            tracing::debug!("a frame telnet cannot read; skipped");
            return false;
        };
        let printed = out.len();
        let data = &frame.data;
        match frame.event_type {
            EventType::GameState => {
                self.me = data["player"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                self.client.send_gmcp(
                    "Char.Name",
                    &json!({"name": self.me, "fullname": self.me}),
                    out,
                );
                self.client
                    .lines(None, &format!("Welcome, {}.", self.me), out);
                self.arrive(data, out);
            }
            EventType::RoomUpdate => self.arrive(data, out),
            EventType::CommandResponse => self.client.lines(None, frame.data_str("result"), out),
            EventType::PlayerEntered | EventType::PlayerEnteredGame => {
                let name = frame.data_str("player_name");
                if !self.occupants.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    self.occupants.push(name.to_owned());
                }
                self.client
                    .lines(Some(PEOPLE), frame.data_str("message"), out);
                self.players(out);
            }
            EventType::PlayerLeft | EventType::PlayerLeftGame => {
                let name = frame.data_str("player_name");
                self.occupants.retain(|n| !n.eq_ignore_ascii_case(name));
                self.client
                    .lines(Some(PEOPLE), frame.data_str("message"), out);
                self.players(out);
            }
            EventType::ChatMessage => {
                let channel = frame.data_str("channel");
                let colour = match channel {
                    "whisper" => WHISPER,
                    "global" | "local" | "system" => WIDE_CHAT,
                    _ => SAY,
                };
                self.client
                    .lines(Some(colour), frame.data_str("message"), out);
                self.client.send_gmcp(
                    "Comm.Channel.Text",
                    &json!({
                        "channel": channel,
                        "talker": frame.data_str("player_name"),
                        "text": frame.data_str("message"),
                    }),
                    out,
                );
            }
            EventType::GameTick if self.client.ticks => {
                let line = format!(
                    "Tick {}: {} players online.",
                    data["tick_number"], data["active_players"]
                );
                self.client.lines(Some(TICK), &line, out);
            }
            EventType::Error => self
                .client
                .lines(Some(ERROR), frame.data_str("message"), out),
            EventType::GameTick | EventType::Pong | EventType::Resumed => {}
        }
        // GMCP alone is no reason for a prompt; its JSON never holds a raw line end.
        out[printed..].windows(2).any(|pair| pair == b"\r\n")
    }

    /// GMCP was just switched on: what the client would have had so far.
    pub fn gmcp_on(&mut self, out: &mut Vec<u8>) {
        if self.me.is_empty() {
            return;
        }
        self.client.send_gmcp(
            "Char.Name",
            &json!({"name": self.me, "fullname": self.me}),
            out,
        );
        if let Some(room) = self.room.clone() {
            self.client.send_gmcp("Room.Info", &room_info(&room), out);
            self.players(out);
        }
    }

    fn arrive(&mut self, data: &Value, out: &mut Vec<u8>) {
        let room = &data["room"];
        self.occupants = data["occupants"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        self.client.send_gmcp("Room.Info", &room_info(room), out);
        self.players(out);
        self.room = Some(room.clone());
        let exits: Vec<&str> = room["exits"]
            .as_object()
            .map(|exits| exits.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let others: Vec<&str> = self
            .occupants
            .iter()
            .map(String::as_str)
            .filter(|name| !name.eq_ignore_ascii_case(&self.me))
            .collect();
        let client = &self.client;
        client.lines(
            Some(ROOM_NAME),
            room["name"].as_str().unwrap_or_default(),
            out,
        );
        client.lines(None, room["description"].as_str().unwrap_or_default(), out);
        let exits = if exits.is_empty() {
            "none".to_owned()
        } else {
            exits.join(", ")
        };
        client.lines(Some(EXITS), &format!("Exits: {exits}"), out);
        if !others.is_empty() {
            client.lines(Some(PEOPLE), &format!("Here: {}", others.join(", ")), out);
        }
    }

    fn players(&self, out: &mut Vec<u8>) {
        let players: Vec<Value> = self
            .occupants
            .iter()
            .map(|name| json!({"name": name, "fullname": name}))
            .collect();
        self.client
            .send_gmcp("Room.Players", &Value::Array(players), out);
    }
}

/// `Room.Info` as Mudlet's generic mapper reads it (the IRE layout): `num`, `name`, `area`,
/// `environment`, and `exits` from short direction to room number; `id` is natsmud's own.
fn room_info(room: &Value) -> Value {
    let id = room["id"].as_str().unwrap_or_default();
    let exits: serde_json::Map<String, Value> = room["exits"]
        .as_object()
        .map(|exits| {
            exits
                .iter()
                .map(|(direction, to)| {
                    let short = Direction::parse(direction)
                        .map_or_else(|| direction.clone(), |d| d.short().to_owned());
                    (short, json!(room_number(to.as_str().unwrap_or_default())))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "num": room_number(id),
        "id": id,
        "name": room["name"],
        "area": room["zone"],
        "environment": room["sub_zone"],
        "exits": exits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_words_whole_and_cuts_only_giants() {
        assert_eq!(wrap("short", Some(80)), vec!["short"]);
        assert_eq!(wrap("no width known", None), vec!["no width known"]);
        let text = "the quick brown fox jumps over the lazy dog again and again";
        let lines = wrap(text, Some(21));
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.join(" "), text);
        let giant = "x".repeat(45);
        assert_eq!(
            wrap(&giant, Some(21)),
            vec!["x".repeat(20), "x".repeat(20), "x".repeat(5)]
        );
    }

    #[test]
    fn room_numbers_are_stable_positive_and_distinct_here() {
        assert_eq!(room_number("arkham_start"), room_number("arkham_start"));
        assert_ne!(room_number("a"), room_number("b"));
        assert!(room_number("") > 0);
        // Pinned: a client's saved map must keep working across releases.
        assert_eq!(room_number("a"), 1_678_518_572);
    }

    #[test]
    fn frames_become_lines_with_or_without_colour_and_gmcp_follows_supports() {
        let game_state = json!({
            "event_type": "game_state", "timestamp": "t", "sequence_number": 1,
            "data": {
                "player": {"id": "p1", "name": "Alice"},
                "room": {"id": "r1", "name": "Square", "description": "A square.",
                         "zone": "z", "sub_zone": "s", "exits": {"north": "r2"}},
                "occupants": ["Alice", "Bob"], "occupant_count": 2, "room_sequence": 0
            }
        })
        .to_string();
        let mut view = View::new(Client {
            colour: false,
            gmcp: true,
            supports: Some(vec!["room".into()]),
            ..Client::default()
        });
        let mut out = Vec::new();
        assert!(view.frame(game_state.as_bytes(), &mut out));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("Welcome, Alice.\r\n"), "{text:?}");
        assert!(
            text.contains("Square\r\nA square.\r\nExits: north\r\nHere: Bob\r\n"),
            "{text:?}"
        );
        assert!(text.contains("Room.Info {"), "{text:?}");
        assert!(
            text.contains(&format!("\"n\":{}", room_number("r2"))),
            "{text:?}"
        );
        assert!(
            !text.contains("Char.Name"),
            "not in the client's supports: {text:?}"
        );

        let left = json!({"event_type": "player_left", "timestamp": "t", "sequence_number": 2,
            "data": {"player_id": "p2", "player_name": "Bob", "message": "Bob leaves the room."}})
        .to_string();
        view.client.colour = true;
        let mut out = Vec::new();
        assert!(view.frame(left.as_bytes(), &mut out));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("\x1b[33mBob leaves the room.\x1b[0m\r\n"),
            "{text:?}"
        );
        assert!(
            text.contains("Room.Players [{\"fullname\":\"Alice\",\"name\":\"Alice\"}]"),
            "{text:?}"
        );

        let tick = json!({"event_type": "game_tick", "timestamp": "t", "sequence_number": 3,
            "data": {"tick_number": 3, "timestamp": "t", "active_players": 2}})
        .to_string();
        let mut out = Vec::new();
        assert!(
            !view.frame(tick.as_bytes(), &mut out),
            "ticks are quiet by default"
        );
        assert!(out.is_empty());
        assert!(!view.frame(b"not json", &mut out));
    }
}
