//! `openapi.yaml` against the api that serves it: the document parses, the api serves it as it
//! is, every operation in it is served, and every status the router produces — driven here one
//! by one against the real api — is documented for its operation, with the documented headers,
//! media type and body shape.
//!
//! Not driven: 500, which only a panic in a handler produces (its shape is a unit test in
//! `api::http::reply`).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use e2e::system::System;
use e2e::{KEY, RawResponse, TestApi, free_port, read_response, request, send_raw};
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../../../openapi.yaml");
const FORGOT: &str = "/auth/forgot-password";
const VERIFY: &str = "/auth/reset-password/verify";
const RESET: &str = "/auth/reset-password";
const PAGE: &str = "/reset-password";
const NEW_LINK: &str = "/reset-password/new-link";
const CODE: &str = "/reset-password/code";
const REPORT: &str = "/reset-password/report";
const FORM: &str = "application/x-www-form-urlencoded";
const WAIT: Duration = Duration::from_secs(20);

fn document() -> Value {
    serde_yaml::from_str(DOCUMENT).expect("openapi.yaml parses as YAML")
}

/// Follows a local `$ref` (`#/components/...`), however deep.
fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("a local $ref");
        node = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} points nowhere"));
    }
    node
}

/// Checks `value` against the subset of JSON Schema the document uses.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let object = value
                .as_object()
                .ok_or_else(|| format!("{at}: not an object"))?;
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !object.contains_key(name) {
                    return Err(format!("{at}: `{name}` is missing"));
                }
            }
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(sub) => validate(doc, sub, field, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return Err(format!("{at}: `{name}` is not in the schema"));
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Some("string") if !value.is_string() => Err(format!("{at}: not a string")),
        Some("integer") if !value.is_i64() => Err(format!("{at}: not an integer")),
        _ => Ok(()),
    }
}

/// What the api answered to one request, and where.
struct Seen {
    method: &'static str,
    path: String,
    response: RawResponse,
}

/// Checks one answer against the document and returns its status.
fn conforms(doc: &Value, seen: &Seen) -> u16 {
    let Seen {
        method,
        path,
        response,
    } = seen;
    let status = response.status;
    let what = format!("{method} {path} → {status}");
    let spec = match status {
        404 => resolve(doc, &doc["components"]["responses"]["NotFound"]),
        405 => resolve(doc, &doc["components"]["responses"]["MethodNotAllowed"]),
        _ => {
            let operation = &doc["paths"][path.as_str()][method.to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{what}: no such operation documented"
            );
            let spec = &operation["responses"][status.to_string()];
            assert!(spec.is_object(), "{what}: status not documented");
            resolve(doc, spec)
        }
    };
    for (name, header) in spec["headers"].as_object().into_iter().flatten() {
        if resolve(doc, header)["required"] == json!(true) {
            assert!(
                response.header(name).is_some_and(|v| !v.is_empty()),
                "{what}: documented header {name} is missing"
            );
        }
    }
    if let Some(retry_after) = response.header("retry-after") {
        assert!(
            retry_after.bytes().all(|b| b.is_ascii_digit()),
            "{what}: Retry-After {retry_after:?} is not seconds"
        );
    }
    match spec["content"].as_object() {
        None => assert!(
            response.body.is_empty(),
            "{what}: no body documented, got {:?}",
            response.body
        ),
        Some(content) => {
            let media = response.header("content-type").unwrap_or_default();
            let documented = content
                .get(media)
                .unwrap_or_else(|| panic!("{what}: Content-Type {media:?} not documented"));
            if media == "application/json" {
                let body: Value = serde_json::from_str(&response.body)
                    .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
                if let Err(err) = validate(doc, &documented["schema"], &body, "body") {
                    panic!("{what}: {err}: {body}");
                }
                assert_eq!(body["code"], status, "{what}: code repeats the status");
            }
        }
    }
    status
}

