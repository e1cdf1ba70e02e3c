//! The admin API's paths and methods, the endpoint each names, and its audit operation.

use crate::envelope::AdminError;
use crate::guard;
use http::Method;
use keyward_http::ctx::RequestCtx;

/// Every admin path, as the router matches it (`{name}` is one path segment). The OpenAPI
/// document (docs/openapi.json) is tested against this table.
pub(crate) const ROUTES: [(&str, Endpoint); 17] = [
    (
        "/authentication/v1/user/{user}/apikey",
        Endpoint::UserApiKeys,
    ),
    (
        "/authentication/v1/user/{user}/apikey/{user_hex}/{key_id}",
        Endpoint::UserApiKey,
    ),
    (
        "/authentication/v1/user/{user}/apikey/{user_hex}/{key_id}/roll",
        Endpoint::UserApiKeyRoll,
    ),
    (
        "/authentication/v1/user/{user}/apikey/{user_hex}/{key_id}/usage",
        Endpoint::UserApiKeyUsage,
    ),
    ("/authentication/v1/apikey", Endpoint::OwnApiKeys),
    (
        "/authentication/v1/apikey/{user_hex}/{key_id}/usage",
        Endpoint::OwnApiKeyUsage,
    ),
    (
        "/authentication/v1/apikey/{user_hex}/{key_id}/roll",
        Endpoint::OwnApiKeyRoll,
    ),
    (
        "/authentication/v1/apikey/{user_hex}/{key_id}",
        Endpoint::OwnApiKey,
    ),
    (
        "/authentication/v1/user/{user}/signature",
        Endpoint::UserSignatures,
    ),
    (
        "/authentication/v1/user/{user}/signature/{key_id}",
        Endpoint::UserSignature,
    ),
    (
        "/authentication/v1/user/{user}/signature/session",
        Endpoint::UserSignatureSession,
    ),
    (
        "/authentication/v1/user/signature/session",
        Endpoint::OwnSignatureSession,
    ),
    ("/authentication/v1/user/{user}/lock", Endpoint::UserLock),
    ("/.TOKEN/", Endpoint::Tokens),
    ("/.TOKEN/{name}", Endpoint::Token),
    (
        "/_admin/manage/tenants/{tenant}/tokens/",
        Endpoint::TenantTokens,
    ),
    (
        "/_admin/manage/tenants/{tenant}/tokens/{name}",
        Endpoint::TenantToken,
    ),
];

/// The methods an endpoint may answer; which ones each does is [`operation`]'s table.
pub(crate) const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The admin API's paths and the methods each answers, from the router's own tables.
pub fn routes() -> Vec<(&'static str, Vec<Method>)> {
    ROUTES
        .iter()
        .map(|(path, endpoint)| (*path, endpoint.methods().collect()))
        .collect()
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    UserApiKeys,
    UserApiKey,
    UserApiKeyRoll,
    UserApiKeyUsage,
    OwnApiKeys,
    OwnApiKey,
    OwnApiKeyRoll,
    OwnApiKeyUsage,
    UserSignatures,
    UserSignature,
    UserSignatureSession,
    OwnSignatureSession,
    UserLock,
    Tokens,
    Token,
    TenantTokens,
    TenantToken,
}

impl Endpoint {
    fn methods(self) -> impl Iterator<Item = Method> {
        METHODS
            .into_iter()
            .filter(move |method| operation(self, method).is_some())
    }

    /// The 405 of another method, with the `Allow` header RFC 9110 §15.5.6 asks for.
    pub(crate) fn method_not_allowed(self) -> AdminError {
        let allow: Vec<String> = self.methods().map(|m| m.to_string()).collect();
        AdminError::MethodNotAllowed(allow.join(", "))
    }

    /// The token API answers in the Swarm gateway's shapes, not the Argus envelope.
    pub(crate) fn is_token_api(self) -> bool {
        self.surface() != guard::Surface::Argus
    }

    pub(crate) fn surface(self) -> guard::Surface {
        match self {
            Endpoint::Tokens | Endpoint::Token => guard::Surface::OwnTokens,
            Endpoint::TenantTokens | Endpoint::TenantToken => guard::Surface::TenantTokens,
            _ => guard::Surface::Argus,
        }
    }
}

/// The normalized path the proxy decided on (never the raw one: `/authentication//v1/apikey`
/// is the same endpoint as `/authentication/v1/apikey`).
pub(crate) fn admin_path(ctx: &RequestCtx) -> &str {
    ctx.target.as_ref().map_or("", |t| t.path())
}

pub(crate) fn operation(endpoint: Endpoint, method: &Method) -> Option<&'static str> {
    match (endpoint, method) {
        (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::GET) => Some("apikey.list"),
        (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::POST) => Some("apikey.create"),
        (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::PUT) => Some("apikey.renew"),
        (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::DELETE) => Some("apikey.revoke"),
        (Endpoint::UserApiKeyRoll | Endpoint::OwnApiKeyRoll, &Method::POST) => Some("apikey.roll"),
        (Endpoint::UserApiKeyUsage | Endpoint::OwnApiKeyUsage, &Method::GET) => {
            Some("apikey.usage")
        }
        (Endpoint::UserSignatures, &Method::GET) => Some("signature.list"),
        (Endpoint::UserSignatures, &Method::POST) => Some("signature.enroll"),
        (Endpoint::UserSignature, &Method::DELETE) => Some("signature.delete"),
        (Endpoint::UserSignatureSession | Endpoint::OwnSignatureSession, &Method::DELETE) => {
            Some("signature.session.evict")
        }
        (Endpoint::UserLock, &Method::PUT) => Some("user.lock"),
        (Endpoint::UserLock, &Method::DELETE) => Some("user.unlock"),
        (Endpoint::Tokens, &Method::POST) => Some("token.mint"),
        (Endpoint::Tokens, &Method::GET) => Some("token.list"),
        (Endpoint::Token, &Method::DELETE) => Some("token.delete"),
        (Endpoint::TenantTokens, &Method::GET) => Some("tenant_token.list"),
        (Endpoint::TenantTokens, &Method::POST) => Some("tenant_token.mint"),
        (Endpoint::TenantToken, &Method::DELETE) => Some("tenant_token.delete"),
        _ => None,
    }
}
