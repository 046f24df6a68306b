//! Credentials given in connection URLs never show: not in `--help`, not in start-up or
//! retry lines, not in error messages, whatever the binary and command.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::system::binary;

const SECRET: &str = "s3cret";

/// Runs `name args` with `env` for at most `run_for`, and returns all it printed.
fn output_of(name: &str, args: &[&str], env: &[(&str, String)], run_for: Duration) -> String {
    let mut child = Command::new(binary(name))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let started = std::time::Instant::now();
    while started.elapsed() < run_for {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut stream = stream;
        let _ = stream.read_to_string(&mut text);
    }
    text
}

#[test]
fn credentials_and_keys_appear_nowhere() {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let env = [
        ("NATS_URL", format!("nats://u:{SECRET}@127.0.0.1:1")),
        (
            "DATABASE_URL",
            format!("postgres://postgres:{SECRET}@127.0.0.1:1/none"),
        ),
        ("SMTP_URL", format!("smtps://u:{SECRET}@127.0.0.1:1")),
        ("API_KEYS", "tests:test-key-0123456789abcdef".to_owned()),
        (
            "RESET_CODE_KEY",
            format!("code-key-{SECRET}-0123456789abcdef0123456789"),
        ),
        ("API_ADDR", "127.0.0.1:0".to_owned()),
        ("WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("TEMPLATES_DIR", templates.display().to_string()),
        ("RESET_URL", "https://app.example.com/reset".to_owned()),
    ];
    let runs: [(&str, &[&str], Duration); 5] = [
        ("worker", &["--help"], Duration::from_secs(5)),
        ("api", &["--help"], Duration::from_secs(5)),
        ("worker", &[], Duration::from_secs(3)),
        ("api", &[], Duration::from_secs(3)),
        ("worker", &["dead-letters", "list"], Duration::from_secs(10)),
    ];
    for (name, args, run_for) in runs {
        let printed = output_of(name, args, &env, run_for);
        assert!(!printed.is_empty(), "{name} {args:?} printed nothing");
        assert!(
            !printed.contains(SECRET),
            "{name} {args:?} printed a credential:\n{printed}"
        );
    }
}
