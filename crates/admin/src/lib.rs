//! The admin API keyward answers itself (SPEC §2–§5); requests for it are never forwarded.
//!
//! One flow for every endpoint: route (matchit) → authenticate the caller with the same
//! authenticators as the proxy → handler → Argus envelope, metrics and one audit record.

pub mod api_keys;
pub mod envelope;
pub mod guard;
pub mod openapi;
pub mod signatures;
pub mod tokens;
pub mod users;

use envelope::{AdminError, Reply};
use http::Method;
use keyward_auth::ratelimit::{AuthOutcome, CheckBudget, RateLimiter};
use keyward_auth::signature::RequestView;
use keyward_auth::{token, Authenticated, Authenticator, Principal, SecurityLevel};
use keyward_config::Config;
use keyward_http::ctx::RequestCtx;
use keyward_http::namespace::is_token_path;
#[cfg(test)]
use keyward_http::namespace::{is_reserved, is_reserved_in_any_case};
use keyward_http::respond;
use keyward_metrics::{Metrics, Outcome};
use keyward_store::audit::{self, AuditLog};
use keyward_store::{AuditEvent, Db, User};
use pingora::proxy::Session;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Admin request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;
pub const POWER_USER: &str = "POWER-USER";

/// Every admin path, as the router matches it (`{name}` is one path segment). The OpenAPI
/// document (docs/openapi.json) is tested against this table.
const ROUTES: [(&str, Endpoint); 15] = [
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
    ("/authentication/v1/apikey", Endpoint::OwnApiKeys),
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
const METHODS: [Method; 9] = [
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
enum Endpoint {
    UserApiKeys,
    UserApiKey,
    UserApiKeyRoll,
    OwnApiKeys,
    OwnApiKey,
    OwnApiKeyRoll,
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
    fn method_not_allowed(self) -> AdminError {
        let allow: Vec<String> = self.methods().map(|m| m.to_string()).collect();
        AdminError::MethodNotAllowed(allow.join(", "))
    }

    /// The token API answers in the Swarm gateway's shapes, not the Argus envelope.
    fn is_token_api(self) -> bool {
        self.surface() != guard::Surface::Argus
    }

    fn surface(self) -> guard::Surface {
        match self {
            Endpoint::Tokens | Endpoint::Token => guard::Surface::OwnTokens,
            Endpoint::TenantTokens | Endpoint::TenantToken => guard::Surface::TenantTokens,
            _ => guard::Surface::Argus,
        }
    }
}

/// What the audit record says an admin call was about.
#[derive(Debug, Default)]
pub struct AuditTarget {
    pub operation: &'static str,
    pub user: String,
    pub credential: String,
}

/// Shared by every handler.
pub struct AdminApi {
    pub(crate) db: Db,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) metrics: Arc<Metrics>,
    audit: AuditLog,
    router: matchit::Router<Endpoint>,
    /// The proxy's rate-limit counters: admin calls count against the same quotas.
    limiter: Arc<RateLimiter>,
}

/// One authenticated admin call.
pub struct Call<'a> {
    /// The configuration of this request (see `RequestCtx::config`).
    pub config: &'a Config,
    pub caller: &'a Principal,
    pub method: &'a Method,
    pub body: &'a [u8],
    pub request_id: &'a str,
    pub source_ip: Option<IpAddr>,
    pub operation: &'static str,
    /// The request came over TLS (the token cookie is then `Secure`).
    pub tls: bool,
    /// Set once a store write was handed this call's audit record (see [`Call::audit`]).
    pub audit_handed_over: &'a AtomicBool,
}

impl Call<'_> {
    /// This call's audit record as it is answered with `status` on success, for the store
    /// write that makes the change to commit with it: the record is then exactly as durable
    /// as the change. Creates fill in the credential they made.
    pub fn audit(&self, status: u16, target_user: &str, credential: &str) -> AuditEvent {
        self.audit_handed_over.store(true, Ordering::Relaxed);
        AuditEvent {
            seq: 0,
            time: audit::now_rfc3339(),
            request_id: self.request_id.to_owned(),
            actor: self.caller.user_name.clone(),
            auth_method: self.caller.method.as_str().to_owned(),
            operation: self.operation.to_owned(),
            target_user: target_user.to_owned(),
            target_credential: credential.to_owned(),
            status,
            outcome: "ok".to_owned(),
            source_ip: self.source_ip.map(|ip| ip.to_string()),
        }
    }
}

