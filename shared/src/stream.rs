//! Subject names and the JetStream stream that holds every event.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::CreateStreamErrorKind,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};

/// How long JetStream remembers a `Nats-Msg-Id`: a publish repeated within this window
/// (an api retry, a client's `Idempotency-Key`) stores nothing new.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where events go. Both binaries read these settings and must agree on them.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamSettings {
    /// Name of the JetStream stream holding the events.
    #[arg(long, env = "RESET_STREAM", default_value = "AUTH_RESET", value_parser = parse_stream_name)]
    pub stream: String,

    /// Subject prefix: events are published to `{prefix}.requested`; the stream covers `{prefix}.>`.
    #[arg(long, env = "RESET_SUBJECT_PREFIX", default_value = "auth.reset", value_parser = parse_prefix)]
    pub subject_prefix: String,

    /// How long events stay in the stream, replayable (e.g. `7d`, `36h`).
    #[arg(long, env = "RESET_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Copies of the stream kept by a NATS cluster: 1 on a single server, 3 on a
    /// three-node cluster (a PubAck then means a majority stored the event).
    #[arg(long, env = "RESET_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Largest size of the stream (`10GiB`, `500MB`); unset, only `RESET_RETENTION` and the
    /// server's JetStream storage bound it. When it is reached the stream refuses new events
    /// (the api answers 503, "the event stream is full") and never drops stored ones.
    #[arg(long, env = "RESET_MAX_BYTES", value_parser = parse_max_bytes)]
    pub max_bytes: Option<u64>,
}

impl StreamSettings {
    pub fn subjects(&self) -> Subjects {
        Subjects {
            prefix: self.subject_prefix.clone(),
        }
    }

    /// The stream as this build wants it: file storage, limits retention (events are kept for
    /// replay, not removed when consumed), a two-minute duplicate window.
    pub fn stream_config(&self) -> Config {
        Config {
            name: self.stream.clone(),
            description: Some("Password-reset events (ResetRequested)".into()),
            subjects: vec![self.subjects().all()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: self.retention,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: usize::from(self.replicas),
            max_bytes: self
                .max_bytes
                .and_then(|b| i64::try_from(b).ok())
                .unwrap_or(-1),
            // A full stream refuses the new event (the client gets 503 and may retry) rather
            // than dropping the oldest, which may be one no worker has handled yet.
            discard: DiscardPolicy::New,
            ..Default::default()
        }
    }
}

/// The subjects under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `{prefix}.requested`: one `ResetRequested` per accepted request.
    pub fn requested(&self) -> String {
        format!("{}.requested", self.prefix)
    }

    /// `{prefix}.retried`: reset requests an operator retried from the dead letters
    /// (`worker dead-letters retry`). Only the worker's user may publish here, so only an
    /// operator's retry gets a retry's lifetime (TOKEN_TTL from the retry, not the request).
    pub fn retried(&self) -> String {
        format!("{}.retried", self.prefix)
    }

    /// `{prefix}.changed`: one `PasswordChanged` per completed reset.
    pub fn changed(&self) -> String {
        format!("{}.changed", self.prefix)
    }

    /// `{prefix}.reported`: one `Reported` per mail its owner reported.
    pub fn reported(&self) -> String {
        format!("{}.reported", self.prefix)
    }

    /// `{prefix}.webhooks.retried`: webhooks an operator retried from the dead letters; only
    /// the worker's webhook consumer reads them, so a retry sends no mail again.
    pub fn webhooks_retried(&self) -> String {
        format!("{}.webhooks.retried", self.prefix)
    }

    /// `{prefix}.dead`: events the worker gave up on.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// `{prefix}.>`: everything the stream holds.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }
}

/// Why the stream could not be created or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("creating stream {name}: {source}")]
    Create {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("updating stream {name} to the current settings: {source}")]
    Update {
        name: String,
        source: jetstream::context::UpdateStreamError,
    },
}

