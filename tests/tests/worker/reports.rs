//! "I did not ask for this" and "This wasn't me" from the mails, and the webhooks that tell the
//! product: driven from outside with a real SMTP server, the database and a webhook receiver
//! that checks every delivery with the Standard Webhooks reference library (PyPI's
//! `standardwebhooks`) and can fail the first attempts.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{System, TestWorker, worker_settings};
use e2e::webhooks::{WEBHOOK_SECRET, WebhookReceiver};
use e2e::{Isolation, RawResponse, TestApi, request, send_raw};
use worker::cli::DeadLetterCommand;
use worker::config::Backoff;
use worker::store::Outcome;

const WAIT: Duration = Duration::from_secs(20);
const FORM: &str = "application/x-www-form-urlencoded";

/// Webhooks to `receiver`, retried after 200 ms each time, `retries` times.
fn to(receiver: &WebhookReceiver, retries: usize) -> impl FnOnce(&mut worker::Settings) {
    let url = receiver.url();
    move |s| {
        s.webhooks.webhook_url = Some(url.parse().expect("url"));
        s.webhooks.webhook_secret = Some(WEBHOOK_SECRET.into());
        s.webhooks.webhook_backoff = Backoff(vec![Duration::from_millis(200); retries]);
    }
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    send_raw(addr, &request("GET", path, &[], "")).await
}

/// A form posted from the api's own page, as a browser sends it.
async fn post_page_form(addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    let headers = [
        ("Content-Type", FORM.to_owned()),
        ("Sec-Fetch-Site", "same-origin".to_owned()),
    ];
    send_raw(addr, &request("POST", path, &headers, body)).await
}

/// Ada asks for a mail and sets a new password with its link.
async fn reset_ada_through_the_mail(system: &System) {
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let token = system.sink.wait_for(1, WAIT).await[0].token();
    let body = serde_json::json!({"token": token, "password": "a new and long passphrase"});
    let reset = system.api.post_json("/auth/reset-password", body).await;
    assert_eq!(reset.status, 200, "{reset:?}");
}

