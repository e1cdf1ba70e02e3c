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
//!
//! With the `redis` section the count is fleet-wide, kept in Redis (see `crate::fleet`), so
//! guesses spread over the replicas add up. When Redis cannot answer, this replica's own count
//! decides, whatever `redis.on_error` says: password logins (and so the admin API) stay
//! available through a Redis outage.

use super::api_key::KeyHasher;
use crate::fleet::{Answer, ClaimKind, FleetClaims};
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

impl Failures {
    fn throttled(&self, window: Duration) -> Throttled {
        let left = window.saturating_sub(self.since.elapsed());
        Throttled {
            retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
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
    fleet: Option<Arc<FleetClaims>>,
}

/// An attempt in progress: a failure unless [`PasswordThrottle::succeeded`] or
/// [`PasswordThrottle::undecided`] says otherwise.
pub struct Attempt {
    counted: Counted,
}

/// Where an attempt was counted.
enum Counted {
    Local {
        key: [u8; 32],
        failures: Arc<Failures>,
    },
    /// In Redis, under the pair's input (see [`pair`]).
    Fleet(Vec<u8>),
}

/// The pair as bytes: names never contain control characters (see `basic::parse`), so NUL
/// separates.
fn pair(name: &str, client_ip: IpAddr) -> Vec<u8> {
    let mut input = Vec::with_capacity(name.len() + 17);
    input.extend_from_slice(name.as_bytes());
    input.push(0);
    match client_ip {
        IpAddr::V4(ip) => input.extend_from_slice(&ip.to_ipv6_mapped().octets()),
        IpAddr::V6(ip) => input.extend_from_slice(&ip.octets()),
    }
    input
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
            fleet: None,
        }
    }

    /// Counts in Redis, across the replicas (falling back to this replica's count).
    pub fn with_fleet(mut self, fleet: Option<Arc<FleetClaims>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Counts an attempt by `name` from `client_ip`, or refuses it when the pair has used up
    /// its attempts for the current window.
    pub async fn attempt(&self, name: &str, client_ip: IpAddr) -> Result<Attempt, Throttled> {
        let input = pair(name, client_ip);
        if let Some(fleet) = &self.fleet {
            let counted = fleet
                .count(ClaimKind::PasswordFailures, &input, self.limit, self.window)
                .await;
            // Never `Err`: password failures always fall back to the local count.
            if let Ok(Answer::Fleet(count)) = counted {
                return match count.counted {
                    true => Ok(Attempt {
                        counted: Counted::Fleet(input),
                    }),
                    false => Err(Throttled {
                        retry_after_secs: count.retry_after_secs(),
                    }),
                };
            }
        }
        let key = self.key.hash32(&input);
        let failures = self.local(key);
        let counted = failures
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        match counted {
            Ok(_) => Ok(Attempt {
                counted: Counted::Local { key, failures },
            }),
            Err(_) => Err(failures.throttled(self.window)),
        }
    }

    /// Whether the pair is over its limit, without counting an attempt: for logins answered
    /// from the success cache, which guess nothing.
    pub async fn check(&self, name: &str, client_ip: IpAddr) -> Result<(), Throttled> {
        let input = pair(name, client_ip);
        if let Some(fleet) = &self.fleet {
            if let Ok(Answer::Fleet(count)) = fleet.peek(ClaimKind::PasswordFailures, &input).await
            {
                return match count.count >= u64::from(self.limit) {
                    true => Err(Throttled {
                        retry_after_secs: count.retry_after_secs(),
                    }),
                    false => Ok(()),
                };
            }
        }
        let Some(failures) = self.failures.get(&self.key.hash32(&input)) else {
            return Ok(());
        };
        if failures.count.load(Ordering::Acquire) < self.limit {
            return Ok(());
        }
        Err(failures.throttled(self.window))
    }

    /// The attempt had the right password: this pair's count starts over. Other addresses'
    /// counts for the same name are untouched.
    pub async fn succeeded(&self, attempt: Attempt) {
        match attempt.counted {
            Counted::Local { key, .. } => self.failures.invalidate(&key),
            Counted::Fleet(input) => {
                if let Some(fleet) = &self.fleet {
                    let _ = fleet.clear(ClaimKind::PasswordFailures, &input).await;
                }
            }
        }
    }

    /// The attempt could not be decided (the store was unavailable): it does not count.
    pub async fn undecided(&self, attempt: Attempt) {
        match attempt.counted {
            Counted::Local { failures, .. } => {
                let _ = failures
                    .count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
            Counted::Fleet(input) => {
                if let Some(fleet) = &self.fleet {
                    let _ = fleet.uncount(ClaimKind::PasswordFailures, &input).await;
                }
            }
        }
    }

    fn local(&self, key: [u8; 32]) -> Arc<Failures> {
        self.failures.get_with(key, || {
            Arc::new(Failures {
                count: AtomicU32::new(0),
                since: Instant::now(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_per_name_and_address() {
        let throttle = PasswordThrottle::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.attempt("john", a).await.is_ok());
        }
        let refused = throttle.attempt("john", a).await.err().unwrap();
        assert!((59..=60).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(throttle.check("john", a).await.is_err());
        assert!(throttle.check("john", b).await.is_ok(), "another address");
        assert!(throttle.check("mary", a).await.is_ok(), "another name");
        let ok = throttle.attempt("john", b).await.unwrap();
        throttle.succeeded(ok).await;
        assert!(
            throttle.attempt("john", a).await.is_err(),
            "a success elsewhere resets nothing here"
        );
    }

    #[tokio::test]
    async fn an_undecided_attempt_does_not_count() {
        let throttle = PasswordThrottle::new(1, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let attempt = throttle.attempt("john", a).await.unwrap();
        throttle.undecided(attempt).await;
        throttle.attempt("john", a).await.unwrap();
        assert!(throttle.attempt("john", a).await.is_err());
    }

    #[tokio::test]
    async fn a_success_starts_the_pair_over() {
        let throttle = PasswordThrottle::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        throttle.attempt("john", a).await.unwrap();
        let ok = throttle.attempt("john", a).await.unwrap();
        throttle.succeeded(ok).await;
        assert!(throttle.attempt("john", a).await.is_ok());
    }
}
