//! HTTP Basic: a user name and password checked against the store.
//!
//! argon2 costs tens of milliseconds, so successful logins are cached for a short TTL, keyed by
//! an HMAC of the credential under a per-process random key (the cache never holds a password
//! or anything that could be brute-forced offline). Entries are dropped when the user changes.
//!
//! Guessing is throttled per (user name, client address) by [`PasswordThrottle`]; the client
//! is told one reason for every failure (see [`AuthError::password_answer`]).

use super::api_key::KeyHasher;
use super::password::PasswordHasher;
use super::throttle::PasswordThrottle;
use super::totp::{TotpFailure, TotpVerifier};
use super::{AuthError, AuthMethod, CredentialKind, Principal, SecurityLevel};
use crate::directory::{Directory, Login};
use crate::fleet::FleetClaims;
use crate::ratelimit::{CheckBudget, CredentialLimit, LimitKey};
use base64::Engine as _;
use keyward_metrics::Metrics;
use keyward_store::{AuditEvent, Db, DirectoryLogin, User, UserSource};
use rand::RngCore;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const CACHE_NAME: &str = keyward_metrics::cache_name::BASIC;
/// Longer `Authorization` values are refused before any decoding.
const MAX_HEADER_LEN: usize = 4096;

/// Whether an `Authorization` value uses the Basic scheme (case-insensitive, RFC 9110 §11.1).
pub fn is_basic(value: &[u8]) -> bool {
    value.len() >= 6 && value[..6].eq_ignore_ascii_case(b"basic ")
}

/// Splits `Basic <base64(user:password)>` into its parts.
pub fn parse(value: &[u8]) -> Result<(String, String), AuthError> {
    if value.len() > MAX_HEADER_LEN || !is_basic(value) {
        return Err(AuthError::Malformed);
    }
    let encoded = value[6..].trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(AuthError::Malformed)?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return Err(AuthError::Malformed);
    }
    Ok((user.to_owned(), password.to_owned()))
}

/// The principal a password login yields (SPEC §1: DEFAULT for internal and external users).
pub fn principal_for(user: &User) -> Principal {
    Principal {
        user_id: user.id,
        user_name: user.name.clone(),
        customer: user.customer.clone(),
        functions: user.functions.clone(),
        level: SecurityLevel::Default,
        method: AuthMethod::Password,
        kind: CredentialKind::Basic,
        credential_id: user.name.clone(),
        read_only: false,
        customers: user.customer.iter().cloned().collect(),
        tenant: None,
        rate_limit: CredentialLimit {
            key: LimitKey::Basic(user.id),
            own: None,
            quota: None,
            user_id: user.id,
        },
        identity: Default::default(),
    }
}

/// The audit record of a change the directory made: a login that created or updated a
/// directory user, or a revalidation that updated or locked one (auth method `LDAP`).
pub fn directory_audit(actor: &str, target_user: &str) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time: keyward_store::audit::now_rfc3339(),
        request_id: keyward_core::RequestId::random().as_str().to_owned(),
        actor: actor.into(),
        auth_method: "LDAP".into(),
        operation: "user.update".into(),
        target_user: target_user.into(),
        target_credential: String::new(),
        status: 200,
        outcome: "ok".into(),
        source_ip: None,
    }
}

/// A password check that is not cached: refused, or verified but raced by an invalidation.
#[derive(Debug)]
enum Unverified {
    Refused(AuthError),
    Raced(Arc<Principal>),
}

impl From<AuthError> for Unverified {
    fn from(e: AuthError) -> Self {
        Unverified::Refused(e)
    }
}

pub struct BasicAuthenticator {
    db: Db,
    hasher: PasswordHasher,
    cache: moka::future::Cache<[u8; 32], Arc<Principal>>,
    /// Keyed by a per-process random key.
    cache_key: KeyHasher,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    /// Bumped on every invalidation; a login that raced with one is not cached.
    generation: AtomicU64,
    totp: TotpVerifier,
    throttle: PasswordThrottle,
    /// `identity.ldap`: names that are not local users are checked there.
    directory: Option<Directory>,
}

/// How many failed logins a (user name, client address) pair may have, within what window.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    pub failures: u32,
    pub window: Duration,
}

