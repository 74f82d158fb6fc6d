//! Telnet for MUD clients (Mudlet, TinTin++, MUSHclient, plain `telnet`): one more
//! transport over the same connection life as the WebSocket and SSE
//! ([`routes::session`](crate::routes::session)).
//!
//! A connection is first a login on the line ([`login`]): a banner, a name and a password
//! (echo off), or `create`; the same accounts, rules and per-address rate limit as the HTTP
//! API. Then it is a player ([`play`]): each line is a game command, parsed as a
//! `game_command` is, and each frame the player receives is rendered as text and GMCP
//! ([`render`]). libmudtelnet parses the telnet protocol ([`codec`]).
//!
//! Sockets share the HTTP listener's caps (per address, in all) and its write deadline.
//! Shutdown stops accepting; a connection still logging in is told and closed, a player's
//! is closed by the connection manager as every other transport's is.

pub mod codec;
mod login;
mod play;
pub mod render;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::net::{Acceptor, Admission, Refusal, Socket};
use crate::startup::AppState;
use codec::{Fault, Input, TelnetInput};
use render::Client;

/// Longest a connection may take to log in, all attempts together.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// Accepts telnet connections on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: AppState,
    admission: Admission,
    stop: CancellationToken,
) {
    let mut acceptor = Acceptor::new(
        listener,
        admission,
        app.config.write_timeout(),
        refusal_line,
    );
    while let Some((socket, peer)) = acceptor.next(&stop).await {
        let app = app.clone();
        let stop = stop.clone();
        let span = tracing::info_span!("telnet", %peer);
        tokio::spawn(connection(app, socket, peer, stop).instrument(span));
    }
}

fn refusal_line(refusal: Refusal) -> Vec<u8> {
    format!("Sorry: {}.\r\n", refusal.message()).into_bytes()
}

/// One connection, from the banner to the close.
async fn connection(app: AppState, socket: Socket, peer: SocketAddr, stop: CancellationToken) {
    // Shutdown waits for this connection to say goodbye, as for the other transports.
    let _alive = app.connections.token();
    let (read, write) = tokio::io::split(socket);
    let max_line = app.config.max_frame_bytes as usize;
    let mut wire = Wire {
        read,
        write,
        telnet: TelnetInput::new(max_line),
        client: Client::default(),
        buffer: vec![0; READ_CHUNK].into_boxed_slice(),
    };
    let offer = wire.telnet.offer();
    if wire.send(&offer).await.is_err() {
        return;
    }
    let login = tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Ended::Stopped),
        // Boxed: a login's future (password hashing, database) would otherwise stay part
        // of the connection task's state for as long as the player plays.
        login = tokio::time::timeout(LOGIN_TIMEOUT, Box::pin(login::login(&app, &mut wire, peer))) => {
            login.unwrap_or(Err(Ended::TimedOut))
        }
    };
    match login {
        Ok(account) => {
            let span = tracing::info_span!("connection", player = %account.name);
            play::play(app, wire, account).instrument(span).await;
        }
        Err(ended) => {
            let farewell = match ended {
                Ended::Stopped => "The server is shutting down; come back soon.",
                Ended::TimedOut => "You took too long to log in; goodbye.",
                Ended::TooLong => "That line is too long; goodbye.",
                Ended::Said | Ended::Gone => "",
            };
            if !farewell.is_empty() {
                wire.say(None, farewell).await;
            }
            wire.close().await;
        }
    }
}

/// Why a connection ended before its player got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client went away (or its socket failed).
    Gone,
    /// It sent a line longer than the limit.
    TooLong,
    TimedOut,
    /// The server is shutting down.
    Stopped,
    /// The client was told why already.
    Said,
}

/// The socket with its telnet state, before the connection splits into a reader and a
/// writer task.
pub(crate) struct Wire {
    read: ReadHalf<Socket>,
    write: WriteHalf<Socket>,
    telnet: TelnetInput,
    client: Client,
    buffer: Box<[u8]>,
}

impl Wire {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        self.write.write_all(bytes).await.map_err(|_| Ended::Gone)
    }

    /// Writes `text`'s lines, wrapped to the client's width once it told us (in `colour`,
    /// when the client has colour on); errors are left to the next read to find.
    async fn say(&mut self, colour: Option<&str>, text: &str) {
        let mut out = Vec::new();
        let width = self.client.width.map(usize::from);
        for line in text.lines().flat_map(|line| render::wrap(line, width)) {
            match colour {
                Some(code) if self.client.colour => {
                    out.extend_from_slice(format!("\x1b[{code}m{line}\x1b[0m").as_bytes());
                }
                _ => out.extend_from_slice(line.as_bytes()),
            }
            out.extend_from_slice(b"\r\n");
        }
        let _ = self.send(&out).await;
    }

    /// Shows `text` as a prompt: no line end, then IAC GA so a client knows it is one.
    async fn prompt(&mut self, text: &str) -> Result<(), Ended> {
        let mut out = text.as_bytes().to_vec();
        out.extend_from_slice(&codec::GO_AHEAD);
        self.send(&out).await
    }

    /// The next line the client types, answering its negotiation meanwhile.
    async fn line(&mut self, app: &AppState) -> Result<String, Ended> {
        loop {
            let mut answer = Vec::new();
            while let Some(input) = self.telnet.next_input() {
                match input {
                    Input::Line(line) => {
                        if !answer.is_empty() {
                            self.send(&answer).await?;
                        }
                        return Ok(line);
                    }
                    other => self.client.absorb(app, other, &mut answer),
                }
            }
            if !answer.is_empty() {
                self.send(&answer).await?;
            }
            let read = self
                .read
                .read(&mut self.buffer)
                .await
                .map_err(|_| Ended::Gone)?;
            if read == 0 {
                return Err(Ended::Gone);
            }
            self.telnet
                .feed(&self.buffer[..read])
                .map_err(|fault| match fault {
                    Fault::TooLong => Ended::TooLong,
                })?;
        }
    }

    /// Closes the connection after what was written: unread input is read away first
    /// (closing a socket with unread input resets it, which can lose the last words).
    async fn close(mut self) {
        let _ = self.write.shutdown().await;
        let drain = async {
            while let Ok(read) = self.read.read(&mut self.buffer).await {
                if read == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}
