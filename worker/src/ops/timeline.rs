//! One request's way through the funnel, for `worker replay`: accepted, mailed, its link first
//! opened, completed, or reported. The answer to "why did this person not get in?": where the
//! timeline stops is where to look.

use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// When each stage was reached, if it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Timeline {
    pub mailed: Option<OffsetDateTime>,
    pub opened: Option<OffsetDateTime>,
    pub completed: Option<OffsetDateTime>,
    pub reported: Option<OffsetDateTime>,
}

impl Timeline {
    /// The stages of the request whose event is `event_id`, from its processing record, its
    /// token and its report.
    pub async fn of(pool: &PgPool, event_id: Uuid) -> Result<Self, sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT sent_at FROM reset_requests WHERE event_id = $1) AS mailed,
                    (SELECT min(opened_at) FROM reset_tokens WHERE event_id = $1) AS opened,
                    (SELECT max(used_at) FROM reset_tokens WHERE event_id = $1) AS completed,
                    (SELECT reported_at FROM reset_reports WHERE mail_event_id = $1) AS reported",
        )
        .bind(event_id)
        .fetch_one(pool)
        .await
    }

    fn stages(&self, accepted: OffsetDateTime) -> [(&'static str, Option<OffsetDateTime>); 5] {
        [
            ("accepted", Some(accepted)),
            ("mailed", self.mailed),
            ("opened", self.opened),
            ("completed", self.completed),
            ("reported", self.reported),
        ]
    }

    /// `{"accepted": …, "mailed": …, …}`, `null` for a stage not reached.
    pub fn as_json(&self, accepted: OffsetDateTime) -> Value {
        let mut out = json!({});
        for (stage, at) in self.stages(accepted) {
            out[stage] = json!(at.map(rfc3339));
        }
        out
    }

    /// `accepted 2026-…Z, mailed …, opened -, …`.
    pub fn as_text(&self, accepted: OffsetDateTime) -> String {
        self.stages(accepted)
            .iter()
            .map(|(stage, at)| format!("{stage} {}", at.map_or("-".to_owned(), rfc3339)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}
