//! The worker binary documents its settings and refuses broken ones at start-up.

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker"))
}

#[test]
fn help_lists_every_variable() {
    let output = worker().arg("--help").output().expect("worker runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "RESET_CONSUMER",
        "WORKER_CONCURRENCY",
        "WORKER_BACKOFF",
        "WORKER_ACK_WAIT",
        "WORKER_SHUTDOWN_TIMEOUT",
        "DATABASE_URL",
        "DATABASE_MAX_CONNECTIONS",
        "TOKEN_TTL",
        "RESET_COOLDOWN",
        "RESET_COOLDOWN_MAX",
        "RESET_CODE_KEY",
        "RESET_URL",
        "TEMPLATES_DIR",
        "APP_NAME",
        "SUPPORT_EMAIL",
        "MAIL_FROM",
        "SMTP_URL",
        "SMTP_CA_FILE",
        "SMTP_POOL_SIZE",
        "SMTP_TIMEOUT",
        "MAIL_OUTBOX",
        "NATS_URL",
        "RESET_STREAM",
        "RESET_SUBJECT_PREFIX",
        "RESET_RETENTION",
        "RESET_REPLICAS",
        "WORKER_ADDR",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[test]
fn a_broken_template_stops_the_worker_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("broken-templates-{}", std::process::id()));
    let kind = dir.join("en/reset_password");
    std::fs::create_dir_all(&kind).expect("mkdir");
    std::fs::write(kind.join("subject.hbs"), "Reset").expect("write");
    std::fs::write(kind.join("text.hbs"), "{{#if reset_url}}unclosed").expect("write");
    std::fs::write(kind.join("html.hbs"), "<p>{{reset_url}}</p>").expect("write");
    let output = worker()
        .env("TEMPLATES_DIR", &dir)
        .env("LOG_FORMAT", "json")
        .output()
        .expect("worker runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("reset_password/text.hbs"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_smtp_url_is_refused_with_its_variable_named() {
    let output = worker()
        .env("SMTP_URL", "http://mail.example.com")
        .env("RESET_CODE_KEY", "a code key of thirty-two characters")
        .env(
            "TEMPLATES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"),
        )
        .output()
        .expect("worker runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("SMTP_URL"), "{log}");
}

/// A refused value is reported by the variable people set, with what was wrong.
#[test]
fn a_bad_setting_names_its_environment_variable() {
    for (variable, value) in [
        ("WORKER_CONCURRENCY", "0"),
        ("RESET_COOLDOWN", "a while"),
        ("TOKEN_TTL", "long"),
        ("WORKER_BACKOFF", "2s,soon"),
    ] {
        let output = worker().env(variable, value).output().expect("worker runs");
        assert!(!output.status.success());
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!("{variable}=\"{value}\" is refused")),
            "{variable}: {said}"
        );
    }
}

#[test]
fn without_a_code_key_it_exits_saying_how_to_make_one() {
    let output = worker()
        .env_remove("RESET_CODE_KEY")
        .env(
            "TEMPLATES_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"),
        )
        .output()
        .expect("worker runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("RESET_CODE_KEY is not set") && log.contains("openssl rand -hex 32"),
        "{log}"
    );
    // A short one is refused by name, and not echoed.
    let output = worker()
        .env("RESET_CODE_KEY", "short-secret")
        .output()
        .expect("worker runs");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("RESET_CODE_KEY=\"<hidden>\" is refused"),
        "{said}"
    );
    assert!(!said.contains("short-secret"), "{said}");
}
