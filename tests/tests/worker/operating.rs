//! Operating the service: replay, dead-letter tools, metrics, logs, several workers.

use std::process::Stdio;
use std::time::Duration;

use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{System, WorkerProcess, binary, worker_args, worker_settings};
use e2e::{Isolation, KEY, TestApi, free_port, get, metric, nats_url};
use worker::cli::{DeadLetterCommand, ReplayArgs};
use worker::store::Outcome;

fn replay_args() -> ReplayArgs {
    ReplayArgs {
        since: None,
        from_seq: None,
        until: None,
        id: None,
        limit: None,
        render: false,
        json: true,
        execute: false,
        yes: false,
        force: false,
    }
}

async fn replay(settings: &worker::Settings, args: ReplayArgs) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    worker::ops::replay(settings, &args, &mut out)
        .await
        .expect("replay");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

async fn dead_letters(settings: &worker::Settings, command: DeadLetterCommand) -> String {
    let mut out = Vec::new();
    worker::ops::dead_letters(settings, &command, &mut out)
        .await
        .expect("dead-letters");
    String::from_utf8(out).expect("utf8")
}

/// An account whose mail the test SMTP server refuses with 451, twice.
async fn add_tempfail_account(system: &System) {
    system
        .db
        .account("temp")
        .email("tempfail2@example.com")
        .add()
        .await;
}

