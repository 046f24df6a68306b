//! Any bytes as a xml request body: parsing must return Ok or a BodyError, never panic, and
//! an accepted id must satisfy the id rules.
#![no_main]

use api::body::{MediaType, parse, parse_fields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = parse(MediaType::Xml, data) {
        let id = id.as_str();
        assert!(!id.is_empty() && id.chars().count() <= 254);
        assert!(!id.chars().any(char::is_control));
    }
    let _ = parse_fields(MediaType::Xml, data, ["token", "password"]);
});
