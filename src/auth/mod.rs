//! Authentication: turning a request's credential into a [`Principal`], or a reason why not.
//!
//! Each credential kind lives in its own module and answers the same question the same way:
//! `Ok(Principal)` or `Err(AuthError)`. The proxy picks the authenticator by the credential the
//! request carries (see [`Credential::find`]) and never consults more than one.

pub mod api_key;
pub mod basic;
pub mod client_ip;
pub mod password;
pub mod replay;
pub mod signature;
pub mod throttle;
pub mod token;
pub mod totp;
pub mod usage;

use crate::metrics::Metrics;
use crate::ratelimit::{CheckBudget, CredentialLimit};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// How much a request is trusted, lowest to highest (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityLevel {
    External,
    Default,
    Administrative,
}

impl SecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityLevel::External => "EXTERNAL",
            SecurityLevel::Default => "DEFAULT",
            SecurityLevel::Administrative => "ADMINISTRATIVE",
        }
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a principal proved who it is; the value of `X-Keyward-Auth-Method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Signature,
    Token,
    Password,
    Totp,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "APIKEY",
            AuthMethod::Signature => "SIGNATURE",
            AuthMethod::Token => "TOKEN",
            AuthMethod::Password => "PASSWORD",
            AuthMethod::Totp => "TOTP",
        }
    }
}

/// The kinds of credential a route may accept (`routes[].allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ApiKey,
    Signature,
    Token,
    Basic,
}

impl CredentialKind {
    /// The label used in metrics and logs (`method="basic"`).
    pub fn label(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "apikey",
            CredentialKind::Signature => "signature",
            CredentialKind::Token => "token",
            CredentialKind::Basic => "basic",
        }
    }

    fn bit(self) -> u8 {
        match self {
            CredentialKind::ApiKey => 1,
            CredentialKind::Signature => 2,
            CredentialKind::Token => 4,
            CredentialKind::Basic => 8,
        }
    }
}

impl FromStr for CredentialKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "apikey" => Ok(CredentialKind::ApiKey),
            "signature" => Ok(CredentialKind::Signature),
            "token" => Ok(CredentialKind::Token),
            "basic" => Ok(CredentialKind::Basic),
            _ => Err(()),
        }
    }
}

/// A set of [`CredentialKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialKinds(u8);

impl CredentialKinds {
    pub const ALL: CredentialKinds = CredentialKinds(1 | 2 | 4 | 8);

    pub fn contains(self, kind: CredentialKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl FromIterator<CredentialKind> for CredentialKinds {
    fn from_iter<I: IntoIterator<Item = CredentialKind>>(iter: I) -> Self {
        CredentialKinds(iter.into_iter().fold(0, |acc, k| acc | k.bit()))
    }
}

/// The outcome of a successful authentication (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub user_name: String,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub level: SecurityLevel,
    pub method: AuthMethod,
    pub kind: CredentialKind,
    /// Key prefix, signature key id or token name; the user name for a password.
    pub credential_id: String,
    pub read_only: bool,
    pub customers: Vec<String>,
    /// Set for a tenant token (SPEC §4): the principal is the tenant's application, acting
    /// under its owner's name at EXTERNAL with no functions, and never an administrator.
    pub tenant: Option<String>,
    /// Whose quota this principal's requests count against, and the credential's own quota.
    pub rate_limit: CredentialLimit,
    /// The `X-Keyward-*` headers for this principal, built on first use. Principals live in the
    /// credential caches, so a warm request forwards them without formatting anything.
    pub identity: OnceLock<Vec<(http::HeaderName, http::HeaderValue)>>,
}

/// The identity headers keyward sets on forwarded requests (SPEC §6), parsed at compile time.
pub mod identity_header {
    use http::HeaderName;
    pub const USER: HeaderName = HeaderName::from_static("x-keyward-user");
    pub const USER_ID: HeaderName = HeaderName::from_static("x-keyward-user-id");
    pub const CUSTOMER: HeaderName = HeaderName::from_static("x-keyward-customer");
    pub const FUNCTIONS: HeaderName = HeaderName::from_static("x-keyward-functions");
    pub const SECURITY_LEVEL: HeaderName = HeaderName::from_static("x-keyward-security-level");
    pub const AUTH_METHOD: HeaderName = HeaderName::from_static("x-keyward-auth-method");
    pub const CREDENTIAL: HeaderName = HeaderName::from_static("x-keyward-credential");
    /// Only on requests authenticated by a tenant token (SPEC §4).
    pub const TENANT: HeaderName = HeaderName::from_static("x-keyward-tenant");
}

impl Principal {
    /// The identity headers forwarded upstream (SPEC §6). A value that cannot be a header
    /// (a control character in a stored name) is left out rather than failing the request.
    pub fn identity_headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        self.identity.get_or_init(|| {
            let mut customers = self.customers.join(",");
            if customers.is_empty() {
                customers = self.customer.clone().unwrap_or_default();
            }
            [
                (identity_header::USER, self.user_name.clone()),
                (identity_header::USER_ID, self.user_id.to_string()),
                (identity_header::CUSTOMER, customers),
                (identity_header::FUNCTIONS, self.functions.join(",")),
                (
                    identity_header::SECURITY_LEVEL,
                    self.level.as_str().to_owned(),
                ),
                (
                    identity_header::AUTH_METHOD,
                    self.method.as_str().to_owned(),
                ),
                (identity_header::CREDENTIAL, self.credential_id.clone()),
                (
                    identity_header::TENANT,
                    self.tenant.clone().unwrap_or_default(),
                ),
            ]
            .into_iter()
            .filter(|(name, value)| !value.is_empty() || *name == identity_header::FUNCTIONS)
            .filter_map(|(name, value)| Some((name, http::HeaderValue::try_from(value).ok()?)))
            .collect()
        })
    }

    pub fn has_function(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f == function)
    }
}

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
    Signature(signature::SignatureError),
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
    ClientBudget(crate::ratelimit::Limited),
}

impl From<crate::fleet::FleetUnavailable> for AuthError {
    fn from(_: crate::fleet::FleetUnavailable) -> AuthError {
        AuthError::ReplayWindowUnavailable
    }
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
        // Looked up by pre-parsed names: a `&str` name is re-hashed on every look-up.
        const SIGNATURE_INPUT: http::HeaderName = http::HeaderName::from_static("signature-input");
        const SIGNATURE: http::HeaderName = http::HeaderName::from_static("signature");
        let basic = match single(headers, &http::header::AUTHORIZATION)
            .map_err(|()| AuthError::Ambiguous)?
        {
            Some(value) if basic::is_basic(value) => Some(Credential::Basic(value)),
            // An Authorization scheme keyward does not know is not a credential for it; refuse
            // rather than forward something the upstream might honour.
            Some(_) => return Err(AuthError::Malformed),
            None => None,
        };
        // Several keys in one request cannot be told apart: malformed, not ambiguous.
        let api_key = single(headers, &api_key::HEADER_NAME)
            .map_err(|()| AuthError::Malformed)?
            .map(Credential::ApiKey);
        let signed = (headers.contains_key(&SIGNATURE_INPUT) || headers.contains_key(&SIGNATURE))
            .then_some(Credential::Signature);
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

/// The value of a header that may appear at most once; `Err` when it appears several times.
fn single<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a [u8]>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first.map(|v| v.as_bytes()))
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
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        Authenticator {
            basic,
            api_keys,
            signatures,
            tokens,
            metrics,
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

    #[test]
    fn unknown_authorization_scheme_is_malformed() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Malformed));
    }
}
