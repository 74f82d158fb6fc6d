//! A logged-in telnet player: attached like a WebSocket or SSE one (`routes::session`),
//! with two tasks. The reader turns lines into game commands (and a few settings of its
//! own: `colour`, `ticks`); the writer owns the socket's sending half, renders each queued
//! frame (`render`), and ends every burst of output with a prompt.

use std::sync::Arc;
use std::time::Duration;

use natsmud_protocol::{ClientMessage, Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::codec::{self, Fault, Input, TelnetInput};
use super::render::View;
use super::{Ended, Wire};
use crate::db::Account;
use crate::error::ApiError;
use crate::limits::CommandLimiter;
use crate::realtime::connection::{Kick, Outbound};
use crate::realtime::connection_manager::{CloseReason, ConnectionHandle, Queued, Transport};
use crate::realtime::mailbox;
use crate::routes::session::{self, Admission, Attached};
use crate::routes::ws::{GATE_WAIT, has_room_for};
use crate::startup::AppState;
use crate::telemetry;

/// Bound on how long a closing connection may spend writing its last lines.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the reader may have waiting for the writer (negotiation answers, settings); a
/// client that fills it without reading is a slow consumer.
const CONTROL_QUEUE: usize = 256;
/// Output gathered before one write: a burst costs one write call.
const WRITE_BATCH_BYTES: usize = 32 * 1024;
const PROMPT: &str = "> ";

/// What the reader tells the writer, in order with what it reads.
#[derive(Debug)]
enum Control {
    /// Negotiation from the client, for the writer's view of it.
    Client(Input),
    /// The player typed a line: the cursor is on a fresh line.
    Typed,
    /// Text from the telnet layer itself (answers to `colour` and `ticks`).
    Text(String),
    Colour(bool),
    Ticks(bool),
    /// Show the prompt again (an empty line was typed).
    Prompt,
}

pub(super) async fn play(app: AppState, mut wire: Wire, account: Account) {
    // The HTTP API's checks for a connection: room on this node, and not reconnecting
    // too often.
    let admitted = has_room_for(&app, account.id.as_str()).and_then(|()| {
        app.player_limits
            .check_connect(&account.id)
            .map_err(ApiError::RateLimited)
    });
    if let Err(error) = admitted {
        wire.say(Some("31"), &format!("Sorry: {error}.")).await;
        wire.close().await;
        return;
    }
    let attached = match session::attach(&app, &account, Transport::Telnet, None).await {
        Ok(attached) => attached,
        Err(error) => {
            let max_line = app.config.max_frame_bytes as usize;
            if let Some(line) = farewell(session::refusal(&error), max_line) {
                wire.say(Some("31"), &line).await;
            }
            wire.close().await;
            return;
        }
    };
    let Attached {
        conn,
        outbound,
        mut commands,
        mut limiter,
    } = attached;
    let Wire {
        read,
        write,
        telnet,
        client,
        buffer,
    } = wire;
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let reader_done = CancellationToken::new();
    let max_line = app.config.max_frame_bytes as usize;
    let writer = AbortOnDropHandle::new(tokio::spawn(
        write_loop(Writer {
            app: app.clone(),
            write,
            outbound,
            control: control_rx,
            kick: conn.kick.clone(),
            reader_done: reader_done.clone(),
            view: View::new(client),
            max_line,
        })
        .in_current_span(),
    ));
    let mut reader = Reader {
        app: &app,
        conn: &conn,
        read,
        telnet,
        buffer,
        control: control_tx,
        limiter: &mut limiter,
    };
    reader.run(&mut commands).await;
    let Reader {
        mut read,
        mut buffer,
        control,
        ..
    } = reader;
    reader_done.cancel();
    // Out of the room at once, as on the WebSocket: the writer may take a while.
    session::detach(&app, &conn).await;
    // Read (and drop) what the client still sends while the writer says goodbye: closing
    // with unread input would reset the connection and could lose the goodbye.
    let discard = async {
        while let Ok(read) = read.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    };
    let (written, _) = tokio::join!(
        tokio::time::timeout(CLOSE_WRITE_TIMEOUT * 2, writer),
        tokio::time::timeout(CLOSE_WRITE_TIMEOUT, discard),
    );
    drop(control);
    if written.is_err() {
        tracing::warn!("telnet writer did not finish in time; aborted");
    }
}

struct Reader<'a> {
    app: &'a AppState,
    conn: &'a ConnectionHandle,
    read: ReadHalf<crate::net::Socket>,
    telnet: TelnetInput,
    buffer: Box<[u8]>,
    control: mpsc::Sender<Control>,
    limiter: &'a mut CommandLimiter,
}

