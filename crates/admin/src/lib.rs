//! The admin API keyward answers itself (SPEC §2–§5); requests for it are never forwarded.
//!
//! One flow for every endpoint: route (matchit) → authenticate the caller with the same
//! authenticators as the proxy → handler → Argus envelope, metrics and one audit record.

pub mod api_keys;
pub mod call;
pub mod envelope;
pub mod guard;
pub mod key_usage;
pub mod openapi;
pub mod routes;
pub mod signatures;
pub mod tokens;
pub mod users;

pub use call::AdminApi;
pub use call::{authorize_manage, parse_body, parse_valid_sources, OneOrMany, POWER_USER};
use call::{AuditTarget, Call, MAX_BODY};
use envelope::{AdminError, Reply};
use http::Method;
use keyward_auth::fleet_limit::{Limits, Refused};
use keyward_auth::ratelimit::{AuthOutcome, CheckBudget};
use keyward_auth::signature::RequestView;
use keyward_auth::{token, Authenticated, Authenticator, Principal};
use keyward_http::ctx::RequestCtx;
use keyward_http::namespace::is_token_path;
#[cfg(test)]
use keyward_http::namespace::{is_reserved, is_reserved_in_any_case};
use keyward_http::respond;
use keyward_metrics::{Metrics, Outcome};
use keyward_store::audit::{self, AuditLog};
use keyward_store::{AuditEvent, Db, User};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
pub use routes::routes;
use routes::{admin_path, operation, Endpoint, ROUTES};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where an admin request comes from.
enum Source<'s> {
    /// A listener's connection: the body is read from it within `limits.body_timeout`.
    Session(&'s mut Session),
    /// Another room of keyward (see [`AdminApi::call`]); `caller`: already authenticated
    /// there (an OpenID Connect sign-in, see [`AdminApi::call_as`]).
    InProcess {
        header: &'s RequestHeader,
        body: Vec<u8>,
        caller: Option<Arc<Principal>>,
    },
}

/// An admin answer, before it is written (or handed to the room that called in-process).
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Besides `content-type`, the request id and the length: `set-cookie`, `retry-after`,
    /// `allow`, the token API's own headers.
    pub headers: Vec<(&'static str, String)>,
    /// A 401: the answer carries keyward's `WWW-Authenticate` challenge.
    pub challenge: bool,
    pub rate_limited: Option<keyward_auth::ratelimit::Limited>,
}