/// The one dead letter, once the worker has written it.
async fn the_dead_letter(settings: &worker::Settings) -> serde_json::Value {
    let mut listed = String::new();
    for _ in 0..100 {
        listed = dead_letters(settings, DeadLetterCommand::List { json: true }).await;
        if !listed.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serde_json::from_str(listed.trim()).expect("one dead letter")
}

fn ops_settings(system: &System) -> worker::Settings {
    worker_settings(&system.api.iso, &system.db.url, &system.sink.url())
}

/// "Why did this person get no email?" answered from the stream and the records, changing
/// nothing.
#[tokio::test]
async fn a_dry_replay_shows_each_event_then_and_now_and_changes_nothing() {
    let system = System::start().await;
    system.db.account("ada").locale("de").add().await;
    for id in ["ada", "nobody@example.com", "ada"] {
        assert_eq!(system.api.forgot_id(id).await.status, 200);
    }
    system.db.wait_for_outcomes(3).await;
    let settings = ops_settings(&system);

    let lines = replay(&settings, replay_args()).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1]["record"]["outcome"], "no_account");
    assert_eq!(lines[1]["decision"]["action"], "no_account");
    assert_eq!(lines[1]["id"], "n***@e***.com");
    // The two requests for ada were handled concurrently: either may be the one sent.
    let mut ada: Vec<(String, String)> = [&lines[0], &lines[2]]
        .iter()
        .map(|l| {
            (
                l["record"]["outcome"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                l["decision"]["action"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    ada.sort();
    assert_eq!(
        ada,
        [
            ("sent".to_owned(), "already_sent".to_owned()),
            ("throttled".to_owned(), "throttled".to_owned())
        ]
    );
    assert_eq!(lines[2]["decision"]["locale"], "de");
    assert!(lines.iter().all(|l| l["request_id"].is_string()));

    let only_ada = replay(
        &settings,
        ReplayArgs {
            id: Some("ADA".into()),
            ..replay_args()
        },
    )
    .await;
    assert_eq!(only_ada.len(), 2);
    let first = replay(
        &settings,
        ReplayArgs {
            limit: Some(1),
            ..replay_args()
        },
    )
    .await;
    assert_eq!(first.len(), 1);
    let last_seq = lines[2]["seq"].as_u64().expect("seq");
    let from = replay(
        &settings,
        ReplayArgs {
            from_seq: Some(last_seq),
            ..replay_args()
        },
    )
    .await;
    assert_eq!(from.len(), 1);
    let rendered = replay(
        &settings,
        ReplayArgs {
            render: true,
            limit: Some(1),
            ..replay_args()
        },
    )
    .await;
    let text = rendered[0]["rendered"]["text"].as_str().expect("text");
    assert!(text.contains("token=TOKEN-PLACEHOLDER"), "{text}");
    assert_eq!(
        rendered[0]["rendered"]["subject"],
        "Ihr Passwort für Example zurücksetzen"
    );

    // Nothing was sent or recorded by looking.
    assert_eq!(system.sink.messages().len(), 1);
    assert_eq!(
        system.db.outcomes().await,
        [
            (Outcome::NoAccount, 1),
            (Outcome::Sent, 1),
            (Outcome::Throttled, 1)
        ]
    );
    let mut text_out = Vec::new();
    worker::ops::replay(
        &settings,
        &ReplayArgs {
            json: false,
            ..replay_args()
        },
        &mut text_out,
    )
    .await
    .expect("text replay");
    let text_out = String::from_utf8(text_out).expect("utf8");
    assert!(
        text_out.contains("then: sent after 1 attempt(s)"),
        "{text_out}"
    );
    assert!(
        !text_out.contains("ada@example.com"),
        "addresses are masked: {text_out}"
    );
    system.stop().await;
}

/// `worker replay` as an operator runs it: its results, one JSON line per event, are all of
/// stdout; connection chatter stays out of both streams unless `-v` asks for it.
#[tokio::test]
async fn replay_prints_only_its_results_on_stdout() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    system.db.wait_for_outcomes(1).await;
    let mut args = worker_args(&system.api.iso, &system.db.url, &system.sink.url());
    args.extend(["replay".to_owned(), "--json".to_owned()]);
    let run = |verbose: bool| {
        let mut command = std::process::Command::new(binary("worker"));
        command.args(&args).env_remove("RUST_LOG");
        if verbose {
            command.arg("-v");
        }
        command.output().expect("worker replay runs")
    };

    let quiet = run(false);
    assert!(quiet.status.success(), "{quiet:?}");
    let stdout = String::from_utf8(quiet.stdout).expect("utf-8");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is a result"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["record"]["outcome"], "sent");
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("INFO"), "{stderr}");

    let verbose = run(true);
    assert!(verbose.status.success());
    assert_eq!(String::from_utf8_lossy(&verbose.stdout), stdout);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    system.stop().await;
}

/// After an outage the worker gave up on (here: SMTP answering 451 past the last retry),
/// `replay --execute` sends what failed, once.
#[tokio::test]
async fn replay_execute_recovers_events_that_failed_during_an_outage() {
    let system = System::start_with(|s| {
        s.consume.backoff = worker::config::Backoff(vec![Duration::from_millis(100)]);
    })
    .await;
    add_tempfail_account(&system).await;
    system.db.account("ada").add().await;
    assert_eq!(system.api.forgot_id("temp").await.status, 200);
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    assert_eq!(
        system.db.wait_for_outcomes(2).await,
        [(Outcome::Failed, 1), (Outcome::Sent, 1)]
    );

    let settings = ops_settings(&system);
    let lines = replay(
        &settings,
        ReplayArgs {
            execute: true,
            since: Some("1h".parse().expect("since")),
            ..replay_args()
        },
    )
    .await;
    let executed: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["executed"].as_str())
        .collect();
    assert_eq!(executed, ["sent", "already_done"]);
    let mails = system.sink.messages();
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["ada@example.com", "tempfail2@example.com"]);
    assert_eq!(system.db.outcomes().await, [(Outcome::Sent, 2)]);
    system.stop().await;
}

