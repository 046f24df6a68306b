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

/// Waits until every accepted id has a mail, or `within` has passed; the mails so far.
pub async fn wait_for_all(
    sink: &SmtpSink,
    accepted: &BTreeSet<String>,
    within: Duration,
) -> Vec<ReceivedMail> {
    let deadline = Instant::now() + within;
    loop {
        let mails = sink.messages();
        let (_, lost, _) = reconcile(accepted, &mails);
        if lost == 0 || Instant::now() > deadline {
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
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let answers = Arc::new(Mutex::new(Vec::new()));
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
                let status = api.forgot_id(&id).await.status;
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
/// the load ends with the last stop. Each worker has `--shutdown-timeout=deadline`.
pub async fn sigterm_workers_under_load(
    requests: usize,
    stops: usize,
    every: Duration,
    deadline: Duration,
) -> StopRun {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("t", i32::try_from(requests).expect("count"))
        .await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let mut args = worker_args(&iso, &db.url, &sink.url());
    args.retain(|a| !a.starts_with("--shutdown-timeout="));
    args.push(format!("--shutdown-timeout={}ms", deadline.as_millis()));
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
