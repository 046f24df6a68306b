//! Mail over SMTP as servers really behave: TLS, refusals of a message, a strict server that
//! refuses a second EHLO, a server that refuses the session itself, and Postfix as a relay.

use std::time::Duration;

use e2e::db::TestDb;
use e2e::sink::{PostfixRelay, SinkTls, SmtpSink};
use e2e::system::{System, TestWorker, worker_settings};
use e2e::{Isolation, TestApi, dead_letters, free_port, get, metric};
use worker::store::Outcome;
use worker::transport::{Mailer, SendError, Window};

const WAIT: Duration = Duration::from_secs(20);

/// A hand-over with no claim to keep within: it may begin whenever a connection is free.
fn no_hurry() -> Window {
    let later = std::time::Instant::now() + Duration::from_secs(3600);
    Window {
        start_by: later,
        answered_by: later,
    }
}

#[tokio::test]
async fn mail_goes_over_starttls_and_implicit_tls() {
    for tls in [SinkTls::StartTls, SinkTls::Implicit] {
        let iso = Isolation::new();
        let db = TestDb::migrated().await;
        db.account("ada").add().await;
        let sink = SmtpSink::start_with(tls);
        let mut settings = worker_settings(&iso, &db.url, &sink.url());
        settings.mail.smtp_ca_file = Some(sink.ca_file());
        let api = TestApi::spawn_in(iso, |_| {}).await;
        let worker = TestWorker::spawn(settings);
        assert_eq!(api.forgot_id("ada").await.status, 200);
        let mails = sink.wait_for(1, WAIT).await;
        assert_eq!(mails.len(), 1, "{tls:?}");
        worker.stop().await;
        api.stop().await;
        db.drop_db().await;
    }
}

/// The worker's mailer for `sink`, with a pool of one connection.
fn one_connection_mailer(sink: &SmtpSink) -> Mailer {
    let mut settings = worker_settings(&Isolation::new(), "postgres://unused", &sink.url());
    settings.mail.smtp_pool_size = 1;
    Mailer::from_settings(&settings.mail).expect("mailer")
}

fn message_to(to: &str, body: &str) -> lettre::Message {
    message_to_all(&[to], body)
}

fn message_to_all(recipients: &[&str], body: &str) -> lettre::Message {
    let builder = lettre::Message::builder()
        .from("Example <no-reply@example.com>".parse().expect("from"))
        .subject("a test");
    recipients
        .iter()
        .fold(builder, |builder, to| builder.to(to.parse().expect("to")))
        .body(body.to_owned())
        .expect("message")
}

/// One pooled connection carries message after message, greeted once, and a strict server
/// never sees a second EHLO. Lines opening with a dot arrive as they were written.
#[tokio::test]
async fn one_connection_carries_many_mails_after_a_single_ehlo() {
    let sink = SmtpSink::start_strict();
    let mailer = one_connection_mailer(&sink);
    let body = "first line\r\n.a line opening with a dot\r\n.\r\nlast line\r\n";
    for n in 0..25 {
        let message = message_to(&format!("ada{n}@example.com"), body);
        mailer
            .send(&message, &n.to_string(), no_hurry())
            .await
            .expect("send");
    }
    let mails = sink.wait_for(25, WAIT).await;
    assert_eq!(mails.len(), 25);
    for mail in &mails {
        assert!(
            mail.raw
                .contains("\r\n.a line opening with a dot\r\n.\r\nlast line"),
            "content changed on the way: {:?}",
            mail.raw
        );
    }
    assert_eq!(sink.ehlo_log(), [250], "one session, greeted once");
    mailer.close().await;
}

