//! Second factor (SPEC §1, §4): RFC 6238 TOTP codes (SHA-1, 6 digits, 30 s steps, ±1 step),
//! sent as `X-Totp-Code` beside HTTP Basic. Password + code is the ADMINISTRATIVE level.
//!
//! A code is accepted once: used codes are remembered per user for the steps they could be
//! valid in. Failed codes are counted per user; past the limit the user's TOTP logins are
//! refused until the window passes, so six digits cannot be brute-forced.
//!
//! With `redis.url` both hold fleet-wide: a used code is claimed in Redis (after the
//! local memory, which answers a reuse on this replica without a round trip), and failures
//! are counted there (see `crate::fleet`).

use crate::fleet::{Answer, ClaimKind, FleetClaims};
use rand::RngCore;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use totp_rs::{Algorithm, Secret, TOTP};

pub const HEADER: &str = "x-totp-code";
pub const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
const ISSUER: &str = "keyward";
const STEP: u64 = 30;
const SKEW: u8 = 1;
/// Failed codes allowed per user per window.
pub const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// A new random secret (160 bits, as RFC 4226 recommends), base32-encoded for storage.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    match Secret::Raw(bytes.to_vec()).to_encoded() {
        Secret::Encoded(text) => text,
        Secret::Raw(_) => unreachable!("to_encoded returns Encoded"),
    }
}

fn totp(secret: &str, account: &str) -> Result<TOTP, String> {
    let bytes = Secret::Encoded(secret.to_owned())
        .to_bytes()
        .map_err(|e| format!("stored TOTP secret is invalid: {e:?}"))?;
    TOTP::new(
        Algorithm::SHA1,
        6,
        SKEW,
        STEP,
        bytes,
        Some(ISSUER.to_owned()),
        account.replace(':', "_"),
    )
    .map_err(|e| format!("cannot build TOTP: {e}"))
}

