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

use super::dead_letter::{Answer, HEADER_RETRY_OF};
use super::policy::{self, Ended, Facts, Note, Verdict};
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
    /// On this subject, reset requests an operator retried: a `Retry-Of` header counts here
    /// only, as only the worker's user may publish to it.
    pub retried_subject: String,
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
    let taker = Taker {
        js,
        deps,
        permits: Arc::new(Semaphore::new(settings.concurrency)),
        settings: Arc::new(settings),
    };
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let Some(mut messages) = taker.pull(&consumer, &mut shutdown).await else {
            break;
        };
        if taker.take(&mut messages, &mut tasks, &mut shutdown).await == Taken::Stop {
            break;
        }
    }
    taker.drain(tasks).await;
}

/// What taking messages off one pull ended with.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Stop,
    PullAgain,
}

/// What the loop hands each event's task.
struct Taker {
    js: jetstream::Context,
    deps: Arc<Deps>,
    settings: Arc<LoopSettings>,
    permits: Arc<Semaphore>,
}

impl Taker {
    /// Starts a pull, retrying each second while the consumer cannot be reached; `None` once
    /// `shutdown` resolves.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<pull::Stream> {
        loop {
            let started = tokio::select! {
                started = consumer
                    .stream()
                    .max_messages_per_batch(self.settings.concurrency)
                    .heartbeat(PULL_HEARTBEAT)
                    .expires(Duration::from_secs(30))
                    .messages() => started,
                () = shutdown.as_mut() => return None,
            };
            match started {
                Ok(messages) => return Some(messages),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot pull from the consumer; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.as_mut() => return None,
                    }
                }
            }
        }
    }

    /// Takes messages off `messages` while slots are free, each on a task of its own.
    async fn take(
        &self,
        messages: &mut pull::Stream,
        tasks: &mut JoinSet<()>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Taken {
        loop {
            // Take a message only with a free slot, so none waits in memory while its
            // ack_wait runs out.
            let next = tokio::select! {
                next = async {
                    let permit = self.permits.clone().acquire_owned().await;
                    (permit, messages.next().await)
                } => next,
                () = shutdown.as_mut() => {
                    release_prefetched(messages).await;
                    return Taken::Stop;
                }
            };
            match next {
                (Err(_), _) => return Taken::Stop,
                (Ok(permit), Some(Ok(message))) => {
                    let (js, deps, settings) =
                        (self.js.clone(), self.deps.clone(), self.settings.clone());
                    tasks.spawn(crate::waiting::track(async move {
                        process(message, &js, &deps, &settings).await;
                        drop(permit);
                    }));
                }
                // async-nats can lose count of the messages it has asked for when one arrives
                // before the request's own confirmation, most often with a batch of one; it
                // then waits for the request to expire (35 s) before asking again. A missed
                // heartbeat is the sign: start a new pull at once.
                (_, Some(Err(err))) if err.kind() == MessagesErrorKind::MissingHeartbeat => {
                    tracing::warn!("no heartbeat from the pending pull; pulling anew");
                    release_prefetched(messages).await;
                    return Taken::PullAgain;
                }
                (_, Some(Err(err))) => tracing::warn!(error = %err, "pulling messages"),
                (_, None) => {
                    tracing::warn!("the message stream ended; pulling again");
                    return Taken::PullAgain;
                }
            }
            while tasks.try_join_next().is_some() {}
        }
    }

    /// Lets the events under way finish, within `drain_for`; mails still waiting for an SMTP
    /// connection are handed back rather than waited for, so a stop waits only for what is
    /// under way.
    async fn drain(&self, mut tasks: JoinSet<()>) {
        self.deps.mailer.begin_stop();
        while tasks.try_join_next().is_some() {}
        tracing::info!(
            in_flight = tasks.len(),
            "stopped fetching; finishing in-flight events"
        );
        let drained = tokio::time::timeout(self.settings.drain_for, async {
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
    let published = info
        .as_ref()
        .map_or_else(time::OffsetDateTime::now_utc, |i| i.published);
    let span = tracing::info_span!(
        "event",
        seq,
        attempt,
        event_id = Empty,
        request_id = Empty,
        account = Empty,
    );
    let answer = Answer {
        message: &message,
        js,
        deps,
        dead_subject: &settings.dead_subject,
    };
    deliver(&answer, settings, attempt, published)
        .instrument(span)
        .await;
}

/// Reads the event, works on it, and answers JetStream as the policy decides.
async fn deliver(
    answer: &Answer<'_>,
    settings: &LoopSettings,
    attempt: u32,
    published: time::OffsetDateTime,
) {
    let Some(event) = decode(answer, settings, attempt).await else {
        return;
    };
    let meta = event.meta();
    let span = tracing::Span::current();
    span.record("event_id", tracing::field::display(meta.event_id));
    span.record("request_id", meta.request_id.as_str());
    span.record("account", event.masked_account());

    let retried = is_operator_retry(answer.message, settings);
    let deadline = deadline(&event, retried, published, settings.token_ttl);
    let delivery = Delivery::new(attempt);
    if let Some(verdict) = policy::too_late(time::OffsetDateTime::now_utc(), deadline) {
        let why = "the request is older than TOKEN_TTL; a link sent now would outlive it";
        apply(answer, verdict, &meta, delivery, why).await;
        return;
    }

    let mode = if retried { Mode::Again } else { Mode::Normal };
    let work = async {
        match &event {
            Incoming::Reset(event) => handle(event, delivery, mode, answer.deps).await,
            Incoming::Changed(event) => handle_changed(event, delivery, mode, answer.deps).await,
        }
    };
    let progress_every = (settings.ack_wait / 3).max(Duration::from_millis(100));
    let result = with_progress(answer.message, progress_every, work).await;
    let ended = ended(&result);
    let waits = if ended.needs_waits() {
        answer.deps.store.waits(meta.event_id).await.unwrap_or(0)
    } else {
        0
    };
    let facts = Facts {
        attempt,
        waits,
        now: time::OffsetDateTime::now_utc(),
        deadline,
    };
    let verdict = policy::decide(ended, facts, &settings.backoff);
    let why = match &result {
        Ok(handled) => {
            log_handled(*handled, attempt, answer.deps);
            String::new()
        }
        Err(err) => {
            log_failed(ended, err, verdict);
            err.to_string()
        }
    };
    apply(answer, verdict, &meta, delivery, &why).await;
}

/// Reads the message as the event its subject carries; one that cannot be read goes to the
/// dead letters at once.
async fn decode(answer: &Answer<'_>, settings: &LoopSettings, attempt: u32) -> Option<Incoming> {
    let message = answer.message;
    let decoded = if message.subject.as_str() == settings.changed_subject {
        PasswordChanged::decode(&message.payload).map(Incoming::Changed)
    } else {
        ResetRequested::decode(&message.payload).map(Incoming::Reset)
    };
    match decoded {
        Ok(event) => Some(event),
        Err(err) => {
            let reason = match err {
                DecodeError::UnsupportedVersion(_) => "unsupported_version",
                DecodeError::Malformed(_) => "poison",
            };
            tracing::error!(error = %err, "event cannot be read");
            answer.dead_letter(reason, attempt, &err.to_string()).await;
            None
        }
    }
}

/// Whether the message is an operator's retry from the dead letters: a reset request on the
/// retried subject, or a notification (which carries no link) with `Retry-Of`. A `Retry-Of`
/// on the requested subject, where the api also publishes, counts for nothing.
fn is_operator_retry(message: &jetstream::Message, settings: &LoopSettings) -> bool {
    let marked = message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(HEADER_RETRY_OF).is_some());
    let subject = message.subject.as_str();
    marked && (subject == settings.retried_subject || subject == settings.changed_subject)
}

/// When a mail for the event would come too late. An operator's retry counts its time from
/// when it was republished, not from the original request; a notification carries no link,
/// so it has a year. Both count from the message's own time in the stream, which every
/// redelivery keeps.
fn deadline(
    event: &Incoming,
    retried: bool,
    published: time::OffsetDateTime,
    token_ttl: Duration,
) -> time::OffsetDateTime {
    let ttl = time::Duration::try_from(token_ttl).unwrap_or(time::Duration::MAX);
    match event {
        Incoming::Changed(_) => published + time::Duration::days(365),
        Incoming::Reset(_) if retried => published + ttl,
        Incoming::Reset(event) => event.requested_at + ttl,
    }
}

/// How the work ended, in the policy's terms.
fn ended(result: &Result<Handled, HandleError>) -> Ended {
    match result {
        Ok(_) => Ended::Done,
        Err(HandleError::Busy(left)) => Ended::Busy { left: *left },
        Err(HandleError::Send(SendError::Stopping)) => Ended::Stopping,
        Err(HandleError::Send(SendError::TooLate)) => Ended::TooLate,
        Err(HandleError::Send(SendError::Connection(_))) => Ended::NoSession,
        Err(HandleError::Send(SendError::Permanent(_)) | HandleError::Compose(_)) => {
            Ended::Permanent
        }
        Err(_) => Ended::Failed,
    }
}

fn log_handled(handled: Handled, attempt: u32, deps: &Deps) {
    tracing::info!(outcome = handled.as_str(), "event handled");
    deps.status.metrics.event(handled.as_str());
    deps.status.metrics.attempts.observe(f64::from(attempt));
    if let Handled::AlreadyDone(outcome) = handled {
        tracing::info!(previous = outcome.as_str(), "event had been handled before");
    }
}

fn log_failed(ended: Ended, err: &HandleError, verdict: Verdict) {
    let Verdict::Again { after, .. } = verdict else {
        return; // giving up logs for itself
    };
    match ended {
        Ended::Busy { .. } => {
            tracing::info!(retry_in = ?after, "another delivery holds the event's claim");
        }
        // Nothing was said to the SMTP server: the event goes at once to a worker that is
        // not stopping.
        Ended::Stopping => tracing::info!("the worker is stopping; handed back unsent"),
        Ended::TooLate => tracing::warn!(
            retry_in = ?after,
            "no SMTP connection free before the claim's lease would run out; handed back unsent"
        ),
        // The pool has logged the failed set-up once; not again per mail.
        Ended::NoSession => tracing::debug!(retry_in = ?after, "no SMTP session; will retry"),
        _ => tracing::warn!(
            error = %mask_addresses(&err.to_string()),
            retry_in = ?after,
            "attempt failed; will retry"
        ),
    }
}

/// Does what the policy decided: records, counts, and answers JetStream.
async fn apply(
    answer: &Answer<'_>,
    verdict: Verdict,
    meta: &EventMeta,
    delivery: Delivery,
    why: &str,
) {
    let deps = answer.deps;
    match verdict {
        // A plain ack, not a confirmed one: the outcome is already recorded, so an ack that
        // gets lost only brings a redelivery that finds the event done and sends nothing.
        // Confirming would cost a subscription and a round trip per email.
        Verdict::Ack => {
            if let Err(err) = reply(answer.message, AckKind::Ack).await {
                tracing::warn!(error = %err, "ack not sent; the redelivery will find the event done");
            }
        }
        Verdict::Again {
            note,
            counted,
            after,
        } => {
            // A wait lets the event's claim go, so the next delivery need not wait out the
            // lease; a failure spends one of its retries.
            let recorded = match note {
                Note::Nothing => Ok(()),
                Note::Wait => deps.store.record_wait(meta, delivery, why).await,
                Note::Failure => deps.store.record_failure(meta, delivery, why, false).await,
            };
            if let Err(db) = recorded {
                tracing::warn!(error = %db, "recording the attempt");
            }
            deps.status.metrics.event(counted);
            nak(answer.message, after).await;
        }
        Verdict::GiveUp { reason } => answer.give_up(meta, delivery, reason, why).await,
    }
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
