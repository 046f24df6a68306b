//! What the worker decides for an account or an event before mailing: the cooldown, an
//! email shared by several accounts, a request older than its link may live.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use e2e::nats_url;
use e2e::system::System;
use worker::store::Outcome;

/// Others asking for an account's resets without pause get it a mail after each cooldown,
/// and the cooldown doubles with each mail up to RESET_COOLDOWN_MAX: the mails one address
/// gets stay bounded, and no sequence of requests keeps the owner from a new mail for
/// longer than RESET_COOLDOWN_MAX (here 250 ms doubling to at most 1 s).
#[tokio::test]
async fn the_cooldown_grows_with_each_mail_but_never_past_its_maximum() {
    let system = System::start_with(|s| {
        s.policy.cooldown = Duration::from_millis(250);
        s.policy.max_cooldown = Duration::from_secs(1);
    })
    .await;
    system.db.account("ada").add().await;
    // Four seconds of requests, one every 50 ms, each answered before the next.
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_secs(4) {
        assert_eq!(system.api.forgot_id("ada").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = flood_decided(&system).await;
    // 0, 0.25, 0.75, 1.75, 2.75, 3.75 s: six, give or take the last.
    assert!((5..=7).contains(&sent.len()), "{sent:?}");
    let gaps: Vec<f64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, gap) in gaps.iter().enumerate() {
        let cooldown = (0.25 * 2f64.powi(n as i32)).min(1.0);
        // Never sooner than the grown cooldown, and never much later: the next request
        // after it (50 ms apart, plus the worker's handling) is mailed.
        assert!(
            *gap >= cooldown - 0.01 && *gap <= cooldown + 0.5,
            "gap {n} is {gap:.3} s, the cooldown {cooldown} s: {gaps:?}"
        );
    }
    assert_eq!(system.sink.messages().len(), sent.len());
    // Each new token invalidated the one before: only the last mailed link works.
    assert_eq!(system.db.live_tokens().await, 1);

    // The owner, once the flood stops, asks no later than RESET_COOLDOWN_MAX after the last
    // mail: mailed.
    let mailed = sent.len();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(system.api.forgot_id("ada").await.status, 200);
    system
        .sink
        .wait_for(mailed + 1, Duration::from_secs(10))
        .await;
    system.stop().await;
}

/// Waits until every request is decided, and returns the times the mailed ones were
/// claimed, in seconds from the first.
async fn flood_decided(system: &System) -> Vec<f64> {
    for _ in 0..200 {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reset_requests WHERE outcome = 'pending'")
                .fetch_one(&system.db.pool)
                .await
                .expect("count");
        let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM reset_requests")
            .fetch_one(&system.db.pool)
            .await
            .expect("count");
        let published = system.api.events().await.len() as i64;
        if pending == 0 && decided == published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query_scalar(
        "SELECT extract(epoch FROM claimed_at - min(claimed_at) OVER ())::float8
         FROM reset_requests WHERE outcome = 'sent' ORDER BY claimed_at",
    )
    .fetch_all(&system.db.pool)
    .await
    .expect("sent")
}

#[tokio::test]
async fn an_email_shared_by_several_accounts_gets_no_mail() {
    let system = System::start().await;
    system
        .db
        .account("a1")
        .email("shared@example.com")
        .add()
        .await;
    system
        .db
        .account("a2")
        .email("Shared@Example.com")
        .add()
        .await;
    assert_eq!(system.api.forgot_id("shared@example.com").await.status, 200);
    // By id the account is unambiguous.
    assert_eq!(system.api.forgot_id("a2").await.status, 200);
    let mails = system.sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, "Shared@Example.com");
    assert_eq!(
        system.db.wait_for_outcomes(2).await,
        [(Outcome::NoAccount, 1), (Outcome::Sent, 1)]
    );
    system.stop().await;
}

/// An event older than TOKEN_TTL (a long outage, say) is not mailed: it is recorded as failed
/// and dead-lettered, where an operator can see it.
#[tokio::test]
async fn an_event_older_than_the_token_ttl_is_dead_lettered_not_mailed() {
    let system = System::start().await;
    system.db.account("ada").add().await;
    let mut event = e2e::reset_event("ada", "stale-request");
    event.requested_at -= time::Duration::hours(2);
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    js.publish(
        format!("{}.requested", system.api.iso.prefix),
        event.to_json().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let mut outcome = None;
    for _ in 0..100 {
        outcome = sqlx::query_scalar::<_, String>("SELECT outcome FROM reset_requests")
            .fetch_optional(&system.db.pool)
            .await
            .expect("record");
        if outcome.as_deref() == Some("failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outcome.as_deref(), Some("failed"));
    assert!(system.sink.messages().is_empty());
    system.stop().await;
}
