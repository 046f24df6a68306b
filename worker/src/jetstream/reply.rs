//! Answers to JetStream about a message (ack, nak, term, progress), each with a bound.
//!
//! async-nats hands an answer to its connection's queue; while the connection is down and the
//! queue full, that hand-over waits. Unbounded, it would hold the event's task, and with it a
//! stop, for as long as NATS is away. An answer that never leaves costs nothing but a
//! redelivery after `ack_wait`, which finds the event's outcome recorded.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

/// How long an answer may take to leave.
pub const REPLY_WITHIN: Duration = Duration::from_secs(5);

/// Why an answer did not leave.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("NATS refused it: {0}")]
    Refused(async_nats::Error),
    #[error("NATS did not take it within {REPLY_WITHIN:?}")]
    TimedOut,
}

/// Sends `kind` for `message`, waiting at most [`REPLY_WITHIN`].
pub async fn reply(message: &jetstream::Message, kind: AckKind) -> Result<(), ReplyError> {
    crate::waiting::now("NATS to take the ack");
    within(REPLY_WITHIN, message.ack_with(kind)).await
}

async fn within(
    bound: Duration,
    sent: impl std::future::Future<Output = Result<(), async_nats::Error>>,
) -> Result<(), ReplyError> {
    match tokio::time::timeout(bound, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ReplyError::Refused(err)),
        Err(_) => Err(ReplyError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_cannot_leave_gives_up_at_the_bound() {
        let never = std::future::pending::<Result<(), async_nats::Error>>();
        let started = tokio::time::Instant::now();
        let out = within(REPLY_WITHIN, never).await;
        assert!(matches!(out, Err(ReplyError::TimedOut)), "{out:?}");
        assert_eq!(started.elapsed(), REPLY_WITHIN);
    }

    #[tokio::test]
    async fn a_refusal_says_why() {
        let out = within(REPLY_WITHIN, async { Err("connection closed".into()) }).await;
        assert_eq!(
            out.map_err(|e| e.to_string()),
            Err("NATS refused it: connection closed".to_owned())
        );
    }
}
