//! The same behaviour on Debian's nats-server 2.9 (what this machine runs) and on a current
//! 2.15 (what production images ship): the stream is created and updated, events are
//! acknowledged and stored, and a repeated `Nats-Msg-Id` is deduplicated.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use e2e::{PrivateNats, TestApi, latest_nats_server, system_nats_server};
use shared::stream::ensure_stream;

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

    // Both binaries may create or update the stream concurrently, and a changed setting lands.
    let js = jetstream::new(async_nats::connect(url.as_str()).await.expect("nats"));
    let mut settings = e2e::api_settings(&api.iso).stream;
    settings.retention = Duration::from_secs(5400);
    let concurrent = (0..4).map(|_| ensure_stream(&js, &settings));
    for result in futures::future::join_all(concurrent).await {
        result.expect("ensure");
    }
    let mut stream = js.get_stream(&api.iso.stream).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_age, Duration::from_secs(5400));
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
