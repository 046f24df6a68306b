//! The one-time code in every reset mail, beside its link: for when the link cannot be
//! opened where the mail is read (another device, an in-app browser, a filter that breaks
//! URLs).
//!
//! A code and its link are one secret. The code is not stored: it is derived from the
//! token's stored hash with a keyed hash (HMAC-SHA256 under `RESET_CODE_KEY`), so the
//! worker that mails it and the api that checks it compute the same code, every way the
//! token dies kills the code too, and a database dump alone gives no code (a short code's
//! plain hash is brute-forced in milliseconds; this one needs the key).
//!
//! Codes are 8 symbols of Crockford's base32 (40 bits), shown as `7K3M-Q9XD`. People type
//! them: case, spaces and hyphens are ignored, and the letters Crockford reads as digits
//! (O as 0, I and L as 1) are read so.

use std::fmt;

use data_encoding::{Encoding, Specification};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bytes in a code: 40 bits, 8 base32 symbols.
const CODE_BYTES: usize = 5;
/// Shortest accepted key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// What the HMAC covers besides the token's hash, so this key derives nothing else alike.
const DOMAIN: &[u8] = b"reset-code/v1:";
/// How to make a key, for the messages that ask for one.
pub const MAKE_A_KEY: &str = "RESET_CODE_KEY=$(openssl rand -hex 32)";

/// The secret that keys codes, shared by the api and the worker.
#[derive(Clone)]
pub struct CodeKey(Vec<u8>);

/// Why a `RESET_CODE_KEY` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeKeyError {
    #[error(
        "RESET_CODE_KEY is not set: the api and the worker need the same secret to derive the \
         codes in reset mails. Make one with {MAKE_A_KEY}"
    )]
    Unset,
    #[error(
        "the key must be at least {MIN_KEY_BYTES} characters (it is {0}): make one with \
         {MAKE_A_KEY}"
    )]
    TooShort(usize),
}

impl std::str::FromStr for CodeKey {
    type Err = CodeKeyError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw.len() < MIN_KEY_BYTES {
            return Err(CodeKeyError::TooShort(raw.len()));
        }
        Ok(Self(raw.as_bytes().to_vec()))
    }
}

// Never print the key, even by accident.
impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey(<redacted>)")
    }
}

/// The setting, for both binaries' settings to flatten.
#[derive(Debug, Clone, clap::Args)]
pub struct CodeKeySettings {
    /// Secret that keys the one-time codes in reset mails: the same value for the api and the
    /// worker, at least 32 characters (`openssl rand -hex 32`). Required. Changing it kills
    /// the codes of mails already sent (their links keep working).
    #[arg(long, env = "RESET_CODE_KEY", hide_env_values = true)]
    pub reset_code_key: Option<CodeKey>,
}

impl CodeKeySettings {
    /// The key, or the start-up error that says how to make one.
    pub fn key(&self) -> Result<CodeKey, CodeKeyError> {
        self.reset_code_key.clone().ok_or(CodeKeyError::Unset)
    }
}

impl CodeKey {
    /// HMAC-SHA256 of `domain` then `data` under this key: each use names its own domain, so
    /// no two derive the same value.
    pub(crate) fn mac(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(domain);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The code that goes with the token whose stored hash is `token_hash`.
    pub fn code_for(&self, token_hash: &[u8]) -> ResetCode {
        let digest = self.mac(DOMAIN, token_hash);
        let mut code = [0u8; CODE_BYTES];
        code.copy_from_slice(&digest[..CODE_BYTES]);
        ResetCode(code)
    }
}

/// A code, as mailed or as typed.
#[derive(Clone)]
pub struct ResetCode([u8; CODE_BYTES]);

/// Crockford's base32, reading what people type: any case, spaces and hyphens, O for 0,
/// I and L for 1.
fn crockford() -> Encoding {
    let mut spec = Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzOoIiLl");
    spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ001111");
    spec.ignore.push_str(" -");
    spec.encoding()
        .unwrap_or_else(|e| unreachable!("the Crockford specification is valid: {e}"))
}

impl ResetCode {
    /// A code as someone typed it, or `None` when it cannot be one (wrong length or a
    /// symbol the alphabet lacks).
    pub fn parse(typed: &str) -> Option<Self> {
        // Longer than any spelling of a code: not decoded at all.
        if typed.len() > 4 * CODE_BYTES * 8 / 5 {
            return None;
        }
        let decoded = crockford().decode(typed.as_bytes()).ok()?;
        let bytes: [u8; CODE_BYTES] = decoded.try_into().ok()?;
        Some(Self(bytes))
    }

