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

use super::payload::Webhook;
use super::{WebhookSettingsError, Webhooks};
use crate::jetstream::dead_letter::letter_headers;
use crate::jetstream::reply::REPLY_WITHIN;
use crate::jetstream::{ConsumerSetupError, ensure_consumer};

pub(super) type Client =
    hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Webhooks under way at once per consumer.
const AT_ONCE: usize = 8;

/// An HTTP/1.1 client for https (the web's roots) and, to loopback, http.
pub(super) fn client() -> Result<Client, WebhookSettingsError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| WebhookSettingsError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

/// The webhook consumers: password changes, reports, and operators' retries of webhooks.
/// An attempt is acked or nak'd within WEBHOOK_TIMEOUT, so that is their ack wait, with room.
pub async fn webhook_consumers(
    stream: &Stream,
    name: &str,
    subjects: &Subjects,
    timeout: Duration,
) -> Result<Vec<PullConsumer>, ConsumerSetupError> {
    let ack_wait = timeout * 2 + Duration::from_secs(5);
    let mut consumers = Vec::new();
    for (suffix, subject) in [
        ("webhooks-changed", subjects.changed()),
        ("webhooks-reported", subjects.reported()),
        ("webhooks-retried", subjects.webhooks_retried()),
    ] {
        let durable = format!("{name}-{suffix}");
        consumers.push(ensure_consumer(stream, &durable, subject, ack_wait).await?);
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
    while tasks.join_next().await.is_some() {}
}

/// One attempt at the webhook `message` makes.
async fn attempt(
    message: &jetstream::Message,
    hooks: &Webhooks,
    js: &jetstream::Context,
    dead: &str,
) {
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
    let _entered = span.enter();
    match post(hooks, &hook).await {
        Ok(()) => {
            tracing::info!("webhook delivered");
            hooks.count(hook.kind, "delivered");
            answer(message, AckKind::Ack).await;
        }
        Err(err) => match hooks.backoff.after(attempt) {
            Some(delay) => {
                tracing::warn!(error = %err, retry_in = ?delay, "webhook not taken; retrying");
                hooks.count(hook.kind, "retried");
                answer(message, AckKind::Nak(Some(delay))).await;
            }
            None => {
                tracing::error!(error = %err, "webhook not taken after its last retry");
                hooks.count(hook.kind, "dead_lettered");
                dead_letter(message, js, dead, "webhook_failed", attempt, &err).await;
            }
        },
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

/// POSTs `hook`, signed for this attempt; `Err` says why it was not taken.
async fn post(hooks: &Webhooks, hook: &Webhook) -> Result<(), String> {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = hooks
        .signer
        .sign(&hook.id, timestamp, &hook.body)
        .map_err(|e| format!("signing: {e}"))?;
    let request = Request::post(hooks.url.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "password-reset-webhooks")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, &hook.id)
        .header(
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        )
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(Full::new(Bytes::from(hook.body.clone())))
        .map_err(|e| format!("building the request: {e}"))?;
    let sent = tokio::time::timeout(hooks.timeout, hooks.client.request(request)).await;
    match sent {
        Err(_) => Err(format!(
            "no answer within {:?} (WEBHOOK_TIMEOUT)",
            hooks.timeout
        )),
        Ok(Err(err)) => Err(format!("POST failed: {err}")),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
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
    headers.insert(
        "Nats-Msg-Id",
        format!("dead-webhook-{seq}-{attempt}").as_str(),
    );
    let stored = tokio::time::timeout(REPLY_WITHIN, async {
        let ack = js
            .publish_with_headers(dead.to_owned(), headers, message.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    })
    .await;
    match stored {
        Ok(Ok(_)) => answer(message, AckKind::Term).await,
        _ => {
            tracing::warn!("webhook dead letter not stored; trying again later");
            answer(message, AckKind::Nak(Some(Duration::from_secs(30)))).await;
        }
    }
}

/// On a dead letter: what kind of delivery gave up on it (`webhook`; none for a mail).
pub const HEADER_DEAD_KIND: &str = "Dead-Kind";
