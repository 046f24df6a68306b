//! The `ResetRequested` event: the contract between the api and the worker.
//!
//! One event is published, as JSON, to `{prefix}.requested` for every request the api accepts:
//!
//! ```json
//! {
//!   "version": 1,
//!   "event_id": "0193a5c2-7d4e-7a01-9f3b-2c8e4d1a6b70",
//!   "id": "ada@example.com",
//!   "requested_at": "2026-11-27T20:01:02.123456Z",
//!   "request_id": "0193a5c2-7d4e-7a01-9f3b-2c8e4d1a6b6f",
//!   "client": { "ip": "203.0.113.7", "user_agent": "curl/8.5.0", "api_key_label": "web" }
//! }
//! ```
//!
//! - `version` is always present. A change that is not purely additive gets a new version;
//!   a consumer refuses versions it does not know ([`DecodeError::UnsupportedVersion`]).
//! - `event_id` is a UUIDv7, so it sorts by time; it is the key of the worker's processing record.
//! - `id` is the account id or email as submitted, trimmed (see [`crate::account::AccountRef`]).
//! - `client.api_key_label` names the API key the request used, never the key itself.
//!   `ip` and `user_agent` may be `null`.
//!
//! The event carries no secret: it stays in the stream for replay and debugging.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::account::AccountRef;

/// The version this code writes and the only one it reads.
pub const EVENT_VERSION: u32 = 1;

/// Header naming the event type, so tools can tell events apart without decoding them.
pub const HEADER_EVENT_TYPE: &str = "Event-Type";
/// Header carrying the event version.
pub const HEADER_EVENT_VERSION: &str = "Event-Version";
/// Header carrying the request id, to follow one request from the api to the worker.
pub const HEADER_REQUEST_ID: &str = "Request-Id";
/// Value of [`HEADER_EVENT_TYPE`] for [`ResetRequested`].
pub const RESET_REQUESTED: &str = "ResetRequested";
/// Value of [`HEADER_EVENT_TYPE`] for [`PasswordChanged`].
pub const PASSWORD_CHANGED: &str = "PasswordChanged";
/// Value of [`HEADER_EVENT_TYPE`] for [`Reported`].
pub const REPORTED: &str = "Reported";

/// A client asked for a password-reset email for the account `id` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRequested {
    pub version: u32,
    pub event_id: Uuid,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub request_id: String,
    pub client: ClientContext,
}

/// Who sent the request, for the email ("was this you?") and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientContext {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub api_key_label: String,
}

/// Why bytes from the stream are not a usable event. Either way the message is poison:
/// retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event is not valid JSON for ResetRequested: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("event version {0} is not supported (this build reads version {EVENT_VERSION})")]
    UnsupportedVersion(u64),
}

impl ResetRequested {
    /// A new event, stamped now, with a fresh time-ordered `event_id`.
    pub fn new(account: AccountRef, request_id: String, client: ClientContext) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: Uuid::now_v7(),
            id: account.into_string(),
            requested_at: OffsetDateTime::now_utc(),
            request_id,
            client,
        }
    }

    /// The event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Reads an event, checking its version before anything else so that a future version is
    /// reported as such rather than as a malformed payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(bytes)
    }
}

/// An account's password was changed through a completed reset. Published by the api to
/// `{prefix}.changed`; the worker mails the owner "your password was changed".
///
/// ```json
/// {
///   "version": 1,
///   "event_id": "0193a5c2-9a10-7c55-8e3b-5f0d2b4c8a11",
///   "account_id": "u-42",
///   "changed_at": "2026-11-27T20:05:00.5Z",
///   "request_id": "0193a5c2-9a10-7c55-8e3b-5f0d2b4c8a10",
///   "client": { "ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "api_key_label": "web" }
/// }
/// ```
///
/// It names the account by id and carries no password, hash or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub version: u32,
    pub event_id: Uuid,
    pub account_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
    pub request_id: String,
    pub client: ClientContext,
}

