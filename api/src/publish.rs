//! Turning an accepted request into a durable event.
//!
//! An event is published as a core NATS request to a subject the stream covers: JetStream
//! stores it and answers with a PubAck on the reply inbox. That is what the JetStream
//! context's publish does too, but its answer goes through an untagged serde enum (each
//! PubAck is buffered into serde's generic content, tried as the error variant first, and
//! that variant's error is built and dropped), a boxed future, a semaphore and two timers of
//! its own: about 3,800 of the api's 57,700 instructions per request, for the same message
//! on the wire and the same PubAck.

use std::borrow::Cow;
use std::time::Duration;

use async_nats::{
    HeaderMap, HeaderName, Request, RequestErrorKind, Subject, connection::State, jetstream,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::event::{
    EVENT_VERSION, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION, HEADER_REQUEST_ID, RESET_REQUESTED,
    ResetRequested,
};

// Static names: a name given as `&str` is copied to the heap and checked against the standard
// names on every insert, and every copy of the prepared map copied it again.
const EVENT_TYPE: HeaderName = HeaderName::from_static(HEADER_EVENT_TYPE);
const REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);

/// Publishes events and waits for JetStream to store them.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: Subject,
    timeout: Duration,
    /// Every header an event carries, filled in for a `ResetRequested`: each publish copies
    /// it and sets its request id. Four inserts into a new map hashed every name and grew
    /// the table twice, about 5,000 instructions per request under callgrind.
    headers: HeaderMap,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
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
    #[error("the event could not be sent: {0}")]
    Send(async_nats::RequestError),
    #[error("JetStream did not store the event: {description} (code {code}, err_code {err_code})")]
    Refused {
        code: u16,
        err_code: u64,
        description: String,
    },
    #[error("JetStream answered with something that is not a PubAck: {0}")]
    UnreadableAck(String),
}

/// The answer to a publish: a PubAck (`{"stream":"AUTH_RESET","seq":42}`, with
/// `"duplicate":true` for a repeated `Nats-Msg-Id`) or an API error
/// (`{"error":{"code":503,"err_code":10077,"description":"..."}}`).
#[derive(Debug, Deserialize)]
struct AckReply<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default, borrow)]
    error: Option<AckError<'a>>,
}

#[derive(Debug, Deserialize)]
struct AckError<'a> {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default, borrow)]
    description: Cow<'a, str>,
}

/// Reads JetStream's answer to a publish.
fn read_ack(payload: &[u8]) -> Result<Stored, PublishFailure> {
    let reply: AckReply = serde_json::from_slice(payload).map_err(|err| {
        PublishFailure::UnreadableAck(format!("{err}: {}", String::from_utf8_lossy(payload)))
    })?;
    match reply {
        AckReply {
            error: Some(error), ..
        } => Err(PublishFailure::Refused {
            code: error.code,
            err_code: error.err_code,
            description: error.description.into_owned(),
        }),
        AckReply {
            seq: Some(sequence),
            duplicate,
            ..
        } => Ok(Stored {
            sequence,
            duplicate,
        }),
        AckReply { seq: None, .. } => Err(PublishFailure::UnreadableAck(
            String::from_utf8_lossy(payload).into_owned(),
        )),
    }
}

impl Publisher {
    pub fn new(client: async_nats::Client, subject: String, timeout: Duration) -> Self {
        // For stream management and readiness; events do not go through it (see above).
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        let mut headers = HeaderMap::new();
        headers.insert(EVENT_TYPE, RESET_REQUESTED);
        headers.insert(
            HeaderName::from_static(HEADER_EVENT_VERSION),
            EVENT_VERSION.to_string().as_str(),
        );
        headers.insert(REQUEST_ID, "");
        headers.insert(HeaderName::from_static("Content-Type"), "application/json");
        Self {
            client,
            js,
            subject: Subject::from(subject),
            timeout,
            headers,
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
            // The prepared subject is shared, not copied, into each message.
            subject: self.subject.clone(),
            event_type: RESET_REQUESTED,
            request_id: &event.request_id,
            payload: event.to_json(),
            msg_id,
        })
        .await
    }

    /// Publishes any event and waits for its PubAck, within the publish deadline.
    pub async fn send(&self, outgoing: Outgoing<'_>) -> Result<Stored, PublishFailure> {
        // While disconnected the client would buffer the message and send it on reconnect,
        // after the caller has been told 503: refusing up front keeps "503" meaning "not stored".
        if !self.is_connected() {
            return Err(PublishFailure::Disconnected);
        }
        let mut headers = self.headers.clone();
        if outgoing.event_type != RESET_REQUESTED {
            headers.insert(EVENT_TYPE, outgoing.event_type);
        }
        headers.insert(REQUEST_ID, outgoing.request_id);
        if let Some(msg_id) = outgoing.msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        }
        let request = Request::new()
            .headers(headers)
            .payload(outgoing.payload.into())
            // One deadline, below, for queueing the message and awaiting its PubAck.
            .timeout(None);
        let subject = outgoing.subject;
        let sent = self.client.send_request(subject.clone(), request);
        let answer = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| PublishFailure::TimedOut(self.timeout))?;
        match answer {
            Ok(reply) => read_ack(&reply.payload),
            Err(err) if err.kind() == RequestErrorKind::NoResponders => {
                Err(PublishFailure::NoStream(subject.to_string()))
            }
            Err(err) if err.kind() == RequestErrorKind::TimedOut => {
                Err(PublishFailure::TimedOut(self.timeout))
            }
            Err(err) => Err(PublishFailure::Send(err)),
        }
    }
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
    fn pub_acks_are_read() {
        let stored = read_ack(br#"{"stream":"AUTH_RESET","seq":42}"#).expect("a PubAck");
        assert_eq!(
            stored,
            Stored {
                sequence: 42,
                duplicate: false
            }
        );
        let repeated =
            read_ack(br#"{"stream":"AUTH_RESET","domain":"hub","seq":7,"duplicate":true}"#)
                .expect("a duplicate PubAck");
        assert_eq!(
            repeated,
            Stored {
                sequence: 7,
                duplicate: true
            }
        );
    }

    #[test]
    fn jetstream_errors_are_refusals_with_their_codes() {
        let refused = read_ack(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded \"x\""}}"#,
        );
        match refused {
            Err(PublishFailure::Refused {
                code,
                err_code,
                description,
            }) => {
                assert_eq!((code, err_code), (503, 10077));
                assert_eq!(description, r#"maximum messages exceeded "x""#);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn anything_else_is_an_unreadable_ack() {
        for payload in [
            &b""[..],
            b"+OK",
            br#"{"stream":"AUTH_RESET"}"#,
            br#"{"seq":"x"}"#,
        ] {
            match read_ack(payload) {
                Err(PublishFailure::UnreadableAck(text)) => {
                    assert!(!text.is_empty(), "{payload:?} gave an empty message")
                }
                other => panic!("{payload:?}: expected UnreadableAck, got {other:?}"),
            }
        }
    }

    #[test]
    fn without_a_key_there_is_no_message_id() {
        assert_eq!(message_id("web", None), None);
    }
}
