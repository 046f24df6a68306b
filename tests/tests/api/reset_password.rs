//! Completing a reset: from a real request to a real mail, the token out of the mail, verify,
//! reset, the stored Argon2id hash, and the "password changed" notification.

use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use e2e::system::System;
use e2e::{RawResponse, TestApi};
use serde_json::json;

const VERIFY: &str = "/auth/reset-password/verify";
const RESET: &str = "/auth/reset-password";
const INVALID: &str = r#"{"code":400,"message":"invalid or expired token"}"#;
const WAIT: Duration = Duration::from_secs(20);

/// Requests a reset for `id` and returns the token from the mail.
async fn mailed_token(system: &System, id: &str, mails_before: usize) -> String {
    assert_eq!(system.api.forgot_id(id).await.status, 200);
    let mails = system.sink.wait_for(mails_before + 1, WAIT).await;
    assert_eq!(mails.len(), mails_before + 1, "the reset mail arrived");
    mails[mails_before].token()
}

async fn verify(api: &TestApi, token: &str) -> RawResponse {
    api.post_json(VERIFY, json!({ "token": token })).await
}

async fn reset(api: &TestApi, token: &str, password: &str) -> RawResponse {
    api.post_json(RESET, json!({ "token": token, "password": password }))
        .await
}

async fn stored_hash(system: &System, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_one(&system.db.pool)
        .await
        .expect("account")
}

#[tokio::test]
async fn a_mailed_token_verifies_resets_once_and_the_owner_is_told() {
    let system = System::start().await;
    system.db.account("ada").name("Ada").add().await;
    let token = mailed_token(&system, "ada", 0).await;

    // Verifying consumes nothing: twice is fine.
    for _ in 0..2 {
        let verified = verify(&system.api, &token).await;
        assert_eq!(
            (verified.status, verified.body.as_str()),
            (200, r#"{"code":200,"message":"OK"}"#)
        );
    }
    let done = reset(&system.api, &token, "correct horse battery staple").await;
    assert_eq!(done.status, 200, "{}", done.body);

    let phc = stored_hash(&system, "ada").await.expect("a password hash");
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let parsed = PasswordHash::new(&phc).expect("a PHC string");
    assert!(
        Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"something else", &parsed)
            .is_err()
    );

    // Used: the same answer as any invalid token, for verify and reset alike.
    assert_eq!(
        reset(&system.api, &token, "another fine password")
            .await
            .body,
        INVALID
    );
    assert_eq!(verify(&system.api, &token).await.body, INVALID);

    let mails = system.sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the notification arrived");
    let notice = &mails[1];
    assert_eq!(notice.to, "ada@example.com");
    assert_eq!(notice.subject, "Your Example password was changed");
    assert!(notice.text.contains("127.0.0.1"), "{}", notice.text);
    // The requester's User-Agent is text anyone chooses: never in a mail.
    assert!(!notice.text.contains("tests/1.0"), "{}", notice.text);
    assert!(notice.text.contains("support@example.com"));
    assert!(
        !notice.raw.contains("correct horse"),
        "the password is in the notification"
    );
    // Each event names its own type and request in its headers: the reset request's id,
    // then the id the reset itself was answered with.
    let messages = system.api.messages().await;
    let headers: Vec<Vec<Option<String>>> = messages
        .iter()
        .map(|message| {
            ["Event-Type", "Event-Version", "Content-Type", "Request-Id"]
                .iter()
                .map(|name| message.headers.get(*name).map(|v| v.as_str().to_owned()))
                .collect()
        })
        .collect();
    let requested = shared::event::ResetRequested::decode(&messages[0].payload)
        .expect("the first event is the reset request");
    let expected = |kind: &str, request_id: &str| {
        [kind, "1", "application/json", request_id]
            .map(|v| Some(v.to_owned()))
            .to_vec()
    };
    assert_eq!(
        headers,
        [
            expected("ResetRequested", &requested.request_id),
            expected(
                "PasswordChanged",
                done.header("x-request-id").expect("a request id")
            )
        ]
    );
    // The mail can land a moment before the worker records it as sent.
    system.db.wait_for_outcomes(2).await;
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, outcome FROM reset_requests ORDER BY created_at")
            .fetch_all(&system.db.pool)
            .await
            .expect("records");
    assert_eq!(
        kinds,
        [
            ("reset".to_owned(), "sent".to_owned()),
            ("password_changed".to_owned(), "sent".to_owned())
        ]
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&system.db.pool)
        .await
        .expect("outbox");
    assert_eq!(outbox, 0, "the event left the outbox");
    system.stop().await;
}

