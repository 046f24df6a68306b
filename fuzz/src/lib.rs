//! What every body-parser target checks: parsing any bytes returns Ok or a BodyError, never
//! panics, and an accepted id satisfies the id rules.

use api::http::body::{MediaType, parse, parse_fields};

pub fn check_body(kind: MediaType, data: &[u8]) {
    if let Ok(id) = parse(kind, data) {
        let id = id.as_str();
        assert!(!id.is_empty() && id.chars().count() <= 254);
        assert!(!id.chars().any(char::is_control));
    }
    let _ = parse_fields(kind, data, ["token", "password"]);
}
