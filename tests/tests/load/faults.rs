//! The fault suite: the real system under load while something breaks, then every accepted
//! request checked against the mails received. Slow (about four minutes), so not part of
//! `scripts/test`: run it with `faults/run`, which also writes RELIABILITY.md.
//!
//! Each scenario prints one Markdown table row (and appends it to `$FAULTS_REPORT` if set):
//! scenario | load | faults injected | requests accepted | mails | lost | duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::db::{PrivatePostgres, TestDb};
use e2e::load::{drive, reconcile, report, wait_for_all};
use e2e::sink::SmtpSink;
use e2e::system::{TestWorker, WorkerProcess, worker_args, worker_settings};
use e2e::{Isolation, PrivateNats, TestApi};

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn kill_9_a_worker_every_2_seconds_under_5000_requests() {
    const N: usize = 5000;
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("k", N as i32).await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let args = worker_args(&iso, &db.url, &sink.url());
    let mut workers = vec![WorkerProcess::spawn(&args), WorkerProcess::spawn(&args)];
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        let args = args.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let victim = kills % workers.len();
                workers[victim].kill_9();
                workers[victim] = WorkerProcess::spawn(&args);
                kills += 1;
            }
            (kills, workers)
        })
    };
    let (accepted, _) = drive(&api, "k", N, 32, Arc::new(AtomicBool::new(false))).await;
    // Keep killing while the backlog drains, then let the last ack_wait pass.
    wait_for_all(&sink, &accepted, Duration::from_secs(120)).await;
    done.store(true, Ordering::Relaxed);
    let (kills, _workers) = killer.await.expect("killer");
    wait_for_all(&sink, &accepted, Duration::from_secs(30)).await;
    let mails = sink.messages();
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    report(
        "kill -9 a worker every 2 s (2 workers, each replaced at once)",
        &format!("{N} requests, 32 concurrent"),
        &format!("{kills} SIGKILLs"),
        accepted.len(),
        count,
        lost,
        duplicates,
    );
    assert_eq!(accepted.len(), N);
    assert_eq!(lost, 0, "accepted requests without a mail");
    // Each killed worker had at most its default WORKER_CONCURRENCY events in flight.
    let in_flight = usize::from(worker::config::DEFAULT_CONCURRENCY);
    assert!(
        duplicates <= kills * in_flight,
        "{duplicates} duplicates for {kills} kills"
    );
    api.stop().await;
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn restart_nats_with_sigterm_and_sigkill_under_load() {
    let mut nats = PrivateNats::start();
    let url = nats.url();
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("n", 100_000).await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |s| {
        s.nats.nats_url = url.clone();
        s.http.publish_timeout = Duration::from_millis(500);
    })
    .await;
    let mut settings = worker_settings(&iso, &db.url, &sink.url());
    settings.nats.nats_url = url.clone();
    settings.consume.backoff = worker::config::Backoff(vec![Duration::from_secs(1); 5]);
    let worker = TestWorker::spawn(settings);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let api = &api;
        async move { drive(api, "n", 100_000, 8, stop).await }
    };
    let faults = async {
        let mut windows = Vec::new();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for kill in [false, true] {
            let down = Instant::now();
            if kill {
                nats.kill()
            } else {
                nats.terminate()
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            nats.restart();
            windows.push((down, Instant::now()));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        stop.store(true, Ordering::Relaxed);
        windows
    };
    let ((accepted, answers), windows) = tokio::join!(load, faults);
    // No 200 can be answered while the server is gone (half a second of slack for answers
    // already on their way when it went).
    let during: Vec<&(Instant, u16)> = answers
        .iter()
        .filter(|(at, _)| {
            windows
                .iter()
                .any(|(down, up)| *at > *down + Duration::from_millis(500) && at < up)
        })
        .collect();
    let ok_while_down = during.iter().filter(|(_, status)| *status == 200).count();
    let unavailable = during.iter().filter(|(_, status)| *status == 503).count();

    let mails = wait_for_all(&sink, &accepted, Duration::from_secs(60)).await;
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    report(
        "restart nats-server under load (api and worker not restarted)",
        &format!("{} requests, 8 concurrent, for 14 s", answers.len()),
        &format!(
            "SIGTERM + 3 s down, SIGKILL + 3 s down; {unavailable} answered 503 meanwhile, {ok_while_down} 200"
        ),
        accepted.len(),
        count,
        lost,
        duplicates,
    );
    assert_eq!(ok_while_down, 0, "a 200 while NATS was down");
    assert!(
        unavailable > 0,
        "no request was refused while NATS was down"
    );
    assert_eq!(lost, 0);
    worker.stop().await;
    api.stop().await;
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn restart_postgresql_under_load() {
    const N: usize = 2000;
    let pg = PrivatePostgres::start();
    let url = pg.url("postgres");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    shared::db::migrate(&pool).await.expect("migrate");
    sqlx::query("INSERT INTO accounts (id, email) SELECT 'p' || i, 'p' || i || '@example.com' FROM generate_series(0, $1 - 1) i")
        .bind(N as i32)
        .execute(&pool)
        .await
        .expect("accounts");
    pool.close().await;
    let iso = Isolation::new();
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let mut settings = worker_settings(&iso, &url, &sink.url());
    settings.consume.backoff = worker::config::Backoff(
        ["1s", "2s", "4s", "8s", "16s"]
            .iter()
            .map(|d| humantime_secs(d))
            .collect(),
    );
    let worker = TestWorker::spawn(settings);

    let load = drive(&api, "p", N, 16, Arc::new(AtomicBool::new(false)));
    let fault = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pg.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.start_again();
    };
    let ((accepted, _), ()) = tokio::join!(load, fault);
    let mails = wait_for_all(&sink, &accepted, Duration::from_secs(90)).await;
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    report(
        "restart PostgreSQL under load (worker not restarted)",
        &format!("{N} requests, 16 concurrent"),
        "fast shutdown, 3 s down, start",
        accepted.len(),
        count,
        lost,
        duplicates,
    );
    assert_eq!(accepted.len(), N);
    assert_eq!(lost, 0);
    worker.stop().await;
    api.stop().await;
}

fn humantime_secs(d: &str) -> Duration {
    Duration::from_secs(d.trim_end_matches('s').parse().expect("seconds"))
}

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn smtp_451_for_60_seconds_then_550() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("s", 40).await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let backoff: Vec<Duration> = [1, 5, 15, 30, 60, 120].map(Duration::from_secs).to_vec();
    let mut settings = worker_settings(&iso, &db.url, &sink.url());
    settings.consume.backoff = worker::config::Backoff(backoff.clone());
    let worker = TestWorker::spawn(settings);

    // 451 for everyone for 60 s: mails arrive after it recovers, on the backoff schedule.
    sink.fail_all(451);
    let outage = Instant::now();
    let mut accepted = BTreeSet::new();
    for i in 0..20 {
        if api.forgot_id(format!("s{i}")).await.status == 200 {
            accepted.insert(format!("s{i}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(outage.elapsed())).await;
    sink.heal();
    let mails = wait_for_all(&sink, &accepted, Duration::from_secs(150)).await;
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    let log = sink.rcpt_log();
    let mut attempts: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for (at, _, address) in &log {
        attempts.entry(address.clone()).or_default().push(*at);
    }
    let max_attempts = attempts.values().map(Vec::len).max().unwrap_or(0);
    // Gaps between attempts follow the schedule (never shorter than the delay asked for).
    for times in attempts.values() {
        for (n, pair) in times.windows(2).enumerate() {
            let gap = Duration::from_nanos((pair[1] - pair[0]) as u64);
            assert!(
                gap + Duration::from_millis(300) >= backoff[n],
                "attempt {} came after {gap:?}",
                n + 2
            );
        }
    }
    report(
        "SMTP answers 451 to everything for 60 s, then recovers",
        "20 requests",
        &format!(
            "451 for 60 s; {} RCPTs in all, at most {max_attempts} per mail (backoff 1s,5s,15s,30s,60s,120s)",
            log.len()
        ),
        accepted.len(),
        count,
        lost,
        duplicates,
    );
    assert_eq!(lost, 0);
    assert!(
        max_attempts <= backoff.len() + 1,
        "retry storm: {max_attempts} attempts"
    );

    // 550: one attempt each, dead letters, no retry.
    sink.fail_all(550);
    let before = sink.rcpt_log().len();
    let mut rejected = 0;
    for i in 20..40 {
        if api.forgot_id(format!("s{i}")).await.status == 200 {
            rejected += 1;
        }
    }
    let failed = {
        let mut failed = 0;
        for _ in 0..100 {
            failed = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM reset_requests WHERE outcome = 'failed'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("count");
            if failed as usize == rejected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        failed as usize
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rcpts = sink.rcpt_log().len() - before;
    report(
        "SMTP answers 550",
        "20 requests",
        &format!("550 for every recipient; {rcpts} RCPTs, {failed} dead letters"),
        rejected,
        0,
        0,
        0,
    );
    assert_eq!(rcpts, rejected, "one attempt per mail, no retry");
    assert_eq!(failed, rejected);
    sink.heal();
    worker.stop().await;
    api.stop().await;
    db.drop_db().await;
}

/// Two-sample Kolmogorov–Smirnov test: the p-value that both samples come from one
/// distribution (asymptotic form, as in Numerical Recipes).
fn ks_p_value(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n1 - j as f64 / n2).abs());
    }
    let ne = n1 * n2 / (n1 + n2);
    let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d;
    let mut p = 0.0;
    for k in 1..=100 {
        let term = 2.0 * (-1f64).powi(k - 1) * (-2.0 * (k as f64).powi(2) * lambda * lambda).exp();
        p += term;
    }
    (d, p.clamp(0.0, 1.0))
}

/// The api never looks an account up, so its answers must not differ. The worker does real
/// work for existing accounts only; on a machine it shares with the api it would leak that
/// through CPU contention, so it runs here as it should in production: apart from the api's
/// CPU, approximated on this two-core machine by the lowest priority (`nice -n 19`).
#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn existing_and_unknown_accounts_cannot_be_told_apart() {
    let iso = Isolation::new();
    let db = TestDb::migrated().await;
    db.add_numbered_accounts("known", 1000).await;
    let sink = SmtpSink::start();
    let api = TestApi::spawn_in(iso.clone(), |_| {}).await;
    let _worker = WorkerProcess::spawn_niced(&worker_args(&iso, &db.url, &sink.url()));
    for i in 0..100 {
        let _ = api.forgot_id(format!("warmup{i}")).await;
    }
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    let mut shapes = BTreeSet::new();
    for i in 0..1000 {
        for (id, times) in [
            (format!("known{i}"), &mut known),
            (format!("nobody{i}"), &mut unknown),
        ] {
            let started = Instant::now();
            let response = api.forgot_id(&id).await;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            let headers: Vec<String> = response
                .headers
                .iter()
                .filter(|(name, _)| name != "x-request-id" && name != "date")
                .map(|(name, value)| format!("{name}: {value}"))
                .collect();
            shapes.insert((response.status, headers, response.body));
        }
    }
    let (d, p) = ks_p_value(&mut known, &mut unknown);
    report(
        "enumeration: existing vs unknown accounts",
        "2,000 requests, alternating",
        &format!(
            "{} distinct answers (status, headers but request id and date, body); latency KS D = {d:.3}, p = {p:.3}",
            shapes.len()
        ),
        2000,
        1000,
        0,
        0,
    );
    assert_eq!(shapes.len(), 1, "{shapes:?}");
    assert!(p > 0.01, "latency distributions differ: D = {d}, p = {p}");
    assert!(
        sink.wait_for(1000, Duration::from_secs(60)).await.len() >= 1000,
        "the worker mailed the existing accounts"
    );
    api.stop().await;
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn sigterm_a_worker_20_times_under_load() {
    let deadline = Duration::from_secs(5);
    let run = e2e::load::sigterm_workers_under_load(
        50_000,
        20,
        Duration::from_millis(1500),
        Some(deadline),
    )
    .await;
    report(
        "SIGTERM a worker every 1.5 s (2 workers, each replaced at once)",
        &format!("{} requests, 4 concurrent", run.accepted),
        &format!(
            "{} SIGTERMs, WORKER_SHUTDOWN_TIMEOUT {deadline:?}, longest stop {:.2} s",
            run.stops,
            run.longest_stop.as_secs_f64()
        ),
        run.accepted,
        run.mails,
        run.lost,
        run.duplicates,
    );
    // Ended by its work, not its deadline: the deadline is no bound a stop can hide behind.
    run.assert_clean(Duration::from_secs(1));
}

#[tokio::test]
#[ignore = "fault suite: run with faults/run"]
async fn sigterm_the_api_10_times_under_load() {
    let run = e2e::load::sigterm_api_under_load(50_000, 10, Duration::from_millis(1500)).await;
    report(
        "SIGTERM the api every 1.5 s (started again at once on its port)",
        &format!(
            "{} requests, 4 concurrent, each asked again with its Idempotency-Key until 200",
            run.accepted
        ),
        &format!(
            "{} SIGTERMs, longest stop {:.2} s; {} answers other than 200, {} without an answer",
            run.stops,
            run.longest_stop.as_secs_f64(),
            run.refused,
            run.unanswered
        ),
        run.accepted,
        run.mails,
        run.lost,
        run.duplicates,
    );
    assert_eq!(run.unclean, 0, "{run:?}");
    assert_eq!(run.lost, 0, "{run:?}");
    assert_eq!(run.duplicates, 0, "{run:?}");
}
