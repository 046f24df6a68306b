//! Taking events off a consumer: bounded concurrency, acks, retries with backoff, in-progress
//! acks during long sends, and a clean stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{
        PullConsumer,
        pull::{self, MessagesErrorKind},
    },
};
use futures::{FutureExt, StreamExt};
use shared::event::{DecodeError, PasswordChanged, ResetRequested};
use shared::logging::mask_addresses;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, field::Empty};

use super::dead_letter::{HEADER_RETRY_OF, dead_letter, give_up};
use super::reply::reply;
use crate::config::Backoff;
use crate::handle::{Deps, HandleError, Handled, handle, handle_changed};
use crate::store::{Delivery, EventMeta, Mode};
use crate::transport::SendError;

/// How often the server confirms a waiting pull is alive; two missed in a row start a new one.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// What the consume loop needs to know.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub concurrency: usize,
    pub backoff: Backoff,
    pub ack_wait: Duration,
    /// On a stop, how long in-flight events get to finish before they are handed back.
    pub drain_for: Duration,
    pub token_ttl: Duration,
    pub dead_subject: String,
    /// Messages on this subject are `PasswordChanged`; all others `ResetRequested`.
    pub changed_subject: String,
}

/// The events the worker consumes.
enum Incoming {
    Reset(ResetRequested),
    Changed(PasswordChanged),
}

impl Incoming {
    fn meta(&self) -> EventMeta {
        match self {
            Self::Reset(event) => event.into(),
            Self::Changed(event) => event.into(),
        }
    }

    fn masked_account(&self) -> String {
        match self {
            Self::Reset(event) => shared::logging::mask_id(&event.id),
            Self::Changed(event) => shared::logging::mask_id(&event.account_id),
        }
    }
}

/// Consumes until `shutdown` resolves, then stops fetching, gives in-flight events up to
/// `drain_for` to finish, and returns.
pub async fn run(
    consumer: PullConsumer,
    js: jetstream::Context,
    deps: Arc<Deps>,
    settings: LoopSettings,
    shutdown: impl Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);

    'outer: loop {
        let mut messages = tokio::select! {
            started = consumer
                .stream()
                .max_messages_per_batch(settings.concurrency)
                .heartbeat(PULL_HEARTBEAT)
                .expires(Duration::from_secs(30))
                .messages() => match started {
                    Ok(messages) => messages,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot pull from the consumer; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            () = &mut shutdown => break 'outer,
                        }
                    }
                },
            () = &mut shutdown => break 'outer,
        };
        loop {
            // Take a message only with a free slot, so none waits in memory while its
            // ack_wait runs out.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'outer,
                },
                () = &mut shutdown => {
                    release_prefetched(&mut messages).await;
                    break 'outer;
                }
            };
            let next = tokio::select! {
                next = messages.next() => next,
                () = &mut shutdown => {
                    release_prefetched(&mut messages).await;
                    break 'outer;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let (js, deps, settings) = (js.clone(), deps.clone(), settings.clone());
                    tasks.spawn(crate::waiting::track(async move {
                        process(message, &js, &deps, &settings).await;
                        drop(permit);
                    }));
                }
                // async-nats can lose count of the messages it has asked for when one arrives
                // before the request's own confirmation, most often with a batch of one; it
                // then waits for the request to expire (35 s) before asking again. A missed
                // heartbeat is the sign: start a new pull at once.
                Some(Err(err)) if err.kind() == MessagesErrorKind::MissingHeartbeat => {
                    tracing::warn!("no heartbeat from the pending pull; pulling anew");
                    release_prefetched(&mut messages).await;
                    continue 'outer;
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "pulling messages");
                }
                None => {
                    tracing::warn!("the message stream ended; pulling again");
                    continue 'outer;
                }
            }
            while tasks.try_join_next().is_some() {}
        }
    }

    // Mails still waiting for an SMTP connection are handed back rather than waited for:
    // a stop waits only for what is under way.
    deps.mailer.begin_stop();
    while tasks.try_join_next().is_some() {}
    tracing::info!(
        in_flight = tasks.len(),
        "stopped fetching; finishing in-flight events"
    );
    let drained = tokio::time::timeout(settings.drain_for, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "in-flight events still running at the shutdown deadline; JetStream will redeliver them"
        );
        tasks.abort_all();
    }
}