    /// As the mail shows it: two groups of four, joined by a hyphen.
    pub fn display(&self) -> String {
        let plain = crockford().encode(&self.0);
        format!("{}-{}", &plain[..4], &plain[4..])
    }

    /// Whether two codes are the same, in time that does not depend on where they differ.
    pub fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

// Never print a code, even by accident.
impl fmt::Debug for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResetCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CodeKey {
        "0123456789abcdef0123456789abcdef".parse().expect("key")
    }

    #[test]
    fn a_code_is_eight_symbols_in_two_groups_and_follows_its_token() {
        let code = key().code_for(&[7u8; 32]).display();
        assert_eq!(code.len(), 9, "{code}");
        assert_eq!(&code[4..5], "-");
        assert!(
            code.chars()
                .filter(|c| *c != '-')
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
            "{code}"
        );
        assert_eq!(key().code_for(&[7u8; 32]).display(), code, "deterministic");
        assert_ne!(key().code_for(&[8u8; 32]).display(), code);
        let other: CodeKey = "another key, also thirty-two characters"
            .parse()
            .expect("key");
        assert_ne!(other.code_for(&[7u8; 32]).display(), code, "keyed");
    }

    #[test]
    fn codes_are_read_as_people_type_them() {
        let mailed = key().code_for(&[1u8; 32]);
        let shown = mailed.display();
        let plain = shown.replace('-', "");
        for typed in [
            shown.clone(),
            shown.to_lowercase(),
            plain.clone(),
            format!("  {} {}  ", &plain[..4], &plain[4..]),
            plain.chars().map(|c| format!("{c} ")).collect::<String>(),
        ] {
            let parsed = ResetCode::parse(&typed).expect(&typed);
            assert!(parsed.matches(&mailed), "{typed}");
        }
        // Crockford's look-alikes: O is 0, I and L are 1.
        let zero_one = ResetCode::parse("0000-1111").expect("digits");
        for alias in ["OOOO-IIII", "oOo0 lLiI"] {
            assert!(ResetCode::parse(alias).expect(alias).matches(&zero_one));
        }
    }

    #[test]
    fn what_cannot_be_a_code_is_refused() {
        for bad in [
            "",
            "ABCD-EFG",
            "ABCD-EFGHJ",
            "ABCD-EFGU",
            "ABCD_EFGH",
            "ÄBCD-EFGH",
            &"A".repeat(1000),
        ] {
            assert!(ResetCode::parse(bad).is_none(), "{bad}");
        }
        let a = ResetCode::parse("ABCD-EFGH").expect("code");
        assert!(!a.matches(&ResetCode::parse("ABCD-EFGJ").expect("code")));
    }

    #[test]
    fn keys_are_long_and_never_printed() {
        assert_eq!(
            "short".parse::<CodeKey>().err(),
            Some(CodeKeyError::TooShort(5))
        );
        let key = key();
        assert!(!format!("{key:?}").contains("0123"));
        let code = key.code_for(&[1u8; 32]);
        assert!(!format!("{code:?}").contains(&code.display()[..4]));
        let unset = CodeKeySettings {
            reset_code_key: None,
        };
        assert!(
            unset
                .key()
                .is_err_and(|e| e.to_string().contains("openssl rand"))
        );
    }
}