/// `replay --execute` does what a live delivery would: it does not mail a request older than
/// the token's lifetime, nor decide a throttled one again, unless told to.
#[tokio::test]
async fn replay_execute_mails_nothing_that_is_too_old_or_was_throttled() {
    let system = System::start_with(|s| {
        s.consume.backoff = worker::config::Backoff(vec![Duration::from_millis(100)]);
        s.policy.token_ttl = Duration::from_secs(2);
    })
    .await;
    add_tempfail_account(&system).await;
    system.db.account("ada").add().await;
    for id in ["temp", "ada", "ada"] {
        assert_eq!(system.api.forgot_id(id).await.status, 200);
    }
    assert_eq!(
        system.db.wait_for_outcomes(3).await,
        [
            (Outcome::Failed, 1),
            (Outcome::Sent, 1),
            (Outcome::Throttled, 1)
        ]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut settings = ops_settings(&system);
    settings.policy.token_ttl = Duration::from_secs(2);
    let lines = replay(
        &settings,
        ReplayArgs {
            execute: true,
            since: Some("1h".parse().expect("since")),
            ..replay_args()
        },
    )
    .await;
    let mut executed: Vec<String> = lines
        .iter()
        .filter_map(|l| l["executed"].as_str())
        .map(|e| e.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect();
    executed.sort();
    assert_eq!(
        executed,
        [
            "skipped: older than TOKEN_TTL",
            "skipped: older than TOKEN_TTL",
            "skipped: throttled then; shown, not decided again (--force decides it again)",
        ]
    );
    // A replay mails, if at all, before it prints its line.
    assert_eq!(system.sink.messages().len(), 1, "no new mail");
    assert_eq!(
        system.db.outcomes().await,
        [
            (Outcome::Failed, 1),
            (Outcome::Sent, 1),
            (Outcome::Throttled, 1)
        ]
    );

    // Without a scope, or above ten events without --yes, it refuses before doing anything.
    let mut args = worker_args(&system.api.iso, &system.db.url, &system.sink.url());
    args.extend(["replay".to_owned(), "--execute".to_owned()]);
    let unscoped = std::process::Command::new(binary("worker"))
        .args(&args)
        .output()
        .expect("worker replay runs");
    assert!(!unscoped.status.success());
    let said = String::from_utf8_lossy(&unscoped.stderr);
    assert!(said.contains("--execute needs a scope"), "{said}");
    for n in 0..8 {
        let id = format!("nobody-{n}@example.com");
        assert_eq!(system.api.forgot_id(&id).await.status, 200);
    }
    system.db.wait_for_outcomes(11).await;
    let mut out = Vec::new();
    let err = worker::ops::replay(
        &settings,
        &ReplayArgs {
            execute: true,
            since: Some("1h".parse().expect("since")),
            ..replay_args()
        },
        &mut out,
    )
    .await
    .expect_err("11 events need --yes");
    assert!(
        err.to_string().starts_with("11 events match: add --yes"),
        "{err}"
    );
    assert!(out.is_empty());
    system.stop().await;
}

/// A retried letter is mailed with a fresh TOKEN_TTL, so `retry --all` leaves the ones that
/// were already too old to mail unless `--force` says otherwise.
#[tokio::test]
async fn retrying_all_dead_letters_skips_expired_ones_unless_forced() {
    let system = System::start_with(|s| {
        s.consume.backoff = worker::config::Backoff(vec![Duration::from_secs(2)]);
        s.policy.token_ttl = Duration::from_secs(1);
    })
    .await;
    add_tempfail_account(&system).await;
    assert_eq!(system.api.forgot_id("temp").await.status, 200);
    let settings = ops_settings(&system);
    let letter = the_dead_letter(&settings).await;
    assert_eq!(letter["reason"], "expired");
    let seq = letter["seq"].as_u64().expect("seq");

    let retry_all = |force| DeadLetterCommand::Retry {
        seq: None,
        all: true,
        force,
        yes: false,
    };
    let skipped = dead_letters(&settings, retry_all(false)).await;
    assert!(
        skipped.contains(&format!("skipped dead letter #{seq} (expired"))
            && skipped.contains("0 dead letter(s) republished"),
        "{skipped}"
    );
    assert_eq!(
        the_dead_letter(&settings).await["seq"],
        seq,
        "the letter is still there"
    );
    let forced = dead_letters(&settings, retry_all(true)).await;
    assert!(
        forced.contains(&format!("retried dead letter #{seq}")),
        "{forced}"
    );
    assert!(system.sink.messages().is_empty());
    system.stop().await;
}

/// A `Retry-Of` header earns a retry's lifetime (TOKEN_TTL from the retry, not from the
/// request) only on the retried subject, where only the worker's user may publish: on the
/// requested subject, where the api publishes, an old request stays too old to mail.
#[tokio::test]
async fn a_retry_header_counts_only_on_the_operators_subject() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let mut event = e2e::reset_event("ada", "req-old");
    event.requested_at -= time::Duration::hours(2);
    let publish = |subject: String| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Retry-Of", "1");
        let js = js.clone();
        let payload = event.to_json();
        async move {
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    };
    let prefix = &system.api.iso.prefix;
    publish(format!("{prefix}.requested")).await;
    assert_eq!(
        system.db.wait_for_outcomes(1).await,
        [(Outcome::Failed, 1)],
        "too old, whatever its headers say"
    );
    assert!(system.sink.messages().is_empty());

    publish(format!("{prefix}.retried")).await;
    let mails = system.sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "an operator's retry is mailed");
    system.stop().await;
}

