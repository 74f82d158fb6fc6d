//! The real-time path: game logic → [`EventPublisher`] → NATS → [`nats_handler`] →
//! [`ConnectionManager`] → sockets. Nothing another player sees takes any other path.

pub mod connection;
pub mod connection_manager;
pub mod event_publisher;
pub mod interest;
pub mod mailbox;
pub mod nats_handler;
pub mod resume;
pub mod stream;

pub use connection::{CloseReason, ConnectionHandle, Frame, Kick, Outbound, Queued, Transport};
pub use connection_manager::ConnectionManager;
pub use event_publisher::{EventPublisher, PublishError};
pub use interest::{Interests, SubscriptionMode, Wanted};
pub use stream::EventStream;
