//! Configuration: defaults < a TOML file (`--config FILE`) < environment variables
//! (`NATSMUD_…`) < command-line flags. Every key of the file is a flag's name with `_` for
//! `-` (`tick_interval_ms = 1000` for `--tick-interval-ms 1000`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use natsmud_protocol::SubjectPrefix;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "natsmud",
    version,
    about = "A multiplayer text-game server whose real-time events travel through NATS",
    args_override_self = true
)]
pub struct Config {
    /// TOML file with settings; environment variables and flags override it.
    #[arg(long = "config", env = "NATSMUD_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Address the HTTP/WebSocket server listens on.
    #[arg(long, env = "NATSMUD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Address the telnet listener (MUD clients: Mudlet, TinTin++, `telnet`) listens on;
    /// `0` or empty: no telnet.
    #[arg(long, env = "NATSMUD_TELNET_BIND", default_value = "127.0.0.1:4000", value_parser = parse_optional_addr)]
    pub telnet_bind: OptionalAddr,

    /// Seconds a telnet player may stay silent before the connection is closed (MUD
    /// clients send nothing while their player idles, so this is long). 0: never.
    #[arg(long, env = "NATSMUD_TELNET_IDLE_SECS", default_value_t = 3600)]
    pub telnet_idle_secs: u64,

    /// Address serving only `/health` and `/metrics`, outside the socket caps, for an
    /// orchestrator or monitor: it still answers when the main address is full. Unset: none.
    #[arg(long, env = "NATSMUD_ADMIN_BIND")]
    pub admin_bind: Option<SocketAddr>,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "NATSMUD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// File with NATS credentials (JWT + NKey seed, a `.creds` file).
    #[arg(long, env = "NATSMUD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = "NATSMUD_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password (with --nats-user).
    #[arg(long, env = "NATSMUD_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Secret>,

    /// NATS authentication token.
    #[arg(long, env = "NATSMUD_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Secret>,

    /// PEM file of CA certificates to trust for NATS over TLS.
    #[arg(long, env = "NATSMUD_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate for NATS over TLS (with --nats-tls-key).
    #[arg(long, env = "NATSMUD_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,

    /// PEM client key for NATS over TLS (with --nats-tls-cert).
    #[arg(long, env = "NATSMUD_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,

    /// Refuse to talk to NATS without TLS.
    #[arg(long, env = "NATSMUD_NATS_REQUIRE_TLS", action = ArgAction::SetTrue)]
    pub nats_require_tls: bool,

    /// Prefix put in front of every NATS subject, so several worlds can share one NATS.
    #[arg(long, env = "NATSMUD_SUBJECT_PREFIX", default_value = "", value_parser = parse_prefix)]
    pub subject_prefix: SubjectPrefix,

