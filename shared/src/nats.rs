//! Connecting to NATS the same way from every binary.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

/// Where NATS is.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URL (credentials may be given in it: `nats://user:pass@host:4222`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

/// Connects without waiting for the server: the returned client keeps trying in the background,
/// so a binary can start (and report itself not ready) while NATS is still coming up.
pub async fn connect(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(settings.nats_url.as_str())
        .await
}