#[tokio::test]
async fn forged_expired_superseded_and_stale_tokens_all_get_the_same_400() {
    let system = System::start_with(|s| {
        s.policy.cooldown = Duration::ZERO;
        s.policy.token_ttl = Duration::from_secs(600);
    })
    .await;
    system.db.account("ada").add().await;
    system.db.account("bob").add().await;

    let forged = "A".repeat(43);
    for attempt in [forged.as_str(), "short", "' OR 1=1 --"] {
        assert_eq!(
            verify(&system.api, attempt).await.body,
            INVALID,
            "{attempt}"
        );
        assert_eq!(
            reset(&system.api, attempt, "long enough password")
                .await
                .body,
            INVALID
        );
    }
    // The token is looked at before the password: no one without a live token gets a
    // strength estimate (which costs CPU), however weak or however costly their password.
    let costly = "4@8({[</369&#!1/|0$5+7%2/".repeat(4);
    for password in ["password", &costly[..100]] {
        assert_eq!(reset(&system.api, &forged, password).await.body, INVALID);
    }

    // Superseded: a newer mail's token replaces the older one.
    let older = mailed_token(&system, "ada", 0).await;
    let newer = mailed_token(&system, "ada", 1).await;
    assert_eq!(verify(&system.api, &older).await.body, INVALID);
    assert_eq!(
        reset(&system.api, &older, "long enough password")
            .await
            .body,
        INVALID
    );
    assert_eq!(verify(&system.api, &newer).await.status, 200);

    // Stale: the password was changed by another path (the product's settings page).
    sqlx::query("UPDATE accounts SET password_hash = 'changed-elsewhere' WHERE id = 'ada'")
        .execute(&system.db.pool)
        .await
        .expect("update");
    assert_eq!(verify(&system.api, &newer).await.body, INVALID);

    // Expired: TOKEN_TTL (600 s here) sets its end; that end moved into the past rather
    // than waited for.
    let bobs = mailed_token(&system, "bob", 2).await;
    assert_eq!(verify(&system.api, &bobs).await.status, 200);
    let lives: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM reset_tokens WHERE account_id = 'bob'",
    )
    .fetch_one(&system.db.pool)
    .await
    .expect("lifetime");
    assert!(
        (lives - 600.0).abs() < 5.0,
        "a token lives TOKEN_TTL: {lives} s"
    );
    sqlx::query(
        "UPDATE reset_tokens SET expires_at = now() - interval '1 second' WHERE account_id = 'bob'",
    )
    .execute(&system.db.pool)
    .await
    .expect("expire");
    assert_eq!(verify(&system.api, &bobs).await.body, INVALID);
    assert_eq!(
        reset(&system.api, &bobs, "long enough password").await.body,
        INVALID
    );
    assert_eq!(
        stored_hash(&system, "bob").await,
        None,
        "nothing was changed"
    );
    system.stop().await;
}

/// A link in a mailbox the account has left behind (a former employer's, a recycled one)
/// must not take the account over.
#[tokio::test]
async fn a_token_stops_working_when_the_account_moves_to_another_address() {
    let system = System::start_with(|s| s.policy.cooldown = Duration::ZERO).await;
    system
        .db
        .account("ada")
        .email("ada@old.example")
        .add()
        .await;
    let token = mailed_token(&system, "ada", 0).await;
    assert_eq!(verify(&system.api, &token).await.status, 200);
    sqlx::query("UPDATE accounts SET email = 'ada@new.example' WHERE id = 'ada'")
        .execute(&system.db.pool)
        .await
        .expect("update");
    assert_eq!(verify(&system.api, &token).await.body, INVALID);
    assert_eq!(
        reset(&system.api, &token, "long enough password")
            .await
            .body,
        INVALID
    );
    assert_eq!(
        stored_hash(&system, "ada").await,
        None,
        "nothing was changed"
    );
    // A link mailed to the new address works.
    let fresh = mailed_token(&system, "ada", 1).await;
    assert_eq!(
        reset(&system.api, &fresh, "long enough password")
            .await
            .status,
        200
    );
    system.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_uses_of_one_token_give_exactly_one_200() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let token = mailed_token(&system, "ada", 0).await;
    let attempts = (0..20).map(|n| {
        let api = &system.api;
        let token = token.clone();
        async move { reset(api, &token, &format!("concurrent password {n}")).await }
    });
    let responses = futures::future::join_all(attempts).await;
    let ok: Vec<&RawResponse> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        ok.len(),
        1,
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        responses
            .iter()
            .filter(|r| r.status != 200)
            .all(|r| r.body == INVALID)
    );
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reset_requests WHERE kind = 'password_changed'")
            .fetch_one(&system.db.pool)
            .await
            .unwrap_or(0);
    assert!(changed <= 1);
    system.stop().await;
}

