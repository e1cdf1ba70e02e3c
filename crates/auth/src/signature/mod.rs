//! Signed requests (SPEC §3): RFC 9421 HTTP Message Signatures with Ed25519.
//!
//! Verification rebuilds the signature base exactly as RFC 9421 §2.5 describes from the
//! `Signature-Input` parameters (parsed and re-serialised as structured fields with `sfv`),
//! verifies it with `ed25519-dalek` in strict mode, checks the body against `Content-Digest`
//! (RFC 9530), and then guards against replay twice over: every accepted signature is
//! remembered for its whole validity window, and a per-key "signature session" pins the
//! client's clock offset so a client cannot step its clock back to sign outside the window.

use super::replay::{ClaimRefused, ReplayWindow};
use super::usage::UsageRecorder;
use super::{AuthError, AuthMethod, CredentialKind, Principal, SecurityLevel};
use crate::cache::{CacheEntry, CacheSettings, CredentialCache};
use crate::fleet::{Answer, ClaimKind, FleetClaims};
use crate::ratelimit::{CheckBudget, CredentialLimit, LimitKey};
use ed25519_dalek::{Signature, VerifyingKey};
use ipnet::IpNet;
use keyward_config::SignatureSettings;
pub use keyward_core::SignatureError;
use keyward_metrics::Metrics;
use keyward_store::{now_ms, Db, SignatureKey, StoreError, User};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;

pub const CACHE_NAME: &str = keyward_metrics::cache_name::SIGNATURE_KEY;
pub const NEGATIVE_CACHE_NAME: &str = keyward_metrics::cache_name::SIGNATURE_KEY_NEGATIVE;
pub const REPLAY_CACHE_NAME: &str = keyward_metrics::cache_name::REPLAY_WINDOW;
pub const SESSION_CACHE_NAME: &str = keyward_metrics::cache_name::SIGNATURE_SESSION;

mod base;
mod digest;
mod parse;
mod session;

pub use base::{sign, signature_base, RequestView};
pub use digest::{check_content_digest, has_body, BodyHasher, ExpectedDigest};
use parse::REQUIRED_COMPONENTS;
pub use parse::{parse_headers, parse_keyid, parse_public_key, SignedRequest, MAX_KEYID_LEN};
use session::SignatureSessions;

pub struct VerifiedSignature {
    key: Arc<CacheEntry<CachedSigKey>>,
    fingerprint: [u8; 32],
    offset_secs: i64,
    /// When the replay window may forget this signature (seconds): past it, it is stale.
    remember_until: i64,
    /// `Some` for a request with a body: what the body must hash to.
    body: Option<ExpectedDigest>,
}

impl VerifiedSignature {
    pub fn expected_body(&self) -> Option<&ExpectedDigest> {
        self.body.as_ref()
    }

    pub fn principal(&self) -> &Principal {
        &self.key.principal
    }
}

/// The cache key of a parsed keyid: a fixed-size digest of its user part and key id.
fn key_ref_hash(user_ref: &str, key_id: i64) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(user_ref.as_bytes());
    digest.update([0]);
    digest.update(key_id.to_le_bytes());
    digest.finalize().into()
}

/// An enrolled key as the request path needs it.
pub struct CachedSigKey {
    user_id: i64,
    key_id: i64,
    verifying_key: VerifyingKey,
    valid_until_ms: i64,
    valid_sources: Vec<IpNet>,
    locked: bool,
    principal: Arc<Principal>,
}

impl CachedSigKey {
    pub fn new(key: &SignatureKey, user: &User) -> Result<CachedSigKey, String> {
        let raw = <[u8; 32]>::try_from(key.public_key.as_slice())
            .map_err(|_| "stored public key is not 32 bytes".to_owned())?;
        let verifying_key = VerifyingKey::from_bytes(&raw).map_err(|e| e.to_string())?;
        Ok(CachedSigKey {
            user_id: user.id,
            key_id: key.key_id,
            verifying_key,
            valid_until_ms: key.valid_until_ms,
            valid_sources: super::client_ip::stored_sources(&key.valid_sources),
            locked: user.locked,
            principal: Arc::new(Principal {
                user_id: user.id,
                user_name: user.name.clone(),
                customer: user.customer.clone(),
                functions: user.functions.clone(),
                // SPEC §1: a signed request is DEFAULT for internal and external users alike.
                level: SecurityLevel::Default,
                method: AuthMethod::Signature,
                kind: CredentialKind::Signature,
                credential_id: format!("{}/{}", user.name, key.key_id),
                read_only: false,
                customers: user.customer.iter().cloned().collect(),
                tenant: None,
                rate_limit: CredentialLimit {
                    key: LimitKey::Signature {
                        user_id: user.id,
                        key_id: key.key_id,
                    },
                    own: None,
                    quota: None,
                    user_id: user.id,
                },
                identity: Default::default(),
            }),
        })
    }
}

