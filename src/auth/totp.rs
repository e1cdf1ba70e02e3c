//! Second factor (SPEC §1, §4): RFC 6238 TOTP codes (SHA-1, 6 digits, 30 s steps, ±1 step),
//! sent as `X-Totp-Code` beside HTTP Basic. Password + code is the ADMINISTRATIVE level.
//!
//! A code is accepted once: used codes are remembered per user for the steps they could be
//! valid in. Failed codes are counted per user; past the limit the user's TOTP logins are
//! refused until the window passes, so six digits cannot be brute-forced.

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
}

pub struct TotpVerifier {
    used: moka::sync::Cache<(i64, String), ()>,
    failures: moka::sync::Cache<i64, Arc<Failures>>,
}

/// A user's failed codes in the window that began at `since`.
struct Failures {
    count: AtomicU32,
    since: Instant,
}

impl Default for TotpVerifier {
    fn default() -> Self {
        TotpVerifier::new()
    }
}

impl TotpVerifier {
    pub fn new() -> TotpVerifier {
        TotpVerifier {
            // A code is valid for at most (2 * SKEW + 1) steps.
            used: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(STEP * (2 * u64::from(SKEW) + 1)))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }

    pub fn verify(
        &self,
        user_id: i64,
        account: &str,
        secret: Option<&str>,
        code: &[u8],
    ) -> Result<(), TotpFailure> {
        let failures = self.failures.get_with(user_id, || {
            Arc::new(Failures {
                count: AtomicU32::new(0),
                since: Instant::now(),
            })
        });
        if failures.count.load(Ordering::Acquire) >= MAX_FAILURES {
            let left = FAILURE_WINDOW.saturating_sub(failures.since.elapsed());
            return Err(TotpFailure::RateLimited {
                retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        let ok = (|| {
            let code = std::str::from_utf8(code).ok()?.trim();
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let totp = totp(secret?, account).ok()?;
            totp.check_current(code).ok()?.then_some(())?;
            // First use wins, atomically.
            self.used
                .entry((user_id, code.to_owned()))
                .or_insert(())
                .is_fresh()
                .then_some(())
        })();
        match ok {
            Some(()) => Ok(()),
            None => {
                failures.count.fetch_add(1, Ordering::AcqRel);
                Err(TotpFailure::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_code(secret: &str) -> String {
        totp(secret, "john").unwrap().generate_current().unwrap()
    }

    #[test]
    fn codes_verify_once() {
        let secret = generate_secret();
        let verifier = TotpVerifier::new();
        let code = current_code(&secret);
        assert_eq!(
            verifier.verify(1, "john", Some(&secret), code.as_bytes()),
            Ok(())
        );
        assert_eq!(
            verifier.verify(1, "john", Some(&secret), code.as_bytes()),
            Err(TotpFailure::Invalid),
            "a code cannot be used twice"
        );
        assert!(provisioning_uri(&secret, "john")
            .unwrap()
            .starts_with("otpauth://totp/"));
    }

    #[test]
    fn failures_are_rate_limited_per_user() {
        let secret = generate_secret();
        let verifier = TotpVerifier::new();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                verifier.verify(2, "mary", Some(&secret), b"000000x"),
                Err(TotpFailure::Invalid)
            );
        }
        let code = current_code(&secret);
        assert!(matches!(
            verifier.verify(2, "mary", Some(&secret), code.as_bytes()),
            Err(TotpFailure::RateLimited { retry_after_secs }) if (299..=300).contains(&retry_after_secs)
        ));
        assert_eq!(
            verifier.verify(3, "x", Some(&secret), code.as_bytes()),
            Ok(()),
            "per user"
        );
        assert_eq!(
            verifier.verify(4, "y", None, code.as_bytes()),
            Err(TotpFailure::Invalid),
            "no secret, no second factor"
        );
    }
}
