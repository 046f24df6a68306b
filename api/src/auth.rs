//! Bearer API keys: who may ask for resets.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured keys, each with the label that names its client in logs and events.
///
/// Only SHA-256 digests are kept, and a presented key is compared with every one of them in
/// constant time: neither the position nor the length of a near miss shows in the timing.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(String, [u8; 32])>,
}

/// Why `API_KEYS` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeysError {
    #[error(
        "API_KEYS is empty: set it to comma-separated label:key pairs, e.g. API_KEYS=web:<a long random secret>"
    )]
    Empty,
    #[error("API_KEYS entry {0} is not of the form label:key")]
    Malformed(usize),
    #[error("API_KEYS entry {0}: the label takes letters, digits, `-`, `_` and `.` only")]
    BadLabel(usize),
    #[error("API_KEYS entry {0}: the key must be at least 16 characters with no white space")]
    WeakKey(usize),
    #[error("API_KEYS names the label `{0}` twice")]
    DuplicateLabel(String),
}

impl FromStr for ApiKeys {
    type Err = ApiKeysError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (n, entry) in raw
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let position = n + 1;
            let (label, key) = entry
                .split_once(':')
                .ok_or(ApiKeysError::Malformed(position))?;
            let label = label.trim();
            let label_ok = !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !label_ok {
                return Err(ApiKeysError::BadLabel(position));
            }
            if key.chars().count() < 16 || key.chars().any(char::is_whitespace) {
                return Err(ApiKeysError::WeakKey(position));
            }
            if keys.iter().any(|(l, _)| l == label) {
                return Err(ApiKeysError::DuplicateLabel(label.to_owned()));
            }
            keys.push((label.to_owned(), digest(key)));
        }
        if keys.is_empty() {
            return Err(ApiKeysError::Empty);
        }
        Ok(Self { keys })
    }
}

impl ApiKeys {
    /// The position and label of the key an `Authorization` header presents, if it is a
    /// configured one.
    pub fn authenticate(&self, authorization: Option<&http::HeaderValue>) -> Option<(usize, &str)> {
        let presented = bearer_token(authorization?)?;
        let presented = digest(presented);
        let mut found = None;
        // No early exit: every key is compared whatever the outcome.
        for (position, (label, key)) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some((position, label.as_str()));
            }
        }
        found
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(label, _)| label.as_str())
    }
}

// Debug shows labels only: settings are logged at start-up.
impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.labels()).finish()
    }
}

/// The credentials of a `Bearer` authorization (the scheme name is case-insensitive).
fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> ApiKeys {
        "web:0123456789abcdef0123, mobile:fedcba9876543210fedc"
            .parse()
            .expect("keys")
    }

    fn auth(value: &'static str) -> Option<String> {
        keys()
            .authenticate(Some(&HeaderValue::from_static(value)))
            .map(|(_, label)| label.to_owned())
    }

    #[test]
    fn a_configured_bearer_key_yields_its_label() {
        assert_eq!(auth("Bearer 0123456789abcdef0123").as_deref(), Some("web"));
        assert_eq!(
            auth("bearer fedcba9876543210fedc").as_deref(),
            Some("mobile")
        );
    }

    #[test]
    fn wrong_keys_other_schemes_and_no_header_are_refused() {
        assert_eq!(auth("Bearer 0123456789abcdef012"), None);
        assert_eq!(auth("Bearer "), None);
        assert_eq!(auth("Basic 0123456789abcdef0123"), None);
        assert_eq!(auth("0123456789abcdef0123"), None);
        assert_eq!(keys().authenticate(None), None);
    }

    #[test]
    fn bad_key_lists_say_what_is_wrong() {
        assert_eq!("".parse::<ApiKeys>().err(), Some(ApiKeysError::Empty));
        assert_eq!(" , ".parse::<ApiKeys>().err(), Some(ApiKeysError::Empty));
        assert_eq!(
            "nolabel".parse::<ApiKeys>().err(),
            Some(ApiKeysError::Malformed(1))
        );
        assert_eq!(
            "we b:0123456789abcdef".parse::<ApiKeys>().err(),
            Some(ApiKeysError::BadLabel(1))
        );
        assert_eq!(
            "web:short".parse::<ApiKeys>().err(),
            Some(ApiKeysError::WeakKey(1))
        );
        assert_eq!(
            "a:0123456789abcdef,a:fedcba9876543210"
                .parse::<ApiKeys>()
                .err(),
            Some(ApiKeysError::DuplicateLabel("a".into()))
        );
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let shown = format!("{:?}", keys());
        assert!(
            shown.contains("web") && !shown.contains("0123456789"),
            "{shown}"
        );
    }
}
