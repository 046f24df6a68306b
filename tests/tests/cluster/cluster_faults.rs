//! The system on a three-node JetStream cluster (the stream with three replicas, the api and
//! two workers given all three URLs) under steady load while nodes fail: the stream's leader
//! killed with SIGKILL and restarted 10 s later; the leader frozen with SIGSTOP for 15 s; a
//! rolling restart of all three nodes; the stream at its size limit; the leader and the
//! api's connection partitioned off the other two nodes. Then every request
//! answered 200 is checked against the mails received, as the single-node fault suite does.
//! Part of `scripts/test` (each scenario about half a minute, run side by side), and of
//! `faults/run`, which records them in RELIABILITY.md. Each runs on two threads, as the
//! binaries do: the load and two workers on one thread would starve each other, which no
//! deployment does.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use e2e::cluster::{NODES, NatsCluster, NetnsCluster};
use e2e::db::TestDb;
use e2e::load::{
    KilledOnDrop, describe_duplicates, drive, drive_with, reconcile, report, try_forgot,
    wait_for_all, wait_for_api, with_api_env,
};
use e2e::sink::SmtpSink;
use e2e::system::{TestWorker, binary, worker_settings};
use e2e::{Isolation, TestApi};
use shared::stream::ensure_stream;

/// Accounts the load may ask for; more than any run sends.
const ACCOUNTS: i32 = 100_000;
const CONCURRENCY: usize = 8;

struct Rig {
    cluster: NatsCluster,
    iso: Isolation,
    db: TestDb,
    sink: SmtpSink,
    api: TestApi,
    workers: Vec<TestWorker>,
}

impl Rig {
    async fn start() -> Self {
        Self::with_max_bytes(None).await
    }

    /// A rig whose stream holds at most `max_bytes` (both binaries set it, as they must).
    async fn with_max_bytes(max_bytes: Option<u64>) -> Self {
        let cluster = NatsCluster::start().await;
        let urls = cluster.urls();
        let iso = Isolation::new();
        let db = TestDb::migrated().await;
        db.add_numbered_accounts("c", ACCOUNTS).await;
        let sink = SmtpSink::start();
        let api = TestApi::spawn_in(iso.clone(), |s| {
            s.nats.nats_url = urls.clone();
            s.stream.replicas = 3;
            s.stream.max_bytes = max_bytes;
        })
        .await;
        cluster.wait_for_stream(&iso.stream, 3).await;
        let workers = (0..2)
            .map(|_| {
                let mut settings = worker_settings(&iso, &db.url, &sink.url());
                settings.nats.nats_url = urls.clone();
                settings.stream.replicas = 3;
                settings.stream.max_bytes = max_bytes;
                settings.consume.backoff = worker::config::Backoff(vec![Duration::from_secs(1); 5]);
                TestWorker::spawn(settings)
            })
            .collect();
        Self {
            cluster,
            iso,
            db,
            sink,
            api,
            workers,
        }
    }

    /// Waits for the mails, reports the row and checks that nothing answered 200 was lost.
    async fn reckon(
        self,
        scenario: &str,
        faults: &str,
        accepted: &BTreeSet<String>,
        answers: &[(Instant, u16)],
    ) {
        let mails = wait_for_all(&self.sink, accepted, Duration::from_secs(90)).await;
        let (count, lost, duplicates) = reconcile(accepted, &mails);
        let refused = answers.iter().filter(|(_, s)| *s != 200).count();
        report(
            scenario,
            &format!(
                "{} requests, {CONCURRENCY} concurrent, 3 nodes, stream R3, 2 workers",
                answers.len()
            ),
            &format!(
                "{faults}; {refused} answered 503, the longest run of them {:.1} s",
                longest_unavailable(answers).as_secs_f64()
            ),
            accepted.len(),
            count,
            lost,
            duplicates,
        );
        assert!(!accepted.is_empty(), "nothing was accepted");
        assert_eq!(lost, 0, "requests answered 200 without a mail");
        assert_eq!(
            duplicates,
            0,
            "mails sent twice: {}",
            describe_duplicates(&mails)
        );
        for worker in self.workers {
            worker.stop().await;
        }
        self.api.stop().await;
        self.iso.delete_stream(&self.cluster.url(0)).await;
        self.db.drop_db().await;
    }
}

