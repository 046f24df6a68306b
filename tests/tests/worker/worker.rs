//! From an HTTP request to a mail in a real SMTP server: the worker against the real NATS,
//! a fresh PostgreSQL database per test and aiosmtpd.

use std::time::Duration;

use async_nats::jetstream;
use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{RESET_URL, System, TestWorker, worker_settings};
use e2e::{Isolation, TestApi, dead_letters, nats_url, wait_for_dead_letters};
use sha2::{Digest, Sha256};
use shared::event::ResetRequested;
use worker::store::Outcome;
use worker::store::{BatchError, Claim, Delivery, Limits, Mode, Resolution, Store};

const JSON: &str = "application/json";
const WAIT: Duration = Duration::from_secs(20);

fn json_id(id: &str) -> String {
    serde_json::json!({ "id": id }).to_string()
}

#[tokio::test]
async fn each_content_type_ends_in_one_mail_to_the_stored_address() {
    let system = System::start().await;
    let db = &system.db;
    db.account("u-json")
        .email("json@example.com")
        .name("Jay Son")
        .add()
        .await;
    db.account("u-xml").email("xml@example.com").add().await;
    db.account("u-form").email("form@example.com").add().await;

    let api = &system.api;
    // By id, and by email in another case: the mail goes to the stored address either way.
    assert_eq!(api.forgot_id("u-json").await.status, 200);
    assert_eq!(
        api.forgot("application/xml", "<item><id>XML@Example.COM</id></item>")
            .await
            .status,
        200
    );
    assert_eq!(
        api.forgot(
            "application/x-www-form-urlencoded",
            r#"{"id":"form@example.com"}"#
        )
        .await
        .status,
        200
    );

    let mails = system.sink.wait_for(3, WAIT).await;
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(
        to,
        ["form@example.com", "json@example.com", "xml@example.com"]
    );
    let jay = mails
        .iter()
        .find(|m| m.to == "json@example.com")
        .expect("mail");
    assert_eq!(jay.subject, "Reset your Example password");
    assert!(jay.text.starts_with("Hello Jay Son,"), "{}", jay.text);
    assert_eq!(jay.auto_submitted.as_deref(), Some("auto-generated"));
    assert!(jay.raw.contains("multipart/alternative"));
    assert!(jay.html.contains("Choose a new password"));
    let anonymous = mails
        .iter()
        .find(|m| m.to == "xml@example.com")
        .expect("mail");
    assert!(anonymous.text.starts_with("Hello,"));
    // A mail can land a moment before the worker records it as sent.
    assert_eq!(db.wait_for_outcomes(3).await, [(Outcome::Sent, 3)]);
    system.stop().await;
}

#[tokio::test]
async fn the_mailed_token_matches_the_stored_hash_and_its_plaintext_is_stored_nowhere() {
    let system = System::start().await;
    system.db.account("ada").name("Ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    let token = mail.token();
    assert_eq!(token.len(), 43, "32 random bytes, base64url: {token}");
    assert!(
        mail.link().starts_with(&format!("{RESET_URL}&token=")),
        "{}",
        mail.link()
    );
    // The link in the HTML part carries the same token.
    assert!(mail.html.contains(&token));

    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let (account, live): (String, bool) = sqlx::query_as(
        "SELECT account_id, used_at IS NULL AND invalidated_at IS NULL AND expires_at > now()
         FROM reset_tokens WHERE token_hash = $1",
    )
    .bind(&hash[..])
    .fetch_one(&system.db.pool)
    .await
    .expect("the token's hash is stored");
    assert_eq!(account, "ada");
    assert!(live);

    // Not in any column of any table, in any form the database would print it.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&system.db.pool)
    .await
    .expect("tables");
    assert!(tables.len() >= 3, "{tables:?}");
    for table in tables {
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{table}\" t WHERE row_to_json(t)::text LIKE '%' || $1 || '%'"
        ))
        .bind(&token)
        .fetch_one(&system.db.pool)
        .await
        .expect("scan");
        assert_eq!(found, 0, "the token's plaintext is in {table}");
    }
    // Nor in the event stream.
    for (event, _) in system.api.events().await {
        assert!(!String::from_utf8_lossy(&event.to_json()).contains(&token));
    }
    system.stop().await;
}