    /// What this node subscribes to on NATS: `interest`, the rooms and sub-zones where it
    /// has players (plus ticks, global chat, notices and whispers); or `all`, the whole
    /// world's events.
    #[arg(
        long,
        env = "NATSMUD_SUBSCRIPTIONS",
        value_enum,
        default_value = "interest"
    )]
    pub subscriptions: crate::realtime::SubscriptionMode,

    /// By interest: the share of the world's rooms and sub-zones (0 to 1) past which the
    /// node listens to the whole world instead of to each place — a subscription per place
    /// costs the node about 6 KB, and hearing much of the world one place at a time saves
    /// little traffic. It goes back to places when its players are in fewer than half as
    /// many. 1: never. (0.5 was tried: a dozen nodes switching with thousands of
    /// subscriptions each in the middle of a login wave stalled their NATS server;
    /// docs/performance.md.)
    #[arg(long, env = "NATSMUD_INTEREST_MAX_SHARE", default_value_t = 0.2, value_parser = parse_share)]
    pub interest_max_share: f64,

    /// This node's id among the nodes serving the world: letters, digits, '_' and '-'.
    /// Generated at start when unset (and logged).
    #[arg(long, env = "NATSMUD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Seconds a node's heartbeat lives in NATS without renewal (renewed three times as
    /// often); players of a node silent that long are written off by the others.
    #[arg(long, env = "NATSMUD_NODE_TTL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_ttl_secs: u64,

    /// Seconds of the tick leader's lease: when the ticking node dies another node takes
    /// the tick over within this long.
    #[arg(long, env = "NATSMUD_TICK_LEASE_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tick_lease_secs: u64,

    /// Replicas of natsmud's JetStream data (presence) in a NATS cluster. 0: 3 when the
    /// NATS server is part of a cluster, else 1.
    #[arg(long, env = "NATSMUD_NATS_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=5))]
    pub nats_replicas: u32,

    /// Where the world's event stream (which resuming clients read back) keeps events.
    #[arg(long, env = "NATSMUD_STREAM_STORAGE", value_enum, default_value_t = StreamStorage::Memory)]
    pub stream_storage: StreamStorage,

    /// Seconds the event stream keeps an event: a client can resume from a position this
    /// recent.
    #[arg(long, env = "NATSMUD_STREAM_MAX_AGE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stream_max_age_secs: u64,

    /// Most bytes the event stream holds; the oldest events go first beyond it.
    #[arg(long, env = "NATSMUD_STREAM_MAX_BYTES", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub stream_max_bytes: u64,

    /// Seconds a player whose connection dropped without `quit` stays in the world
    /// (link-dead), so that reconnecting resumes without the room seeing it leave. 0:
    /// leave at once.
    #[arg(long, env = "NATSMUD_LINK_DEAD_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub link_dead_grace_secs: u64,

    /// Most missed events a resuming client is sent; beyond it the resume is refused
    /// (`too_many`) and the client starts from the fresh `game_state`.
    #[arg(long, env = "NATSMUD_RESUME_MAX_MISSED", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub resume_max_missed: u32,

    /// Resumes read from the event stream at once on this node; more wait their turn.
    #[arg(long, env = "NATSMUD_RESUME_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub resume_concurrency: u32,

    /// Most events a node reads back from the stream to catch its players up after its
    /// NATS connection came back; beyond it they are closed (4008 `events_lost`) to resume.
    #[arg(long, env = "NATSMUD_CATCH_UP_MAX", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub catch_up_max: u32,

    /// Directory for the account database and the generated JWT secret.
    #[arg(long, env = "NATSMUD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://…` (one machine; the default is
    /// `sqlite://{data_dir}/natsmud.db`) or `postgres://user:password@host/db` (nodes on
    /// several machines share accounts and rooms; give them all the same --jwt-secret).
    #[arg(long, env = "NATSMUD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Secret that signs access tokens (HS256); must be the same on every node. When unset,
    /// one is generated once and kept in `{data_dir}/jwt_secret`.
    #[arg(long, env = "NATSMUD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// How long an access token stays valid, in seconds.
    #[arg(long, env = "NATSMUD_TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,

    /// Directory holding world.json and zones/*.json; the built-in world when unset.
    #[arg(long = "world", env = "NATSMUD_WORLD_DIR")]
    pub world_dir: Option<PathBuf>,

    /// Milliseconds between game ticks (at least 100), or 0 for no ticks on this node.
    #[arg(long, env = "NATSMUD_TICK_INTERVAL_MS", default_value_t = 10_000, value_parser = parse_tick_interval)]
    pub tick_interval_ms: u64,

    /// Frames each connection may have waiting to be written before it is closed as a
    /// slow consumer (close code 4008).
    #[arg(long, env = "NATSMUD_OUTBOUND_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_queue: u32,

    /// Largest client frame, in bytes; a larger one closes the socket with 1009.
    #[arg(long, env = "NATSMUD_MAX_FRAME_BYTES", default_value_t = 8 * 1024, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_frame_bytes: u32,

    /// Seconds between the server's WebSocket pings; a peer silent for two intervals is
    /// dropped.
    #[arg(long, env = "NATSMUD_WS_PING_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_ping_secs: u64,

    /// Longest wait for NATS to accept one publish, in milliseconds.
    #[arg(long, env = "NATSMUD_PUBLISH_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,

    /// Memory cost of argon2id password hashing, in KiB (default: OWASP's 19 MiB). Lower it
    /// only for load tests; existing hashes keep the cost they were made with.
    #[arg(long, env = "NATSMUD_PASSWORD_HASH_MEMORY_KIB", default_value_t = 19 * 1024, value_parser = clap::value_parser!(u32).range(8..=4 * 1024 * 1024))]
    pub password_hash_memory_kib: u32,

    /// Time cost (iterations) of argon2id password hashing.
    #[arg(long, env = "NATSMUD_PASSWORD_HASH_ITERATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub password_hash_iterations: u32,

    /// Most players connected to this node at once; more are refused with 503. 0: no limit.
    #[arg(long, env = "NATSMUD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u32,

    /// Sockets one client address may hold open at once (IPv6: per /64); more are answered
    /// with 503 and closed. 0: no limit.
    #[arg(long, env = "NATSMUD_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: u32,

    /// Sockets open at once, of every kind (players, HTTP requests, idle keep-alives); more
    /// are answered with 503 and closed, so the process keeps file descriptors for its
    /// database, NATS and files. 0: the open-files limit minus a reserve of 128.
    #[arg(long, env = "NATSMUD_MAX_SOCKETS", default_value_t = 0)]
    pub max_sockets: u32,

    /// Seconds a client has to send a request's head, counted from the connection's start
    /// or, on a kept-alive connection, from the end of the previous response; then the
    /// connection is closed.
    #[arg(long, env = "NATSMUD_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_secs: u64,

    /// Seconds a write to a client (HTTP, WebSocket or SSE) may make no progress before the
    /// connection is closed: bounds what a client that stops reading can hold.
    #[arg(long, env = "NATSMUD_WRITE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout_secs: u64,

    /// Commands (and chat, and WebSocket pings) each player may send per second, on
    /// average, across all of its connections. 0: no limit.
    #[arg(long, env = "NATSMUD_COMMANDS_PER_SEC", default_value_t = 10)]
    pub commands_per_sec: u32,

    /// Connections (WebSocket or SSE) each player may open per minute. 0: no limit.
    #[arg(long, env = "NATSMUD_CONNECTS_PER_MINUTE", default_value_t = 30)]
    pub connects_per_minute: u32,

    /// Commands a player may send in a quick burst above the average rate.
    #[arg(long, env = "NATSMUD_COMMAND_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub command_burst: u32,

    /// Login and register attempts per client address per minute. 0: no limit.
    #[arg(long, env = "NATSMUD_AUTH_PER_MINUTE", default_value_t = 20)]
    pub auth_per_minute: u32,

    /// Password hashes computed at once, each on a dedicated thread that keeps its own
    /// argon2 memory (so hashing needs at most this many × the memory cost). 0: one per
    /// CPU core.
    #[arg(long, env = "NATSMUD_HASHING_CONCURRENCY", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub hashing_concurrency: u32,

    /// Logins and registrations that may wait for a hashing thread; beyond them a request is
    /// refused at once with 503 `busy` and `Retry-After`. At the default cost one hash took
    /// 17 ms of a core on the 2-core development machine, so 32 waiting there is a wait of
    /// about 0.3 s, and of a second or two with the cores shared by a busy game, a slower
    /// CPU or a higher cost: enough to absorb a burst of logins, short enough that nobody
    /// sits in a queue for tens of seconds (a refused client learns it at once).
    #[arg(long, env = "NATSMUD_HASHING_QUEUE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub hashing_queue: u32,

    /// Threads running connections and events. 0: one per CPU core. Several nodes sharing
    /// one machine each do better with more than their share of the cores (see
    /// docs/performance.md): a worker parked in the I/O driver answers new events at once
    /// while the others are busy with a large fan-out.
    #[arg(long, env = "NATSMUD_WORKER_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub worker_threads: u32,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `natsmud=debug`.
    #[arg(long, env = "NATSMUD_LOG", default_value = "info")]
    pub log: String,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "NATSMUD_LOG_JSON", action = ArgAction::SetTrue)]
    pub log_json: bool,
}

