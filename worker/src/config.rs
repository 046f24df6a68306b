//! The worker's settings, all from the environment (or the matching `--flag`).
//! `worker --help` lists every variable with its default.

use std::path::PathBuf;
use std::time::Duration;

use shared::{logging::LogSettings, nats::NatsSettings, stream::StreamSettings};

/// Events one worker handles at once unless told otherwise. Large enough that each database
/// statement claims or records many events (on the benchmark machine 64 sends about 1.3 to 1.7
/// times the mails per second of 16; BENCHMARKS.md, change 22); a worker killed mid-run leaves
/// at most this many events for redelivery, some of which may then be mailed twice.
pub const DEFAULT_CONCURRENCY: u16 = 64;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "worker",
    version,
    about = "Password-reset worker: consumes ResetRequested events from NATS JetStream and sends the emails."
)]
pub struct Settings {
    #[command(flatten)]
    pub status: StatusSettings,
    #[command(flatten)]
    pub consume: ConsumeSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub policy: PolicySettings,
    #[command(flatten)]
    pub code: shared::code::CodeKeySettings,
    #[command(flatten)]
    pub mail: MailSettings,
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// The worker's own HTTP listener.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusSettings {
    /// Address of the listener serving /metrics, /healthz and /readyz (port 0 picks one).
    #[arg(long = "addr", env = "WORKER_ADDR", default_value = "127.0.0.1:9090")]
    pub addr: std::net::SocketAddr,
}

/// How events are taken off the stream.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeSettings {
    /// Name of the durable consumer every worker process shares.
    #[arg(long, env = "RESET_CONSUMER", default_value = "reset-worker")]
    pub consumer: String,

    /// Events handled at once by this process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Delays before each retry of a failed attempt, comma-separated; their count is the
    /// number of retries.
    #[arg(long, env = "WORKER_BACKOFF", default_value = "2s,10s,30s,2m,10m,30m", value_parser = parse_backoff)]
    pub backoff: Backoff,

    /// How long JetStream waits for an ack before redelivering (kept alive while working).
    #[arg(long, env = "WORKER_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// On SIGTERM/SIGINT, the longest the stop takes: in-flight events get up to three
    /// quarters of it (all but 2 s at most) to finish, closing connections the rest.
    #[arg(long, env = "WORKER_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long a delivery's claim on an event keeps every other delivery of it from mailing.
    /// At least SMTP_TIMEOUT + 10 s: a delivery hands its mail over only while SMTP_TIMEOUT
    /// + 5 s of its lease are left.
    #[arg(long, env = "WORKER_CLAIM_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub claim_lease: Duration,
}

/// The retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff(pub Vec<Duration>);

impl Backoff {
    /// Delay before retrying after failed attempt `attempt` (1-based), or `None` when it was
    /// the last one allowed.
    pub fn after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.0.get(index).copied()
    }

    /// The last delay of the schedule (30 s if it has none): how often an event waiting
    /// for the SMTP server to take connections again is tried once the schedule has run out.
    pub fn longest(&self) -> Duration {
        self.0.last().copied().unwrap_or(Duration::from_secs(30))
    }

    /// Attempts in all: the first plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX - 1) + 1
    }
}

/// Why `WORKER_BACKOFF` is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackoffError {
    #[error("`{text}`: {source}")]
    Delay {
        text: String,
        source: humantime::DurationError,
    },
    #[error("a zero delay would redeliver at once; give every retry a delay")]
    Zero,
}