#[tokio::test]
async fn an_unknown_account_gets_the_same_answer_and_no_mail() {
    let system = System::start().await;
    system.db.account("known").add().await;
    let unknown = system.api.forgot_id("nobody@example.com").await;
    let known = system.api.forgot_id("known").await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (known.status, known.body.as_str())
    );

    let mails = system.sink.wait_for(1, WAIT).await;
    // Both events decided: no other mail can come from them.
    system.db.wait_for_outcomes(2).await;
    let mails_after = system.sink.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails_after.len(), 1);
    assert_eq!(mails_after[0].to, "known@example.com");
    assert_eq!(
        system.db.wait_for_outcomes(2).await,
        [(Outcome::NoAccount, 1), (Outcome::Sent, 1)]
    );
    system.stop().await;
}

#[tokio::test]
async fn a_burst_for_one_account_gives_one_mail() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let body = json_id("ada");
    let requests = (0..10).map(|_| system.api.forgot(JSON, &body));
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.status, 200);
    }
    let mails = system.sink.wait_for(1, WAIT).await;
    let outcomes = system.db.wait_for_outcomes(10).await;
    assert_eq!(outcomes, [(Outcome::Sent, 1), (Outcome::Throttled, 9)]);
    assert_eq!(mails.len(), 1);
    assert_eq!(system.sink.messages().len(), 1);
    system.stop().await;
}

