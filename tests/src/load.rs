//! Load while something stops or breaks, and the check that follows it: every request
//! answered 200 against the mails the sink received.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::db::TestDb;
use crate::sink::{ReceivedMail, SmtpSink};
use crate::system::{WorkerProcess, worker_args};
use crate::{Isolation, KEY, TestApi};

/// One Markdown table row of the fault suite, printed and appended to `$FAULTS_REPORT` if
/// set: scenario | load | faults injected | requests accepted | mails | lost | duplicates.
pub fn report(
    scenario: &str,
    load: &str,
    faults: &str,
    accepted: usize,
    mails: usize,
    lost: usize,
    duplicates: usize,
) {
    let row = format!(
        "| {scenario} | {load} | {faults} | {accepted} | {mails} | {lost} | {duplicates} |"
    );
    println!("{row}");
    if let Ok(path) = std::env::var("FAULTS_REPORT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{row}");
        }
    }
}

/// Accepted ids against the mails: (mails, lost, duplicates).
pub fn reconcile(accepted: &BTreeSet<String>, mails: &[ReceivedMail]) -> (usize, usize, usize) {
    let mut per_address: BTreeMap<&str, usize> = BTreeMap::new();
    for mail in mails {
        *per_address.entry(mail.to.as_str()).or_insert(0) += 1;
    }
    let lost = accepted
        .iter()
        .filter(|id| !per_address.contains_key(format!("{id}@example.com").as_str()))
        .count();
    let duplicates = per_address.values().map(|n| n - 1).sum();
    (mails.len(), lost, duplicates)
}

