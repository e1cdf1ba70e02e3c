//! Authentication: turning a request's credential into a [`Principal`], or a reason why not.
//!
//! Each credential kind lives in its own module and answers the same question the same way:
//! `Ok(Principal)` or `Err(AuthError)`. The proxy picks the authenticator by the credential the
//! request carries (see [`Credential::find`]) and never consults more than one.

pub mod api_key;
pub mod basic;
pub mod cache;
pub mod client_ip;
pub mod directory;
pub mod fleet;
pub mod fleet_limit;
pub mod invalidation;
pub mod password;
pub mod quota;
pub mod ratelimit;
pub mod replay;
pub mod revalidation;
pub mod signature;
pub mod throttle;
pub mod token;
pub mod totp;
pub mod usage;
pub mod users;

pub use keyward_core::{
    identity_header, AuthError, AuthMethod, CredentialKind, CredentialKinds, IdentityHeaders,
    Principal, SecurityLevel,
};

use crate::ratelimit::CheckBudget;
use keyward_metrics::Metrics;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The credential a request presents, found without any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    Basic(&'a [u8]),
    ApiKey(&'a [u8]),
    /// `Signature-Input` / `Signature`; the whole request is the credential.
    Signature,
}

impl<'a> Credential<'a> {
    /// Finds the one credential of a request. Several explicit credentials are refused rather
    /// than guessed between: a proxy that picks one silently can be talked into the wrong one.
    pub fn find(headers: &'a http::HeaderMap) -> Result<Credential<'a>, AuthError> {
        const SIGNATURE_INPUT: http::HeaderName = http::HeaderName::from_static("signature-input");
        const SIGNATURE: http::HeaderName = http::HeaderName::from_static("signature");
        // One pass over the headers rather than four look-ups, each hashing its name: this
        // runs on every request, and requests carry few headers.
        let (mut authorization, mut api_key, mut signed) = (Seen::None, Seen::None, false);
        for (name, value) in headers {
            if name == http::header::AUTHORIZATION {
                authorization.add(value.as_bytes());
            } else if name == api_key::HEADER_NAME {
                api_key.add(value.as_bytes());
            } else if name == SIGNATURE_INPUT || name == SIGNATURE {
                signed = true;
            }
        }
        let basic = match authorization {
            Seen::Several => return Err(AuthError::Ambiguous),
            Seen::Once(value) if basic::is_basic(value) => Some(Credential::Basic(value)),
            // An Authorization scheme keyward does not know is not a credential for it; refuse
            // rather than forward something the upstream might honour.
            Seen::Once(_) => return Err(AuthError::Malformed),
            Seen::None => None,
        };
        // Several keys in one request cannot be told apart: malformed, not ambiguous.
        let api_key = match api_key {
            Seen::Several => return Err(AuthError::Malformed),
            Seen::Once(value) => Some(Credential::ApiKey(value)),
            Seen::None => None,
        };
        let signed = signed.then_some(Credential::Signature);
        let mut found = [basic, api_key, signed].into_iter().flatten();
        match (found.next(), found.next()) {
            (Some(_), Some(_)) => Err(AuthError::Ambiguous),
            (Some(one), None) => Ok(one),
            (None, _) => Ok(Credential::None),
        }
    }

    pub fn kind(&self) -> Option<CredentialKind> {
        match self {
            Credential::None => None,
            Credential::Basic(_) => Some(CredentialKind::Basic),
            Credential::ApiKey(_) => Some(CredentialKind::ApiKey),
            Credential::Signature => Some(CredentialKind::Signature),
        }
    }
}

/// The values of a header that may appear at most once, as far as seen.
enum Seen<'a> {
    None,
    Once(&'a [u8]),
    Several,
}

impl<'a> Seen<'a> {
    fn add(&mut self, value: &'a [u8]) {
        *self = match self {
            Seen::None => Seen::Once(value),
            _ => Seen::Several,
        };
    }
}

/// A signature whose headers verified, waiting for its body.
pub struct PendingSignature {
    verified: signature::VerifiedSignature,
    spent: std::time::Duration,
}

impl PendingSignature {
    pub fn expected_body(&self) -> Option<&signature::ExpectedDigest> {
        self.verified.expected_body()
    }

    /// The signing key's principal: its rate limit is counted before the body is read.
    pub fn principal(&self) -> &Principal {
        self.verified.principal()
    }
}

/// Every authenticator, behind the one question the proxy and the admin API ask.
pub struct Authenticator {
    pub basic: Arc<basic::BasicAuthenticator>,
    pub api_keys: Arc<api_key::ApiKeyAuthenticator>,
    pub signatures: Arc<signature::SignatureAuthenticator>,
    pub tokens: Arc<token::TokenAuthenticator>,
    /// API keys' quotas per day or month.
    pub quotas: Arc<quota::QuotaCounter>,
    metrics: Arc<Metrics>,
}

/// The outcome of authenticating a whole request.
#[derive(Debug, Default)]
pub struct Authenticated {
    pub principal: Option<Arc<Principal>>,
    /// The request's `token` cookie was refused: the answer clears it.
    pub clear_token_cookie: bool,
    /// The credential's rate limit was already counted (a signed body's, before the body
    /// was read), so the caller does not count it again.
    pub limit_counted: bool,
}

impl Authenticator {
    pub fn new(
        basic: Arc<basic::BasicAuthenticator>,
        api_keys: Arc<api_key::ApiKeyAuthenticator>,
        signatures: Arc<signature::SignatureAuthenticator>,
        tokens: Arc<token::TokenAuthenticator>,
        quotas: Arc<quota::QuotaCounter>,
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        Authenticator {
            basic,
            api_keys,
            signatures,
            tokens,
            quotas,
            metrics,
        }
    }

    /// Counts a request of `principal` against its API key's quota, if it has one (checked
    /// last, just before the request is forwarded). A refusal is counted in the metrics.
    pub async fn take_quota(&self, principal: &Principal) -> Result<(), quota::QuotaRefusal> {
        let (Some(quota), ratelimit::LimitKey::ApiKey { user_id, key_id }) =
            (principal.rate_limit.quota, principal.rate_limit.key)
        else {
            return Ok(());
        };
        match self
            .quotas
            .take(user_id, key_id, quota, keyward_core::now_ms())
            .await
        {
            Ok(_) => Ok(()),
            Err(refusal) => {
                if let quota::QuotaRefusal::Exhausted(_) = refusal {
                    self.metrics.rate_limited(ratelimit::LimitKind::Quota);
                }
                Err(refusal)
            }
        }
    }

    /// Authenticates a request by its explicit credential or, failing that, its `token`
    /// cookie. A refused cookie makes the request anonymous (and its cookie cleared); the
    /// route then decides.
    pub async fn authenticate_request(
        &self,
        request: &signature::RequestView<'_>,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Authenticated, AuthError> {
        let credential = self.find_credential(&request.header.headers)?;
        self.authenticate_found(credential, request, client_ip, budget)
            .await
    }

    /// [`Credential::find`], counting a refusal in the metrics.
    pub fn find_credential<'a>(
        &self,
        headers: &'a http::HeaderMap,
    ) -> Result<Credential<'a>, AuthError> {
        Credential::find(headers).inspect_err(|e| {
            self.metrics.auth_failure("unknown", e.reason());
        })
    }

    /// [`Self::authenticate_request`] for a caller that has already found the credential
    /// (the proxy needs it earlier, to know whether a signed body must be read first).
    pub async fn authenticate_found(
        &self,
        credential: Credential<'_>,
        request: &signature::RequestView<'_>,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Authenticated, AuthError> {
        let headers = &request.header.headers;
        if credential != Credential::None {
            return Ok(Authenticated {
                principal: self
                    .authenticate(credential, request, client_ip, budget)
                    .await?,
                ..Default::default()
            });
        }
        let token = match token::find_cookie(headers) {
            token::CookieToken::Absent => return Ok(Authenticated::default()),
            token::CookieToken::Malformed => {
                self.metrics.auth_failure("token", "malformed");
                return Ok(Authenticated {
                    clear_token_cookie: true,
                    ..Default::default()
                });
            }
            token::CookieToken::Present(token) => token,
        };
        let started = Instant::now();
        let result = self.tokens.authenticate(token, budget).await;
        if let Err(AuthError::ClientBudget(limited)) = &result {
            self.metrics.rate_limited(limited.kind);
            return Err(AuthError::ClientBudget(*limited));
        }
        self.metrics
            .auth_duration("token", started.elapsed().as_secs_f64());
        match result {
            Ok(principal) => Ok(Authenticated {
                principal: Some(principal),
                ..Default::default()
            }),
            Err(AuthError::StoreUnavailable) => Err(AuthError::StoreUnavailable),
            Err(e) => {
                self.metrics.auth_failure("token", e.reason());
                Ok(Authenticated {
                    clear_token_cookie: true,
                    ..Default::default()
                })
            }
        }
    }

    /// Checks the request's credential, if it presents one, and reports the outcome.
    pub async fn authenticate(
        &self,
        credential: Credential<'_>,
        request: &signature::RequestView<'_>,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Option<Arc<Principal>>, AuthError> {
        let Some(kind) = credential.kind() else {
            return Ok(None);
        };
        let started = Instant::now();
        let result = match credential {
            Credential::Basic(value) => {
                let code = request
                    .header
                    .headers
                    .get(&totp::HEADER_NAME)
                    .map(|v| v.as_bytes());
                self.basic
                    .authenticate(value, code, client_ip, budget)
                    .await
            }
            Credential::ApiKey(value) => self.api_keys.authenticate(value, client_ip, budget).await,
            Credential::Signature => {
                self.signatures
                    .authenticate(request, client_ip, budget)
                    .await
            }
            Credential::None => return Ok(None),
        };
        self.report(kind, started.elapsed(), result.as_ref().err());
        // The metrics keep the real cause; a password login's answer does not (SPEC §6).
        let result = match kind {
            CredentialKind::Basic => result.map_err(AuthError::password_answer),
            _ => result,
        };
        result.map(Some)
    }

    /// The first half of a signed request with a body: everything but the body (see
    /// `SignatureAuthenticator::verify`), so the body is read only behind a good signature.
    pub async fn verify_signature(
        &self,
        request: &signature::RequestView<'_>,
        framed_body: bool,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<PendingSignature, AuthError> {
        let started = Instant::now();
        let result = self
            .signatures
            .verify(request, framed_body, client_ip, budget)
            .await;
        let spent = started.elapsed();
        match result {
            Ok(verified) => Ok(PendingSignature { verified, spent }),
            Err(e) => {
                self.report(CredentialKind::Signature, spent, Some(&e));
                Err(e)
            }
        }
    }

    /// The second half: the body's hashes, then the replay claim. The reported duration
    /// is the two halves' work, not the time the client took to send the body.
    pub async fn accept_signature(
        &self,
        pending: PendingSignature,
        body: Option<signature::BodyHasher>,
        client_ip: IpAddr,
    ) -> Result<Arc<Principal>, AuthError> {
        let started = Instant::now();
        let result = self
            .signatures
            .accept(pending.verified, body, client_ip)
            .await;
        let spent = pending.spent + started.elapsed();
        self.report(CredentialKind::Signature, spent, result.as_ref().err());
        result
    }

    fn report(&self, kind: CredentialKind, spent: std::time::Duration, error: Option<&AuthError>) {
        match error {
            Some(AuthError::ReplayWindowFull) => self.metrics.replay_window_full(),
            // Refused by the client's budget before any check: a rate limit, not a check.
            Some(AuthError::ClientBudget(limited)) => {
                self.metrics.rate_limited(limited.kind);
                return;
            }
            // No place to wait for argon2: nothing was checked, so no duration either.
            Some(e @ AuthError::PasswordChecksBusy) => {
                self.metrics.auth_failure(kind.label(), e.reason());
                return;
            }
            _ => {}
        }
        self.metrics
            .auth_duration(kind.label(), spent.as_secs_f64());
        if let Some(e) = error {
            self.metrics.auth_failure(kind.label(), e.reason());
            tracing::debug!(
                method = kind.label(),
                reason = e.reason(),
                "credential refused"
            );
        }
    }

    /// Drops everything cached about a user, for every credential kind.
    pub fn invalidate_user(&self, user_id: i64) {
        self.basic.invalidate_user(user_id);
        self.api_keys.invalidate_user(user_id);
        self.signatures.invalidate_user(user_id);
        self.tokens.invalidate_user(user_id);
    }

    /// Drops every cached credential of every user.
    pub fn invalidate_all(&self) {
        self.basic.invalidate_all();
        self.api_keys.invalidate_all();
        self.signatures.invalidate_all();
        self.tokens.invalidate_all();
    }

    /// Writes recorded last uses of keys to the store.
    pub async fn flush_usage(&self) {
        self.api_keys.flush_usage().await;
        self.signatures.flush_usage().await;
    }

    /// Publishes cache sizes to the metrics.
    pub async fn report_cache_entries(&self) {
        self.metrics
            .set_cache_entries(basic::CACHE_NAME, self.basic.entry_count().await);
        for (cache, entries) in self.api_keys.entry_counts().await {
            self.metrics.set_cache_entries(cache, entries);
        }
        for (cache, entries) in self.tokens.entry_counts().await {
            self.metrics.set_cache_entries(cache, entries);
        }
        for (cache, entries) in self.signatures.entry_counts().await {
            self.metrics.set_cache_entries(cache, entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered() {
        assert!(SecurityLevel::External < SecurityLevel::Default);
        assert!(SecurityLevel::Default < SecurityLevel::Administrative);
    }

    #[test]
    fn credential_kinds_set() {
        let set: CredentialKinds = [CredentialKind::ApiKey, CredentialKind::Basic]
            .into_iter()
            .collect();
        assert!(set.contains(CredentialKind::Basic));
        assert!(!set.contains(CredentialKind::Token));
        assert!(CredentialKinds::ALL.contains(CredentialKind::Signature));
    }

    #[test]
    fn two_authorization_headers_are_ambiguous() {
        let mut headers = http::HeaderMap::new();
        headers.append("authorization", "Basic YTpi".parse().unwrap());
        headers.append("authorization", "Basic YzpK".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Ambiguous));
    }

    #[test]
    fn mixed_and_repeated_credentials() {
        let mut headers = http::HeaderMap::new();
        headers.append("argus-api-key", "a/1/x".parse().unwrap());
        assert!(matches!(
            Credential::find(&headers),
            Ok(Credential::ApiKey(b"a/1/x"))
        ));
        headers.append("authorization", "Basic YTpi".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Ambiguous));
        headers.remove("authorization");
        headers.append("argus-api-key", "a/2/x".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Malformed));
    }

    /// Either signature header alone makes a signed request; with another credential it is
    /// ambiguous, in whatever order the headers came.
    #[test]
    fn signature_headers_and_other_credentials() {
        for name in ["signature-input", "signature"] {
            let mut headers = http::HeaderMap::new();
            headers.append("x-other", "1".parse().unwrap());
            headers.append(name, "sig=:AA==:".parse().unwrap());
            assert!(matches!(
                Credential::find(&headers),
                Ok(Credential::Signature)
            ));
            headers.append("argus-api-key", "a/1/x".parse().unwrap());
            assert_eq!(Credential::find(&headers), Err(AuthError::Ambiguous));
            let mut first_key = http::HeaderMap::new();
            first_key.append("argus-api-key", "a/1/x".parse().unwrap());
            first_key.append(name, "sig=:AA==:".parse().unwrap());
            assert_eq!(Credential::find(&first_key), Err(AuthError::Ambiguous));
        }
        assert!(matches!(
            Credential::find(&http::HeaderMap::new()),
            Ok(Credential::None)
        ));
    }

    #[test]
    fn unknown_authorization_scheme_is_malformed() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Malformed));
    }
}
