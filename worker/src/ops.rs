//! Operator tools: `worker replay` and `worker dead-letters`.
//!
//! Both read the stream through an ephemeral ordered consumer, so the workers' durable
//! consumer is never touched, and stop once they have read what the stream held when they
//! started.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Stream,
};
use futures::StreamExt;

use crate::config::Settings;
use crate::handle::Deps;
use crate::status::Status;
use crate::store::{Limits, Store};

mod dead_letters;
mod replay;
mod timeline;

pub use dead_letters::dead_letters;
pub use replay::replay;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("NATS at {0} (NATS_URL) is not reachable")]
    NatsUnreachable(String),
    #[error("stream {0} (RESET_STREAM): {1}")]
    Stream(String, jetstream::context::GetStreamError),
    #[error("reading the stream: {0}")]
    Read(async_nats::Error),
    #[error("database (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Setup(#[from] crate::WorkerError),
    #[error("rendering the mail: {0}")]
    Render(#[from] crate::mail::ComposeError),
    #[error("no dead letter at sequence {0}")]
    NoDeadLetter(u64),
    #[error("republishing: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("removing the retried dead letter: {0}")]
    Delete(#[from] jetstream::stream::DeleteMessageError),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "--execute needs a scope: --id, --since or --from-seq (replaying the whole stream would process every request it holds again)"
    )]
    Unscoped,
    #[error(
        "{0} events match: add --yes to process them all again, or narrow them with --id, --since, --until or --limit"
    )]
    Unconfirmed(usize),
    #[error(
        "{0} dead letters would be retried, each a mail: add --yes to retry them all, or retry them one by one by number"
    )]
    UnconfirmedRetry(usize),
}

async fn open_stream(settings: &Settings) -> Result<(jetstream::Context, Stream), OpsError> {
    let shown = settings.nats.shown();
    let (options, servers) = settings.nats.connect_options();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        options
            .name("password-reset-ops")
            .connect(servers.as_slice()),
    )
    .await
    .map_err(|_| OpsError::NatsUnreachable(shown.clone()))?
    .map_err(|_| OpsError::NatsUnreachable(shown.clone()))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&settings.stream.stream)
        .await
        .map_err(|e| OpsError::Stream(settings.stream.stream.clone(), e))?;
    Ok((js, stream))
}

/// Reads the messages of one subject from a starting point, up to what the stream held when
/// reading began.
struct SubjectReader {
    messages: Option<jetstream::consumer::pull::Ordered>,
    pending: u64,
}

impl SubjectReader {
    async fn open(
        stream: &Stream,
        subject: String,
        deliver: DeliverPolicy,
    ) -> Result<Self, OpsError> {
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject,
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| OpsError::Read(e.into()))?;
        let pending = consumer
            .get_info()
            .await
            .map_err(|e| OpsError::Read(e.into()))?
            .num_pending;
        let messages = if pending == 0 {
            None
        } else {
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|e| OpsError::Read(e.into()))?,
            )
        };
        Ok(Self { messages, pending })
    }

    async fn next(&mut self) -> Result<Option<jetstream::Message>, OpsError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        if self.pending == 0 {
            return Ok(None);
        }
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(message))) => {
                self.pending -= 1;
                Ok(Some(message))
            }
            Ok(Some(Err(err))) => Err(OpsError::Read(err.into())),
            Ok(None) | Err(_) => Ok(None),
        }
    }
}

/// What handling needs, for the operator tools (no listener, no consumer).
async fn deps_for(settings: &Settings) -> Result<Deps, OpsError> {
    let (templates, composer, mailer) = crate::startup::mail_parts(settings)?;
    let store = Store::connect(&settings.database.url.database_url, 4).await?;
    Ok(Deps {
        store,
        templates,
        composer,
        mailer,
        limits: Limits::new(&settings.policy, settings.consume.claim_lease),
        status: Arc::new(Status::new(None)),
    })
}
