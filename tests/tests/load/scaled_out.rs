//! Workers scaled out, as KEDA does it: two and then four on one consumer, each joining just
//! before a burst, against strict SMTP servers that are slow to take new connections: Python's
//! stdlib server (`tests/smtpd_sink.py`), whose listen backlog of 5 leaves some of a burst's
//! new connections without their greeting for many seconds, and, so that it happens every
//! run, the test sink greeting every fourth new connection only after a minute. Every mail
//! must still arrive within 3 s of its request.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::db::TestDb;
use e2e::sink::SmtpSink;
use e2e::system::{WorkerProcess, worker_args};
use e2e::{Isolation, TestApi};

const BURST: usize = 200;
const TAIL: Duration = Duration::from_secs(3);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// Sends a burst of requests one after another, as one client would, and returns when each
/// was sent, by recipient address.
async fn burst(api: &TestApi, prefix: &str) -> HashMap<String, u128> {
    let mut sent = HashMap::new();
    for i in 0..BURST {
        let id = format!("{prefix}{i}");
        let at = now_ns();
        assert_eq!(api.forgot_id(&id).await.status, 200);
        sent.insert(format!("{id}@example.com"), at);
    }
    sent
}

#[tokio::test]
async fn two_then_four_workers_mail_every_burst_without_a_tail_from_stdlib_smtpd() {
    scale_out(SmtpSink::start_smtpd()).await;
}

#[tokio::test]
async fn two_then_four_workers_mail_every_burst_when_some_connections_never_greet() {
    let sink = SmtpSink::start_strict();
    std::fs::write(sink.dir.join("hold-every"), "4").expect("control file");
    scale_out(sink).await;
}

async fn scale_out(sink: SmtpSink) {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    // The shipped SMTP and lease deadlines: a connection that never greets costs SMTP_TIMEOUT.
    let mut args = worker_args(&iso, &db.url, &sink.url());
    args.retain(|a| !a.starts_with("--smtp-timeout=") && !a.starts_with("--claim-lease="));
    let mut workers = vec![WorkerProcess::spawn(&args)];
    let mut latencies = Vec::new();
    let mut mailed = 0;
    for (scale, to) in [(0, 2), (1, 4)] {
        // The new workers join just before the first burst, as an autoscaler's do.
        while workers.len() < to {
            workers.push(WorkerProcess::spawn(&args));
        }
        tokio::time::sleep(Duration::from_millis(1300)).await;
        for round in 0..3 {
            let prefix = format!("s{scale}r{round}-");
            db.add_numbered_accounts(&prefix, i32::try_from(BURST).expect("count"))
                .await;
            let sent = burst(&api, &prefix).await;
            mailed += BURST;
            let mails = sink.wait_for(mailed, Duration::from_secs(60)).await;
            assert_eq!(
                mails.len(),
                mailed,
                "{to} workers, burst {round}: all mailed"
            );
            let mut slowest = Duration::ZERO;
            for mail in &mails[mailed - BURST..] {
                let requested = sent[&mail.to];
                let took = Duration::from_nanos(
                    u64::try_from(mail.received_at_ns.saturating_sub(requested)).unwrap_or(0),
                );
                slowest = slowest.max(took);
                latencies.push(took);
            }
            println!("{to} workers, burst {round}: slowest mail {slowest:?}");
            assert!(
                slowest < TAIL,
                "{to} workers, burst {round}: a mail took {slowest:?} from its request"
            );
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!("p50 {:?}, p99 {p99:?}", latencies[latencies.len() / 2]);
    drop(workers);
    api.stop().await;
    db.drop_db().await;
}
