//! Any subject NATS can hand the receiving node, and any envelope payload on it: the
//! subject parser and the checks every event passes before it reaches a socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsmud_protocol::envelope::leading_sequence;
use natsmud_protocol::ingress::check;
use natsmud_protocol::{Subject, SubjectPrefix};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Subject::parse(&SubjectPrefix::default(), text);
    }
    for subject in [
        Subject::PlayerEntered("r1"),
        Subject::Say("r1"),
        Subject::Local("z1"),
        Subject::Whisper("p1"),
        Subject::Global,
        Subject::System,
        Subject::GameTick,
    ] {
        let _ = check(subject, data, 8192);
    }
    let _ = leading_sequence(data);
});
