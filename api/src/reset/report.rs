//! Reports from the mails' links: "I did not ask for this" (a reset mail) and "This wasn't me"
//! (a password change). A report kills the account's live links and codes, a reset report
//! also pauses its reset mails (RESET_REPORT_PAUSE), and the product hears of it through a
//! `Reported` event queued in the same transaction (`reset_report`). Each mail is reported
//! once: reporting it again changes nothing and tells nobody.

use shared::event::{ReportKind, Reported};
use shared::report::Reportable;
use uuid::Uuid;

use super::{Requester, ResetError, Resets};

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
        let (kind, hash, change_event) = match reportable {
            Reportable::Reset { token_hash } => (ReportKind::Reset, Some(token_hash), None),
            Reportable::Change { event_id } => (ReportKind::Change, None, Some(event_id)),
        };
        let target: Option<(String, Uuid, bool)> = match (hash, change_event) {
            (Some(hash), _) => {
                sqlx::query_as(
                    "SELECT account_id, mail_event_id, reported FROM reset_report_target($1)",
                )
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?
            }
            (None, event_id) => {
                sqlx::query_as(
                    "SELECT account_id, mail_event_id, reported
                       FROM reset_change_report_target($1)",
                )
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        let Some((account_id, mail_event_id, reported)) = target else {
            return Ok(ReportOutcome::Expired);
        };
        if reported {
            return Ok(ReportOutcome::Again(kind));
        }
        let event = Reported::new(
            kind,
            account_id,
            mail_event_id,
            requester.request_id,
            requester.client,
        );
        // The database finds the account again from the link's proof and checks that the
        // event names it: the api's role cannot report what no link of its holder reports.
        let outcome: String = sqlx::query_scalar("SELECT reset_report($1, $2, $3, $4, $5, $6)")
            .bind(hash.as_ref().map(|h| &h[..]))
            .bind(change_event)
            .bind(self.report_pause.as_secs_f64())
            .bind(event.event_id)
            .bind(self.subjects.reported())
            .bind(event.to_json())
            .fetch_one(&self.pool)
            .await?;
        Ok(match outcome.as_str() {
            "reported" => {
                self.funnel.reached(match kind {
                    ReportKind::Reset => "reset_reported",
                    ReportKind::Change => "change_reported",
                });
                ReportOutcome::Reported(event)
            }
            "again" => ReportOutcome::Again(kind),
            _ => ReportOutcome::Expired,
        })
    }
}
