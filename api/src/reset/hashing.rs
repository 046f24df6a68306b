//! Argon2id hashing of new passwords, bounded and off the async threads.

use argon2::{
    Algorithm, Argon2, Params, PasswordHasher, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Argon2(#[from] argon2::password_hash::Error),
    #[error("the hashing task ended: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Hashes passwords with Argon2id, at most [`Hasher::AT_ONCE`] at a time.
#[derive(Debug)]
pub struct Hasher {
    argon2: Argon2<'static>,
    /// Argon2 takes memory (19 MiB each by default): bound how many run at once.
    running: Semaphore,
}

impl Hasher {
    pub const AT_ONCE: usize = 4;

    /// Argon2id with `memory_kib`, `iterations` and `parallelism` (its own checks apply).
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, argon2::Error> {
        let params = Params::new(memory_kib, iterations, parallelism, None)?;
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            running: Semaphore::new(Self::AT_ONCE),
        })
    }

    /// The PHC string of `password` under a fresh salt.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        // The semaphore is never closed.
        let _permit = self.running.acquire().await;
        let argon2 = self.argon2.clone();
        let password = password.to_owned();
        // Argon2 is deliberately slow: keep it off the async workers.
        let phc = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await??;
        Ok(phc)
    }
}
