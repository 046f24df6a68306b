//! What the worker decides for an account or an event before mailing: the daily limit, an
//! email shared by several accounts, a request older than its link may live.

use std::time::Duration;

use async_nats::jetstream;
use e2e::nats_url;
use e2e::system::System;
use worker::store::Outcome;

#[tokio::test]
async fn the_daily_limit_caps_mails_per_account() {
    let system = System::start_with(|s| {
        s.policy.cooldown = Duration::ZERO;
        s.policy.daily_limit = 2;
    })
    .await;
    system.db.account("ada").add().await;
    for expected in 1..=3usize {
        assert_eq!(system.api.forgot_id("ada").await.status, 200);
        // Wait for this one to be decided before sending the next.
        for _ in 0..100 {
            let decided: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reset_requests WHERE outcome <> 'pending'",
            )
            .fetch_one(&system.db.pool)
            .await
            .expect("count");
            if decided as usize == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        system.db.outcomes().await,
        [(Outcome::Sent, 2), (Outcome::Throttled, 1)]
    );
    assert_eq!(system.sink.messages().len(), 2);
    // Each new token invalidated the one before: only the last mailed link works.
    let live = system.db.live_tokens().await;
    assert_eq!(live, 1);
    system.stop().await;
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
