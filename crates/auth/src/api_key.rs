//! API keys (SPEC §2): `Argus-API-Key: <userIdHex>/<keyId>/<secret>`.
//!
//! The request path is parse → cache look-up by prefix → constant-time compare of the keyed
//! hash → constraint checks, with no store I/O while the cache is warm. Unknown prefixes are
//! remembered in a negative cache for a short TTL so a flood of random keys costs the store at
//! most one query per prefix. Last use is recorded in memory and written in batches.

use super::usage::{KeyOutcome, UsageCounter, UsageRecorder};
use super::{AuthError, AuthMethod, CredentialKind, Principal, SecurityLevel};
use crate::cache::{CacheEntry, CacheSettings, CredentialCache};
use crate::ratelimit::{CheckBudget, CredentialLimit, LimitKey};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use keyward_metrics::Metrics;
use keyward_store::{now_ms, ApiKey, Db, StoreError, User};
use rand::RngCore;
use sha2::Sha256;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

pub const HEADER: &str = "argus-api-key";
pub const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
pub const CACHE_NAME: &str = keyward_metrics::cache_name::API_KEY;
pub const NEGATIVE_CACHE_NAME: &str = keyward_metrics::cache_name::API_KEY_NEGATIVE;
/// A well-formed key is at most 16 + 1 + 10 + 1 + 52 bytes; anything longer is refused unread.
const MAX_KEY_LEN: usize = 128;
const SECRET_BYTES: usize = 32;
/// URL-safe base64 of 32 bytes, unpadded: the random part of a secret (and the whole of a
/// secret issued before checksummed secrets).
const SECRET_LEN: usize = 43;
/// Secrets start with this, so that secret scanners can recognise keyward keys.
pub const SECRET_PREFIX: &str = "kw_";
/// The base62 CRC32 that ends a secret.
const CHECKSUM_LEN: usize = 6;
const CHECKED_SECRET_LEN: usize = SECRET_PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;
/// What a keyward API key looks like, for secret scanners (published in the book's API keys chapter).
pub const KEY_PATTERN: &str =
    r"\b[0-9a-f]{1,15}/[1-9][0-9]{0,9}/kw_[A-Za-z0-9_-]{43}[0-9A-Za-z]{6}\b";

/// The checksum of a secret's first 46 characters (`kw_` and the random part): CRC32
/// (IEEE), in base62 (`0-9A-Za-z`), left-padded with `0` to six characters.
pub fn checksum(checked: &str) -> String {
    checksum_digits(checked)
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

/// [`checksum`] without allocating: it runs on every request that presents a key.
fn checksum_digits(checked: &str) -> [u8; CHECKSUM_LEN] {
    let mut digits = [b'0'; CHECKSUM_LEN];
    // A u32 has at most six base62 digits (62^6 > 2^32), so the buffer always suffices.
    let len = base62::encode_bytes(crc32fast::hash(checked.as_bytes()), &mut digits)
        .unwrap_or(CHECKSUM_LEN);
    digits.copy_within(..len, CHECKSUM_LEN - len);
    digits[..CHECKSUM_LEN - len].fill(b'0');
    digits
}

/// `text` up to its first `/`, and the rest after it.
fn split_at_slash(text: &str) -> Option<(&str, &str)> {
    // A byte scan: keys are short, and `str::split`'s searcher costs more than it saves here.
    let at = text.bytes().position(|b| b == b'/')?;
    Some((&text[..at], &text[at + 1..]))
}

/// The URL-safe base64 alphabet as a table: one load a byte (this runs over every presented
/// secret).
static BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

fn is_base64url(text: &str) -> bool {
    text.bytes().all(|b| BASE64URL[usize::from(b)])
}

/// `<userIdHex>/<keyId>`: identifies a key without its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub user_id: i64,
    pub key_id: i64,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}/{}", self.user_id, self.key_id)
    }
}