/// Each retried letter is a mail to someone: more than ten at once take `--yes`, and without
/// it nothing is republished.
#[tokio::test]
async fn retrying_more_than_ten_dead_letters_at_once_takes_a_yes() {
    let system = System::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let subject = format!("{}.requested", system.api.iso.prefix);
    for _ in 0..11 {
        js.publish(subject.clone(), "not an event".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    assert_eq!(
        e2e::wait_for_dead_letters(&system.api.iso, 11).await.len(),
        11
    );
    let settings = ops_settings(&system);
    let retry_all = |yes| DeadLetterCommand::Retry {
        seq: None,
        all: true,
        force: false,
        yes,
    };
    let mut out = Vec::new();
    let refused = worker::ops::dead_letters(&settings, &retry_all(false), &mut out).await;
    let err = refused.expect_err("eleven letters without --yes");
    assert!(err.to_string().contains("add --yes"), "{err}");
    assert!(
        out.is_empty(),
        "nothing republished: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        e2e::wait_for_dead_letters(&system.api.iso, 11).await.len(),
        11
    );
    let retried = dead_letters(&settings, retry_all(true)).await;
    assert!(
        retried.contains("11 dead letter(s) republished"),
        "{retried}"
    );
    system.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_retried_into_a_mail() {
    let system = System::start_with(|s| {
        s.consume.backoff = worker::config::Backoff(vec![Duration::from_millis(100)]);
    })
    .await;
    add_tempfail_account(&system).await;
    assert_eq!(system.api.forgot_id("temp").await.status, 200);
    assert_eq!(system.db.wait_for_outcomes(1).await, [(Outcome::Failed, 1)]);
    let settings = ops_settings(&system);

    let letter = the_dead_letter(&settings).await;
    assert_eq!(letter["reason"], "retries_exhausted");
    assert_eq!(letter["attempts"], 2);
    assert!(
        letter["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("451"))
    );
    let seq = letter["seq"].as_u64().expect("seq");

    let shown = dead_letters(&settings, DeadLetterCommand::Show { seq }).await;
    assert!(shown.contains("Dead-Reason: retries_exhausted"), "{shown}");
    assert!(shown.contains("\"id\": \"temp\""), "{shown}");

    let retried = dead_letters(
        &settings,
        DeadLetterCommand::Retry {
            seq: None,
            all: true,
            force: false,
            yes: false,
        },
    )
    .await;
    assert!(
        retried.contains("1 dead letter(s) republished"),
        "{retried}"
    );
    let mails = system.sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(system.db.wait_for_outcomes(1).await, [(Outcome::Sent, 1)]);
    assert_eq!(
        dead_letters(&settings, DeadLetterCommand::List { json: false })
            .await
            .trim(),
        "no dead letters"
    );
    system.stop().await;
}

#[tokio::test]
async fn the_api_counts_requests_and_publish_latency() {
    let api = TestApi::spawn().await;
    assert_eq!(api.forgot_id("ada").await.status, 200);
    assert_eq!(get(api.addr, "/nope").await.status, 404);
    // The page's routes are counted by their own names, not as `other`.
    assert_eq!(get(api.addr, "/reset-password").await.status, 200);
    let metrics = get(api.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text"))
    );
    let body = &metrics.body;
    assert_eq!(
        metric(
            body,
            r#"api_requests_total{route="/auth/forgot-password",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(body, r#"api_requests_total{route="other",status="404"}"#),
        1.0
    );
    assert_eq!(
        metric(
            body,
            r#"api_requests_total{route="/reset-password",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(body, r#"api_publish_duration_seconds_count{result="ok"}"#),
        1.0
    );
    api.stop().await;
}

/// Three worker processes on one consumer: 1,000 requests, every mail exactly once, and each
/// worker did part of the work (as its own metrics say).
#[tokio::test]
async fn three_workers_share_1000_requests_and_each_mail_goes_out_once() {
    const REQUESTS: usize = 1000;
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("user-", REQUESTS as i32).await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let workers: Vec<WorkerProcess> = ports
        .iter()
        .map(|port| {
            let mut args: Vec<String> = worker_args(&iso, &db.url, &sink.url())
                .into_iter()
                .filter(|a| !a.starts_with("--addr="))
                .collect();
            args.push(format!("--addr=127.0.0.1:{port}"));
            WorkerProcess::spawn(&args)
        })
        .collect();

    for chunk in (0..REQUESTS).collect::<Vec<_>>().chunks(100) {
        let requests = chunk.iter().map(|n| api.forgot_id(format!("user-{n}")));
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.status, 200);
        }
    }
    let mails = sink.wait_for(REQUESTS, Duration::from_secs(120)).await;
    db.wait_for_outcomes(REQUESTS as i64).await;
    let mails_after = sink.messages();
    assert_eq!(mails.len(), REQUESTS);
    assert_eq!(mails_after.len(), REQUESTS, "no extra mail");
    let mut to: Vec<String> = mails_after.into_iter().map(|m| m.to).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), REQUESTS, "every account exactly once");

    let mut total = 0.0;
    for port in &ports {
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        let body = get(addr, "/metrics").await.body;
        let sent = metric(&body, r#"worker_events_total{outcome="sent"}"#);
        assert!(sent > 0.0, "worker on {port} sent nothing");
        total += sent;
        assert_eq!(get(addr, "/readyz").await.status, 200);
    }
    assert_eq!(total as usize, REQUESTS);
    drop(workers);
    api.stop().await;
    db.drop_db().await;
}

/// One request followed through the JSON logs of a real api and a real worker process: the
/// request id is in both, and no key, token or full address is in either.
#[tokio::test]
async fn one_request_can_be_followed_through_the_logs_which_hold_no_secret() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.account("ada")
        .email("ada.lovelace@example.com")
        .add()
        .await;
    let sink = SmtpSink::start();
    let logs = std::env::temp_dir().join(format!("logs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&logs).expect("mkdir");
    let worker_log = std::fs::File::create(logs.join("worker.log")).expect("log file");
    let api_log = std::fs::File::create(logs.join("api.log")).expect("log file");

    let mut worker_args = worker_args(&iso, &db.url, &sink.url());
    worker_args.push("--log-format=json".into());
    let mut worker = WorkerProcess::spawn_logging(&worker_args, worker_log, "info");
    let port = free_port();
    let mut api = std::process::Command::new(binary("api"))
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("API_KEYS", format!("tests:{KEY}"))
        .env("RESET_CODE_KEY", e2e::CODE_KEY)
        .env("NATS_URL", nats_url())
        .env("TEMPLATES_DIR", e2e::templates_dir())
        .env("RESET_STREAM", &iso.stream)
        .env("RESET_SUBJECT_PREFIX", &iso.prefix)
        .env("RESET_RETENTION", "1h")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(api_log))
        .spawn()
        .expect("api starts");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/readyz").await.status == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "api process never became ready");
    let request = e2e::request(
        "POST",
        "/auth/forgot-password",
        &[
            ("Authorization", format!("Bearer {KEY}")),
            ("Content-Type", "application/json".into()),
            ("X-Request-Id", "follow-me-123".into()),
        ],
        r#"{"id":"ada.lovelace@example.com"}"#,
    );
    assert_eq!(e2e::send_raw(addr, &request).await.status, 200);
    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    let token = mails[0].token();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &api.id().to_string()])
        .status();
    let _ = api.wait();
    // SIGTERM, so the worker writes out every log line it has queued before the logs are read.
    assert!(worker.terminate().success());

    let api_text = std::fs::read_to_string(logs.join("api.log")).expect("api log");
    let worker_text = std::fs::read_to_string(logs.join("worker.log")).expect("worker log");
    assert!(api_text.contains("follow-me-123"), "{api_text}");
    assert!(worker_text.contains("follow-me-123"), "{worker_text}");
    for (name, text) in [("api", &api_text), ("worker", &worker_text)] {
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|_| panic!("{name} log line is not JSON: {line}"));
        }
        assert!(!text.contains(KEY), "{name} log holds the API key");
        assert!(!text.contains(&token), "{name} log holds the token");
        assert!(
            !text.contains("ada.lovelace@example.com"),
            "{name} log holds the address"
        );
    }
    // The api's one line for the request says who asked, about whom (masked) and what became
    // of it.
    let finished: Vec<serde_json::Value> = api_text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["request_id"] == "follow-me-123")
        .collect();
    assert_eq!(finished.len(), 1, "{api_text}");
    let line = &finished[0];
    assert_eq!(line["message"], "request finished", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/auth/forgot-password", "{line}");
    assert_eq!(line["client"], "tests", "{line}");
    assert_eq!(line["account"], "a***@e***.com", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["event_id"].as_str().is_some_and(|id| id.len() == 36),
        "{line}"
    );
    assert!(line["seq"].as_u64().is_some(), "{line}");
    assert!(line.get("error").is_none(), "{line}");
    let _ = std::fs::remove_dir_all(logs);
    iso.delete_stream(nats_url()).await;
    db.drop_db().await;
}

