//! Dead letters: an event the worker gives up on is republished to `{prefix}.dead` with why,
//! and only then terminated, so nothing is lost on the way.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use shared::event::HEADER_REQUEST_ID;
use shared::logging::mask_addresses;

use super::reply::{REPLY_WITHIN, reply};
use crate::handle::Deps;
use crate::status::ReasonLabels;
use crate::store::{Delivery, EventMeta};

/// Headers on a dead letter, beside the original event's own.
pub const HEADER_DEAD_REASON: &str = "Dead-Reason";
pub const HEADER_DEAD_ATTEMPTS: &str = "Dead-Attempts";
pub const HEADER_DEAD_ERROR: &str = "Dead-Error";
pub const HEADER_DEAD_STREAM_SEQ: &str = "Dead-Stream-Seq";
/// The subject the event was on, so a retry republishes it there.
pub const HEADER_DEAD_SUBJECT: &str = "Dead-Subject";
/// On an event republished by `worker dead-letters retry`: the dead letter it came from. Such
/// an event is processed even if it failed before, and even if it is older than TOKEN_TTL.
pub const HEADER_RETRY_OF: &str = "Retry-Of";

/// A message being worked on, with what answering JetStream for it takes.
pub(super) struct Answer<'a> {
    pub message: &'a jetstream::Message,
    pub js: &'a jetstream::Context,
    pub deps: &'a Deps,
    /// Where dead letters go (`{prefix}.dead`).
    pub dead_subject: &'a str,
}

impl Answer<'_> {
    /// Records the event as failed and moves it to the dead letters.
    pub async fn give_up(
        &self,
        event: &EventMeta,
        delivery: Delivery,
        reason: &'static str,
        error: &str,
    ) {
        tracing::error!(reason, error = %mask_addresses(error), "giving up on the event");
        if let Err(db) = self
            .deps
            .store
            .record_failure(event, delivery, error, true)
            .await
        {
            tracing::warn!(error = %db, "recording the failure");
        }
        self.dead_letter(reason, delivery.attempt, error).await;
    }

    /// Republishes the original event to the dead letters with why, then terminates the
    /// message. If the dead letter cannot be stored, the message is nak'd instead so nothing
    /// is lost.
    pub async fn dead_letter(&self, reason: &'static str, attempt: u32, error: &str) {
        let message = self.message;
        let headers = letter_headers(message, reason, attempt, error);
        // The store's acknowledgement is bounded by the JetStream context's own timeout; the
        // hand-over to the connection, by ours.
        crate::waiting::now("NATS to store the dead letter");
        let published = async {
            tokio::time::timeout(
                REPLY_WITHIN,
                self.js.publish_with_headers(
                    self.dead_subject.to_owned(),
                    headers,
                    message.payload.clone(),
                ),
            )
            .await
            .map_err(|_| NotStored::TimedOut)??
            .await
            .map_err(NotStored::from)
        };
        match published.await {
            Ok(_) => {
                if let Err(err) = reply(message, AckKind::Term).await {
                    tracing::warn!(error = %err, "terminating the dead-lettered message");
                }
                tracing::warn!(reason, "event moved to the dead letters");
                let metrics = &self.deps.status.metrics;
                metrics.event("dead_lettered");
                metrics
                    .dead_letters
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                metrics.attempts.observe(f64::from(attempt));
            }
            Err(err) => {
                tracing::error!(error = %err, "dead letter not stored; the event stays in the consumer");
                if let Err(err) = reply(message, AckKind::Nak(Some(Duration::from_secs(5)))).await {
                    tracing::warn!(error = %err, "nak not sent; JetStream redelivers after ack_wait");
                }
            }
        }
    }
}

/// Why a dead letter was not stored.
#[derive(Debug, thiserror::Error)]
enum NotStored {
    #[error("NATS did not take it within {REPLY_WITHIN:?}")]
    TimedOut,
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
}

/// The dead letter's headers: the original event's own, and why it died.
pub(crate) fn letter_headers(
    message: &jetstream::Message,
    reason: &'static str,
    attempt: u32,
    error: &str,
) -> HeaderMap {
    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut headers = HeaderMap::new();
    if let Some(original) = &message.headers {
        for name in ["Event-Type", "Event-Version", HEADER_REQUEST_ID] {
            if let Some(value) = original.get(name) {
                headers.insert(name, value.as_str());
            }
        }
    }
    headers.insert(HEADER_DEAD_REASON, reason);
    headers.insert(HEADER_DEAD_ATTEMPTS, attempt.to_string().as_str());
    headers.insert(HEADER_DEAD_ERROR, one_line(error).as_str());
    headers.insert(HEADER_DEAD_STREAM_SEQ, seq.to_string().as_str());
    headers.insert(HEADER_DEAD_SUBJECT, message.subject.as_str());
    // Dead-lettering the same delivery twice stores one letter.
    headers.insert("Nats-Msg-Id", format!("dead-{seq}-{attempt}").as_str());
    headers
}

/// Header values are one line, and not endless.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
        assert_eq!(one_line(&"x".repeat(2000)).len(), 512);
    }
}
