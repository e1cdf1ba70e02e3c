//! The OpenID Connect relying party (`identity.oidc`, SPEC §14): discovery, the authorization
//! request (code flow, PKCE S256, `state`, `nonce`), the code exchange and the ID token's
//! checks (signature against the provider's JWKS, issuer, audience, expiry, nonce) — all by
//! the `openidconnect` crate; keyward adds the flow cookie, the refresh of the keys on an
//! unknown `kid`, and the mapping of claims to a user.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use keyward_config::OidcSettings;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IdToken, IdTokenVerifier, IssuerUrl, JsonWebKeySet, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::{RwLock, Semaphore};

/// Where the sign-in button starts the flow.
pub const START_PATH: &str = "/.keyward/oidc/start";
/// Where the provider sends the browser back (the registered redirect URI's path).
pub const CALLBACK_PATH: &str = "/.keyward/oidc/callback";

/// How long a started sign-in may take at the provider.
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
/// The provider's keys are fetched again on an unknown `kid` at most this often (ID tokens
/// come from the provider's own token endpoint, so only concurrent sign-ins across a rotation
/// meet here; they share one fetch).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Code exchanges in flight at once: each is a call to the provider, and anyone can start
/// a flow, so a flood of callbacks waits here rather than at the provider.
const EXCHANGES_IN_FLIGHT: usize = 32;

/// Why an OpenID Connect step failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be asked (discovery, keys, the token endpoint): 503.
    #[error("the OpenID provider is unavailable: {0}")]
    Unavailable(String),
    /// The answer did not check out (state, code, ID token, claims): 400.
    #[error("{0}")]
    Refused(String),
}

/// Every claim of the ID token besides the standard ones, kept so that `username_claim` and
/// `groups_claim` can name any of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type KeywardIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Who signed in, from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
}

/// What the browser carries between the start of a flow and its callback, signed.
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    /// `state`, `nonce`, PKCE verifier, the page to return to, the deadline (ms).
    s: String,
    n: String,
    v: String,
    r: String,
    e: i64,
}

/// `CoreClient` as discovery leaves it, with the token endpoint the exchange needs.
type DiscoveredClient = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

struct Discovered {
    metadata: CoreProviderMetadata,
    keys_fetched: Instant,
}

/// The provider, discovered on first use (keyward starts while the provider is down).
pub struct Provider {
    settings: OidcSettings,
    http: reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
    cookie_key: [u8; 32],
    exchanges: Semaphore,
}

