//! Dead letters: an event the worker gives up on is republished to `{prefix}.dead` with why,
//! and only then terminated, so nothing is lost on the way.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use shared::event::HEADER_REQUEST_ID;
use shared::logging::mask_addresses;

use super::consume::LoopSettings;
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

/// Records the event as failed and moves it to the dead letters.
#[allow(clippy::too_many_arguments)]
pub(super) async fn give_up(
    js: &jetstream::Context,
    deps: &Deps,
    settings: &LoopSettings,
    message: &jetstream::Message,
    event: &EventMeta,
    reason: &'static str,
    delivery: Delivery,
    error: &str,
) {
    tracing::error!(reason, error = %mask_addresses(error), "giving up on the event");
    if let Err(db) = deps
        .store
        .record_failure(event, delivery, error, true)
        .await
    {
        tracing::warn!(error = %db, "recording the failure");
    }
    dead_letter(js, deps, settings, message, reason, delivery.attempt, error).await;
}

/// Republishes the original event to `{prefix}.dead` with why, then terminates the message.
/// If the dead letter cannot be stored, the message is nak'd instead so nothing is lost.
#[allow(clippy::too_many_arguments)]
pub(super) async fn dead_letter(
    js: &jetstream::Context,
    deps: &Deps,
    settings: &LoopSettings,
    message: &jetstream::Message,
    reason: &'static str,
    attempt: u32,
    error: &str,
) {
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
    // The store's acknowledgement is bounded by the JetStream context's own timeout; the
    // hand-over to the connection, by ours.
    crate::waiting::now("NATS to store the dead letter");
    let published = async {
        tokio::time::timeout(
            REPLY_WITHIN,
            js.publish_with_headers(
                settings.dead_subject.clone(),
                headers,
                message.payload.clone(),
            ),
        )
        .await
        .map_err(|_| format!("NATS did not take it within {REPLY_WITHIN:?}"))?
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
    };
    match published.await {
        Ok(_) => {
            if let Err(err) = reply(message, AckKind::Term).await {
                tracing::warn!(error = %err, "terminating the dead-lettered message");
            }
            tracing::warn!(reason, "event moved to the dead letters");
            deps.status.metrics.event("dead_lettered");
            deps.status
                .metrics
                .dead_letters
                .get_or_create(&ReasonLabels { reason })
                .inc();
            deps.status.metrics.attempts.observe(f64::from(attempt));
        }
        Err(err) => {
            tracing::error!(error = %err, "dead letter not stored; the event stays in the consumer");
            if let Err(err) = reply(message, AckKind::Nak(Some(Duration::from_secs(5)))).await {
                tracing::warn!(error = %err, "nak not sent; JetStream redelivers after ack_wait");
            }
        }
    }
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
