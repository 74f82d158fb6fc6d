//! The telnet wire: libmudtelnet parses IAC sequences and keeps each option's state; this
//! module turns its events into what a session needs (typed lines, the client's window
//! width and terminal type, GMCP messages, requests for MSSP) and bounds what a client can
//! make the server hold.

use bytes::Bytes;
use libmudtelnet::Parser;
use libmudtelnet::compatibility::{CompatibilityEntry, CompatibilityTable};
use libmudtelnet::events::{TelnetEvents, TelnetSubnegotiation};
use libmudtelnet::telnet::op_command::{DO, GA, IAC, WILL};
use libmudtelnet::telnet::op_option::{ECHO, GMCP, MSSP, NAWS, TTYPE};

/// TTYPE's `IS` and `SEND` (RFC 1091).
const TTYPE_IS: u8 = 0;
const TTYPE_SEND: u8 = 1;
/// MSSP's variable and value markers.
const MSSP_VAR: u8 = 1;
const MSSP_VAL: u8 = 2;

/// What the client sent, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line the player typed, without its line end and control characters.
    Line(String),
    /// Bytes to write back now: the parser's answers to the client's negotiation.
    Send(Bytes),
    /// The client's window width in columns (NAWS).
    Width(u16),
    /// The client's terminal type (TTYPE), e.g. `MUDLET` or `XTERM`.
    TerminalType(String),
    /// The client agreed to GMCP.
    GmcpOn,
    /// A GMCP message: the package (`Core.Hello`) and its JSON, possibly empty.
    Gmcp { package: String, data: String },
    /// A crawler asked for MSSP.
    MsspWanted,
}

/// Why a connection cannot go on reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A line (or a subnegotiation) longer than the limit.
    TooLong,
}

/// One connection's telnet state: the parser and the line being typed.
pub struct TelnetInput {
    parser: Parser,
    line: Vec<u8>,
    max_line: usize,
    /// The previous byte ended a line with CR: a LF or NUL right after it is part of it.
    after_cr: bool,
    /// Bytes fed since the parser last gave anything back: it holds an unfinished
    /// subnegotiation in full, so this bounds what a client can make it keep.
    held: usize,
    /// Options we offered (WILL or DO) and whose answer the parser would acknowledge again.
    offered: [bool; 256],
    pending: std::collections::VecDeque<Input>,
}