pub struct SignatureAuthenticator {
    db: Db,
    settings: SignatureSettings,
    /// Keyed by [`key_ref_hash`] of what the client named, so an unknown keyid costs the
    /// negative cache 32 bytes however long it was.
    keys: CredentialCache<[u8; 32], CachedSigKey>,
    replay: ReplayWindow,
    sessions: SignatureSessions,
    usage: UsageRecorder,
    /// The replay window shared with the other replicas (`redis.url`), behind the
    /// local one.
    fleet: Option<Arc<FleetClaims>>,
}

impl SignatureAuthenticator {
    pub fn new(db: Db, metrics: Arc<Metrics>, settings: SignatureSettings) -> Self {
        SignatureAuthenticator {
            keys: CredentialCache::new(
                metrics.clone(),
                CACHE_NAME,
                NEGATIVE_CACHE_NAME,
                &CacheSettings {
                    ttl: crate::cache::LiveDuration::new(settings.key_cache_ttl),
                    capacity: settings.key_cache_capacity,
                    negative_ttl: crate::cache::LiveDuration::new(settings.negative_ttl),
                    negative_capacity: settings.key_cache_capacity,
                },
            ),
            replay: ReplayWindow::new(settings.replay_memory_bytes),
            sessions: SignatureSessions::new(settings.key_cache_capacity, settings.session_ttl),
            usage: UsageRecorder::default(),
            fleet: None,
            db,
            settings,
        }
    }

