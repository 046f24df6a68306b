//! Turning an accepted request into a durable event: published through the JetStream
//! context with its headers, and acknowledged only once JetStream has stored it.

use std::time::Duration;

use async_nats::{
    HeaderMap, Subject,
    connection::State,
    jetstream::{self, context::PublishErrorKind},
};
use sha2::{Digest, Sha256};
use shared::event::{
    EVENT_VERSION, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION, HEADER_REQUEST_ID, RESET_REQUESTED,
    ResetRequested,
};

/// Publishes events and waits for JetStream to store them.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: Subject,
    timeout: Duration,
}

/// One event to publish, whatever its type.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub subject: Subject,
    pub event_type: &'a str,
    pub request_id: &'a str,
    pub payload: Vec<u8>,
    /// The `Nats-Msg-Id`, for an event that may be published twice.
    pub msg_id: Option<&'a str>,
}

/// JetStream's word that it holds an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The stream that holds it.
    pub stream: String,
    /// The event's sequence number in the stream.
    pub sequence: u64,
    /// The stream already held an event with this `Nats-Msg-Id`; nothing new was stored.
    pub duplicate: bool,
}

/// Why an event is not known to be stored. The client is told 503 and may retry.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no PubAck within {0:?}")]
    TimedOut(Duration),
    #[error("no stream takes subject {0} (is RESET_STREAM set up?)")]
    NoStream(String),
    /// The stream is at `RESET_MAX_BYTES`, or the server's JetStream storage is used up.
    #[error("the event stream is full (RESET_MAX_BYTES, or the server's JetStream storage): {0}")]
    StreamFull(jetstream::context::PublishError),
    /// JetStream refused the event (a full stream, say) or the client could not send it.
    #[error("JetStream did not store the event: {0}")]
    Refused(jetstream::context::PublishError),
}

/// Why a stored event could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("opening the stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("reading the event: {0}")]
    Read(#[from] jetstream::stream::RawMessageError),
    #[error(transparent)]
    Decode(#[from] shared::event::DecodeError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl Publisher {
    pub fn new(client: async_nats::Client, subject: String, timeout: Duration) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        Self {
            client,
            js,
            subject: Subject::from(subject),
            timeout,
        }
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Publishes `event`, with `msg_id` as its `Nats-Msg-Id` if given, and returns once
    /// JetStream has acknowledged it (or reported it a duplicate of one it already holds).
    pub async fn publish(
        &self,
        event: &ResetRequested,
        msg_id: Option<&str>,
    ) -> Result<Stored, PublishFailure> {
        self.send(Outgoing {
            subject: self.subject.clone(),
            event_type: RESET_REQUESTED,
            request_id: &event.request_id,
            payload: event.to_json(),
            msg_id,
        })
        .await
    }

    /// The `ResetRequested` JetStream holds at `stored`: the earlier event a duplicate
    /// `Idempotency-Key` stands for.
    pub async fn stored_request(&self, stored: &Stored) -> Result<ResetRequested, StoredError> {
        let read = async {
            let stream = self.js.get_stream_no_info(&stored.stream).await?;
            let message = stream.get_raw_message(stored.sequence).await?;
            Ok(ResetRequested::decode(&message.payload)?)
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| StoredError::TimedOut(self.timeout))?
    }

    /// Publishes any event and waits for its PubAck, within the publish deadline.
    pub async fn send(&self, outgoing: Outgoing<'_>) -> Result<Stored, PublishFailure> {
        // While disconnected the client would buffer the message and send it on reconnect,
        // after the caller has been told 503: refusing up front keeps "503" meaning "not stored".
        if !self.is_connected() {
            return Err(PublishFailure::Disconnected);
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_EVENT_TYPE, outgoing.event_type);
        headers.insert(HEADER_EVENT_VERSION, EVENT_VERSION.to_string().as_str());
        headers.insert(HEADER_REQUEST_ID, outgoing.request_id);
        headers.insert("Content-Type", "application/json");
        if let Some(msg_id) = outgoing.msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        }
        let subject = outgoing.subject;
        // One deadline for queueing the message and awaiting its PubAck.
        let stored = tokio::time::timeout(self.timeout, async {
            self.js
                .publish_with_headers(subject.clone(), headers, outgoing.payload.into())
                .await?
                .await
        })
        .await
        .map_err(|_| PublishFailure::TimedOut(self.timeout))?;
        match stored {
            Ok(ack) => Ok(Stored {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(err) => Err(match err.kind() {
                PublishErrorKind::StreamNotFound => PublishFailure::NoStream(subject.to_string()),
                PublishErrorKind::TimedOut => PublishFailure::TimedOut(self.timeout),
                _ if is_full(&err) => PublishFailure::StreamFull(err),
                _ => PublishFailure::Refused(err),
            }),
        }
    }
}

/// JetStream's refusals of a full stream: a stream limit reached (10077, "maximum bytes
/// exceeded" and its kin, which a stream with the discard policy `new` answers) or the
/// server's storage used up (10023, insufficient resources).
fn is_full(err: &jetstream::context::PublishError) -> bool {
    const STORE_FAILED: jetstream::ErrorCode = jetstream::ErrorCode::STREAM_STORE_FAILED;
    const INSUFFICIENT_RESOURCES: jetstream::ErrorCode = jetstream::ErrorCode(10023);
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| matches!(e.error_code(), STORE_FAILED | INSUFFICIENT_RESOURCES))
}

/// The `Nats-Msg-Id` for a request with an `Idempotency-Key`: derived from the key, scoped to
/// the client's API key so two clients cannot collide.
///
/// A request without one gets none. The api publishes each event once, and a client's retry
/// is a new event anyway, so the id would only make nats-server remember every event for
/// the deduplication window (memory, and CPU on every publish) to catch nothing.
pub fn message_id(key_label: &str, idempotency_key: Option<&str>) -> Option<String> {
    let key = idempotency_key?;
    let mut hasher = Sha256::new();
    hasher.update(key_label.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("idem-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_scoped_to_the_api_key() {
        let id = message_id("web", Some("k1"));
        assert!(id.as_deref().is_some_and(|id| id.starts_with("idem-")));
        assert_eq!(id, message_id("web", Some("k1")));
        assert_ne!(id, message_id("mobile", Some("k1")));
        assert_ne!(id, message_id("web", Some("k2")));
    }

    #[test]
    fn without_a_key_there_is_no_message_id() {
        assert_eq!(message_id("web", None), None);
    }
}