impl TelnetInput {
    /// Lines (and subnegotiations) of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        let mut options = CompatibilityTable::new();
        options.support_local(GMCP);
        options.support_local(MSSP);
        // The client sends NAWS and TTYPE; libmudtelnet hands over a subnegotiation only
        // for an option enabled on our side, so those two are marked so from the start.
        for option in [NAWS, TTYPE] {
            options.set_option(option, CompatibilityEntry::new(true, true, true, false));
        }
        Self {
            parser: Parser::with_support(options),
            line: Vec::new(),
            max_line,
            after_cr: false,
            held: 0,
            offered: [false; 256],
            pending: std::collections::VecDeque::new(),
        }
    }

    /// What the server offers as a connection opens: GMCP and MSSP on our side, NAWS and
    /// TTYPE on the client's.
    pub fn offer(&mut self) -> Bytes {
        let mut out = Vec::with_capacity(12);
        for (command, option) in [(WILL, GMCP), (WILL, MSSP), (DO, NAWS), (DO, TTYPE)] {
            self.offered[usize::from(option)] = true;
            out.extend_from_slice(&self.parser.negotiate(command, option).to_bytes());
        }
        Bytes::from(out)
    }

    /// Asks the client to stop echoing what is typed (the server "will echo", and
    /// doesn't): for passwords.
    pub fn echo_off(&mut self) -> Bytes {
        self.parser.options.support_local(ECHO);
        self.parser
            ._will(ECHO)
            .map(TelnetEvents::to_bytes)
            .unwrap_or_default()
    }

    /// Gives echoing back to the client.
    pub fn echo_on(&mut self) -> Bytes {
        let sent = self
            .parser
            ._wont(ECHO)
            .map(TelnetEvents::to_bytes)
            .unwrap_or_default();
        // Off again, so that a client asking for our echo later is told no.
        let mut entry = self.parser.options.get_option(ECHO);
        entry.local = false;
        self.parser.options.set_option(ECHO, entry);
        sent
    }

    /// Feeds bytes read from the socket; what they complete comes out of [`next_input`](Self::next_input).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Fault> {
        let events = self.parser.receive(data);
        if events.is_empty() {
            self.held += data.len();
            if self.held > self.max_line {
                return Err(Fault::TooLong);
            }
            return Ok(());
        }
        self.held = 0;
        for event in events {
            match event {
                TelnetEvents::DataReceive(bytes) => self.text(&bytes)?,
                TelnetEvents::DataSend(bytes) => {
                    if !self.acknowledges_offer(&bytes) {
                        self.pending.push_back(Input::Send(bytes));
                    }
                }
                TelnetEvents::Negotiation(negotiation) => {
                    match (negotiation.command, negotiation.option) {
                        (DO, GMCP) => self.pending.push_back(Input::GmcpOn),
                        (DO, MSSP) => self.pending.push_back(Input::MsspWanted),
                        (WILL, TTYPE) => {
                            let ask =
                                TelnetSubnegotiation::new(TTYPE, Bytes::from_static(&[TTYPE_SEND]));
                            self.pending.push_back(Input::Send(ask.to_bytes()));
                        }
                        _ => {}
                    }
                }
                TelnetEvents::Subnegotiation(sub) => self.subnegotiation(sub.option, &sub.buffer),
                // Commands (NOP, GA, AYT, …) and data a client would decompress mean
                // nothing to the server.
                TelnetEvents::IAC(_) | TelnetEvents::DecompressImmediate(_) => {}
            }
        }
        Ok(())
    }

    /// The next complete input, in the order it arrived.
    pub fn next_input(&mut self) -> Option<Input> {
        self.pending.pop_front()
    }

    /// The parser answers a client's agreement to an option we offered with the same offer
    /// again; the client has it already.
    fn acknowledges_offer(&mut self, bytes: &[u8]) -> bool {
        match bytes {
            [IAC, command, option] if *command == WILL || *command == DO => {
                std::mem::take(&mut self.offered[usize::from(*option)])
            }
            _ => false,
        }
    }

    fn text(&mut self, bytes: &[u8]) -> Result<(), Fault> {
        for &byte in bytes {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                b'\n' | 0 if after_cr => {}
                b'\n' => self.end_line(),
                _ => {
                    if self.line.len() >= self.max_line {
                        return Err(Fault::TooLong);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self) {
        let raw = std::mem::take(&mut self.line);
        let line: String = String::from_utf8_lossy(&raw)
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        self.pending.push_back(Input::Line(line));
    }

    fn subnegotiation(&mut self, option: u8, raw: &Bytes) {
        // libmudtelnet leaves doubled IACs inside a subnegotiation as they came.
        let data = Parser::unescape_iac(raw.clone());
        match option {
            NAWS => {
                if let [w1, w2, _, _] = data[..] {
                    self.pending
                        .push_back(Input::Width(u16::from_be_bytes([w1, w2])));
                }
            }
            TTYPE => {
                if let [TTYPE_IS, name @ ..] = &data[..] {
                    let name: String = String::from_utf8_lossy(name)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(64)
                        .collect();
                    self.pending.push_back(Input::TerminalType(name));
                }
            }
            GMCP => {
                let text = String::from_utf8_lossy(&data);
                let (package, json) = text.split_once(' ').unwrap_or((&text, ""));
                self.pending.push_back(Input::Gmcp {
                    package: package.trim().to_owned(),
                    data: json.trim().to_owned(),
                });
            }
            _ => {}
        }
    }
}

/// The end of a prompt: a MUD client shows the line so far as the prompt when it reads it.
pub const GO_AHEAD: [u8; 2] = [IAC, GA];

/// A GMCP message as sent: `IAC SB GMCP <package> <json> IAC SE`.
pub fn gmcp(package: &str, json: &serde_json::Value) -> Bytes {
    let body = format!("{package} {json}");
    TelnetSubnegotiation::new(GMCP, Bytes::from(body)).to_bytes()
}

/// An MSSP reply (`IAC SB MSSP VAR name VAL value … IAC SE`) carrying `variables`.
pub fn mssp(variables: &[(&str, String)]) -> Bytes {
    let mut body = Vec::new();
    for (name, value) in variables {
        body.push(MSSP_VAR);
        body.extend(name.bytes().filter(|b| *b > MSSP_VAL));
        body.push(MSSP_VAL);
        body.extend(value.bytes().filter(|b| *b > MSSP_VAL));
    }
    TelnetSubnegotiation::new(MSSP, Bytes::from(body)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmudtelnet::telnet::op_command::{SB, SE, WONT};

    fn inputs(telnet: &mut TelnetInput) -> Vec<Input> {
        std::iter::from_fn(|| telnet.next_input()).collect()
    }

    #[test]
    fn lines_end_with_crlf_lf_cr_or_crnul_and_lose_control_characters() {
        let mut telnet = TelnetInput::new(100);
        let fed = telnet.feed(b"look\r\nsay hi\nn\r\0s\rx\x1b[31my\tz");
        assert_eq!(fed, Ok(()));
        assert_eq!(
            inputs(&mut telnet),
            vec![
                Input::Line("look".into()),
                Input::Line("say hi".into()),
                Input::Line("n".into()),
                Input::Line("s".into()),
            ]
        );
        assert_eq!(telnet.feed(b"\n"), Ok(()));
        assert_eq!(inputs(&mut telnet), vec![Input::Line("x[31my z".into())]);
    }

    #[test]
    fn a_line_split_across_reads_and_iac_split_across_reads_arrive_whole() {
        let mut telnet = TelnetInput::new(100);
        let _ = telnet.offer();
        assert_eq!(telnet.feed(b"lo"), Ok(()));
        assert_eq!(telnet.feed(&[b'o', b'k', IAC]), Ok(()));
        assert_eq!(telnet.feed(&[SB, NAWS, 0, 100]), Ok(()));
        assert_eq!(telnet.feed(&[0, 40, IAC, SE, b'\r', b'\n']), Ok(()));
        assert_eq!(
            inputs(&mut telnet),
            vec![Input::Width(100), Input::Line("look".into())]
        );
    }

    #[test]
    fn over_long_lines_and_endless_subnegotiations_are_faults() {
        let mut telnet = TelnetInput::new(16);
        assert_eq!(telnet.feed(&[b'x'; 17]), Err(Fault::TooLong));
        let mut telnet = TelnetInput::new(16);
        let _ = telnet.offer();
        assert_eq!(telnet.feed(&[IAC, DO, GMCP]), Ok(()));
        assert_eq!(telnet.feed(&[IAC, SB, GMCP]), Ok(()));
        let fed: Result<Vec<()>, Fault> = (0..4).map(|_| telnet.feed(b"Core.Hello ")).collect();
        assert_eq!(fed, Err(Fault::TooLong));
    }

    #[test]
    fn negotiation_is_answered_once_and_gmcp_mssp_ttype_surface() {
        let mut telnet = TelnetInput::new(1000);
        let offer = telnet.offer();
        assert_eq!(
            &offer[..],
            &[
                IAC, WILL, GMCP, IAC, WILL, MSSP, IAC, DO, NAWS, IAC, DO, TTYPE
            ]
        );
        let mut bytes = vec![IAC, DO, GMCP, IAC, DO, MSSP, IAC, WILL, TTYPE];
        bytes.extend([IAC, SB, TTYPE, TTYPE_IS]);
        bytes.extend(b"MUDLET");
        bytes.extend([IAC, SE, IAC, SB, GMCP]);
        bytes.extend(b"Core.Hello {\"client\":\"Mudlet\"}");
        bytes.extend([IAC, SE]);
        // Something nobody offered is refused.
        bytes.extend([IAC, DO, 99]);
        assert_eq!(telnet.feed(&bytes), Ok(()));
        assert_eq!(
            inputs(&mut telnet),
            vec![
                Input::GmcpOn,
                Input::MsspWanted,
                Input::Send(Bytes::from_static(&[IAC, SB, TTYPE, TTYPE_SEND, IAC, SE])),
                Input::TerminalType("MUDLET".into()),
                Input::Gmcp {
                    package: "Core.Hello".into(),
                    data: "{\"client\":\"Mudlet\"}".into()
                },
                Input::Send(Bytes::from_static(&[IAC, WONT, 99])),
            ]
        );
    }

    #[test]
    fn echo_is_offered_for_a_password_and_given_back() {
        let mut telnet = TelnetInput::new(100);
        assert_eq!(&telnet.echo_off()[..], &[IAC, WILL, ECHO]);
        assert_eq!(telnet.feed(&[IAC, DO, ECHO]), Ok(()));
        assert_eq!(inputs(&mut telnet), vec![]);
        assert_eq!(&telnet.echo_on()[..], &[IAC, WONT, ECHO]);
        // A client asking us to echo afterwards is told no.
        assert_eq!(telnet.feed(&[IAC, DO, ECHO]), Ok(()));
        assert_eq!(
            inputs(&mut telnet),
            vec![Input::Send(Bytes::from_static(&[IAC, WONT, ECHO]))]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut telnet = TelnetInput::new(64);
        let mut seed: u32 = 12345;
        for _ in 0..20_000 {
            let mut chunk = Vec::new();
            for _ in 0..(seed % 13) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let byte = (seed >> 16) as u8;
                // Plenty of IACs and commands, so that every parser state is reached.
                chunk.push(match byte % 4 {
                    0 => IAC,
                    1 => 240 + byte % 16,
                    _ => byte,
                });
            }
            if telnet.feed(&chunk).is_err() {
                telnet = TelnetInput::new(64);
            }
            while telnet.next_input().is_some() {}
        }
    }
}