impl Provider {
    pub fn new(settings: OidcSettings) -> Result<Provider, String> {
        // Redirects are never followed: a provider (or whoever answers for it) could otherwise
        // point keyward's requests anywhere (SSRF).
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout);
        if let Some(pem) = &settings.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("identity.oidc.ca: {e}"))?;
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("identity.oidc: cannot build the HTTP client: {e}"))?;
        // The flow cookie is signed with a key every replica derives alike from the client
        // secret, so a callback may land on another replica; a public client has no shared
        // secret, and signs with this process's own key (its callbacks must come back here).
        let cookie_key = match &settings.client_secret {
            Some(secret) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.0.as_bytes())
                    .map_err(|e| format!("identity.oidc: {e}"))?;
                mac.update(b"keyward oidc flow cookie v1");
                mac.finalize().into_bytes().into()
            }
            None => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                key
            }
        };
        Ok(Provider {
            settings,
            http,
            discovered: RwLock::new(None),
            cookie_key,
            exchanges: Semaphore::new(EXCHANGES_IN_FLIGHT),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    fn issuer(&self) -> Result<IssuerUrl, OidcError> {
        IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("issuer: {e}")))
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(found) = self.discovered.read().await.clone() {
            return Ok(found);
        }
        let mut slot = self.discovered.write().await;
        if let Some(found) = slot.clone() {
            return Ok(found);
        }
        // Discovery checks that the document names this issuer exactly.
        let metadata = CoreProviderMetadata::discover_async(self.issuer()?, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {e}")))?;
        let found = Arc::new(Discovered {
            metadata,
            keys_fetched: Instant::now(),
        });
        *slot = Some(found.clone());
        Ok(found)
    }

    /// The provider's keys again (an ID token named a `kid` keyward does not know: the
    /// provider rotated its keys), at most every [`KEY_REFRESH_INTERVAL`].
    async fn refresh_keys(&self, stale: &Arc<Discovered>) -> Result<Arc<Discovered>, OidcError> {
        let mut slot = self.discovered.write().await;
        if let Some(current) = slot.clone() {
            if !Arc::ptr_eq(&current, stale)
                || current.keys_fetched.elapsed() < KEY_REFRESH_INTERVAL
            {
                return Ok(current);
            }
        }
        let keys = JsonWebKeySet::fetch_async(stale.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("keys: {e}")))?;
        let found = Arc::new(Discovered {
            metadata: stale.metadata.clone().set_jwks(keys),
            keys_fetched: Instant::now(),
        });
        *slot = Some(found.clone());
        Ok(found)
    }

    /// The authorization request for a browser that came to `origin` (scheme://host[:port])
    /// and returns to `rd` afterwards: the provider's URL to send it to, and the flow cookie's
    /// value.
    pub async fn start(&self, origin: &str, rd: &str) -> Result<(String, String), OidcError> {
        let discovered = self.discovered().await?;
        let client = self.client(&discovered, origin)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let flow = Flow {
            s: state.secret().clone(),
            n: nonce.secret().clone(),
            v: verifier.secret().clone(),
            r: rd.to_owned(),
            e: keyward_core::now_ms()
                + i64::try_from(FLOW_LIFETIME.as_millis()).unwrap_or(i64::MAX),
        };
        Ok((url.to_string(), self.seal(&flow)?))
    }

    /// Completes a flow: `state` must be the one in the browser's flow cookie, the code is
    /// exchanged (with the PKCE verifier) and the ID token checked. Returns who signed in and
    /// the page to return to.
    pub async fn finish(
        &self,
        origin: &str,
        cookie: Option<&str>,
        state: Option<&str>,
        code: Option<&str>,
    ) -> Result<(Identity, String), OidcError> {
        let flow = cookie.and_then(|c| self.open(c)).ok_or_else(|| {
            OidcError::Refused("no sign-in was started in this browser (or it expired)".into())
        })?;
        let state = state.ok_or_else(|| OidcError::Refused("the answer has no state".into()))?;
        if !bool::from(flow.s.as_bytes().ct_eq(state.as_bytes())) {
            return Err(OidcError::Refused(
                "the answer's state is not this browser's sign-in".into(),
            ));
        }
        let code = code.ok_or_else(|| OidcError::Refused("the answer has no code".into()))?;
        // Waits its turn (bounded by the provider timeout) rather than failing at once, so that
        // a burst of junk callbacks delays genuine sign-ins instead of refusing them outright.
        let _turn = tokio::time::timeout(self.settings.timeout, self.exchanges.acquire())
            .await
            .map_err(|_| OidcError::Unavailable("too many sign-ins at once".into()))?
            .map_err(|_| OidcError::Unavailable("closed".into()))?;
        let discovered = self.discovered().await?;
        let client = self.client(&discovered, origin)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.v.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                // The provider refused the code (used, expired, another client's, a wrong
                // verifier): the browser's answer, not the provider's health.
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    OidcError::Refused(format!("the provider refused the code: {}", r.error()))
                }
                other => OidcError::Unavailable(format!("token endpoint: {other}")),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::Refused("the provider sent no ID token".into()))?;
        let identity = self
            .verify(&id_token.to_string(), &Nonce::new(flow.n.clone()))
            .await?;
        Ok((identity, flow.r))
    }

    /// Checks a compact ID token (signature against the provider's keys, refreshed once on an
    /// unknown `kid`; issuer; audience; expiry; nonce) and reads who it names.
    pub async fn verify(&self, compact: &str, nonce: &Nonce) -> Result<Identity, OidcError> {
        let token: KeywardIdToken = compact
            .parse()
            .map_err(|e| OidcError::Refused(format!("the ID token does not parse: {e}")))?;
        let mut discovered = self.discovered().await?;
        let mut refreshed = false;
        loop {
            let checked = {
                let verifier = self.verifier(&discovered)?;
                token.claims(&verifier, nonce).map(serde_json::to_value)
            };
            match checked {
                Ok(Ok(claims)) => return self.identity(&claims),
                Ok(Err(e)) => return Err(OidcError::Refused(format!("ID token claims: {e}"))),
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refreshed => {
                    discovered = self.refresh_keys(&discovered).await?;
                    refreshed = true;
                }
                Err(e) => return Err(OidcError::Refused(format!("ID token: {e}"))),
            }
        }
    }

    fn verifier<'d>(
        &self,
        discovered: &'d Discovered,
    ) -> Result<IdTokenVerifier<'d, CoreJsonWebKey>, OidcError> {
        // Asymmetric algorithms only: an ID token MACed with the client secret would be one
        // anyone holding the secret (every replica's configuration) could forge.
        Ok(IdTokenVerifier::new_public_client(
            ClientId::new(self.settings.client_id.clone()),
            self.issuer()?,
            discovered.metadata.jwks().clone(),
        )
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ]))
    }

    fn client(&self, discovered: &Discovered, origin: &str) -> Result<DiscoveredClient, OidcError> {
        let redirect = RedirectUrl::new(format!("{origin}{}", CALLBACK_PATH))
            .map_err(|e| OidcError::Refused(format!("redirect URI: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            discovered.metadata.clone(),
            ClientId::new(self.settings.client_id.clone()),
            self.settings
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.0.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// The user a verified ID token names: `username_claim` (a name keyward can hold) and the
    /// groups of `groups_claim` (a list of strings, or one string).
    fn identity(&self, claims: &Value) -> Result<Identity, OidcError> {
        let claim = &self.settings.username_claim;
        let name = claims
            .get(claim)
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Refused(format!("the ID token has no {claim} claim")))?;
        keyward_auth::users::validate_name(name).map_err(|_| {
            OidcError::Refused(format!(
                "the ID token's {claim} is not a name keyward can hold"
            ))
        })?;
        // An address the provider has not verified is whatever its user typed: it names no one.
        if claim == "email" && claims.get("email_verified").and_then(Value::as_bool) != Some(true) {
            return Err(OidcError::Refused(
                "the ID token's email is not verified (email_verified)".into(),
            ));
        }
        let groups = match self
            .settings
            .groups_claim
            .as_ref()
            .and_then(|c| claims.get(c))
        {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Identity {
            name: name.to_owned(),
            groups,
        })
    }

    /// `payload.mac`, both base64url.
    fn seal(&self, flow: &Flow) -> Result<String, OidcError> {
        let payload = serde_json::to_vec(flow)
            .map_err(|e| OidcError::Unavailable(format!("flow cookie: {e}")))?;
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mac = self.mac(payload.as_bytes())?;
        Ok(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac)))
    }

    /// The flow a cookie holds, when keyward signed it and it has not expired.
    fn open(&self, cookie: &str) -> Option<Flow> {
        let (payload, mac) = cookie.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac(payload.as_bytes()).ok()?;
        if !bool::from(expected.as_slice().ct_eq(mac.as_slice())) {
            return None;
        }
        let flow: Flow = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (flow.e > keyward_core::now_ms()).then_some(flow)
    }

    fn mac(&self, payload: &[u8]) -> Result<Vec<u8>, OidcError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cookie_key)
            .map_err(|e| OidcError::Unavailable(format!("flow cookie: {e}")))?;
        mac.update(payload);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