impl AdminApi {
    pub fn new(
        db: Db,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        limiter: Arc<RateLimiter>,
    ) -> AdminApi {
        let mut router = matchit::Router::new();
        for (path, endpoint) in ROUTES {
            router
                .insert(path, endpoint)
                .expect("admin routes do not conflict");
        }
        AdminApi {
            db,
            auth,
            metrics,
            audit,
            router,
            limiter,
        }
    }

    /// Answers an admin request completely.
    pub async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let mut target = AuditTarget {
            operation: "unknown",
            ..AuditTarget::default()
        };
        // By namespace, not by route: a path under `/.TOKEN/` or `/_admin/` that names no
        // endpoint still answers in the token API's shape.
        let token_api = is_token_path(admin_path(ctx));
        let audit_handed_over = AtomicBool::new(false);
        let result = self
            .dispatch(session, ctx, &mut target, &audit_handed_over)
            .await;
        let request_id = ctx.request_id.as_str().to_owned();
        let (status, outcome) = match &result {
            Ok(reply) => (reply.status, "ok"),
            Err(e) => (e.status(), e.outcome()),
        };
        ctx.outcome = Some(match &result {
            Ok(_) => Outcome::Allowed,
            Err(AdminError::Unauthenticated(_)) => Outcome::Unauthenticated,
            Err(AdminError::Unavailable) => Outcome::Error,
            Err(_) => Outcome::Denied,
        });
        if let Err(e) = &result {
            ctx.reason = Some(e.outcome());
        }
        if let Ok(Reply {
            credential: Some(credential),
            ..
        }) = &result
        {
            target.credential = credential.clone();
        }
        self.metrics.admin_operation(target.operation, outcome);
        let principal = ctx.principal.as_deref();
        let record = AuditEvent {
            seq: 0,
            time: audit::now_rfc3339(),
            request_id: request_id.clone(),
            actor: principal.map_or("-", |p| p.user_name.as_str()).to_owned(),
            auth_method: principal.map_or("-", |p| p.method.as_str()).to_owned(),
            operation: target.operation.to_owned(),
            target_user: target.user.clone(),
            target_credential: target.credential.clone(),
            status,
            outcome: outcome.to_owned(),
            source_ip: ctx.client_ip.map(|ip| ip.to_string()),
        };
        // A change committed its record with it; every other authenticated call (reads,
        // refusals, failed writes) is appended here, before the answer is sent. Calls that
        // failed authentication are logged only: a flood of junk credentials must not turn
        // into a flood of store writes.
        // Calls over a rate limit are logged only, for the same reason.
        let rate_limited = match &result {
            Err(AdminError::RateLimited(limited)) => Some(*limited),
            _ => None,
        };
        if principal.is_some()
            && rate_limited.is_none()
            && !(result.is_ok() && audit_handed_over.load(Ordering::Relaxed))
        {
            let stored = record.clone();
            if let Err(e) = self
                .db
                .call(move |store| async move { store.append_audit(stored).await })
                .await
            {
                tracing::debug!(error = %e, "audit record not stored; it is still logged");
            }
        }
        self.audit.record(&record);
        let challenge = matches!(result, Err(AdminError::Unauthenticated(_)));
        let retry_after = result.as_ref().err().and_then(AdminError::retry_after_secs);
        let allow = match &result {
            Err(AdminError::MethodNotAllowed(allow)) => Some(allow.clone()),
            _ => None,
        };
        let (content_type, body, extra) = match result {
            Ok(Reply { raw: Some(raw), .. }) => (raw.content_type, raw.body, raw.headers),
            Ok(reply) => (
                "application/json",
                reply.body().to_string().into_bytes(),
                Vec::new(),
            ),
            Err(e) if token_api => (
                "application/json",
                e.plain_body(&request_id).to_string().into_bytes(),
                Vec::new(),
            ),
            Err(e) => (
                "application/json",
                e.body().to_string().into_bytes(),
                Vec::new(),
            ),
        };
        let mut header = respond::json_header(status, &request_id, body.len(), challenge);
        header.insert_header("content-type", content_type)?;
        if let Some(secs) = retry_after {
            header.insert_header("retry-after", secs.to_string())?;
        }
        if let Some(limited) = &rate_limited {
            respond::rate_limit_headers(&mut header, limited)?;
        }
        if let Some(allow) = allow {
            header.insert_header("allow", allow)?;
        }
        let mut clears_cookie = false;
        for (name, value) in extra {
            clears_cookie |= name == "set-cookie" && value == token::CLEAR_COOKIE;
            header.append_header(name, value)?;
        }
        if ctx.clear_token_cookie && !clears_cookie {
            header.append_header("set-cookie", token::CLEAR_COOKIE)?;
        }
        respond::send(session, header, bytes::Bytes::from(body)).await
    }

    async fn dispatch(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: &mut AuditTarget,
        audit_handed_over: &AtomicBool,
    ) -> Result<Reply, AdminError> {
        let method = session.req_header().method.clone();
        let path = admin_path(ctx).to_owned();
        let Ok(found) = self.router.at(&path) else {
            return Err(AdminError::NotFound("no such endpoint".into()));
        };
        let endpoint = *found.value;
        let param = |name: &str| found.params.get(name).unwrap_or_default().to_owned();
        let (user, user_hex, key_id) = (param("user"), param("user_hex"), param("key_id"));
        let (tenant, token_name) = (param("tenant"), param("name"));
        target.operation =
            operation(endpoint, &method).ok_or_else(|| endpoint.method_not_allowed())?;

        let body = read_body(session, ctx.body_deadline).await?;
        let caller = self.authenticate(session, ctx, &body).await?;
        // Tenant tokens, credential kinds, security level, read-only and cross-site writes:
        // checked here once for every endpoint (src/admin/guard.rs says why each rule exists).
        guard::admit(
            endpoint.surface(),
            &caller,
            &guard::Incoming {
                method: &method,
                uri: &session.req_header().uri,
                headers: &session.req_header().headers,
                body: &body,
                tls: ctx.tls,
            },
        )?;
        let request_id = ctx.request_id.as_str().to_owned();
        let config = ctx.config.clone();
        let call = Call {
            config: &config,
            caller: &caller,
            method: &method,
            body: &body,
            request_id: &request_id,
            source_ip: ctx.client_ip,
            operation: target.operation,
            tls: ctx.tls,
            audit_handed_over,
        };
        if endpoint.is_token_api() {
            let header = session.req_header();
            let domain = header
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| header.uri.host())
                .unwrap_or("")
                .to_ascii_lowercase();
            let domain = domain
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(domain.clone(), |(host, _)| host.to_owned());
            let cookie_token = match token::find_cookie(&header.headers) {
                token::CookieToken::Present(t) => Some(t),
                _ => None,
            };
            let request = tokens::TokenRequest {
                domain,
                headers: &header.headers,
                query: header.uri.query(),
                cookie_token,
            };
            target.user = caller.user_name.clone();
            return match (endpoint, &method) {
                (Endpoint::Tokens, &Method::POST) => tokens::mint(self, &call, &request).await,
                (Endpoint::Tokens, &Method::GET) => tokens::list(self, &call, &request).await,
                (Endpoint::Token, &Method::DELETE) => {
                    tokens::delete(self, &call, &request, &token_name).await
                }
                (Endpoint::TenantTokens, &Method::GET) => {
                    tokens::tenant_list(self, &call, &tenant).await
                }
                (Endpoint::TenantTokens, &Method::POST) => {
                    tokens::tenant_mint(self, &call, &request, &tenant).await
                }
                (Endpoint::TenantToken, &Method::DELETE) => {
                    tokens::tenant_delete(self, &call, &tenant, &token_name).await
                }
                _ => Err(endpoint.method_not_allowed()),
            };
        }
        let target_user = match endpoint {
            Endpoint::OwnApiKeys
            | Endpoint::OwnApiKey
            | Endpoint::OwnApiKeyRoll
            | Endpoint::OwnSignatureSession => self.resolve_caller(&caller).await?,
            _ => self.resolve_user(&user).await?,
        };
        target.user = target_user.name.clone();
        target.credential = match (user_hex.is_empty(), key_id.is_empty()) {
            (false, false) => format!("{user_hex}/{key_id}"),
            (true, false) => format!("{}/{key_id}", target_user.name),
            _ => String::new(),
        };
        let query = session.req_header().uri.query().map(str::to_owned);
        match (endpoint, &method) {
            (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::GET) => {
                api_keys::list(self, &call, &target_user).await
            }
            (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::POST) => {
                let reply = api_keys::create(self, &call, &target_user).await?;
                target.credential = reply.data["keyDescriptor"]["prefix"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Ok(reply)
            }
            (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::PUT) => {
                api_keys::renew(self, &call, &target_user, &user_hex, &key_id).await
            }
            (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::DELETE) => {
                api_keys::revoke(self, &call, &target_user, &user_hex, &key_id).await
            }
            (Endpoint::UserApiKeyRoll | Endpoint::OwnApiKeyRoll, &Method::POST) => {
                api_keys::roll(self, &call, &target_user, &user_hex, &key_id).await
            }
            (Endpoint::UserSignatures, &Method::GET) => {
                signatures::list(self, &call, &target_user).await
            }
            (Endpoint::UserSignatures, &Method::POST) => {
                let reply = signatures::enroll(self, &call, &target_user).await?;
                target.credential = format!("{}/{}", target_user.name, reply.data["keyID"]);
                Ok(reply)
            }
            (Endpoint::UserSignature, &Method::DELETE) => {
                signatures::delete(self, &call, &target_user, &key_id).await
            }
            (Endpoint::UserSignatureSession | Endpoint::OwnSignatureSession, &Method::DELETE) => {
                signatures::evict_sessions(self, &call, &target_user, query.as_deref())
            }
            (Endpoint::UserLock, &Method::PUT) => {
                users::set_locked(self, &call, &target_user, true).await
            }
            (Endpoint::UserLock, &Method::DELETE) => {
                users::set_locked(self, &call, &target_user, false).await
            }
            _ => Err(endpoint.method_not_allowed()),
        }
    }

    async fn authenticate(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        body: &[u8],
    ) -> Result<Arc<Principal>, AdminError> {
        let client_ip = ctx
            .client_ip
            .ok_or(AdminError::BadRequest("no client address".into()))?;
        // The quotas of this request's configuration snapshot; the counters are long-lived.
        let limits = ctx.config.rate_limits;
        let view = RequestView {
            header: session.req_header(),
            body: Some(body),
            tls: ctx.tls,
        };
        let budget = CheckBudget::new(&self.limiter, &limits, client_ip);
        match self
            .auth
            .authenticate_request(&view, client_ip, &budget)
            .await
        {
            Ok(Authenticated {
                principal: Some(principal),
                ..
            }) => {
                ctx.principal = Some(principal.clone());
                self.settle(
                    &budget,
                    Some(AuthOutcome::Authenticated(principal.rate_limit)),
                )?;
                Ok(principal)
            }
            Ok(Authenticated {
                clear_token_cookie, ..
            }) => {
                ctx.clear_token_cookie = clear_token_cookie;
                self.settle(
                    &budget,
                    Some(match clear_token_cookie {
                        true => AuthOutcome::Refused,
                        false => AuthOutcome::Anonymous,
                    }),
                )?;
                Err(AdminError::Unauthenticated("credentials_required"))
            }
            Err(e) => {
                let e = AdminError::from(e);
                let outcome =
                    matches!(e, AdminError::Unauthenticated(_)).then_some(AuthOutcome::Refused);
                self.settle(&budget, outcome)?;
                Err(e)
            }
        }
    }

    /// Counts an admin call against the rate limits, as the proxy counts its requests,
    /// minding what its credential check already charged (`None`: undecided, given back).
    fn settle(
        &self,
        budget: &CheckBudget<'_>,
        outcome: Option<AuthOutcome>,
    ) -> Result<(), AdminError> {
        budget.settle(outcome).map_err(|limited| {
            self.metrics.rate_limited(limited.kind);
            AdminError::RateLimited(limited)
        })
    }

    /// `{user}`: a numeric id (all digits; names never are) or a user name.
    pub(crate) async fn resolve_user(&self, user: &str) -> Result<User, AdminError> {
        let key = user.to_owned();
        let found = self
            .db
            .call(move |store| async move {
                match key.parse::<i64>() {
                    Ok(id) if key.bytes().all(|b| b.is_ascii_digit()) => store.user_by_id(id).await,
                    _ => store.user_by_name(&key).await,
                }
            })
            .await?;
        found.ok_or_else(|| AdminError::NotFound(format!("no such user: {user}")))
    }

    pub(crate) async fn resolve_caller(&self, caller: &Principal) -> Result<User, AdminError> {
        let id = caller.user_id;
        self.db
            .call(move |store| async move { store.user_by_id(id).await })
            .await?
            .ok_or_else(|| AdminError::NotFound("the caller no longer exists".into()))
    }
}