/// The longest stretch from a refused answer to the last refused one before the next 200.
fn longest_unavailable(answers: &[(Instant, u16)]) -> Duration {
    let mut sorted = answers.to_vec();
    sorted.sort_by_key(|(at, _)| *at);
    let (mut longest, mut since) = (Duration::ZERO, None::<(Instant, Instant)>);
    for (at, status) in sorted {
        if status == 200 {
            if let Some((first, last)) = since.take() {
                longest = longest.max(last - first);
            }
        } else {
            since = Some((since.map_or(at, |(first, _)| first), at));
        }
    }
    if let Some((first, last)) = since {
        longest = longest.max(last - first);
    }
    longest
}

/// Steady load on `api` while `faults` runs on the cluster; the load stops 5 s after the
/// faults end. Returns what the faults said and the load's outcome.
async fn under_load(
    rig: &mut Rig,
    faults: impl AsyncFnOnce(&mut NatsCluster, String) -> String,
) -> (String, BTreeSet<String>, Vec<(Instant, u16)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stream = rig.iso.stream.clone();
    let Rig { cluster, api, .. } = rig;
    let load = drive(api, "c", ACCOUNTS as usize, CONCURRENCY, stop.clone());
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let said = faults(cluster, stream).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        said
    };
    let ((accepted, answers), said) = tokio::join!(load, faults);
    (said, accepted, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_killed_and_restarted_10_s_later_loses_nothing() {
    let mut rig = Rig::start().await;
    let (said, accepted, answers) = under_load(&mut rig, async |cluster, stream| {
        let leader = cluster.leader(&stream).await;
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_secs(10)).await;
        cluster.restart(leader);
        format!(
            "SIGKILL of the stream's leader ({}), back after 10 s",
            cluster.name(leader)
        )
    })
    .await;
    rig.reckon(
        "cluster: kill -9 the stream's leader",
        &said,
        &accepted,
        &answers,
    )
    .await;
}

/// A frozen leader keeps its sockets; the others elect a new one. When it wakes it must not
/// take writes the new leader does not know: any it did would be answered 200 and missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_frozen_for_15_s_loses_nothing() {
    let mut rig = Rig::start().await;
    let (said, accepted, answers) = under_load(&mut rig, async |cluster, stream| {
        let leader = cluster.leader(&stream).await;
        cluster.freeze(leader);
        tokio::time::sleep(Duration::from_secs(15)).await;
        cluster.thaw(leader);
        let now = cluster.leader(&stream).await;
        format!(
            "SIGSTOP of the stream's leader ({}) for 15 s, then SIGCONT; leader after: {}",
            cluster.name(leader),
            cluster.name(now)
        )
    })
    .await;
    rig.reckon(
        "cluster: freeze the stream's leader",
        &said,
        &accepted,
        &answers,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let mut rig = Rig::start().await;
    let (said, accepted, answers) = under_load(&mut rig, async |cluster, stream| {
        for node in 0..NODES {
            cluster.terminate(node);
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.restart(node);
            // Back, and the stream led again, before the next node goes.
            cluster.wait_for_stream(&stream, 3).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        "SIGTERM of each node in turn, 3 s down, the next once it is back".to_owned()
    })
    .await;
    rig.reckon("cluster: rolling restart", &said, &accepted, &answers)
        .await;
}

/// The stream at its size limit refuses new events with a 503 that says so, and drops none it
/// holds: every event answered 200 is still in the stream and mailed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_new_events_and_drops_none() {
    const MAX_BYTES: u64 = 256 * 1024;
    let mut rig = Rig::with_max_bytes(Some(MAX_BYTES)).await;
    let (said, accepted, answers) = under_load(&mut rig, async |_cluster, _stream| {
        tokio::time::sleep(Duration::from_secs(5)).await;
        format!("RESET_MAX_BYTES={MAX_BYTES} reached under load")
    })
    .await;
    let refused = answers.iter().filter(|(_, s)| *s == 503).count();
    assert!(refused > 0, "the stream never filled");
    let answer = rig.api.forgot_id("c0").await;
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("the event stream is full"),
        "{}",
        answer.body
    );
    let client = async_nats::connect(rig.cluster.url(0)).await.expect("nats");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&rig.iso.stream)
        .await
        .expect("stream");
    let held = stream.info().await.expect("info").state.messages;
    assert_eq!(
        held,
        accepted.len() as u64,
        "events held against requests answered 200"
    );
    rig.reckon("cluster: the stream full", &said, &accepted, &answers)
        .await;
}