/// A hand-over that could not begin in time (the delivery's claim would run out first) says
/// nothing to the server, and the connection goes on carrying the next mail.
#[tokio::test]
async fn a_send_that_cannot_begin_in_time_is_not_begun() {
    let sink = SmtpSink::start_strict();
    let mailer = one_connection_mailer(&sink);
    mailer
        .send(&message_to("ada@example.com", "x"), "first", no_hurry())
        .await
        .expect("send");
    let past = Window {
        start_by: std::time::Instant::now() - Duration::from_millis(1),
        ..no_hurry()
    };
    let late = mailer
        .send(&message_to("late@example.com", "x"), "late", past)
        .await;
    assert_eq!(late, Err(SendError::TooLate));
    mailer
        .send(&message_to("bob@example.com", "x"), "next", no_hurry())
        .await
        .expect("send");
    let mails = sink.wait_for(2, WAIT).await;
    let to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(to, ["ada@example.com", "bob@example.com"]);
    assert_eq!(sink.rcpt_log().len(), 2, "nothing said for the late one");
    assert_eq!(sink.ehlo_log(), [250], "the connection was kept");
    mailer.close().await;
}

/// The server's answer to the message is waited for past SMTP_TIMEOUT (3 s in the tests),
/// to the end of the window: a slow server that takes the mail is not asked again. Past the
/// window the send gives up and says the mail may have been taken.
#[tokio::test]
async fn a_slow_answer_to_the_message_is_waited_for_to_the_end_of_the_window() {
    let sink = SmtpSink::start();
    let mailer = one_connection_mailer(&sink);
    let began = std::time::Instant::now();
    mailer
        .send(&message_to("slow4000@example.com", "x"), "slow", no_hurry())
        .await
        .expect("taken after 4 s, past SMTP_TIMEOUT");
    assert!(began.elapsed() >= Duration::from_secs(4));
    let short = Window {
        start_by: std::time::Instant::now() + Duration::from_secs(1),
        answered_by: std::time::Instant::now() + Duration::from_millis(3500),
    };
    let cut = mailer
        .send(&message_to("slow6000@example.com", "x"), "cut", short)
        .await;
    assert!(
        matches!(&cut, Err(SendError::Transient(text)) if text.contains("may have taken")),
        "{cut:?}"
    );
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails[0].to, "slow4000@example.com");
    mailer.close().await;
}

/// A refusal of a message is the send's outcome, permanent (5xx) or transient (4xx) as its
/// code says, and the next message still goes (on a fresh connection).
#[tokio::test]
async fn a_refusal_is_permanent_or_transient_by_its_code_and_the_next_mail_goes() {
    let sink = SmtpSink::start_strict();
    let mailer = one_connection_mailer(&sink);
    let refused = mailer
        .send(
            &message_to("reject@example.com", "x"),
            "rejected",
            no_hurry(),
        )
        .await;
    assert!(
        matches!(&refused, Err(SendError::Permanent(text)) if text.contains("550")),
        "{refused:?}"
    );
    let deferred = mailer
        .send(
            &message_to("tempfail1@example.com", "x"),
            "deferred",
            no_hurry(),
        )
        .await;
    assert!(
        matches!(&deferred, Err(SendError::Transient(text)) if text.contains("451")),
        "{deferred:?}"
    );
    mailer
        .send(
            &message_to("tempfail1@example.com", "x"),
            "retried",
            no_hurry(),
        )
        .await
        .expect("accepted the second time");
    mailer
        .send(&message_to("ada@example.com", "x"), "next", no_hurry())
        .await
        .expect("send");
    let mails = sink.wait_for(2, WAIT).await;
    let to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(to, ["tempfail1@example.com", "ada@example.com"]);
    assert!(sink.ehlo_log().iter().all(|code| *code == 250));
    mailer.close().await;
}

/// A refused recipient fails the whole send: nothing is delivered to the others, and the
/// next message goes.
#[tokio::test]
async fn a_refused_recipient_among_accepted_ones_fails_the_send() {
    let sink = SmtpSink::start();
    let mailer = one_connection_mailer(&sink);
    let message = message_to_all(&["ada@example.com", "reject@example.com"], "x");
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        mailer.send(&message, "two", no_hurry()),
    )
    .await
    .expect("the send ends well before the server's own timeout");
    assert!(
        matches!(&refused, Err(SendError::Permanent(text)) if text.contains("550")),
        "{refused:?}"
    );
    mailer
        .send(&message_to("bob@example.com", "x"), "next", no_hurry())
        .await
        .expect("send");
    sink.wait_for(1, WAIT).await;
    let to: Vec<String> = sink.messages().iter().map(|m| m.to.clone()).collect();
    assert_eq!(to, ["bob@example.com"]);
    mailer.close().await;
}

