//! The worker when things go wrong: killed mid-run, stopped, a send slower than the ack
//! deadline.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{System, WorkerProcess, worker_args};
use e2e::{Isolation, NATS_URL, TestApi};
use worker::store::Outcome;

/// A worker killed with SIGKILL mid-run loses nothing: its unacked events are redelivered to
/// the next worker. Duplicates are possible only for the events it had in flight.
#[tokio::test]
async fn kill_9_of_a_worker_in_the_middle_of_a_run_loses_no_request() {
    const REQUESTS: usize = 300;
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let sink = SmtpSink::start();
    for n in 0..REQUESTS {
        db.account(&format!("u{n}")).add().await;
    }
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let args = worker_args(&iso, &db.url, &sink.url());
    let mut first = WorkerProcess::spawn(&args);

    for chunk in (0..REQUESTS).collect::<Vec<_>>().chunks(50) {
        let requests = chunk.iter().map(|n| api.forgot_id(format!("u{n}")));
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.status, 200);
        }
    }
    // Kill it once it is well into the work.
    let started = Instant::now();
    while sink.messages().len() < 30 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill_9();
    let at_kill = sink.messages().len();
    assert!(
        at_kill < REQUESTS,
        "the run finished before the kill; nothing was tested"
    );

    let second = WorkerProcess::spawn(&args);
    let mails = sink
        .wait_for_recipients(REQUESTS, Duration::from_secs(60))
        .await;
    let mut to: Vec<String> = mails.iter().map(|m| m.to.clone()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), REQUESTS, "every accepted request got its mail");
    let duplicates = mails.len() - to.len();
    // At most what the killed worker had in flight (its default WORKER_CONCURRENCY).
    let in_flight = usize::from(worker::config::DEFAULT_CONCURRENCY);
    assert!(duplicates <= in_flight, "{duplicates} duplicates");
    drop(second);
    api.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn sigterm_stops_an_idle_worker_with_exit_code_0() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let sink = SmtpSink::start();
    let mut worker = WorkerProcess::spawn(&worker_args(&iso, &db.url, &sink.url()));
    // Wait until it has created its consumer, i.e. it is consuming.
    let js = jetstream::new(async_nats::connect(NATS_URL).await.expect("nats"));
    let mut consuming = false;
    for _ in 0..100 {
        if let Ok(stream) = js.get_stream(&iso.stream).await
            && stream.consumer_info("test-worker").await.is_ok()
        {
            consuming = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(consuming, "the worker never created its consumer");
    let started = Instant::now();
    let status = worker.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = js.delete_stream(&iso.stream).await;
    db.drop_db().await;
}

/// A send slower than WORKER_ACK_WAIT is kept alive with in-progress acks: JetStream does not
/// hand the event to another worker mid-send, so one mail goes out.
#[tokio::test]
async fn a_send_slower_than_ack_wait_is_not_redelivered_mid_send() {
    let system = System::start_with(|s| s.consume.ack_wait = Duration::from_secs(1)).await;
    system
        .db
        .account("slow")
        .email("slow2500@example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("slow").await.status, 200);
    let mails = system.sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(system.sink.messages().len(), 1);
    system.db.wait_for_outcomes(1).await;
    assert_eq!(system.db.only_record().await, (Outcome::Sent, 1));
    system.stop().await;
}