/// A secret setting: `Debug` prints `<redacted>`, so logging a config never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// An address to listen on, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// `""` and `"0"` turn a listener off (a port of 0 is kept: the system picks one).
fn parse_optional_addr(value: &str) -> Result<OptionalAddr, String> {
    match value.trim() {
        "" | "0" => Ok(OptionalAddr(None)),
        address => address
            .parse()
            .map(|address| OptionalAddr(Some(address)))
            .map_err(|_| {
                format!("{value:?} is not an address like 127.0.0.1:4000 (or 0 for none)")
            }),
    }
}

fn parse_share(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{value:?} is not a share between 0 and 1")),
    }
}

fn parse_tick_interval(value: &str) -> Result<u64, String> {
    let ms: u64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number of milliseconds"))?;
    if ms != 0 && ms < 100 {
        return Err(format!(
            "{ms} ms is too short; use at least 100, or 0 for no ticks"
        ));
    }
    Ok(ms)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config file {file} is not valid TOML: {source}")]
    Toml {
        file: String,
        source: Box<toml::de::Error>,
    },
    #[error("config file {file}, key `{key}`: {problem}")]
    Key {
        file: String,
        key: String,
        problem: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads the configuration from the process's arguments, environment and config file.
    /// `--help` and `--version` print and exit, as does a flag error (with clap's message).
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Self::command().get_matches_from(args.clone());
        let file = matches.get_one::<PathBuf>("config_file").cloned();
        let Some(file) = file else {
            return Self::from_arg_matches(&matches)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?
                .validated();
        };
        // The file's values go in as flags placed before the real ones, and only for keys
        // that neither the environment nor a flag set, so the precedence holds.
        let injected = file_arguments(&file, &matches)?;
        let mut merged = Vec::with_capacity(args.len() + injected.len());
        merged.extend(args.first().cloned());
        merged.extend(injected);
        merged.extend(args.into_iter().skip(1));
        let matches = Self::command()
            .try_get_matches_from(merged)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Self::from_arg_matches(&matches)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .validated()
    }

    fn validated(self) -> Result<Self, ConfigError> {
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err(ConfigError::Invalid(
                "nats_user and nats_password go together".to_owned(),
            ));
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "nats_tls_cert and nats_tls_key go together".to_owned(),
            ));
        }
        if self.nats_url.split(',').all(|u| u.trim().is_empty()) {
            return Err(ConfigError::Invalid("nats_url is empty".to_owned()));
        }
        Ok(self)
    }
}

