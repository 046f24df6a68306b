//! The worker: consumes `ResetRequested` events from JetStream and sends the reset emails.
//!
//! At this stage it makes sure the event stream exists (so either binary may start first) and
//! then waits for SIGTERM/SIGINT.

pub mod config;

use std::future::Future;
use std::time::Duration;

pub use config::Settings;
use shared::stream::ensure_stream;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot set up the NATS client for {url} (NATS_URL): {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// Runs until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let client = shared::nats::connect(&settings.nats, "password-reset-worker")
        .await
        .map_err(|source| WorkerError::Nats {
            url: settings.nats.nats_url.clone(),
            source,
        })?;
    let js = async_nats::jetstream::new(client.clone());
    let ensure = async {
        let mut delay = Duration::from_millis(200);
        loop {
            match ensure_stream(&js, &settings.stream).await {
                Ok(()) => {
                    tracing::info!(stream = %settings.stream.stream, "event stream ready");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "event stream not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = ensure => {}
        () = shutdown => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!("worker stopped");
    Ok(())
}