pub(crate) fn parse_backoff(raw: &str) -> Result<Backoff, BackoffError> {
    let delays = raw
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            humantime::parse_duration(d).map_err(|source| BackoffError::Delay {
                text: d.to_owned(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.iter().any(Duration::is_zero) {
        return Err(BackoffError::Zero);
    }
    Ok(Backoff(delays))
}

/// Where the processing records and tokens live.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    #[command(flatten)]
    pub url: shared::db::DatabaseUrl,

    /// Database connections, opened as the worker starts and kept. Claims and sent records go through one at a
    /// time whatever the concurrency; the others serve the queries of single events
    /// (notifications, failures, replays) and the health check.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,
}

/// Tokens and throttling.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicySettings {
    /// How long a reset link works. Events older than this are not mailed any more.
    #[arg(long, env = "TOKEN_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// The wait after an account's first email before it may get another. Each further
    /// email in 24 hours doubles it, up to RESET_COOLDOWN_MAX.
    #[arg(long, env = "RESET_COOLDOWN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub cooldown: Duration,

    /// The longest the cooldown grows to. It is also the longest anyone else's requests can
    /// keep the account's owner from a new email, and it bounds the emails one address gets
    /// (with the defaults, at most 30 in 24 hours).
    #[arg(long, env = "RESET_COOLDOWN_MAX", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_cooldown: Duration,

    /// The page the email links to; `token=<token>` is added to its query.
    #[arg(
        long,
        env = "RESET_URL",
        default_value = "http://localhost:8080/reset-password"
    )]
    pub reset_url: url::Url,

    /// The api's page the mails' report links open ("I did not ask for this", "This wasn't
    /// me"); `r=<secret>` is added to its query. Unset: RESET_URL's path with `/report`
    /// added, which is right when RESET_URL is the api's own page; set it to the api's
    /// `/reset-password/report` when RESET_URL is the product's page.
    #[arg(long, env = "REPORT_URL")]
    pub report_url: Option<url::Url>,
}

/// Rendering and sending.
#[derive(Debug, Clone, clap::Args)]
pub struct MailSettings {
    /// Folder of handlebars templates: `<locale>/<email kind>/{subject,text,html}.hbs`.
    #[arg(long, env = "TEMPLATES_DIR", default_value = "templates")]
    pub templates_dir: PathBuf,

    /// Product name shown in the emails.
    #[arg(long, env = "APP_NAME", default_value = "Example")]
    pub app_name: String,

    /// Address people can write to when a reset was not them.
    #[arg(long, env = "SUPPORT_EMAIL", default_value = "support@example.com")]
    pub support_email: String,

    /// Sender of the emails, e.g. `Example <no-reply@example.com>`.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Example <no-reply@example.com>"
    )]
    pub mail_from: String,

    /// SMTP server: `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS),
    /// `smtps://host:port` (implicit TLS); credentials as `smtp://user:pass@host`. Unset: mail
    /// is written to MAIL_OUTBOX instead.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Extra CA certificate (PEM) to trust for SMTP TLS, e.g. a private relay's.
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// SMTP connections opened as the worker starts, kept open and used at once. At the default concurrency, 16 send as
    /// many mails per second as 64 on the benchmark machine and stay under common relays'
    /// per-client connection limits (Postfix's 50, for one).
    #[arg(long, env = "SMTP_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub smtp_pool_size: u16,

    /// Longest an SMTP connection set-up may take, and the least time a send is given (the
    /// answer to a message already out is waited for until the claim's lease nearly ends).
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub smtp_timeout: Duration,

    /// Folder that receives each email as an `.eml` file when SMTP_URL is unset.
    #[arg(long, env = "MAIL_OUTBOX", default_value = "outbox")]
    pub outbox: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_allows_seven_attempts() {
        let backoff = parse_backoff("2s,10s,30s,2m,10m,30m").expect("backoff");
        assert_eq!(backoff.max_attempts(), 7);
        assert_eq!(backoff.after(1), Some(Duration::from_secs(2)));
        assert_eq!(backoff.after(6), Some(Duration::from_secs(1800)));
        assert_eq!(backoff.after(7), None);
        assert_eq!(backoff.after(0), None);
    }

    #[test]
    fn bad_backoffs_are_refused() {
        assert!(parse_backoff("2s,soon").is_err());
        assert!(parse_backoff("0s").is_err());
        assert_eq!(parse_backoff("").expect("no retries").max_attempts(), 1);
    }
}
