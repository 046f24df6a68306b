//! Taking webhooks off their consumers and POSTing them: a 2xx acks, anything else naks with
//! the next delay of WEBHOOK_BACKOFF, and after the last the event goes to the dead letters.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream::Stream};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, header};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shared::event::{HEADER_EVENT_TYPE, PASSWORD_CHANGED, REPORTED};
use shared::stream::Subjects;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::payload::Webhook;
use super::{WebhookSettingsError, Webhooks};
use crate::config::Backoff;
use crate::jetstream::dead_letter::{HEADER_RETRY_OF, letter_headers};
use crate::jetstream::reply::REPLY_WITHIN;
use crate::jetstream::{ConsumerSetupError, ensure_consumer_from};

pub(super) type Client =
    hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Webhooks under way at once per consumer.
const AT_ONCE: usize = 8;

/// An HTTP/1.1 client for https (the web's roots) and, to loopback, http.
pub(super) fn client() -> Result<Client, WebhookSettingsError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

/// The webhook consumers: password changes, reports, and operators' retries of webhooks,
/// each from what comes after it is made. An attempt may wait for a free slot, then POST for
/// up to WEBHOOK_TIMEOUT, then store a dead letter: their ack wait leaves room for all three.
pub async fn webhook_consumers(
    stream: &Stream,
    name: &str,
    subjects: &Subjects,
    timeout: Duration,
) -> Result<Vec<PullConsumer>, ConsumerSetupError> {
    let ack_wait = timeout * 3 + Duration::from_secs(30);
    let mut consumers = Vec::new();
    for (suffix, subject) in [
        ("webhooks-changed", subjects.changed()),
        ("webhooks-reported", subjects.reported()),
        ("webhooks-retried", subjects.webhooks_retried()),
    ] {
        let durable = format!("{name}-{suffix}");
        let new = jetstream::consumer::DeliverPolicy::New;
        consumers.push(ensure_consumer_from(stream, &durable, subject, ack_wait, new).await?);
    }
    Ok(consumers)
}

/// Delivers webhooks from `consumers` until `shutdown` resolves, then lets the attempts under
/// way end (each within WEBHOOK_TIMEOUT).
pub async fn run(
    consumers: Vec<PullConsumer>,
    hooks: Arc<Webhooks>,
    js: jetstream::Context,
    dead_subject: String,
    shutdown: impl std::future::Future<Output = ()> + Clone,
) {
    let loops = consumers.into_iter().map(|consumer| {
        let (hooks, js, dead_subject) = (hooks.clone(), js.clone(), dead_subject.clone());
        let shutdown = shutdown.clone();
        async move { consume(consumer, hooks, js, dead_subject, shutdown).await }
    });
    futures::future::join_all(loops).await;
}

async fn consume(
    consumer: PullConsumer,
    hooks: Arc<Webhooks>,
    js: jetstream::Context,
    dead_subject: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    'pulls: loop {
        let pulled = tokio::select! {
            pulled = consumer.stream().max_messages_per_batch(AT_ONCE)
                .heartbeat(Duration::from_secs(5)).expires(Duration::from_secs(30)).messages() => pulled,
            () = shutdown.as_mut() => break 'pulls,
        };
        let Ok(mut messages) = pulled else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pulls,
                () = shutdown.as_mut() => break 'pulls,
            }
        };
        loop {
            while tasks.len() >= AT_ONCE {
                tasks.join_next().await;
            }
            let next = tokio::select! {
                next = messages.next() => next,
                () = shutdown.as_mut() => break 'pulls,
            };
            match next {
                Some(Ok(message)) => {
                    let (hooks, js, dead) = (hooks.clone(), js.clone(), dead_subject.clone());
                    tasks.spawn(async move { attempt(&message, &hooks, &js, &dead).await });
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "pulling webhooks; pulling anew");
                    continue 'pulls;
                }
                None => continue 'pulls,
            }
            while tasks.try_join_next().is_some() {}
        }
    }
    // Attempts under way end within WEBHOOK_TIMEOUT; one cut short is sent again, with the
    // same webhook-id, once its ack wait has run out.
    let drained = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(hooks.timeout, drained).await;
}

