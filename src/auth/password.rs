//! Password hashing: argon2id with the crate's (OWASP-recommended) default parameters.
//!
//! Hashing is deliberately slow (tens of milliseconds) and memory-hard (~19 MiB), so callers on
//! the async runtime go through [`PasswordHasher::verify`], which runs it on a small fixed pool
//! of dedicated threads: a flood of wrong passwords costs a bounded number of cores and a
//! bounded amount of memory, never the proxy's workers.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

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

/// Largest argon2 memory a worker keeps for reuse (64 MiB); a stored hash that asks for more
/// (none keyward writes does) is verified with memory allocated for that one call.
const MAX_REUSED_BLOCKS: usize = 64 * 1024;

/// Checks `password` against `phc` using `memory` as argon2's working memory, grown to the
/// size the hash's parameters need and kept for the next call: a worker thread allocates its
/// ~19 MiB once instead of on every verification.
fn verify_reusing(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.block_count() > MAX_REUSED_BLOCKS {
        return verify_password(password, phc);
    }
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let blocks = params.block_count();
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

struct Job {
    password: String,
    phc: Arc<str>,
    answer: oneshot::Sender<bool>,
}

/// Verifications run on a fixed pool of dedicated threads (`limits.password_hash_threads`),
/// never on the async runtime nor tokio's blocking pool: memory is bounded by the pool's size
/// (one argon2 working set and one malloc arena per thread), however many wrong passwords
/// arrive at once. Requests beyond the pool wait in a bounded queue.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    /// Verified against when the user does not exist, so the answer takes as long as for a
    /// wrong password and does not reveal which user names exist.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// Starts `threads` (at least 1) worker threads; they end when the last clone is dropped.
    pub fn new(threads: usize) -> PasswordHasher {
        let threads = threads.max(1);
        let dummy = hash_password("keyward-dummy-password").unwrap_or_default();
        let (jobs, queue) = mpsc::channel::<Job>(threads * 16);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keyward-argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        // One worker waits on the queue at a time; the others are hashing.
                        let job = match queue.lock() {
                            Ok(mut queue) => queue.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { return };
                        let matched = verify_reusing(&mut memory, &job.password, &job.phc);
                        let _ = job.answer.send(matched);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordHasher {
            jobs,
            dummy_hash: dummy.into(),
        }
    }

    /// Verifies `password` against `phc`, or against the dummy hash when `phc` is `None`
    /// (always false then).
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let (answer, answered) = oneshot::channel();
        let job = Job {
            password,
            phc,
            answer,
        };
        if self.jobs.send(job).await.is_err() {
            return false;
        }
        let matched = answered.await.unwrap_or(false);
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

    #[test]
    fn reused_memory_verifies_like_the_crate() {
        let phc = hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_reusing(&mut memory, "correct horse", &phc));
        assert!(!verify_reusing(&mut memory, "wrong horse", &phc));
        assert!(
            verify_reusing(&mut memory, "correct horse", &phc),
            "memory reused"
        );
        assert!(!verify_reusing(&mut memory, "correct horse", "not a hash"));
        let other = hash_password("").unwrap();
        assert!(verify_reusing(&mut memory, "", &other));
    }

    #[tokio::test]
    async fn pool_verifies() {
        let hasher = PasswordHasher::new(2);
        let phc = hash_password("pw").unwrap();
        let checks = (0..6).map(|i| {
            let hasher = hasher.clone();
            let phc = phc.clone();
            tokio::spawn(async move {
                hasher
                    .verify(if i % 2 == 0 { "pw" } else { "no" }.into(), Some(phc))
                    .await
            })
        });
        let results: Vec<bool> = futures_join(checks).await;
        assert_eq!(results, [true, false, true, false, true, false]);
    }

    async fn futures_join(
        handles: impl Iterator<Item = tokio::task::JoinHandle<bool>>,
    ) -> Vec<bool> {
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1);
        assert!(!hasher.verify("keyward-dummy-password".into(), None).await);
    }
}
