//! POST /auth/forgot-password against the real nats-server: what is accepted, what reaches the
//! stream, and every way a request is refused.

use std::time::Duration;

use e2e::{
    KEY, LABEL, TestApi, forgot_head, get, open_with, post, read_response, request, send_raw,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_json_request_is_answered_ok_and_its_event_is_in_the_stream() {
    let api = TestApi::spawn().await;
    let response = api
        .forgot_with(
            JSON,
            r#"{"id":"  ada@example.com  "}"#,
            &[("User-Agent", "tests/1.0"), ("X-Request-Id", "req-json-1")],
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, r#"{"code":200,"message":"OK"}"#);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-request-id"), Some("req-json-1"));

    let events = api.events().await;
    assert_eq!(events.len(), 1);
    let (event, headers) = &events[0];
    assert_eq!(event.version, 1);
    assert_eq!(event.id, "ada@example.com");
    assert_eq!(event.request_id, "req-json-1");
    assert_eq!(event.client.api_key_label, LABEL);
    assert_eq!(event.client.ip, Some("127.0.0.1".parse().expect("ip")));
    assert_eq!(event.client.user_agent.as_deref(), Some("tests/1.0"));
    let age = time::OffsetDateTime::now_utc() - event.requested_at;
    assert!(
        age < time::Duration::seconds(30),
        "requested_at is now: {age}"
    );
    // No Idempotency-Key, so nothing for nats-server to deduplicate.
    assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), None);
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Event-Type").as_deref(), Some("ResetRequested"));
    assert_eq!(header("Event-Version").as_deref(), Some("1"));
    assert_eq!(header("Request-Id").as_deref(), Some("req-json-1"));
    assert_eq!(header("Content-Type").as_deref(), Some("application/json"));
    // The key itself is never in the event.
    let raw = String::from_utf8(event.to_json()).expect("utf8");
    assert!(!raw.contains(KEY));
    api.stop().await;
}

#[tokio::test]
async fn xml_and_form_requests_are_accepted() {
    let api = TestApi::spawn().await;
    let published_xml =
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<item>\n  <id>xml@example.com</id>\n</item>";
    assert_eq!(
        api.forgot("application/xml", published_xml).await.status,
        200
    );
    assert_eq!(
        api.forgot("text/xml; charset=utf-8", "<item><id>text-xml</id></item>")
            .await
            .status,
        200
    );
    assert_eq!(api.forgot(FORM, "id=form%40example.com").await.status, 200);
    assert_eq!(
        api.forgot("Application/JSON; Charset=UTF-8", r#"{"id":"json"}"#)
            .await
            .status,
        200
    );
    let ids: Vec<String> = api.events().await.into_iter().map(|(e, _)| e.id).collect();
    assert_eq!(
        ids,
        ["xml@example.com", "text-xml", "form@example.com", "json"]
    );
    api.stop().await;
}

/// The curl from the published API page, run as written but for the URL: a JSON body sent
/// with the form content type.
#[tokio::test]
async fn the_published_curl_example_works_as_written() {
    // As the quick start and compose run it: a development instance with no API_KEYS.
    let api = TestApi::spawn_with(|s| {
        s.auth.api_keys = None;
        s.auth.dev_mode = true;
    })
    .await;
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--request",
            "POST",
            "--url",
            &format!("http://{}/auth/forgot-password", api.addr),
            "--header",
            "Authorization: Bearer REPLACE_BEARER_TOKEN",
            "--header",
            "content-type: application/x-www-form-urlencoded",
            "--data",
            r#"{"id":"string"}"#,
        ])
        .output()
        .await
        .expect("curl runs");
    assert!(output.status.success(), "curl failed: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        r#"{"code":200,"message":"OK"}"#
    );
    let events = api.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0.id, "string");
    assert_eq!(events[0].0.client.api_key_label, "dev");
    api.stop().await;
}