/// "Why did this person not get in?": the funnel counts each stage once (the api and the
/// worker under one name), and `worker replay --id` shows each request's way: Ada's went all
/// the way, Bob's stopped at his mail, never opened.
#[tokio::test]
async fn the_funnel_counts_each_stage_once_and_replay_shows_where_a_request_stopped() {
    let port = free_port();
    let system = System::start_with(|s| {
        s.status.addr = format!("127.0.0.1:{port}").parse().expect("addr");
    })
    .await;
    system.db.account("ada").add().await;
    system.db.account("bob").add().await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    assert_eq!(system.api.forgot_id("bob").await.status, 200);
    let mails = system.sink.wait_for(2, Duration::from_secs(20)).await;
    let ada_mail = mails
        .iter()
        .find(|m| m.to.starts_with("ada"))
        .expect("Ada's mail");
    let token = ada_mail.token();
    // Opened twice (a scanner, then Ada): one open.
    for _ in 0..2 {
        let verify = serde_json::json!({ "token": token });
        let verified = system
            .api
            .post_json("/auth/reset-password/verify", verify)
            .await;
        assert_eq!(verified.status, 200, "{verified:?}");
    }
    let reset = serde_json::json!({"token": token, "password": "a new and long passphrase"});
    assert_eq!(
        system
            .api
            .post_json("/auth/reset-password", reset)
            .await
            .status,
        200
    );

    let series = |stage: &str| format!(r#"password_reset_funnel_total{{stage="{stage}"}}"#);
    let api_metrics = get(system.api.addr, "/metrics").await.body;
    for (stage, count) in [("requested", 2.0), ("opened", 1.0), ("completed", 1.0)] {
        assert_eq!(metric(&api_metrics, &series(stage)), count, "{stage}");
    }
    let worker_addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let worker_metrics = get(worker_addr, "/metrics").await.body;
    assert_eq!(metric(&worker_metrics, &series("mailed")), 2.0);

    let settings = ops_settings(&system);
    let way = |id: &str| {
        let settings = settings.clone();
        let id = id.to_owned();
        async move {
            let args = ReplayArgs {
                id: Some(id),
                ..replay_args()
            };
            replay(&settings, args).await.remove(0)["timeline"].clone()
        }
    };
    let ada = way("ada").await;
    for stage in ["accepted", "mailed", "opened", "completed"] {
        assert!(ada[stage].is_string(), "Ada {stage}: {ada}");
    }
    assert!(ada["reported"].is_null(), "{ada}");
    let bob = way("bob").await;
    assert!(bob["mailed"].is_string(), "{bob}");
    assert!(
        bob["opened"].is_null() && bob["completed"].is_null(),
        "{bob}"
    );
    system.stop().await;
}
