//! Any bytes from the stream: decoding must return an event or a DecodeError, never panic,
//! and a decoded event must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::event::{PasswordChanged, ResetRequested};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = ResetRequested::decode(data) {
        assert_eq!(ResetRequested::decode(&event.to_json()).ok(), Some(event));
    }
    if let Ok(event) = PasswordChanged::decode(data) {
        assert_eq!(PasswordChanged::decode(&event.to_json()).ok(), Some(event));
    }
});
