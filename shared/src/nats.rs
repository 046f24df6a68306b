//! Connecting to NATS the same way from every binary.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

/// Where NATS is.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URL, or several separated by commas for a cluster (credentials may be given
    /// in it: `nats://user:pass@host:4222`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
}

impl NatsSettings {
    /// `NATS_URL` as logs and error messages may show it: without credentials.
    pub fn shown(&self) -> String {
        urls(&self.nats_url)
            .into_iter()
            .map(|raw| match url::Url::parse(raw) {
                Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                    let _ = url.set_password(None);
                    let _ = url.set_username("***");
                    url.to_string()
                }
                Ok(_) => raw.to_owned(),
                // It might hold credentials in a shape the parser did not follow.
                Err(_) => "<a URL that does not parse>".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
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
        .connect(urls(&settings.nats_url).as_slice())
        .await
}

/// The seed servers of a comma-separated `NATS_URL`. (The client also learns the rest of a
/// cluster from the servers themselves.)
pub fn urls(raw: &str) -> Vec<&str> {
    raw.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_never_shown() {
        let settings = super::NatsSettings {
            nats_url: "nats://u:s3cret@n1:4222, nats://t0ken@n2:4222,nats://n3:4222".into(),
        };
        let shown = settings.shown();
        assert_eq!(
            shown,
            "nats://***@n1:4222,nats://***@n2:4222,nats://n3:4222"
        );
    }

    #[test]
    fn several_urls_are_split_on_commas() {
        assert_eq!(
            super::urls("nats://n1:4222, nats://n2:4222,nats://n3:4222"),
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
        );
        assert_eq!(
            super::urls("nats://127.0.0.1:4222"),
            ["nats://127.0.0.1:4222"]
        );
    }
}
