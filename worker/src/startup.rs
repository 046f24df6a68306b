//! Building and running the worker: one path for `main` and the tests, whose parts the
//! operator commands share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream::Stream};
use backon::Retryable;
use futures::FutureExt;
use shared::stream::ensure_stream;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Settings;
use crate::handle::Deps;
use crate::jetstream::consume::{self, LoopSettings};
use crate::jetstream::{ConsumerSetupError, ensure_consumer};
use crate::mail::templates::{TemplateError, Templates};
use crate::mail::{Composer, ComposerSettingsError};
use crate::status::{self, Status};
use crate::store::{Limits, Store};
use crate::transport::{Mailer, TransportSettingsError};
use crate::webhooks::{Webhooks, webhook_consumers};

/// Why the worker stopped with an error. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Templates(#[from] TemplateError),
    #[error(transparent)]
    Composer(#[from] ComposerSettingsError),
    #[error(transparent)]
    Transport(#[from] TransportSettingsError),
    #[error("cannot set up the NATS client for {url} (NATS_URL): {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("applying database migrations: {0}")]
    Migrate(#[from] shared::db::SchemaError),
    #[error(transparent)]
    Consumer(#[from] ConsumerSetupError),
    #[error("cannot listen on {addr} (WORKER_ADDR): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "WORKER_CLAIM_LEASE ({lease:?}) must be at least SMTP_TIMEOUT ({send:?}) + 10 s: a \
         delivery hands its mail over only while SMTP_TIMEOUT + 5 s of its lease are left"
    )]
    Lease { lease: Duration, send: Duration },
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookSettingsError),
}

/// Runs until `shutdown` resolves, then drains in-flight events and returns.
///
/// Broken settings (templates, addresses, URLs) fail at once. NATS and PostgreSQL may still
/// be starting: the worker waits for them, and a stop meanwhile ends the wait.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let shutdown = shutdown.shared();
    tokio::select! {
        built = Worker::build(settings) => built?.run_until(shutdown).await,
        () = shutdown.clone() => {}
    }
    Ok(())
}

/// A worker with its connections made and its consumers in place, ready to consume.
#[derive(Debug)]
pub struct Worker {
    deps: Arc<Deps>,
    client: async_nats::Client,
    js: jetstream::Context,
    consumers: Consumers,
    loops: LoopSettings,
    /// WEBHOOK_URL's webhooks and their consumers, if it is set.
    webhooks: Option<(Arc<Webhooks>, Vec<PullConsumer>)>,
    /// The part of `WORKER_SHUTDOWN_TIMEOUT` left for closing connections.
    close_for: Duration,
    /// Metrics and health; closed when the worker is dropped.
    _listener: AbortOnDropHandle<()>,
}

impl Worker {
    /// Checks the settings, listens for metrics and health at once (so `/readyz` tells
    /// what is missing), then waits for PostgreSQL, applies the migrations, waits for NATS
    /// and the stream, and puts the consumers in place.
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        let (templates, composer, mailer) = mail_parts(&settings)?;
        check_lease(&settings, &mailer)?;
        let hooks = Webhooks::from_settings(&settings.webhooks)?;
        let status = Arc::new(Status::new(mailer.health()));
        let addr = settings.status.addr;
        let (status_addr, listener) = status::serve(addr, status.clone())
            .await
            .map_err(|source| WorkerError::Listen { addr, source })?;
        tracing::info!(addr = %status_addr, "metrics and health listening");
        let listener = AbortOnDropHandle::new(listener);

        let store = wait_for("PostgreSQL", || {
            Store::connect(
                &settings.database.url.database_url,
                settings.database.database_max_connections,
            )
        })
        .await;
        store.migrate().await?;
        let _ = status.database.set(store.pool().clone());
        let client = shared::nats::connect(&settings.nats, "password-reset-worker")
            .await
            .map_err(|source| WorkerError::Nats {
                url: settings.nats.shown(),
                source,
            })?;
        let _ = status.nats.set(client.clone());
        let js = jetstream::new(client.clone());
        let stream = wait_for("the event stream", || open_stream(&js, &settings)).await;
        let consumers = consumers(&stream, &settings).await?;
        let _ = status.consumer.set(consumers.requested.clone());
        let webhooks = match hooks {
            Some(hooks) => {
                let subjects = settings.stream.subjects();
                let name = &settings.consume.consumer;
                let timeout = settings.webhooks.webhook_timeout;
                let pulled = webhook_consumers(&stream, name, &subjects, timeout).await?;
                let hooks = hooks.counted_in(status.metrics.webhooks.clone());
                Some((Arc::new(hooks), pulled))
            }
            None => None,
        };

