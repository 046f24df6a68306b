//! Completing a reset: checking a token, and setting the new password.
//!
//! Tokens are looked up by their SHA-256 only. A token is valid while it is unused, not
//! invalidated (by a newer token, a used one, or five wrong codes), not expired, and while the
//! account's password hash and email are still the ones it was issued against (a password
//! changed by any other path kills it, and so does a move to another address).
//! All the ways a token can be invalid give the same answer.
//!
//! The mail's code stands for its token: given the account, the code is checked against the
//! one derived from the account's live token (`shared::code`), and from there on it is that
//! token. Every way of naming an account with no live code, and every wrong code, gives the
//! same answer; a wrong code also counts against the live one, which dies at the fifth.

use std::time::Duration;

use argon2::{
    Algorithm, Argon2, Params, PasswordHasher, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use sha2::{Digest, Sha256};
use shared::account::AccountRef;
use shared::code::{CodeKey, ResetCode};
use shared::event::{ClientContext, PASSWORD_CHANGED, PasswordChanged};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::config::ResetSettings;
use crate::publish::{Outgoing, Publisher};

/// Why a queued event is still in the outbox; the relay tries again.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("publishing: {0}")]
    Publish(#[from] crate::publish::PublishFailure),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Longest accepted password, in characters (NIST SP 800-63B asks for at least 64).
pub const MAX_PASSWORD_CHARS: usize = 128;

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

/// Why a reset did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("invalid or expired token")]
    InvalidToken,
    /// No live code for the account named, or not this one: the two look the same.
    #[error("invalid or expired code")]
    InvalidCode,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// Why the reset settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ResetSettingsError {
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("ARGON2_MEMORY_KIB / ARGON2_ITERATIONS / ARGON2_PARALLELISM: {0}")]
    Argon2(String),
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
        let estimate = zxcvbn::zxcvbn(password, account);
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

/// Wrong codes a live code survives: the next one kills it and its link.
pub const MAX_CODE_FAILURES: i32 = 5;

/// What proves the right to reset: the link's token, or the account and the mailed code.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Token(String),
    Code { account: AccountRef, code: String },
}

// Never print a token or a code, even by accident.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Secret::Token(<redacted>)"),
            Self::Code { account, .. } => write!(f, "Secret::Code({account:?}, <redacted>)"),
        }
    }
}

impl Secret {
    /// The error for this kind of secret not working.
    fn invalid(&self) -> ResetError {
        match self {
            Self::Token(_) => ResetError::InvalidToken,
            Self::Code { .. } => ResetError::InvalidCode,
        }
    }
}

/// Who changed the password, for the notification.
#[derive(Debug, Clone)]
pub struct Requester {
    pub request_id: String,
    pub client: ClientContext,
}

/// The reset side of the api.
#[derive(Debug)]
pub struct Resets {
    pool: PgPool,
    policy: PasswordPolicy,
    hasher: Argon2<'static>,
    /// Argon2 takes memory (19 MiB each by default): bound how many run at once.
    hashing: Semaphore,
    changed_subject: String,
    code_key: CodeKey,
}

/// Tokens as mailed: 43 characters of base64url. Anything else cannot be one.
fn plausible_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The conditions under which a token `t` of account `a` works.
const LIVE: &str = "
      t.used_at IS NULL AND t.invalidated_at IS NULL AND t.expires_at > now()
      AND t.password_fingerprint = sha256(convert_to(coalesce(a.password_hash, ''), 'UTF8'))
      AND t.email_fingerprint = reset_email_fingerprint(a.email)";

/// The token whose hash is `$1`, if it works; shared by verify and reset.
fn valid_token() -> String {
    format!(
        "FROM reset_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.token_hash = $1 AND {LIVE}"
    )
}