impl PasswordChanged {
    pub fn new(account_id: String, request_id: String, client: ClientContext) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: Uuid::now_v7(),
            account_id,
            changed_at: OffsetDateTime::now_utc(),
            request_id,
            client,
        }
    }

    /// The event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(bytes)
    }
}

/// The mailbox's owner reported a mail from its link: a reset mail they did not ask for
/// (`"kind": "reset"`), or a password change that was not theirs (`"kind": "change"`).
/// Published by the api (through its outbox) to `{prefix}.reported`; the worker turns it into
/// the `reset.reported` or `change.reported` webhook.
///
/// ```json
/// {
///   "version": 1,
///   "event_id": "0193a5c2-b210-7c55-8e3b-5f0d2b4c8a12",
///   "kind": "reset",
///   "account_id": "u-42",
///   "mail_event_id": "0193a5c2-7d4e-7a01-9f3b-2c8e4d1a6b70",
///   "reported_at": "2026-11-27T20:07:00.5Z",
///   "request_id": "0193a5c2-b210-7c55-8e3b-5f0d2b4c8a13",
///   "client": { "ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "api_key_label": "page" }
/// }
/// ```
///
/// `mail_event_id` is the event of the mail reported. No token, code or password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub version: u32,
    pub event_id: Uuid,
    pub kind: ReportKind,
    pub account_id: String,
    pub mail_event_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub reported_at: OffsetDateTime,
    pub request_id: String,
    pub client: ClientContext,
}

/// What a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// A reset mail the owner did not ask for.
    Reset,
    /// A password change that was not the owner's.
    Change,
}

impl ReportKind {
    /// As the database records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Change => "change",
        }
    }
}

impl Reported {
    pub fn new(
        kind: ReportKind,
        account_id: String,
        mail_event_id: Uuid,
        request_id: String,
        client: ClientContext,
    ) -> Self {
        Self {
            version: EVENT_VERSION,
            event_id: Uuid::now_v7(),
            kind,
            account_id,
            mail_event_id,
            reported_at: OffsetDateTime::now_utc(),
            request_id,
            client,
        }
    }

    /// The event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned(bytes)
    }
}

/// serde_json fails only on maps with keys that are not strings, or on a `Serialize` that
/// errors; the events have neither. Should that ever change, a loud failure (a 500 in the
/// api) beats publishing an empty event.
fn to_json<T: Serialize>(event: &T) -> Vec<u8> {
    serde_json::to_vec(event).expect("an event without maps or custom Serialize serialises")
}

fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        version: u64,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    if probe.version != u64::from(EVENT_VERSION) {
        return Err(DecodeError::UnsupportedVersion(probe.version));
    }
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> ResetRequested {
        ResetRequested {
            version: 1,
            event_id: Uuid::parse_str("0193a5c2-7d4e-7a01-9f3b-2c8e4d1a6b70").expect("uuid"),
            id: "ada@example.com".into(),
            requested_at: time::macros::datetime!(2026-11-27 20:01:02.5 UTC),
            request_id: "req-1".into(),
            client: ClientContext {
                ip: Some("203.0.113.7".parse().expect("ip")),
                user_agent: Some("curl/8.5.0".into()),
                api_key_label: "web".into(),
            },
        }
    }

    /// The field names are a public interface: this pins them.
    #[test]
    fn json_field_names_are_pinned() {
        let value: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        assert_eq!(
            value,
            json!({
                "version": 1,
                "event_id": "0193a5c2-7d4e-7a01-9f3b-2c8e4d1a6b70",
                "id": "ada@example.com",
                "requested_at": "2026-11-27T20:01:02.5Z",
                "request_id": "req-1",
                "client": {"ip": "203.0.113.7", "user_agent": "curl/8.5.0", "api_key_label": "web"}
            })
        );
    }

    #[test]
    fn password_changed_field_names_are_pinned_and_round_trip() {
        let event = PasswordChanged {
            version: 1,
            event_id: Uuid::parse_str("0193a5c2-9a10-7c55-8e3b-5f0d2b4c8a11").expect("uuid"),
            account_id: "u-42".into(),
            changed_at: time::macros::datetime!(2026-11-27 20:05:00.5 UTC),
            request_id: "req-2".into(),
            client: sample().client,
        };
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("json");
        assert_eq!(
            value,
            json!({
                "version": 1,
                "event_id": "0193a5c2-9a10-7c55-8e3b-5f0d2b4c8a11",
                "account_id": "u-42",
                "changed_at": "2026-11-27T20:05:00.5Z",
                "request_id": "req-2",
                "client": {"ip": "203.0.113.7", "user_agent": "curl/8.5.0", "api_key_label": "web"}
            })
        );
        assert_eq!(
            PasswordChanged::decode(&event.to_json()).expect("decode"),
            event
        );
    }

    fn timestamps() -> impl Strategy<Value = OffsetDateTime> {
        // Years 0000 to 9999, and fractions with every number of trailing zeros.
        let seconds = -62_167_219_200i64..253_402_300_800;
        let nanos = (0u32..1_000_000_000, 0u32..=9)
            .prop_map(|(n, zeros)| n / 10u32.pow(zeros) * 10u32.pow(zeros));
        (seconds, nanos).prop_map(|(s, n)| {
            OffsetDateTime::from_unix_timestamp(s).expect("in range")
                + time::Duration::nanoseconds(i64::from(n))
        })
    }

    fn events() -> impl Strategy<Value = ResetRequested> {
        let text = prop_oneof![".*", "[\\x00-\\x7f]*", "[a-z@.\\\\\"]*"];
        let ip = prop_oneof![
            Just(None),
            any::<std::net::Ipv4Addr>().prop_map(|ip| Some(IpAddr::V4(ip))),
            any::<std::net::Ipv6Addr>().prop_map(|ip| Some(IpAddr::V6(ip))),
        ];
        (
            any::<u128>(),
            text.clone(),
            timestamps(),
            text.clone(),
            ip,
            proptest::option::of(text.clone()),
            text,
        )
            .prop_map(
                |(uuid, id, requested_at, request_id, ip, user_agent, api_key_label)| {
                    ResetRequested {
                        version: EVENT_VERSION,
                        event_id: Uuid::from_u128(uuid),
                        id,
                        requested_at,
                        request_id,
                        client: ClientContext {
                            ip,
                            user_agent,
                            api_key_label,
                        },
                    }
                },
            )
    }

    proptest! {
        /// Every event reads back as it was written: any text, any address, any time.
        #[test]
        fn events_round_trip_through_json(event in events()) {
            prop_assert_eq!(ResetRequested::decode(&event.to_json()).expect("decode"), event);
        }
    }

    #[test]
    fn control_characters_and_quotes_are_escaped() {
        let mut event = sample();
        event.id = "a\"b\\c\n\u{0}".into();
        let text = String::from_utf8(event.to_json()).expect("utf-8");
        assert!(text.contains(r#""id":"a\"b\\c\n\u0000""#), "{text}");
    }

    #[test]
    fn unknown_versions_are_refused_as_such() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&sample().to_json()).expect("json");
        value["version"] = json!(2);
        let bytes = serde_json::to_vec(&value).expect("json");
        assert!(matches!(
            ResetRequested::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            ResetRequested::decode(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            ResetRequested::decode(br#"{"version":1}"#),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn new_events_are_version_1_and_time_ordered() {
        let client = sample().client;
        let a = ResetRequested::new(
            AccountRef::parse("a").expect("id"),
            "r".into(),
            client.clone(),
        );
        let b = ResetRequested::new(AccountRef::parse("b").expect("id"), "r".into(), client);
        assert_eq!(a.version, EVENT_VERSION);
        assert_eq!(a.event_id.get_version_num(), 7);
        assert!(a.event_id < b.event_id);
    }
}