/// The normalized path the proxy decided on (never the raw one: `/authentication//v1/apikey`
/// is the same endpoint as `/authentication/v1/apikey`).
fn admin_path(ctx: &RequestCtx) -> &str {
    ctx.target.as_ref().map_or("", |t| t.path())
}

fn operation(endpoint: Endpoint, method: &Method) -> Option<&'static str> {
    match (endpoint, method) {
        (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::GET) => Some("apikey.list"),
        (Endpoint::UserApiKeys | Endpoint::OwnApiKeys, &Method::POST) => Some("apikey.create"),
        (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::PUT) => Some("apikey.renew"),
        (Endpoint::UserApiKey | Endpoint::OwnApiKey, &Method::DELETE) => Some("apikey.revoke"),
        (Endpoint::UserApiKeyRoll | Endpoint::OwnApiKeyRoll, &Method::POST) => Some("apikey.roll"),
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

/// The caller may manage `target`'s credentials: at least DEFAULT (so never an external
/// user's API key), and `target` itself or a POWER-USER. Read-only keys change nothing.
/// (`guard::admit` already refused the first and last for every endpoint; repeated here so a
/// handler called some other way stays safe.)
pub fn authorize_manage(call: &Call<'_>, target: &User) -> Result<(), AdminError> {
    let caller = call.caller;
    if caller.level < SecurityLevel::Default {
        return Err(AdminError::Forbidden(format!(
            "security level {} is too low for key management (DEFAULT needed)",
            caller.level
        )));
    }
    if caller.user_id != target.id && !caller.has_function(POWER_USER) {
        return Err(AdminError::Forbidden(format!(
            "managing another user's credentials needs {POWER_USER}"
        )));
    }
    if caller.read_only && !keyward_config::policy::is_safe(call.method) {
        return Err(AdminError::Forbidden(
            "a read-only key cannot change anything".into(),
        ));
    }
    Ok(())
}

/// `"x"` or `["x", "y"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Parses a JSON body: broken JSON is 400, well-formed JSON of the wrong shape (an unknown
/// field, a wrong type) is 412 naming the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(AdminError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut field = e.path().to_string();
        let message = e.inner().to_string();
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            if field == "." {
                field = name.to_owned();
            } else if !field.ends_with(name) {
                field = format!("{field}.{name}");
            }
            return AdminError::field(
                field,
                format!("unknown field {name}"),
                "validation.unknown.field",
            );
        }
        AdminError::field(field, message, "validation.invalid")
    })
}