impl Resets {
    pub fn new(
        settings: &ResetSettings,
        changed_subject: String,
        code_key: CodeKey,
    ) -> Result<Self, ResetSettingsError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&settings.database.database_url)
            .map_err(ResetSettingsError::DatabaseUrl)?;
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| ResetSettingsError::Argon2(e.to_string()))?;
        Ok(Self {
            pool,
            policy: PasswordPolicy {
                min_chars: usize::from(settings.password_min_length),
                min_strength: settings.password_min_strength,
            },
            hasher: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            hashing: Semaphore::new(4),
            changed_subject,
            code_key,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether `secret` would work now, and if so its account's locale (for the page).
    /// Consumes nothing, but a wrong code counts against the account's live one.
    pub async fn verify(&self, secret: &Secret) -> Result<Option<String>, ResetError> {
        let hash = self.resolve(secret).await?;
        let found: Option<Option<String>> =
            sqlx::query_scalar(&format!("SELECT a.locale {}", valid_token()))
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
        found.ok_or_else(|| secret.invalid())
    }

    /// The stored hash of the token that `secret` is or stands for. For a token that is
    /// only its hash; a code is checked against the account's live token here.
    async fn resolve(&self, secret: &Secret) -> Result<[u8; 32], ResetError> {
        match secret {
            Secret::Token(token) if plausible_token(token) => Ok(token_hash(token)),
            Secret::Token(_) => Err(ResetError::InvalidToken),
            Secret::Code { account, code } => self.check_code(account, code).await,
        }
    }

    /// The hash of `account`'s live token if `typed` is its code. A wrong code counts against
    /// the live one, under its row's lock so that guesses sent at once are counted one by
    /// one; the [`MAX_CODE_FAILURES`]th kills it, link and code. No account, no live token and
    /// a wrong code all answer [`ResetError::InvalidCode`].
    async fn check_code(&self, account: &AccountRef, typed: &str) -> Result<[u8; 32], ResetError> {
        let typed = ResetCode::parse(typed).ok_or(ResetError::InvalidCode)?;
        let mut tx = self.pool.begin().await?;
        let live: Option<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT t.token_hash FROM reset_find_account($1) f
               JOIN reset_tokens t ON t.account_id = f.id
               JOIN accounts a ON a.id = t.account_id
              WHERE {LIVE}
              ORDER BY t.created_at DESC LIMIT 1
                FOR UPDATE OF t"
        ))
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let hash: [u8; 32] = live
            .and_then(|hash| hash.try_into().ok())
            .ok_or(ResetError::InvalidCode)?;
        if self.code_key.code_for(&hash).matches(&typed) {
            return Ok(hash);
        }
        sqlx::query(
            "UPDATE reset_tokens SET code_failures = code_failures + 1,
                    invalidated_at = CASE WHEN code_failures + 1 >= $2 THEN now() END
              WHERE token_hash = $1",
        )
        .bind(&hash[..])
        .bind(MAX_CODE_FAILURES)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Err(ResetError::InvalidCode)
    }

    /// Sets the account's password if `token` is valid, in one transaction that also uses the
    /// token and invalidates the account's other tokens, and queues a `PasswordChanged` event.
    /// Returns the event, for the caller to publish at once.
    pub async fn reset(
        &self,
        secret: &Secret,
        password: &str,
        requester: Requester,
    ) -> Result<PasswordChanged, ResetError> {
        if let Secret::Token(token) = secret
            && !plausible_token(token)
        {
            return Err(ResetError::InvalidToken);
        }
        let password = &normalise(password);
        self.policy.check(password)?;
        let hash = self.resolve(secret).await?;
        let account: Option<(String, String)> =
            sqlx::query_as(&format!("SELECT t.account_id, a.email {}", valid_token()))
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
        let (account_id, email) = account.ok_or_else(|| secret.invalid())?;
        self.policy.check_account(password, &account_id, &email)?;
        let phc = self.hash(password).await?;

        let mut tx = self.pool.begin().await?;
        // Locks the token: of two requests racing with it, the second finds it used.
        let still_valid: Option<String> = sqlx::query_scalar(&format!(
            "SELECT t.account_id {} FOR UPDATE OF t",
            valid_token()
        ))
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await?;
        if still_valid.as_deref() != Some(account_id.as_str()) {
            return Err(secret.invalid());
        }
        sqlx::query("UPDATE reset_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(&hash[..])
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE reset_tokens SET invalidated_at = now()
             WHERE account_id = $1 AND token_hash <> $2 AND used_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(&account_id)
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE accounts SET password_hash = $2 WHERE id = $1")
            .bind(&account_id)
            .bind(&phc)
            .execute(&mut *tx)
            .await?;
        let event = PasswordChanged::new(account_id, requester.request_id, requester.client);
        sqlx::query("INSERT INTO event_outbox (event_id, subject, payload) VALUES ($1, $2, $3)")
            .bind(event.event_id)
            .bind(&self.changed_subject)
            .bind(event.to_json())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn hash(&self, password: &str) -> Result<String, ResetError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| ResetError::Hash(e.to_string()))?;
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        // Argon2 is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            hasher
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ResetError::Hash(e.to_string()))
        })
        .await
        .map_err(|e| ResetError::Hash(e.to_string()))?
    }

    /// Publishes one queued event and removes it from the outbox.
    pub async fn publish_queued(
        &self,
        publisher: &Publisher,
        event_id: Uuid,
        subject: &str,
        payload: Vec<u8>,
        request_id: &str,
    ) -> Result<(), OutboxError> {
        let msg_id = event_id.to_string();
        publisher
            .send(Outgoing {
                subject: subject.into(),
                event_type: PASSWORD_CHANGED,
                request_id,
                payload,
                msg_id: Some(&msg_id),
            })
            .await?;
        sqlx::query("DELETE FROM event_outbox WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Publishes whatever the outbox still holds (events whose immediate publish failed, or
    /// whose api stopped in between). A repeated `Nats-Msg-Id` makes a double publish harmless.
    pub async fn relay_outbox(&self, publisher: &Publisher) -> Result<usize, OutboxError> {
        let queued: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT event_id, subject, payload FROM event_outbox
             WHERE created_at < now() - interval '2 seconds'
             ORDER BY created_at LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut published = 0;
        for (event_id, subject, payload) in queued {
            let request_id = PasswordChanged::decode(&payload)
                .map(|e| e.request_id)
                .unwrap_or_default();
            self.publish_queued(publisher, event_id, &subject, payload, &request_id)
                .await?;
            published += 1;
        }
        Ok(published)
    }
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

    #[test]
    fn only_43_base64url_characters_can_be_a_token() {
        assert!(plausible_token(&"a".repeat(43)));
        assert!(!plausible_token(&"a".repeat(42)));
        assert!(!plausible_token(&format!("{}=", "a".repeat(42))));
        assert!(!plausible_token("' OR 1=1 --"));
    }
}
