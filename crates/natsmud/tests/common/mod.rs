//! Test harness: every test gets its own nats-server on a free port, its own data directory
//! (SQLite file, JWT secret) and its own natsmud on port 0, all cleaned up on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use natsmud::Config;
use natsmud_protocol::{EventType, ServerFrame};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for a frame it must not get.
pub const QUIET: Duration = Duration::from_millis(300);

fn nats_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("NATSMUD_NATS_SERVER") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tools = root.join("target/tools");
    if let Ok(entries) = std::fs::read_dir(&tools) {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin/nats-server");
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("nats-server-")
                && bin.exists()
            {
                return bin;
            }
        }
    }
    panic!(
        "no nats-server for tests: run scripts/install-nats-server (or scripts/test), \
         or set NATSMUD_NATS_SERVER to a nats-server >= 2.11"
    );
}

/// A nats-server of this test's own. Killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    pub port: u16,
    dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// Starts on `port`, or on a free port chosen by nats-server itself (`-p -1`).
    pub fn start_on(port: Option<u16>) -> Self {
        Self::start_binary(&nats_server_bin(), port)
    }

    /// Starts the nats-server at `bin` (another version than the pinned one).
    pub fn start_binary(bin: &Path, port: Option<u16>) -> Self {
        Self::start_with(bin, port, &[])
    }

    /// Starts the pinned nats-server with `extra` arguments.
    pub fn start_pinned_with(extra: &[String]) -> Self {
        Self::start_with(&nats_server_bin(), None, extra)
    }

    /// Starts the nats-server at `bin` with `extra` arguments.
    pub fn start_with(bin: &Path, port: Option<u16>, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        // JetStream on (natsmud keeps presence in it), its store in this server's own
        // directory: a server started again on the same port starts empty, as a new one.
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(dir.path().join("jetstream"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(value) = serde_json::from_str::<Value>(&text)
                && let Some(url) = value["nats"][0].as_str()
            {
                break url.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not write {}",
                ports_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url");
        Self {
            child,
            url,
            port,
            dir,
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NatsServer {
    /// Freezes the server (SIGSTOP): its sockets stay open and nothing answers, as in a
    /// long pause of its machine.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running natsmud with its own NATS and data directory.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where its telnet listener is (on a port of its own, like `addr`).
    pub telnet_addr: Option<SocketAddr>,
    pub nats: NatsServer,
    pub data_dir: TempDir,
    pub config: Config,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
    /// With `NATSMUD_TEST_DATABASE=postgres`: the PostgreSQL of this test's own.
    postgres: Option<Postgres>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "warn,natsmud::presence=info".to_owned()),
            )
            .with_test_writer()
            .try_init();
        let nats = NatsServer::start();
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(&nats.url, data_dir.path().to_path_buf());
        config.jwt_secret = Some(natsmud::config::Secret::new(
            "test-secret-not-for-production",
        ));
        // Ticks would interleave with the frames tests expect; tick tests turn them on.
        config.tick_interval_ms = 0;
        // Limits are off unless a test is about them; cheap hashing keeps debug builds fast.
        config.commands_per_sec = 0;
        config.auth_per_minute = 0;
        config.max_connections = 0;
        // Every test connects from 127.0.0.1; the per-address cap has tests of its own.
        config.max_connections_per_ip = 0;
        config.password_hash_memory_kib = 64;
        config.password_hash_iterations = 1;
        // A dropped connection leaves at once unless a test is about the link-dead grace.
        config.link_dead_grace_secs = 0;
        // Telnet on a port of its own: tests run many servers at once.
        config.telnet_bind = natsmud::config::OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
        // scripts/test runs the gameplay and auth suites a second time on PostgreSQL.
        let postgres =
            (std::env::var("NATSMUD_TEST_DATABASE").as_deref() == Ok("postgres")).then(|| {
                Postgres::start("NATSMUD_TEST_DATABASE=postgres")
                    .expect("NATSMUD_TEST_DATABASE=postgres needs PostgreSQL's binaries")
            });
        if let Some(postgres) = &postgres {
            config.database_url = Some(postgres.url.clone());
        }
        adjust(&mut config);
        let mut app = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            telnet_addr: None,
            nats,
            data_dir,
            config,
            shutdown: None,
            task: None,
            // Under the server's 10 s keep-alive timeout, so a pooled connection is never
            // reused just as the server closes it.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            postgres,
        };
        app.start().await;
        app
    }

    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let telnet = match self.config.telnet_bind.0 {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.unwrap()),
            None => None,
        };
        self.telnet_addr = telnet.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        let listeners = natsmud::startup::Listeners {
            http: listener,
            telnet,
        };
        self.task = Some(tokio::spawn(natsmud::startup::run_on(
            listeners,
            config,
            async move {
                let _ = rx.await;
            },
        )));
        self.shutdown = Some(tx);
        self.wait_until_serving().await;
    }

    /// Startup (world, database, NATS subscription) finishes before the first request.
    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(task) = self.task.take_if(|t| t.is_finished()) {
                panic!("natsmud stopped during startup: {:?}", task.await);
            }
            if self.http.get(self.url("/health")).send().await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "natsmud did not start serving");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops in time");
            result.expect("server task").expect("server ran cleanly");
        }
    }

    /// Stops and starts again on a new port with the same data directory and NATS.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `/health` says the node serves, with the world's presence: a login
    /// before that is let in on this node only, and closed again once presence answers.
    pub async fn wait_until_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, health) = self.get("/health").await;
            if status == 200 && health["presence"] == "ready" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node was not ready within {within:?}: {status} {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers `name` with a fixed password; returns the access token.
    pub async fn register(&self, name: &str) -> Account {
        let (status, body) = self
            .post(
                "/api/auth/register",
                &json!({"username": name, "password": "correct horse"}),
            )
            .await;
        assert_eq!(status, 201, "register {name}: {body}");
        serde_json::from_value(body).unwrap()
    }

    /// Registers and connects `name`, and reads its `game_state`.
    pub async fn join(&self, name: &str) -> Player {
        let account = self.register(name).await;
        let mut player = self.connect(&account).await;
        let state = player.expect(EventType::GameState).await;
        player.room = state.room_id.clone().unwrap_or_default();
        player
    }

    pub async fn connect(&self, account: &Account) -> Player {
        connect_at(&self.addr.to_string(), account).await
    }

    /// Connects `player`'s account again and reads the new connection's `game_state`.
    pub async fn rejoin(&self, player: &Player) -> Player {
        let mut again = self.connect(&player.account).await;
        let state = again.expect(EventType::GameState).await;
        again.room = state.room_id.clone().unwrap_or_default();
        again
    }

    /// A NATS client of the test's own, on this app's nats-server.
    pub async fn outside_client(&self) -> async_nats::Client {
        async_nats::connect(&self.nats.url)
            .await
            .expect("test connects to its nats-server")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Account {
    pub player_id: String,
    pub player_name: String,
    pub access_token: String,
    pub token_type: String,
}

/// A WebSocket client playing as one player.
pub struct Player {
    pub name: String,
    pub id: String,
    pub room: String,
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The account it plays, to connect again.
    pub account: Account,
}

/// What the server sent: a frame, or the close of the socket.
#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    Closed(Option<(u16, String)>),
}

impl Player {
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    /// Sends a typed line as a `game_command`.
    pub async fn command(&mut self, line: &str) {
        self.send_json(json!({"type": "game_command", "data": {"command": line}}))
            .await;
    }

    /// The next frame or close, or `None` if nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame =
                        serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                            panic!("{} got an unreadable frame {text}: {e}", self.name)
                        });
                    return Some(Received::Frame(frame));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Received::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Received::Closed(None)),
            }
        }
    }

    pub async fn next_frame(&mut self) -> ServerFrame {
        match self.next_within(WAIT).await {
            Some(Received::Frame(frame)) => frame,
            other => panic!("{} expected a frame, got {other:?}", self.name),
        }
    }

    /// The next frame, which must be of type `kind`.
    pub async fn expect(&mut self, kind: EventType) -> ServerFrame {
        let frame = self.next_frame().await;
        assert_eq!(frame.event_type, kind, "{} got {frame:?}", self.name);
        frame
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_silence(&mut self) {
        if let Some(received) = self.next_within(QUIET).await {
            panic!("{} expected nothing, got {received:?}", self.name);
        }
    }

    /// Reads until the socket closes; returns the close code and reason.
    pub async fn expect_close(&mut self) -> Option<(u16, String)> {
        loop {
            match self.next_within(WAIT).await {
                Some(Received::Closed(frame)) => return frame,
                Some(Received::Frame(_)) => continue,
                None => panic!("{} expected the socket to close", self.name),
            }
        }
    }

    /// Sends a command and returns the actor's direct reply.
    pub async fn ask(&mut self, line: &str) -> ServerFrame {
        self.command(line).await;
        self.next_frame().await
    }

    /// Reads until the socket closes, which it must with `code`; returns the reason.
    pub async fn expect_closed_with(&mut self, code: u16) -> String {
        match self.expect_close().await {
            Some((got, reason)) if got == code => reason,
            other => panic!("{} expected a close with {code}, got {other:?}", self.name),
        }
    }

    /// Sends a command and returns its direct reply, skipping whatever events come first.
    pub async fn reply(&mut self, line: &str) -> ServerFrame {
        self.command(line).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.next_within(left).await {
                Some(Received::Frame(frame)) => frame,
                other => panic!(
                    "{} expected an answer to {line:?}, got {other:?}",
                    self.name
                ),
            };
            if matches!(
                frame.event_type,
                EventType::CommandResponse | EventType::Error | EventType::RoomUpdate
            ) {
                return frame;
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> ServerFrame {
        let frame = self.expect(EventType::Error).await;
        assert_eq!(frame.data_str("code"), code, "{frame:?}");
        frame
    }
}

/// The built-in world, for picking exits in tests.
pub fn world() -> natsmud::world::World {
    natsmud::world::World::built_in().unwrap()
}

/// A direction out of `room` and the room it leads to.
pub fn some_exit(room: &str) -> (String, String) {
    let world = world();
    let room = world.room(room).unwrap();
    let (direction, target) = room.exits.iter().next().unwrap();
    (direction.clone(), target.to_string())
}

impl TestApp {
    /// Joins players one after another in the same start room and reads the
    /// `player_entered_game` each earlier player gets for each later one.
    pub async fn join_all<const N: usize>(&self, names: [&str; N]) -> [Player; N] {
        let mut players: Vec<Player> = Vec::with_capacity(N);
        for name in names {
            let player = self.join(name).await;
            for earlier in &mut players {
                let entered = earlier.expect(EventType::PlayerEnteredGame).await;
                assert_eq!(entered.data["player_name"], name);
            }
            players.push(player);
        }
        match players.try_into() {
            Ok(players) => players,
            Err(_) => unreachable!("N players were joined"),
        }
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's samples on `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The real `natsmud` binary on a free port; returns it and its address, read from the
/// "natsmud serving" log line.
pub fn spawn_binary(nats_url: &str, data_dir: &Path, extra: &[&str]) -> (KillOnDrop, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_natsmud"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--telnet-bind",
            "127.0.0.1:0",
            "--nats-url",
            nats_url,
            "--tick-interval-ms",
            "0",
            "--log",
            "info",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("address=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let mut child = KillOnDrop(child);
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.0.kill();
            panic!("the server did not log its address");
        }
    };
    (child, addr)
}

/// A child process that is killed when the test ends, even by a panic.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Registers over HTTP at `addr` (for servers not started as a [`TestApp`]).
pub async fn register_at(addr: &str, name: &str) -> Account {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/auth/register"))
        .json(&json!({"username": name, "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Opens a WebSocket at `addr` as `account`.
pub async fn connect_at(addr: &str, account: &Account) -> Player {
    connect_url(
        format!("ws://{addr}/api/ws?token={}", account.access_token),
        account,
    )
    .await
}

/// Opens a WebSocket at `addr` as `account`, resuming from `since`.
pub async fn resume_at(addr: &str, account: &Account, since: &str) -> Player {
    connect_url(
        format!(
            "ws://{addr}/api/ws?token={}&since={since}",
            account.access_token
        ),
        account,
    )
    .await
}

async fn connect_url(url: String, account: &Account) -> Player {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    Player {
        name: account.player_name.clone(),
        id: account.player_id.clone(),
        room: String::new(),
        socket,
        account: account.clone(),
    }
}

/// The payload of [`subscribe_ready`]'s probe; natsmud drops it as malformed.
pub const PROBE: &[u8] = b"natsmud-test-probe";

/// Subscribes and returns once the NATS server has registered the subscription: the
/// client's `flush` only writes the SUB out, so a message published right after it from
/// another connection could still miss it. A probe published from this same connection
/// comes back only after the SUB took effect.
pub async fn subscribe_ready(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let mut subscriber = client.subscribe(subject.to_owned()).await.unwrap();
    let probe_subject: String = subject
        .split('.')
        .map(|token| {
            if token == ">" || token == "*" {
                "probe"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    client.publish(probe_subject, PROBE.into()).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut subscriber))
            .await
            .expect("the probe comes back")
            .expect("the subscription is open");
        if message.payload.as_ref() == PROBE {
            return subscriber;
        }
    }
}

/// A port nothing listens on now (bound and released), for servers that need to know each
/// other's ports before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS cluster of the test's own: servers routed to each other, JetStream clustered.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(n, port)| {
                let extra = [
                    "--server_name".to_owned(),
                    format!("s{n}"),
                    "--cluster_name".to_owned(),
                    "natsmud_test".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                NatsServer::start_with(&nats_server_bin(), None, &extra)
            })
            .collect();
        let cluster = Self { servers };
        // JetStream answers once the servers have elected a meta leader.
        let urls: Vec<String> = cluster.servers.iter().map(|s| s.url.clone()).collect();
        let client = async_nats::connect(urls).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(20);
        while js.query_account().await.is_err() {
            assert!(Instant::now() < deadline, "the NATS cluster never formed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// Every server's URL, comma-separated, starting with server `first`.
    pub fn urls_from(&self, first: usize) -> String {
        let n = self.servers.len();
        (0..n)
            .map(|i| self.servers[(first + i) % n].url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn urls(&self) -> String {
        self.urls_from(0)
    }
}

impl Player {
    /// Reads until a frame of `kind` (other frames are skipped).
    /// The next frame of type `kind` within [`WAIT`], passing over others (a steady flow
    /// of ticks must not keep a test waiting for ever).
    pub async fn until(&mut self, kind: EventType) -> ServerFrame {
        self.until_within(kind, WAIT).await
    }

    /// The next frame of type `kind` within `wait`, passing over others.
    pub async fn until_within(&mut self, kind: EventType, wait: Duration) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Received::Frame(frame)) if frame.event_type == kind => return frame,
                Some(Received::Frame(_)) => {}
                other => panic!("{} expected a {kind:?} frame, got {other:?}", self.name),
            }
        }
    }
}

impl TestApp {
    /// Another node of this one's world: the same NATS, the same database.
    pub async fn another_node(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let nats_url = self.nats.url.clone();
        let data_dir = self.data_dir.path().to_path_buf();
        let database_url = self.config.database_url.clone();
        TestApp::spawn_with(move |config| {
            config.nats_url = nats_url;
            config.data_dir = data_dir;
            config.database_url = database_url;
            adjust(config);
        })
        .await
    }
}

/// Alice playing on node `a` and Bob on node `b`, each having seen the other arrive.
pub async fn alice_and_bob(a: &TestApp, b: &TestApp) -> (Player, Player) {
    let mut alice = a.join("Alice").await;
    let bob_account = a.register("Bob").await;
    let mut bob = b.connect(&bob_account).await;
    bob.expect(EventType::GameState).await;
    alice.until(EventType::PlayerEnteredGame).await;
    (alice, bob)
}

/// Bob plays on `a`; Alice logs in on `a`, then again on `b` (the same node or another):
/// the first connection is closed with 4001, and Alice stays in the game, once, without
/// Bob hearing her leave or come back.
pub async fn a_second_login_replaces_the_first(a: &TestApp, b: &TestApp) {
    let mut bob = a.join("Bob").await;
    let alice_account = a.register("Alice").await;
    let mut first = a.connect(&alice_account).await;
    first.expect(EventType::GameState).await;
    bob.until(EventType::PlayerEnteredGame).await;

    let mut second = b.connect(&alice_account).await;
    let state = second.expect(EventType::GameState).await;
    assert_eq!(state.data["occupants"], json!(["Alice", "Bob"]));
    let (code, reason) = first.expect_close().await.expect("a close frame");
    assert_eq!(code, 4001, "{reason}");
    // Alice never left the game: Bob hears nothing, and there is one Alice.
    bob.expect_silence().await;
    assert_eq!(
        bob.reply("who").await.data["result"],
        "Players online (2): Alice, Bob"
    );
    second.command("say still here").await;
    assert_eq!(
        bob.until(EventType::ChatMessage).await.data["message"],
        "Alice says: still here"
    );
}

/// A PostgreSQL server of this test's own: `initdb` in a temporary directory, `postgres` on
/// a free port of 127.0.0.1 (never the machine's own server), stopped and removed on drop.
/// As root it runs as `nobody`, since PostgreSQL refuses to run as root.
pub struct Postgres {
    child: Child,
    pub url: String,
    dir: TempDir,
}

impl Postgres {
    /// Starts one, or returns `None` (saying so) when no PostgreSQL is installed here:
    /// `NATSMUD_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false)
    }

    /// Starts one that also accepts TLS (a self-signed certificate made with `openssl`).
    pub fn start_tls(test: &str) -> Option<Self> {
        Self::start_with(test, true)
    }

    fn start_with(test: &str, tls: bool) -> Option<Self> {
        let Some(bin) = pg_bin() else {
            println!(
                "{test}: skipped: no PostgreSQL binaries (run scripts/install-postgres, \
                 or set NATSMUD_PG_BIN)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owner = pg_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let initdb = as_owner(Command::new(bin.join("initdb")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        if tls {
            let made = as_owner(Command::new("openssl"), owner, dir.path())
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(data.join("server.key"))
                .arg("-out")
                .arg(data.join("server.crt"))
                .output()
                .expect("openssl makes a certificate");
            assert!(
                made.status.success(),
                "openssl failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let ssl = format!("ssl={}", if tls { "on" } else { "off" });
        // A port taken between choosing and binding it: choose again.
        for _ in 0..5 {
            let port = free_port();
            let log =
                std::fs::File::create(dir.path().join(format!("postgres-{port}.log"))).unwrap();
            let mut child = as_owner(Command::new(bin.join("postgres")), owner, dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", &ssl])
                // A test's database need not survive a crash of the machine.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                    .arg(port.to_string())
                    .status()
                    .unwrap();
                if ready.success() {
                    return Some(Self {
                        child,
                        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                        dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let logs: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        panic!("postgres did not start: {}", logs.join("\n"));
    }

    /// Stops the server: a fast shutdown (SIGINT), so it leaves no shared memory behind.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pg_bin() -> Option<PathBuf> {
    let has_server = |dir: &Path| {
        ["initdb", "postgres", "pg_isready"]
            .iter()
            .all(|b| dir.join(b).exists())
    };
    if let Ok(bin) = std::env::var("NATSMUD_PG_BIN")
        && !bin.is_empty()
    {
        let bin = PathBuf::from(bin);
        assert!(
            has_server(&bin),
            "NATSMUD_PG_BIN={} has no initdb, postgres and pg_isready",
            bin.display()
        );
        return Some(bin);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whom PostgreSQL runs as: `nobody` when the tests run as root, else the tests' own user.
fn pg_owner() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok()? != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .find(|line| line.starts_with("nobody:"))
        .expect("a nobody user to run PostgreSQL as")
        .split(':')
        .collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>, dir: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command.current_dir(dir);
    command
}

/// A `say` in `room` published on NATS from outside natsmud, as player "talker-1".
pub async fn say_from_outside(nats: &async_nats::Client, room: &str, message: &str, id: u64) {
    let room = natsmud_protocol::RoomId::parse(room).unwrap();
    let subject = natsmud_protocol::Subject::say(&room).render(&Default::default());
    let envelope = say_envelope(&room, "talker-1", "Talker", message, id);
    nats.publish(subject, envelope.to_bytes()).await.unwrap();
}

/// What `name` (player `speaker`) saying `message` in `room` looks like on NATS.
pub fn say_envelope(
    room: &natsmud_protocol::RoomId,
    speaker: &str,
    name: &str,
    message: &str,
    id: u64,
) -> natsmud_protocol::Envelope<natsmud_protocol::envelope::ChatMessageData> {
    let speaker = natsmud_protocol::PlayerId::parse(speaker).unwrap();
    natsmud_protocol::Envelope::new(
        natsmud_protocol::EventType::ChatMessage,
        natsmud_protocol::envelope::ChatMessageData {
            channel: "say".into(),
            sender_id: speaker.clone(),
            player_name: name.into(),
            message: format!("{name} says: {message}"),
            message_id: id.to_string(),
            target_id: None,
            target_name: None,
            sub_zone: None,
        },
    )
    .in_room(room.clone())
    .by_player(speaker)
}

/// Says numbered lines (1, 2, …) in `room` from outside natsmud until `stop`, pausing 5 ms
/// after every `burst` of them (200 a second times `burst`, at most). Returns how many it
/// said.
pub fn talk_until(
    nats: async_nats::Client,
    room: String,
    burst: u64,
    stop: tokio_util::sync::CancellationToken,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            n += 1;
            say_from_outside(&nats, &room, &n.to_string(), n).await;
            if n.is_multiple_of(burst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        n
    })
}
