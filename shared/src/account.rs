//! The account reference a reset request names.

use std::fmt;

/// Longest accepted `id`, in characters: the longest valid email address (RFC 5321 path limit).
pub const MAX_ID_CHARS: usize = 254;

/// An `id` as a client submitted it, trimmed and checked.
///
/// It is either an account id or an email address; which one is for the worker to find out.
/// Holding an `AccountRef` means the rules below were applied: the only constructor is
/// [`AccountRef::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct AccountRef(String);

/// Why a submitted `id` was refused. The texts are shown to clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountRefError {
    #[error("`id` is empty")]
    Empty,
    #[error("`id` is longer than {MAX_ID_CHARS} characters")]
    TooLong,
    #[error("`id` contains a control character")]
    ControlCharacter,
}

impl AccountRef {
    /// Trims surrounding white space and accepts 1 to 254 characters with no control character.
    pub fn parse(raw: &str) -> Result<Self, AccountRefError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(AccountRefError::Empty);
        }
        if trimmed.chars().count() > MAX_ID_CHARS {
            return Err(AccountRefError::TooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(AccountRefError::ControlCharacter);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// A form safe to log: see [`crate::logging::mask_id`].
    pub fn masked(&self) -> String {
        crate::logging::mask_id(&self.0)
    }
}

// Debug masks too, so that a stray `?account` in a log line cannot leak an address.
impl fmt::Debug for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountRef({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn surrounding_space_is_trimmed() {
        let id = AccountRef::parse("  ada@example.com\t").expect("valid");
        assert_eq!(id.as_str(), "ada@example.com");
    }

    #[test]
    fn empty_and_blank_ids_are_refused() {
        assert_eq!(AccountRef::parse(""), Err(AccountRefError::Empty));
        assert_eq!(AccountRef::parse(" \n "), Err(AccountRefError::Empty));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let at_limit = "é".repeat(MAX_ID_CHARS);
        assert!(AccountRef::parse(&at_limit).is_ok());
        let over = "a".repeat(MAX_ID_CHARS + 1);
        assert_eq!(AccountRef::parse(&over), Err(AccountRefError::TooLong));
    }

    #[test]
    fn inner_control_characters_are_refused() {
        assert_eq!(
            AccountRef::parse("ada\r\nBcc: eve@example.com"),
            Err(AccountRefError::ControlCharacter)
        );
        assert_eq!(
            AccountRef::parse("a\u{0}b"),
            Err(AccountRefError::ControlCharacter)
        );
    }

    #[test]
    fn debug_output_is_masked() {
        let id = AccountRef::parse("ada.lovelace@example.com").expect("valid");
        let shown = format!("{id:?}");
        assert!(!shown.contains("lovelace"), "{shown}");
    }

    proptest! {
        #[test]
        fn accepted_ids_keep_the_rules(raw in ".{0,300}") {
            if let Ok(id) = AccountRef::parse(&raw) {
                let s = id.as_str();
                prop_assert!(!s.is_empty());
                prop_assert!(s.chars().count() <= MAX_ID_CHARS);
                prop_assert!(!s.chars().any(char::is_control));
                prop_assert_eq!(s, s.trim());
            }
        }
    }
}