/// Against a server that answers a repeated EHLO with 503, the whole journey delivers every
/// mail, once, and nothing is dead-lettered.
#[tokio::test]
async fn a_strict_server_that_refuses_a_second_ehlo_gets_every_mail() {
    const ACCOUNTS: i32 = 20;
    let system = System::start_with_sink(SmtpSink::start_strict(), |_| {}).await;
    system.db.add_numbered_accounts("strict", ACCOUNTS).await;
    for n in 0..ACCOUNTS {
        assert_eq!(system.api.forgot_id(format!("strict{n}")).await.status, 200);
    }
    every_account_gets_one_mail(&system, ACCOUNTS).await;
    let codes = system.sink.ehlo_log();
    assert!(
        !codes.is_empty() && codes.iter().all(|code| *code == 250),
        "{codes:?}"
    );
    system.stop().await;
}

/// A worker opens its SMTP sessions as it starts, before any mail: one that joins just
/// before a burst does not set them up while the burst waits. The mail then goes on them.
#[tokio::test]
async fn a_starting_worker_has_its_smtp_sessions_open_before_the_first_mail() {
    const POOL: u16 = 4;
    let system = System::start_with_sink(SmtpSink::start_strict(), |s| {
        s.mail.smtp_pool_size = POOL;
    })
    .await;
    let mut opened = system.sink.ehlo_log();
    for _ in 0..200 {
        if opened.len() >= usize::from(POOL) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        opened = system.sink.ehlo_log();
    }
    assert_eq!(
        opened, [250; POOL as usize],
        "sessions open with no mail asked for"
    );
    assert!(system.sink.messages().is_empty());

    system
        .db
        .add_numbered_accounts("warm", i32::from(POOL))
        .await;
    for n in 0..POOL {
        assert_eq!(system.api.forgot_id(format!("warm{n}")).await.status, 200);
    }
    every_account_gets_one_mail(&system, i32::from(POOL)).await;
    assert_eq!(
        system.sink.ehlo_log().len(),
        usize::from(POOL),
        "the mail went on the sessions opened at the start"
    );
    system.stop().await;
}

/// Postfix from Debian's packages as the relay in front of a strict server: every mail is
/// accepted by Postfix and arrives at the server behind it, once.
#[tokio::test]
async fn every_mail_relayed_through_postfix_arrives() {
    const ACCOUNTS: i32 = 20;
    let sink = SmtpSink::start_strict();
    let relay = PostfixRelay::start(&sink);
    let relay_url = relay.url();
    let system = System::start_with_sink(sink, |s| s.mail.smtp_url = Some(relay_url)).await;
    system.db.add_numbered_accounts("relayed", ACCOUNTS).await;
    for n in 0..ACCOUNTS {
        assert_eq!(
            system.api.forgot_id(format!("relayed{n}")).await.status,
            200
        );
    }
    every_account_gets_one_mail(&system, ACCOUNTS).await;
    let mails = system.sink.messages();
    assert!(
        mails.iter().all(|m| m.raw.contains("Received: ")),
        "every mail came through Postfix"
    );
    drop(relay);
    system.stop().await;
}

async fn every_account_gets_one_mail(system: &System, accounts: i32) {
    let count = usize::try_from(accounts).expect("count");
    let mails = system.sink.wait_for(count, Duration::from_secs(60)).await;
    system.db.wait_for_outcomes(i64::from(accounts)).await;
    let mut to: Vec<String> = system.sink.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(to.len(), count, "{} mails, then {}", mails.len(), to.len());
    to.sort();
    to.dedup();
    assert_eq!(to.len(), count, "one mail per account");
    assert!(dead_letters(&system.api.iso).await.is_empty());
    system.db.wait_for_outcomes(i64::from(accounts)).await;
    assert_eq!(
        system.db.outcomes().await,
        [(Outcome::Sent, i64::from(accounts))]
    );
}

