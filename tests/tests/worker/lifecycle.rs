//! Starting, stopping and losing NATS: a 200 is only ever given for a stored event.

use std::time::Duration;

use async_nats::jetstream;
use e2e::{
    Isolation, PrivateNats, TestApi, api_settings, forgot_head, free_port, get, nats_url,
    open_with, read_response,
};
use shared::stream::ensure_stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BODY: &str = r#"{"id":"ada@example.com"}"#;

#[tokio::test]
async fn unreachable_nats_gives_503_and_never_200() {
    let port = free_port();
    let api = TestApi::start(|s| {
        s.nats.nats_url = format!("nats://127.0.0.1:{port}");
        s.http.publish_timeout = Duration::from_millis(500);
    })
    .await;
    for _ in 0..3 {
        let response = api.forgot("application/json", BODY).await;
        assert_eq!(response.status, 503);
        assert_eq!(response.header("retry-after"), Some("2"));
        assert!(response.message().contains("retry later"));
    }
    assert_eq!(get(api.addr, "/healthz").await.status, 200);
    let ready = get(api.addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.message().contains("NATS"));
    api.stop().await;
}

/// NATS goes away under a running api (SIGKILL), comes back, and the api carries on by itself.
#[tokio::test]
async fn a_nats_server_that_goes_away_gives_503_then_200_once_it_is_back() {
    let mut nats = PrivateNats::start();
    let url = nats.url();
    let api = TestApi::spawn_with(|s| {
        s.nats.nats_url = url.clone();
        s.http.publish_timeout = Duration::from_millis(500);
    })
    .await;
    let before = [("X-Request-Id", "before-the-kill")];
    assert_eq!(
        api.forgot_with("application/json", BODY, &before)
            .await
            .status,
        200
    );

    nats.kill();
    for _ in 0..5 {
        let response = api.forgot("application/json", BODY).await;
        assert_eq!(
            response.status, 503,
            "answered {} with NATS down",
            response.status
        );
    }

    nats.restart();
    let mut recovered = false;
    for _ in 0..100 {
        let after = [("X-Request-Id", "after-the-restart")];
        let response = api.forgot_with("application/json", BODY, &after).await;
        if response.status == 200 {
            recovered = true;
            break;
        }
        assert_eq!(response.status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the api never recovered after NATS came back");
    // Both requests answered 200 are stored: the store survived the kill. (A 503 promises
    // nothing either way, so the refused ones are not counted.)
    let stored: Vec<String> = api
        .events()
        .await
        .into_iter()
        .map(|(e, _)| e.request_id)
        .collect();
    assert!(stored.contains(&"before-the-kill".to_owned()), "{stored:?}");
    assert!(
        stored.contains(&"after-the-restart".to_owned()),
        "{stored:?}"
    );
    api.stop().await;
}

/// A request whose body is still arriving when the shutdown starts is finished and published;
/// new connections are refused.
#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let mut api = TestApi::spawn().await;
    let (head, tail) = BODY.split_at(8);
    let length = format!("Content-Length: {}\r\n", BODY.len());
    let mut stream = open_with(api.addr, &format!("{}{head}", forgot_head(&length))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(tail.as_bytes()).await.expect("write rest");
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    api.wait_stopped().await;
    assert!(
        TcpStream::connect(api.addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(api.events().await.len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn the_api_refuses_to_start_without_a_key_and_says_what_to_set() {
    let mut settings = api_settings(&Isolation::new());
    settings.auth.api_keys = None;
    let err = api::Application::build(settings)
        .await
        .expect_err("no keys, no start");
    assert!(err.to_string().contains("set API_KEYS"), "{err}");

    let mut settings = api_settings(&Isolation::new());
    settings.auth.api_keys = Some(api::config::SecretString(
        "docs:REPLACE_BEARER_TOKEN".into(),
    ));
    let err = api::Application::build(settings)
        .await
        .expect_err("the documentation's placeholder key, no start");
    assert!(err.to_string().contains("placeholder"), "{err}");

    let mut settings = api_settings(&Isolation::new());
    settings.auth.api_keys = Some(api::config::SecretString("web:short-secret".into()));
    let err = api::Application::build(settings)
        .await
        .expect_err("a weak key, no start");
    let message = err.to_string();
    assert!(message.contains("at least 16 characters"), "{message}");
    assert!(
        !message.contains("short-secret"),
        "the key is echoed: {message}"
    );
}

/// The api and several workers may all start at once; each creates or updates the same stream.
#[tokio::test]
async fn api_and_workers_starting_together_agree_on_one_stream() {
    let iso = Isolation::new();
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let js = jetstream::new(client);
    let settings = api_settings(&iso).stream;
    let attempts = (0..8).map(|_| ensure_stream(&js, &settings));
    for result in futures::future::join_all(attempts).await {
        result.expect("every concurrent ensure succeeds");
    }
    let mut stream = js.get_stream(&iso.stream).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.config.subjects, [format!("{}.>", iso.prefix)]);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);

    // A changed setting is applied to the existing stream.
    let mut longer = settings.clone();
    longer.retention = Duration::from_secs(7200);
    ensure_stream(&js, &longer).await.expect("update");
    let mut stream = js.get_stream(&iso.stream).await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").config.max_age,
        Duration::from_secs(7200)
    );
    js.delete_stream(&iso.stream).await.expect("cleanup");
}

#[tokio::test]
async fn the_worker_creates_the_stream_and_stops_cleanly_on_shutdown() {
    let iso = Isolation::new();
    let db = e2e::db::TestDb::create().await;
    let settings = e2e::system::worker_settings(&iso, &db.url, "smtp://127.0.0.1:1");
    let worker = e2e::system::TestWorker::spawn(settings);
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let mut found = false;
    for _ in 0..50 {
        if js.get_stream(&iso.stream).await.is_ok() {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the worker did not create the stream");
    worker.stop().await;
    js.delete_stream(&iso.stream).await.expect("cleanup");
    db.drop_db().await;
}

/// A client that opens a connection and sends its headers slowly (or not at all) is cut off
/// after `API_HEADER_TIMEOUT`, so slow clients cannot pin connections.
#[tokio::test]
async fn clients_that_stall_on_their_headers_are_disconnected() {
    use tokio::io::AsyncReadExt;
    let api = TestApi::spawn_with(|s| s.http.header_timeout = Duration::from_millis(300)).await;
    for partial in ["POST /auth/forgot-password HTTP/1.1\r\nHost: x\r\n", ""] {
        let mut stream = open_with(api.addr, partial).await;
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("connection still open after 5 s ({partial:?})"))
            .expect("read");
        assert!(started.elapsed() < Duration::from_secs(3), "{partial:?}");
    }
    api.stop().await;
}