#[tokio::test]
async fn the_password_policy_names_the_rule_that_failed() {
    let system = System::start().await;
    system
        .db
        .account("ada-account")
        .email("ada@example.com")
        .add()
        .await;
    let token = mailed_token(&system, "ada-account", 0).await;
    let cases = [
        ("short", "password must be at least 8 characters"),
        (
            &"x".repeat(129) as &str,
            "password must be at most 128 characters",
        ),
        (
            "ADA@example.com",
            "password must not be the account's id or email",
        ),
        (
            "ada-account",
            "password must not be the account's id or email",
        ),
        (
            "password1",
            "password is too easy to guess: this is a very common password. Add another word or two that are not a quote.",
        ),
        (
            "12345678",
            "password is too easy to guess: this is a top-10 common password. Add another word or two that are not a quote.",
        ),
        (
            &"🔑".repeat(8),
            "password is too easy to guess: repeats like \"aaa\" are easy to guess. Add another word or two that are not a quote.",
        ),
    ];
    for (password, message) in cases {
        let response = reset(&system.api, &token, password).await;
        assert_eq!(response.status, 400);
        assert_eq!(response.message(), message);
    }
    // The refused attempts did not use the token; any characters are fine, and counted as
    // characters after NFKC (the decomposed ü is one).
    assert_eq!(
        reset(&system.api, &token, "Gru\u{308}ße, 🔑 im Schloss")
            .await
            .status,
        200
    );
    system.stop().await;
}

#[tokio::test]
async fn the_reset_endpoints_check_keys_fields_and_rate_like_forgot_password() {
    let api = TestApi::spawn_with(|s| {
        s.http.rate_limit = "3/minute,burst=3".parse().expect("limit");
    })
    .await;
    let no_key = e2e::post(
        api.addr,
        VERIFY,
        &[("Content-Type", "application/json".into())],
        r#"{"token":"x"}"#,
    )
    .await;
    assert_eq!(no_key.status, 403);
    let missing = api.post_json(RESET, json!({ "token": "x" })).await;
    assert_eq!(
        (missing.status, missing.message()),
        (400, "`password` is missing".to_owned())
    );
    let get = e2e::get(api.addr, RESET).await;
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
    assert_eq!(verify(&api, "anything").await.body, INVALID);
    // The request without a key was counted in a budget of its own: two keyed ones so far.
    assert_eq!(verify(&api, "anything").await.body, INVALID);
    let limited = verify(&api, "anything").await;
    assert_eq!(
        limited.status, 429,
        "the fourth keyed attempt from one client"
    );
    assert!(limited.header("retry-after").is_some());
    api.stop().await;
}

/// PostgreSQL down: forgot-password keeps working (it needs only NATS); the reset endpoints
/// say 503, not 400, so a client knows to retry.
#[tokio::test]
async fn without_the_database_forgot_password_works_and_resets_answer_503() {
    let api = TestApi::spawn().await;
    assert_eq!(api.forgot_id("ada").await.status, 200);
    let token = "A".repeat(43);
    let verified = verify(&api, &token).await;
    assert_eq!(verified.status, 503);
    assert_eq!(verified.header("retry-after"), Some("2"));
    assert_eq!(
        reset(&api, &token, "long enough password").await.status,
        503
    );
    api.stop().await;
}

