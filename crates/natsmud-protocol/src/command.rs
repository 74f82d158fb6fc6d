//! Game commands, parsed once from what a player typed into a typed [`Command`].

use std::fmt;

use crate::error::{ErrorCode, ProtocolError};

/// Longest chat text accepted, in characters, after trimming.
pub const MAX_MESSAGE_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    North,
    South,
    East,
    West,
    Up,
    Down,
    Northeast,
    Northwest,
    Southeast,
    Southwest,
}

impl Direction {
    pub const ALL: [Direction; 10] = [
        Self::North,
        Self::South,
        Self::East,
        Self::West,
        Self::Up,
        Self::Down,
        Self::Northeast,
        Self::Northwest,
        Self::Southeast,
        Self::Southwest,
    ];

    /// The long name, which is also the key of a room's `exits`.
    pub fn name(self) -> &'static str {
        match self {
            Self::North => "north",
            Self::South => "south",
            Self::East => "east",
            Self::West => "west",
            Self::Up => "up",
            Self::Down => "down",
            Self::Northeast => "northeast",
            Self::Northwest => "northwest",
            Self::Southeast => "southeast",
            Self::Southwest => "southwest",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::North => "n",
            Self::South => "s",
            Self::East => "e",
            Self::West => "w",
            Self::Up => "u",
            Self::Down => "d",
            Self::Northeast => "ne",
            Self::Northwest => "nw",
            Self::Southeast => "se",
            Self::Southwest => "sw",
        }
    }

    pub fn opposite(self) -> Self {
        match self {
            Self::North => Self::South,
            Self::South => Self::North,
            Self::East => Self::West,
            Self::West => Self::East,
            Self::Up => Self::Down,
            Self::Down => Self::Up,
            Self::Northeast => Self::Southwest,
            Self::Southwest => Self::Northeast,
            Self::Northwest => Self::Southeast,
            Self::Southeast => Self::Northwest,
        }
    }

    /// Accepts the long and the short name, in any case.
    pub fn parse(word: &str) -> Option<Self> {
        let word = word.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| d.name() == word || d.short() == word)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Look,
    Go(Direction),
    Say(String),
    Emote(String),
    Pose(String),
    Whisper { target: String, message: String },
    Reply(String),
    Local(String),
    Global(String),
    Who,
    Help,
    Quit,
}

/// One line per command, shown by `help`.
pub const HELP_TEXT: &str = "\
Commands:
  look (l)                      describe the room you are in
  go <direction>                walk: north south east west up down northeast northwest southeast southwest
  n s e w u d ne nw se sw       the same, shorter
  say <message>                 speak to the room
  emote <action> (me)           act: 'emote waves' shows 'Alice waves.'
  pose <text>                   show free text after your name to the room
  whisper <player> <message>    speak privately to one player (tell)
  reply <message> (r)           whisper back to whoever whispered to you last
  local <message>               speak to everyone in this part of town
  global <message>              speak to everyone in the world
  who                           list the players online
  help                          this list
  quit                          leave the game";

impl Command {
    /// Parses a whole line as typed: the first word is the command, the rest its argument.
    pub fn parse_line(line: &str) -> Result<Self, ProtocolError> {
        let line = line.trim();
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (line, ""),
        };
        if word.is_empty() {
            return Err(ProtocolError::new(
                ErrorCode::MissingArgument,
                "Type a command, or 'help'.",
            ));
        }
        let verb = word.to_ascii_lowercase();
        if let Some(direction) = Direction::parse(&verb) {
            return Ok(Self::Go(direction));
        }
        Ok(match verb.as_str() {
            "look" | "l" => Self::Look,
            "go" | "walk" | "move" => {
                let Some(word) = rest.split_whitespace().next() else {
                    return Err(missing("Go where? Try 'go north'."));
                };
                match Direction::parse(word) {
                    Some(direction) => Self::Go(direction),
                    None => {
                        return Err(ProtocolError::new(
                            ErrorCode::InvalidDirection,
                            format!("'{}' is not a direction.", preview(word)),
                        ));
                    }
                }
            }
            "say" => Self::Say(text(rest, "Say what?")?),
            "emote" | "me" => Self::Emote(text(rest, "Emote what?")?),
            "pose" => Self::Pose(text(rest, "Pose how?")?),
            "whisper" | "tell" => {
                let (target, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if target.is_empty() {
                    return Err(missing("Whisper to whom? Try 'whisper Bob hello'."));
                }
                Self::Whisper {
                    target: target.to_owned(),
                    message: text(message, "Whisper what?")?,
                }
            }
            "reply" | "r" => Self::Reply(text(rest, "Reply what?")?),
            "local" => Self::Local(text(rest, "Say what to the area?")?),
            "global" => Self::Global(text(rest, "Say what to everyone?")?),
            "who" => Self::Who,
            "help" | "?" => Self::Help,
            "quit" | "logout" => Self::Quit,
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "Unknown command '{}'. Type 'help' for the list.",
                        preview(word)
                    ),
                ));
            }
        })
    }

    /// Parses the `game_command` form: with no `args`, `command` is a whole line.
    pub fn parse_parts(command: &str, args: &[String]) -> Result<Self, ProtocolError> {
        if args.is_empty() {
            return Self::parse_line(command);
        }
        let mut line =
            String::with_capacity(command.len() + args.iter().map(|a| a.len() + 1).sum::<usize>());
        line.push_str(command.trim());
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        Self::parse_line(&line)
    }
}

