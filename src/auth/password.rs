//! Password hashing: argon2id with the crate's (OWASP-recommended) default parameters.
//!
//! Hashing is deliberately slow (tens of milliseconds), so callers on the async runtime go
//! through [`PasswordHasher::verify`], which runs it on the blocking pool under a semaphore:
//! a flood of wrong passwords costs a bounded number of cores, never the proxy's workers.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Checks a password against a PHC string; a malformed stored hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Runs verifications off the async runtime, at most `permits` at a time.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so the answer takes as long as for a
    /// wrong password and does not reveal which user names exist.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(permits: usize) -> PasswordHasher {
        let dummy = hash_password("keyward-dummy-password").unwrap_or_default();
        PasswordHasher {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            dummy_hash: dummy.into(),
        }
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None`
    /// (always false then).
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .unwrap_or(false);
        known && matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1);
        assert!(!hasher.verify("keyward-dummy-password".into(), None).await);
    }
}
