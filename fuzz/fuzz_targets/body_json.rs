//! Any bytes as a json request body (see `fuzz::check_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz::check_body(api::http::body::MediaType::Json, data));
