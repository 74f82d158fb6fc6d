//! natsmud's wire protocol, shared by the server, the load generator and the tests so the
//! three can never drift apart.
//!
//! - [`ids`]: validated identifiers (`RoomId`, `PlayerId`, `PlayerName`, …). Anything that
//!   ends up inside a NATS subject is one of these, so no id can break a subject.
//! - [`subject`]: the one place a NATS subject is built ([`Subject::render`]) and read back
//!   ([`Subject::parse`]). Publisher and subscriber both go through it.
//! - [`envelope`]: the server → client frame and the payload of each event type.
//! - [`client`]: client → server messages, parsed once at the edge into typed values.
//! - [`command`]: the game commands a player can type.
//! - [`ingress`]: what a receiving node accepts from NATS, checked against the subject.
//! - [`position`]: where an event stands in the world's event stream, for resuming.

pub mod client;
pub mod command;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod ingress;
pub mod position;
pub mod subject;

pub use client::{ClientMessage, parse_client_message};
pub use command::{Command, Direction};
pub use envelope::{Envelope, EventType, ServerFrame};
pub use error::{ErrorCode, ProtocolError};
pub use ids::{PlayerId, PlayerName, RoomId, SubZoneId, ZoneId};
pub use position::Position;
pub use subject::{Interest, ORDER_HEADER, Subject, SubjectPrefix, parse_order};
