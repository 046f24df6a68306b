//! The worker when things go wrong: killed mid-run, stopped, a send slower than the ack
//! deadline.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{System, WorkerProcess, worker_args};
use e2e::{Isolation, TestApi, nats_url};
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
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
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

/// An SMTP server that answers the message later than SMTP_TIMEOUT (3 s in the tests) but
/// within the claim's lease: the worker waits for its answer instead of trying again, so the
/// person gets one mail, recorded sent on the first attempt.
#[tokio::test]
async fn a_server_slower_than_smtp_timeout_to_take_the_mail_gets_it_once() {
    let system = System::start().await;
    system
        .db
        .account("slow")
        .email("slow4500@example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("slow").await.status, 200);
    system.db.wait_for_outcomes(1).await;
    assert_eq!(system.db.only_record().await, (Outcome::Sent, 1));
    // A retry would have reached the sink by now: its copy comes 4.5 s after it begins.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(system.sink.messages().len(), 1, "mailed once");
    system.stop().await;
}

/// How long a claim lives in the tests (`worker_args`): SMTP_TIMEOUT (3 s) + 10 s, the least
/// the worker accepts.
const SHORT_LEASE: Duration = Duration::from_secs(13);

/// Waits until the worker's consumer has every message of the stream acknowledged.
async fn wait_until_all_acked(iso: &Isolation, within: Duration) {
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let stream = js.get_stream(&iso.stream).await.expect("stream");
    let deadline = Instant::now() + within;
    loop {
        let info = stream.consumer_info("test-worker").await.expect("consumer");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "still unacknowledged: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same event delivered a second time while the first delivery is inside a slow SMTP
/// DATA: the second finds the first's claim, does not send, and comes back when the lease
/// has run out, to find the event sent. One mail.
#[tokio::test]
async fn a_second_delivery_during_a_slow_send_does_not_mail_again() {
    let system = System::start().await;
    system
        .db
        .account("ada")
        .email("slow2000@example.com")
        .add()
        .await;
    let event = e2e::reset_event("ada", "req-twice");
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let subject = format!("{}.requested", system.api.iso.prefix);
    let publish = || async {
        js.publish(subject.clone(), event.to_json().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    };
    publish().await;
    // The first delivery has said RCPT TO, so it is in the 2-second DATA now.
    let began = Instant::now();
    while system.sink.rcpt_log().is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the first send never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish().await;
    assert_eq!(
        system.sink.wait_for(1, Duration::from_secs(10)).await.len(),
        1
    );
    wait_until_all_acked(&system.api.iso, SHORT_LEASE + Duration::from_secs(10)).await;
    assert_eq!(system.sink.messages().len(), 1, "mailed once");
    let (outcome, waits): (Outcome, i32) =
        sqlx::query_as("SELECT outcome, waits FROM reset_requests")
            .fetch_one(&system.db.pool)
            .await
            .expect("record");
    assert_eq!(outcome, Outcome::Sent);
    assert!(waits >= 1, "the second delivery found the claim taken");
    system.stop().await;
}

/// A worker killed inside DATA leaves its claim behind: the redelivery does not mail while
/// that claim's lease runs, and mails once it has run out. One mail.
#[tokio::test]
async fn after_a_kill_9_mid_send_the_event_is_mailed_once_the_lease_runs_out() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let sink = SmtpSink::start();
    db.account("kim").email("slow2000@example.com").add().await;
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let args = worker_args(&iso, &db.url, &sink.url());
    let mut first = WorkerProcess::spawn(&args);
    assert_eq!(api.forgot_id("kim").await.status, 200);
    let began = Instant::now();
    while sink.rcpt_log().is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the first send never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The claim was made just before RCPT TO: its lease ends about SHORT_LEASE from now.
    let claimed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill_9();
    let second = WorkerProcess::spawn(&args);
    // The redelivery comes after WORKER_ACK_WAIT (5 s) and finds the claim still held.
    tokio::time::sleep_until((claimed + SHORT_LEASE - Duration::from_secs(2)).into()).await;
    assert!(
        sink.messages().is_empty(),
        "mailed while the dead worker's claim was live"
    );
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), 1, "mailed once");
    drop(second);
    api.stop().await;
    db.drop_db().await;
}
