//! The JetStream side of the worker: the durable consumers ([`ensure_consumer`]), the loop
//! that takes events off them with acks, retries and a clean stop ([`consume`]), and the
//! dead letters ([`dead_letter`]). Handling an event knows nothing of this
//! ([`crate::handle`]).

pub mod consume;
pub mod dead_letter;
pub mod policy;
pub mod reply;

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::ConsumerErrorKind,
};

pub use dead_letter::{
    HEADER_DEAD_ATTEMPTS, HEADER_DEAD_ERROR, HEADER_DEAD_REASON, HEADER_DEAD_STREAM_SEQ,
    HEADER_DEAD_SUBJECT, HEADER_RETRY_OF,
};

/// Why the consumer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerSetupError {
    #[error("creating consumer {name}: {source}")]
    Create {
        name: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error("updating consumer {name} to the current settings: {source}")]
    Update {
        name: String,
        source: jetstream::stream::ConsumerUpdateError,
    },
}

/// Creates the durable consumer, or brings an existing one up to the current settings.
///
/// nats-server 2.9 updates a durable silently when it is created again with other settings;
/// 2.10+ refuses, so that case is handled by an explicit update.
pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    filter_subject: String,
    ack_wait: Duration,
) -> Result<PullConsumer, ConsumerSetupError> {
    ensure_consumer_from(stream, name, filter_subject, ack_wait, DeliverPolicy::All).await
}

/// [`ensure_consumer`], starting where `deliver_policy` says when the consumer is made: the
/// webhook consumers start at what comes after them, so turning webhooks on does not send
/// the product every event the stream still holds.
pub async fn ensure_consumer_from(
    stream: &jetstream::stream::Stream,
    name: &str,
    filter_subject: String,
    ack_wait: Duration,
    deliver_policy: DeliverPolicy,
) -> Result<PullConsumer, ConsumerSetupError> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some("Password-reset workers".into()),
        filter_subject,
        ack_policy: AckPolicy::Explicit,
        deliver_policy,
        ack_wait,
        // Retries are driven by naks with a delay, and the worker itself ends every event:
        // acked, or dead-lettered once its retries or its time (TOKEN_TTL) run out. The server
        // sets no limit of its own: an SMTP outage is retried without counting against the
        // event, and a limit reached there would leave the event neither mailed nor dead.
        max_deliver: -1,
        ..Default::default()
    };
    match stream.create_consumer(config.clone()).await {
        Ok(consumer) => Ok(consumer),
        Err(err) if already_exists(&err) => {
            stream
                .update_consumer(config)
                .await
                .map_err(|source| ConsumerSetupError::Update {
                    name: name.to_owned(),
                    source,
                })
        }
        Err(source) => Err(ConsumerSetupError::Create {
            name: name.to_owned(),
            source,
        }),
    }
}

fn already_exists(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        err.kind(),
        ConsumerErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::CONSUMER_ALREADY_EXISTS
                || inner.error_code() == jetstream::ErrorCode::CONSUMER_NAME_EXIST
    )
}
