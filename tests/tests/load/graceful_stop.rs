//! A graceful stop, as deploys, autoscalers and `docker compose down` send it all day:
//! nothing lost, nothing mailed twice, and the stop ends when its work ends, at the default
//! deadlines (`WORKER_SHUTDOWN_TIMEOUT` 20 s, `API_SHUTDOWN_TIMEOUT` 10 s), which are never
//! what ends it. The longer runs are in the fault suite (`faults/run`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use e2e::db::TestDb;
use e2e::load::{drive, reconcile, sigterm_api_under_load, sigterm_workers_under_load};
use e2e::sink::SmtpSink;
use e2e::system::{WorkerProcess, worker_args};
use e2e::{Isolation, TestApi};

/// Against this sink in-flight mails take milliseconds: a second covers them and the exit.
const BEYOND_THE_WORK: Duration = Duration::from_secs(1);

#[tokio::test]
async fn workers_stopped_under_load_lose_nothing_mail_nothing_twice_and_end_with_their_work() {
    let run = sigterm_workers_under_load(5000, 4, Duration::from_millis(700), None).await;
    println!("{run:#?}");
    assert_eq!(run.stops, 4);
    assert!(run.accepted > 100, "too little load to tell: {run:?}");
    run.assert_clean(BEYOND_THE_WORK);
}

/// The worker's arguments for these tests at the shipped deadlines: no shorter stop, SMTP or
/// lease deadline than a deployment has.
fn default_deadlines(iso: &Isolation, db: &TestDb, sink: &SmtpSink) -> Vec<String> {
    let mut args = worker_args(iso, &db.url, &sink.url());
    args.retain(|a| {
        !["--shutdown-timeout=", "--smtp-timeout=", "--claim-lease="]
            .iter()
            .any(|flag| a.starts_with(flag))
    });
    args
}

/// Mails still waiting for an SMTP connection (a server slow to take them) are not worth a
/// stop's wait: they are handed back at once, unsent, and the next worker mails each once.
/// Three stops in a row, each measured from SIGTERM to exit.
#[tokio::test]
async fn a_stop_while_mails_wait_for_an_smtp_connection_ends_at_once_and_loses_nothing() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    for stop in 0..3 {
        db.add_numbered_accounts(&format!("s{stop}-"), 20).await;
    }
    let sink = SmtpSink::start_strict();
    let hold = sink.dir.join("hold-greeting");
    std::fs::write(&hold, "").expect("hold the greetings");
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let args = default_deadlines(&iso, &db, &sink);
    let mut accepted = std::collections::BTreeSet::new();
    for stop in 0..3 {
        let mut worker = WorkerProcess::spawn(&args);
        let ids = format!("s{stop}-");
        let (sent, _) = drive(&api, &ids, 20, 4, Arc::new(AtomicBool::new(false))).await;
        assert_eq!(sent.len(), 20);
        accepted.extend(sent);
        // Taken in: each waits for a connection the server does not greet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let began = Instant::now();
        let status = tokio::task::spawn_blocking(move || worker.terminate())
            .await
            .expect("stopping");
        let took = began.elapsed();
        println!("stop {stop}: SIGTERM to exit {took:?}");
        assert!(status.success(), "stop {stop}: {status}");
        assert!(
            took <= BEYOND_THE_WORK,
            "stop {stop} took {took:?} with no mail under way"
        );
    }
    assert!(sink.messages().is_empty(), "nothing was sent while held");
    std::fs::remove_file(&hold).expect("greet again");
    let worker = WorkerProcess::spawn(&args);
    let mails = sink.wait_for(accepted.len(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (count, lost, duplicates) = reconcile(&accepted, &sink.messages());
    assert_eq!(
        (count, lost, duplicates),
        (60, 0, 0),
        "{} mails",
        mails.len()
    );
    drop(worker);
    api.stop().await;
    db.drop_db().await;
}

/// The api stopped under load answers what it took in before it goes: every request it
/// answered 200 is mailed, once; the rest were answered otherwise or not at all, and a
/// client asking again with the same Idempotency-Key gets one mail. Each stop ends with its
/// requests, well before API_SHUTDOWN_TIMEOUT.
#[tokio::test]
async fn an_api_stopped_under_load_loses_nothing_it_answered_200() {
    let run = sigterm_api_under_load(5000, 3, Duration::from_millis(700)).await;
    println!("{run:#?}");
    assert_eq!(run.stops, 3);
    assert!(run.accepted > 100, "too little load to tell: {run:?}");
    assert_eq!(run.unclean, 0, "a stop ended with a failure: {run:?}");
    assert_eq!(run.lost, 0, "answered 200 without a mail: {run:?}");
    assert_eq!(run.duplicates, 0, "mailed twice: {run:?}");
    assert!(
        run.longest_stop <= BEYOND_THE_WORK,
        "a stop outlasted its requests by far: {run:?}"
    );
}

/// Every wait outside the process has a bound; an event still at work after the first
/// (a third of the ack wait, when JetStream is told it is in progress) says so once, with
/// its id and what it waits for.
#[tokio::test]
async fn an_event_that_waits_long_says_once_what_it_waits_for() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("slow", 1).await;
    let sink = SmtpSink::start_strict();
    let hold = sink.dir.join("hold-greeting");
    std::fs::write(&hold, "").expect("hold the greetings");
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let mut args = default_deadlines(&iso, &db, &sink);
    args.retain(|a| !a.starts_with("--ack-wait="));
    args.push("--ack-wait=1500ms".into());
    let log = sink.dir.join("worker.log");
    let file = std::fs::File::create(&log).expect("log file");
    let worker = WorkerProcess::spawn_logging(&args, file, "info");
    assert_eq!(api.forgot_id("slow0").await.status, 200);
    let event_id = api.events().await[0].0.event_id.to_string();
    // Three progress ticks (every 500 ms) while the greeting is held.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    std::fs::remove_file(&hold).expect("greet again");
    assert_eq!(sink.wait_for(1, Duration::from_secs(30)).await.len(), 1);
    drop(worker);
    let text = std::fs::read_to_string(&log).expect("log");
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("event still being worked on"))
        .collect();
    assert_eq!(warned.len(), 1, "said once: {text}");
    assert!(
        warned[0].contains(&event_id) && warned[0].contains("waiting_for=\"an SMTP connection\""),
        "{}",
        warned[0]
    );
    api.stop().await;
    db.drop_db().await;
}