/// The flow cookie's name (`__Host-` over TLS, as the CSRF cookie).
pub fn cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-keyward_oidc"
    } else {
        "keyward_oidc"
    }
}

/// `Set-Cookie` for a started flow: sent back on the provider's redirect to the callback
/// (a top-level GET, which `SameSite=Lax` allows), for [`FLOW_LIFETIME`].
pub fn set_cookie(value: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        cookie_name(tls),
        FLOW_LIFETIME.as_secs()
    )
}

/// `Set-Cookie` that ends a flow (one callback per flow: a replayed answer finds no cookie).
pub fn clear_cookie(tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}",
        cookie_name(tls)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider(secret: Option<&str>) -> Provider {
        Provider::new(OidcSettings {
            issuer: "http://127.0.0.1:9".into(),
            client_id: "keyward".into(),
            client_secret: secret.map(|s| keyward_config::identity::Secret(s.into())),
            scopes: vec!["openid".into()],
            username_claim: "preferred_username".into(),
            groups_claim: Some("groups".into()),
            groups: Vec::new(),
            ca_pem: None,
            display_name: "test".into(),
            external: false,
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn an_email_names_a_user_only_when_the_provider_verified_it() {
        let mut by_email = provider(None);
        by_email.settings.username_claim = "email".into();
        let unverified = json!({"email": "olga@example.com"});
        assert!(matches!(
            by_email.identity(&unverified),
            Err(OidcError::Refused(_))
        ));
        let said_false = json!({"email": "olga@example.com", "email_verified": false});
        assert!(matches!(
            by_email.identity(&said_false),
            Err(OidcError::Refused(_))
        ));
        let verified = json!({"email": "olga@example.com", "email_verified": true});
        assert_eq!(
            by_email.identity(&verified).unwrap().name,
            "olga@example.com"
        );
        // Another claim needs no such flag.
        let by_name = provider(None);
        assert_eq!(
            by_name
                .identity(&json!({"preferred_username": "olga"}))
                .unwrap()
                .name,
            "olga"
        );
    }

    #[test]
    fn the_flow_cookie_is_signed_and_expires() {
        let a = provider(Some("s3cret"));
        let flow = Flow {
            s: "state".into(),
            n: "nonce".into(),
            v: "verifier".into(),
            r: "/app".into(),
            e: keyward_core::now_ms() + 60_000,
        };
        let sealed = a.seal(&flow).unwrap();
        assert_eq!(a.open(&sealed).unwrap().r, "/app");
        // Another replica with the same secret opens it; another secret does not.
        assert!(provider(Some("s3cret")).open(&sealed).is_some());
        assert!(provider(Some("other")).open(&sealed).is_none());
        // Any change to the payload breaks the signature.
        let (payload, mac) = sealed.split_once('.').unwrap();
        let mut forged: Vec<u8> = URL_SAFE_NO_PAD.decode(payload).unwrap();
        let at = forged.iter().position(|b| *b == b'/').unwrap();
        forged[at + 1] = b'b';
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(forged));
        assert!(a.open(&forged).is_none());
        let expired = a
            .seal(&Flow {
                e: keyward_core::now_ms() - 1,
                ..flow
            })
            .unwrap();
        assert!(a.open(&expired).is_none());
        assert!(a.open("junk").is_none());
    }

    #[test]
    fn claims_name_the_user_and_groups() {
        let p = provider(None);
        let identity = p
            .identity(&serde_json::json!({"preferred_username": "olga", "groups": ["a", "b", 3]}))
            .unwrap();
        assert_eq!(identity.name, "olga");
        assert_eq!(identity.groups, ["a", "b"]);
        let one = p
            .identity(&serde_json::json!({"preferred_username": "olga", "groups": "a"}))
            .unwrap();
        assert_eq!(one.groups, ["a"]);
        assert!(p.identity(&serde_json::json!({"sub": "x"})).is_err());
        assert!(p
            .identity(&serde_json::json!({"preferred_username": "bad\nname"}))
            .is_err());
    }
}
