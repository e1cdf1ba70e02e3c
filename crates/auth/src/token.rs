//! Gateway tokens (SPEC §4): `Cookie: token=<32 hex>`, checked against a cache of token
//! metadata keyed by the token's keyed hash. A token that is unknown, expired, malformed or
//! whose user is locked makes the request anonymous, and the answer clears the cookie.

use super::api_key::KeyHasher;
use super::{AuthError, AuthMethod, CredentialKind, Principal, SecurityLevel};
use crate::cache::{CacheSettings, CredentialCache};
use crate::ratelimit::{CheckBudget, CredentialLimit, LimitKey};
use keyward_metrics::Metrics;
use keyward_store::{now_ms, Db, StoreError, Token};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const COOKIE: &str = "token";
pub const CACHE_NAME: &str = keyward_metrics::cache_name::TOKEN;
pub const NEGATIVE_CACHE_NAME: &str = keyward_metrics::cache_name::TOKEN_NEGATIVE;
/// The token API's answer that empties the cookie (the seed's exact shape, which programs
/// compare): an empty `token` no longer authenticates.
pub const CLEAR_COOKIE: &str = "token=; path=/";
/// The browser pages' answer that makes a browser drop the cookie altogether (`Max-Age=0`),
/// so that nothing of the session is left in the browser after signing out.
pub const EXPIRE_COOKIE: &str = "token=; path=/; Max-Age=0";
/// Longest `Cookie` header looked into.
const MAX_COOKIE_HEADER: usize = 8192;

/// 32 lower-case hex characters.
pub fn is_token(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 128 bits from the OS CSPRNG, lower-case hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The public handle of a token: derived from its stored hash, so listing never needs (or
/// reveals) the token itself.
/// The rate-limit key of a token: its public name as bytes (a name not of that shape, which
/// the store never holds, is hashed down to the same size).
fn limit_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    if hex::decode_to_slice(name, &mut key).is_err() {
        key.copy_from_slice(&Sha256::digest(name.as_bytes())[..16]);
    }
    key
}

pub fn name_for(token_hash: &[u8]) -> String {
    hex::encode(&Sha256::digest(token_hash)[..16])
}

/// What the request's cookies say about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieToken<'a> {
    Absent,
    Present(&'a str),
    /// Several `token` cookies, a value that is not a token, or an oversized header.
    Malformed,
}

/// The token when the `Cookie` value is exactly `token=<token>`, as API clients send it: the
/// answer the cookie parser would give, without running it.
fn sole_token_cookie(value: &[u8]) -> Option<&str> {
    let rest = value.strip_prefix(b"token=")?;
    let token = std::str::from_utf8(rest).ok()?;
    is_token(token).then_some(token)
}

pub fn find_cookie(headers: &http::HeaderMap) -> CookieToken<'_> {
    let mut values = headers.get_all(http::header::COOKIE).iter();
    if let (Some(only), None) = (values.next(), values.next()) {
        if let Some(token) = sole_token_cookie(only.as_bytes()) {
            return CookieToken::Present(token);
        }
    }
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        if value.len() > MAX_COOKIE_HEADER {
            return CookieToken::Malformed;
        }
        let Ok(text) = value.to_str() else {
            continue;
        };
        for cookie in cookie::Cookie::split_parse(text).flatten() {
            if cookie.name() != COOKIE {
                continue;
            }
            if found.is_some() {
                return CookieToken::Malformed;
            }
            // Parsed from a borrowed header, the raw value borrows it too: no copy.
            found = Some(cookie.value_raw());
        }
    }
    match found {
        None => CookieToken::Absent,
        Some(Some(value)) if is_token(value) => CookieToken::Present(value),
        Some(_) => CookieToken::Malformed,
    }
}

/// A `Cookie` header value as forwarded upstream when credentials are not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedCookie {
    /// No `token` cookie in it: forwarded as it is, without copying.
    Unchanged,
    /// Nothing but the `token` cookie (or a value that cannot be read): not forwarded.
    Dropped,
    /// The other cookies, rewritten without the `token` cookie.
    Rewritten(String),
}

/// The cookies of keyward's browser pages (the CSRF token, the OpenID Connect flow), under
/// their plain and their `__Host-` names: keyward's own, never the upstream's.
pub const PAGE_COOKIE_MARK: &str = "keyward_";

/// `token`, or a cookie of keyward's pages.
fn is_keyward_cookie(name: &str) -> bool {
    name == COOKIE
        || name.starts_with(PAGE_COOKIE_MARK)
        || name
            .strip_prefix("__Host-")
            .is_some_and(|rest| rest.starts_with(PAGE_COOKIE_MARK))
}

