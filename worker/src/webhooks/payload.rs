//! What a webhook says: its type, its id and its body, made from the event that caused it, so
//! every attempt (and an operator's retry) sends the same id and body.

use serde_json::json;
use shared::event::{
    DecodeError, PASSWORD_CHANGED, PasswordChanged, REPORTED, ReportKind, Reported,
};
use time::format_description::well_known::Rfc3339;

/// The webhook types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// A password was changed through a reset: the cue to end the account's other sessions.
    PasswordChanged,
    /// The owner did not ask for a reset mail.
    ResetReported,
    /// The owner says a password change was not theirs: the cue to lock the account.
    ChangeReported,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordChanged => "password.changed",
            Self::ResetReported => "reset.reported",
            Self::ChangeReported => "change.reported",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::PasswordChanged,
            Self::ResetReported,
            Self::ChangeReported,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// Why an event makes no webhook.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not an event a webhook is made of: `{0}`")]
    UnknownType(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One webhook, as every attempt sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub kind: WebhookKind,
    /// `webhook-id`: `msg_` and the event's id.
    pub id: String,
    /// `{"type", "timestamp", "data"}`.
    pub body: Vec<u8>,
}

impl Webhook {
    /// The webhook an event of `event_type` (its `Event-Type` header) makes.
    pub fn from_event(event_type: &str, payload: &[u8]) -> Result<Self, PayloadError> {
        match event_type {
            PASSWORD_CHANGED => {
                let event = PasswordChanged::decode(payload)?;
                let at = rfc3339(event.changed_at);
                let data = json!({
                    "account_id": event.account_id,
                    "request_id": event.request_id,
                    "changed_at": at,
                });
                Ok(Self::new(
                    WebhookKind::PasswordChanged,
                    event.event_id,
                    &at,
                    data,
                ))
            }
            REPORTED => {
                let event = Reported::decode(payload)?;
                let kind = match event.kind {
                    ReportKind::Reset => WebhookKind::ResetReported,
                    ReportKind::Change => WebhookKind::ChangeReported,
                };
                let at = rfc3339(event.reported_at);
                let data = json!({
                    "account_id": event.account_id,
                    "request_id": event.request_id,
                    "reported_at": at,
                    "mail_event_id": event.mail_event_id,
                });
                Ok(Self::new(kind, event.event_id, &at, data))
            }
            other => Err(PayloadError::UnknownType(other.to_owned())),
        }
    }

    fn new(kind: WebhookKind, event_id: uuid::Uuid, at: &str, data: serde_json::Value) -> Self {
        let body = json!({ "type": kind.as_str(), "timestamp": at, "data": data });
        Self {
            kind,
            id: format!("msg_{event_id}"),
            body: body.to_string().into_bytes(),
        }
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::ClientContext;

    fn client() -> ClientContext {
        ClientContext {
            ip: None,
            user_agent: None,
            api_key_label: "page".into(),
        }
    }

    #[test]
    fn a_report_makes_its_webhook_with_the_events_id_and_no_secret() {
        let event = Reported::new(
            ReportKind::Change,
            "u-42".into(),
            uuid::Uuid::now_v7(),
            "req-1".into(),
            client(),
        );
        let hook = Webhook::from_event(REPORTED, &event.to_json()).expect("webhook");
        assert_eq!(hook.kind, WebhookKind::ChangeReported);
        assert_eq!(hook.id, format!("msg_{}", event.event_id));
        let body: serde_json::Value = serde_json::from_slice(&hook.body).expect("json");
        assert_eq!(body["type"], "change.reported");
        assert_eq!(body["data"]["account_id"], "u-42");
        assert_eq!(body["data"]["request_id"], "req-1");
        assert_eq!(
            body["data"]["mail_event_id"],
            event.mail_event_id.to_string()
        );
        assert_eq!(body["data"].as_object().map(|d| d.len()), Some(4));
        // The same event, the same webhook: every attempt sends these bytes.
        assert_eq!(
            Webhook::from_event(REPORTED, &event.to_json()).expect("again"),
            hook
        );
    }

    #[test]
    fn a_password_change_makes_password_changed_and_other_events_none() {
        let event = PasswordChanged::new("u-7".into(), "req-2".into(), client());
        let hook = Webhook::from_event(PASSWORD_CHANGED, &event.to_json()).expect("webhook");
        let body: serde_json::Value = serde_json::from_slice(&hook.body).expect("json");
        assert_eq!(body["type"], "password.changed");
        assert_eq!(body["data"]["account_id"], "u-7");
        assert!(matches!(
            Webhook::from_event("ResetRequested", b"{}"),
            Err(PayloadError::UnknownType(_))
        ));
    }
}