/// `validSources` of a create or enroll body: CIDRs or addresses, stored normalised.
pub fn parse_valid_sources(sources: Option<OneOrMany<String>>) -> Result<Vec<String>, AdminError> {
    sources
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|source| {
            keyward_config::parse_cidr(source)
                .map(|net| net.to_string())
                .map_err(|message| AdminError::field("validSources", message, "validation.cidr"))
        })
        .collect()
}

/// The request body, whole by `deadline` (`limits.body_timeout` from its header, before the
/// caller is authenticated: an anonymous body trickled a byte at a time is cut off too).
async fn read_body(
    session: &mut Session,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<u8>, AdminError> {
    let deadline = deadline.map(tokio::time::Instant::from_std);
    let mut body = Vec::new();
    loop {
        let chunk = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, session.read_request_body())
                .await
                .map_err(|_| AdminError::BodyTimeout)?,
            None => session.read_request_body().await,
        };
        match chunk {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(AdminError::PayloadTooLarge(MAX_BODY));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(AdminError::BadRequest(format!("cannot read the body: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl keyward_http::service::LocalService for AdminApi {
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        AdminApi::handle(self, session, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_namespaces() {
        assert!(is_reserved("/authentication/v1/apikey"));
        assert!(is_reserved("/.TOKEN/"));
        assert!(is_reserved("/.TOKEN"));
        assert!(is_reserved("/_admin/manage/tenants/t/tokens/"));
        assert!(!is_reserved("/authenticationx"));
        assert!(!is_reserved("/api"));
        for path in [
            "/AUTHENTICATION/v1/apikey",
            "/Authentication",
            "/.token/",
            "/.Token",
            "/_ADMIN/manage/tenants/t/tokens/",
            "/authentication/v1/apikey",
        ] {
            assert!(is_reserved_in_any_case(path), "{path}");
        }
        assert!(!is_reserved("/AUTHENTICATION/v1/apikey"));
        for path in ["/authenticationx", "/API", "/_adminx", "/", "/.tok"] {
            assert!(!is_reserved_in_any_case(path), "{path}");
        }
    }
}