impl BasicAuthenticator {
    pub fn new(
        db: Db,
        hasher: PasswordHasher,
        metrics: Arc<Metrics>,
        ttl: crate::cache::LiveDuration,
        capacity: u64,
        throttle: ThrottleSettings,
    ) -> BasicAuthenticator {
        let mut cache_key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut cache_key);
        let (hits, misses) = metrics.cache_counters(CACHE_NAME);
        BasicAuthenticator {
            db,
            hasher,
            hits,
            misses,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ttl.expiry())
                .support_invalidation_closures()
                .build(),
            cache_key: KeyHasher::new(cache_key),
            generation: AtomicU64::new(0),
            totp: TotpVerifier::new(None),
            throttle: PasswordThrottle::new(throttle.failures, throttle.window),
            directory: None,
        }
    }

    /// Checks names that are not local users against the directory (`identity.ldap`).
    pub fn with_directory(mut self, directory: Option<Directory>) -> Self {
        self.directory = directory;
        self
    }

    /// Claims TOTP codes and counts TOTP and password failures fleet-wide, in Redis.
    pub fn with_fleet(mut self, fleet: Option<Arc<FleetClaims>>) -> Self {
        self.totp = TotpVerifier::new(fleet.clone());
        self.throttle = self.throttle.with_fleet(fleet);
        self
    }

    /// Checks a Basic credential; with a TOTP code too, the principal is ADMINISTRATIVE.
    pub async fn authenticate(
        &self,
        header: &[u8],
        totp_code: Option<&[u8]>,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        let principal = self.password(header, client_ip, budget).await?;
        let Some(code) = totp_code else {
            return Ok(principal);
        };
        // The secret is read from the store: TOTP logins are for admin calls and token minting,
        // not the hot path, and the cache never holds second-factor material.
        let user_id = principal.user_id;
        budget.charge().map_err(AuthError::ClientBudget)?;
        let user = self
            .db
            .call(move |store| async move { store.user_by_id(user_id).await })
            .await
            .map_err(|_| AuthError::StoreUnavailable)?
            .ok_or(AuthError::UnknownKey)?;
        match self
            .totp
            .verify(user.id, &user.name, user.totp_secret.as_deref(), code)
            .await
        {
            Ok(()) => Ok(Arc::new(Principal {
                level: SecurityLevel::Administrative,
                method: AuthMethod::Totp,
                identity: Default::default(),
                ..(*principal).clone()
            })),
            Err(TotpFailure::Invalid) => Err(AuthError::BadTotp),
            Err(TotpFailure::RateLimited { retry_after_secs }) => {
                Err(AuthError::TotpRateLimited(retry_after_secs))
            }
            Err(TotpFailure::Unavailable) => Err(AuthError::ReplayWindowUnavailable),
        }
    }

    async fn password(
        &self,
        header: &[u8],
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        // Only headers that parsed and verified are cached, so a hit needs no parsing; the
        // name it carries is exactly the cached user's (names are matched byte for byte).
        let key = self.cache_key_for(header);
        if let Some(principal) = self.cache.get(&key).await {
            self.hits.inc();
            return self.cached(principal, client_ip).await;
        }
        self.misses.inc();
        // Paid for before the store or argon2 is asked, so that a flood of concurrent guesses
        // is refused at its budget, not after hashing every one of them (SPEC §15).
        budget.charge().map_err(AuthError::ClientBudget)?;
        // One verification per header at a time: requests that carry the same header while it
        // is being checked (a client's parallel requests when its cache entry expires) wait
        // for that one and share its answer. Each would otherwise count an attempt before
        // argon2 answers, and a burst of right passwords would use up the pair's attempts and
        // be throttled; identical guesses are one guess, so sharing gives a guesser nothing.
        let verifier = AtomicBool::new(false);
        let verified = self
            .cache
            .try_get_with(key, async {
                verifier.store(true, Ordering::Relaxed);
                self.verify(header, client_ip).await
            })
            .await;
        match verified {
            // Verified by another request's check, or found cached meanwhile: a throttled
            // pair is refused even with the right password.
            Ok(principal) if !verifier.load(Ordering::Relaxed) => {
                self.cached(principal, client_ip).await
            }
            Ok(principal) => Ok(principal),
            Err(unverified) => match &*unverified {
                Unverified::Raced(principal) => Ok(principal.clone()),
                Unverified::Refused(e) => Err(e.clone()),
            },
        }
    }

    /// A login answered from the success cache guesses nothing, but a throttled pair is
    /// refused even with the right password.
    async fn cached(
        &self,
        principal: Arc<Principal>,
        client_ip: IpAddr,
    ) -> Result<Arc<Principal>, AuthError> {
        self.throttle
            .check(&principal.user_name, client_ip)
            .await
            .map_err(|t| AuthError::PasswordThrottled(t.retry_after_secs))?;
        Ok(principal)
    }

    /// Checks the password against the store: `Ok` is cached by the caller, `Err` is not.
    async fn verify(&self, header: &[u8], client_ip: IpAddr) -> Result<Arc<Principal>, Unverified> {
        let (name, password) = parse(header)?;
        // Counted before the store or argon2 is asked, unknown names alike (the throttle must
        // not tell them apart either); a success takes the attempt back.
        let attempt = self
            .throttle
            .attempt(&name, client_ip)
            .await
            .map_err(|t| AuthError::PasswordThrottled(t.retry_after_secs))?;

        let generation = self.generation.load(Ordering::Acquire);
        let lookup = name.clone();
        let user = match self
            .db
            .call(move |store| async move { store.user_by_name(&lookup).await })
            .await
        {
            Ok(user) => user,
            Err(e) => {
                // Counted, and logged once per outage, by the store's health tracker.
                tracing::debug!(error = %e, "store lookup failed during Basic authentication");
                self.throttle.undecided(attempt).await;
                return Err(AuthError::StoreUnavailable.into());
            }
        };
        // A name that is not a local user with a password is the directory's, when there is
        // one (SPEC §14); a local user is never checked against the directory.
        if let Some(directory) = &self.directory {
            if user.as_ref().is_none_or(|u| u.source == UserSource::Ldap) {
                return self
                    .verify_in_directory(directory, name, password, attempt, generation)
                    .await;
            }
        }
        let Some(user) = user else {
            if let Err(busy) = self.hasher.verify(password, None, client_ip).await {
                self.throttle.undecided(attempt).await;
                return Err(busy.into());
            }
            return Err(AuthError::UnknownKey.into());
        };
        match self
            .hasher
            .verify(
                password,
                Some((user.id, user.password_hash.clone())),
                client_ip,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadSecret.into()),
            Err(busy) => {
                self.throttle.undecided(attempt).await;
                return Err(busy.into());
            }
        }
        self.accepted(&user, attempt, generation).await
    }

    /// A user whose password was accepted (locally or by the directory): refused when locked,
    /// else the throttle is told and the principal made.
    async fn accepted(
        &self,
        user: &User,
        attempt: crate::throttle::Attempt,
        generation: u64,
    ) -> Result<Arc<Principal>, Unverified> {
        if user.locked {
            return Err(AuthError::Locked.into());
        }
        self.throttle.succeeded(attempt).await;
        let principal = Arc::new(principal_for(user));
        if self.generation.load(Ordering::Acquire) != generation {
            // Invalidated while it was being checked (a lock, a password change): the
            // request is answered as it was decided, and nothing is cached.
            return Err(Unverified::Raced(principal));
        }
        Ok(principal)
    }

    /// A directory login: the directory checks the password, then the user is created or
    /// updated in the store (functions and customer as the directory says now).
    async fn verify_in_directory(
        &self,
        directory: &Directory,
        name: String,
        password: String,
        attempt: crate::throttle::Attempt,
        generation: u64,
    ) -> Result<Arc<Principal>, Unverified> {
        // A name keyward could not hold is never sent to the directory.
        if crate::users::validate_name(&name).is_err() {
            return Err(AuthError::UnknownKey.into());
        }
        let entry = match directory.login(&name, &password).await {
            Ok(Login::Accepted(entry)) => entry,
            Ok(Login::NoSuchUser) => return Err(AuthError::UnknownKey.into()),
            Ok(Login::BadPassword) => return Err(AuthError::BadSecret.into()),
            Err(e) => {
                // Counted and logged (once per outage) by the directory's health.
                tracing::debug!(error = %e, "directory login not decided");
                self.throttle.undecided(attempt).await;
                return Err(AuthError::DirectoryUnavailable.into());
            }
        };
        let login = DirectoryLogin {
            source: UserSource::Ldap,
            name: name.clone(),
            customer: entry.customer,
            functions: entry.functions,
            external: directory.settings().external,
            seen_ms: Some(keyward_core::now_ms()),
        };
        let audit = directory_audit(&name, &name);
        let user = match self
            .db
            .call(move |store| async move { store.upsert_directory_user(login, audit).await })
            .await
        {
            Ok(Some(user)) => user,
            // A local user took the name meanwhile: theirs, checked by their password.
            Ok(None) => return Err(AuthError::UnknownKey.into()),
            Err(e) => {
                tracing::debug!(error = %e, "store write failed during a directory login");
                self.throttle.undecided(attempt).await;
                return Err(AuthError::StoreUnavailable.into());
            }
        };
        self.accepted(&user, attempt, generation).await
    }

    /// Drops every cached login of `user_id` (lock, unlock, password change).
    pub fn invalidate_user(&self, user_id: i64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Only fails when closures are not enabled, which `new` always does.
        let _ = self
            .cache
            .invalidate_entries_if(move |_, principal| principal.user_id == user_id);
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Exact once pending inserts and evictions are applied, which this does first.
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// The login cache's key: the credential part of the header only, without the scheme's
    /// case or the spaces around it, so that spellings of one login share one entry (and one
    /// check); the base64 alphabet with required padding has one spelling per login.
    fn cache_key_for(&self, header: &[u8]) -> [u8; 32] {
        let credential = header.get(6..).map_or(header, <[u8]>::trim_ascii);
        self.cache_key.hash32(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
        .into_bytes()
    }

    #[test]
    fn parses_user_and_password_with_colons() {
        let (user, pass) = parse(&basic("john:pa:ss")).unwrap();
        assert_eq!((user.as_str(), pass.as_str()), ("john", "pa:ss"));
        assert!(parse(b"bAsIc am9objpw").is_ok());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            b"Basic".to_vec(),
            b"Basic !!!notbase64".to_vec(),
            basic("no-colon"),
            basic(":password"),
            b"Basic /w==".to_vec(), // not UTF-8
            vec![b'B'; MAX_HEADER_LEN + 1],
        ] {
            assert_eq!(parse(&bad), Err(AuthError::Malformed), "{bad:?}");
        }
    }
}
