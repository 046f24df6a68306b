//! The api binary documents its settings and refuses to start without a key.

use std::process::Command;

#[test]
fn help_lists_every_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .arg("--help")
        .output()
        .expect("api runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "API_ADDR",
        "API_KEYS",
        "API_MAX_BODY",
        "API_RATE_LIMIT",
        "API_TRUST_PROXY",
        "API_TRUSTED_PROXIES",
        "API_PUBLISH_TIMEOUT",
        "API_HEADER_TIMEOUT",
        "API_BODY_TIMEOUT",
        "API_SHUTDOWN_TIMEOUT",
        "API_MAX_CONNECTIONS",
        "NATS_URL",
        "RESET_STREAM",
        "RESET_SUBJECT_PREFIX",
        "RESET_RETENTION",
        "RESET_REPLICAS",
        "DATABASE_URL",
        "PASSWORD_MIN_LENGTH",
        "PASSWORD_MIN_STRENGTH",
        "TEMPLATES_DIR",
        "PAGE_PRODUCT_NAME",
        "PAGE_ACCENT_COLOR",
        "PAGE_ENABLED",
        "API_PUBLIC_URL",
        "RESET_CODE_KEY",
        "ARGON2_MEMORY_KIB",
        "ARGON2_ITERATIONS",
        "ARGON2_PARALLELISM",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[test]
fn without_a_key_it_exits_non_zero_saying_what_to_set() {
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .env_remove("API_KEYS")
        .env("API_ADDR", "127.0.0.1:0")
        .output()
        .expect("api runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("set API_KEYS"), "{log}");
}

/// A refused value is reported by the variable people set, with what was wrong.
#[test]
fn a_bad_setting_names_its_environment_variable() {
    for (variable, value) in [
        ("API_MAX_BODY", "lots"),
        ("API_RATE_LIMIT", "many"),
        ("API_PUBLISH_TIMEOUT", "soon"),
        ("API_TRUST_PROXY", "perhaps"),
        ("API_TRUSTED_PROXIES", "proxy.internal"),
        // Below NIST SP 800-63B's floor of 8.
        ("PASSWORD_MIN_LENGTH", "4"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_api"))
            .env(variable, value)
            .output()
            .expect("api runs");
        assert!(!output.status.success());
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!("{variable}=\"{value}\" is refused")),
            "{variable}: {said}"
        );
    }
}

/// Booleans accept what people type.
#[test]
fn api_trust_proxy_accepts_1() {
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .env("API_TRUST_PROXY", "1")
        .env_remove("API_KEYS")
        .env("API_ADDR", "127.0.0.1:0")
        .output()
        .expect("api runs");
    // It gets past the settings to the missing key.
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("set API_KEYS"), "{log}");
}

#[test]
fn without_a_code_key_it_exits_saying_how_to_make_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .env("API_KEYS", "web:0123456789abcdef0123456789")
        .env_remove("RESET_CODE_KEY")
        .env("API_ADDR", "127.0.0.1:0")
        .output()
        .expect("api runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("RESET_CODE_KEY is not set") && log.contains("openssl rand -hex 32"),
        "{log}"
    );
}
