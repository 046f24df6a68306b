//! Reset tokens: minted here, mailed once, stored only as a hash.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// A freshly minted token. Its plaintext goes into one email and is then dropped.
pub struct Token {
    plaintext: String,
}

/// The token could not be minted: the OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct MintError(getrandom::Error);

impl Token {
    /// 32 bytes from the OS CSPRNG, base64url without padding (43 characters).
    pub fn mint() -> Result<Self, MintError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(MintError)?;
        Ok(Self {
            plaintext: URL_SAFE_NO_PAD.encode(bytes),
        })
    }

    pub fn plaintext(&self) -> &str {
        &self.plaintext
    }

    /// What the database keeps.
    pub fn hash(&self) -> [u8; 32] {
        hash(&self.plaintext)
    }
}

/// SHA-256 of a token as presented, to look it up.
pub fn hash(plaintext: &str) -> [u8; 32] {
    Sha256::digest(plaintext.as_bytes()).into()
}

// Never print a token, even by accident.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_differ() {
        let a = Token::mint().expect("mint");
        let b = Token::mint().expect("mint");
        assert_eq!(a.plaintext().len(), 43);
        assert!(
            a.plaintext()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a.plaintext(), b.plaintext());
        assert_eq!(a.hash(), hash(a.plaintext()));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = Token::mint().expect("mint");
        assert!(!format!("{token:?}").contains(token.plaintext()));
    }
}
