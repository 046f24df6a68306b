//! The worker's settings, all from the environment (or the matching `--flag`).

use shared::{nats::NatsSettings, stream::StreamSettings, telemetry::LogSettings};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "worker",
    version,
    about = "Password-reset worker: consumes ResetRequested events from NATS JetStream and sends the emails."
)]
pub struct Settings {
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub log: LogSettings,
}
