//! The worker: consumes `ResetRequested` events from JetStream and sends the reset emails.
//!
//! Several worker processes share one durable pull consumer; each handles up to
//! `WORKER_CONCURRENCY` events at once. For each event it finds the account, decides under a
//! per-account lock whether a mail may go (throttling), mints a token whose hash it stores,
//! renders the email from the templates and hands it to SMTP (or the outbox). Failures are
//! retried on JetStream's schedule and end in the dead letters (`{prefix}.dead`).
//!
//! Layout:
//! - [`config`] (settings) and [`cli`] (the command line);
//! - [`jetstream`]: the consumers, the consume loop (acks, retries, a clean stop) and the
//!   dead letters;
//! - [`handle`]: one event, knowing nothing of JetStream;
//! - [`store`]: PostgreSQL, with claims and sent records written in batches; [`tokens`];
//! - [`mail`]: composing the emails from the [`mail::templates`];
//! - [`transport`]: the SMTP pool, the SMTP target and the outbox;
//! - [`status`]: metrics and health on `WORKER_ADDR`; [`waiting`]: what a slow event waits for;
//! - [`ops`]: the operator commands, `replay` and `dead-letters`, a file each.

pub mod cli;
pub mod config;
pub mod handle;
pub mod jetstream;
pub mod mail;
pub mod ops;
pub mod status;
pub mod store;
pub mod tokens;
pub mod transport;
pub mod waiting;

use std::future::Future;

use backon::Retryable;
use std::sync::Arc;
use std::time::Duration;

pub use config::Settings;
use futures::FutureExt;
use shared::stream::ensure_stream;

use crate::handle::Deps;
use crate::jetstream::consume::{self, LoopSettings};
use crate::jetstream::{ConsumerSetupError, ensure_consumer};
use crate::mail::templates::{TemplateError, Templates};
use crate::mail::{Composer, ComposerSettingsError};
use crate::status::Status;
use crate::store::{Limits, Store};
use crate::transport::{Mailer, TransportSettingsError};

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
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "WORKER_CLAIM_LEASE ({lease:?}) must be at least SMTP_TIMEOUT ({send:?}) + 10 s: a \
         delivery hands its mail over only while SMTP_TIMEOUT + 5 s of its lease are left"
    )]
    Lease { lease: Duration, send: Duration },
}

/// Runs until `shutdown` resolves, then drains in-flight events and returns.
///
/// Broken settings (templates, addresses, URLs) fail at once. NATS and PostgreSQL may still
/// be starting: the worker waits for them.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let shutdown = shutdown.shared();
    let (templates, composer, mailer) = mail_parts(&settings)?;
    let send = mailer.longest_send();
    if settings.consume.claim_lease < send + Duration::from_secs(10) {
        return Err(WorkerError::Lease {
            lease: settings.consume.claim_lease,
            send,
        });
    }
    let status = Arc::new(Status::new(mailer.health()));
    let (bound, listener) = status::serve(settings.status.addr, status.clone())
        .await
        .map_err(|source| WorkerError::Listen {
            addr: settings.status.addr,
            source,
        })?;
    tracing::info!(addr = %bound, "metrics and health listening");
    let result = consume_until(settings, templates, composer, mailer, status, shutdown).await;
    listener.abort();
    result
}

