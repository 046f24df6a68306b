//! The report links in the mails: "I did not ask for this" in a reset mail, "This wasn't me"
//! in a password-changed mail.
//!
//! A report link is a secret of its own: it can report its mail and nothing else, and knowing
//! it gives no way to reset the password. Like the code, it is not stored but derived with
//! `RESET_CODE_KEY` (HMAC-SHA256, a domain of its own) from what names its mail: the reset
//! token's stored hash, or the password-changed event's id. The api checks the MAC before it
//! asks the database anything, so a forged link costs no query. The hash is no secret: the
//! database alone holds the token it came from.
//!
//! Spelled `r.<hash>.<mac>` or `c.<event id>.<mac>`, base64url without padding, 16 bytes of
//! MAC (128 bits).

use data_encoding::BASE64URL_NOPAD;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::code::CodeKey;

const RESET_DOMAIN: &[u8] = b"reset-report/v1:";
const CHANGE_DOMAIN: &[u8] = b"change-report/v1:";
const MAC_BYTES: usize = 16;
/// Longer than any report link's secret: not decoded at all.
const MAX_LEN: usize = 128;

/// What a report link reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reportable {
    /// The reset mail whose token has this stored hash.
    Reset { token_hash: [u8; 32] },
    /// The password-changed mail of this `PasswordChanged` event.
    Change { event_id: Uuid },
}

impl Reportable {
    fn parts(&self) -> (&'static str, &'static [u8], Vec<u8>) {
        match self {
            Self::Reset { token_hash } => ("r", RESET_DOMAIN, token_hash.to_vec()),
            Self::Change { event_id } => ("c", CHANGE_DOMAIN, event_id.as_bytes().to_vec()),
        }
    }

    /// The secret the mail's report link carries.
    pub fn secret(&self, key: &CodeKey) -> String {
        let (tag, domain, subject) = self.parts();
        let mac = key.mac(domain, &subject);
        format!(
            "{tag}.{}.{}",
            BASE64URL_NOPAD.encode(&subject),
            BASE64URL_NOPAD.encode(&mac[..MAC_BYTES])
        )
    }

    /// What `secret` reports, if `key` made it.
    pub fn parse(secret: &str, key: &CodeKey) -> Option<Self> {
        if secret.len() > MAX_LEN {
            return None;
        }
        let mut parts = secret.trim().splitn(3, '.');
        let (tag, subject, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let subject = BASE64URL_NOPAD.decode(subject.as_bytes()).ok()?;
        let mac = BASE64URL_NOPAD.decode(mac.as_bytes()).ok()?;
        let reportable = match tag {
            "r" => Self::Reset {
                token_hash: subject.try_into().ok()?,
            },
            "c" => Self::Change {
                event_id: Uuid::from_slice(&subject).ok()?,
            },
            _ => return None,
        };
        let (_, domain, subject) = reportable.parts();
        let expected = key.mac(domain, &subject);
        let genuine = mac.len() == MAC_BYTES && bool::from(expected[..MAC_BYTES].ct_eq(&mac));
        genuine.then_some(reportable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CodeKey {
        "0123456789abcdef0123456789abcdef".parse().expect("key")
    }

    #[test]
    fn a_report_secret_reads_back_only_under_its_key_and_unchanged() {
        for reportable in [
            Reportable::Reset {
                token_hash: [7u8; 32],
            },
            Reportable::Change {
                event_id: Uuid::now_v7(),
            },
        ] {
            let secret = reportable.secret(&key());
            assert_eq!(Reportable::parse(&secret, &key()), Some(reportable));
            let other: CodeKey = "another key, also thirty-two characters"
                .parse()
                .expect("key");
            assert_eq!(Reportable::parse(&secret, &other), None, "keyed");
            // Every character changed in turn: none still reads.
            for at in 0..secret.len() {
                let mut bytes = secret.clone().into_bytes();
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                let changed = String::from_utf8(bytes).expect("ascii");
                if changed != secret {
                    assert_eq!(Reportable::parse(&changed, &key()), None, "{changed}");
                }
            }
        }
    }

    #[test]
    fn a_reset_and_a_change_never_share_a_secret() {
        let hash = [3u8; 32];
        let reset = Reportable::Reset { token_hash: hash }.secret(&key());
        let forged = reset.replacen('r', "c", 1);
        assert_eq!(Reportable::parse(&forged, &key()), None);
        assert_eq!(Reportable::parse("", &key()), None);
        assert_eq!(Reportable::parse(&"r.".repeat(100), &key()), None);
    }
}