async fn call(
    api: &TestApi,
    method: &'static str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Seen {
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let response = send_raw(api.addr, &request(method, path, &headers, body)).await;
    // Operations are documented by path; a query is a parameter.
    let path = path.split('?').next().unwrap_or(path);
    Seen {
        method,
        path: path.to_owned(),
        response,
    }
}

fn bearer() -> String {
    format!("Bearer {KEY}")
}

/// A POST with the test key.
async fn post(api: &TestApi, path: &str, media: &str, body: &str) -> Seen {
    let auth = bearer();
    call(
        api,
        "POST",
        path,
        &[("Authorization", &auth), ("Content-Type", media)],
        body,
    )
    .await
}

/// The documented operations, as (method, path).
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "head", "post", "put", "patch", "delete", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_parses_and_every_reference_resolves() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    fn walk(doc: &Value, node: &Value) {
        match node {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, node);
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    walk(&doc, &doc);
    // Every operation names every response it gives with a {code, message} body or none.
    for (method, path) in operations(&doc) {
        let operation = &doc["paths"][&path][method.to_ascii_lowercase()];
        assert!(operation["operationId"].is_string(), "{method} {path}");
        assert!(operation["responses"]["200"].is_object(), "{method} {path}");
    }
    // The published example, a JSON body sent with the form media type, is among the examples.
    let form = &doc["paths"][FORGOT]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
        ["examples"];
    assert_eq!(form["json-in-form"]["value"], r#"{"id":"string"}"#);
}

#[tokio::test]
async fn every_status_the_api_answers_is_documented_for_its_operation() {
    let doc = document();
    let system = System::start().await;
    system.db.account("ada").name("Ada").add().await;
    let api = &system.api;
    let auth = bearer();
    let mut seen = Vec::new();

    // Each media type, the published curl's JSON-in-form, and bodies refused for their size,
    // media type or content.
    let big = format!(r#"{{"id":"{}"}}"#, "a".repeat(5000));
    let forgot_bodies = [
        ("application/json", r#"{"id":"ada"}"#),
        ("application/xml", "<item><id>nobody</id></item>"),
        ("application/x-www-form-urlencoded", "id=nobody"),
        ("application/x-www-form-urlencoded", r#"{"id":"x"}"#),
        ("application/json", &big),
        ("text/plain", "id"),
        ("application/json", r#"{"id":""}"#),
        ("application/xml", "<!DOCTYPE x><item/>"),
    ];
    for (media, body) in forgot_bodies {
        seen.push(post(api, FORGOT, media, body).await);
    }
    // No key; a malformed Idempotency-Key.
    seen.push(
        call(
            api,
            "POST",
            FORGOT,
            &[("Content-Type", "application/json")],
            "{}",
        )
        .await,
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "has space"),
    ];
    seen.push(call(api, "POST", FORGOT, &headers, r#"{"id":"a"}"#).await);

    // Completing the reset with the mailed token.
    let mail = system.sink.wait_for(1, WAIT).await;
    let token = mail.first().expect("the reset mail").token();
    let verify_body = json!({ "token": token }).to_string();
    seen.push(post(api, VERIFY, "application/json", &verify_body).await);
    seen.push(post(api, VERIFY, "application/json", r#"{"token":"forged"}"#).await);
    seen.push(post(api, VERIFY, "text/plain", "token").await);
    seen.push(
        call(
            api,
            "POST",
            VERIFY,
            &[("Content-Type", "application/json")],
            "{}",
        )
        .await,
    );
    // The page, with the same token: the link opens the form carrying it; without a link
    // the code form; a mismatch; posts from another site.
    let code = mail.first().expect("the reset mail").code();
    seen.push(call(api, "GET", &format!("{PAGE}?token={token}"), &[], "").await);
    seen.push(call(api, "GET", PAGE, &[], "").await);
    seen.push(call(api, "HEAD", PAGE, &[], "").await);
    let form_only = [("Content-Type", FORM)];
    seen.push(
        call(
            api,
            "POST",
            PAGE,
            &form_only,
            &format!("token={token}&password=one+two&confirm=two+one"),
        )
        .await,
    );
    seen.push(call(api, "POST", PAGE, &form_only, &"x".repeat(5000)).await);
    seen.push(call(api, "POST", PAGE, &[("Content-Type", "text/plain")], "p").await);
    let cross = [("Content-Type", FORM), ("Sec-Fetch-Site", "cross-site")];
    for path in [PAGE, CODE, NEW_LINK] {
        seen.push(call(api, "POST", path, &cross, "id=ada").await);
    }
    seen.push(
        call(
            api,
            "POST",
            CODE,
            &form_only,
            &format!("id=ada&code={code}"),
        )
        .await,
    );
    seen.push(call(api, "POST", CODE, &form_only, "id=ada&code=wrong").await);
    seen.push(call(api, "POST", NEW_LINK, &[("Content-Type", FORM)], "id=ada").await);
    seen.push(call(api, "POST", NEW_LINK, &[("Content-Type", FORM)], "id=").await);
    let weak = json!({ "token": token, "password": "short" }).to_string();
    seen.push(post(api, RESET, "application/json", &weak).await);
    let form = format!("token={token}&password=correct+horse+battery+staple");
    seen.push(post(api, RESET, "application/x-www-form-urlencoded", &form).await);
    seen.push(
        post(
            api,
            RESET,
            "application/xml",
            "<item><token>x</token></item>",
        )
        .await,
    );

    // The mail's report link: its page, the report, made-up ones, another site's post.
    let secret = mail.first().expect("the reset mail").report_secret();
    seen.push(call(api, "GET", &format!("{REPORT}?r={secret}"), &[], "").await);
    seen.push(call(api, "HEAD", &format!("{REPORT}?r={secret}"), &[], "").await);
    seen.push(call(api, "GET", &format!("{REPORT}?r=forged"), &[], "").await);
    seen.push(call(api, "POST", REPORT, &form_only, &format!("r={secret}")).await);
    seen.push(call(api, "POST", REPORT, &form_only, "r=forged").await);
    seen.push(call(api, "POST", REPORT, &cross, &format!("r={secret}")).await);

    // The token is used: the page's form now gets the dead-link page.
    seen.push(
        call(
            api,
            "POST",
            PAGE,
            &form_only,
            &format!("token={token}&password=a&confirm=a"),
        )
        .await,
    );

    // Operations, for GET and HEAD.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml"] {
        seen.push(call(api, "GET", path, &[], "").await);
        seen.push(call(api, "HEAD", path, &[], "").await);
    }
    // An unknown path; and each path with methods it does not serve.
    seen.push(call(api, "GET", "/auth/nothing-here", &[], "").await);
    let ops = operations(&doc);
    let paths: BTreeSet<&str> = ops.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let documented = ops.contains(&(method.to_owned(), path.to_owned()));
            if !documented {
                let answer = call(api, method, path, &[], "").await;
                assert_eq!(answer.response.status, 405, "{method} {path}");
                let allow: BTreeSet<String> = answer
                    .response
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .collect();
                let served: BTreeSet<String> = ops
                    .iter()
                    .filter(|(_, p)| p == path)
                    .map(|(m, _)| m.clone())
                    .collect();
                assert_eq!(
                    allow, served,
                    "Allow on {path} lists the documented methods"
                );
                seen.push(answer);
            }
        }
    }

    let mut statuses: HashSet<(String, String, u16)> = HashSet::new();
    for answer in &seen {
        let status = conforms(&doc, answer);
        statuses.insert((answer.method.to_owned(), answer.path.clone(), status));
    }
    // The document is served unchanged, and every documented operation answers 200.
    let served = seen
        .iter()
        .find(|s| s.method == "GET" && s.path == "/openapi.yaml")
        .expect("fetched");
    assert_eq!(served.response.body, DOCUMENT);
    for (method, path) in ops {
        assert!(
            statuses.contains(&(method.clone(), path.clone(), 200)),
            "{method} {path} never answered 200"
        );
    }
    let expected: [(&str, &str, &[u16]); 10] = [
        ("POST", FORGOT, &[200, 400, 403, 413, 415]),
        ("POST", VERIFY, &[200, 400, 403, 415]),
        ("POST", RESET, &[200, 400]),
        ("GET", PAGE, &[200]),
        ("HEAD", PAGE, &[200]),
        ("POST", PAGE, &[200, 400, 403, 413, 415]),
        ("POST", CODE, &[200, 400, 403]),
        ("POST", NEW_LINK, &[200, 400, 403]),
        ("GET", REPORT, &[200]),
        ("POST", REPORT, &[200, 403]),
    ];
    for (method, path, codes) in expected {
        for &code in codes {
            assert!(
                statuses.contains(&(method.to_owned(), path.to_owned(), code)),
                "{method} {path} was expected to answer {code}"
            );
        }
    }
    system.stop().await;
}

/// The statuses only a particular setting or an outage produces: 408, 429 and 503.
#[tokio::test]
async fn timeouts_limits_and_outages_are_documented_too() {
    let doc = document();
    let mut seen = Vec::new();

    let slow = TestApi::spawn_with(|s| {
        s.http.body_timeout = Duration::from_millis(300);
        s.http.rate_limit = "1/minute,burst=1".parse().expect("limit");
    })
    .await;
    for path in [FORGOT, VERIFY] {
        let auth = bearer();
        // A body announced as 10 bytes of which only 5 arrive.
        let headers = [
            ("Authorization", auth),
            ("Content-Type", "application/json".to_owned()),
        ];
        let head = String::from_utf8(request("POST", path, &headers, "")).expect("ascii");
        let head = head.replace("Content-Length: 0", "Content-Length: 10");
        let mut stream = e2e::open_with(slow.addr, &format!("{head}{{\"id\"")).await;
        let response = read_response(&mut stream).await;
        seen.push(Seen {
            method: "POST",
            path: path.to_owned(),
            response,
        });
        // The first request spent the budget of that endpoint's limiter.
        seen.push(post(&slow, path, "application/json", r#"{"id":"a"}"#).await);
    }
    // The page's link checks and code form share the reset endpoints' budget, per address.
    let link = format!("{PAGE}?token=made-up");
    seen.push(call(&slow, "GET", &link, &[], "").await);
    seen.push(call(&slow, "GET", &link, &[], "").await);
    let form = [("Content-Type", FORM)];
    seen.push(call(&slow, "POST", CODE, &form, "id=a&code=b").await);
    slow.stop().await;

    // NATS unreachable: not ready, and nothing accepted; PostgreSQL unreachable (the test
    // default): the reset endpoints cannot answer either.
    let port = free_port();
    let down = TestApi::start(|s| s.nats.nats_url = format!("nats://127.0.0.1:{port}")).await;
    seen.push(call(&down, "GET", "/readyz", &[], "").await);
    seen.push(call(&down, "HEAD", "/readyz", &[], "").await);
    seen.push(post(&down, FORGOT, "application/json", r#"{"id":"a"}"#).await);
    // A token of the minted shape, so that the api has to ask the database about it.
    let token = "A".repeat(43);
    seen.push(
        post(
            &down,
            VERIFY,
            "application/json",
            &json!({ "token": token }).to_string(),
        )
        .await,
    );
    let reset = json!({ "token": token, "password": "correct horse battery staple" }).to_string();
    seen.push(post(&down, RESET, "application/json", &reset).await);
    down.stop().await;

    let statuses: Vec<(&str, &str, u16)> = seen
        .iter()
        .map(|s| (s.method, s.path.as_str(), conforms(&doc, s)))
        .collect();
    assert_eq!(
        statuses,
        [
            ("POST", FORGOT, 408),
            ("POST", FORGOT, 429),
            ("POST", VERIFY, 408),
            ("POST", VERIFY, 429),
            ("GET", PAGE, 200),
            ("GET", PAGE, 429),
            ("POST", CODE, 429),
            ("GET", "/readyz", 503),
            ("HEAD", "/readyz", 503),
            ("POST", FORGOT, 503),
            ("POST", VERIFY, 503),
            ("POST", RESET, 503),
        ]
    );
}
