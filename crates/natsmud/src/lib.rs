//! natsmud: a multiplayer text-game server whose real-time events travel through NATS.
//!
//! How a command becomes what other players see:
//!
//! ```text
//!  socket ─► routes::ws (parse: natsmud_protocol) ─► game::Session ─► realtime::EventPublisher ─► NATS
//!  NATS ─► realtime::nats_handler (route, number) ─► realtime::ConnectionManager ─► writer task ─► socket
//! ```
//!
//! - [`config`]: settings from a TOML file, `NATSMUD_…` variables and flags.
//! - [`startup`]: [`startup::run`] takes a bound listener and a shutdown future (tests bind
//!   port 0); it wires everything below together and drains on shutdown.
//! - [`world`]: rooms, zones and sub-zones from JSON, validated at load.
//! - [`db`] and [`auth`]: accounts and rooms in SQLite or PostgreSQL, argon2id passwords,
//!   JWT access tokens.
//! - [`net`]: the accept loop: socket caps, timeouts and the write deadline every
//!   connection (HTTP, WebSocket, SSE) inherits.
//! - [`routes`]: HTTP (`/api/auth/*`, `/health`, `/metrics`, the web client), the WebSocket
//!   (`/api/ws`) and SSE (`/api/events` + `POST /api/command`), sharing one connection life
//!   ([`routes::session`]).
//! - [`telnet`]: the telnet listener for MUD clients: login on the line, each line a game
//!   command, each frame rendered as text (and GMCP); one more transport over the same
//!   connection life.
//! - [`services`]: the game tick.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`game`]: what each command does. Other players only ever learn of it through NATS.
//! - [`realtime`]: the event path: publisher, NATS handler and connection manager (this
//!   node's connections: sockets, queues, which room each is in, fan-out).
//! - [`presence`]: the world's roster (who is online on any node, and where) in a NATS KV
//!   bucket, read through a local model; node heartbeats and the tick leader's lease.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod game;
pub mod limits;
pub mod nats;
pub mod net;
pub mod presence;
pub mod realtime;
pub mod routes;
pub mod services;
pub mod startup;
pub mod telemetry;
pub mod telnet;
pub mod world;

pub use config::Config;
