//! The password rules (NIST SP 800-63B).

use unicode_normalization::UnicodeNormalization;

/// Longest accepted password, in characters (NIST SP 800-63B asks for at least 64).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// How much of a password zxcvbn reads.
pub const ESTIMATED_CHARS: usize = 64;

/// Why a new password is refused. The texts are shown to clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("password must be at least {0} characters")]
    TooShort(usize),
    #[error("password must be at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    #[error("password must not be the account's id or email")]
    SameAsAccount,
    /// Common, breached-list and pattern passwords; the text is the estimator's reason.
    #[error("password is too easy to guess: {0} Add another word or two that are not a quote.")]
    Guessable(String),
}

/// The password rules (NIST SP 800-63B): a length range counted in code points, no
/// composition rules, not the account's own id or email, and not common or easily guessed
/// (zxcvbn's estimate, which knows the most common breached passwords, words, names, dates,
/// keyboard rows, repeats and sequences, and the account's own id and email).
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    pub min_chars: usize,
    /// Least zxcvbn score accepted, 0 (anything) to 4.
    pub min_strength: u8,
}

/// The form a password is checked and hashed in: NFKC, so that the same password typed on
/// another keyboard or system (composed or decomposed accents, full-width digits) is the
/// same password. A login that verifies against the stored hash must normalise the same way.
pub fn normalise(password: &str) -> String {
    password.nfkc().collect()
}

impl PasswordPolicy {
    /// Every rule but the account's own: those need the account, which only a valid token
    /// names.
    pub fn check(&self, password: &str) -> Result<(), PolicyError> {
        self.check_length(password)?;
        self.check_strength(password, &[])
    }

    pub fn check_length(&self, password: &str) -> Result<(), PolicyError> {
        let chars = password.chars().count();
        if chars < self.min_chars {
            Err(PolicyError::TooShort(self.min_chars))
        } else if chars > MAX_PASSWORD_CHARS {
            Err(PolicyError::TooLong)
        } else {
            Ok(())
        }
    }

    pub fn check_account(&self, password: &str, id: &str, email: &str) -> Result<(), PolicyError> {
        let lower = password.to_lowercase();
        if lower == id.to_lowercase() || lower == email.to_lowercase() {
            return Err(PolicyError::SameAsAccount);
        }
        let local_part = email.split('@').next().unwrap_or(email);
        self.check_strength(password, &[id, email, local_part])
    }

    fn check_strength(&self, password: &str, account: &[&str]) -> Result<(), PolicyError> {
        if self.min_strength == 0 {
            return Ok(());
        }
        // zxcvbn's cost grows much faster than the input (a 100-character run of l33t
        // symbols took half a second): it reads the first ESTIMATED_CHARS only. A password
        // whose first 64 characters are hard to guess is hard to guess.
        let end = password
            .char_indices()
            .nth(ESTIMATED_CHARS)
            .map_or(password.len(), |(at, _)| at);
        let estimate = zxcvbn::zxcvbn(&password[..end], account);
        if u8::from(estimate.score()) >= self.min_strength {
            return Ok(());
        }
        let reason = estimate.feedback().and_then(|f| f.warning()).map_or_else(
            || "it would be found early by anyone guessing.".to_owned(),
            |w| lower_first(&w.to_string()),
        );
        Err(PolicyError::Guessable(reason))
    }
}

/// "This is a top-10 common password." → "this is a top-10 common password.", to follow a colon.
fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_counts_code_points_between_min_and_128() {
        let policy = PasswordPolicy {
            min_chars: 8,
            min_strength: 0,
        };
        assert_eq!(
            policy.check_length("1234567"),
            Err(PolicyError::TooShort(8))
        );
        assert_eq!(policy.check_length("12345678"), Ok(()));
        assert_eq!(
            policy.check_length(&"😀".repeat(8)),
            Ok(()),
            "8 emoji are 8 characters"
        );
        assert_eq!(policy.check_length(&"é".repeat(128)), Ok(()));
        assert_eq!(
            policy.check_length(&"a".repeat(129)),
            Err(PolicyError::TooLong)
        );
        assert_eq!(policy.check_length("    spaces ok   "), Ok(()));
    }

    #[test]
    fn the_account_id_or_email_is_not_a_password() {
        let policy = PasswordPolicy {
            min_chars: 8,
            min_strength: 2,
        };
        assert_eq!(
            policy.check_account("Ada@Example.com", "u-1", "ada@example.com"),
            Err(PolicyError::SameAsAccount)
        );
        assert_eq!(
            policy.check_account("user-12345", "user-12345", "a@b.c"),
            Err(PolicyError::SameAsAccount)
        );
        assert_eq!(
            policy.check_account("correct horse", "u-1", "a@b.c"),
            Ok(())
        );
        // Nor the account's name with a little added.
        assert!(matches!(
            policy.check_account("lovelace2024", "u-1", "lovelace@example.com"),
            Err(PolicyError::Guessable(_))
        ));
    }

    #[test]
    fn common_and_patterned_passwords_are_refused_with_the_reason() {
        let policy = PasswordPolicy {
            min_chars: 8,
            min_strength: 2,
        };
        for weak in [
            "password1",
            "12345678",
            "qwertyuiop",
            "aaaaaaaaaaaa",
            "abcdefgh1",
        ] {
            let err = policy.check(weak).expect_err(weak);
            assert!(
                err.to_string()
                    .starts_with("password is too easy to guess: "),
                "{weak}: {err}"
            );
        }
        assert_eq!(
            policy.check("password1").map_err(|e| e.to_string()),
            Err("password is too easy to guess: this is a very common password. Add another word or two that are not a quote.".to_owned())
        );
        for fine in [
            "correct horse battery staple",
            "a new and long passphrase",
            "Grüße aus Köln, 🔑 im Schloss",
        ] {
            assert_eq!(policy.check(fine), Ok(()), "{fine}");
        }
        let off = PasswordPolicy {
            min_chars: 8,
            min_strength: 0,
        };
        assert_eq!(off.check("12345678"), Ok(()));
    }

    #[test]
    fn only_the_first_64_characters_are_estimated() {
        let policy = PasswordPolicy {
            min_chars: 8,
            min_strength: 2,
        };
        let strong = "quartz violet harbour nine lanterns";
        let weak_head = format!("{}{strong}", "a".repeat(ESTIMATED_CHARS));
        assert!(
            matches!(policy.check(&weak_head), Err(PolicyError::Guessable(_))),
            "what follows the first 64 is not read"
        );
        let strong_head = format!("{strong}{}", "a".repeat(80));
        assert_eq!(policy.check(&strong_head), Ok(()));
    }

    #[test]
    fn passwords_are_checked_and_hashed_in_nfkc() {
        // Decomposed and composed ü, full-width and ASCII digits: one password each.
        assert_eq!(normalise("Gru\u{308}ße"), normalise("Grüße"));
        assert_eq!(normalise("ｐａｓｓ１２３"), "pass123");
        let policy = PasswordPolicy {
            min_chars: 8,
            min_strength: 2,
        };
        // Full-width "password1" is the common password it looks like.
        assert!(policy.check(&normalise("ｐａｓｓｗｏｒｄ１")).is_err());
    }
}