        let deps = Arc::new(Deps {
            store,
            templates,
            composer,
            mailer,
            limits: Limits::new(&settings.policy, settings.consume.claim_lease),
            status,
        });
        Ok(Self {
            deps,
            client,
            js,
            consumers,
            loops: loop_settings(&settings),
            webhooks,
            close_for: split_stop(settings.consume.shutdown_timeout).1,
            _listener: listener,
        })
    }

    /// Consumes until `shutdown` resolves, lets in-flight events finish, and closes the
    /// connections; every step of the stop within `WORKER_SHUTDOWN_TIMEOUT`.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let shutdown = shutdown.shared();
        let mailer = &self.deps.mailer;
        if let Mailer::Outbox(_) = mailer {
            tracing::warn!(
                mail = %mailer.describe(),
                "SMTP_URL is not set: every email goes to a file in the outbox, to nobody's inbox"
            );
        }
        tracing::info!(
            consumer = %self.consumers.requested.cached_info().name,
            concurrency = self.loops.concurrency,
            mail = %mailer.describe(),
            locales = ?self.deps.templates.locales().collect::<Vec<_>>(),
            "worker consuming"
        );
        // The SMTP sessions open beside the first events rather than before them: a server
        // slow to greet must not hold the start. Warming ends when the stop begins.
        let warming = AbortOnDropHandle::new(tokio::spawn({
            let deps = self.deps.clone();
            async move { deps.mailer.warm().await }
        }));
        let requested = self.loops;
        // Notifications and operators' retries are few: a quarter of the slots is plenty.
        let few = LoopSettings {
            concurrency: (requested.concurrency / 4).max(1),
            ..requested.clone()
        };
        let Consumers {
            requested: requested_consumer,
            changed,
            retried,
        } = self.consumers;
        let (js, deps) = (&self.js, &self.deps);
        let (dead, stop) = (requested.dead_subject.clone(), shutdown.clone());
        let webhooks = async move {
            if let Some((hooks, pulled)) = self.webhooks {
                crate::webhooks::run(pulled, hooks, js.clone(), dead, stop).await;
            }
        };
        tokio::join!(
            webhooks,
            consume::run(
                requested_consumer,
                js.clone(),
                deps.clone(),
                requested,
                shutdown.clone()
            ),
            consume::run(
                changed,
                js.clone(),
                deps.clone(),
                few.clone(),
                shutdown.clone()
            ),
            consume::run(retried, js.clone(), deps.clone(), few, shutdown),
        );
        drop(warming);
        close(&self.deps, &self.client, self.close_for).await;
    }
}

/// Templates, composer and transport from the settings: everything that fails at once when a
/// setting is wrong. Shared by the worker and the operator commands.
pub(crate) fn mail_parts(
    settings: &Settings,
) -> Result<(Templates, Composer, Mailer), WorkerError> {
    let templates = Templates::load(&settings.mail.templates_dir)?;
    let composer = Composer::new(
        &settings.mail.mail_from,
        settings.mail.app_name.clone(),
        settings.mail.support_email.clone(),
        settings.policy.reset_url.clone(),
        settings.policy.token_ttl,
        settings.code.key().map_err(ComposerSettingsError::from)?,
    )?
    .with_report_url(settings.policy.report_url.clone())?;
    let mailer = Mailer::from_settings(&settings.mail)?;
    Ok((templates, composer, mailer))
}

/// A delivery hands its mail over only while SMTP_TIMEOUT + 5 s of its claim's lease are
/// left: a lease shorter than that could never send.
fn check_lease(settings: &Settings, mailer: &Mailer) -> Result<(), WorkerError> {
    let send = mailer.longest_send();
    let lease = settings.consume.claim_lease;
    if lease < send + Duration::from_secs(10) {
        return Err(WorkerError::Lease { lease, send });
    }
    Ok(())
}