fn file_arguments(file: &Path, matches: &clap::ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
        file: name.clone(),
        source: Box::new(source),
    })?;
    let command = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let key_error = |problem: String| ConfigError::Key {
            file: name.clone(),
            key: key.clone(),
            problem,
        };
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != "config_file")
        else {
            return Err(key_error("unknown setting (see natsmud --help)".to_owned()));
        };
        if !matches!(
            matches.value_source(&key),
            Some(ValueSource::DefaultValue) | None
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (&value, is_switch) {
            (toml::Value::Boolean(true), true) => out.push(OsString::from(flag)),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => return Err(key_error("expected true or false".to_owned())),
            (toml::Value::String(text), false) => {
                check_value(&command, arg, text).map_err(&key_error)?;
                out.push(OsString::from(format!("{flag}={text}")));
            }
            (toml::Value::Integer(number), false) => {
                check_value(&command, arg, &number.to_string()).map_err(&key_error)?;
                out.push(OsString::from(format!("{flag}={number}")));
            }
            (toml::Value::Boolean(b), false) => {
                check_value(&command, arg, &b.to_string()).map_err(&key_error)?;
                out.push(OsString::from(format!("{flag}={b}")));
            }
            _ => return Err(key_error("expected a string or a number".to_owned())),
        }
    }
    Ok(out)
}

/// Runs the flag's own parser on a file value, so the error names the key.
fn check_value(command: &clap::Command, arg: &clap::Arg, value: &str) -> Result<(), String> {
    let flag = format!("--{}={value}", arg.get_long().unwrap_or_default());
    command
        .clone()
        .try_get_matches_from(["natsmud", flag.as_str()])
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            text.lines()
                .next()
                .unwrap_or(&text)
                .trim_start_matches("error: ")
                .to_owned()
        })
}

fn parse_node_id(value: &str) -> Result<String, String> {
    if natsmud_protocol::ids::is_subject_token(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} must be 1–64 letters, digits, '_' or '-'"
        ))
    }
}

fn parse_prefix(value: &str) -> Result<SubjectPrefix, String> {
    SubjectPrefix::parse(value).map_err(|e| e.to_string())
}