impl Reader<'_> {
    /// Reads and runs the player's lines (and commands submitted by `POST /api/command`)
    /// until the connection closes.
    async fn run(&mut self, commands: &mut mailbox::Receiver<ClientMessage>) {
        let kick = self.conn.kick.clone();
        let idle = self.app.config.telnet_idle();
        let closed = kick.closed();
        tokio::pin!(closed);
        loop {
            while let Some(input) = self.telnet.next_input() {
                self.input(input).await;
                if kick.is_closed() {
                    return;
                }
            }
            let read = tokio::select! {
                biased;
                _ = &mut closed => return,
                submitted = commands.recv() => {
                    if let Some(message) = submitted {
                        session::handle(self.app, self.conn, self.limiter, Admission::Admitted, Ok(message)).await;
                    }
                    continue;
                }
                read = read_within(&mut self.read, &mut self.buffer, idle) => read,
            };
            match read {
                Ok(0) | Err(Ended::Gone) => return,
                Ok(read) => {
                    if let Err(Fault::TooLong) = self.telnet.feed(&self.buffer[..read]) {
                        kick.close(CloseReason::TOO_BIG);
                        return;
                    }
                }
                Err(Ended::TimedOut) => {
                    kick.close(CloseReason::IDLE);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    async fn input(&mut self, input: Input) {
        let Input::Line(line) = input else {
            self.tell(Control::Client(input));
            return;
        };
        self.tell(Control::Typed);
        let line = line.trim();
        if line.is_empty() {
            self.tell(Control::Prompt);
            return;
        }
        if let Some(setting) = setting(line) {
            self.tell(setting);
            return;
        }
        let message = Command::parse_line(line).map(ClientMessage::Command);
        session::handle(self.app, self.conn, self.limiter, Admission::Check, message).await;
    }

    /// Hands `control` to the writer without waiting: a writer that cannot keep up with
    /// this connection's own negotiation is as stuck as a full queue.
    fn tell(&self, control: Control) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.control.try_send(control) {
            crate::realtime::connection::slow_consumer(&self.conn.kick);
        }
    }
}

/// The telnet layer's own commands: `colour on|off` (or `color`), `ticks on|off`.
fn setting(line: &str) -> Option<Control> {
    let mut words = line.split_whitespace();
    let verb = words.next()?.to_ascii_lowercase();
    let value = words.next().map(str::to_ascii_lowercase);
    if words.next().is_some() {
        return None;
    }
    let on = match value.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => {
            return matches!(verb.as_str(), "colour" | "color" | "ticks")
                .then(|| Control::Text(format!("Use '{verb} on' or '{verb} off'.")));
        }
    };
    match verb.as_str() {
        "colour" | "color" => Some(Control::Colour(on)),
        "ticks" => Some(Control::Ticks(on)),
        _ => None,
    }
}

/// One read, or `TimedOut` after `idle` without input.
async fn read_within(
    read: &mut ReadHalf<crate::net::Socket>,
    buffer: &mut [u8],
    idle: Option<Duration>,
) -> Result<usize, Ended> {
    let reading = async { read.read(buffer).await.map_err(|_| Ended::Gone) };
    match idle {
        Some(idle) => tokio::time::timeout(idle, reading)
            .await
            .unwrap_or(Err(Ended::TimedOut)),
        None => reading.await,
    }
}

/// What the writer task owns.
struct Writer {
    app: AppState,
    write: WriteHalf<crate::net::Socket>,
    outbound: Outbound,
    control: mpsc::Receiver<Control>,
    kick: Arc<Kick>,
    /// Cancelled once the reader has run its last command (and queued its last reply).
    reader_done: CancellationToken,
    view: View,
    max_line: usize,
}

/// Output being gathered for one write.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Text was printed since the last prompt: the batch ends with one.
    printed: bool,
    /// The cursor is after a prompt: text starts on a new line.
    at_prompt: bool,
}

impl Batch {
    /// Starts text on its own line when the cursor is after a prompt.
    fn text_follows(&mut self) {
        if std::mem::take(&mut self.at_prompt) {
            self.bytes.extend_from_slice(b"\r\n");
        }
    }
}

impl Writer {
    /// Renders one queued frame; a mover's `room_update` waits for its room to be stored.
    async fn frame(&mut self, queued: Queued, batch: &mut Batch) {
        if let Some(gate) = &queued.gate {
            let _ = tokio::time::timeout(GATE_WAIT, gate.opened()).await;
        }
        let mut rendered = Vec::new();
        if self.view.frame(queued.frame.as_bytes(), &mut rendered) {
            batch.text_follows();
            batch.printed = true;
        }
        batch.bytes.extend_from_slice(&rendered);
        metrics::histogram!(telemetry::DELIVERY_SECONDS)
            .record(queued.since.elapsed().as_secs_f64());
    }