/// Hands messages already pulled but not started back to JetStream for another worker.
async fn release_prefetched(messages: &mut pull::Stream) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(err) = reply(&message, AckKind::Nak(None)).await {
            tracing::warn!(error = %err, "prefetched message not handed back; JetStream redelivers it after ack_wait");
        }
    }
}

async fn process(
    message: jetstream::Message,
    js: &jetstream::Context,
    deps: &Deps,
    settings: &LoopSettings,
) {
    let info = message.info().ok();
    let attempt = info
        .as_ref()
        .map_or(1, |i| u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX));
    let seq = info.as_ref().map_or(0, |i| i.stream_sequence);
    let span = tracing::info_span!(
        "event",
        seq,
        attempt,
        event_id = Empty,
        request_id = Empty,
        account = Empty,
    );
    async {
        let changed = message.subject.as_str() == settings.changed_subject;
        let decoded = if changed {
            PasswordChanged::decode(&message.payload).map(Incoming::Changed)
        } else {
            ResetRequested::decode(&message.payload).map(Incoming::Reset)
        };
        let event = match decoded {
            Ok(event) => event,
            Err(err) => {
                let reason = match err {
                    DecodeError::UnsupportedVersion(_) => "unsupported_version",
                    DecodeError::Malformed(_) => "poison",
                };
                tracing::error!(error = %err, "event cannot be read");
                dead_letter(js, deps, settings, &message, reason, attempt, &err.to_string()).await;
                return;
            }
        };
        let meta = event.meta();
        let span = tracing::Span::current();
        span.record("event_id", tracing::field::display(meta.event_id));
        span.record("request_id", meta.request_id.as_str());
        span.record("account", event.masked_account());

        let retried = message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(HEADER_RETRY_OF).is_some());
        let mode = if retried { Mode::Again } else { Mode::Normal };
        // An operator's retry counts its time from when it was republished, not from the
        // original request; a notification carries no link, so it has a year. Both count
        // from the message's own time in the stream, which every redelivery keeps.
        let ttl = time::Duration::try_from(settings.token_ttl).unwrap_or(time::Duration::MAX);
        let published = info
            .as_ref()
            .map_or_else(time::OffsetDateTime::now_utc, |i| i.published);
        let deadline = match &event {
            Incoming::Changed(_) => published + time::Duration::days(365),
            Incoming::Reset(_) if retried => published + ttl,
            Incoming::Reset(event) => event.requested_at + ttl,
        };
        if time::OffsetDateTime::now_utc() > deadline {
            let why = "the request is older than TOKEN_TTL; a link sent now would outlive it";
            give_up(js, deps, settings, &message, &meta, "expired", Delivery::new(attempt), why).await;
            return;
        }

        let progress_every = (settings.ack_wait / 3).max(Duration::from_millis(100));
        let delivery = Delivery::new(attempt);
        let work = async {
            match &event {
                Incoming::Reset(event) => handle(event, delivery, mode, deps).await,
                Incoming::Changed(event) => handle_changed(event, delivery, mode, deps).await,
            }
        };
        match with_progress(&message, progress_every, work).await {
            Ok(handled) => {
                // A plain ack, not a confirmed one: the outcome is already recorded, so an ack
                // that gets lost only brings a redelivery that finds the event done and sends
                // nothing. Confirming would cost a subscription and a round trip per email.
                if let Err(err) = reply(&message, AckKind::Ack).await {
                    tracing::warn!(error = %err, "ack not sent; the redelivery will find the event done");
                }
                tracing::info!(outcome = handled.as_str(), "event handled");
                deps.status.metrics.event(handled.as_str());
                deps.status.metrics.attempts.observe(f64::from(attempt));
                if let Handled::AlreadyDone(outcome) = handled {
                    tracing::info!(previous = outcome.as_str(), "event had been handled before");
                }
            }
            Err(HandleError::Busy(left)) => {
                // Another delivery may be sending this very mail: come back once its lease
                // has run out (by then it has recorded the mail, or failed and let go).
                // The claim counted this delivery as a wait, not a failure.
                let delay = left + Duration::from_millis(100);
                tracing::info!(retry_in = ?delay, "another delivery holds the event's claim");
                deps.status.metrics.event("busy");
                nak(&message, Some(delay)).await;
            }
            Err(HandleError::Send(SendError::Stopping)) => {
                // Nothing was said to the SMTP server: the event goes at once to a worker
                // that is not stopping.
                tracing::info!("the worker is stopping; handed back unsent");
                let why = "handed back unsent at a stop";
                hand_back(&message, deps, &meta, delivery, why, "handed_back", None).await;
            }
            Err(HandleError::Send(SendError::TooLate)) => {
                let delay = settings.backoff.after(1).unwrap_or(Duration::from_secs(1));
                tracing::warn!(retry_in = ?delay, "no SMTP connection free before the claim's lease would run out; handed back unsent");
                let why = "no SMTP connection free in time";
                hand_back(&message, deps, &meta, delivery, why, "retried", Some(delay)).await;
            }
            Err(err) if err.is_permanent() => {
                give_up(js, deps, settings, &message, &meta, "permanent", delivery, &err.to_string()).await;
            }
            Err(err) => {
                // An SMTP outage or a wrong SMTP setting is not the event's fault: it waits
                // on the schedule (its last step once that runs out) for as long as its link
                // may still be sent, and is never dead-lettered for running out of retries.
                // Deliveries that found no SMTP session do not use up the message's retries.
                let waits = if err.is_connection() {
                    0
                } else {
                    deps.store.waits(meta.event_id).await.unwrap_or(0)
                };
                let scheduled = settings
                    .backoff
                    .after(attempt.saturating_sub(waits).max(1));
                let scheduled = if err.is_connection() {
                    scheduled.or(Some(settings.backoff.longest()))
                } else {
                    scheduled
                };
                let now = time::OffsetDateTime::now_utc();
                let retry = if err.is_connection() {
                    // Tried once more just before the link expires, not given up a whole
                    // delay early.
                    let left = Duration::try_from(deadline - now).ok().filter(|l| !l.is_zero());
                    scheduled.zip(left).map(|(delay, left)| delay.min(left))
                } else {
                    scheduled.filter(|delay| now + *delay < deadline)
                };
                match retry {
                    Some(delay) => {
                        if err.is_connection() {
                            // The pool has logged the failed set-up once; not again per mail.
                            tracing::debug!(retry_in = ?delay, "no SMTP session; will retry");
                        } else {
                            tracing::warn!(
                                error = %mask_addresses(&err.to_string()),
                                retry_in = ?delay,
                                "attempt failed; will retry"
                            );
                        }
                        let recorded = if err.is_connection() {
                            deps.store.record_wait(&meta, delivery, &err.to_string()).await
                        } else {
                            deps.store.record_failure(&meta, delivery, &err.to_string(), false).await
                        };
                        if let Err(db) = recorded {
                            tracing::warn!(error = %db, "recording the failed attempt");
                        }
                        deps.status.metrics.event("retried");
                        nak(&message, Some(delay)).await;
                    }
                    None => {
                        let reason = if scheduled.is_some() {
                            "expired"
                        } else {
                            "retries_exhausted"
                        };
                        give_up(js, deps, settings, &message, &meta, reason, delivery, &err.to_string()).await;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Gives back an event that was not sent and is not at fault: the wait is recorded (which
/// lets its claim go, so the next delivery need not wait for the lease), counted under
/// `outcome`, and the message naked to come again after `delay` (at once with `None`).
async fn hand_back(
    message: &jetstream::Message,
    deps: &Deps,
    meta: &EventMeta,
    delivery: Delivery,
    why: &str,
    outcome: &'static str,
    delay: Option<Duration>,
) {
    if let Err(db) = deps.store.record_wait(meta, delivery, why).await {
        tracing::warn!(error = %db, "recording the wait");
    }
    deps.status.metrics.event(outcome);
    nak(message, delay).await;
}

/// Asks for the message again after `delay` (at once with `None`).
async fn nak(message: &jetstream::Message, delay: Option<Duration>) {
    if let Err(err) = reply(message, AckKind::Nak(delay)).await {
        tracing::warn!(error = %err, "nak not sent; JetStream redelivers after ack_wait");
    }
}

/// Keeps JetStream from redelivering a message while it is still being worked on, and says
/// once, after the first `every`, that the event is taking long and what it waits for.
async fn with_progress<F: Future>(
    message: &jetstream::Message,
    every: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let began = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(began + every, every);
    let mut warned = false;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        after = ?began.elapsed(),
                        waiting_for = crate::waiting::current(),
                        "event still being worked on"
                    );
                }
                // Not `reply`: the work goes on meanwhile, and what it waits for stays on
                // record. A note that cannot leave is dropped; the next tick sends another.
                let _ = tokio::time::timeout(every, message.ack_with(AckKind::Progress)).await;
            }
        }
    }
}
