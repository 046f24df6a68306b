//! A graceful stop, as deploys, autoscalers and `docker compose down` send it all day:
//! nothing lost, nothing mailed twice, and the stop always ends within its deadline.
//! The longer runs are in the fault suite (`faults/run`).

use std::time::Duration;

use e2e::load::{sigterm_api_under_load, sigterm_workers_under_load};

#[tokio::test]
async fn workers_stopped_under_load_lose_nothing_mail_nothing_twice_and_end_in_time() {
    let deadline = Duration::from_secs(3);
    let run = sigterm_workers_under_load(5000, 4, Duration::from_millis(700), deadline).await;
    println!("{run:#?}");
    assert_eq!(run.stops, 4);
    assert!(run.accepted > 100, "too little load to tell: {run:?}");
    run.assert_clean(deadline);
}

/// The api stopped under load answers what it took in before it goes: every request it
/// answered 200 is mailed, once; the rest were answered otherwise or not at all, and a
/// client asking again with the same Idempotency-Key gets one mail.
#[tokio::test]
async fn an_api_stopped_under_load_loses_nothing_it_answered_200() {
    let run = sigterm_api_under_load(5000, 3, Duration::from_millis(700)).await;
    println!("{run:#?}");
    assert_eq!(run.stops, 3);
    assert!(run.accepted > 100, "too little load to tell: {run:?}");
    assert_eq!(run.unclean, 0, "a stop ended with a failure: {run:?}");
    assert_eq!(run.lost, 0, "answered 200 without a mail: {run:?}");
    assert_eq!(run.duplicates, 0, "mailed twice: {run:?}");
}