/// A password change committed but not yet published (the api stopped in between, or NATS
/// was down) is published from the outbox later, and the owner still hears of it.
#[tokio::test]
async fn a_queued_notification_is_relayed_from_the_outbox() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let event = shared::event::PasswordChanged::new(
        "ada".into(),
        "queued-before-a-crash".into(),
        e2e::client_context(),
    );
    sqlx::query(
        "INSERT INTO event_outbox (event_id, subject, payload, created_at)
         VALUES ($1, $2, $3, now() - interval '1 minute')",
    )
    .bind(event.event_id)
    .bind(format!("{}.changed", system.api.iso.prefix))
    .bind(event.to_json())
    .execute(&system.db.pool)
    .await
    .expect("queue");
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].subject, "Your Example password was changed");
    system.stop().await;
}

const INVALID_CODE: &str = r#"{"code":400,"message":"invalid or expired code"}"#;

/// Posts `body` to `path` with the test key, as `content_type`.
async fn post_as(api: &TestApi, path: &str, content_type: &str, body: &str) -> RawResponse {
    let headers = [
        ("Authorization", format!("Bearer {}", e2e::KEY)),
        ("Content-Type", content_type.to_owned()),
    ];
    e2e::post(api.addr, path, &headers, body).await
}

#[tokio::test]
async fn the_mailed_code_stands_for_the_token_in_every_media_type() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = &system.sink.wait_for(1, WAIT).await[0];
    let (code, token) = (mail.code(), mail.token());
    // As people type it: lower case, a space for the hyphen, or nothing between.
    let typed = code.to_lowercase().replace('-', " ");
    let plain = code.replace('-', "");
    let api = &system.api;
    for (content_type, body) in [
        (
            "application/json",
            json!({"id": "ada", "code": typed}).to_string(),
        ),
        (
            "application/xml",
            format!("<item><id>ada@example.com</id><code>{plain}</code></item>"),
        ),
        (
            "application/x-www-form-urlencoded",
            format!("id=ada&code={}", typed.replace(' ', "+")),
        ),
    ] {
        let verified = post_as(api, VERIFY, content_type, &body).await;
        assert_eq!(verified.status, 200, "{content_type}: {}", verified.body);
    }
    // Not both secrets at once, and not half of the second.
    let both = json!({"token": token, "id": "ada", "code": code});
    assert_eq!(api.post_json(VERIFY, both).await.status, 400);
    let half = api.post_json(VERIFY, json!({"id": "ada"})).await;
    assert_eq!(half.message(), "`code` is missing");

    let done = post_as(
        api,
        RESET,
        "application/xml",
        &format!("<item><id>ada</id><code>{code}</code><password>correct horse battery staple</password></item>"),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        system
            .db
            .password_verifies("ada", "correct horse battery staple")
            .await
    );
    // Using the code used the link.
    assert_eq!(verify(api, &token).await.body, INVALID);
    let again = api
        .post_json(VERIFY, json!({"id": "ada", "code": code}))
        .await;
    assert_eq!(again.body, INVALID_CODE);
    system.stop().await;
}

