//! Workers coming up: consumer settings that change between releases, and several workers
//! starting at once on an empty database.

use std::time::Duration;

use async_nats::jetstream;
use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{TestWorker, worker_settings};
use e2e::{Isolation, PrivateNats, TestApi, latest_nats_server, system_nats_server};

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

/// A lease too short to cover a send and its record is refused at start, naming both
/// settings, before the worker touches NATS or PostgreSQL.
#[tokio::test]
async fn a_claim_lease_shorter_than_a_send_is_refused_at_start() {
    let iso = Isolation::new();
    let mut settings = worker_settings(&iso, "postgres://127.0.0.1:1/none", "smtp://127.0.0.1:1");
    settings.mail.smtp_timeout = Duration::from_secs(30);
    settings.consume.claim_lease = Duration::from_secs(35);
    let err = worker::run(settings, std::future::pending())
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("WORKER_CLAIM_LEASE") && message.contains("SMTP_TIMEOUT"),
        "{message}"
    );
}
