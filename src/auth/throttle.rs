//! Password guessing throttle (SPEC §6): failed password logins are counted per
//! (user name, client address); once `limits.password_failures` attempts failed within
//! `limits.password_failure_window`, that pair is refused (429 with `Retry-After`) until the
//! window that began with its first failure has passed, the right password included.
//!
//! Counting per pair, not per user, means an attacker guessing from one address cannot lock the
//! real user out at another, and a success at one address does not reset another's count.
//! An attempt is counted when it starts, not when argon2 has answered, so that many parallel
//! guesses cannot all slip in before the first failure is recorded; a success takes it back.
//!
//! Memory is bounded: entries are keyed by a keyed hash (32 bytes) of the pair, never by the
//! attacker-chosen name itself, and the cache is bounded in bytes.

use super::api_key::KeyHasher;
use rand::RngCore;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one entry costs: the 32-byte key, the shared counter and moka's per-entry bookkeeping
/// (rounded up from the replay window's measured 360 bytes).
const ENTRY_BYTES: u32 = 512;
/// Memory the throttle may hold: 32 768 (name, address) pairs.
pub const MEMORY_BYTES: u64 = 16 * 1024 * 1024;

struct Failures {
    count: AtomicU32,
    since: Instant,
}

/// Refused: try again in this many seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

pub struct PasswordThrottle {
    failures: moka::sync::Cache<[u8; 32], Arc<Failures>>,
    key: KeyHasher,
    limit: u32,
    window: Duration,
}

/// An attempt in progress: a failure unless [`PasswordThrottle::succeeded`] or
/// [`PasswordThrottle::undecided`] says otherwise.
pub struct Attempt {
    key: [u8; 32],
    failures: Arc<Failures>,
}

impl PasswordThrottle {
    pub fn new(limit: u32, window: Duration) -> PasswordThrottle {
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        PasswordThrottle {
            failures: moka::sync::Cache::builder()
                .weigher(|_, _| ENTRY_BYTES)
                .max_capacity(MEMORY_BYTES)
                .time_to_live(window)
                .build(),
            key: KeyHasher::new(key),
            limit: limit.max(1),
            window,
        }
    }

    fn key_for(&self, name: &str, client_ip: IpAddr) -> [u8; 32] {
        // Names never contain control characters (see `basic::parse`), so NUL separates.
        let mut input = Vec::with_capacity(name.len() + 17);
        input.extend_from_slice(name.as_bytes());
        input.push(0);
        match client_ip {
            IpAddr::V4(ip) => input.extend_from_slice(&ip.to_ipv6_mapped().octets()),
            IpAddr::V6(ip) => input.extend_from_slice(&ip.octets()),
        }
        self.key.hash32(input)
    }

    /// Counts an attempt by `name` from `client_ip`, or refuses it when the pair has used up
    /// its attempts for the current window.
    pub fn attempt(&self, name: &str, client_ip: IpAddr) -> Result<Attempt, Throttled> {
        let key = self.key_for(name, client_ip);
        let failures = self.failures.get_with(key, || {
            Arc::new(Failures {
                count: AtomicU32::new(0),
                since: Instant::now(),
            })
        });
        let counted = failures
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        match counted {
            Ok(_) => Ok(Attempt { key, failures }),
            Err(_) => {
                let left = self.window.saturating_sub(failures.since.elapsed());
                Err(Throttled {
                    retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }

    /// Whether the pair is over its limit, without counting an attempt: for logins answered
    /// from the success cache, which guess nothing.
    pub fn check(&self, name: &str, client_ip: IpAddr) -> Result<(), Throttled> {
        let Some(failures) = self.failures.get(&self.key_for(name, client_ip)) else {
            return Ok(());
        };
        if failures.count.load(Ordering::Acquire) < self.limit {
            return Ok(());
        }
        let left = self.window.saturating_sub(failures.since.elapsed());
        Err(Throttled {
            retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// The attempt had the right password: this pair's count starts over. Other addresses'
    /// counts for the same name are untouched.
    pub fn succeeded(&self, attempt: Attempt) {
        self.failures.invalidate(&attempt.key);
    }

    /// The attempt could not be decided (the store was unavailable): it does not count.
    pub fn undecided(&self, attempt: Attempt) {
        let _ = attempt
            .failures
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_name_and_address() {
        let throttle = PasswordThrottle::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.attempt("john", a).is_ok());
        }
        let refused = throttle.attempt("john", a).err().unwrap();
        assert!((59..=60).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(throttle.check("john", a).is_err());
        assert!(throttle.check("john", b).is_ok(), "another address");
        assert!(throttle.check("mary", a).is_ok(), "another name");
        let ok = throttle.attempt("john", b).unwrap();
        throttle.succeeded(ok);
        assert!(
            throttle.attempt("john", a).is_err(),
            "a success elsewhere resets nothing here"
        );
    }

    #[test]
    fn an_undecided_attempt_does_not_count() {
        let throttle = PasswordThrottle::new(1, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let attempt = throttle.attempt("john", a).unwrap();
        throttle.undecided(attempt);
        throttle.attempt("john", a).unwrap();
        assert!(throttle.attempt("john", a).is_err());
    }

    #[test]
    fn a_success_starts_the_pair_over() {
        let throttle = PasswordThrottle::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        throttle.attempt("john", a).unwrap();
        let ok = throttle.attempt("john", a).unwrap();
        throttle.succeeded(ok);
        assert!(throttle.attempt("john", a).is_ok());
    }
}