impl Prefix {
    /// Parses `15a6` and `1` (the two parts of a prefix as they appear in paths and keys).
    pub fn parse(user_hex: &str, key_id: &str) -> Option<Prefix> {
        let hex_ok = !user_hex.is_empty()
            && user_hex.len() <= 15
            && user_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && (user_hex == "0" || !user_hex.starts_with('0'));
        let id_ok = !key_id.is_empty()
            && key_id.len() <= 10
            && key_id.bytes().all(|b| b.is_ascii_digit())
            && !key_id.starts_with('0');
        if !hex_ok || !id_ok {
            return None;
        }
        Some(Prefix {
            user_id: i64::from_str_radix(user_hex, 16).ok()?,
            key_id: key_id.parse().ok()?,
        })
    }
}

/// Splits a key into its prefix and secret; anything not exactly of the issued shape is
/// malformed.
pub fn parse(value: &[u8]) -> Result<(Prefix, &str), AuthError> {
    if value.len() > MAX_KEY_LEN {
        return Err(AuthError::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
    // A third `/` is refused below: it is not a base64url character.
    let (user_hex, rest) = split_at_slash(text).ok_or(AuthError::Malformed)?;
    let (key_id, secret) = split_at_slash(rest).ok_or(AuthError::Malformed)?;
    let prefix = Prefix::parse(user_hex, key_id).ok_or(AuthError::Malformed)?;
    // The two shapes differ in length, so an old secret that happens to begin with `kw_`
    // (one in 64³) is still read as an old secret.
    let secret_ok = match secret.len() {
        // A checksummed secret whose checksum fails is a typo or a forgery: refused here,
        // before any cache or store is asked.
        CHECKED_SECRET_LEN => {
            secret.starts_with(SECRET_PREFIX)
                && is_base64url(&secret[SECRET_PREFIX.len()..])
                && checksum_digits(&secret[..SECRET_PREFIX.len() + SECRET_LEN])
                    == secret.as_bytes()[SECRET_PREFIX.len() + SECRET_LEN..]
        }
        // Issued before checksummed secrets: still accepted.
        SECRET_LEN => is_base64url(secret),
        _ => false,
    };
    if !secret_ok {
        return Err(AuthError::Malformed);
    }
    Ok((prefix, secret))
}

/// A fresh secret: `kw_`, 32 bytes from the OS CSPRNG as URL-safe base64 without padding,
/// and the checksum of both (see [`checksum`]).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut secret = String::with_capacity(CHECKED_SECRET_LEN);
    secret.push_str(SECRET_PREFIX);
    secret.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let sum = checksum(&secret);
    secret.push_str(&sum);
    secret
}

/// HMAC-SHA-256 of secrets under the store's pepper. Secrets are 256 random bits, so a fast
/// hash is enough; the pepper makes a leaked table useless without the server's key.
#[derive(Clone)]
pub struct KeyHasher {
    /// HMAC-SHA-256 with the pepper already absorbed: the key schedule (two of the four
    /// SHA-256 blocks a short secret costs) is paid once, not on every request.
    keyed: Hmac<Sha256>,
}

impl KeyHasher {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    pub fn new(pepper: Vec<u8>) -> KeyHasher {
        KeyHasher {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&pepper)
                .expect("HMAC accepts keys of any length"),
        }
    }

    pub fn hash(&self, secret: &str) -> Vec<u8> {
        self.hash32(secret).to_vec()
    }

    /// The same hash, without allocating (for cache keys).
    pub fn hash32(&self, secret: impl AsRef<[u8]>) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(secret.as_ref());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time: the time taken does not depend on how much of the hash matches.
    pub fn matches(&self, secret: &str, stored: &[u8]) -> bool {
        bool::from(self.hash32(secret).as_slice().ct_eq(stored))
    }
}

/// BLAKE3 in its keyed mode (a PRF and MAC by design), under a 32-byte key drawn when
/// keyward starts: the digest a cached key keeps of the one secret that has matched its
/// stored hash, so that later requests with that secret cost one BLAKE3 compression instead
/// of HMAC-SHA-256's two SHA-256 blocks. A secret of either issued length (43 or 52 bytes)
/// fits in one BLAKE3 block. SHA-256 keyed by a secret first block did the same in one
/// SHA-256 compression: on CPUs without SHA extensions (Intel server parts before Ice Lake,
/// and valgrind, which does not emulate them) that is ~3 500 instructions, BLAKE3's SIMD
/// compression a few hundred (docs/performance.md). The key never leaves the process.
#[derive(Clone)]
pub struct SecretMemo {
    key: [u8; 32],
}

