//! Reports from the mails' links: "I did not ask for this" (a reset mail) and "This wasn't me"
//! (a password change). A report kills the account's live links and codes, a reset report
//! also pauses its reset mails (RESET_REPORT_PAUSE), and the product hears of it through a
//! `Reported` event queued in the same transaction (`reset_report`). Each mail is reported
//! once: reporting it again changes nothing and tells nobody.

use std::time::Duration;

use shared::event::{ReportKind, Reported};
use shared::report::Reportable;
use uuid::Uuid;

use super::{Requester, ResetError, Resets};

/// How long a password-changed mail's "This wasn't me" link works: a week, since such a mail
/// may be read days later, and it is the owner's one way to say so from the mail.
pub const CHANGE_REPORT_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a report ended.
#[derive(Debug)]
pub enum ReportOutcome {
    /// Recorded now; the event is queued for the product.
    Reported(Reported),
    /// This mail was reported before: nothing changed.
    Again(ReportKind),
    /// The link has expired, or names nothing.
    Expired,
}

impl Resets {
    /// Reports what `reportable` names, if its link still works.
    pub async fn report(
        &self,
        reportable: Reportable,
        requester: Requester,
    ) -> Result<ReportOutcome, ResetError> {
        let (kind, target) = match reportable {
            Reportable::Reset { token_hash } => (
                ReportKind::Reset,
                sqlx::query_as(
                    "SELECT account_id, mail_event_id, reported FROM reset_report_target($1)",
                )
                .bind(&token_hash[..])
                .fetch_optional(&self.pool)
                .await?,
            ),
            Reportable::Change { event_id } => (
                ReportKind::Change,
                sqlx::query_as(
                    "SELECT account_id, mail_event_id, reported
                       FROM reset_change_report_target($1, $2)",
                )
                .bind(event_id)
                .bind(CHANGE_REPORT_WITHIN.as_secs_f64())
                .fetch_optional(&self.pool)
                .await?,
            ),
        };
        let target: Option<(String, Uuid, bool)> = target;
        let Some((account_id, mail_event_id, reported)) = target else {
            return Ok(ReportOutcome::Expired);
        };
        if reported {
            return Ok(ReportOutcome::Again(kind));
        }
        let pause = match kind {
            ReportKind::Reset => self.report_pause,
            // The owner of a changed password may need a reset at once to get back in.
            ReportKind::Change => Duration::ZERO,
        };
        let event = Reported::new(
            kind,
            account_id,
            mail_event_id,
            requester.request_id,
            requester.client,
        );
        let recorded: bool = sqlx::query_scalar("SELECT reset_report($1, $2, $3, $4, $5, $6, $7)")
            .bind(mail_event_id)
            .bind(kind.as_str())
            .bind(&event.account_id)
            .bind(pause.as_secs_f64())
            .bind(event.event_id)
            .bind(self.subjects.reported())
            .bind(event.to_json())
            .fetch_one(&self.pool)
            .await?;
        Ok(if recorded {
            self.funnel.reached(match kind {
                ReportKind::Reset => "reset_reported",
                ReportKind::Change => "change_reported",
            });
            ReportOutcome::Reported(event)
        } else {
            ReportOutcome::Again(kind)
        })
    }
}
