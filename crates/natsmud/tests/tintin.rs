//! A real MUD client: TinTin++ (Debian's `tintin++`) connects over telnet, creates a
//! character, looks, talks with a WebSocket player and quits; the test reads what it
//! printed. TinTin++ wants a terminal, so it runs under `script` (util-linux), which gives
//! it one. Skipped, saying so, where TinTin++ or `script` is missing (scripts/test installs
//! TinTin++ where it can).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::TestApp;
use natsmud_protocol::EventType;

/// How long the client session may take in all (it ends itself in a few seconds).
const SESSION_LIMIT: Duration = Duration::from_secs(60);

fn tintin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATSMUD_TINTIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    ["/usr/games/tt++", "/usr/bin/tt++", "/usr/local/bin/tt++"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

fn script_available() -> bool {
    std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The terminal's text without its escape sequences and carriage returns.
fn plain(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters, then one final letter (or ~).
                Some('[') => {
                    while let Some(&next) = chars.peek() {
                        chars.next();
                        if next.is_ascii_alphabetic() || next == '~' {
                            break;
                        }
                    }
                }
                // OSC (a window title): up to BEL.
                Some(']') => {
                    for next in chars.by_ref() {
                        if next == '\u{7}' {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tintin_plays_beside_a_websocket_player() {
    let Some(tintin) = tintin() else {
        println!("SKIPPED: TinTin++ (tt++) is not installed; scripts/test installs tintin++");
        return;
    };
    if !script_available() {
        println!("SKIPPED: `script` (util-linux) is not installed; TinTin++ needs a terminal");
        return;
    }
    let app = TestApp::spawn().await;
    let telnet = app.telnet_addr.expect("the harness serves telnet");
    let mut bob = app.join("Bob").await;

    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("play.tin");
    let typescript = dir.path().join("typescript");
    // The login lines go out on a timer (the server reads them in order, whenever they
    // come); the rest follows what the server prints, with a timer to end it regardless.
    std::fs::write(
        &commands,
        format!(
            "#config {{verbose}} {{off}}\n\
             #action {{Welcome, Tinker.}} {{look;say hello from tintin}}\n\
             #action {{Bob says: hi tinker}} {{quit}}\n\
             #event {{SESSION DISCONNECTED}} {{#end}}\n\
             #session natsmud {} {}\n\
             #delay {{1}} {{create}}\n\
             #delay {{2}} {{Tinker}}\n\
             #delay {{3}} {{sesame-street-42}}\n\
             #delay {{4}} {{sesame-street-42}}\n\
             #delay {{45}} {{#end}}\n",
            telnet.ip(),
            telnet.port()
        ),
    )
    .unwrap();
    let mut client = tokio::process::Command::new("script")
        .arg("-qec")
        .arg(format!(
            "stty rows 40 cols 120; {} -G {}",
            tintin.display(),
            commands.display()
        ))
        .arg(&typescript)
        // Kept open: `script` ends when its input does.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("script runs");

    let arrival = bob
        .until_within(EventType::PlayerEnteredGame, SESSION_LIMIT)
        .await;
    assert_eq!(arrival.data["player_name"], "Tinker", "{arrival:?}");
    let heard = bob
        .until_within(EventType::ChatMessage, SESSION_LIMIT)
        .await;
    assert_eq!(heard.data["message"], "Tinker says: hello from tintin");
    bob.command("say hi tinker").await;
    let left = bob
        .until_within(EventType::PlayerLeftGame, SESSION_LIMIT)
        .await;
    assert_eq!(left.data["player_name"], "Tinker", "{left:?}");

    let status = tokio::time::timeout(SESSION_LIMIT, client.wait())
        .await
        .expect("TinTin++ ends its session")
        .unwrap();
    let printed = plain(&std::fs::read_to_string(&typescript).unwrap_or_default());
    println!("{printed}");
    assert!(status.success(), "script/TinTin++ exited with {status}");
    for expected in [
        "CONNECTED TO",
        "Welcome to the world, Tinker.",
        "Crossing Square",
        "Exits:",
        "Here: Bob, Tinker",
        "You say: hello from tintin",
        "Bob says: hi tinker",
    ] {
        assert!(
            printed.contains(expected),
            "TinTin++ did not print {expected:?}:\n{printed}"
        );
    }
}