/// The stream's leader cut off the other two nodes, with the api running beside it (its
/// connection in the minority): what cannot reach a quorum must be answered 503, never 200,
/// and the api must recover on its own when the partition heals. Network namespaces and a
/// bridge made by the test itself; the cut takes the leader's link off the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_with_the_api_beside_it_never_answers_200() {
    let cluster = NetnsCluster::start().await;
    let iso = Isolation::new();
    // The stream first, so that its leader is known before the api starts beside it.
    let mut stream_settings = e2e::api_settings(&iso).stream;
    stream_settings.replicas = 3;
    let js = jetstream::new(async_nats::connect(cluster.url(0)).await.expect("nats"));
    ensure_stream(&js, &stream_settings).await.expect("stream");
    let leader = cluster.leader(&iso.stream).await;

    let db = TestDb::migrated().await;
    db.add_numbered_accounts("c", ACCOUNTS).await;
    let sink = SmtpSink::start();
    let workers: Vec<TestWorker> = (0..2)
        .map(|_| {
            let mut settings = worker_settings(&iso, &db.url, &sink.url());
            settings.nats.nats_url = cluster.urls();
            settings.stream.replicas = 3;
            TestWorker::spawn(settings)
        })
        .collect();
    let mut command = cluster.command_beside(leader, &binary("api"));
    let api = KilledOnDrop(
        with_api_env(&mut command, &iso)
            .env("API_ADDR", "0.0.0.0:8080")
            .env("API_RATE_LIMIT", "off")
            .env("API_PUBLISH_TIMEOUT", "2s")
            .env("NATS_URL", "nats://127.0.0.1:4222")
            .env("RESET_REPLICAS", "3")
            .spawn()
            .expect("the api starts beside the leader"),
    );
    let addr: SocketAddr = format!("{}:8080", cluster.side_ip(leader))
        .parse()
        .expect("addr");
    wait_for_api(addr).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = drive_with("c", usize::MAX, CONCURRENCY, stop.clone(), async |id| {
        try_forgot(addr, &id).await.unwrap_or(0)
    });
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cut = Instant::now();
        cluster.cut(leader);
        tokio::time::sleep(Duration::from_secs(15)).await;
        cluster.heal(leader);
        let healed = Instant::now();
        tokio::time::sleep(Duration::from_secs(15)).await;
        stop.store(true, Ordering::Relaxed);
        (cut, healed)
    };
    let ((accepted, answers), (cut, healed)) = tokio::join!(load, faults);
    // A second of slack for answers already on their way when the link went down.
    let during = |(at, _): &&(Instant, u16)| *at > cut + Duration::from_secs(1) && *at < healed;
    let ok_while_cut = answers
        .iter()
        .filter(during)
        .filter(|(_, s)| *s == 200)
        .count();
    let refused_while_cut = answers
        .iter()
        .filter(during)
        .filter(|(_, s)| *s != 200)
        .count();
    let ok_after = answers
        .iter()
        .filter(|(at, s)| *at > healed && *s == 200)
        .count();

    let mails = wait_for_all(&sink, &accepted, Duration::from_secs(90)).await;
    let (count, lost, duplicates) = reconcile(&accepted, &mails);
    report(
        "cluster: the leader and the api's connection partitioned off",
        &format!(
            "{} requests, {CONCURRENCY} concurrent, 3 nodes in network namespaces, stream R3, 2 workers",
            answers.len()
        ),
        &format!(
            "the leader's link cut for 15 s, the api beside it; {refused_while_cut} answered 503 and {ok_while_cut} 200 while cut, \
             the longest run of 503s {:.1} s, {ok_after} answered 200 after the heal",
            longest_unavailable(&answers).as_secs_f64()
        ),
        accepted.len(),
        count,
        lost,
        duplicates,
    );
    assert_eq!(ok_while_cut, 0, "a 200 while the api's node was cut off");
    assert!(refused_while_cut > 0, "nothing was refused while cut off");
    assert!(ok_after > 0, "the api did not recover after the heal");
    assert_eq!(lost, 0, "requests answered 200 without a mail");
    assert_eq!(
        duplicates,
        0,
        "mails sent twice: {}",
        describe_duplicates(&mails)
    );
    drop(api);
    for worker in workers {
        worker.stop().await;
    }
    db.drop_db().await;
}