/// Whether the mailed link still opens the password form.
async fn link_works(addr: SocketAddr, token: &str) -> bool {
    let page = get(addr, &format!("/reset-password?token={token}")).await;
    page.body.contains(r#"name="password""#)
}

/// The report link of a reset mail: opening it (twice: a scanner, then the person) changes
/// nothing and shows a form; confirming kills the mailed link, a request right after mails
/// nothing, and the product gets a signed `reset.reported` naming the account. Confirming
/// again tells nobody twice.
#[tokio::test]
async fn a_reported_reset_mail_dies_pauses_new_ones_and_tells_the_product() {
    let receiver = WebhookReceiver::start(0);
    let system = System::start_with(to(&receiver, 3)).await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = &system.sink.wait_for(1, WAIT).await[0];
    let (token, secret) = (mail.token(), mail.report_secret());
    let addr = system.api.addr;

    let report_page = format!("/reset-password/report?r={secret}");
    for _ in 0..2 {
        let opened = get(addr, &report_page).await;
        assert_eq!(opened.status, 200, "{opened:?}");
        assert!(
            opened.body.contains(&format!(
                r#"<input type="hidden" name="r" value="{secret}">"#
            )),
            "{}",
            opened.body
        );
        assert!(opened.body.contains("I did not ask for this"));
    }
    assert!(
        link_works(addr, &token).await,
        "opening the report link changed nothing"
    );

    let confirmed = post_page_form(addr, "/reset-password/report", &format!("r={secret}")).await;
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert!(
        confirmed.body.contains("Thank you for telling us"),
        "{}",
        confirmed.body
    );
    assert!(confirmed.body.contains("24 hours"), "{}", confirmed.body);
    assert!(!link_works(addr, &token).await, "the mailed link died");

    // A request right after: answered as ever, decided as paused, mailed to nobody.
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let outcomes = system.db.wait_for_outcomes(2).await;
    assert!(outcomes.contains(&(Outcome::Throttled, 1)), "{outcomes:?}");
    let why: String =
        sqlx::query_scalar("SELECT last_error FROM reset_requests WHERE outcome = 'throttled'")
            .fetch_one(&system.db.pool)
            .await
            .expect("the paused request's record");
    assert!(why.contains("RESET_REPORT_PAUSE"), "{why}");
    assert_eq!(system.sink.messages().len(), 1, "no mail after the report");

    let hooks = receiver.wait_for("reset.reported", WAIT).await;
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let data = &hooks[0].body["data"];
    assert_eq!(data["account_id"], "ada");
    assert!(hooks[0].webhook_id.starts_with("msg_"), "{hooks:?}");
    let body = hooks[0].body.to_string();
    assert!(
        !body.contains(&token) && !body.contains(&secret),
        "no secret in the webhook"
    );

    // Confirmed again: the same page, and no second event for a second webhook.
    let again = post_page_form(addr, "/reset-password/report", &format!("r={secret}")).await;
    assert!(
        again.body.contains("Thank you for telling us"),
        "{}",
        again.body
    );
    let reports = system
        .api
        .messages()
        .await
        .into_iter()
        .filter(|m| m.subject.ends_with(".reported"))
        .count();
    assert_eq!(reports, 1);
    system.stop().await;
}

/// A made-up or altered report link shows the expired page and reports nothing, like a dead
/// reset link; a report posted from another site is refused.
#[tokio::test]
async fn a_forged_report_link_or_another_sites_post_reports_nothing() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    let mail = &system.sink.wait_for(1, WAIT).await[0];
    let (token, secret) = (mail.token(), mail.report_secret());
    let addr = system.api.addr;
    let mut forged = secret.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let opened = get(addr, &format!("/reset-password/report?r={forged}")).await;
    assert!(opened.body.contains("This link has expired"), "{opened:?}");
    assert!(
        !opened.body.contains(r#"name="r""#),
        "no form for a forged link"
    );
    let posted = post_page_form(addr, "/reset-password/report", &format!("r={forged}")).await;
    assert!(posted.body.contains("This link has expired"), "{posted:?}");
    let cross = send_raw(
        addr,
        &request(
            "POST",
            "/reset-password/report",
            &[
                ("Content-Type", FORM.to_owned()),
                ("Sec-Fetch-Site", "cross-site".to_owned()),
            ],
            &format!("r={secret}"),
        ),
    )
    .await;
    assert_eq!(cross.status, 403, "{cross:?}");
    assert!(link_works(addr, &token).await, "nothing was reported");
    system.stop().await;
}

/// A completed reset brings a signed `password.changed`, retried past the receiver's two 500s
/// with one `webhook-id`; the password-changed mail's "This wasn't me" then brings a signed
/// `change.reported` and tells the person what happens next.
#[tokio::test]
async fn a_change_reaches_the_product_past_two_failures_and_can_be_reported() {
    let receiver = WebhookReceiver::start(2);
    let port = e2e::free_port();
    let system = System::start_with(|s| {
        to(&receiver, 3)(s);
        s.status.addr = format!("127.0.0.1:{port}").parse().expect("addr");
    })
    .await;
    reset_ada_through_the_mail(&system).await;

    let changed = receiver.wait_for("password.changed", WAIT).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].body["data"]["account_id"], "ada");
    let id = &changed[0].webhook_id;
    let tries: Vec<(u16, bool)> = receiver
        .attempts()
        .into_iter()
        .filter(|a| a.webhook_id.as_ref() == Some(id))
        .map(|a| (a.status, a.verified))
        .collect();
    assert_eq!(
        tries,
        [(500, true), (500, true), (204, true)],
        "one id on every attempt"
    );
    // Counted once the worker has the answer, a moment after the receiver wrote it down.
    let series = |result: &str| {
        format!(r#"worker_webhooks_total{{kind="password.changed",result="{result}"}}"#)
    };
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = e2e::get(addr, "/metrics").await.body;
        if e2e::metric(&metrics, &series("delivered")) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(e2e::metric(&metrics, &series("retried")), 2.0);
    assert_eq!(e2e::metric(&metrics, &series("delivered")), 1.0);

    let mails = system.sink.wait_for(2, WAIT).await;
    let secret = mails[1].report_secret();
    let addr = system.api.addr;
    let opened = get(addr, &format!("/reset-password/report?r={secret}")).await;
    assert!(
        opened.body.contains("Was this password change not yours?"),
        "{}",
        opened.body
    );
    let confirmed = post_page_form(addr, "/reset-password/report", &format!("r={secret}")).await;
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert!(
        confirmed.body.contains("support@example.com"),
        "{}",
        confirmed.body
    );
    let reported = receiver.wait_for("change.reported", WAIT).await;
    assert_eq!(reported[0].body["data"]["account_id"], "ada");
    system.stop().await;
}