impl SecretMemo {
    pub fn new() -> SecretMemo {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SecretMemo { key }
    }

    pub fn digest(&self, secret: &str) -> [u8; 32] {
        blake3::keyed_hash(&self.key, secret.as_bytes()).into()
    }
}

impl Default for SecretMemo {
    fn default() -> SecretMemo {
        SecretMemo::new()
    }
}

/// A key as the request path needs it: checked constraints pre-parsed, the principal built.
pub struct CachedKey {
    secret_hash: Vec<u8>,
    /// [`SecretMemo::digest`] of the secret that matched `secret_hash`, once one has. Kept
    /// only as long as this entry: a changed, rolled or revoked key is a new entry (or none).
    verified: OnceLock<[u8; 32]>,
    valid_until_ms: i64,
    valid_sources: Vec<IpNet>,
    locked: bool,
    principal: Arc<Principal>,
}

impl CachedKey {
    pub fn new(key: &ApiKey, user: &User) -> CachedKey {
        let functions = match &key.functions {
            // The key never carries more than its user has now.
            Some(wanted) => wanted
                .iter()
                .filter(|f| user.functions.contains(f))
                .cloned()
                .collect(),
            None => user.functions.clone(),
        };
        let customers = if key.customers.is_empty() {
            user.customer.iter().cloned().collect()
        } else {
            key.customers.clone()
        };
        CachedKey {
            secret_hash: key.secret_hash.clone(),
            verified: OnceLock::new(),
            valid_until_ms: key.valid_until_ms,
            valid_sources: super::client_ip::stored_sources(&key.valid_sources),
            locked: user.locked,
            principal: Arc::new(Principal {
                user_id: user.id,
                user_name: user.name.clone(),
                customer: user.customer.clone(),
                functions,
                level: if user.external {
                    SecurityLevel::External
                } else {
                    SecurityLevel::Default
                },
                method: AuthMethod::ApiKey,
                kind: CredentialKind::ApiKey,
                credential_id: key.prefix(),
                read_only: key.read_only,
                customers,
                tenant: None,
                rate_limit: CredentialLimit {
                    key: LimitKey::ApiKey {
                        user_id: key.user_id,
                        key_id: key.key_id,
                    },
                    own: key.rate_limit,
                    quota: key.quota,
                    user_id: key.user_id,
                },
                identity: Default::default(),
            }),
        }
    }

    /// Whether `secret` is this key's. The secret that matched the stored hash once is
    /// recognised afterwards by its memo digest alone (compared in constant time); any other
    /// secret is compared with the stored hash, as the first one was. Every secret costs the
    /// memo digest, so a wrong secret costs the same whether or not the key has a memo yet,
    /// and the same as an unknown prefix (see [`ApiKeyAuthenticator::authenticate`]).
    fn secret_matches(&self, hasher: &KeyHasher, memo: &SecretMemo, secret: &str) -> bool {
        let presented = memo.digest(secret);
        if let Some(verified) = self.verified.get() {
            if bool::from(presented.ct_eq(verified)) {
                return true;
            }
        }
        if !hasher.matches(secret, &self.secret_hash) {
            return false;
        }
        // Only a secret whose HMAC is the stored hash gets here, so only the key's own
        // secret is ever remembered (a concurrent first use of it sets the same digest).
        let _ = self.verified.set(presented);
        true
    }

    /// Every per-request check after the prefix was found.
    pub fn check(
        &self,
        hasher: &KeyHasher,
        memo: &SecretMemo,
        secret: &str,
        client_ip: IpAddr,
        now_ms: i64,
    ) -> Result<Arc<Principal>, AuthError> {
        if !self.secret_matches(hasher, memo, secret) {
            return Err(AuthError::BadSecret);
        }
        if self.locked {
            return Err(AuthError::Locked);
        }
        if self.valid_until_ms != 0 && now_ms >= self.valid_until_ms {
            return Err(AuthError::Expired);
        }
        if !super::client_ip::source_allowed(&self.valid_sources, client_ip) {
            return Err(AuthError::SourceNotAllowed);
        }
        Ok(self.principal.clone())
    }
}