    fn apply(&mut self, control: Control, batch: &mut Batch) {
        let text = |batch: &mut Batch, line: &str| {
            batch.text_follows();
            batch.bytes.extend_from_slice(line.as_bytes());
            batch.bytes.extend_from_slice(b"\r\n");
            batch.printed = true;
        };
        match control {
            Control::Client(input) => {
                let gmcp_was = self.view.client.gmcp;
                self.view.client.absorb(&self.app, input, &mut batch.bytes);
                if self.view.client.gmcp && !gmcp_was {
                    self.view.gmcp_on(&mut batch.bytes);
                }
            }
            Control::Typed => batch.at_prompt = false,
            Control::Text(line) => text(batch, &line),
            Control::Colour(on) => {
                self.view.client.colour = on;
                text(
                    batch,
                    if on {
                        "Colour is on."
                    } else {
                        "Colour is off."
                    },
                );
            }
            Control::Ticks(on) => {
                self.view.client.ticks = on;
                text(
                    batch,
                    if on {
                        "Game ticks will be shown."
                    } else {
                        "Game ticks will not be shown."
                    },
                );
            }
            Control::Prompt => batch.printed = true,
        }
    }

    /// Writes the batch, with a prompt after text; `Err` when the socket failed (the
    /// connection is closed with the reason).
    async fn flush(&mut self, batch: &mut Batch) -> Result<(), ()> {
        if std::mem::take(&mut batch.printed) {
            batch.bytes.extend_from_slice(PROMPT.as_bytes());
            batch.bytes.extend_from_slice(&codec::GO_AHEAD);
            batch.at_prompt = true;
        }
        if batch.bytes.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut batch.bytes);
        let written = tokio::select! {
            biased;
            _ = self.kick.closed_without_drain() => return Err(()),
            written = self.write.write_all(&bytes) => written,
        };
        match written {
            Ok(()) => Ok(()),
            Err(error) => {
                // The socket's write deadline passed: the client stopped reading.
                if error.kind() == std::io::ErrorKind::TimedOut {
                    crate::realtime::connection::slow_consumer(&self.kick);
                } else {
                    self.kick.close(CloseReason::NORMAL);
                }
                Err(())
            }
        }
    }
}

/// Why the connection closes, as a line (none when the player quit or left).
fn farewell(reason: CloseReason, max_line: usize) -> Option<String> {
    let line = match reason {
        CloseReason::QUIT | CloseReason::NORMAL => return None,
        CloseReason::SHUTDOWN => "The server is shutting down; come back soon.".to_owned(),
        CloseReason::REPLACED => {
            "You have logged in from another connection; this one closes.".to_owned()
        }
        CloseReason::TOO_BIG => {
            format!("That line is longer than {max_line} bytes; closing the connection.")
        }
        CloseReason::IDLE => "You have been idle too long; closing the connection.".to_owned(),
        reason => format!("Closing the connection: {}.", reason.reason),
    };
    Some(line)
}

async fn write_loop(mut writer: Writer) {
    let kick = writer.kick.clone();
    let closed = kick.closed();
    tokio::pin!(closed);
    let abandoned = kick.closed_without_drain();
    tokio::pin!(abandoned);
    let mut batch = Batch::default();
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            _ = &mut abandoned => break,
            control = writer.control.recv(), if control_open => match control {
                Some(control) => writer.apply(control, &mut batch),
                None => control_open = false,
            },
            queued = writer.outbound.recv() => match queued {
                Some(queued) => writer.frame(queued, &mut batch).await,
                None => break,
            },
            _ = &mut closed => break,
        }
        // What else is ready goes out in the same write.
        while batch.bytes.len() < WRITE_BATCH_BYTES {
            if let Ok(control) = writer.control.try_recv() {
                writer.apply(control, &mut batch);
            } else if let Ok(queued) = writer.outbound.try_recv() {
                writer.frame(queued, &mut batch).await;
            } else {
                break;
            }
        }
        if writer.flush(&mut batch).await.is_err() {
            break;
        }
    }
    let reason = kick.reason();
    let farewell = async {
        if reason.drain {
            // Every command the reader accepted is answered before the goodbye.
            loop {
                tokio::select! {
                    biased;
                    queued = writer.outbound.recv() => match queued {
                        Some(queued) => writer.frame(queued, &mut batch).await,
                        None => break,
                    },
                    _ = writer.reader_done.cancelled() => break,
                }
            }
            while let Ok(queued) = writer.outbound.try_recv() {
                writer.frame(queued, &mut batch).await;
            }
        } else {
            batch.bytes.clear();
        }
        batch.printed = false;
        if let Some(line) = farewell(reason, writer.max_line) {
            batch.text_follows();
            batch.bytes.extend_from_slice(line.as_bytes());
            batch.bytes.extend_from_slice(b"\r\n");
        }
        // The write deadline of the socket bounds this as well.
        let bytes = std::mem::take(&mut batch.bytes);
        let _ = writer.write.write_all(&bytes).await;
        let _ = writer.write.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, farewell).await;
}