/// A 5xx answer to EHLO is the server's or our configuration's fault, not the message's: no
/// mail is dead-lettered, `/readyz` names SMTP, the failure is counted by stage, the pool
/// tries far less often than mail is retried, and every mail goes once the server takes the
/// session again.
#[tokio::test]
async fn a_5xx_to_ehlo_dead_letters_nothing_and_the_mail_goes_once_the_server_recovers() {
    const ACCOUNTS: i32 = 3;
    let sink = SmtpSink::start();
    sink.fail_ehlo();
    let port = free_port();
    let system = System::start_with_sink(sink, |s| {
        s.status.addr = ([127, 0, 0, 1], port).into();
    })
    .await;
    let status = ([127, 0, 0, 1], port).into();
    system.db.add_numbered_accounts("refused", ACCOUNTS).await;
    for n in 0..ACCOUNTS {
        assert_eq!(
            system.api.forgot_id(format!("refused{n}")).await.status,
            200
        );
    }

    let mut ready = get(status, "/readyz").await;
    for _ in 0..200 {
        if ready.status == 503 && ready.message().contains("SMTP") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = get(status, "/readyz").await;
    }
    assert_eq!(ready.status, 503);
    assert!(
        ready.message().contains("SMTP") && ready.message().contains("hello"),
        "{}",
        ready.message()
    );
    // Let the events be retried for a while (the test backoff is 100-300 ms).
    let retried_series = r#"worker_events_total{outcome="retried"}"#;
    let mut metrics = get(status, "/metrics").await.body;
    for _ in 0..300 {
        if metric(&metrics, retried_series) >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = get(status, "/metrics").await.body;
    }
    let failures = metric(
        &metrics,
        r#"worker_smtp_connect_failures_total{stage="hello"}"#,
    );
    let retried = metric(&metrics, retried_series);
    let attempts = system.sink.ehlo_log().len();
    assert!(retried >= 20.0, "{retried} retries");
    assert!(failures >= 1.0, "{failures} failures counted");
    assert!(
        2 * attempts < retried as usize,
        "{retried} retries of mail, {attempts} connection attempts: retries opened sessions"
    );
    assert!(dead_letters(&system.api.iso).await.is_empty());
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reset_requests WHERE outcome = 'failed'")
            .fetch_one(&system.db.pool)
            .await
            .expect("count");
    assert_eq!(failed, 0);
    assert!(system.sink.messages().is_empty());

    system.sink.heal();
    every_account_gets_one_mail(&system, ACCOUNTS).await;
    assert_eq!(get(status, "/readyz").await.status, 200);
    system.stop().await;
}

/// Deliveries that found no SMTP session do not use up the message's own retries: after an
/// outage longer than the whole retry schedule, a 451 for the message is still retried, and
/// the mail goes out instead of being dead-lettered.
#[tokio::test]
async fn a_refused_message_after_an_smtp_outage_still_gets_its_retries() {
    let sink = SmtpSink::start();
    sink.fail_ehlo();
    let port = free_port();
    let system = System::start_with_sink(sink, |s| {
        s.status.addr = ([127, 0, 0, 1], port).into();
    })
    .await;
    let status = ([127, 0, 0, 1], port).into();
    // The sink answers 451 to this address once, then takes it.
    system
        .db
        .account("late")
        .email("tempfail1@example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("late").await.status, 200);
    // Well past the test schedule's four attempts (100, 200, 300 ms).
    let retried_series = r#"worker_events_total{outcome="retried"}"#;
    for _ in 0..300 {
        if metric(&get(status, "/metrics").await.body, retried_series) >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&get(status, "/metrics").await.body, retried_series) >= 8.0);
    system.sink.heal();
    let mails = system.sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1, "the mail went out after the 451");
    let refused: Vec<u16> = system
        .sink
        .rcpt_log()
        .iter()
        .map(|(_, code, _)| *code)
        .collect();
    assert_eq!(
        refused,
        [451, 250],
        "one 451 for the message, then accepted"
    );
    assert!(dead_letters(&system.api.iso).await.is_empty());
    system.stop().await;
}
