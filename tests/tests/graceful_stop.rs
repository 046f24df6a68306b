//! A graceful stop, as deploys, autoscalers and `docker compose down` send it all day:
//! nothing lost, nothing mailed twice, and the stop always ends within its deadline.
//! The longer runs are in the fault suite (`faults/run`).

use std::time::Duration;

use e2e::load::sigterm_workers_under_load;

#[tokio::test]
async fn workers_stopped_under_load_lose_nothing_mail_nothing_twice_and_end_in_time() {
    let deadline = Duration::from_secs(3);
    let run = sigterm_workers_under_load(5000, 4, Duration::from_millis(700), deadline).await;
    println!("{run:#?}");
    assert_eq!(run.stops, 4);
    assert!(run.accepted > 100, "too little load to tell: {run:?}");
    assert_eq!(run.unclean, 0, "a stop ended with a failure: {run:?}");
    // The deadline bounds the worker's own stop; a second more covers the process's exit.
    assert!(
        run.longest_stop <= deadline + Duration::from_secs(1),
        "a stop outlasted WORKER_SHUTDOWN_TIMEOUT: {run:?}"
    );
    assert_eq!(run.lost, 0, "accepted requests without a mail: {run:?}");
    assert_eq!(run.duplicates, 0, "mails sent twice: {run:?}");
}