/// The request's User-Agent is text anyone chooses: put into a genuine mail it would carry
/// an attacker's link. Neither the reset mail nor the notice shows it.
#[tokio::test]
async fn a_user_agent_never_reaches_a_mail() {
    const AGENT: &str = "x). Your link expired, reset at https://evil.example/r (";
    let system = System::start().await;
    system.db.account("ada").add().await;
    let response = system
        .api
        .forgot_with(JSON, &json_id("ada"), &[("User-Agent", AGENT)])
        .await;
    assert_eq!(response.status, 200);
    let token = system.sink.wait_for(1, WAIT).await[0].token();
    let body = serde_json::json!({ "token": token, "password": "a new and long passphrase" });
    let headers = [
        ("Authorization", format!("Bearer {}", e2e::KEY)),
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", AGENT.to_owned()),
    ];
    let response = e2e::post(
        system.api.addr,
        "/auth/reset-password",
        &headers,
        &body.to_string(),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let mails = system.sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the reset mail and the notice");
    for mail in &mails {
        for part in [&mail.text, &mail.html] {
            assert!(!part.contains("evil.example"), "{part}");
            assert!(!part.contains("Your link expired"), "{part}");
        }
    }
    system.stop().await;
}

#[tokio::test]
async fn host_headers_never_reach_the_link() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let response = system
        .api
        .forgot_with(
            JSON,
            &json_id("ada"),
            &[
                ("Host", "evil.example"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(response.status, 200);
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0]
            .link()
            .starts_with("https://app.example.com/reset?")
    );
    assert!(!mails[0].raw.contains("evil.example"));
    system.stop().await;
}

#[tokio::test]
async fn a_451_for_a_while_is_retried_then_delivered() {
    let system = System::start().await;
    // The sink answers 451 to this address twice, then accepts.
    system
        .db
        .account("temp")
        .email("tempfail2@example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("temp").await.status, 200);
    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    system.db.wait_for_outcomes(1).await;
    assert_eq!(system.db.only_record().await, (Outcome::Sent, 3));
    // Each attempt minted a token and invalidated the one before: only the mailed one lives.
    let live = system.db.live_tokens().await;
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM reset_tokens")
        .fetch_one(&system.db.pool)
        .await
        .expect("tokens");
    assert_eq!((live, all), (1, 3));
    system.stop().await;
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

#[tokio::test]
async fn a_550_goes_to_the_dead_letters_after_one_attempt() {
    let system = System::start().await;
    system
        .db
        .account("gone")
        .email("reject@example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("gone").await.status, 200);
    let letters = wait_for_dead_letters(&system.api.iso, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(header(&letters[0], "Dead-Reason"), Some("permanent"));
    assert_eq!(header(&letters[0], "Dead-Attempts"), Some("1"));
    assert!(header(&letters[0], "Dead-Error").is_some_and(|e| e.contains("550")));
    let (outcome, attempts, error): (String, i32, Option<String>) =
        sqlx::query_as("SELECT outcome, attempts, last_error FROM reset_requests")
            .fetch_one(&system.db.pool)
            .await
            .expect("record");
    assert_eq!((outcome.as_str(), attempts), ("failed", 1));
    assert!(error.is_some_and(|e| e.contains("550")));
    // Its token cannot be used: the mail carrying it never arrived.
    let live = system.db.live_tokens().await;
    assert_eq!(live, 0);
    // No retry follows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(dead_letters(&system.api.iso).await.len(), 1);
    assert!(system.sink.messages().is_empty());
    system.stop().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_next_one_delivered() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let subject = format!("{}.requested", system.api.iso.prefix);
    js.publish(subject.clone(), "this is not an event".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.publish(subject, r#"{"version":99}"#.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(system.api.forgot_id("ada").await.status, 200);

    let mails = system.sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let letters = wait_for_dead_letters(&system.api.iso, 2).await;
    let mut reasons: Vec<&str> = letters
        .iter()
        .filter_map(|h| header(h, "Dead-Reason"))
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["poison", "unsupported_version"]);
    system.stop().await;
}

#[tokio::test]
async fn a_redelivered_event_that_was_sent_is_not_mailed_again() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    assert_eq!(system.sink.wait_for(1, WAIT).await.len(), 1);

    // The same event again, as a redelivery would bring it.
    let (event, _) = system.api.events().await.remove(0);
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    js.publish(
        format!("{}.requested", system.api.iso.prefix),
        event.to_json().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(system.sink.messages().len(), 1);
    system.db.wait_for_outcomes(1).await;
    assert_eq!(system.db.only_record().await, (Outcome::Sent, 1));
    system.stop().await;
}

#[tokio::test]
async fn the_account_locale_picks_the_templates() {
    let system = System::start().await;
    system
        .db
        .account("hans")
        .name("Hans")
        .locale("de-AT")
        .add()
        .await;
    system.db.account("joao").locale("pt-BR").add().await;
    assert_eq!(system.api.forgot_id("hans").await.status, 200);
    assert_eq!(system.api.forgot_id("joao").await.status, 200);
    let mails = system.sink.wait_for(2, WAIT).await;
    let hans = mails
        .iter()
        .find(|m| m.to == "hans@example.com")
        .expect("mail");
    assert_eq!(hans.subject, "Ihr Passwort für Example zurücksetzen");
    assert!(hans.text.starts_with("Hallo Hans,"));
    let joao = mails
        .iter()
        .find(|m| m.to == "joao@example.com")
        .expect("mail");
    assert_eq!(joao.subject, "Reset your Example password");
    system.stop().await;
}

#[tokio::test]
async fn two_workers_and_200_requests_give_exactly_200_mails() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let sink = SmtpSink::start();
    for n in 0..200 {
        db.account(&format!("user-{n}")).add().await;
    }
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let workers = [
        TestWorker::spawn(worker_settings(&iso, &db.url, &sink.url())),
        TestWorker::spawn(worker_settings(&iso, &db.url, &sink.url())),
    ];
    let requests = (0..200).map(|n| {
        let api = &api;
        async move {
            api.forgot(JSON, &json_id(&format!("user-{n}")))
                .await
                .status
        }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200));

    let mails = sink.wait_for(200, Duration::from_secs(60)).await;
    db.wait_for_outcomes(200).await;
    let mails_after = sink.messages();
    assert_eq!(mails.len(), 200);
    assert_eq!(mails_after.len(), 200, "no extra mail");
    let mut to: Vec<String> = mails_after.into_iter().map(|m| m.to).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 200, "every account once");
    for worker in workers {
        worker.stop().await;
    }
    api.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn without_smtp_the_mail_goes_to_the_outbox() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.account("ada").add().await;
    let outbox = std::env::temp_dir().join(format!("outbox-{}", uuid::Uuid::now_v7().simple()));
    let mut settings = worker_settings(&iso, &db.url, "smtp://unused");
    settings.mail.smtp_url = None;
    settings.mail.outbox = outbox.clone();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let worker = TestWorker::spawn(settings);
    assert_eq!(api.forgot_id("ada").await.status, 200);
    let mut files = Vec::new();
    for _ in 0..100 {
        files = std::fs::read_dir(&outbox)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "eml"));
    // It holds a live reset link: the worker's user alone may read it.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&files[0]).expect("eml").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let content = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(content.contains("To: ada@example.com"), "{content}");
    worker.stop().await;
    api.stop().await;
    db.drop_db().await;
    let _ = std::fs::remove_dir_all(outbox);
}

/// A worker's store over a pool of its own with this many connections, so that more callers
/// than that queue into batches; and the pool, to run statements on the same connections.
async fn small_store(db: &TestDb, connections: u32) -> (sqlx::PgPool, Store) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(&db.url)
        .await
        .expect("connect");
    (pool.clone(), Store::from_pool(pool))
}

const LIMITS: Limits = Limits {
    cooldown: Duration::from_secs(60),
    max_cooldown: Duration::from_secs(3600),
    token_ttl: Duration::from_secs(3600),
    lease: Duration::from_secs(60),
};

/// A first delivery of a reset request for `id`, claimed through `store`.
async fn claim(store: Store, id: &str, request_id: &str) -> Result<Resolution, BatchError> {
    claim_event(store, &e2e::reset_event(id, request_id)).await
}

/// A delivery of `event` (its own, with a fresh token), claimed through `store`.
async fn claim_event(store: Store, event: &ResetRequested) -> Result<Resolution, BatchError> {
    let token = worker::tokens::Token::mint().expect("mint");
    store
        .find_and_claim(event, Delivery::new(1), &token.hash(), LIMITS, Mode::Normal)
        .await
}

/// One pending reset record per account in `accounts` (claimed, not yet mailed); their
/// event ids, in the same order.
async fn pending_records(db: &TestDb, accounts: &[String]) -> Vec<uuid::Uuid> {
    let ids: Vec<uuid::Uuid> = accounts.iter().map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO reset_requests
             (event_id, account_id, outcome, attempts, request_id, requested_at, kind)
         SELECT event_id, account_id, 'pending', 1, 'r', now(), 'reset'
         FROM unnest($1::uuid[], $2::text[]) AS u(event_id, account_id)",
    )
    .bind(&ids)
    .bind(accounts)
    .execute(&db.pool)
    .await
    .expect("insert pending");
    ids
}

#[tokio::test]
async fn sent_records_written_together_are_each_committed() {
    let db = TestDb::migrated().await;
    let accounts: Vec<String> = (0..300).map(|i| format!("acct-{i}")).collect();
    let ids = pending_records(&db, &accounts).await;
    // More callers than the pool has connections, all at once: they queue into batches.
    let (_, store) = small_store(&db, 2).await;
    let marks = ids.iter().map(|id| {
        let store = store.clone();
        let id = *id;
        tokio::spawn(async move { store.mark_sent(id).await })
    });
    for result in futures::future::join_all(marks).await {
        result.expect("task").expect("mark_sent");
    }
    let (sent, stamped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE outcome = 'sent'), count(sent_at) FROM reset_requests",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!((sent, stamped), (300, 300));
    db.drop_db().await;
}

#[tokio::test]
async fn sent_records_batched_with_a_failing_claim_are_still_committed() {
    let db = TestDb::migrated().await;
    db.account("ada").add().await;
    let ids = pending_records(&db, &vec!["ada".to_owned(); 50]).await;
    // A claim whose token hash is taken fails its whole statement.
    let taken = [7u8; 32];
    sqlx::query(
        "INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at)
         VALUES ($1, 'ada', gen_random_uuid(), now() + interval '1 hour')",
    )
    .bind(&taken[..])
    .execute(&db.pool)
    .await
    .expect("insert token");
    let (_, store) = small_store(&db, 1).await;
    store.mark_sent(ids[0]).await.expect("first record");
    // Queued together before the writer runs again (one thread), so they go in one batch:
    // the failing claim and 49 sent records.
    let claim = {
        let store = store.clone();
        tokio::spawn(async move {
            let event = e2e::reset_event("ada", "req-poison");
            store
                .find_and_claim(&event, Delivery::new(1), &taken, LIMITS, Mode::Normal)
                .await
        })
    };
    let marks = ids[1..].iter().map(|id| {
        let (store, id) = (store.clone(), *id);
        tokio::spawn(async move { store.mark_sent(id).await })
    });
    for result in futures::future::join_all(marks).await {
        result
            .expect("task")
            .expect("a sent record shares a claim's failure");
    }
    assert!(
        matches!(claim.await.expect("task"), Err(BatchError::Database(_))),
        "the claim with a taken token hash fails"
    );
    assert_eq!(db.outcomes().await, [(Outcome::Sent, 50)]);
    db.drop_db().await;
}

#[tokio::test]
async fn claims_from_two_workers_at_once_give_one_mail_per_account_without_deadlock() {
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("acct", 20).await;
    db.account("twin-a").email("twin@example.com").add().await;
    db.account("twin-b").email("TWIN@example.com").add().await;
    // Two workers' stores with two connections each: the 210 claims below queue into batches
    // that share accounts, taken in opposite orders from one round to the next.
    let stores = [small_store(&db, 2).await.1, small_store(&db, 2).await.1];
    let mut ids = Vec::new();
    for round in 0..5 {
        for i in 0..20 {
            let i = if round % 2 == 0 { i } else { 19 - i };
            ids.push(format!("acct{i}"));
        }
        ids.push("nobody@example.com".to_owned());
        ids.push("twin@example.com".to_owned());
    }
    let claims = ids.iter().enumerate().map(|(n, id)| {
        let (store, id) = (stores[n % 2].clone(), id.clone());
        tokio::spawn(async move { claim(store, &id, &format!("req-{n}")).await })
    });
    let mut proceeded = std::collections::BTreeMap::<String, usize>::new();
    let (mut throttled, mut unknown, mut ambiguous) = (0, 0, 0);
    for result in futures::future::join_all(claims).await {
        match result.expect("task").expect("claim") {
            Resolution::Claimed(account, Claim::Proceed) => {
                *proceeded.entry(account.id).or_default() += 1;
            }
            Resolution::Claimed(_, Claim::Throttled) => throttled += 1,
            Resolution::NotFound => unknown += 1,
            Resolution::Ambiguous(2) => ambiguous += 1,
            other => panic!("unexpected claim: {other:?}"),
        }
    }
    assert_eq!(proceeded.len(), 20, "every account claimed: {proceeded:?}");
    assert!(proceeded.values().all(|&n| n == 1), "{proceeded:?}");
    assert_eq!((throttled, unknown, ambiguous), (80, 5, 5));
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reset_tokens WHERE invalidated_at IS NULL AND used_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count tokens");
    assert_eq!(live, 20);
    assert_eq!(
        db.outcomes().await,
        [(Outcome::Pending, 20), (Outcome::Throttled, 80)]
    );
    db.drop_db().await;
}

#[tokio::test]
async fn two_deliveries_of_one_event_at_once_give_one_claim_and_one_busy() {
    let db = TestDb::migrated().await;
    db.account("ada").add().await;
    let event = e2e::reset_event("ada", "req-twice");
    // Two workers' stores, so the deliveries go in separate statements racing each other,
    // and then one store, so they go in the same batch.
    for together in [false, true] {
        let stores = [small_store(&db, 2).await.1, small_store(&db, 2).await.1];
        let claims = (0..2).map(|n| {
            let store = stores[if together { 0 } else { n }].clone();
            let event = event.clone();
            tokio::spawn(async move { claim_event(store, &event).await })
        });
        let mut answers: Vec<String> = futures::future::join_all(claims)
            .await
            .into_iter()
            .map(|r| match r.expect("task").expect("claim") {
                Resolution::Claimed(_, Claim::Proceed) => "proceed".to_owned(),
                Resolution::Claimed(_, Claim::Busy(left)) => {
                    // By the database's clock, which each transaction reads at its start.
                    let most = LIMITS.lease + Duration::from_secs(1);
                    assert!(left <= most && left > LIMITS.lease / 2, "{left:?}");
                    "busy".to_owned()
                }
                other => format!("{other:?}"),
            })
            .collect();
        answers.sort();
        // The first round's claim is the live one the second round finds.
        let expected = if together {
            ["busy", "busy"]
        } else {
            ["busy", "proceed"]
        };
        assert_eq!(answers, expected, "together: {together}");
    }
    let waits: i32 = sqlx::query_scalar("SELECT waits FROM reset_requests")
        .fetch_one(&db.pool)
        .await
        .expect("waits");
    assert_eq!(waits, 3, "every busy answer counted as a wait");
    db.drop_db().await;
}

/// The same accounts and history in a fresh database: every case the claim distinguishes.
async fn claim_fixture() -> TestDb {
    let db = TestDb::migrated().await;
    for id in [
        "fresh", "recent", "busy", "twice", "sent", "crashed", "leased",
    ] {
        db.account(id).add().await;
    }
    db.account("twin-a").email("twin@example.com").add().await;
    db.account("twin-b").email("TWIN@example.com").add().await;
    sqlx::query("UPDATE accounts SET password_hash = 'hash-of-' || id")
        .execute(&db.pool)
        .await
        .expect("passwords");
    // "recent" had a mail seconds ago, "busy" three in the last ten minutes (the last three
    // minutes ago, within the cooldown that doubled twice since), "sent" is
    // the account of an event already mailed, "crashed" of one claimed by a worker that died
    // (its lease run out), "leased" of one another delivery is working on.
    sqlx::query(
        "INSERT INTO reset_requests
             (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind)
         VALUES ('00000000-0000-7000-8000-000000000001', 'recent', 'sent', 1, 'r', now(),
                 now() - interval '10 seconds', 'reset'),
                ('00000000-0000-7000-8000-000000000002', 'busy', 'sent', 1, 'r', now(),
                 now() - interval '10 minutes', 'reset'),
                ('00000000-0000-7000-8000-000000000003', 'busy', 'sent', 1, 'r', now(),
                 now() - interval '5 minutes', 'reset'),
                ('00000000-0000-7000-8000-0000000000b1', 'busy', 'sent', 1, 'r', now(),
                 now() - interval '3 minutes', 'reset'),
                ('00000000-0000-7000-8000-0000000000a5', 'sent', 'sent', 1, 'r', now(),
                 now() - interval '2 hours', 'reset'),
                ('00000000-0000-7000-8000-0000000000a6', 'crashed', 'pending', 1, 'r', now(),
                 now() - interval '2 hours', 'reset')",
    )
    .execute(&db.pool)
    .await
    .expect("history");
    sqlx::query(
        "INSERT INTO reset_requests
             (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind,
              lease_holder, lease_until)
         VALUES ('00000000-0000-7000-8000-0000000000a7', 'leased', 'pending', 1, 'r', now(),
                 now() - interval '1 second', 'reset', gen_random_uuid(),
                 now() + interval '1 minute')",
    )
    .execute(&db.pool)
    .await
    .expect("a live claim");
    sqlx::query(
        "INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at)
         VALUES ('\\x01', 'fresh', '00000000-0000-7000-8000-000000000004', now() + interval '1 hour'),
                ('\\x02', 'crashed', '00000000-0000-7000-8000-0000000000a6',
                 now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .expect("tokens");
    db
}

/// Claims `ids` (event ids from their place in the list, but for "sent" and "crashed", whose
/// events are the ones in the fixture) in one `reset_find_and_claim` call, or one event at a
/// time through `reset_find_account` and `reset_claim`; answers as `reset_find_and_claim`
/// gives them, with the standing outcome of a decided event after a colon (`done:sent`).
async fn claim_answers(db: &TestDb, ids: &[&str], together: bool) -> Vec<String> {
    let event = |n: usize, id: &str| match id {
        "sent@example.com" => uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_00a5),
        "crashed" => uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_00a6),
        "leased" => uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_00a7),
        _ => uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0001_0000 + n as u128),
    };
    let events: Vec<uuid::Uuid> = ids.iter().enumerate().map(|(n, id)| event(n, id)).collect();
    let hashes: Vec<Vec<u8>> = (0..ids.len()).map(|n| vec![0xee, n as u8]).collect();
    // Each place in the list is its own delivery.
    let holders: Vec<uuid::Uuid> = (0..ids.len())
        .map(|n| uuid::Uuid::from_u128(n as u128 + 1))
        .collect();
    if together {
        let n = ids.len();
        return sqlx::query_scalar(
            "SELECT concat_ws(':', answer, done)
             FROM reset_find_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 60)
             ORDER BY ord",
        )
        .bind(&events)
        .bind(ids)
        .bind(vec!["req"; n])
        .bind(vec![time::OffsetDateTime::now_utc(); n])
        .bind(vec![2_i32; n])
        .bind(&hashes)
        .bind(vec![3600.0_f64; n])
        .bind(vec![60.0_f64; n])
        .bind(vec![3600.0_f64; n])
        .bind(vec![false; n])
        .bind(&holders)
        .fetch_all(&db.pool)
        .await
        .expect("claim together");
    }
    let mut answers = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let found: Vec<(Option<String>, i32)> =
            sqlx::query_as("SELECT id, matches FROM reset_find_account($1)")
                .bind(id)
                .fetch_all(&db.pool)
                .await
                .expect("find");
        let answer = match found.first() {
            None => "not_found".to_owned(),
            Some((None, _)) => "ambiguous".to_owned(),
            Some((Some(account), _)) => sqlx::query_scalar(
                "SELECT concat_ws(':', answer, done)
                 FROM reset_claim($1, $2, 'req', now(), 2, $3, 3600, 60, 3600, false, $4, 60)",
            )
            .bind(events[n])
            .bind(account)
            .bind(&hashes[n])
            .bind(holders[n])
            .fetch_one(&db.pool)
            .await
            .expect("claim alone"),
        };
        answers.push(answer);
    }
    answers
}

