//! Configuration: defaults < environment (`NATSMUD_…`) < command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use natsmud_protocol::SubjectPrefix;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "natsmud",
    version,
    about = "A multiplayer text-game server whose events travel through NATS"
)]
pub struct Config {
    /// Address the HTTP/WebSocket server listens on.
    #[arg(long, env = "NATSMUD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "NATSMUD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix put in front of every NATS subject, so several worlds can share one NATS.
    #[arg(long, env = "NATSMUD_SUBJECT_PREFIX", default_value = "", value_parser = parse_prefix)]
    pub subject_prefix: SubjectPrefix,

    /// Directory for the account database and the generated JWT secret.
    #[arg(long, env = "NATSMUD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// SQLite database URL; defaults to `sqlite://{data_dir}/natsmud.db`.
    #[arg(long, env = "NATSMUD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Secret that signs access tokens (HS256). When unset, one is generated once and kept
    /// in `{data_dir}/jwt_secret`.
    #[arg(long, env = "NATSMUD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// How long an access token stays valid, in seconds.
    #[arg(long, env = "NATSMUD_TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,

    /// Directory holding world.json and zones/*.json; the built-in world when unset.
    #[arg(long = "world", env = "NATSMUD_WORLD_DIR")]
    pub world_dir: Option<PathBuf>,

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

    /// Password hashes computed at once; more wait their turn off the async workers.
    #[arg(long, env = "NATSMUD_HASHING_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub hashing_concurrency: u32,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `natsmud=debug`.
    #[arg(long, env = "NATSMUD_LOG", default_value = "info")]
    pub log: String,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "NATSMUD_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

fn parse_prefix(value: &str) -> Result<SubjectPrefix, String> {
    SubjectPrefix::parse(value).map_err(|e| e.to_string())
}

impl Config {
    /// The configuration a test or embedding program starts from: every default, with the
    /// given NATS URL and data directory.
    pub fn for_data_dir(nats_url: &str, data_dir: PathBuf) -> Self {
        let mut config = Self::parse_from(["natsmud"]);
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

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs)
    }
}
