//! Any subject NATS can hand the receiving node, and any envelope payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsmud_protocol::envelope::{EnvelopeView, leading_sequence};
use natsmud_protocol::{Subject, SubjectPrefix};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Subject::parse(&SubjectPrefix::default(), text);
    }
    let _ = serde_json::from_slice::<EnvelopeView<'_>>(data);
    let _ = leading_sequence(data);
});
