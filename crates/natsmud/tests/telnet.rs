//! Telnet: a raw TCP client logs in, creates characters, plays beside WebSocket players,
//! reads GMCP, and misbehaves (over-long lines, never reading).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestApp, WAIT, some_exit};
use futures::{SinkExt, StreamExt};
use natsmud_protocol::EventType;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const ECHO: u8 = 1;
const NAWS: u8 = 31;
const GMCP: u8 = 201;
const MSSP: u8 = 70;

/// What the server sent, in order, with the telnet commands taken out of the text.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Text(String),
    Negotiation(u8, u8),
    Sub(u8, Vec<u8>),
}

/// A raw telnet client: reads bytes, separates IAC sequences from text.
struct Telnet {
    stream: TcpStream,
    raw: Vec<u8>,
    seen: Vec<Seen>,
    /// How far `expect_text` has read in `text()`.
    cursor: usize,
    eof: bool,
}

impl Telnet {
    async fn connect(addr: SocketAddr) -> Self {
        Self::on(TcpStream::connect(addr).await.unwrap())
    }

    fn on(stream: TcpStream) -> Self {
        Self {
            stream,
            raw: Vec::new(),
            seen: Vec::new(),
            cursor: 0,
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes()).await;
    }

    /// Reads once (at most `wait`); false when nothing came.
    async fn read_some(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&chunk[..n]);
                self.parse();
                true
            }
            Err(_) => false,
        }
    }

    /// Moves complete sequences from `raw` to `seen`.
    fn parse(&mut self) {
        let mut text = Vec::new();
        let mut at = 0;
        let raw = std::mem::take(&mut self.raw);
        while at < raw.len() {
            if raw[at] != IAC {
                text.push(raw[at]);
                at += 1;
                continue;
            }
            let Some(&command) = raw.get(at + 1) else {
                break;
            };
            match command {
                IAC => {
                    text.push(IAC);
                    at += 2;
                }
                WILL | WONT | DO | DONT => {
                    let Some(&option) = raw.get(at + 2) else {
                        break;
                    };
                    self.flush_text(&mut text);
                    self.seen.push(Seen::Negotiation(command, option));
                    at += 3;
                }
                SB => {
                    let Some(end) = raw[at..].windows(2).position(|w| w == [IAC, SE]) else {
                        break;
                    };
                    self.flush_text(&mut text);
                    let body = raw[at + 2..at + end].to_vec();
                    if let Some((&option, data)) = body.split_first() {
                        self.seen.push(Seen::Sub(option, data.to_vec()));
                    }
                    at += end + 2;
                }
                _ => at += 2,
            }
        }
        self.flush_text(&mut text);
        self.raw = raw[at..].to_vec();
    }

    fn flush_text(&mut self, text: &mut Vec<u8>) {
        if !text.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(text)).into_owned();
            self.seen.push(Seen::Text(text));
        }
    }

    /// All text so far, colour codes removed.
    fn text(&self) -> String {
        let mut all = String::new();
        for seen in &self.seen {
            if let Seen::Text(text) = seen {
                all.push_str(text);
            }
        }
        strip_ansi(&all)
    }

    /// Reads until `needle` appears after what was read before; returns the text up to
    /// and including it.
    async fn expect_text(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if let Some(found) = text[self.cursor..].find(needle) {
                let end = self.cursor + found + needle.len();
                let got = text[self.cursor..end].to_owned();
                self.cursor = end;
                return got;
            }
            assert!(
                !self.eof && Instant::now() < deadline,
                "expected {needle:?}; got {:?}",
                &text[self.cursor..]
            );
            self.read_some(Duration::from_millis(100)).await;
        }
    }

    /// The next GMCP message of `package` (earlier ones are passed over).
    async fn expect_gmcp(&mut self, package: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut looked = 0;
        loop {
            while looked < self.seen.len() {
                let seen = self.seen[looked].clone();
                looked += 1;
                if let Seen::Sub(GMCP, body) = seen {
                    let body = String::from_utf8(body).unwrap();
                    let (name, data) = body.split_once(' ').unwrap_or((&body, ""));
                    if name == package {
                        self.seen.remove(looked - 1);
                        return serde_json::from_str(data).unwrap_or(Value::Null);
                    }
                }
            }
            assert!(
                !self.eof && Instant::now() < deadline,
                "expected GMCP {package}; got {:?}",
                self.seen
            );
            self.read_some(Duration::from_millis(100)).await;
        }
    }

    /// Reads until the server closes; returns the text read since the last expectation.
    async fn expect_closed(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.eof {
            assert!(Instant::now() < deadline, "the server never closed");
            self.read_some(Duration::from_millis(200)).await;
        }
        self.text()[self.cursor..].to_owned()
    }

    /// Logs in as `name` with `password`, reading up to the first prompt in the game.
    async fn log_in(&mut self, name: &str, password: &str) {
        self.expect_text("Name: ").await;
        self.line(name).await;
        self.expect_text("Password: ").await;
        self.line(password).await;
        self.expect_text(&format!("Welcome, {name}.")).await;
        self.expect_text("> ").await;
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn telnet(app: &TestApp) -> Telnet {
    Telnet::connect(app.telnet_addr.expect("the harness serves telnet")).await
}

/// A telnet connection of a registered player, logged in.
async fn logged_in(app: &TestApp, name: &str) -> Telnet {
    let mut player = telnet(app).await;
    player.log_in(name, "correct horse").await;
    player
}

#[tokio::test]
async fn a_player_logs_in_with_the_password_typed_unechoed() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut alice = telnet(&app).await;
    let banner = alice.expect_text("Name: ").await;
    assert!(banner.contains("'create'"), "{banner}");
    // The server offers GMCP and MSSP, and asks for the window size.
    for offer in [
        Seen::Negotiation(WILL, GMCP),
        Seen::Negotiation(WILL, MSSP),
        Seen::Negotiation(DO, NAWS),
    ] {
        assert!(alice.seen.contains(&offer), "{offer:?} in {:?}", alice.seen);
    }
    alice.line("Alice").await;
    alice.expect_text("Password: ").await;
    let will_echo = alice
        .seen
        .iter()
        .position(|s| *s == Seen::Negotiation(WILL, ECHO))
        .expect("echo is turned off before the password prompt");
    let prompt = alice
        .seen
        .iter()
        .rposition(|s| matches!(s, Seen::Text(t) if t.contains("Password: ")))
        .unwrap();
    assert!(will_echo < prompt);
    alice.send(&[IAC, DO, ECHO]).await;
    alice.line("correct horse").await;
    let welcome = alice.expect_text("Welcome, Alice.").await;
    assert!(!welcome.contains("correct horse"), "{welcome}");
    let wont_echo = alice
        .seen
        .iter()
        .position(|s| *s == Seen::Negotiation(WONT, ECHO))
        .expect("echo is given back after the password");
    assert!(wont_echo > prompt);
    let room = alice.expect_text("> ").await;
    assert!(room.contains("Exits: "), "{room}");
    alice.line("look").await;
    assert!(alice.expect_text("> ").await.contains("Exits: "));
    alice.line("dance").await;
    assert!(
        alice
            .expect_text("> ")
            .await
            .contains("Unknown command 'dance'")
    );
    // The telnet layer's own settings: colour off leaves no escape codes.
    alice.line("colour off").await;
    alice.expect_text("Colour is off.").await;
    let before = alice.seen.len();
    alice.line("dance").await;
    alice.expect_text("Unknown command").await;
    alice.expect_text("> ").await;
    let raw: String = alice.seen[before..]
        .iter()
        .filter_map(|s| match s {
            Seen::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert!(!raw.contains('\x1b'), "{raw:?}");
    alice.line("quit").await;
    let rest = alice.expect_closed().await;
    assert!(rest.contains("Goodbye."), "{rest}");
}

#[tokio::test]
async fn create_makes_an_account_the_web_can_use_and_bad_logins_are_counted() {
    let app = TestApp::spawn().await;
    let mut carol = telnet(&app).await;
    carol.expect_text("Name: ").await;
    carol.line("create").await;
    carol.expect_text("Choose a name").await;
    carol.line("Carol").await;
    carol.expect_text("Choose a password").await;
    carol.line("battery staple").await;
    carol.expect_text("Type it again: ").await;
    carol.line("battery staple").await;
    carol.expect_text("Welcome to the world, Carol.").await;
    carol.expect_text("Welcome, Carol.").await;
    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"username": "Carol", "password": "battery staple"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut other = telnet(&app).await;
    other.expect_text("Name: ").await;
    other.line("create").await;
    other.expect_text("Choose a name").await;
    other.line("Carol").await;
    other.expect_text("The name Carol is taken").await;
    other.expect_text("Name: ").await;
    other.line("Nobody").await;
    other
        .expect_text("There is no character named 'Nobody'")
        .await;
    other.expect_text("Name: ").await;
    other.line("Carol").await;
    other.expect_text("Password: ").await;
    other.line("wrong wrong").await;
    other.expect_text("Wrong password.").await;
    let rest = other.expect_closed().await;
    assert!(rest.contains("Too many failed attempts"), "{rest}");
}

/// The start room's first exit, and the room behind it.
fn first_exit() -> (String, String) {
    some_exit(common::world().start().id.as_str())
}

#[tokio::test]
async fn a_telnet_player_and_a_websocket_player_see_each_other() {
    let app = TestApp::spawn().await;
    let mut bob = app.join("Bob").await;
    app.register("Alice").await;
    let mut alice = logged_in(&app, "Alice").await;
    let entered = bob.expect(EventType::PlayerEnteredGame).await;
    assert_eq!(entered.data["player_name"], "Alice");

    alice.line("say hello from telnet").await;
    alice.expect_text("You say: hello from telnet").await;
    let heard = bob.expect(EventType::ChatMessage).await;
    assert_eq!(heard.data["message"], "Alice says: hello from telnet");

    bob.reply("say hello from the web").await;
    alice.expect_text("Bob says: hello from the web").await;

    let (direction, _) = first_exit();
    bob.reply(&format!("go {direction}")).await;
    alice.expect_text("Bob leaves the room.").await;
    alice.line(&direction).await;
    alice.expect_text("Here: Bob").await;
    let entered = bob.expect(EventType::PlayerEntered).await;
    assert_eq!(entered.data["message"], "Alice enters the room.");

    bob.reply("whisper Alice psst").await;
    alice.expect_text("Bob whispers to you: psst").await;

    // A second login from the web replaces the telnet connection.
    let account = app
        .post(
            "/api/auth/login",
            &json!({"username": "Alice", "password": "correct horse"}),
        )
        .await
        .1;
    let account: common::Account = serde_json::from_value(account).unwrap();
    let mut web = app.connect(&account).await;
    web.expect(EventType::GameState).await;
    let rest = alice.expect_closed().await;
    assert!(rest.contains("logged in from another connection"), "{rest}");
    bob.expect_silence().await;
}

#[tokio::test]
async fn gmcp_describes_the_room_after_a_move() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut alice = telnet(&app).await;
    alice.send(&[IAC, DO, GMCP]).await;
    let mut hello = vec![IAC, SB, GMCP];
    hello.extend_from_slice(br#"Core.Hello {"client":"test","version":"1"}"#);
    hello.extend_from_slice(&[IAC, SE, IAC, SB, GMCP]);
    hello.extend_from_slice(br#"Core.Supports.Set ["Char 1", "Room 1", "Comm 1"]"#);
    hello.extend_from_slice(&[IAC, SE]);
    alice.send(&hello).await;
    alice.log_in("Alice", "correct horse").await;
    let name = alice.expect_gmcp("Char.Name").await;
    assert_eq!(name["name"], "Alice");
    let start = alice.expect_gmcp("Room.Info").await;
    let (direction, target) = first_exit();
    let short = natsmud_protocol::Direction::parse(&direction)
        .unwrap()
        .short();
    let next_num = start["exits"][short].as_u64().expect("exit numbers");
    assert!(start["num"].as_u64().unwrap() > 0);
    let players = alice.expect_gmcp("Room.Players").await;
    assert_eq!(players, json!([{"name": "Alice", "fullname": "Alice"}]));

    alice.line(&direction).await;
    let moved = alice.expect_gmcp("Room.Info").await;
    alice.expect_gmcp("Room.Players").await;
    assert_eq!(moved["num"].as_u64(), Some(next_num));
    assert_eq!(moved["id"], target);
    assert!(moved["name"].is_string() && moved["area"].is_string());

    // Speech comes as Comm.Channel.Text too.
    let mut bob = app.join("Bob").await;
    bob.command(&format!("go {direction}")).await;
    let players = alice.expect_gmcp("Room.Players").await;
    assert_eq!(players.as_array().map(Vec::len), Some(2), "{players}");
    bob.command("say over here").await;
    let said = alice.expect_gmcp("Comm.Channel.Text").await;
    assert_eq!(said["channel"], "say");
    assert_eq!(said["talker"], "Bob");
    assert_eq!(said["text"], "Bob says: over here");
}

#[tokio::test]
async fn mssp_answers_a_crawler_before_any_login() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut crawler = telnet(&app).await;
    crawler.expect_text("Name: ").await;
    crawler.send(&[IAC, DO, MSSP]).await;
    let deadline = Instant::now() + WAIT;
    let body = loop {
        if let Some(body) = crawler.seen.iter().find_map(|s| match s {
            Seen::Sub(MSSP, body) => Some(body.clone()),
            _ => None,
        }) {
            break body;
        }
        assert!(Instant::now() < deadline, "no MSSP: {:?}", crawler.seen);
        crawler.read_some(Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&body).replace(['\u{1}', '\u{2}'], "|");
    for variable in ["|NAME|", "|PLAYERS|0", "|UPTIME|", "|CODEBASE|natsmud"] {
        assert!(text.contains(variable), "{variable} in {text}");
    }
}

#[tokio::test]
async fn an_over_long_line_is_refused_with_a_reason_and_closed() {
    let app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut alice = logged_in(&app, "Alice").await;
    let limit = app.config.max_frame_bytes as usize;
    alice.send(&vec![b'x'; limit + 100]).await;
    let rest = alice.expect_closed().await;
    assert!(
        rest.contains(&format!("longer than {limit} bytes")),
        "{rest}"
    );

    // Before logging in too, and binary junk on the way changes nothing.
    let mut junk = telnet(&app).await;
    junk.expect_text("Name: ").await;
    junk.send(&[0, 1, 2, IAC, 3, 0xfe, 0xff, 0xff, 0x80, b'\r', b'\n'])
        .await;
    // (libmudtelnet drops the rest of a read after a doubled IAC: send plenty.)
    junk.send(&vec![0x80; 2 * limit + 100]).await;
    let rest = junk.expect_closed().await;
    assert!(rest.contains("too long"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer() {
    let app = TestApp::spawn_with(|config| config.outbound_queue = 64).await;
    let mut bob = app.join("Bob").await;
    app.register("Staller").await;
    // A tiny receive buffer, so the stall shows quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.telnet_addr.unwrap()).await.unwrap();
    let mut staller = Telnet::on(stream);
    staller.log_in("Staller", "correct horse").await;
    bob.expect(EventType::PlayerEnteredGame).await;

    // Bob talks (reading his own replies) until the server drops the staller.
    let text = "x".repeat(450);
    let mut dropped = false;
    for batch in 0..30 {
        let (mut out, mut input) = bob.socket.split();
        let replies = tokio::spawn(async move {
            let mut answered = 0;
            while answered < 300 {
                match input.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if text.as_str().contains("command_response") {
                            answered += 1;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("Bob's socket ended: {other:?}"),
                }
            }
            input
        });
        for i in 0..300 {
            let message = json!({"type": "game_command", "data": {"command": format!("say {batch}.{i} {text}")}});
            out.send(Message::text(message.to_string())).await.unwrap();
        }
        let input = replies.await.unwrap();
        bob.socket = out.reunite(input).unwrap();
        let who = bob.reply("who").await;
        if who.data["result"] == "Players online (1): Bob" {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the staller was never dropped");
    assert!(app.metric("natsmud_slow_consumer_disconnects_total").await >= 1.0);
    // The connection ends (the reason is written if the socket has room for it).
    staller.expect_closed().await;
}

#[tokio::test]
async fn shutdown_says_goodbye_to_telnet_players_and_those_logging_in() {
    let mut app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut alice = logged_in(&app, "Alice").await;
    let mut newcomer = telnet(&app).await;
    newcomer.expect_text("Name: ").await;
    app.stop().await;
    assert!(alice.expect_closed().await.contains("shutting down"));
    assert!(newcomer.expect_closed().await.contains("shutting down"));
}

#[tokio::test]
async fn lines_wrap_to_the_window_and_an_idle_player_is_closed() {
    let app = TestApp::spawn_with(|config| config.telnet_idle_secs = 2).await;
    app.register("Alice").await;
    let mut alice = telnet(&app).await;
    alice
        .send(&[IAC, WILL, NAWS, IAC, SB, NAWS, 0, 30, 0, 24, IAC, SE])
        .await;
    alice.log_in("Alice", "correct horse").await;
    alice.line("help").await;
    let help = alice.expect_text("leave the game").await;
    let longest = help.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(longest <= 29, "{longest} columns in {help}");
    // Nothing typed for the idle timeout: closed, with a reason.
    let started = Instant::now();
    let rest = alice.expect_closed().await;
    assert!(rest.contains("idle too long"), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_dropped_telnet_player_stays_link_dead_and_comes_back_unannounced() {
    let app = TestApp::spawn_with(|config| config.link_dead_grace_secs = 30).await;
    let mut bob = app.join("Bob").await;
    app.register("Alice").await;
    let alice = logged_in(&app, "Alice").await;
    bob.expect(EventType::PlayerEnteredGame).await;
    // The connection drops without `quit`: the room hears nothing, and Alice is still here.
    drop(alice);
    bob.expect_silence().await;
    assert_eq!(
        bob.reply("who").await.data["result"],
        "Players online (2): Alice (link-dead), Bob"
    );
    let mut again = logged_in(&app, "Alice").await;
    bob.expect_silence().await;
    again.line("say back").await;
    assert_eq!(
        bob.expect(EventType::ChatMessage).await.data["message"],
        "Alice says: back"
    );
}

/// NATS going away and coming back, as a telnet player lives it: speaking fails with a
/// line that says why (nothing vanishes); when NATS returns without the event stream (a
/// single server restarted: its events are gone), the player is told and closed, as a
/// WebSocket player gets 4008 `events_lost`, and can log in again.
#[tokio::test]
async fn a_nats_outage_is_told_to_a_telnet_player() {
    let mut app = TestApp::spawn().await;
    app.register("Alice").await;
    let mut alice = logged_in(&app, "Alice").await;
    let port = app.nats.port;
    app.nats.stop();
    alice.line("say anyone there?").await;
    alice
        .expect_text("The world cannot hear you right now")
        .await;
    app.nats = common::NatsServer::start_on(Some(port));
    let farewell = alice.expect_closed().await;
    assert!(farewell.contains("events_lost"), "{farewell}");
    let mut again = logged_in(&app, "Alice").await;
    again.line("say back again").await;
    again.expect_text("You say: back again").await;
}