fn missing(message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::MissingArgument, message)
}

/// A short, printable excerpt of user input for an error message.
fn preview(word: &str) -> String {
    clean_chars(word).chars().take(30).collect()
}

/// Combining marks kept on one character. Enough for any real script (Vietnamese stacks
/// two, some Indic clusters three or four); "Zalgo" text stacks hundreds, which smears
/// over the lines around it in every client.
pub const MAX_COMBINING_MARKS: usize = 4;

/// Bidirectional formatting characters. A right-to-left override inside chat makes the
/// rest of the line (the client's own text after it included) read backwards, which can
/// disguise who said what; letters of right-to-left scripts are unaffected.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` without control characters and bidi controls, with at most
/// [`MAX_COMBINING_MARKS`] combining marks on any one character.
fn clean_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut marks = 0;
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            continue;
        }
        if unicode_normalization::char::is_combining_mark(c) {
            marks += 1;
            if marks > MAX_COMBINING_MARKS {
                continue;
            }
        } else {
            marks = 0;
        }
        out.push(c);
    }
    out
}

/// Chat text as it will be shown: control characters and bidi controls removed, stacked
/// combining marks capped, trimmed, and bounded.
pub fn clean_text(raw: &str) -> Result<String, ProtocolError> {
    let cleaned = clean_chars(raw);
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ProtocolError::new(
            ErrorCode::MessageTooLong,
            format!("Messages are limited to {MAX_MESSAGE_CHARS} characters."),
        ));
    }
    Ok(trimmed.to_owned())
}

fn text(raw: &str, if_empty: &str) -> Result<String, ProtocolError> {
    let text = clean_text(raw)?;
    if text.is_empty() {
        return Err(missing(if_empty));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<Command, ErrorCode> {
        Command::parse_line(line).map_err(|e| e.code)
    }

    #[test]
    fn parses_the_command_set() {
        assert_eq!(parse("look"), Ok(Command::Look));
        assert_eq!(parse("L"), Ok(Command::Look));
        assert_eq!(parse("go north"), Ok(Command::Go(Direction::North)));
        assert_eq!(parse("go NE"), Ok(Command::Go(Direction::Northeast)));
        assert_eq!(parse("sw"), Ok(Command::Go(Direction::Southwest)));
        assert_eq!(parse("down"), Ok(Command::Go(Direction::Down)));
        assert_eq!(
            parse("say  hello all "),
            Ok(Command::Say("hello all".into()))
        );
        assert_eq!(parse("me waves"), Ok(Command::Emote("waves".into())));
        assert_eq!(
            parse("whisper Bob psst, over here"),
            Ok(Command::Whisper {
                target: "Bob".into(),
                message: "psst, over here".into()
            })
        );
        assert_eq!(parse("r ok"), Ok(Command::Reply("ok".into())));
        assert_eq!(parse("who"), Ok(Command::Who));
        assert_eq!(parse("quit"), Ok(Command::Quit));
    }

    #[test]
    fn reports_clear_errors() {
        assert_eq!(parse("dance"), Err(ErrorCode::UnknownCommand));
        assert_eq!(parse("go"), Err(ErrorCode::MissingArgument));
        assert_eq!(parse("go sideways"), Err(ErrorCode::InvalidDirection));
        assert_eq!(parse("say   "), Err(ErrorCode::MissingArgument));
        assert_eq!(parse("whisper Bob"), Err(ErrorCode::MissingArgument));
        assert_eq!(parse(""), Err(ErrorCode::MissingArgument));
        assert_eq!(
            parse(&format!("say {}", "x".repeat(501))),
            Err(ErrorCode::MessageTooLong)
        );
    }

    #[test]
    fn args_form_equals_line_form() {
        let args = vec!["north".to_owned()];
        assert_eq!(
            Command::parse_parts("go", &args),
            Ok(Command::Go(Direction::North))
        );
        assert_eq!(
            Command::parse_parts("say hi", &[]),
            Ok(Command::Say("hi".into()))
        );
    }

    #[test]
    fn strips_control_characters() {
        assert_eq!(
            parse("say a\u{7}b\u{1b}[31m"),
            Ok(Command::Say("ab[31m".into()))
        );
    }

    #[test]
    fn strips_bidi_controls_and_caps_stacked_marks() {
        assert_eq!(
            parse("say evil\u{202E}txt.exe\u{2066}x\u{2069}"),
            Ok(Command::Say("eviltxt.exex".into()))
        );
        let zalgo = format!("say a{}b", "\u{0301}".repeat(490));
        let Ok(Command::Say(text)) = parse(&zalgo) else {
            panic!("zalgo text is still a say");
        };
        assert_eq!(
            text,
            format!("a{}b", "\u{0301}".repeat(MAX_COMBINING_MARKS))
        );
        // Real accents and right-to-left letters are untouched.
        assert_eq!(
            parse("say Tiếng Việt שלום"),
            Ok(Command::Say("Tiếng Việt שלום".into()))
        );
    }

    proptest! {
        #[test]
        fn never_panics(line in "\\PC{0,200}") {
            let _ = Command::parse_line(&line);
        }
    }
}
