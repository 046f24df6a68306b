//! What happens to one event, knowing nothing of JetStream: the consume loop owns acks,
//! retries and dead letters; this decides and does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

use shared::event::{PasswordChanged, ResetRequested};

use crate::mail::templates::Templates;
use crate::mail::{ComposeError, Composer};
use shared::metrics::ResultLabels;

use crate::status::Status;
use crate::store::{
    BatchError, Claim, Delivery, EventMeta, Limits, Mode, Outcome, Resolution, Store,
};
use crate::tokens::{MintError, Token};
use crate::transport::{Mailer, SendError, Window};

/// What handling needs.
#[derive(Debug)]
pub struct Deps {
    pub store: Store,
    pub templates: Templates,
    pub composer: Composer,
    pub mailer: Mailer,
    pub limits: Limits,
    pub status: Arc<Status>,
}

/// How an event ended when handling succeeded. Every one of these is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Sent,
    NoAccount,
    Throttled,
    /// Another delivery of this event already reached this outcome: nothing was done.
    AlreadyDone(Outcome),
}

impl Handled {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::NoAccount => "no_account",
            Self::Throttled => "throttled",
            Self::AlreadyDone(_) => "already_done",
        }
    }
}

/// Why handling failed, sorted by whether another attempt can help.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("SMTP: {0}")]
    Send(#[from] SendError),
    #[error("composing the email: {0}")]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error("claiming the event: {0}")]
    Claim(BatchError),
    #[error("recording the sent email: {0}")]
    Record(BatchError),
    /// Another delivery of the event holds its claim for this long yet: it may be sending the
    /// mail right now, so this one must not.
    #[error("another delivery of this event holds its claim for {0:?} more")]
    Busy(Duration),
}

impl HandleError {
    /// A permanent failure goes straight to the dead letters.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Send(SendError::Permanent(_)) | Self::Compose(_))
    }

    /// The SMTP server could not be reached or refused the session: not this event's fault,
    /// so running out of retries never ends it (see the consume loop).
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Send(SendError::Connection(_)))
    }
}

/// What a delivery keeps of its claim's lease once the mail is handed over: time for the
/// sent record to be written before another delivery could take the claim over.
const RECORD_MARGIN: Duration = Duration::from_secs(5);

/// Handles `delivery` of `event`. In [`Mode::Again`] an earlier failure or skip is decided
/// anew; a sent event is never mailed twice, and never by two deliveries at once.
pub async fn handle(
    event: &ResetRequested,
    delivery: Delivery,
    mode: Mode,
    deps: &Deps,
) -> Result<Handled, HandleError> {
    // No separate "was it handled before?" query: the claim answers that under its lock,
    // and a redelivered unknown-account event is recorded again, harmlessly. The token is
    // minted before the lookup so that lookup and claim are one statement; for an unknown
    // account it is simply dropped.
    let token = Token::mint()?;
    // Taken before the claim is asked for, so the lease counted from here ends no later than
    // the one the database counts.
    let claimed = Instant::now();
    crate::waiting::now("PostgreSQL (the claim)");
    let resolution = deps
        .store
        .find_and_claim(event, delivery, &token.hash(), deps.limits, mode)
        .await
        .map_err(HandleError::Claim)?;
    let note = match resolution {
        Resolution::Claimed(account, Claim::Proceed) => {
            let message =
                deps.composer
                    .reset_email(&deps.templates, event, &account, token.plaintext())?;
            drop(token);
            let handled = deliver(deps, &message, event.event_id, claimed).await?;
            deps.status.metrics.funnel.reached("mailed");
            return Ok(handled);
        }
        Resolution::Claimed(_, Claim::Throttled) => return Ok(Handled::Throttled),
        Resolution::Claimed(_, Claim::AlreadyDone(done)) => return Ok(Handled::AlreadyDone(done)),
        Resolution::Claimed(_, Claim::Busy(left)) => return Err(HandleError::Busy(left)),
        Resolution::NotFound => None,
        Resolution::Ambiguous(count) => {
            let note = format!("{count} accounts share this email and none has it as id");
            tracing::warn!("{note}: no email sent");
            Some(note)
        }
    };
    deps.store
        .record_outcome(
            &event.into(),
            delivery.attempt,
            None,
            Outcome::NoAccount,
            note.as_deref(),
        )
        .await?;
    Ok(Handled::NoAccount)
}

/// Handles delivery `attempt` of a `PasswordChanged` event: mails the owner. Not throttled:
/// a security notice always goes out, once per event.
pub async fn handle_changed(
    event: &PasswordChanged,
    delivery: Delivery,
    mode: Mode,
    deps: &Deps,
) -> Result<Handled, HandleError> {
    if let Some(done) = deps.store.standing_outcome(event.event_id, mode).await? {
        return Ok(Handled::AlreadyDone(done));
    }
    let meta = EventMeta::from(event);
    let Some(account) = deps.store.account_by_id(&event.account_id).await? else {
        deps.store
            .record_outcome(&meta, delivery.attempt, None, Outcome::NoAccount, None)
            .await?;
        return Ok(Handled::NoAccount);
    };
    let claimed = Instant::now();
    crate::waiting::now("PostgreSQL (the claim)");
    let claim = deps
        .store
        .claim_notification(&meta, delivery, &account.id, deps.limits.lease, mode)
        .await?;
    match claim {
        Claim::Proceed => {}
        Claim::AlreadyDone(done) => return Ok(Handled::AlreadyDone(done)),
        Claim::Busy(left) => return Err(HandleError::Busy(left)),
        Claim::Throttled => return Ok(Handled::Throttled),
    }
    let message = deps
        .composer
        .changed_email(&deps.templates, event, &account)?;
    deliver(deps, &message, event.event_id, claimed).await
}

/// Hands the message over and records it as sent, all within the lease of the claim made at
/// `claimed`: the hand-over begins only while it can end (SMTP_TIMEOUT) with
/// [`RECORD_MARGIN`] of the lease left for the record, and the server's answer is waited for
/// until then, however slow it is, so that a mail it took is not sent again. No other
/// delivery can take the claim over from a live one and mail again.
async fn deliver(
    deps: &Deps,
    message: &lettre::Message,
    event_id: uuid::Uuid,
    claimed: Instant,
) -> Result<Handled, HandleError> {
    let answered_by = claimed + deps.limits.lease.saturating_sub(RECORD_MARGIN);
    let window = Window {
        start_by: answered_by
            .checked_sub(deps.mailer.longest_send())
            .unwrap_or(claimed),
        answered_by,
    };
    let started = Instant::now();
    crate::waiting::now("an SMTP connection");
    let sent = deps
        .mailer
        .send(message, &event_id.to_string(), window)
        .await;
    let result = match &sent {
        Ok(()) => "ok",
        Err(err) => err.as_str(),
    };
    deps.status
        .metrics
        .send
        .get_or_create(&ResultLabels { result })
        .observe(started.elapsed().as_secs_f64());
    sent?;

    // The email is out: recording it must not fail lightly, or a redelivery would send it
    // again. A few quick retries (50 ms doubling, about 1.5 s in all) cover a database blip.
    crate::waiting::now("PostgreSQL (the sent record)");
    (|| deps.store.mark_sent(event_id))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(5),
        )
        .notify(|err, _| tracing::warn!(error = %err, "recording a sent email failed; retrying"))
        .await
        .map_err(HandleError::Record)?;
    Ok(Handled::Sent)
}
