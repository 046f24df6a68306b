//! Where emails go: an SMTP server through our own connection pool, or an outbox folder.
//!
//! The pool opens its sockets itself rather than using lettre's pooled transport: lettre
//! 0.11.23 never sets TCP_NODELAY, and because it writes the body and the final `.`
//! separately, every message then waits for the server's delayed ACK (measured: about 89
//! mails/s per connection; `docs/decisions/smtp-pool-nodelay.md`). Everything said over the
//! socket is lettre's own `AsyncSmtpConnection`.
//!
//! Failures are sorted by where they happen. Connection set-up (TCP, TLS, greeting, EHLO,
//! STARTTLS, AUTH) failing is [`SendError::Connection`]: the server or our settings are at
//! fault, so the mail waits and is never dead-lettered, `/readyz` says so, and the pool tries
//! again after a growing wait. A 5xx answer to MAIL FROM, RCPT TO or DATA is permanent for that
//! message; a 4xx, a timeout or a dropped connection is worth another attempt.

mod outbox;
mod pool;
mod target;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::Message;

pub use outbox::Outbox;
pub use pool::{ConnectError, ConnectStage, SmtpHealth, SmtpPool, StageLabels};
pub use target::{Security, SmtpTarget};

use crate::config::MailSettings;

/// When a hand-over may begin and until when its answer is waited for.
///
/// Once the message is out, the server's last answer is what tells a mail taken from one
/// that may be lost; giving up on it early and trying again is what sends a mail twice. So
/// the wait for it is not cut at SMTP_TIMEOUT but runs to `answered_by`: the end of what the
/// delivery's claim allows (RFC 5321 gives this answer ten minutes for the same reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The latest moment the hand-over may begin.
    pub start_by: Instant,
    /// Until when the server's answer is waited for, never less than SMTP_TIMEOUT from the
    /// moment the hand-over begins.
    pub answered_by: Instant,
}

/// Why a message was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No SMTP session could be opened: retried for as long as the event may be mailed, and
    /// never a reason to give up on the message.
    #[error(transparent)]
    Connection(ConnectError),
    /// Worth retrying: a 4xx answer to this message, a timeout, a dropped connection.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying: a 5xx answer to MAIL FROM, RCPT TO or DATA for this message.
    #[error("{0}")]
    Permanent(String),
    /// Not started: the delivery's claim would run out before the mail could be handed over
    /// and recorded (a long wait for a free connection). Nothing was said to the server.
    #[error("the claim's lease would run out before the mail is handed over")]
    TooLate,
    /// Not started: the worker is stopping, and the mail was still waiting for a connection.
    /// Nothing was said to the server; another worker takes the event at once.
    #[error("the worker is stopping; handed back before the mail was handed over")]
    Stopping,
}

impl SendError {
    /// The `result` label of `worker_send_duration_seconds`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connection(_) => "connection",
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
            Self::TooLate => "too_late",
            Self::Stopping => "stopping",
        }
    }
}

/// Why the mail settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TransportSettingsError {
    #[error("SMTP_URL is not a URL like smtp://host:25: {0}")]
    Url(#[from] url::ParseError),
    #[error("SMTP_URL scheme must be smtp or smtps, not `{0}`")]
    Scheme(String),
    #[error("SMTP_URL has no host")]
    NoHost,
    #[error(
        "SMTP_URL carries credentials without TLS: use smtps:// or ?tls=required, so the \
         password never crosses the network in the clear"
    )]
    PlainCredentials,
    #[error("SMTP_URL `tls` must be `none`, `required` or `opportunistic`, not `{0}`")]
    TlsMode(String),
    #[error("SMTP_CA_FILE {0}: {1}")]
    CaFile(PathBuf, target::TlsError),
    #[error("SMTP_CA_FILE {0}: {1}")]
    CaFileUnread(PathBuf, io::Error),
    #[error("MAIL_OUTBOX {0} cannot be created: {1}")]
    Outbox(PathBuf, io::Error),
}

/// The configured way out.
#[derive(Debug)]
pub enum Mailer {
    Smtp(Box<SmtpPool>),
    Outbox(Outbox),
}

impl Mailer {
    pub fn from_settings(settings: &MailSettings) -> Result<Self, TransportSettingsError> {
        match &settings.smtp_url {
            Some(url) => Ok(Self::Smtp(Box::new(SmtpPool::new(
                SmtpTarget::parse(url, settings.smtp_ca_file.as_deref())?,
                usize::from(settings.smtp_pool_size),
                settings.smtp_timeout,
            )))),
            None => {
                std::fs::create_dir_all(&settings.outbox)
                    .map_err(|e| TransportSettingsError::Outbox(settings.outbox.clone(), e))?;
                Ok(Self::Outbox(Outbox {
                    dir: settings.outbox.clone(),
                }))
            }
        }
    }

    /// Hands `message` over within `window`, unless none can begin by its `start_by` (then
    /// [`SendError::TooLate`]), or the worker begins to stop ([`Mailer::begin_stop`]) while it
    /// still waits for a connection: a hand-over once begun is always finished. `name`
    /// identifies it in the outbox.
    pub async fn send(
        &self,
        message: &Message,
        name: &str,
        window: Window,
    ) -> Result<(), SendError> {
        match self {
            Self::Smtp(pool) => pool.send(message, window).await,
            Self::Outbox(_) if Instant::now() > window.start_by => Err(SendError::TooLate),
            Self::Outbox(outbox) => outbox.write(message, name).await,
        }
    }

    /// From now on, sends still waiting for a connection give up with
    /// [`SendError::Stopping`], so that a stop waits only for hand-overs under way.
    pub fn begin_stop(&self) {
        if let Self::Smtp(pool) = self {
            pool.begin_stop();
        }
    }

    /// The least time a hand-over is given once begun: SMTP_TIMEOUT for SMTP.
    pub fn longest_send(&self) -> Duration {
        match self {
            Self::Smtp(pool) => pool.timeout(),
            Self::Outbox(_) => Duration::from_secs(1),
        }
    }

    /// Where mail goes, for the start-up log line (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Smtp(pool) => format!(
                "smtp {}:{} ({:?})",
                pool.target.host, pool.target.port, pool.target.security
            ),
            Self::Outbox(outbox) => format!("outbox {}", outbox.dir.display()),
        }
    }

    /// Whether the SMTP server takes connections; `None` for the outbox.
    pub fn health(&self) -> Option<Arc<SmtpHealth>> {
        match self {
            Self::Smtp(pool) => Some(pool.health.clone()),
            Self::Outbox(_) => None,
        }
    }

    /// Opens the SMTP connections before the first mail needs them (see [`SmtpPool::warm`]).
    pub async fn warm(&self) {
        if let Self::Smtp(pool) = self {
            pool.warm().await;
        }
    }

    /// Says QUIT on idle SMTP connections.
    pub async fn close(&self) {
        if let Self::Smtp(pool) = self {
            pool.close().await;
        }
    }
}
