//! Any bytes a telnet client can send, split into reads at any points, through the telnet
//! input path (IAC parsing, negotiation, subnegotiations, line assembly and limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsmud::telnet::codec::{Input, TelnetInput};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the rest is cut into reads, so that sequences split
    // across reads (a subnegotiation, a CR LF, an IAC IAC) are tried too.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 17) + 1;
    let mut input = TelnetInput::new(256);
    let _ = input.offer();
    for chunk in rest.chunks(step) {
        if input.feed(chunk).is_err() {
            return;
        }
        while let Some(next) = input.next_input() {
            if let Input::Line(line) = next {
                assert!(line.len() <= 256 * 4, "a line past the limit came out");
            }
        }
    }
});