/// Creates the stream, or updates it to the current settings if it exists.
///
/// The api and the worker both call this at start-up, possibly at the same moment: a create
/// that loses the race sees "stream name already in use" and updates instead, which is a no-op
/// when the settings agree. A stream that already has the settings is only looked at, so a
/// user that may read the stream's info but not change it (the api's, in the deployment's
/// accounts file) finds it ready once the worker has made it.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(), StreamError> {
    let config = settings.stream_config();
    let name = config.name.clone();
    if already_ready(js, &config).await {
        return Ok(());
    }
    match js.create_stream(config.clone()).await {
        Ok(_) => Ok(()),
        // Made meanwhile by the other binary: with these settings, there is nothing to write.
        Err(err) if already_exists(&err) && already_ready(js, &config).await => Ok(()),
        Err(err) if already_exists(&err) => js
            .update_stream(&config)
            .await
            .map(|_| ())
            .map_err(|source| StreamError::Update { name, source }),
        Err(source) => Err(StreamError::Create { name, source }),
    }
}

/// Whether the stream exists with `config`'s settings.
async fn already_ready(js: &jetstream::Context, config: &jetstream::stream::Config) -> bool {
    match js.get_stream(&config.name).await {
        Ok(mut stream) => stream
            .info()
            .await
            .is_ok_and(|info| same_settings(&info.config, config)),
        Err(_) => false,
    }
}

/// Whether `found` has every setting `wanted` sets (the server fills in the rest).
fn same_settings(found: &jetstream::stream::Config, wanted: &jetstream::stream::Config) -> bool {
    found.subjects == wanted.subjects
        && found.max_age == wanted.max_age
        && found.max_bytes == wanted.max_bytes
        && found.num_replicas == wanted.num_replicas
        && found.duplicate_window == wanted.duplicate_window
        && found.discard == wanted.discard
        && found.retention == wanted.retention
        && found.storage == wanted.storage
        && found.description == wanted.description
}

fn already_exists(err: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        err.kind(),
        CreateStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

/// Why `RESET_STREAM` or `RESET_SUBJECT_PREFIX` is refused.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("a stream name takes letters, digits, `-` and `_` only")]
    Stream,
    #[error(
        "a subject prefix is dot-separated tokens of letters, digits, `-` and `_` (no wildcards)"
    )]
    Prefix,
}

fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `RESET_MAX_BYTES`: a size with its unit, at least 1 KiB.
fn parse_max_bytes(value: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = value
        .parse()
        .map_err(|e| format!("not a size like 10GiB or 500MB: {e}"))?;
    if size.as_u64() < 1024 {
        return Err("at least 1KiB".into());
    }
    Ok(size.as_u64())
}

fn parse_stream_name(raw: &str) -> Result<String, NameError> {
    is_token(raw)
        .then(|| raw.to_owned())
        .ok_or(NameError::Stream)
}

fn parse_prefix(raw: &str) -> Result<String, NameError> {
    raw.split('.')
        .all(is_token)
        .then(|| raw.to_owned())
        .ok_or(NameError::Prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_hang_off_the_prefix() {
        let subjects = Subjects::new("auth.reset");
        assert_eq!(subjects.requested(), "auth.reset.requested");
        assert_eq!(subjects.dead(), "auth.reset.dead");
        assert_eq!(subjects.all(), "auth.reset.>");
    }

    #[test]
    fn prefixes_with_wildcards_or_empty_tokens_are_refused() {
        assert!(parse_prefix("auth.reset").is_ok());
        for bad in ["", "auth..reset", "auth.*", "auth.>", "auth reset", ".auth"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn max_bytes_takes_a_size_with_its_unit() {
        assert_eq!(parse_max_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_max_bytes("500 MB"), Ok(500_000_000));
        assert_eq!(parse_max_bytes("64KiB"), Ok(65_536));
        for bad in ["", "ten", "12", "-5GiB"] {
            assert!(parse_max_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(parse_stream_name("AUTH_RESET").is_ok());
        assert!(parse_stream_name("AUTH.RESET").is_err());
        assert!(parse_stream_name("").is_err());
    }
}