/// A webhook the receiver keeps refusing is dead-lettered after its retries, listed by the
/// operator's tool, and retried from there with the same `webhook-id`, without a second mail.
#[tokio::test]
async fn a_refused_webhook_is_dead_lettered_and_an_operators_retry_sends_the_same_id() {
    let receiver = WebhookReceiver::start(2);
    let system = System::start_with(to(&receiver, 1)).await;
    reset_ada_through_the_mail(&system).await;
    let letters = e2e::wait_for_dead_letters(&system.api.iso, 1).await;
    assert_eq!(
        letters[0].get("Dead-Reason").map(|v| v.as_str()),
        Some("webhook_failed")
    );
    let settings = worker_settings(&system.api.iso, &system.db.url, &system.sink.url());
    let mut listed = Vec::new();
    worker::ops::dead_letters(
        &settings,
        &DeadLetterCommand::List { json: true },
        &mut listed,
    )
    .await
    .expect("list");
    let letter: serde_json::Value =
        serde_json::from_slice(listed.trim_ascii()).expect("one dead letter");
    let seq = letter["seq"].as_u64().expect("seq");
    let retry = DeadLetterCommand::Retry {
        seq: Some(seq),
        all: false,
        force: false,
        yes: false,
    };
    worker::ops::dead_letters(&settings, &retry, &mut Vec::new())
        .await
        .expect("retry");
    let taken = receiver.wait_for("password.changed", WAIT).await;
    let ids: Vec<Option<String>> = receiver
        .attempts()
        .into_iter()
        .map(|a| a.webhook_id)
        .collect();
    assert_eq!(ids.len(), 3, "two refused, one taken");
    assert!(
        ids.iter().all(|i| i.as_ref() == Some(&taken[0].webhook_id)),
        "{ids:?}"
    );
    assert_eq!(
        system.sink.messages().len(),
        2,
        "the reset and the changed mail, no more"
    );
    system.stop().await;
}

/// The pause ends: once RESET_REPORT_PAUSE has passed, the owner's own request is mailed.
#[tokio::test]
async fn after_the_pause_the_owners_own_request_is_mailed() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let sink = SmtpSink::start();
    let url = db.url.clone();
    let api = TestApi::spawn_in(iso.clone(), |s| {
        s.reset.database.database_url = url;
        s.reset.report_pause = Duration::from_secs(2);
    })
    .await;
    let mut settings = worker_settings(&iso, &db.url, &sink.url());
    settings.policy.cooldown = Duration::from_millis(100);
    settings.policy.max_cooldown = Duration::from_millis(200);
    let worker = TestWorker::spawn(settings);
    db.account("ada").add().await;
    assert_eq!(api.forgot_id("ada").await.status, 200);
    let secret = sink.wait_for(1, WAIT).await[0].report_secret();
    let reported = post_page_form(api.addr, "/reset-password/report", &format!("r={secret}")).await;
    assert!(
        reported.body.contains("Thank you for telling us"),
        "{reported:?}"
    );
    let paused_until = std::time::Instant::now() + Duration::from_secs(2);

    assert_eq!(api.forgot_id("ada").await.status, 200);
    db.wait_for_outcomes(2).await;
    assert_eq!(sink.messages().len(), 1, "paused");
    tokio::time::sleep_until((paused_until + Duration::from_millis(300)).into()).await;
    assert_eq!(api.forgot_id("ada").await.status, 200);
    assert_eq!(
        sink.wait_for(2, WAIT).await.len(),
        2,
        "mailed after the pause"
    );
    worker.stop().await;
    api.stop().await;
    db.drop_db().await;
}
