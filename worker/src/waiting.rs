//! What the event handled on this task is waiting for, so that one that takes too long says
//! where it is stuck (the consume loop warns once, with the event's id from its span).
//!
//! A task-local rather than an argument: the places that wait (the claim, the SMTP pool, the
//! sent record, the ack) are several layers apart, and only the warning reads it.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static WAITING_FOR: Cell<&'static str>;
}

/// Runs `work` with its own record of what it waits for.
pub fn track<F: Future>(work: F) -> impl Future<Output = F::Output> {
    WAITING_FOR.scope(Cell::new("nothing yet"), work)
}

/// Notes what the current event waits for from now on (outside [`track`], nothing).
pub fn now(what: &'static str) {
    let _ = WAITING_FOR.try_with(|waiting| waiting.set(what));
}

/// What the current event waits for.
pub fn current() -> &'static str {
    WAITING_FOR.try_with(Cell::get).unwrap_or("nothing tracked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_task_keeps_its_own_record() {
        let seen = track(async {
            now("PostgreSQL");
            let inner = current();
            now("SMTP");
            (inner, current())
        })
        .await;
        assert_eq!(seen, ("PostgreSQL", "SMTP"));
        now("ignored outside a tracked task");
        assert_eq!(current(), "nothing tracked");
    }
}