/// What the claims left behind, without the times they ran at.
async fn claim_state(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let requests = sqlx::query_scalar(
        "SELECT concat_ws(' ', event_id, account_id, outcome, attempts, last_error,
                          claimed_at IS NOT NULL)
         FROM reset_requests ORDER BY event_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("requests");
    let tokens = sqlx::query_scalar(
        "SELECT concat_ws(' ', encode(token_hash, 'hex'), account_id, event_id,
                          invalidated_at IS NULL, encode(password_fingerprint, 'hex'),
                          expires_at > now() + interval '50 minutes')
         FROM reset_tokens ORDER BY token_hash",
    )
    .fetch_all(&db.pool)
    .await
    .expect("tokens");
    (requests, tokens)
}

#[tokio::test]
async fn a_batch_claims_exactly_as_its_events_would_one_by_one() {
    // Fresh; within the cooldown; within the grown cooldown; one account three times (twice by
    // email); mailed already (redelivered); claimed by a worker that died; no such account;
    // two accounts on one email; claimed by a delivery still at work; the event of "crashed"
    // delivered a second time in the same batch.
    let ids = [
        "fresh",
        "recent",
        "busy",
        "twice",
        "sent@example.com",
        "TWICE@example.com",
        "crashed",
        "nobody",
        "twin@example.com",
        "twice@example.com",
        "leased",
        "crashed",
    ];
    let (together, alone) = (claim_fixture().await, claim_fixture().await);
    let answers = claim_answers(&together, &ids, true).await;
    assert_eq!(
        answers,
        [
            "proceed",
            "throttled",
            "throttled",
            "proceed",
            "done:sent",
            "throttled",
            "proceed",
            "not_found",
            "ambiguous",
            "throttled",
            "busy",
            "busy"
        ]
    );
    assert_eq!(answers, claim_answers(&alone, &ids, false).await);
    let state = claim_state(&together).await;
    assert_eq!(state, claim_state(&alone).await);
    // The earlier tokens of "fresh" and "crashed" were retired for the new ones.
    let live: Vec<&String> = (state.1.iter())
        .filter(|t| t.split(' ').nth(3) == Some("t"))
        .collect();
    assert_eq!(live.len(), 3, "{:#?}", state.1);
    together.drop_db().await;
    alone.drop_db().await;
}

