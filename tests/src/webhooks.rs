//! The webhook receiver the tests deliver to: `tests/webhook_receiver.py`, which checks every
//! delivery with the Standard Webhooks reference library (`standardwebhooks` from PyPI), not
//! with our code, and can fail the first attempts of each webhook.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The secret the tests sign with.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running receiver.
#[derive(Debug)]
pub struct WebhookReceiver {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

/// A delivery the reference library verified and the receiver took (204).
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub body: serde_json::Value,
}

/// Every POST, taken or not.
#[derive(Debug, Clone, Deserialize)]
pub struct Attempt {
    pub webhook_id: Option<String>,
    pub status: u16,
    pub verified: bool,
}

impl WebhookReceiver {
    /// A receiver answering 500 to the first `fail_first` verified POSTs of each webhook-id.
    pub fn start(fail_first: u32) -> Self {
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("webhooks-{}", uuid::Uuid::now_v7().simple()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook_receiver.py");
        let mut child = Command::new(crate::sink::python())
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", WEBHOOK_SECRET])
            .args(["--fail-first", &fail_first.to_string(), "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the webhook receiver starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver says it is ready");
        assert!(line.starts_with("ready"), "receiver said {line:?}");
        Self { port, dir, child }
    }

    /// The `WEBHOOK_URL` that reaches it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// The deliveries taken so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).expect("delivery");
                serde_json::from_str(&text).expect("delivery JSON")
            })
            .collect()
    }

    /// Every POST so far, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        std::fs::read_to_string(self.dir.join("attempts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("attempt JSON"))
            .collect()
    }

    /// Waits until a delivery of `kind` has been taken; all of that type so far.
    pub async fn wait_for(&self, kind: &str, within: Duration) -> Vec<Delivery> {
        let started = Instant::now();
        loop {
            let taken: Vec<Delivery> = self
                .deliveries()
                .into_iter()
                .filter(|d| d.body["type"] == kind)
                .collect();
            if !taken.is_empty() {
                return taken;
            }
            assert!(
                started.elapsed() < within,
                "no {kind} webhook within {within:?}; attempts: {:?}",
                self.attempts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