/// Ensures the stream (creating it, or bringing its limits up to the settings) and opens it.
async fn open_stream(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Stream, StreamNotReady> {
    ensure_stream(js, &settings.stream).await?;
    Ok(js.get_stream(&settings.stream.stream).await?)
}

/// Why the stream is not there yet.
#[derive(Debug, thiserror::Error)]
enum StreamNotReady {
    #[error(transparent)]
    Ensure(#[from] shared::stream::StreamError),
    #[error("opening the stream: {0}")]
    Open(#[from] jetstream::context::GetStreamError),
}

/// The worker's durable consumers, one per subject it reads.
#[derive(Debug)]
struct Consumers {
    /// Reset requests, as the api publishes them (`RESET_CONSUMER`).
    requested: PullConsumer,
    /// Password-changed notifications (`{RESET_CONSUMER}-changed`).
    changed: PullConsumer,
    /// Reset requests an operator retried from the dead letters (`{RESET_CONSUMER}-retried`).
    retried: PullConsumer,
}

async fn consumers(stream: &Stream, settings: &Settings) -> Result<Consumers, ConsumerSetupError> {
    let subjects = settings.stream.subjects();
    let name = &settings.consume.consumer;
    let ack_wait = settings.consume.ack_wait;
    let requested = ensure_consumer(stream, name, subjects.requested(), ack_wait).await?;
    let changed_name = format!("{name}-changed");
    let changed = ensure_consumer(stream, &changed_name, subjects.changed(), ack_wait).await?;
    let retried_name = format!("{name}-retried");
    let retried = ensure_consumer(stream, &retried_name, subjects.retried(), ack_wait).await?;
    Ok(Consumers {
        requested,
        changed,
        retried,
    })
}

fn loop_settings(settings: &Settings) -> LoopSettings {
    let subjects = settings.stream.subjects();
    LoopSettings {
        concurrency: usize::from(settings.consume.concurrency),
        backoff: settings.consume.backoff.clone(),
        ack_wait: settings.consume.ack_wait,
        drain_for: split_stop(settings.consume.shutdown_timeout).0,
        token_ttl: settings.policy.token_ttl,
        dead_subject: subjects.dead(),
        changed_subject: subjects.changed(),
        retried_subject: subjects.retried(),
    }
}

/// Closes the connections within `within`: what is not closed by then is left to the other
/// side's timeouts (SMTP sessions, database connections), which lose nothing.
async fn close(deps: &Deps, client: &async_nats::Client, within: Duration) {
    let closing = async {
        let (_, flushed, _) = tokio::join!(
            deps.mailer.close(),
            client.flush(),
            deps.store.pool().close()
        );
        if let Err(err) = flushed {
            tracing::warn!(error = %err, "flushing the NATS connection");
        }
    };
    if tokio::time::timeout(within, closing).await.is_err() {
        tracing::warn!(within = ?within, "connections not all closed in time; exiting anyway");
    }
    tracing::info!("worker stopped");
}

/// How a stop's deadline (`WORKER_SHUTDOWN_TIMEOUT`) is split: in-flight events get the
/// first part, closing connections the rest (a quarter, at most 2 s).
fn split_stop(deadline: Duration) -> (Duration, Duration) {
    let close_for = (deadline / 4).min(Duration::from_secs(2));
    (deadline - close_for, close_for)
}

/// Calls `attempt` until it succeeds, backing off up to 10 s and saying why each time.
async fn wait_for<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        // The schedule never runs out; were it to, the wait starts over.
        let retried = (&mut attempt)
            .retry(shared::retry::forever(
                Duration::from_millis(200),
                Duration::from_secs(10),
            ))
            .notify(
                |err, delay| tracing::warn!(error = %err, retry_in = ?delay, "{what} not ready"),
            )
            .await;
        if let Ok(value) = retried {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_keeps_a_quarter_at_most_2_s_for_closing() {
        let second = Duration::from_secs(1);
        assert_eq!(split_stop(20 * second), (18 * second, 2 * second));
        assert_eq!(split_stop(4 * second), (3 * second, second));
        assert_eq!(split_stop(Duration::ZERO), (Duration::ZERO, Duration::ZERO));
    }
}
