//! The worker's command line: run (the default), `replay` and `dead-letters`.

use std::str::FromStr;

use time::OffsetDateTime;

use crate::config::Settings;

#[derive(Debug, clap::Parser)]
#[command(
    name = "worker",
    version,
    about = "Password-reset worker: consumes ResetRequested events from NATS JetStream and sends the emails.",
    long_about = "Password-reset worker: consumes ResetRequested events from NATS JetStream and sends the emails.\n\nWithout a command it runs the worker. `replay` and `dead-letters` are operator tools that use the same settings."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    /// For `replay` and `dead-letters`: log at info on stderr, not only warnings (`RUST_LOG`
    /// overrides both). Their results alone go to stdout.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read past events from the stream and show what happened to each and what the worker
    /// would do now. Changes nothing unless --execute is given.
    Replay(ReplayArgs),
    /// Inspect and retry the events the worker gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Start at events published at or after this time: RFC 3339 (`2026-11-27T10:00:00Z`) or
    /// a duration ago (`2h`, `30m`).
    #[arg(long, conflicts_with = "from_seq")]
    pub since: Option<PointInTime>,
    /// Start at this stream sequence.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Stop at events published after this time (same forms as --since).
    #[arg(long)]
    pub until: Option<PointInTime>,
    /// Only events whose `id` is this account id or email (case-insensitive).
    #[arg(long)]
    pub id: Option<String>,
    /// Show at most this many events.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also print the subject and text the email would have now (with a placeholder token).
    #[arg(long)]
    pub render: bool,
    /// One JSON object per event instead of text.
    #[arg(long)]
    pub json: bool,
    /// Process the selected events again through the normal pipeline: new tokens, normal
    /// the growing cooldown, real emails. Needs a scope (--id, --since or --from-seq).
    /// Events already sent, or pending (a worker may be sending them), are never mailed
    /// again; throttled and no_account ones, and requests older than TOKEN_TTL, are shown
    /// and left unless --force.
    #[arg(long)]
    pub execute: bool,
    /// With --execute: go ahead when more than 10 events match.
    #[arg(long, requires = "execute")]
    pub yes: bool,
    /// With --execute: decide throttled and no_account events again, and mail requests older
    /// than TOKEN_TTL (the new link gets a full TOKEN_TTL).
    #[arg(long, requires = "execute")]
    pub force: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Every dead letter: stream sequence, reason, attempts, last error, age.
    List {
        /// One JSON object per dead letter.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: its headers and the event.
    Show {
        /// Stream sequence of the dead letter (from `list`).
        seq: u64,
    },
    /// Republish dead letters' events for normal processing, then remove the dead letters.
    Retry {
        /// Stream sequence of the dead letter (from `list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every dead letter but the `expired` ones (requests older than TOKEN_TTL).
        #[arg(long)]
        all: bool,
        /// With --all: `expired` letters too.
        #[arg(long, requires = "all")]
        force: bool,
        /// With --all: go ahead with more than ten letters (each becomes a mail).
        #[arg(long, requires = "all")]
        yes: bool,
    },
}

/// A moment given as RFC 3339 or as a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointInTime(pub OffsetDateTime);

/// Why a `--since` or `--until` is refused.
#[derive(Debug, thiserror::Error)]
pub enum PointInTimeError {
    #[error("`{0}` is neither an RFC 3339 time nor a duration like 2h")]
    Unreadable(String),
    #[error("`{0}` is too long ago")]
    TooLong(String),
}

impl FromStr for PointInTime {
    type Err = PointInTimeError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if let Ok(at) = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
            return Ok(Self(at));
        }
        let ago = humantime::parse_duration(raw)
            .map_err(|_| PointInTimeError::Unreadable(raw.to_owned()))?;
        let ago = time::Duration::try_from(ago)
            .ok()
            .and_then(|ago| OffsetDateTime::now_utc().checked_sub(ago))
            .ok_or_else(|| PointInTimeError::TooLong(raw.to_owned()))?;
        Ok(Self(ago))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_in_time_are_rfc3339_or_a_duration_ago() {
        let at: PointInTime = "2026-11-27T10:00:00Z".parse().expect("rfc3339");
        assert_eq!(at.0.hour(), 10);
        let ago: PointInTime = "2h".parse().expect("duration");
        let expected = OffsetDateTime::now_utc() - time::Duration::hours(2);
        assert!((ago.0 - expected).abs() < time::Duration::seconds(5));
        assert!("yesterday-ish".parse::<PointInTime>().is_err());
        assert!("100000000years".parse::<PointInTime>().is_err());
    }
}

/// Why a command (the worker itself, or an operator command) ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Worker(#[from] crate::WorkerError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
}