impl Config {
    /// The configuration a test or embedding program starts from: every default, with the
    /// given NATS URL and data directory.
    pub fn for_data_dir(nats_url: &str, data_dir: PathBuf) -> Self {
        let mut config = Self::parse_from(["natsmud"]);
        config.config_file = None;
        config.nats_url = nats_url.to_owned();
        config.data_dir = data_dir;
        config
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("natsmud.db").display()))
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs)
    }

    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_secs)
    }

    /// Hashing threads: the configured number, or one per CPU core.
    pub fn hashing_threads(&self) -> usize {
        match self.hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n as usize,
        }
    }

    /// How many rooms and sub-zones a node subscribes to one by one before it listens to
    /// the whole world instead, in a world of `places`.
    pub fn interest_max_places(&self, places: usize) -> usize {
        if self.interest_max_share >= 1.0 {
            return usize::MAX;
        }
        // Exact for any world that fits in memory.
        (self.interest_max_share * places as f64).floor() as usize
    }

    pub fn tick_interval(&self) -> Option<Duration> {
        (self.tick_interval_ms > 0).then(|| Duration::from_millis(self.tick_interval_ms))
    }

    /// How long a telnet player may stay silent; `None`: for ever.
    pub fn telnet_idle(&self) -> Option<Duration> {
        (self.telnet_idle_secs > 0).then(|| Duration::from_secs(self.telnet_idle_secs))
    }

    pub fn link_dead_grace(&self) -> Duration {
        Duration::from_secs(self.link_dead_grace_secs)
    }
}

/// Where the world's event stream keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamStorage {
    /// Fast; lost when the NATS server restarts (resuming clients then start afresh).
    Memory,
    /// Survives a NATS server restart.
    File,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("natsmud.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("natsmud").chain(args.iter().copied()))
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let (_dir, path) =
            write("tick_interval_ms = 500\nbind = \"127.0.0.1:9000\"\nlog_json = true\n");
        let path = path.to_string_lossy().to_string();
        let config = load(&["--config", &path]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tick_interval_ms, 500);
        assert_eq!(config.bind.port(), 9000);
        assert!(config.log_json);
        let config = load(&["--config", &path, "--tick-interval-ms", "700"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tick_interval_ms, 700);
    }

    #[test]
    fn secrets_are_not_printed() {
        let config = load(&[
            "--jwt-secret",
            "hunter2-very-secret",
            "--nats-token",
            "tok3n",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("tok3n"),
            "{printed}"
        );
        assert_eq!(
            config.jwt_secret.map(|s| s.expose().to_owned()).as_deref(),
            Some("hunter2-very-secret")
        );
    }

    #[test]
    fn edge_and_hashing_settings_have_their_defaults_and_bounds() {
        let config = load(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.http_header_timeout(), Duration::from_secs(10));
        assert_eq!(config.write_timeout(), Duration::from_secs(10));
        assert_eq!(config.max_connections_per_ip, 64);
        assert_eq!(config.max_sockets, 0);
        assert_eq!(config.hashing_queue, 32);
        assert_eq!(config.hashing_concurrency, 0);
        assert!(config.hashing_threads() >= 1, "0 means one per core");
        let config = load(&["--hashing-concurrency", "3"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.hashing_threads(), 3);
        for zero in ["http_header_timeout_secs", "write_timeout_secs"] {
            let (_dir, path) = write(&format!("{zero} = 0\n"));
            let error = load(&["--config", &path.to_string_lossy()])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(zero), "{zero}: {error}");
        }
    }

    #[test]
    fn telnet_listens_on_4000_unless_turned_off() {
        let config = load(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.telnet_bind.0.map(|a| a.port()), Some(4000));
        for off in ["0", ""] {
            let config = load(&["--telnet-bind", off]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.telnet_bind, OptionalAddr(None), "{off:?}");
        }
        let (_dir, path) = write("telnet_bind = \"\"\n");
        let config = load(&["--config", &path.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.telnet_bind, OptionalAddr(None));
        let config = load(&["--telnet-bind", "127.0.0.1:0"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.telnet_bind.0.map(|a| a.port()), Some(0));
        let (_dir, path) = write("telnet_bind = \"port 4000\"\n");
        let error = load(&["--config", &path.to_string_lossy()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("`telnet_bind`"), "{error}");
    }

    #[test]
    fn bad_file_values_name_the_key() {
        let (_dir, path) = write("tick_interval_ms = 5\n");
        let error = load(&["--config", &path.to_string_lossy()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("tick_interval_ms") && error.contains("too short"),
            "{error}"
        );
        let (_dir, path) = write("no_such_setting = 1\n");
        let error = load(&["--config", &path.to_string_lossy()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("no_such_setting") && error.contains("unknown"),
            "{error}"
        );
        let (_dir, path) = write("bind = \"nowhere\"\n");
        let error = load(&["--config", &path.to_string_lossy()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("`bind`"), "{error}");
    }
}
