//! The worker in tests: in-process like the api, or as a real process to kill, and the whole
//! system (api, worker, database, SMTP sink) on one isolated stream.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{CODE_KEY, Isolation, TestApi, db::TestDb, nats_url, sink::SmtpSink};

/// The reset page the tests configure; its query must survive the token being added.
pub const RESET_URL: &str = "https://app.example.com/reset?lang=en";

/// Command-line flags for a worker on `iso`, `db` and `smtp_url`, with quick retries and
/// short leases.
pub fn worker_args(iso: &Isolation, db_url: &str, smtp_url: &str) -> Vec<String> {
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    [
        "--addr=127.0.0.1:0".into(),
        format!("--nats-url={}", nats_url()),
        format!("--stream={}", iso.stream),
        format!("--subject-prefix={}", iso.prefix),
        "--retention=1h".into(),
        "--consumer=test-worker".into(),
        format!("--database-url={db_url}"),
        format!("--smtp-url={smtp_url}"),
        format!("--templates-dir={}", templates.display()),
        format!("--reset-url={RESET_URL}"),
        "--backoff=100ms,200ms,300ms".into(),
        "--ack-wait=5s".into(),
        "--shutdown-timeout=5s".into(),
        // The shortest lease the worker accepts with this SMTP_TIMEOUT, so that a test
        // whose worker dies waits seconds, not a minute, for its claims to run out.
        "--smtp-timeout=3s".into(),
        "--claim-lease=13s".into(),
        "--app-name=Example".into(),
        format!("--reset-code-key={CODE_KEY}"),
    ]
    .into()
}

/// Parsed worker settings for the same flags.
pub fn worker_settings(iso: &Isolation, db_url: &str, smtp_url: &str) -> worker::Settings {
    let mut args = vec!["worker".to_owned()];
    args.extend(worker_args(iso, db_url, smtp_url));
    worker::Settings::try_parse_from(args).expect("worker test settings parse")
}

/// A worker running in this process.
#[derive(Debug)]
pub struct TestWorker {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), worker::WorkerError>>>,
}

impl TestWorker {
    pub fn spawn(settings: worker::Settings) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker::run(settings, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops it as SIGTERM would and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("worker stops within its shutdown deadline")
                .expect("worker task")
                .expect("worker exits cleanly");
        }
    }
}

/// A worker as its own OS process, for tests that kill it.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn spawn(args: &[String]) -> Self {
        Self::spawn_logging(args, Stdio::null(), "warn")
    }

    /// Like [`WorkerProcess::spawn`], at the lowest CPU priority (`nice -n 19`).
    pub fn spawn_niced(args: &[String]) -> Self {
        let child = Command::new("nice")
            .args(["-n", "19"])
            .arg(binary("worker"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the worker binary starts");
        Self { child }
    }

    /// Like [`WorkerProcess::spawn`], with its log lines (at `level`) going to `stdout`.
    pub fn spawn_logging(args: &[String], stdout: impl Into<Stdio>, level: &str) -> Self {
        let child = Command::new(binary("worker"))
            .args(args)
            .env("RUST_LOG", level)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the worker binary starts");
        Self { child }
    }

    /// SIGKILL: no chance to finish or nak anything.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status once it has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("worker exits")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace binary (`api`, `worker`) beside the test binaries, brought up to date by the
/// first call for it in this process. An existing one is not trusted as it is: `cargo test`
/// of this package alone does not rebuild it, and a worker built before the last change to
/// its migrations refuses a database that the tests migrated with the new ones.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test binary path");
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|b| b == name) {
        // The same profile as the tests themselves, whose directory the binary is taken from.
        let release = target_dir.ends_with("release").then_some("--release");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .args(release)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the {name} binary failed");
        built.push(name.to_owned());
    }
    target_dir.join(name)
}

/// The api, one worker, a fresh database and an SMTP sink, all on one isolated stream.
#[derive(Debug)]
pub struct System {
    pub api: TestApi,
    pub worker: TestWorker,
    pub db: TestDb,
    pub sink: SmtpSink,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `tweak` adjusts the worker's settings.
    pub async fn start_with(tweak: impl FnOnce(&mut worker::Settings)) -> Self {
        Self::start_with_sink(SmtpSink::start(), tweak).await
    }

    /// Like [`System::start_with`], with mail going to `sink` (unless `tweak` points the
    /// worker elsewhere, e.g. at a relay in front of it).
    pub async fn start_with_sink(
        sink: SmtpSink,
        tweak: impl FnOnce(&mut worker::Settings),
    ) -> Self {
        Self::start_inner(sink, false, tweak).await
    }

    /// Like [`System::start`], with the mailed link opening the api's own reset page, as
    /// it does by default outside the tests.
    pub async fn start_with_page() -> Self {
        Self::start_inner(SmtpSink::start(), true, |_| {}).await
    }

    async fn start_inner(
        sink: SmtpSink,
        link_to_page: bool,
        tweak: impl FnOnce(&mut worker::Settings),
    ) -> Self {
        let iso = Isolation::new();
        let db = TestDb::migrated().await;
        let db_url = db.url.clone();
        let api = TestApi::spawn_in(iso.clone(), |s| s.reset.database.database_url = db_url).await;
        let mut settings = worker_settings(&iso, &db.url, &sink.url());
        if link_to_page {
            settings.policy.reset_url = format!("http://{}/reset-password", api.addr)
                .parse()
                .expect("page URL");
        }
        tweak(&mut settings);
        let worker = TestWorker::spawn(settings);
        Self {
            api,
            worker,
            db,
            sink,
        }
    }

    pub async fn stop(self) {
        self.worker.stop().await;
        self.api.stop().await;
        self.db.drop_db().await;
    }
}

/// The environment variables a binary reads, from its own `--help`.
pub fn settings_of(binary_name: &str) -> std::collections::BTreeSet<String> {
    let output = Command::new(binary(binary_name))
        .arg("--help")
        .output()
        .expect("binary runs");
    String::from_utf8_lossy(&output.stdout)
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}