/// A second address riding along in an array or a repeated field must not be resolved to
/// either address: the whole request is refused and nothing is published.
#[tokio::test]
async fn a_second_address_in_the_body_gets_400_and_no_event() {
    let api = TestApi::spawn().await;
    let attempts = [
        (
            JSON,
            r#"{"id":["victim@example.com","attacker@example.com"]}"#,
        ),
        (
            JSON,
            r#"{"id":"victim@example.com","id":"attacker@example.com"}"#,
        ),
        (FORM, "id=victim%40example.com&id=attacker%40example.com"),
        (
            FORM,
            "id[]=victim%40example.com&id[]=attacker%40example.com",
        ),
        (
            "application/xml",
            "<item><id>victim@example.com</id><id>attacker@example.com</id></item>",
        ),
    ];
    for (content_type, body) in attempts {
        let response = api.forgot(content_type, body).await;
        assert_eq!(response.status, 400, "{body}");
        let message = response.message();
        assert!(message.contains("`id`"), "{message}");
    }
    assert!(api.events().await.is_empty());
    api.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_problem_and_publish_nothing() {
    let api = TestApi::spawn().await;
    let cases = [
        (JSON, "{\"id\":", "malformed JSON"),
        (JSON, r#"{"id":42}"#, "`id` must be a string, not a number"),
        (JSON, r#"{"id":null}"#, "`id` must be a string, not null"),
        (
            JSON,
            r#"{"id":{"a":1}}"#,
            "`id` must be a string, not an object",
        ),
        (JSON, "{}", "`id` is missing"),
        (JSON, r#"{"id":"   "}"#, "`id` is empty"),
        (JSON, r#"{"id":"a\u0000b"}"#, "control character"),
        (
            JSON,
            r#"{"id":"a","admin":true}"#,
            "unexpected field `admin`",
        ),
        (FORM, "id=a%0d%0aBcc:x", "control character"),
        (
            "application/xml",
            "<user><id>a</id></user>",
            "root element must be <item>",
        ),
        (
            "application/xml",
            r#"<!DOCTYPE item [<!ENTITY x SYSTEM "file:///etc/passwd">]><item><id>&x;</id></item>"#,
            "DOCTYPE",
        ),
    ];
    for (content_type, body, expected) in cases {
        let response = api.forgot(content_type, body).await;
        assert_eq!(response.status, 400, "{body}");
        let message = response.message();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let long = format!(r#"{{"id":"{}"}}"#, "a".repeat(255));
    let response = api.forgot(JSON, &long).await;
    assert_eq!(response.status, 400);
    assert!(response.message().contains("longer than 254"));
    assert!(api.events().await.is_empty());
    api.stop().await;
}

#[tokio::test]
async fn missing_wrong_or_other_scheme_keys_get_403() {
    let api = TestApi::spawn().await;
    let body = r#"{"id":"a"}"#;
    let cases: [Vec<(&str, String)>; 4] = [
        vec![],
        vec![("Authorization", "Bearer not-the-key-0123456789".into())],
        vec![("Authorization", format!("Basic {KEY}"))],
        vec![("Authorization", KEY.into())],
    ];
    for mut headers in cases {
        headers.push(("Content-Type", JSON.into()));
        let response = post(api.addr, "/auth/forgot-password", &headers, body).await;
        assert_eq!(response.status, 403);
        assert_eq!(
            response.body,
            r#"{"code":403,"message":"Forbidden: this operation requires authentication"}"#
        );
    }
    assert!(api.events().await.is_empty());
    api.stop().await;
}

/// The key is checked on the headers alone: a client that never sends its body still hears 403.
#[tokio::test]
async fn the_key_is_checked_before_the_body_is_read() {
    let api = TestApi::spawn().await;
    let mut stream = TcpStream::connect(api.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /auth/forgot-password HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        )
        .await
        .expect("write");
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 403);
    api.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_other_methods_405_with_allow() {
    let api = TestApi::spawn().await;
    let missing = get(api.addr, "/auth/forgot-passwords").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.message(), "Not found: the resource was not found");
    assert!(missing.header("x-request-id").is_some());

    let wrong_method = send_raw(api.addr, &request("GET", "/auth/forgot-password", &[], "")).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert!(wrong_method.message().contains("POST"));

    let put = send_raw(
        api.addr,
        &request(
            "PUT",
            "/auth/forgot-password",
            &[("Authorization", format!("Bearer {KEY}"))],
            "{}",
        ),
    )
    .await;
    assert_eq!(put.status, 405);

    let post_health = post(api.addr, "/healthz", &[], "").await;
    assert_eq!(post_health.status, 405);
    assert_eq!(post_health.header("allow"), Some("GET, HEAD"));
    api.stop().await;
}

/// A request head over 32 KiB (a 500 KB header, say) is refused with the same `{code,
/// message}` body and `x-request-id` as every other answer, and nothing is published.
#[tokio::test]
async fn oversized_headers_get_431_with_the_json_body() {
    let api = TestApi::spawn().await;
    let padded = |size: usize| {
        let padding = format!("X-Padding: {}\r\nContent-Length: 10\r\n", "a".repeat(size));
        format!("{}{{\"id\":\"a\"}}", forgot_head(&padding))
    };
    let response = send_raw(api.addr, padded(40 * 1024).as_bytes()).await;
    assert_eq!(response.status, 431);
    assert!(response.message().contains("32768 bytes"));
    assert!(response.header("x-request-id").is_some());
    // Past the 64 KiB read buffer hyper stops reading and answers 431 itself, without a
    // body: a head that size is no client's mistake, and reading on would cost memory.
    // The api may close before the client has written it all: what matters is what it read.
    let mut stream = tokio::net::TcpStream::connect(api.addr)
        .await
        .expect("connect");
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, padded(500 * 1024).as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(api.events().await.is_empty());
    api.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_without_being_read() {
    let api = TestApi::spawn_with(|s| s.http.max_body = 64).await;
    // Declared too large: refused on the header, before any body byte is sent.
    let mut stream = open_with(api.addr, &forgot_head("Content-Length: 65\r\n")).await;
    let declared = read_response(&mut stream).await;
    assert_eq!(declared.status, 413);
    assert!(declared.message().contains("64 bytes"));

    // Chunked, so no length is declared: cut off at the limit while reading.
    let body = format!(r#"{{"id":"{}"}}"#, "a".repeat(100));
    let chunked = format!(
        "{}{:x}\r\n{body}\r\n0\r\n\r\n",
        forgot_head("Transfer-Encoding: chunked\r\n"),
        body.len()
    );
    assert_eq!(send_raw(api.addr, chunked.as_bytes()).await.status, 413);

    // At the limit is fine.
    let fits = format!(r#"{{"id":"{}"}}"#, "a".repeat(64 - 9));
    assert_eq!(fits.len(), 64);
    assert_eq!(api.forgot(JSON, &fits).await.status, 200);
    assert_eq!(api.events().await.len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn other_content_types_get_415() {
    let api = TestApi::spawn().await;
    for content_type in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin1",
    ] {
        let response = api.forgot(content_type, r#"{"id":"a"}"#).await;
        assert_eq!(response.status, 415, "{content_type}");
        assert!(
            response.message().contains("UTF-8") || response.message().contains("application/json")
        );
    }
    let headers = [("Authorization", format!("Bearer {KEY}"))];
    let missing = post(api.addr, "/auth/forgot-password", &headers, r#"{"id":"a"}"#).await;
    assert_eq!(missing.status, 415);
    assert!(missing.message().contains("missing Content-Type"));
    assert!(api.events().await.is_empty());
    api.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "2/minute,burst=2".parse().expect("limit");
    })
    .await;
    assert_eq!(api.forgot(JSON, r#"{"id":"a"}"#).await.status, 200);
    assert_eq!(api.forgot(JSON, r#"{"id":"b"}"#).await.status, 200);
    let limited = api.forgot(JSON, r#"{"id":"c"}"#).await;
    assert_eq!(limited.status, 429);
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(limited.message().starts_with("too many requests"));
    assert_eq!(api.events().await.len(), 2);
    api.stop().await;
}

#[tokio::test]
async fn the_client_ip_comes_from_x_forwarded_for_only_from_a_trusted_proxy() {
    let forwarded = [("X-Forwarded-For", "203.0.113.7, 198.51.100.9")];
    // The test client connects from 127.0.0.1: a trusted proxy under the first two settings.
    for (trust, proxies, expected) in [
        (false, "127.0.0.0/8", "127.0.0.1"),
        (true, "127.0.0.0/8", "198.51.100.9"),
        (true, "10.0.0.0/8, fd00::/8", "127.0.0.1"),
    ] {
        let api = TestApi::spawn_with(|s| {
            s.http.trust_proxy = trust;
            s.http.trusted_proxies = proxies.parse().expect("proxies");
        })
        .await;
        let response = api.forgot_with(JSON, r#"{"id":"a"}"#, &forwarded).await;
        assert_eq!(response.status, 200);
        let ip = api.events().await[0].0.client.ip;
        assert_eq!(
            ip,
            Some(expected.parse().expect("ip")),
            "trust={trust} proxies={proxies}"
        );
        api.stop().await;
    }
}

#[tokio::test]
async fn an_unauthenticated_flood_spends_its_own_budget_not_the_clients() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "2/minute,burst=2".parse().expect("limit");
    })
    .await;
    let wrong = [(
        "Authorization",
        "Bearer not-a-configured-key-at-all".to_owned(),
    )];
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = post(api.addr, "/auth/forgot-password", &wrong, r#"{"id":"a"}"#).await;
        statuses.push(response.status);
    }
    assert_eq!(statuses, [403, 403, 429, 429]);
    // Same address, valid key: its budget is whole.
    assert_eq!(api.forgot(JSON, r#"{"id":"a"}"#).await.status, 200);
    assert_eq!(api.forgot(JSON, r#"{"id":"b"}"#).await.status, 200);
    assert_eq!(api.forgot(JSON, r#"{"id":"c"}"#).await.status, 429);
    assert_eq!(api.events().await.len(), 2);
    api.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_creates_no_second_event() {
    let api = TestApi::spawn().await;
    let first = [("Idempotency-Key", "reset-ada-1")];
    assert_eq!(
        api.forgot_with(JSON, r#"{"id":"ada"}"#, &first)
            .await
            .status,
        200
    );
    assert_eq!(
        api.forgot_with(JSON, r#"{"id":"ada"}"#, &first)
            .await
            .status,
        200
    );
    assert_eq!(api.events().await.len(), 1);

    let second = [("Idempotency-Key", "reset-ada-2")];
    assert_eq!(
        api.forgot_with(JSON, r#"{"id":"ada"}"#, &second)
            .await
            .status,
        200
    );
    // Without a key, every request is an event of its own.
    assert_eq!(api.forgot(JSON, r#"{"id":"ada"}"#).await.status, 200);
    assert_eq!(api.forgot(JSON, r#"{"id":"ada"}"#).await.status, 200);
    assert_eq!(api.events().await.len(), 4);

    let bad = [("Idempotency-Key", "has space")];
    let response = api.forgot_with(JSON, r#"{"id":"ada"}"#, &bad).await;
    assert_eq!(response.status, 400);
    assert!(response.message().contains("Idempotency-Key"));

    // The same key for another account is a mistake, not a retry: said so, nothing stored.
    let response = api.forgot_with(JSON, r#"{"id":"bob"}"#, &first).await;
    assert_eq!(response.status, 422);
    assert!(
        response.message().contains("another id"),
        "{}",
        response.body
    );
    assert_eq!(api.events().await.len(), 4);
    api.stop().await;
}

#[tokio::test]
async fn a_stream_that_refuses_or_is_gone_gives_503_never_200() {
    let api = TestApi::spawn().await;
    let client = async_nats::connect(&api.nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    // A stream that holds one event and refuses the next: JetStream answers the second
    // publish with an error instead of a PubAck.
    let mut stream = js.get_stream(&api.iso.stream).await.expect("stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.max_messages = 1;
    config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    js.update_stream(config).await.expect("stream update");
    assert_eq!(api.forgot(JSON, r#"{"id":"ada"}"#).await.status, 200);
    let refused = api.forgot(JSON, r#"{"id":"bob"}"#).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(api.events().await.len(), 1);

    // No stream at all: nothing answers the publish.
    js.delete_stream(&api.iso.stream)
        .await
        .expect("stream delete");
    let missing = api.forgot(JSON, r#"{"id":"cy"}"#).await;
    assert_eq!(missing.status, 503, "{}", missing.body);
    api.stop().await;
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_and_any_other_replaced() {
    let api = TestApi::spawn().await;
    let kept = api
        .forgot_with(JSON, r#"{"id":"a"}"#, &[("X-Request-Id", "trace-123")])
        .await;
    assert_eq!(kept.header("x-request-id"), Some("trace-123"));
    let replaced = api
        .forgot_with(JSON, r#"{"id":"a"}"#, &[("X-Request-Id", "<script>")])
        .await;
    let generated = replaced.header("x-request-id").expect("request id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    let events = api.events().await;
    assert_eq!(events[1].0.request_id, generated);
    api.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let api = TestApi::spawn().await;
    let health = get(api.addr, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, r#"{"code":200,"message":"OK"}"#);
    assert_eq!(get(api.addr, "/readyz").await.status, 200);
    api.stop().await;
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let api = TestApi::spawn_with(|s| s.http.body_timeout = Duration::from_millis(300)).await;
    let head = forgot_head("Content-Length: 10\r\n");
    let mut stream = open_with(api.addr, &format!("{head}{{\"id\"")).await;
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 408);
    assert!(api.events().await.is_empty());
    api.stop().await;
}
