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

mod hashing;
mod policy;
mod relay;
mod report;

pub use hashing::{HashError, Hasher};
pub use policy::{MAX_PASSWORD_CHARS, PasswordPolicy, PolicyError, normalise};
pub use relay::OutboxError;
pub use report::ReportOutcome;

use std::time::Duration;

use sha2::{Digest, Sha256};
use shared::account::AccountRef;
use shared::code::{CodeKey, ResetCode};
use shared::event::{ClientContext, PasswordChanged};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::Semaphore;

use crate::config::ResetSettings;

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
    Hash(#[from] HashError),
    #[error("checking the password: {0}")]
    Check(tokio::task::JoinError),
}

/// Why the reset settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ResetSettingsError {
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("ARGON2_MEMORY_KIB / ARGON2_ITERATIONS / ARGON2_PARALLELISM: {0}")]
    Argon2(#[from] argon2::Error),
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
    /// zxcvbn takes milliseconds of CPU: bound how many estimates run at once.
    estimating: Semaphore,
    hasher: Hasher,
    subjects: shared::stream::Subjects,
    code_key: CodeKey,
    /// RESET_REPORT_PAUSE.
    report_pause: Duration,
    /// Where links first opened, resets completed and reports are counted.
    funnel: shared::metrics::Funnel,
}

/// A live token's account: id, email and locale.
type LiveToken = (String, String, Option<String>);

/// zxcvbn estimates running at once; more wait their turn.
const ESTIMATES_AT_ONCE: usize = 2;

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

impl Resets {
    pub fn new(
        settings: &ResetSettings,
        subjects: shared::stream::Subjects,
        code_key: CodeKey,
        funnel: shared::metrics::Funnel,
    ) -> Result<Self, ResetSettingsError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&settings.database.database_url)
            .map_err(ResetSettingsError::DatabaseUrl)?;
        let hasher = Hasher::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
        )?;
        Ok(Self {
            pool,
            policy: PasswordPolicy {
                min_chars: usize::from(settings.password_min_length),
                min_strength: settings.password_min_strength,
            },
            estimating: Semaphore::new(ESTIMATES_AT_ONCE),
            hasher,
            subjects,
            code_key,
            report_pause: settings.report_pause,
            funnel,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// RESET_REPORT_PAUSE.
    pub fn report_pause(&self) -> Duration {
        self.report_pause
    }

    /// The key the mails' codes and report links are derived with.
    pub fn code_key(&self) -> &CodeKey {
        &self.code_key
    }

    /// Whether `secret` would work now, and if so its account's locale (for the page).
    /// Consumes nothing, but a wrong code counts against the account's live one, and the
    /// first time a live token is opened is recorded (`opened_at`, for `worker replay`'s
    /// timeline) and counted in the funnel.
    pub async fn verify(&self, secret: &Secret) -> Result<Option<String>, ResetError> {
        let hash = self.resolve(secret).await?;
        let opened: Option<(Option<String>, bool)> =
            sqlx::query_as("SELECT locale, first_open FROM reset_open_live_token($1)")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
        let (locale, first_open) = opened.ok_or_else(|| secret.invalid())?;
        if first_open {
            self.funnel.reached("opened");
        }
        Ok(locale)
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
        let live: Option<Vec<u8>> = sqlx::query_scalar("SELECT reset_lock_live_token_of($1)")
            .bind(account.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let hash: [u8; 32] = live
            .and_then(|hash| hash.try_into().ok())
            .ok_or(ResetError::InvalidCode)?;
        if self.code_key.code_for(&hash).matches(&typed) {
            return Ok(hash);
        }
        sqlx::query("SELECT reset_count_wrong_code($1, $2)")
            .bind(&hash[..])
            .bind(MAX_CODE_FAILURES)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Err(ResetError::InvalidCode)
    }

    /// Sets the account's password if `secret` is live, in one statement (`reset_complete`)
    /// that also uses the token, invalidates the account's other tokens and queues a
    /// `PasswordChanged` event. Returns the event, for the caller to publish at once.
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
        // The token before the password's strength: an estimate costs CPU, and only someone
        // holding a live token may spend it.
        let password = &normalise(password);
        self.policy.check_length(password)?;
        let hash = self.resolve(secret).await?;
        let (account_id, email, _) = self
            .live_token(&hash)
            .await?
            .ok_or_else(|| secret.invalid())?;
        self.check_password(password, &account_id, &email).await?;
        let phc = self.hasher.hash(password).await?;

        // One statement: it locks the token first, so of two requests racing with it the
        // second finds it used and changes nothing.
        let event = PasswordChanged::new(account_id, requester.request_id, requester.client);
        let done: bool = sqlx::query_scalar("SELECT reset_complete($1, $2, $3, $4, $5, $6)")
            .bind(&hash[..])
            .bind(&event.account_id)
            .bind(&phc)
            .bind(event.event_id)
            .bind(self.subjects.changed())
            .bind(event.to_json())
            .fetch_one(&self.pool)
            .await?;
        if !done {
            return Err(secret.invalid());
        }
        self.funnel.reached("completed");
        Ok(event)
    }

    /// The live token whose hash is `hash`: its account's id, email and locale.
    async fn live_token(&self, hash: &[u8; 32]) -> Result<Option<LiveToken>, ResetError> {
        Ok(
            sqlx::query_as("SELECT account_id, email, locale FROM reset_live_token($1)")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The account's own rules and zxcvbn's estimate, off the async threads and a few at a
    /// time, so that estimates never hold up the requests around them.
    async fn check_password(
        &self,
        password: &str,
        id: &str,
        email: &str,
    ) -> Result<(), ResetError> {
        // The semaphore is never closed.
        let _turn = self.estimating.acquire().await;
        let policy = self.policy;
        let (password, id, email) = (password.to_owned(), id.to_owned(), email.to_owned());
        tokio::task::spawn_blocking(move || policy.check_account(&password, &id, &email))
            .await
            .map_err(ResetError::Check)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_43_base64url_characters_can_be_a_token() {
        assert!(plausible_token(&"a".repeat(43)));
        assert!(!plausible_token(&"a".repeat(42)));
        assert!(!plausible_token(&format!("{}=", "a".repeat(42))));
        assert!(!plausible_token("' OR 1=1 --"));
    }
}
