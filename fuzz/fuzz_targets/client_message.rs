//! Any bytes a client can send, through the client-message and command parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsmud_protocol::{Command, parse_client_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_client_message(text);
        let _ = Command::parse_line(text);
    }
});