/// Rows read by sequential scans of `table`, its index scans, and the index entries they
/// read, as PostgreSQL's statistics have them so far.
async fn scans(db: &TestDb, table: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT seq_tup_read, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0)
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&db.pool)
    .await
    .expect("scans")
}

/// Claims and sent records after the tables grew past the statistics the plans were made
/// with still find their rows through the indexes.
#[tokio::test]
async fn claims_keep_using_the_indexes_after_the_tables_grow() {
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("acct", 40).await;
    // One connection, so every claim runs on it and its cached plans are the ones used.
    let (pool, store) = small_store(&db, 1).await;
    let claim_proceeds = |n: usize| {
        let store = store.clone();
        async move {
            let resolution = claim(store, &format!("acct{n}"), &format!("req-{n}"))
                .await
                .expect("claim");
            assert!(
                matches!(resolution, Resolution::Claimed(_, Claim::Proceed)),
                "{resolution:?}"
            );
        }
    };
    let sql = |statement: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
    };
    // As on a fresh install: the tables are analyzed while they hold a few rows (autovacuum
    // does so after the first fifty or so), and the connection plans its statements then...
    for n in 0..10 {
        claim_proceeds(n).await;
    }
    // Records to mark sent: one now, so the statement is planned on the small table too, and
    // twenty in the measured stretch below, as one batch.
    let accounts: Vec<String> = (0..21).map(|i| format!("sent{i}")).collect();
    let to_mark = pending_records(&db, &accounts).await;
    sql("ANALYZE reset_requests, reset_tokens").await;
    for n in 10..20 {
        claim_proceeds(n).await;
    }
    store.mark_sent(to_mark[0]).await.expect("mark_sent");
    // ...then the tables grow, with no ANALYZE in between.
    sql("INSERT INTO reset_requests
             (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind)
         SELECT gen_random_uuid(), 'other' || i, 'sent', 1, 'r', now(), now(), 'reset'
         FROM generate_series(1, 20000) i")
    .await;
    sql(
        "INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at)
         SELECT sha256(convert_to(i::text, 'UTF8')), 'other' || i, gen_random_uuid(),
                now() + interval '1 hour'
         FROM generate_series(1, 20000) i",
    )
    .await;
    // Statistics leave a backend when it goes idle after this statement.
    let flush = || sql("SELECT pg_stat_force_next_flush()");
    flush().await;
    let requests_before = scans(&db, "reset_requests").await;
    let tokens_before = scans(&db, "reset_tokens").await;
    for n in 20..40 {
        claim_proceeds(n).await;
    }
    let marks = to_mark[1..].iter().map(|id| store.mark_sent(*id));
    for marked in futures::future::join_all(marks).await {
        marked.expect("mark_sent");
    }
    flush().await;
    let mut requests_after = scans(&db, "reset_requests").await;
    for _ in 0..50 {
        if requests_after.1 - requests_before.1 >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        requests_after = scans(&db, "reset_requests").await;
    }
    let tokens_after = scans(&db, "reset_tokens").await;
    assert!(
        requests_after.1 - requests_before.1 >= 20,
        "the claims' statistics arrived: {requests_before:?} -> {requests_after:?}"
    );
    // One full scan of either table would read 20,000 rows.
    let read = (
        requests_after.0 - requests_before.0,
        tokens_after.0 - tokens_before.0,
    );
    assert!(
        read.0 < 1000 && read.1 < 1000,
        "rows read by sequential scans in 20 claims and 20 sent records (reset_requests, reset_tokens): {read:?}"
    );
    // Nor a whole index read in place of the table.
    let fetched = requests_after.2 - requests_before.2;
    assert!(fetched < 1000, "rows fetched through indexes: {fetched}");
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reset_requests WHERE event_id = ANY($1) AND outcome = 'sent'",
    )
    .bind(&to_mark)
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(sent, 21);
    db.drop_db().await;
}

/// A statement that waits (on a lock, say) is cut off rather than left to hang an event.
#[tokio::test]
async fn the_workers_statements_have_a_time_limit() {
    let db = TestDb::migrated().await;
    let store = Store::connect(&db.url, 1).await.expect("store");
    let limit: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .expect("setting");
    assert_eq!(limit, "30s");
    db.drop_db().await;
}