impl Answer {
    /// The answer's first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl AdminApi {
    // The route table is a constant; a conflict in it fails every test that starts keyward.
    #[allow(clippy::expect_used)]
    pub fn new(
        db: Db,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        limits: Arc<Limits>,
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
            limits,
        }
    }

    /// Answers an admin request completely.
    pub async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let path = admin_path(ctx).to_owned();
        let answer = self.answer(Source::Session(session), &path, ctx).await;
        let mut header = respond::json_header(
            answer.status,
            ctx.request_id.as_str(),
            answer.body.len(),
            answer.challenge,
        );
        header.insert_header("content-type", answer.content_type)?;
        for (name, value) in answer.headers {
            header.append_header(name, value)?;
        }
        if let Some(limited) = &answer.rate_limited {
            respond::rate_limit_headers(&mut header, limited)?;
        }
        respond::send(session, header, bytes::Bytes::from(answer.body)).await
    }

    /// An admin request made in-process by another of keyward's rooms (the browser pages),
    /// answered as if it had come over a listener: `header` carries its credentials (a Basic
    /// password, the browser's `token` cookie), `path` is the endpoint's normalized path. The
    /// same authentication, rate limits, guard, handler, metrics and audit record as every
    /// other admin call; nothing is written to any connection.
    pub async fn call(
        &self,
        header: &RequestHeader,
        body: Vec<u8>,
        ctx: &mut RequestCtx,
    ) -> Answer {
        let path = header.uri.path().to_owned();
        let source = Source::InProcess {
            header,
            body,
            caller: None,
        };
        self.answer(source, &path, ctx).await
    }

    /// [`AdminApi::call`] for a caller another room authenticated itself: a person who just
    /// signed in at the OpenID provider, whose principal the browser pages built (method
    /// `OIDC`, at most DEFAULT). Everything after authentication is the same.
    pub async fn call_as(
        &self,
        caller: Arc<Principal>,
        header: &RequestHeader,
        body: Vec<u8>,
        ctx: &mut RequestCtx,
    ) -> Answer {
        let path = header.uri.path().to_owned();
        let source = Source::InProcess {
            header,
            body,
            caller: Some(caller),
        };
        self.answer(source, &path, ctx).await
    }

    async fn answer(&self, source: Source<'_>, path: &str, ctx: &mut RequestCtx) -> Answer {
        let mut target = AuditTarget {
            operation: "unknown",
            ..AuditTarget::default()
        };
        // By namespace, not by route: a path under `/.TOKEN/` or `/_admin/` that names no
        // endpoint still answers in the token API's shape.
        let token_api = is_token_path(path);
        let audit_handed_over = AtomicBool::new(false);
        let result = self
            .dispatch(source, path, ctx, &mut target, &audit_handed_over)
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
        let (content_type, body, mut headers) = match result {
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
        if let Some(secs) = retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        if let Some(allow) = allow {
            headers.push(("allow", allow));
        }
        let clears_cookie = headers
            .iter()
            .any(|(name, value)| *name == "set-cookie" && value == token::CLEAR_COOKIE);
        if ctx.clear_token_cookie && !clears_cookie {
            headers.push(("set-cookie", token::CLEAR_COOKIE.to_owned()));
        }
        Answer {
            status,
            content_type,
            body,
            headers,
            challenge,
            rate_limited,
        }
    }

    async fn dispatch(
        &self,
        source: Source<'_>,
        path: &str,
        ctx: &mut RequestCtx,
        target: &mut AuditTarget,
        audit_handed_over: &AtomicBool,
    ) -> Result<Reply, AdminError> {
        let method = match &source {
            Source::Session(session) => session.req_header().method.clone(),
            Source::InProcess { header, .. } => header.method.clone(),
        };
        let Ok(found) = self.router.at(path) else {
            return Err(AdminError::NotFound("no such endpoint".into()));
        };
        let endpoint = *found.value;
        let param = |name: &str| found.params.get(name).unwrap_or_default().to_owned();
        let (user, user_hex, key_id) = (param("user"), param("user_hex"), param("key_id"));
        let (tenant, token_name) = (param("tenant"), param("name"));
        target.operation =
            operation(endpoint, &method).ok_or_else(|| endpoint.method_not_allowed())?;

        let (header, body, caller) = match source {
            Source::Session(session) => {
                let body = read_body(session, ctx.body_deadline).await?;
                (session.req_header(), body, None)
            }
            Source::InProcess {
                header,
                body,
                caller,
            } => (header, body, caller),
        };
        let caller = match caller {
            Some(caller) => {
                ctx.principal = Some(caller.clone());
                caller
            }
            None => self.authenticate(header, ctx, &body).await?,
        };
        // Tenant tokens, credential kinds, security level, read-only and cross-site writes:
        // checked here once for every endpoint (crates/admin/src/guard.rs says why each rule exists).
        guard::admit(
            endpoint.surface(),
            &caller,
            &guard::Incoming {
                method: &method,
                uri: &header.uri,
                headers: &header.headers,
                body: &body,
                // Behind a TLS proxy (`tokens.secure_cookie`) browsers address keyward over
                // https, and their `Origin` says so.
                tls: ctx.tls || ctx.config.tokens.secure_cookie,
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
            | Endpoint::OwnApiKeyUsage
            | Endpoint::OwnSignatureSession => self.resolve_caller(&caller).await?,
            _ => self.resolve_user(&user).await?,
        };
        target.user = target_user.name.clone();
        target.credential = match (user_hex.is_empty(), key_id.is_empty()) {
            (false, false) => format!("{user_hex}/{key_id}"),
            (true, false) => format!("{}/{key_id}", target_user.name),
            _ => String::new(),
        };
        let query = header.uri.query().map(str::to_owned);
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
            (Endpoint::UserApiKeyUsage | Endpoint::OwnApiKeyUsage, &Method::GET) => {
                key_usage::usage(
                    self,
                    &call,
                    &target_user,
                    &user_hex,
                    &key_id,
                    query.as_deref(),
                )
                .await
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
        header: &RequestHeader,
        ctx: &mut RequestCtx,
        body: &[u8],
    ) -> Result<Arc<Principal>, AdminError> {
        let client_ip = ctx
            .client_ip
            .ok_or(AdminError::BadRequest("no client address".into()))?;
        // The quotas of this request's configuration snapshot; the counters are long-lived.
        let limits = ctx.config.rate_limits;
        let view = RequestView {
            header,
            body: Some(body),
            tls: ctx.tls,
        };
        let budget = CheckBudget::new(self.limits.local(), &limits, client_ip);
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
                )
                .await?;
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
                )
                .await?;
                Err(AdminError::Unauthenticated("credentials_required"))
            }
            Err(e) => {
                let e = AdminError::from(e);
                let outcome =
                    matches!(e, AdminError::Unauthenticated(_)).then_some(AuthOutcome::Refused);
                self.settle(&budget, outcome).await?;
                Err(e)
            }
        }
    }

    /// Counts an admin call against the rate limits, as the proxy counts its requests,
    /// minding what its credential check already charged (`None`: undecided, given back).
    async fn settle(
        &self,
        budget: &CheckBudget<'_>,
        outcome: Option<AuthOutcome>,
    ) -> Result<(), AdminError> {
        self.limits
            .settle(budget, outcome)
            .await
            .map_err(|refused| match refused {
                Refused::Limited(limited) => {
                    self.metrics.rate_limited(limited.kind);
                    AdminError::RateLimited(limited)
                }
                Refused::Unavailable => AdminError::Unavailable,
            })
    }

    /// A token's public name (what listings show and `DELETE /.TOKEN/{name}` takes).
    pub fn token_name(&self, token: &str) -> String {
        token::name_for(&self.auth.tokens.hash(token))
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

/// The request body, whole by `deadline` (`limits.body_timeout` from its header, before the
/// caller is authenticated: an anonymous body trickled a byte at a time is cut off too).
pub async fn read_body(
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
