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

/// The key in the published API page's example. It passes every check on form, so it is
/// refused unless the instance is marked as a development one.
pub const PLACEHOLDER_KEY: &str = "REPLACE_BEARER_TOKEN";

/// How to make a real key, for the messages that ask for one.
const MAKE_A_KEY: &str = "API_KEYS=web:$(openssl rand -hex 32)";

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
    #[error(
        "no API key configured: set API_KEYS to comma-separated label:key pairs, e.g. {MAKE_A_KEY} (on a development machine, API_DEV_MODE=1 accepts the placeholder key {PLACEHOLDER_KEY} instead)"
    )]
    Unset,
    #[error(
        "API_KEYS holds the placeholder key {PLACEHOLDER_KEY} from the API documentation, which anyone can guess: make a real one, e.g. {MAKE_A_KEY} (API_DEV_MODE=1 accepts the placeholder on a development machine)"
    )]
    Placeholder,
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
    /// The keys an instance runs with: `API_KEYS`, and on a development instance the
    /// placeholder key besides (labelled `dev`), so the documentation's curl works there as
    /// written. The placeholder is refused anywhere else. An empty `API_KEYS` counts as
    /// unset: compose files pass `${API_KEYS:-}` through.
    pub fn from_settings(api_keys: Option<&str>, dev_mode: bool) -> Result<Self, ApiKeysError> {
        let mut keys: Self = match api_keys.filter(|raw| !raw.trim().is_empty()) {
            Some(raw) => raw.parse()?,
            None if dev_mode => Self { keys: Vec::new() },
            None => return Err(ApiKeysError::Unset),
        };
        match (dev_mode, keys.accepts(PLACEHOLDER_KEY)) {
            (false, true) => return Err(ApiKeysError::Placeholder),
            (true, false) => {
                let label = if keys.labels().any(|l| l == "dev") {
                    "dev-placeholder"
                } else {
                    "dev"
                };
                keys.keys.push((label.to_owned(), digest(PLACEHOLDER_KEY)));
            }
            _ => {}
        }
        Ok(keys)
    }

    /// Whether `key` is one of the configured keys.
    pub fn accepts(&self, key: &str) -> bool {
        let presented = digest(key);
        self.keys.iter().fold(false, |found, (_, k)| {
            found | bool::from(k.ct_eq(&presented))
        })
    }

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
    fn the_placeholder_key_works_only_on_a_development_instance() {
        let placeholder = "docs:REPLACE_BEARER_TOKEN,web:0123456789abcdef0123";
        assert_eq!(
            ApiKeys::from_settings(Some(placeholder), false).err(),
            Some(ApiKeysError::Placeholder)
        );
        assert!(ApiKeys::from_settings(Some(placeholder), true).is_ok());
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(
                ApiKeys::from_settings(unset, false).err(),
                Some(ApiKeysError::Unset)
            );
        }
        let dev = ApiKeys::from_settings(None, true).expect("dev keys");
        assert!(dev.accepts(PLACEHOLDER_KEY));
        let real = ApiKeys::from_settings(Some("web:0123456789abcdef0123"), false).expect("keys");
        assert!(real.accepts("0123456789abcdef0123") && !real.accepts(PLACEHOLDER_KEY));
        // A development instance takes the placeholder besides its real keys.
        let both = ApiKeys::from_settings(Some("dev:0123456789abcdef0123"), true).expect("keys");
        assert!(both.accepts("0123456789abcdef0123") && both.accepts(PLACEHOLDER_KEY));
        assert_eq!(
            both.labels().collect::<Vec<_>>(),
            ["dev", "dev-placeholder"]
        );
        assert!(ApiKeysError::Unset.to_string().contains("openssl rand"));
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