#[tokio::test]
async fn five_wrong_codes_kill_the_code_and_its_link_and_say_nothing_of_the_account() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    system.db.account("bob").add().await;
    let token = mailed_token(&system, "ada", 0).await;
    let code = system.sink.messages()[0].code();
    let api = &system.api;
    let wrong = if code.starts_with('2') {
        "3333-3333"
    } else {
        "2222-2222"
    };

    // A wrong code for a live one, a code for an account with none, for no account at all,
    // and something that cannot be a code: one answer, byte for byte.
    let unknown = api
        .post_json(VERIFY, json!({"id": "nobody@example.com", "code": code}))
        .await;
    let no_live = api
        .post_json(VERIFY, json!({"id": "bob", "code": code}))
        .await;
    let garbled = api
        .post_json(VERIFY, json!({"id": "ada", "code": "x"}))
        .await;
    let first_wrong = api
        .post_json(VERIFY, json!({"id": "ada", "code": wrong}))
        .await;
    for answer in [&unknown, &no_live, &garbled, &first_wrong] {
        assert_eq!((answer.status, answer.body.as_str()), (400, INVALID_CODE));
    }
    // Four more wrong ones, by verify and by reset alike; sent at once, each is counted.
    let guesses = (0..4).map(|n| {
        let body = if n % 2 == 0 {
            json!({"id": "ada", "code": wrong})
        } else {
            json!({"id": "ada@example.com", "code": wrong, "password": "correct horse battery staple"})
        };
        api.post_json(if n % 2 == 0 { VERIFY } else { RESET }, body)
    });
    for answer in futures::future::join_all(guesses).await {
        assert_eq!(answer.body, INVALID_CODE);
    }
    // The fifth wrong code killed the right one, and its link with it.
    let right = api
        .post_json(VERIFY, json!({"id": "ada", "code": code}))
        .await;
    assert_eq!(right.body, INVALID_CODE);
    assert_eq!(verify(api, &token).await.body, INVALID);
    assert_eq!(
        stored_hash(&system, "ada").await,
        None,
        "nothing was changed"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_newer_request_supersedes_the_link_and_the_code_of_the_one_before() {
    let system = System::start_with(|s| s.policy.cooldown = Duration::ZERO).await;
    system.db.account("ada").add().await;
    let first = mailed_token(&system, "ada", 0).await;
    let first_code = system.sink.messages()[0].code();
    let second = mailed_token(&system, "ada", 1).await;
    let second_code = system.sink.messages()[1].code();
    assert_ne!(first_code, second_code);
    let api = &system.api;
    assert_eq!(verify(api, &first).await.body, INVALID);
    let old = api
        .post_json(VERIFY, json!({"id": "ada", "code": first_code}))
        .await;
    assert_eq!(old.body, INVALID_CODE);
    assert_eq!(verify(api, &second).await.status, 200);
    let new = api
        .post_json(VERIFY, json!({"id": "ada", "code": second_code}))
        .await;
    assert_eq!(new.status, 200);
    system.stop().await;
}

/// The api's own database role (granted by `reset_grant_api`) reads no account or token and
/// writes none: it sets a password only through `reset_complete`, and only with a live token.
#[tokio::test]
async fn the_api_role_sets_a_password_only_with_a_live_token() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let db = e2e::db::TestDb::migrated().await;
    db.account("ada").add().await;
    let role = format!("api_{}", uuid::Uuid::now_v7().simple());
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("SELECT reset_grant_api('{role}')"),
    ] {
        sqlx::query(&statement)
            .execute(&db.pool)
            .await
            .expect(&statement);
    }
    let options: PgConnectOptions = db.url.parse().expect("url");
    let api = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.username(&role))
        .await
        .expect("connect as the api's role");

    for forbidden in [
        "SELECT password_hash, email FROM accounts",
        "SELECT token_hash FROM reset_tokens",
        "UPDATE accounts SET password_hash = 'set-without-a-token' WHERE id = 'ada'",
        "UPDATE reset_tokens SET used_at = NULL",
        "INSERT INTO event_outbox (event_id, subject, payload) VALUES (gen_random_uuid(), 's', '')",
    ] {
        let err = sqlx::query(forbidden)
            .execute(&api)
            .await
            .expect_err(forbidden);
        assert!(
            err.to_string().contains("permission denied"),
            "{forbidden}: {err}"
        );
    }

    // A live token for ada, as the worker mints it (its hash only).
    let live = vec![7u8; 32];
    sqlx::query(
        "INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at, password_fingerprint)
         VALUES ($1, 'ada', gen_random_uuid(), now() + interval '10 minutes',
                 sha256(convert_to('', 'UTF8')))",
    )
    .bind(&live)
    .execute(&db.pool)
    .await
    .expect("mint");
    let complete = |hash: Vec<u8>| {
        sqlx::query_scalar::<_, bool>(
            "SELECT reset_complete($1, 'ada', 'new-hash', gen_random_uuid(), 's', '')",
        )
        .bind(hash)
        .fetch_one(&api)
    };
    assert!(
        !complete(vec![9u8; 32]).await.expect("made-up token"),
        "no token, no change"
    );
    let stored = || {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT password_hash FROM accounts WHERE id = 'ada'",
        )
        .fetch_one(&db.pool)
    };
    assert_eq!(stored().await.expect("hash"), None);
    assert!(
        complete(live.clone()).await.expect("live token"),
        "the live token works"
    );
    assert_eq!(stored().await.expect("hash").as_deref(), Some("new-hash"));
    assert!(!complete(live).await.expect("used token"), "and only once");

    api.close().await;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&statement)
            .execute(&db.pool)
            .await
            .expect(&statement);
    }
    db.drop_db().await;
}