/// The mails of every address mailed more than once, for a failure message: whether the
/// copies share a Message-ID (one event mailed twice) or not (two events), and when each came.
pub fn describe_duplicates(mails: &[ReceivedMail]) -> String {
    let mut per_address: BTreeMap<&str, Vec<&ReceivedMail>> = BTreeMap::new();
    for mail in mails {
        per_address.entry(mail.to.as_str()).or_default().push(mail);
    }
    per_address
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(to, copies)| {
            let first = copies.iter().map(|m| m.received_at_ns).min().unwrap_or(0);
            let each: Vec<String> = copies
                .iter()
                .map(|m| {
                    let after_ms = (m.received_at_ns - first) / 1_000_000;
                    format!("{} +{after_ms} ms", m.message_id)
                })
                .collect();
            format!("{to}: {}", each.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until every accepted id has a mail, or no new mail has come for `within` (a backlog
/// still draining is waited for); the mails so far.
pub async fn wait_for_all(
    sink: &SmtpSink,
    accepted: &BTreeSet<String>,
    within: Duration,
) -> Vec<ReceivedMail> {
    let (mut seen, mut progress) = (0, Instant::now());
    loop {
        let mails = sink.messages();
        let (_, lost, _) = reconcile(accepted, &mails);
        if mails.len() > seen {
            (seen, progress) = (mails.len(), Instant::now());
        }
        if lost == 0 || progress.elapsed() > within {
            return mails;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends requests for `{prefix}{i}` with `concurrency` at a time until `n` are sent or `stop`
/// is set; returns the ids answered 200 and every (answered at, status).
pub async fn drive(
    api: &TestApi,
    prefix: &str,
    n: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> (BTreeSet<String>, Vec<(Instant, u16)>) {
    drive_with(prefix, n, concurrency, stop, async |id| {
        api.forgot_id(&id).await.status
    })
    .await
}

/// As [`drive`], each request sent by `send` (which gives its status, 0 for none).
pub async fn drive_with(
    prefix: &str,
    n: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    send: impl AsyncFn(String) -> u16,
) -> (BTreeSet<String>, Vec<(Instant, u16)>) {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let send = &send;
    let lanes = (0..concurrency).map(|_| {
        let (next, accepted, answers, stop) = (
            next.clone(),
            accepted.clone(),
            answers.clone(),
            stop.clone(),
        );
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("{prefix}{i}");
                let status = send(id.clone()).await;
                answers.lock().await.push((Instant::now(), status));
                if status == 200 {
                    accepted.lock().await.insert(id);
                }
            }
        }
    });
    futures::future::join_all(lanes).await;
    let accepted = accepted.lock().await.clone();
    let answers = answers.lock().await.clone();
    (accepted, answers)
}

/// One forgot-password request for `id` with `Idempotency-Key: id`, as a client that
/// retries would send it: the status, or `None` when no answer came (connection refused or
/// closed first).
pub async fn try_forgot(addr: SocketAddr, id: &str) -> Option<u16> {
    let body = serde_json::json!({ "id": id }).to_string();
    let request = format!(
        "POST /auth/forgot-password HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {id}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let head = std::str::from_utf8(&raw).ok()?.lines().next()?.to_owned();
    head.split(' ').nth(1)?.parse().ok()
}

/// Waits (at most 20 s) until the api at `addr` accepts a request.
pub async fn wait_for_api(addr: SocketAddr) {
    let began = Instant::now();
    while try_forgot(addr, "warm-up").await != Some(200) {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the api never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a run of worker stops under load came to.
#[derive(Debug)]
pub struct StopRun {
    pub accepted: usize,
    pub mails: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub stops: usize,
    /// The longest time from a SIGTERM to the worker's exit.
    pub longest_stop: Duration,
    /// Stops that did not end with exit status 0.
    pub unclean: usize,
    /// The last log lines of the worker whose stop took longest.
    pub slowest_log: String,
}

/// Requests from 4 clients (at most `requests`) while two worker processes run; every
/// `every`, one of them gets SIGTERM and a new one starts in its place, `stops` times, and
/// the load ends with the last stop. Each worker has `--shutdown-timeout=deadline`, or with
/// `None` the shipped stop, SMTP and lease deadlines.
pub async fn sigterm_workers_under_load(
    requests: usize,
    stops: usize,
    every: Duration,
    deadline: Option<Duration>,
) -> StopRun {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("t", i32::try_from(requests).expect("count"))
        .await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let mut args = worker_args(&iso, &db.url, &sink.url());
    match deadline {
        Some(deadline) => {
            args.retain(|a| !a.starts_with("--shutdown-timeout="));
            args.push(format!("--shutdown-timeout={}ms", deadline.as_millis()));
        }
        None => args.retain(|a| {
            !["--shutdown-timeout=", "--smtp-timeout=", "--claim-lease="]
                .iter()
                .any(|flag| a.starts_with(flag))
        }),
    }
    // Each worker logs to its own file, so that a slow stop can say where it spent its time.
    let logs = std::env::temp_dir().join(format!("stops-{}", iso.stream));
    std::fs::create_dir_all(&logs).expect("log directory");
    let spawn = {
        let logs = logs.clone();
        let mut started = 0;
        move |args: &[String]| {
            started += 1;
            let path = logs.join(format!("worker-{started}.log"));
            let file = std::fs::File::create(&path).expect("log file");
            (WorkerProcess::spawn_logging(args, file, "info"), path)
        }
    };
    let stopper = tokio::spawn(async move {
        let mut spawn = spawn;
        let mut workers = vec![spawn(&args), spawn(&args)];
        let mut times = Vec::new();
        let mut unclean = 0;
        let mut slowest_log = String::new();
        for stop in 0..stops {
            tokio::time::sleep(every).await;
            let victim = stop % workers.len();
            let (mut stopping, log) = std::mem::replace(&mut workers[victim], spawn(&args));
            let (took, status) = tokio::task::spawn_blocking(move || {
                let began = Instant::now();
                let status = stopping.terminate();
                (began.elapsed(), status)
            })
            .await
            .expect("stopping");
            if times.iter().all(|t| *t < took) {
                slowest_log = last_lines(&log, 12);
            }
            times.push(took);
            if !status.success() {
                unclean += 1;
            }
        }
        (times, unclean, slowest_log, workers)
    });
    let load_ends = Arc::new(AtomicBool::new(false));
    let (load, stopped) = tokio::join!(drive(&api, "t", requests, 4, load_ends.clone()), async {
        let stopped = stopper.await.expect("stopper");
        load_ends.store(true, Ordering::Relaxed);
        stopped
    });
    let ((accepted, _), (times, unclean, slowest_log, workers)) = (load, stopped);
    wait_for_all(&sink, &accepted, Duration::from_secs(60)).await;
    // Anything a stop handed back and then sent twice would arrive within an ack_wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = sink.messages();
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    drop(workers);
    api.stop().await;
    db.drop_db().await;
    if duplicates == 0 && lost == 0 && std::env::var_os("KEEP_STOP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        println!("worker logs kept in {}", logs.display());
    }
    StopRun {
        accepted: accepted.len(),
        mails: count,
        lost,
        duplicates,
        stops: times.len(),
        longest_stop: times.into_iter().max().unwrap_or_default(),
        unclean,
        slowest_log,
    }
}

fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a run of api stops under load came to.
#[derive(Debug)]
pub struct ApiStopRun {
    pub accepted: usize,
    pub mails: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub stops: usize,
    /// Answers other than 200 (503 while stopping or starting, say), each asked again.
    pub refused: usize,
    /// Requests that got no answer (connection refused or closed first), each asked again.
    pub unanswered: usize,
    /// The longest time from a SIGTERM to the api's exit.
    pub longest_stop: Duration,
    /// Stops that did not end with exit status 0.
    pub unclean: usize,
}

impl StopRun {
    /// Every stop ended cleanly within `within`, every accepted request was mailed, and none
    /// twice.
    pub fn assert_clean(&self, within: Duration) {
        assert_eq!(self.unclean, 0, "a stop ended with a failure: {self:?}");
        assert!(
            self.longest_stop <= within,
            "a stop took longer than {within:?}: {self:?}"
        );
        assert_eq!(self.lost, 0, "accepted requests without a mail: {self:?}");
        assert_eq!(self.duplicates, 0, "mails sent twice: {self:?}");
    }
}

/// A process, killed when dropped: a failed assertion must not leave it running (it would
/// hold the test runner's output open).
#[derive(Debug)]
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The settings every api process of these tests shares: the test key, the run's stream and
/// subjects, the templates, quiet logs. The caller adds its address, NATS and limits.
pub fn with_api_env<'c>(
    command: &'c mut std::process::Command,
    iso: &Isolation,
) -> &'c mut std::process::Command {
    command
        .env("API_KEYS", format!("{}:{KEY}", crate::LABEL))
        .env("RESET_CODE_KEY", crate::CODE_KEY)
        .env("TEMPLATES_DIR", crate::templates_dir())
        .env("RESET_STREAM", &iso.stream)
        .env("RESET_SUBJECT_PREFIX", &iso.prefix)
        .env("RESET_RETENTION", "1h")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
}

/// An api as its own process on `port`, for tests that stop it with SIGTERM.
fn spawn_api(iso: &Isolation, port: u16) -> KilledOnDrop {
    let mut command = std::process::Command::new(crate::system::binary("api"));
    let child = with_api_env(&mut command, iso)
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("API_RATE_LIMIT", "1000000/second")
        .env("API_SHUTDOWN_TIMEOUT", "5s")
        .env("NATS_URL", crate::nats_url())
        .spawn()
        .expect("the api binary starts");
    KilledOnDrop(child)
}

/// Requests from 4 clients (at most `requests`, each with its id as `Idempotency-Key` and
/// asked again until answered 200) while one worker runs and the api, its own process, gets
/// SIGTERM every `every` and is started again on the same port, `stops` times.
pub async fn sigterm_api_under_load(requests: usize, stops: usize, every: Duration) -> ApiStopRun {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("a", i32::try_from(requests).expect("count"))
        .await;
    let sink = SmtpSink::start();
    let _worker = WorkerProcess::spawn(&worker_args(&iso, &db.url, &sink.url()));
    let port = crate::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let api = spawn_api(&iso, port);
    wait_for_api(addr).await;
    let load_ends = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let (refused, unanswered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let lanes = (0..4).map(|_| {
        let (next, load_ends) = (next.clone(), load_ends.clone());
        let (refused, unanswered) = (refused.clone(), unanswered.clone());
        async move {
            let mut accepted = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || load_ends.load(Ordering::Relaxed) {
                    return accepted;
                }
                let id = format!("a{i}");
                loop {
                    match try_forgot(addr, &id).await {
                        Some(200) => break,
                        Some(_) => refused.fetch_add(1, Ordering::Relaxed),
                        None => unanswered.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                accepted.push(id);
            }
        }
    });
    let stopper = async {
        let mut api = api;
        let mut times = Vec::new();
        let mut unclean = 0;
        for _ in 0..stops {
            tokio::time::sleep(every).await;
            let (took, status, stopped) = tokio::task::spawn_blocking(move || {
                let began = Instant::now();
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &api.0.id().to_string()])
                    .status();
                let status = api.0.wait().expect("api exits");
                (began.elapsed(), status, api)
            })
            .await
            .expect("stopping");
            drop(stopped);
            times.push(took);
            if !status.success() {
                unclean += 1;
            }
            api = spawn_api(&iso, port);
        }
        load_ends.store(true, Ordering::Relaxed);
        (times, unclean, api)
    };
    let (lanes, (times, unclean, api)) = tokio::join!(futures::future::join_all(lanes), stopper);
    let accepted: BTreeSet<String> = lanes.into_iter().flatten().collect();
    wait_for_all(&sink, &accepted, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // "warm-up" names no account: it has no mail.
    let mails = sink.messages();
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    drop(api);
    iso.delete_stream(crate::nats_url()).await;
    db.drop_db().await;
    ApiStopRun {
        accepted: accepted.len(),
        mails: count,
        lost,
        duplicates,
        stops: times.len(),
        refused: refused.load(Ordering::Relaxed),
        unanswered: unanswered.load(Ordering::Relaxed),
        longest_stop: times.into_iter().max().unwrap_or_default(),
        unclean,
    }
}