    /// Shares the replay window with the fleet: an accepted signature is also claimed in
    /// Redis, so every other replica (and this one after a restart) refuses it.
    pub fn with_fleet(mut self, fleet: Option<Arc<FleetClaims>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Checks a signed request whose body, if any, is in `view.body`.
    pub async fn authenticate(
        &self,
        view: &RequestView<'_>,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        let framed = view.body.is_some_and(|b| !b.is_empty());
        let verified = self.verify(view, framed, client_ip, budget).await?;
        let body = verified.expected_body().map(|expected| {
            let mut hasher = expected.hasher();
            hasher.update(view.body.unwrap_or_default());
            hasher
        });
        self.accept(verified, body, client_ip).await
    }

    /// Every check that needs no body: the signature over the covered components, its
    /// window, the key, its state and sources. A request with a body must cover
    /// `content-digest`; what the body must hash to comes back in the result, so the body is
    /// read only for a request whose signature is already known to be good. `framed_body`:
    /// the connection carries a body whatever the headers say (HTTP/2 DATA frames).
    pub async fn verify(
        &self,
        view: &RequestView<'_>,
        framed_body: bool,
        client_ip: IpAddr,
        budget: &CheckBudget<'_>,
    ) -> Result<VerifiedSignature, AuthError> {
        let signed = parse_headers(view.header)?;
        let covered = |name: &str| signed.components.iter().any(|c| c == name);
        if !REQUIRED_COMPONENTS.iter().all(|c| covered(c)) {
            return Err(SignatureError::MissingComponent.into());
        }
        let with_body = has_body(view.header) || framed_body;
        if with_body && !covered("content-digest") {
            return Err(SignatureError::MissingComponent.into());
        }
        if signed.nonce.as_deref().is_none_or(str::is_empty) {
            return Err(SignatureError::Malformed.into());
        }
        let (user_ref, key_id) =
            parse_keyid(&signed.keyid).ok_or(AuthError::Signature(SignatureError::Malformed))?;

        let now = now_ms();
        let now_secs = now / 1000;
        // A used signature is refused before anything else costs: no key look-up, no
        // verification, and above all no body read for it (SPEC §15).
        let fingerprint: [u8; 32] = Sha256::digest(signed.signature).into();
        if self.replay.seen(&fingerprint, now_secs) {
            return Err(SignatureError::Replay.into());
        }
        let max_age = self.settings.max_age.as_secs() as i64;
        let max_future = self.settings.max_future.as_secs() as i64;
        if signed.created < now_secs - max_age || signed.created > now_secs + max_future {
            return Err(SignatureError::Stale.into());
        }
        if signed.expires.is_some_and(|expires| expires <= now_secs) {
            return Err(SignatureError::Expired.into());
        }

        let key = self.lookup(user_ref, key_id, budget).await?;
        let base = signature_base(view, &signed.components, &signed.params)?;
        let signature = Signature::from_bytes(&signed.signature);
        key.verifying_key
            .verify_strict(base.as_bytes(), &signature)
            .map_err(|_| SignatureError::BadSignature)?;
        if key.locked {
            return Err(AuthError::Locked);
        }
        if key.valid_until_ms != 0 && now >= key.valid_until_ms {
            return Err(SignatureError::Expired.into());
        }
        if !super::client_ip::source_allowed(&key.valid_sources, client_ip) {
            return Err(AuthError::SourceNotAllowed);
        }
        // Used on another replica: refused here too before it costs its key's limit or a
        // body read (SPEC §15). Asked only for a signature that verified, so junk never
        // costs a Redis round trip; the claim itself is still taken last, in `accept`.
        if let Some(fleet) = &self.fleet {
            match fleet.claimed(ClaimKind::Signature, &fingerprint).await {
                Ok(Answer::Fleet(true)) => return Err(SignatureError::Replay.into()),
                Ok(Answer::Fleet(false) | Answer::Local) => {}
                Err(unavailable) => return Err(unavailable.into()),
            }
        }
        let body = match with_body {
            true => Some(ExpectedDigest::from_header(view.header)?),
            false => None,
        };
        Ok(VerifiedSignature {
            key,
            fingerprint,
            offset_secs: now_secs - signed.created,
            remember_until: signed
                .created
                .saturating_add(max_age)
                .saturating_add(max_future),
            body,
        })
    }

    /// Finishes a verified signature: the body's hashes against `Content-Digest` (`None`
    /// hashes as the empty body), the clock-skew session, and the replay claim, last, so
    /// only a request that passed everything spends its signature.
    pub async fn accept(
        &self,
        verified: VerifiedSignature,
        body: Option<BodyHasher>,
        client_ip: IpAddr,
    ) -> Result<Arc<Principal>, AuthError> {
        let VerifiedSignature {
            key,
            fingerprint,
            offset_secs: offset,
            remember_until,
            body: expected,
        } = verified;
        if let Some(expected) = expected {
            let hashed = body.unwrap_or_else(|| expected.hasher());
            expected.check(hashed)?;
        }

        // Clock skew: the offset this request implies against the one its key's session pinned.
        let session_key = (key.user_id, key.key_id);
        let tolerance = self.settings.skew_tolerance.as_secs() as i64;
        self.sessions.check(session_key, offset, tolerance)?;
        // Replay: the first to claim this signature wins, atomically. The local window comes
        // first, so a replay on this replica costs no Redis round trip; a full window refuses
        // the new signature and forgets no live one.
        match self
            .replay
            .claim(fingerprint, remember_until, now_ms() / 1000)
        {
            Ok(()) => {}
            Err(ClaimRefused::Replay) => return Err(SignatureError::Replay.into()),
            Err(ClaimRefused::Full) => return Err(AuthError::ReplayWindowFull),
        }
        if let Some(fleet) = &self.fleet {
            // Kept in Redis until the end of the last second the signature can verify in, as
            // locally: a TTL counted from now would end up to a second early for a signature
            // whose `created` lies ahead.
            let until_ms = remember_until.saturating_add(1).saturating_mul(1000);
            let window = std::time::Duration::from_millis(
                u64::try_from(until_ms.saturating_sub(now_ms()))
                    .unwrap_or(0)
                    .max(1),
            );
            match fleet
                .claim(ClaimKind::Signature, &fingerprint, window)
                .await
            {
                Ok(Answer::Fleet(true) | Answer::Local) => {}
                Ok(Answer::Fleet(false)) => return Err(SignatureError::Replay.into()),
                Err(unavailable) => {
                    // Not accepted, so not used: the same signature may come again once
                    // Redis answers.
                    self.replay.release(&fingerprint);
                    return Err(unavailable.into());
                }
            }
        }
        self.sessions.pin(session_key, offset);
        self.usage.record(key.user_id, key.key_id, client_ip);
        Ok(key.principal.clone())
    }

    async fn lookup(
        &self,
        user_ref: String,
        key_id: i64,
        budget: &CheckBudget<'_>,
    ) -> Result<Arc<CacheEntry<CachedSigKey>>, AuthError> {
        let db = self.db.clone();
        let cache_key = key_ref_hash(&user_ref, key_id);
        let lookup = user_ref;
        self.keys
            .get_or_load(cache_key, budget, async move {
                let found = db
                    .call(move |store| async move {
                        let user = match lookup.parse::<i64>() {
                            Ok(id) if lookup.bytes().all(|b| b.is_ascii_digit()) => {
                                store.user_by_id(id).await?
                            }
                            _ => store.user_by_name(&lookup).await?,
                        };
                        let Some(user) = user else { return Ok(None) };
                        let key = store.signature_key(user.id, key_id).await?;
                        Ok::<_, StoreError>(key.map(|key| (key, user)))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                found
                    .map(|(key, user)| CachedSigKey::new(&key, &user))
                    .transpose()
            })
            .await
    }

    /// Drops a user's cached keys; their sessions stay (they are about clocks, not keys).
    pub fn invalidate_user(&self, user_id: i64) {
        // Unknown entries are keyed by what the client sent (name or id): drop them all.
        self.keys
            .invalidate(move |_, key| key.user_id == user_id, |_| true);
    }

    /// Drops every cached key and session (the replay window stays: it is not store data).
    pub fn invalidate_all(&self) {
        self.keys.invalidate(|_, _| true, |_| true);
        self.sessions.invalidate_all();
    }

    /// Evicts a user's signature sessions (one key or all); returns the key ids evicted.
    pub fn evict_sessions(&self, user_id: i64, key_id: Option<i64>) -> Vec<i64> {
        self.sessions.evict(user_id, key_id)
    }

    pub async fn flush_usage(&self) {
        let batch = self.usage.drain();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self
            .db
            .call(move |store| async move { store.record_signature_key_usage(&batch).await })
            .await
        {
            tracing::debug!(error = %e, "cannot record signature key usage");
        }
    }

    /// (keys, unknown keys, replay window, sessions) entry counts.
    pub async fn entry_counts(&self) -> [(&'static str, u64); 4] {
        let [keys, unknown] = self.keys.entry_counts().await;
        self.replay.sweep(now_ms() / 1000);
        [
            keys,
            unknown,
            (REPLAY_CACHE_NAME, self.replay.len()),
            (SESSION_CACHE_NAME, self.sessions.count()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use pingora::http::RequestHeader;

    /// RFC 9421 Appendix B.1.4: test-key-ed25519 (public part).
    const B14_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----";

    fn b26_request() -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/foo?param=Value&Pet=dog", None).unwrap();
        h.insert_header("host", "example.com").unwrap();
        h.insert_header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
            .unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        h.insert_header(
            "content-digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        )
        .unwrap();
        h.insert_header("content-length", "18").unwrap();
        h.insert_header(
            "signature-input",
            "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        )
        .unwrap();
        h.insert_header(
            "signature",
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        )
        .unwrap();
        h
    }

    #[test]
    fn rfc9421_b26_ed25519_example_verifies() {
        let header = b26_request();
        let signed = parse_headers(&header).unwrap();
        assert_eq!(signed.keyid, "test-key-ed25519");
        assert_eq!(signed.created, 1618884473);
        let body = br#"{"hello": "world"}"#;
        let view = RequestView {
            header: &header,
            body: Some(body),
            tls: false,
        };
        let base = signature_base(&view, &signed.components, &signed.params).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
             \"@authority\": example.com\n\"content-type\": application/json\n\
             \"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \
             \"@authority\" \"content-type\" \"content-length\");created=1618884473;\
             keyid=\"test-key-ed25519\""
        );
        let key = parse_public_key(B14_PUBLIC).unwrap();
        key.verify_strict(base.as_bytes(), &Signature::from_bytes(&signed.signature))
            .unwrap();
        check_content_digest(&header, body).unwrap();
        assert_eq!(
            check_content_digest(&header, b"{\"hello\": \"there\"}"),
            Err(SignatureError::DigestMismatch)
        );
    }

    /// Whichever curve25519 backend the CPU selects (AVX-512 IFMA, AVX2 or the portable one:
    /// scripts/cpu-fallback.sh runs this on emulated CPUs without the first two), the RFC's
    /// example verifies and every one-bit change of the signature or of the signed base fails.
    #[test]
    fn the_selected_ed25519_backend_refuses_every_one_bit_change() {
        let header = b26_request();
        let signed = parse_headers(&header).unwrap();
        let view = RequestView {
            header: &header,
            body: Some(br#"{"hello": "world"}"#),
            tls: false,
        };
        let base = signature_base(&view, &signed.components, &signed.params).unwrap();
        let key = parse_public_key(B14_PUBLIC).unwrap();
        let verifies = |message: &[u8], signature: &[u8; 64]| {
            key.verify_strict(message, &Signature::from_bytes(signature))
                .is_ok()
        };
        assert!(verifies(base.as_bytes(), &signed.signature));
        for bit in 0..512 {
            let mut changed = signed.signature;
            changed[bit / 8] ^= 1 << (bit % 8);
            assert!(!verifies(base.as_bytes(), &changed), "signature bit {bit}");
        }
        for bit in (0..base.len() * 8).step_by(7) {
            let mut changed = base.clone().into_bytes();
            changed[bit / 8] ^= 1 << (bit % 8);
            assert!(!verifies(&changed, &signed.signature), "base bit {bit}");
        }
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let url: http::Uri = "http://Example.com:80/a/b?x=1&y=2".parse().unwrap();
        let headers = sign(
            &signing,
            "john/1",
            "POST",
            &url,
            Some(b"hi"),
            1700000000,
            "n1",
        )
        .unwrap();
        let mut header = RequestHeader::build("POST", b"/a/b?x=1&y=2", None).unwrap();
        header.insert_header("host", "example.com").unwrap();
        for (name, value) in headers {
            header.insert_header(name, value).unwrap();
        }
        let signed = parse_headers(&header).unwrap();
        let view = RequestView {
            header: &header,
            body: Some(b"hi"),
            tls: false,
        };
        let base = signature_base(&view, &signed.components, &signed.params).unwrap();
        assert!(base.contains("\"@query\": ?x=1&y=2\n"));
        assert!(base.contains("\"@authority\": example.com\n"));
        signing
            .verifying_key()
            .verify_strict(base.as_bytes(), &Signature::from_bytes(&signed.signature))
            .unwrap();
    }

    #[test]
    fn malformed_headers() {
        let mut header = b26_request();
        header.insert_header("signature", "sig-b26=:AAAA:").unwrap();
        assert_eq!(
            parse_headers(&header).unwrap_err(),
            SignatureError::Malformed
        );
        let mut header = b26_request();
        header
            .insert_header("signature-input", "sig-b26=(\"@method\");keyid=\"k\"")
            .unwrap();
        assert_eq!(
            parse_headers(&header).unwrap_err(),
            SignatureError::Malformed,
            "no created"
        );
        let mut header = b26_request();
        header
            .insert_header("signature-input", "not a dictionary (")
            .unwrap();
        assert_eq!(
            parse_headers(&header).unwrap_err(),
            SignatureError::Malformed
        );
        let mut header = b26_request();
        header
            .insert_header(
                "signature-input",
                "a=(\"@method\");created=1;keyid=\"k\", b=(\"@path\");created=1;keyid=\"k\"",
            )
            .unwrap();
        assert_eq!(
            parse_headers(&header).unwrap_err(),
            SignatureError::Malformed,
            "two labels"
        );
        for (len, ok) in [(MAX_KEYID_LEN, true), (MAX_KEYID_LEN + 1, false)] {
            let keyid = format!("{}/1", "u".repeat(len - 2));
            let mut header = b26_request();
            header
                .insert_header(
                    "signature-input",
                    format!("sig-b26=(\"@method\");created=1;keyid=\"{keyid}\""),
                )
                .unwrap();
            assert_eq!(parse_headers(&header).is_ok(), ok, "keyid of {len} bytes");
        }
    }

    /// Whatever `Signature-Input` says twice, or says with a shape keyward does not sign
    /// for, is refused before any key is looked up: no reading picks one of two meanings.
    #[test]
    fn anything_said_twice_or_out_of_shape_is_malformed() {
        let sig = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
        let many = (0..=parse::MAX_COMPONENTS)
            .map(|i| format!("\"h{i}\""))
            .collect::<Vec<_>>()
            .join(" ");
        let cases = [
            ("sig-b26=(\"@method\");created=1;keyid=\"k\", sig-b26=(\"@path\");created=1;keyid=\"k\"", sig, "the label twice"),
            ("sig-b26=(\"@method\");created=1;created=2;keyid=\"k\"", sig, "a parameter twice"),
            ("sig-b26=(\"@method\");created=1;keyid=\"k\";keyid=\"j\"", sig, "keyid twice"),
            ("sig-b26=(\"@method\" \"@method\");created=1;keyid=\"k\"", sig, "a component twice"),
            ("sig-b26=(\"@method\";req);created=1;keyid=\"k\"", sig, "a component parameter"),
            ("sig-b26=(\"Host\");created=1;keyid=\"k\"", sig, "an upper-case component"),
            ("sig-b26=(@method);created=1;keyid=\"k\"", sig, "a token, not a string"),
            ("sig-b26=\"@method\";created=1;keyid=\"k\"", sig, "an item, not an inner list"),
            ("sig-b26=(\"@method\");created=\"1\";keyid=\"k\"", sig, "created as a string"),
            ("sig-b26=(\"@method\");created=1;keyid=k", sig, "keyid as a token"),
            ("sig-b26=(\"@method\");created=1;keyid=\"k\";alg=\"rsa-pss-sha512\"", sig, "another algorithm"),
            ("sig-b26=(\"@method\");created=1;keyid=\"k\"", &format!("{sig}, {sig}"), "the signature twice"),
            ("sig-b26=(\"@method\");created=1;keyid=\"k\"", "other=:AAAA:", "no signature under the label"),
            ("sig-b26=(\"@method\");created=1;keyid=\"k\"", "sig-b26=(:AAAA:)", "a signature in a list"),
        ];
        for (input, signature, what) in cases {
            let mut header = b26_request();
            header.insert_header("signature-input", input).unwrap();
            header.insert_header("signature", signature).unwrap();
            assert_eq!(
                parse_headers(&header).unwrap_err(),
                SignatureError::Malformed,
                "{what}"
            );
        }
        let mut header = b26_request();
        header
            .insert_header(
                "signature-input",
                format!("s=({many});created=1;keyid=\"k\""),
            )
            .unwrap();
        header
            .insert_header("signature", sig.replace("sig-b26", "s"))
            .unwrap();
        assert_eq!(
            parse_headers(&header).unwrap_err(),
            SignatureError::Malformed,
            "more than {} components",
            parse::MAX_COMPONENTS
        );
    }

    /// `@signature-params` is the member as RFC 9651 serialises it, whatever spacing the client
    /// used; parameters keep their order, unknown ones included, and other `Signature` members
    /// are not read.
    #[test]
    fn signature_params_are_reserialised_canonically() {
        let mut header = b26_request();
        header
            .insert_header(
                "signature-input",
                "sig-b26=(  \"@method\"   \"@path\" );tag=\"app\";created=1618884473;keyid=\"a\\\\b/1\";nonce=\"n\";expires=1618884999;x=?1;y=:AQI=:;z=tok;w=1.5",
            )
            .unwrap();
        let other = "other=:AAAA:, ";
        let value = header.headers.get("signature").unwrap().to_str().unwrap();
        header
            .insert_header("signature", format!("{other}{value}"))
            .unwrap();
        let signed = parse_headers(&header).unwrap();
        assert_eq!(signed.components, ["@method", "@path"]);
        assert_eq!(
            signed.params,
            "(\"@method\" \"@path\");tag=\"app\";created=1618884473;keyid=\"a\\\\b/1\";nonce=\"n\";expires=1618884999;x;y=:AQI=:;z=tok;w=1.5"
        );
        assert_eq!(signed.keyid, "a\\b/1");
        assert_eq!(signed.nonce.as_deref(), Some("n"));
        assert_eq!(signed.expires, Some(1618884999));
        assert_eq!(signed.created, 1618884473);
    }

    #[test]
    fn keyids_and_public_keys() {
        assert_eq!(parse_keyid("john/3"), Some(("john".into(), 3)));
        assert_eq!(
            parse_keyid("a@b.example/12"),
            Some(("a@b.example".into(), 12))
        );
        assert_eq!(parse_keyid("john"), None);
        assert_eq!(parse_keyid("john/x"), None);
        assert_eq!(parse_keyid("2/1"), Some(("2".into(), 1)));
        // One spelling per id: leading zeros or a sign would each be a cache entry and a
        // store read for the same key.
        for other in ["02/1", "2/01", "2/+1", "00/1", "2/"] {
            assert_eq!(parse_keyid(other), None, "{other}");
        }
        let key = parse_public_key(B14_PUBLIC).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.to_bytes());
        assert_eq!(parse_public_key(&b64).unwrap(), key);
        assert!(parse_public_key("AAAA").is_err());
    }
}
