//! The same behaviour on Debian's nats-server 2.9 (what this machine runs) and on a current
//! 2.15 (what production images ship): the stream is created and updated, events are
//! acknowledged and stored, and a repeated `Nats-Msg-Id` is deduplicated.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use e2e::{PrivateNats, TestApi, latest_nats_server, system_nats_server};
use shared::stream::ensure_stream;
use worker::store::Outcome;

async fn the_api_works_against(binary: PathBuf) {
    let nats = PrivateNats::start_binary(binary);
    let url = nats.url();
    let api = TestApi::spawn_with(|s| s.nats.nats_url = url.clone()).await;

    let keyed = [("Idempotency-Key", "same-request")];
    for _ in 0..2 {
        let response = api
            .forgot_with("application/json", r#"{"id":"ada@example.com"}"#, &keyed)
            .await;
        assert_eq!(response.status, 200);
    }
    let response = api
        .forgot("application/x-www-form-urlencoded", r#"{"id":"string"}"#)
        .await;
    assert_eq!(response.status, 200);
    let ids: Vec<String> = api.events().await.into_iter().map(|(e, _)| e.id).collect();
    assert_eq!(ids, ["ada@example.com", "string"]);

    // Both binaries may create or update the stream concurrently, and a changed setting lands;
    // a stream an earlier release made (dropping its oldest events when full) is changed to
    // refuse new ones instead.
    let js = jetstream::new(async_nats::connect(url.as_str()).await.expect("nats"));
    let mut settings = e2e::api_settings(&api.iso).stream;
    let mut earlier = settings.stream_config();
    earlier.discard = jetstream::stream::DiscardPolicy::Old;
    js.update_stream(&earlier)
        .await
        .expect("as an earlier release left it");
    settings.retention = Duration::from_secs(5400);
    settings.max_bytes = Some(1 << 20);
    let concurrent = (0..4).map(|_| ensure_stream(&js, &settings));
    for result in futures::future::join_all(concurrent).await {
        result.expect("ensure");
    }
    let mut stream = js.get_stream(&api.iso.stream).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_age, Duration::from_secs(5400));
    assert_eq!(info.config.max_bytes, 1 << 20);
    assert_eq!(info.config.discard, jetstream::stream::DiscardPolicy::New);
    assert_eq!(info.state.messages, 2);
    api.stop().await;
}

#[tokio::test]
async fn the_api_works_against_nats_server_2_9() {
    the_api_works_against(system_nats_server()).await;
}

#[tokio::test]
async fn the_api_works_against_a_current_nats_server() {
    the_api_works_against(latest_nats_server()).await;
}

/// The worker's pull consumer, naks with delays and dead letters on a current server too.
#[tokio::test]
async fn the_worker_delivers_and_dead_letters_against_a_current_nats_server() {
    use e2e::db::TestDb;
    use e2e::sink::SmtpSink;
    use e2e::system::{TestWorker, worker_settings};

    let nats = PrivateNats::start_binary(latest_nats_server());
    let url = nats.url();
    let db = TestDb::migrated().await;
    db.account("ada").add().await;
    db.account("temp")
        .email("tempfail1@example.com")
        .add()
        .await;
    db.account("gone").email("reject@example.com").add().await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_with(|s| s.nats.nats_url = url.clone()).await;
    let mut settings = worker_settings(&api.iso, &db.url, &sink.url());
    settings.nats.nats_url = url.clone();
    let worker = TestWorker::spawn(settings);
    for id in ["ada", "temp", "gone"] {
        assert_eq!(api.forgot_id(id).await.status, 200);
    }
    let mails = sink.wait_for(2, Duration::from_secs(20)).await;
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["ada@example.com", "tempfail1@example.com"]);
    let outcomes = db.wait_for_outcomes(3).await;
    assert_eq!(outcomes, [(Outcome::Failed, 1), (Outcome::Sent, 2)]);
    worker.stop().await;
    api.stop().await;
    db.drop_db().await;
}