async fn consume_until(
    settings: Settings,
    templates: Templates,
    composer: Composer,
    mailer: Mailer,
    status: Arc<Status>,
    shutdown: futures::future::Shared<impl Future<Output = ()>>,
) -> Result<(), WorkerError> {
    let concurrency = usize::from(settings.consume.concurrency);
    let max_connections = settings.database.database_max_connections;
    let url = settings.database.url.database_url.clone();
    let Some(store) = retry_until(shutdown.clone(), "PostgreSQL", || {
        Store::connect(&url, max_connections)
    })
    .await
    else {
        return Ok(());
    };
    store.migrate().await?;
    let _ = status.database.set(store.pool().clone());

    let client = shared::nats::connect(&settings.nats, "password-reset-worker")
        .await
        .map_err(|source| WorkerError::Nats {
            url: settings.nats.shown(),
            source,
        })?;
    let _ = status.nats.set(client.clone());
    let js = async_nats::jetstream::new(client.clone());
    let ready = retry_until(shutdown.clone(), "the event stream", || async {
        ensure_stream(&js, &settings.stream)
            .await
            .map_err(|e| e.to_string())?;
        js.get_stream(&settings.stream.stream)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let Some(stream) = ready else {
        return Ok(());
    };
    let subjects = settings.stream.subjects();
    let consumer = ensure_consumer(
        &stream,
        &settings.consume.consumer,
        subjects.requested(),
        settings.consume.ack_wait,
    )
    .await?;
    let _ = status.consumer.set(consumer.clone());
    let changed_consumer = ensure_consumer(
        &stream,
        &format!("{}-changed", settings.consume.consumer),
        subjects.changed(),
        settings.consume.ack_wait,
    )
    .await?;

    if let Mailer::Outbox(_) = &mailer {
        tracing::warn!(
            mail = %mailer.describe(),
            "SMTP_URL is not set: every email goes to a file in the outbox, to nobody's inbox"
        );
    }
    tracing::info!(
        consumer = %settings.consume.consumer,
        concurrency,
        mail = %mailer.describe(),
        locales = ?templates.locales().collect::<Vec<_>>(),
        "worker consuming"
    );
    let deps = Arc::new(Deps {
        store,
        templates,
        composer,
        mailer,
        limits: Limits::new(&settings.policy, settings.consume.claim_lease),
        status,
    });
    // The SMTP sessions open beside the first events rather than before them: a server
    // slow to greet must not hold the start. Warming ends when the stop begins.
    let warming = tokio::spawn({
        let deps = deps.clone();
        async move { deps.mailer.warm().await }
    });
    let (drain_for, close_for) = split_stop(settings.consume.shutdown_timeout);
    let loop_settings = LoopSettings {
        concurrency,
        backoff: settings.consume.backoff.clone(),
        ack_wait: settings.consume.ack_wait,
        drain_for,
        token_ttl: settings.policy.token_ttl,
        dead_subject: subjects.dead(),
        changed_subject: subjects.changed(),
    };
    // Notifications are few: a quarter of the slots is plenty.
    let changed_settings = LoopSettings {
        concurrency: (concurrency / 4).max(1),
        ..loop_settings.clone()
    };
    tokio::join!(
        consume::run(
            consumer,
            js.clone(),
            deps.clone(),
            loop_settings,
            shutdown.clone()
        ),
        consume::run(
            changed_consumer,
            js,
            deps.clone(),
            changed_settings,
            shutdown
        ),
    );

    warming.abort();
    // Every step of the stop is bounded: what is not closed by the deadline is left to the
    // other side's timeouts (SMTP sessions, database connections), which lose nothing.
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
    if tokio::time::timeout(close_for, closing).await.is_err() {
        tracing::warn!(within = ?close_for, "connections not all closed in time; exiting anyway");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// How a stop's deadline (`WORKER_SHUTDOWN_TIMEOUT`) is split: in-flight events get the
/// first part, closing connections the rest (a quarter, at most 2 s).
fn split_stop(deadline: Duration) -> (Duration, Duration) {
    let close_for = (deadline / 4).min(Duration::from_secs(2));
    (deadline - close_for, close_for)
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
    )?;
    let mailer = Mailer::from_settings(&settings.mail)?;
    Ok((templates, composer, mailer))
}

/// Calls `attempt` until it succeeds, backing off up to 10 s, or until `shutdown` (then `None`).
async fn retry_until<T, E, F, Fut>(
    shutdown: impl Future<Output = ()>,
    what: &str,
    attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let retried = attempt
        .retry(shared::retry::forever(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ))
        .notify(|err, delay| tracing::warn!(error = %err, retry_in = ?delay, "{what} not ready"));
    tokio::select! {
        result = retried => result.ok(),
        () = shutdown => None,
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
