//! The worker when things go wrong or get unusual: killed mid-run, stopped, limits, stale
//! events, and consumer settings that change between releases.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{System, TestWorker, WorkerProcess, worker_args, worker_settings};
use e2e::{Isolation, NATS_URL, PrivateNats, TestApi, latest_nats_server, system_nats_server};

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

#[tokio::test]
async fn the_daily_limit_caps_mails_per_account() {
    let system = System::start_with(|s| {
        s.policy.cooldown = Duration::ZERO;
        s.policy.daily_limit = 2;
    })
    .await;
    system.db.account("ada").add().await;
    for expected in 1..=3usize {
        assert_eq!(system.api.forgot_id("ada").await.status, 200);
        // Wait for this one to be decided before sending the next.
        for _ in 0..100 {
            let decided: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reset_requests WHERE outcome <> 'pending'",
            )
            .fetch_one(&system.db.pool)
            .await
            .expect("count");
            if decided as usize == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        system.db.outcomes().await,
        [("sent".to_owned(), 2), ("throttled".to_owned(), 1)]
    );
    assert_eq!(system.sink.messages().len(), 2);
    // Each new token invalidated the one before: only the last mailed link works.
    let live = system.db.live_tokens().await;
    assert_eq!(live, 1);
    system.stop().await;
}

#[tokio::test]
async fn an_email_shared_by_several_accounts_gets_no_mail() {
    let system = System::start().await;
    system
        .db
        .account("a1")
        .email("shared@example.com")
        .add()
        .await;
    system
        .db
        .account("a2")
        .email("Shared@Example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("shared@example.com").await.status, 200);
    // By id the account is unambiguous.
    assert_eq!(system.api.forgot_id("a2").await.status, 200);
    let mails = system.sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, "Shared@Example.com");
    assert_eq!(
        system.db.wait_for_outcomes(2).await,
        [("no_account".to_owned(), 1), ("sent".to_owned(), 1)]
    );
    system.stop().await;
}

/// An event older than TOKEN_TTL (a long outage, say) is not mailed: it is recorded as failed
/// and dead-lettered, where an operator can see it.
#[tokio::test]
async fn an_event_older_than_the_token_ttl_is_dead_lettered_not_mailed() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let mut event = e2e::reset_event("ada", "stale-request");
    event.requested_at -= time::Duration::hours(2);
    let js = jetstream::new(async_nats::connect(NATS_URL).await.expect("nats"));
    js.publish(
        format!("{}.requested", system.api.iso.prefix),
        event.to_json().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let mut outcome = None;
    for _ in 0..100 {
        outcome = sqlx::query_scalar::<_, String>("SELECT outcome FROM reset_requests")
            .fetch_optional(&system.db.pool)
            .await
            .expect("record");
        if outcome.as_deref() == Some("failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outcome.as_deref(), Some("failed"));
    assert!(system.sink.messages().is_empty());
    system.stop().await;
}

/// 2.9 updates a durable consumer created again with other settings; 2.10+ refuses. Either
/// way a worker started with new settings brings the consumer up to date.
async fn a_changed_consumer_setting_is_applied_on(binary: std::path::PathBuf) {
    let nats = PrivateNats::start_binary(binary);
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let iso = Isolation::new();
    let mut settings = e2e::api_settings(&iso).stream;
    settings.retention = Duration::from_secs(3600);
    shared::stream::ensure_stream(&js, &settings)
        .await
        .expect("stream");
    let stream = js.get_stream(&iso.stream).await.expect("stream");
    let subject = format!("{}.requested", iso.prefix);
    for ack_wait in [Duration::from_secs(30), Duration::from_secs(45)] {
        let mut consumer =
            worker::jetstream::ensure_consumer(&stream, "reset-worker", subject.clone(), ack_wait)
                .await
                .expect("create or update");
        let info = consumer.info().await.expect("info");
        assert_eq!(info.config.ack_wait, ack_wait);
        // Unlimited: the worker ends every event itself (acked or dead-lettered), and an
        // SMTP outage is retried without counting against the event.
        assert_eq!(info.config.max_deliver, -1);
    }
}

#[tokio::test]
async fn a_changed_consumer_setting_is_applied_on_nats_2_9() {
    a_changed_consumer_setting_is_applied_on(system_nats_server()).await;
}

#[tokio::test]
async fn a_changed_consumer_setting_is_applied_on_a_current_nats() {
    a_changed_consumer_setting_is_applied_on(latest_nats_server()).await;
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
    assert_eq!(system.db.only_record().await, ("sent".to_owned(), 1));
    system.stop().await;
}

/// Workers starting together on an empty database each run the migrations; sqlx's advisory
/// lock makes that safe, and all of them consume.
#[tokio::test]
async fn workers_starting_together_on_an_empty_database_all_come_up() {
    let iso = Isolation::new();
    let db = TestDb::create().await;
    let sink = SmtpSink::start();
    let workers: Vec<TestWorker> = (0..3)
        .map(|_| TestWorker::spawn(worker_settings(&iso, &db.url, &sink.url())))
        .collect();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let mut migrated = false;
    for _ in 0..100 {
        if sqlx::query("SELECT 1 FROM accounts")
            .fetch_all(&db.pool)
            .await
            .is_ok()
        {
            migrated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(migrated, "no worker created the tables");
    db.account("ada").add().await;
    assert_eq!(api.forgot_id("ada").await.status, 200);
    assert_eq!(sink.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    for worker in workers {
        worker.stop().await;
    }
    api.stop().await;
    db.drop_db().await;
}
