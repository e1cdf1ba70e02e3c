//! Why a request was refused: the typed reasons every layer shares. Each maps to one status
//! code (in the HTTP layer's responder) and one metrics reason.

use crate::limit::Limited;

/// Why a credential was refused. Each maps to one status code and one metrics reason
/// (`keyward_auth_failures_total{reason}`) in [`AuthError::reason`] and the proxy's responder.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("the credential is malformed")]
    Malformed,
    #[error("unknown user or key")]
    UnknownKey,
    #[error("wrong secret")]
    BadSecret,
    #[error("the account is locked")]
    Locked,
    #[error("the credential has expired")]
    Expired,
    #[error("the credential may not be used from this address")]
    SourceNotAllowed,
    #[error("more than one credential was presented")]
    Ambiguous,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("wrong or reused TOTP code")]
    BadTotp,
    /// Too many wrong TOTP codes for this user (429; try again in this many seconds).
    #[error("too many failed TOTP codes; try again in {0} s")]
    TotpRateLimited(u64),
    /// What a client is told of any failed password login (unknown user, wrong password,
    /// locked account), so that the answer reveals none of them.
    #[error("wrong user name or password")]
    BadCredentials,
    /// Too many failed password logins for this user name from this address (429).
    #[error("too many failed password logins; try again in {0} s")]
    PasswordThrottled(u64),
    /// The store could not be asked; the credential may well be valid (answered 503).
    #[error("the credential store is unavailable")]
    StoreUnavailable,
    /// The directory (`identity.ldap`) could not be asked about a name that is not a local
    /// user: the login may well be valid (answered 503 with `Retry-After`, never 401).
    #[error("the directory is unavailable")]
    DirectoryUnavailable,
    /// The shared replay window (Redis) could not answer and `replay.on_redis_error: refuse`
    /// holds: a signature or TOTP code cannot be known unused (answered 503).
    #[error("the shared replay window is unavailable")]
    ReplayWindowUnavailable,
    /// The replay window holds as many live signatures as `signatures.replay_memory` allows;
    /// a new signature is refused rather than a live one forgotten (503, SPEC §15).
    #[error("the replay window is full")]
    ReplayWindowFull,
    /// Every place in the queue of password checks is taken (503).
    #[error("too many password checks are waiting")]
    PasswordChecksBusy,
    /// The client's budget for refused credentials is used up: the check that would cost a
    /// store read or argon2 is not made (429, SPEC §15).
    #[error("too many refused credentials from this address")]
    ClientBudget(Limited),
}

impl AuthError {
    /// The `reason` label of `keyward_auth_failures_total`, and the reason in 401 bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSecret => "bad_secret",
            AuthError::Locked => "locked",
            AuthError::Expired => "expired",
            AuthError::SourceNotAllowed => "source_not_allowed",
            AuthError::Ambiguous => "ambiguous_credentials",
            AuthError::Signature(e) => e.reason(),
            AuthError::BadTotp => "bad_totp",
            AuthError::TotpRateLimited(_) => "totp_rate_limited",
            AuthError::BadCredentials => "bad_credentials",
            AuthError::PasswordThrottled(_) => "too_many_failures",
            AuthError::StoreUnavailable => "store_unavailable",
            AuthError::DirectoryUnavailable => "directory_unavailable",
            AuthError::ReplayWindowUnavailable => "replay_window_unavailable",
            AuthError::ReplayWindowFull => "replay_window_full",
            AuthError::PasswordChecksBusy => "password_checks_busy",
            AuthError::ClientBudget(_) => "rate_limited",
        }
    }

    /// The seconds a client should wait before trying again, for refusals that have one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthError::PasswordThrottled(secs) | AuthError::TotpRateLimited(secs) => Some(*secs),
            _ => None,
        }
    }

    /// What the client is told of a failed password login: one reason whatever failed. The
    /// metrics count the real cause before this is applied. A wrong TOTP code keeps its own
    /// reason: the password alone is a complete login, so it reveals nothing a guesser could
    /// not learn without the code.
    pub fn password_answer(self) -> AuthError {
        match self {
            AuthError::UnknownKey | AuthError::BadSecret | AuthError::Locked => {
                AuthError::BadCredentials
            }
            other => other,
        }
    }
}

/// Why a signed request was refused, beyond the reasons shared with other credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature headers")]
    Malformed,
    #[error("a required component is not covered")]
    MissingComponent,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the body does not match Content-Digest")]
    DigestMismatch,
    #[error("created lies outside the accepted window")]
    Stale,
    #[error("the signature or key has expired")]
    Expired,
    #[error("this signature was already used")]
    Replay,
    #[error("clock skew detected: the client's clock moved against its signature session")]
    ClockSkew,
}

impl SignatureError {
    /// The `reason` label and the reason in 401 bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Malformed | SignatureError::MissingComponent => "malformed",
            SignatureError::BadSignature => "bad_signature",
            SignatureError::DigestMismatch => "digest_mismatch",
            SignatureError::Stale => "stale",
            SignatureError::Expired => "expired",
            SignatureError::Replay => "replay",
            SignatureError::ClockSkew => "clock_skew",
        }
    }
}

/// Redis could not answer and `on_redis_error: refuse` holds: the request gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared replay window (Redis) is unavailable")]
pub struct FleetUnavailable;

impl From<FleetUnavailable> for AuthError {
    fn from(_: FleetUnavailable) -> AuthError {
        AuthError::ReplayWindowUnavailable
    }
}

impl From<SignatureError> for AuthError {
    fn from(e: SignatureError) -> AuthError {
        AuthError::Signature(e)
    }
}