/// The `otpauth://` URI an authenticator app enrolls from.
pub fn provisioning_uri(secret: &str, account: &str) -> Result<String, String> {
    Ok(totp(secret, account)?.get_url())
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpFailure {
    /// Wrong, malformed, reused, or the user has no TOTP secret.
    Invalid,
    /// Too many failures for this user recently; the window ends in this many seconds.
    RateLimited { retry_after_secs: u64 },
    /// The shared replay window could not answer (`redis.on_error: refuse`).
    Unavailable,
}

impl From<crate::fleet::FleetUnavailable> for TotpFailure {
    fn from(_: crate::fleet::FleetUnavailable) -> TotpFailure {
        TotpFailure::Unavailable
    }
}

pub struct TotpVerifier {
    used: moka::sync::Cache<(i64, String), ()>,
    failures: moka::sync::Cache<i64, Arc<Failures>>,
    fleet: Option<Arc<FleetClaims>>,
}

/// A user's failed codes in the window that began at `since`.
struct Failures {
    count: AtomicU32,
    since: Instant,
}

impl Default for TotpVerifier {
    fn default() -> Self {
        TotpVerifier::new(None)
    }
}

/// How long a code stays valid: at most (2 * SKEW + 1) steps.
const CODE_LIFETIME: Duration = Duration::from_secs(STEP * (2 * SKEW as u64 + 1));

impl TotpVerifier {
    /// `fleet`: claim codes and count failures in Redis too.
    pub fn new(fleet: Option<Arc<FleetClaims>>) -> TotpVerifier {
        TotpVerifier {
            used: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(CODE_LIFETIME)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            fleet,
        }
    }

    pub async fn verify(
        &self,
        user_id: i64,
        account: &str,
        secret: Option<&str>,
        code: &[u8],
    ) -> Result<(), TotpFailure> {
        if let Some(retry_after_secs) = self.rate_limited(user_id).await? {
            return Err(TotpFailure::RateLimited { retry_after_secs });
        }
        let valid = (|| {
            let code = std::str::from_utf8(code).ok()?.trim();
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let totp = totp(secret?, account).ok()?;
            totp.check_current(code).ok()?.then(|| code.to_owned())
        })();
        let accepted = match valid {
            Some(code) => self.claim(user_id, code).await?,
            None => false,
        };
        if accepted {
            return Ok(());
        }
        self.count_failure(user_id).await?;
        Err(TotpFailure::Invalid)
    }

    /// `Some(seconds)` while the user's failures are at the limit.
    async fn rate_limited(&self, user_id: i64) -> Result<Option<u64>, TotpFailure> {
        if let Some(fleet) = &self.fleet {
            let claim = user_id.to_le_bytes();
            if let Answer::Fleet(count) = fleet.peek(ClaimKind::TotpFailures, &claim).await? {
                return Ok(
                    (count.count >= u64::from(MAX_FAILURES)).then(|| count.retry_after_secs())
                );
            }
        }
        let failures = self.local_failures(user_id);
        if failures.count.load(Ordering::Acquire) < MAX_FAILURES {
            return Ok(None);
        }
        let left = FAILURE_WINDOW.saturating_sub(failures.since.elapsed());
        Ok(Some(left.as_secs_f64().ceil().max(1.0) as u64))
    }

    /// First use wins, atomically: on this replica first, then across the fleet.
    async fn claim(&self, user_id: i64, code: String) -> Result<bool, TotpFailure> {
        let mut claim = user_id.to_le_bytes().to_vec();
        claim.extend_from_slice(code.as_bytes());
        let key = (user_id, code);
        if !self.used.entry(key.clone()).or_insert(()).is_fresh() {
            return Ok(false);
        }
        let Some(fleet) = &self.fleet else {
            return Ok(true);
        };
        match fleet
            .claim(ClaimKind::TotpCode, &claim, CODE_LIFETIME)
            .await
        {
            Ok(Answer::Fleet(won)) => Ok(won),
            Ok(Answer::Local) => Ok(true),
            Err(unavailable) => {
                // Not used: the code may be tried again once Redis answers.
                self.used.invalidate(&key);
                Err(unavailable.into())
            }
        }
    }

    async fn count_failure(&self, user_id: i64) -> Result<(), TotpFailure> {
        if let Some(fleet) = &self.fleet {
            let claim = user_id.to_le_bytes();
            let counted = fleet
                .count(ClaimKind::TotpFailures, &claim, 0, FAILURE_WINDOW)
                .await?;
            if let Answer::Fleet(_) = counted {
                return Ok(());
            }
        }
        self.local_failures(user_id)
            .count
            .fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn local_failures(&self, user_id: i64) -> Arc<Failures> {
        self.failures.get_with(user_id, || {
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

    fn current_code(secret: &str) -> String {
        totp(secret, "john").unwrap().generate_current().unwrap()
    }

    #[tokio::test]
    async fn codes_verify_once() {
        let secret = generate_secret();
        let verifier = TotpVerifier::new(None);
        let code = current_code(&secret);
        assert_eq!(
            verifier
                .verify(1, "john", Some(&secret), code.as_bytes())
                .await,
            Ok(())
        );
        assert_eq!(
            verifier
                .verify(1, "john", Some(&secret), code.as_bytes())
                .await,
            Err(TotpFailure::Invalid),
            "a code cannot be used twice"
        );
        assert!(provisioning_uri(&secret, "john")
            .unwrap()
            .starts_with("otpauth://totp/"));
    }

    #[tokio::test]
    async fn failures_are_rate_limited_per_user() {
        let secret = generate_secret();
        let verifier = TotpVerifier::new(None);
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                verifier.verify(2, "mary", Some(&secret), b"000000x").await,
                Err(TotpFailure::Invalid)
            );
        }
        let code = current_code(&secret);
        assert!(matches!(
            verifier.verify(2, "mary", Some(&secret), code.as_bytes()).await,
            Err(TotpFailure::RateLimited { retry_after_secs }) if (299..=300).contains(&retry_after_secs)
        ));
        assert_eq!(
            verifier
                .verify(3, "x", Some(&secret), code.as_bytes())
                .await,
            Ok(()),
            "per user"
        );
        assert_eq!(
            verifier.verify(4, "y", None, code.as_bytes()).await,
            Err(TotpFailure::Invalid),
            "no secret, no second factor"
        );
    }
}