pub struct ApiKeyAuthenticator {
    db: Db,
    hasher: KeyHasher,
    /// Warm-path digests of secrets that matched (see [`CachedKey`]).
    memo: SecretMemo,
    /// What an unknown prefix's secret is compared with.
    dummy_hash: Vec<u8>,
    keys: CredentialCache<Prefix, CachedKey>,
    usage: UsageRecorder,
    /// Requests per key and hour (`…/usage`).
    counts: UsageCounter,
}

impl ApiKeyAuthenticator {
    pub fn new(
        db: Db,
        metrics: Arc<Metrics>,
        hasher: KeyHasher,
        settings: &CacheSettings,
    ) -> ApiKeyAuthenticator {
        ApiKeyAuthenticator {
            db,
            dummy_hash: hasher.hash("keyward: no key has this prefix"),
            hasher,
            memo: SecretMemo::new(),
            keys: CredentialCache::new(metrics, CACHE_NAME, NEGATIVE_CACHE_NAME, settings),
            usage: UsageRecorder::default(),
            counts: UsageCounter::default(),
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    pub async fn authenticate(
        &self,
        value: &[u8],
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        let (prefix, secret) = parse(value)?;
        let key = match self.lookup(prefix, budget).await {
            Ok(key) => key,
            Err(AuthError::UnknownKey) => {
                // The work a wrong secret costs (the memo digest, the keyed hash and a
                // constant-time compare), so that an unknown prefix is refused in the time a
                // wrong secret is, and timing does not tell which prefixes exist
                // (benches/refusals.rs checks it).
                std::hint::black_box(self.memo.digest(secret));
                std::hint::black_box(self.hasher.matches(secret, &self.dummy_hash));
                return Err(AuthError::UnknownKey);
            }
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let principal = key.check(&self.hasher, &self.memo, secret, client_ip, now)?;
        self.usage
            .record_at(prefix.user_id, prefix.key_id, client_ip, now);
        Ok(principal)
    }

    async fn lookup(
        &self,
        prefix: Prefix,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<CacheEntry<CachedKey>>, AuthError> {
        let db = self.db.clone();
        self.keys
            .get_or_load(prefix, budget, async move {
                db.call(move |store| async move {
                    let Some(key) = store.api_key(prefix.user_id, prefix.key_id).await? else {
                        return Ok(None);
                    };
                    let user = store.user_by_id(prefix.user_id).await?;
                    Ok::<_, StoreError>(user.map(|user| CachedKey::new(&key, &user)))
                })
                .await
                .map_err(|e| e.to_string())
            })
            .await
    }

    /// Counts what became of a request `principal` made, when it authenticated with an API
    /// key (anything else is not counted here).
    pub fn count(&self, principal: &Principal, outcome: KeyOutcome) {
        if let LimitKey::ApiKey { user_id, key_id } = principal.rate_limit.key {
            self.counts.count(user_id, key_id, outcome);
        }
    }

    /// Writes the recorded last uses, then the request counts, to the store (one transaction
    /// each). Counts the store did not take are kept for the next flush.
    pub async fn flush_usage(&self) {
        let batch = self.usage.drain();
        if !batch.is_empty() {
            if let Err(e) = self
                .db
                .call(move |store| async move { store.record_api_key_usage(&batch).await })
                .await
            {
                tracing::debug!(error = %e, "cannot record API key usage");
            }
        }
        let counts = self.counts.drain();
        if counts.is_empty() {
            return;
        }
        let written = counts.clone();
        if let Err(e) = self
            .db
            .call(move |store| async move { store.add_api_key_usage(&written).await })
            .await
        {
            tracing::debug!(error = %e, "cannot record API key request counts; kept for the next flush");
            self.counts.restore(counts);
        }
    }

    /// Drops the cached keys (and unknown-prefix entries) of a user.
    pub fn invalidate_user(&self, user_id: i64) {
        self.keys.invalidate(
            move |prefix, _| prefix.user_id == user_id,
            move |prefix| prefix.user_id == user_id,
        );
    }

    pub fn invalidate_all(&self) {
        self.keys.invalidate(|_, _| true, |_| true);
    }

    /// `(cache label, entries)` of the key caches.
    pub async fn entry_counts(&self) -> [(&'static str, u64); 2] {
        self.keys.entry_counts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(external: bool, functions: &[&str]) -> User {
        User {
            id: 0x15a6,
            name: "john".into(),
            domain: None,
            customer: Some("7".into()),
            functions: functions.iter().map(|f| f.to_string()).collect(),
            external,
            password_hash: String::new(),
            totp_secret: None,
            locked: false,
            created_at_ms: 0,
            source: Default::default(),
        }
    }

    fn key(hasher: &KeyHasher, secret: &str) -> ApiKey {
        ApiKey {
            user_id: 0x15a6,
            key_id: 1,
            secret_hash: hasher.hash(secret),
            description: "d".into(),
            created_at_ms: 0,
            created_by_id: 0x15a6,
            created_by_name: "john".into(),
            valid_until_ms: 0,
            valid_sources: vec![],
            functions: None,
            customers: vec![],
            read_only: false,
            last_used_at_ms: 0,
            last_used_ip: None,
            rate_limit: None,
            quota: None,
        }
    }

    #[test]
    fn new_secrets_carry_the_prefix_and_a_checksum_and_match_the_published_pattern() {
        let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
        for _ in 0..200 {
            let secret = generate_secret();
            assert_eq!(secret.len(), CHECKED_SECRET_LEN);
            assert!(secret.starts_with("kw_"));
            assert_eq!(checksum(&secret[..46]), secret[46..]);
            let key = format!("15a6/12/{secret}");
            assert!(pattern.is_match(&key), "{key}");
            assert!(parse(key.as_bytes()).is_ok());
            // Any one character changed: the checksum no longer matches.
            for i in [3, 20, 45, 46, 51] {
                let mut bytes = key.clone().into_bytes();
                let at = "15a6/12/".len() + i;
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                assert_eq!(parse(&bytes), Err(AuthError::Malformed), "{i}");
            }
        }
        // The rule, as published: CRC32 (IEEE) of the first 46 characters, base62, 6 wide.
        assert_eq!(
            checksum("kw_"),
            format!("{:0>6}", base62::encode(0x2069_5e87u32))
        );
        // Short base62 values are left-padded with `0`, the widest fill all six characters.
        for text in (0..5000).map(|i| format!("kw_{i}")) {
            let crc = crc32fast::hash(text.as_bytes());
            assert_eq!(
                checksum(&text),
                format!("{:0>6}", base62::encode(crc)),
                "{text}"
            );
        }
        let mut digits = [0u8; CHECKSUM_LEN];
        assert_eq!(
            base62::encode_bytes(u32::MAX, &mut digits),
            Ok(CHECKSUM_LEN)
        );
    }

    #[test]
    fn parses_issued_keys_only() {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // A secret issued before checksums (and the random part of one since).
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(secret.len(), SECRET_LEN);
        let good = format!("15a6/1/{secret}");
        let (prefix, parsed_secret) = parse(good.as_bytes()).unwrap();
        assert_eq!(
            prefix,
            Prefix {
                user_id: 0x15a6,
                key_id: 1
            }
        );
        assert_eq!(prefix.to_string(), "15a6/1");
        assert_eq!(parsed_secret, secret);
        for bad in [
            String::new(),
            "15a6/1".into(),
            format!("15a6/1/{secret}/x"),
            format!("15a6/1/{}/", &secret[1..]),
            format!("15a6//1/{secret}"),
            format!("/15a6/1/{secret}"),
            format!("15a6/1{secret}"),
            format!("15A6/1/{secret}"),
            format!("015a6/1/{secret}"),
            format!("15a6/01/{secret}"),
            format!("15a6/-1/{secret}"),
            format!("15a6/1/{}", &secret[1..]),
            format!("15a6/1/{}!", &secret[1..]),
            format!("zz/1/{secret}"),
            format!("15a6/1/{secret}{}", "A".repeat(200)),
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(AuthError::Malformed), "{bad:?}");
        }
        assert_eq!(parse(b"\xff\xfe/1/x"), Err(AuthError::Malformed));
    }

    #[test]
    fn an_old_secret_that_begins_like_a_new_one_still_parses() {
        let old = format!("kw_{}", "A".repeat(SECRET_LEN - SECRET_PREFIX.len()));
        let key = format!("15a6/1/{old}");
        assert_eq!(parse(key.as_bytes()).map(|(_, s)| s), Ok(old.as_str()));
    }

    /// Exactly the published shapes parse: valid keys with one byte replaced, inserted or
    /// removed (from the characters keys are made of, and a few others) parse exactly when
    /// they still match the issued shape, checksum included.
    #[test]
    fn mutated_keys_parse_exactly_when_they_keep_the_issued_shape() {
        let shape = regex::Regex::new(concat!(
            r"^(?:0|[1-9a-f][0-9a-f]{0,14})/[1-9][0-9]{0,9}/",
            r"(?:kw_[A-Za-z0-9_-]{43}[0-9A-Za-z]{6}|[A-Za-z0-9_-]{43})$"
        ))
        .unwrap();
        let issued = |text: &str| {
            shape.is_match(text) && {
                let secret = text.rsplit('/').next().unwrap_or_default();
                secret.len() == SECRET_LEN || checksum(&secret[..46]) == secret[46..]
            }
        };
        let alphabet = b"0123456789abcdefABCDEFxyzXYZ_-/kw.+= \x00\xff%";
        let mut rng = rand::thread_rng();
        use rand::Rng;
        for round in 0..4000 {
            let secret = if round % 2 == 0 {
                generate_secret()
            } else {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rng.gen::<[u8; 32]>())
            };
            let user: u32 = rng.gen_range(0..0x10_0000);
            let mut key = format!("{user:x}/{}/{secret}", rng.gen_range(1..10_000u32)).into_bytes();
            assert!(issued(std::str::from_utf8(&key).unwrap()));
            let at = rng.gen_range(0..key.len());
            let byte = alphabet[rng.gen_range(0..alphabet.len())];
            match rng.gen_range(0..3) {
                0 => key[at] = byte,
                1 => key.insert(at, byte),
                _ => {
                    key.remove(at);
                }
            }
            let expected = std::str::from_utf8(&key).is_ok_and(issued);
            assert_eq!(
                parse(&key).is_ok(),
                expected,
                "{:?}",
                String::from_utf8_lossy(&key)
            );
        }
    }

    #[test]
    fn hashes_compare_in_constant_time_and_depend_on_the_pepper() {
        let a = KeyHasher::new(vec![1; 32]);
        let b = KeyHasher::new(vec![2; 32]);
        assert!(a.matches("s", &a.hash("s")));
        assert!(!a.matches("t", &a.hash("s")));
        assert!(!a.matches("s", &b.hash("s")));
    }

    #[test]
    fn the_hash_is_hmac_sha256_and_reusable() {
        // RFC 4231, test case 2; asked twice of one hasher, since it reuses its keyed state.
        let hasher = KeyHasher::new(b"Jefe".to_vec());
        for _ in 0..2 {
            assert_eq!(
                hex::encode(hasher.hash32("what do ya want for nothing?")),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            );
        }
    }

    #[test]
    fn constraints_are_checked() {
        let hasher = KeyHasher::new(vec![7; 32]);
        let secret = generate_secret();
        let ip: IpAddr = "94.127.56.10".parse().unwrap();
        let mut k = key(&hasher, &secret);
        k.valid_sources = vec!["94.127.56.0/24".into()];
        k.valid_until_ms = 1_000;
        k.functions = Some(vec!["A".into(), "NOT-HELD".into()]);
        let cached = CachedKey::new(&k, &user(true, &["A", "B"]));
        let memo = SecretMemo::new();
        let p = cached.check(&hasher, &memo, &secret, ip, 999).unwrap();
        assert_eq!(p.functions, vec!["A".to_string()]);
        assert_eq!(p.level, SecurityLevel::External);
        assert_eq!(p.customers, vec!["7".to_string()]);
        assert_eq!(
            cached
                .check(&hasher, &memo, &secret, ip, 1_000)
                .unwrap_err(),
            AuthError::Expired
        );
        let outside: IpAddr = "94.127.57.1".parse().unwrap();
        assert_eq!(
            cached
                .check(&hasher, &memo, &secret, outside, 0)
                .unwrap_err(),
            AuthError::SourceNotAllowed
        );
        assert_eq!(
            cached
                .check(&hasher, &memo, &generate_secret(), ip, 0)
                .unwrap_err(),
            AuthError::BadSecret
        );
    }

    /// The warm path's memo: set only by the secret that matches the stored hash, then
    /// recognising that secret alone; every other secret still goes to the stored hash and is
    /// refused, before and after the memo exists, including secrets one byte away.
    #[test]
    fn the_memo_remembers_only_the_matching_secret() {
        let hasher = KeyHasher::new(vec![7; 32]);
        let memo = SecretMemo::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let secret = generate_secret();
        let mut k = key(&hasher, &secret);
        k.valid_until_ms = 1_000;
        k.valid_sources = vec!["10.0.0.0/24".into()];
        let cached = CachedKey::new(&k, &user(false, &[]));
        let near = |secret: &str| {
            let mut bytes = secret.as_bytes().to_vec();
            bytes[10] ^= 1;
            String::from_utf8(bytes).unwrap()
        };
        // Wrong secrets first: nothing remembered.
        for wrong in [generate_secret(), near(&secret), String::new()] {
            assert!(!cached.secret_matches(&hasher, &memo, &wrong));
        }
        assert!(cached.verified.get().is_none());
        assert!(cached.check(&hasher, &memo, &secret, ip, 0).is_ok());
        assert_eq!(cached.verified.get(), Some(&memo.digest(&secret)));
        for _ in 0..3 {
            assert!(cached.check(&hasher, &memo, &secret, ip, 0).is_ok());
            for wrong in [
                generate_secret(),
                near(&secret),
                secret[..secret.len() - 1].into(),
            ] {
                assert_eq!(
                    cached.check(&hasher, &memo, &wrong, ip, 0).unwrap_err(),
                    AuthError::BadSecret
                );
            }
        }
        // The memo never replaces the other checks.
        assert_eq!(
            cached
                .check(&hasher, &memo, &secret, ip, 1_000)
                .unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            cached
                .check(&hasher, &memo, &secret, "10.0.1.1".parse().unwrap(), 0)
                .unwrap_err(),
            AuthError::SourceNotAllowed
        );
        // A memo from another process (another random key) is not this one's.
        let other = SecretMemo::new();
        assert_ne!(other.digest(&secret), memo.digest(&secret));
        // A stale or forged memo cannot admit a secret: only the stored hash decides for a
        // secret the memo does not recognise, and the memo is set only from a match.
        let fresh = CachedKey::new(&key(&hasher, &secret), &user(false, &[]));
        let _ = fresh.verified.set(memo.digest("forged"));
        assert!(!fresh.secret_matches(&hasher, &memo, "forged-but-not-the-secret"));
        assert!(fresh.secret_matches(&hasher, &memo, &secret));
    }

    /// The memo digest is BLAKE3's keyed hash of the secret under the process's random key.
    #[test]
    fn the_memo_is_blake3_keyed_by_its_key() {
        let memo = SecretMemo::new();
        let a = memo.digest("a");
        assert_eq!(memo.digest("a"), a);
        assert_ne!(memo.digest("b"), a);
        assert_ne!(SecretMemo::new().digest("a"), a);
        // The construction: BLAKE3's official keyed-hash vector for the empty input.
        let known = SecretMemo {
            key: *b"whats the Elvish word for friend",
        };
        assert_eq!(
            hex::encode(known.digest("")),
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
        );
    }
}