/// One attempt at the webhook `message` makes.
async fn attempt(
    message: &jetstream::Message,
    hooks: &Webhooks,
    js: &jetstream::Context,
    dead: &str,
) {
    // An operator's retry of a password-changed *mail* comes back on `{prefix}.changed`: the
    // webhook went when the event first came, and is not sent again for it.
    let retry_of_a_mail = message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(HEADER_RETRY_OF).is_some())
        && !message.subject.as_str().ends_with(".webhooks.retried");
    if retry_of_a_mail {
        return answer(message, AckKind::Ack).await;
    }
    let event_type = event_type(message);
    let hook = match Webhook::from_event(&event_type, &message.payload) {
        Ok(hook) => hook,
        Err(err) => {
            return dead_letter(message, js, dead, "undecodable", 1, &err.to_string()).await;
        }
    };
    if !hooks.wants(hook.kind) {
        hooks.count(hook.kind, "not_wanted");
        return answer(message, AckKind::Ack).await;
    }
    let attempt = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
    let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
    let span =
        tracing::info_span!("webhook", webhook_id = %hook.id, kind = hook.kind.as_str(), attempt);
    async {
        let posted = post(hooks, &hook).await;
        match step(&posted, attempt, &hooks.backoff) {
            Step::Ack => {
                tracing::info!("webhook delivered");
                hooks.count(hook.kind, "delivered");
                answer(message, AckKind::Ack).await;
            }
            Step::Retry(delay) => {
                let err = posted.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(error = %err, retry_in = ?delay, "webhook not taken; retrying");
                hooks.count(hook.kind, "retried");
                answer(message, AckKind::Nak(Some(delay))).await;
            }
            Step::GiveUp => {
                let err = posted.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::error!(error = %err, "webhook not taken after its last retry");
                hooks.count(hook.kind, "dead_lettered");
                dead_letter(message, js, dead, "webhook_failed", attempt, &err).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// What to tell JetStream after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ack,
    /// Send it again after this delay.
    Retry(Duration),
    /// The last retry failed: to the dead letters.
    GiveUp,
}

/// The decision alone: a 2xx is taken; otherwise the backoff's delay for `attempt`, until
/// there is none.
fn step(posted: &Result<(), NotTaken>, attempt: u32, backoff: &Backoff) -> Step {
    match (posted, backoff.after(attempt)) {
        (Ok(()), _) => Step::Ack,
        (Err(_), Some(delay)) => Step::Retry(delay),
        (Err(_), None) => Step::GiveUp,
    }
}

/// The event's type: its `Event-Type` header, else what its subject carries.
fn event_type(message: &jetstream::Message) -> String {
    let header = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_EVENT_TYPE))
        .map(|v| v.as_str().to_owned());
    header.unwrap_or_else(|| {
        let subject = message.subject.as_str();
        if subject.ends_with(".reported") {
            REPORTED
        } else {
            PASSWORD_CHANGED
        }
        .to_owned()
    })
}

/// Why an attempt was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotTaken {
    #[error("signing: {0}")]
    Sign(#[from] standardwebhooks::WebhookError),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?} (WEBHOOK_TIMEOUT)")]
    TimedOut(Duration),
    #[error("POST failed: {0}")]
    Post(#[from] hyper_util::client::legacy::Error),
    #[error("answered {0}")]
    Refused(http::StatusCode),
}

/// POSTs `hook`, signed for this attempt.
async fn post(hooks: &Webhooks, hook: &Webhook) -> Result<(), NotTaken> {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = hooks.signer.sign(&hook.id, timestamp, &hook.body)?;
    let request = Request::post(hooks.url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "password-reset-webhooks")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, &hook.id)
        .header(
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        )
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(Full::new(Bytes::from(hook.body.clone())))?;
    let sent = tokio::time::timeout(hooks.timeout, hooks.client.request(request))
        .await
        .map_err(|_| NotTaken::TimedOut(hooks.timeout))??;
    if sent.status().is_success() {
        Ok(())
    } else {
        Err(NotTaken::Refused(sent.status()))
    }
}

/// Acks or naks, within the bound every answer to JetStream has; a lost answer costs a
/// redelivery, which sends the webhook again with the same id.
async fn answer(message: &jetstream::Message, kind: AckKind) {
    match tokio::time::timeout(REPLY_WITHIN, message.ack_with(kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "webhook answer not sent"),
        Err(_) => tracing::warn!("webhook answer not sent within {REPLY_WITHIN:?}"),
    }
}

/// Moves the webhook's event to the dead letters, marked as a webhook so that a retry goes to
/// the webhook consumers alone; naks instead if the letter cannot be stored.
async fn dead_letter(
    message: &jetstream::Message,
    js: &jetstream::Context,
    dead: &str,
    reason: &'static str,
    attempt: u32,
    error: &str,
) {
    let mut headers = letter_headers(message, reason, attempt, error);
    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    headers.insert(HEADER_DEAD_KIND, "webhook");
    // One letter for the event, however many deliveries give up on it.
    headers.insert("Nats-Msg-Id", format!("dead-webhook-{seq}").as_str());
    let stored = tokio::time::timeout(REPLY_WITHIN, async {
        match js
            .publish_with_headers(dead.to_owned(), headers, message.payload.clone())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    match stored {
        Ok(true) => answer(message, AckKind::Term).await,
        _ => {
            tracing::warn!("webhook dead letter not stored; trying again later");
            answer(message, AckKind::Nak(Some(Duration::from_secs(30)))).await;
        }
    }
}

/// On a dead letter: what kind of delivery gave up on it (`webhook`; none for a mail).
pub const HEADER_DEAD_KIND: &str = "Dead-Kind";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_webhook_waits_each_delay_in_turn_then_gives_up() {
        let backoff = Backoff(vec![Duration::from_secs(10), Duration::from_secs(60)]);
        let refused = || Err(NotTaken::Refused(http::StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(step(&Ok(()), 1, &backoff), Step::Ack);
        assert_eq!(step(&Ok(()), 9, &backoff), Step::Ack);
        assert_eq!(
            step(&refused(), 1, &backoff),
            Step::Retry(Duration::from_secs(10))
        );
        assert_eq!(
            step(&refused(), 2, &backoff),
            Step::Retry(Duration::from_secs(60))
        );
        assert_eq!(step(&refused(), 3, &backoff), Step::GiveUp);
    }
}