/// The `Cookie` header value without the `token` cookie and the cookies of keyward's pages.
/// Values that mention neither `token` nor `keyward_` are passed through untouched; one that
/// does but is not UTF-8 is dropped whole, since what keyward cannot read it cannot promise
/// to have cleaned.
pub fn forwarded_cookie(value: &[u8]) -> ForwardedCookie {
    if sole_token_cookie(value).is_some() {
        return ForwardedCookie::Dropped;
    }
    let mentions = |word: &str| value.windows(word.len()).any(|w| w == word.as_bytes());
    if !mentions(COOKIE) && !mentions(PAGE_COOKIE_MARK) {
        return ForwardedCookie::Unchanged;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return ForwardedCookie::Dropped;
    };
    let mut kept = String::with_capacity(text.len());
    let mut removed = false;
    for cookie in cookie::Cookie::split_parse(text).flatten() {
        if is_keyward_cookie(cookie.name()) {
            removed = true;
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(cookie.name());
        kept.push('=');
        kept.push_str(cookie.value_raw().unwrap_or(cookie.value()));
    }
    match (removed, kept.is_empty()) {
        (false, _) => ForwardedCookie::Unchanged,
        (true, true) => ForwardedCookie::Dropped,
        (true, false) => ForwardedCookie::Rewritten(kept),
    }
}

pub struct CachedToken {
    name: String,
    owner_id: i64,
    expires_at_ms: i64,
    locked: bool,
    principal: Arc<Principal>,
}

pub struct TokenAuthenticator {
    db: Db,
    hasher: KeyHasher,
    tokens: CredentialCache<[u8; 32], CachedToken>,
}

impl TokenAuthenticator {
    pub fn new(
        db: Db,
        metrics: Arc<Metrics>,
        hasher: KeyHasher,
        settings: &CacheSettings,
    ) -> TokenAuthenticator {
        TokenAuthenticator {
            db,
            hasher,
            tokens: CredentialCache::new(metrics, CACHE_NAME, NEGATIVE_CACHE_NAME, settings),
        }
    }

    pub fn hash(&self, token: &str) -> Vec<u8> {
        self.hasher.hash(token)
    }

    pub async fn authenticate(
        &self,
        token: &str,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        let hash = self.hasher.hash32(token);
        let db = self.db.clone();
        let cached = self
            .tokens
            .get_or_load(hash, budget, async move {
                db.call(move |store| async move {
                    let Some(token) = store.token_by_hash(&hash).await? else {
                        return Ok(None);
                    };
                    let user = store.user_by_id(token.owner_id).await?;
                    Ok::<_, StoreError>(user.map(|user| cached(&token, &user)))
                })
                .await
                .map_err(|e| e.to_string())
            })
            .await?;
        if cached.locked {
            return Err(AuthError::Locked);
        }
        if now_ms() >= cached.expires_at_ms {
            return Err(AuthError::Expired);
        }
        Ok(cached.principal.clone())
    }

    /// Drops a user's cached tokens (lock, deletion).
    pub fn invalidate_user(&self, user_id: i64) {
        self.tokens
            .invalidate(move |_, t| t.owner_id == user_id, |_| false);
    }

    /// A change to one of the user's tokens from another process: their cached tokens go, and
    /// so do remembered unknown tokens (a token minted elsewhere may have been presented here
    /// before it existed; unknown entries are keyed by digest, so they cannot be narrowed to
    /// one user).
    pub fn invalidate_user_tokens(&self, user_id: i64) {
        self.tokens
            .invalidate(move |_, t| t.owner_id == user_id, |_| true);
    }

    pub fn invalidate_all(&self) {
        self.tokens.invalidate(|_, _| true, |_| true);
    }

    /// Drops one token by name, effective before the deleting call returns.
    pub fn invalidate_name(&self, name: &str) {
        let name = name.to_owned();
        self.tokens
            .invalidate(move |_, t| t.name == name, |_| false);
    }

    pub async fn entry_counts(&self) -> [(&'static str, u64); 2] {
        self.tokens.entry_counts().await
    }
}

fn cached(token: &Token, user: &keyward_store::User) -> CachedToken {
    // A tenant token is a credential for the tenant's applications, not a login of the
    // administrator who minted it (SPEC §4): it carries the owner's name so the upstream knows
    // who answers for it, but none of the owner's functions or customer, and the lowest level.
    // The admin API refuses any principal with a tenant (crates/admin/src/lib.rs `admit`).
    let (level, functions, customer) = match &token.tenant {
        Some(_) => (SecurityLevel::External, Vec::new(), None),
        None if token.level == "ADMINISTRATIVE" => (
            SecurityLevel::Administrative,
            user.functions.clone(),
            user.customer.clone(),
        ),
        None => (
            SecurityLevel::Default,
            user.functions.clone(),
            user.customer.clone(),
        ),
    };
    CachedToken {
        name: token.name.clone(),
        owner_id: token.owner_id,
        expires_at_ms: token.expires_at_ms,
        locked: user.locked,
        principal: Arc::new(Principal {
            user_id: user.id,
            user_name: user.name.clone(),
            customers: customer.iter().cloned().collect(),
            customer,
            functions,
            level,
            method: AuthMethod::Token,
            kind: CredentialKind::Token,
            credential_id: token.name.clone(),
            read_only: false,
            tenant: token.tenant.clone(),
            rate_limit: CredentialLimit {
                key: LimitKey::Token(limit_key(&token.name)),
                own: None,
                quota: None,
                user_id: user.id,
            },
            identity: Default::default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for c in cookies {
            map.append(http::header::COOKIE, c.parse().unwrap());
        }
        map
    }

    #[test]
    fn tokens_and_names() {
        let t = generate();
        assert!(is_token(&t));
        assert!(!is_token(&t.to_uppercase()));
        assert!(is_token(&name_for(b"hash")));
    }

    #[test]
    fn cookie_parsing() {
        let t = "53dfb96dc6d5b9cacd174e3649cba6d5";
        assert_eq!(find_cookie(&headers(&[])), CookieToken::Absent);
        assert_eq!(
            find_cookie(&headers(&[
                "a=1; token=53dfb96dc6d5b9cacd174e3649cba6d5; b=2"
            ])),
            CookieToken::Present(t)
        );
        assert_eq!(
            find_cookie(&headers(&["a=1", &format!("token={t}")])),
            CookieToken::Present(t)
        );
        assert_eq!(
            find_cookie(&headers(&[&format!("token={t}; token={t}")])),
            CookieToken::Malformed
        );
        assert_eq!(
            find_cookie(&headers(&["token=xyz"])),
            CookieToken::Malformed
        );
        assert_eq!(
            find_cookie(&headers(&["token=53DFB96DC6D5B9CACD174E3649CBA6D5"])),
            CookieToken::Malformed
        );
    }

    #[test]
    fn the_sole_cookie_shortcut_agrees_with_the_parser() {
        let t = "53dfb96dc6d5b9cacd174e3649cba6d5";
        for value in [
            format!("token={t}"),
            format!("token={t} "),
            format!(" token={t}"),
            format!("token={t};"),
            format!("token=\"{t}\""),
            format!("token={}", &t[1..]),
            format!("token={}", t.to_uppercase()),
            format!("Token={t}"),
            format!("token={t}x"),
        ] {
            let named: Vec<_> = cookie::Cookie::split_parse(value.as_str())
                .flatten()
                .filter(|c| c.name() == COOKIE)
                .map(|c| c.value_raw())
                .collect();
            let expected = match named.as_slice() {
                [] => CookieToken::Absent,
                [Some(v)] if is_token(v) => CookieToken::Present(v),
                _ => CookieToken::Malformed,
            };
            if let Some(token) = sole_token_cookie(value.as_bytes()) {
                assert_eq!(expected, CookieToken::Present(token), "{value:?}");
            }
            let map = headers(&[&value]);
            assert_eq!(find_cookie(&map), expected, "{value:?}");
        }
    }

    #[test]
    fn forwarded_cookie_loses_only_keywards_cookies() {
        let t = "53dfb96dc6d5b9cacd174e3649cba6d5";
        assert_eq!(
            forwarded_cookie(format!("a=1; token={t}; b=2").as_bytes()),
            ForwardedCookie::Rewritten("a=1; b=2".into())
        );
        assert_eq!(
            forwarded_cookie(format!("token={t}").as_bytes()),
            ForwardedCookie::Dropped
        );
        assert_eq!(forwarded_cookie(b"a=1; b=2"), ForwardedCookie::Unchanged);
        // Mentions the word, but no cookie of that name: untouched.
        assert_eq!(
            forwarded_cookie(b"csrftoken=abc; b=2"),
            ForwardedCookie::Unchanged
        );
        assert_eq!(
            forwarded_cookie(b"token=abc; x=\xff"),
            ForwardedCookie::Dropped
        );
    }

    #[test]
    fn the_cookies_of_keywards_pages_are_never_forwarded() {
        assert_eq!(
            forwarded_cookie(b"a=1; keyward_csrf=x; __Host-keyward_oidc=y; b=2"),
            ForwardedCookie::Rewritten("a=1; b=2".into())
        );
        assert_eq!(
            forwarded_cookie(b"__Host-keyward_csrf=x"),
            ForwardedCookie::Dropped
        );
        // Other `__Host-` cookies, and names that merely contain the mark, are the upstream's.
        assert_eq!(
            forwarded_cookie(b"__Host-app=1; my_keyward_x=2"),
            ForwardedCookie::Unchanged
        );
    }
}
