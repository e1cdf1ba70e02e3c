//! The pingora `ProxyHttp` implementation. Read it top-down; each request goes
//! filter → authenticate → policy → forward, and anything refused is answered here, never
//! forwarded.

pub mod authz;
pub mod authz_grpc;
pub mod connection;
pub mod forward;
pub mod ip_text;
#[cfg(test)]
mod tests;
pub mod upgrade;
pub mod upload;

use async_trait::async_trait;
use ctx::RequestCtx;
use forward::Forwarding;
use ip_text::IpText;
use keyward_auth::fleet_limit::{Limits, Refused};
use keyward_auth::quota::QuotaRefusal;
use keyward_auth::ratelimit::{AuthOutcome, CheckBudget, Limited};
use keyward_auth::usage::KeyOutcome;
use keyward_auth::{
    client_ip, signature, token, Authenticated, Authenticator, Credential, Principal,
};
use keyward_config::policy::{self, Route};
use keyward_config::reload::LiveConfig;
use keyward_config::Config;
use keyward_core::{AuthError, SignatureError};
use keyward_http::namespace;
use keyward_http::service::LocalService;
use keyward_http::{ctx, respond, target};
use keyward_metrics::{Metrics, Outcome, RouteKind, UpstreamError};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use respond::{Refusal, REQUEST_ID_HEADER};
use std::sync::Arc;
use std::time::Instant;
use target::RequestTarget;
use upload::UploadSpool;

/// The `tracing` target of access log lines: the log writer batches these (and only these).
pub const ACCESS_TARGET: &str = "keyward::access";

pub struct KeywardProxy {
    config: Arc<LiveConfig>,
    listener: Listener,
    metrics: Arc<Metrics>,
    auth: Arc<Authenticator>,
    admin: Arc<dyn LocalService>,
    /// The browser pages (`/.keyward/…`, SPEC §14).
    browser: Arc<dyn LocalService>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// The upstream's address when there is only one (the sidecar case): chosen without the
    /// balancer, whose selection hashes the backend and looks its health up on every request
    /// (about 1 700 instructions, measured under callgrind). The set of backends is fixed
    /// at start (`upstream` needs a restart).
    single_upstream: Option<pingora::protocols::l4::socket::SocketAddr>,
    /// Rate-limit counters (the replica's own, and the fleet's leases): outside the config, so
    /// that a reload changes quotas, not counts.
    limits: Arc<Limits>,
    /// Signed bodies being checked, and the bound on them (shared by the listeners).
    uploads: Arc<UploadSpool>,
}

/// What the proxies of every listener share.
pub struct ProxyParts {
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    pub admin: Arc<dyn LocalService>,
    pub browser: Arc<dyn LocalService>,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub limits: Arc<Limits>,
    pub uploads: Arc<UploadSpool>,
}

/// Which listener a proxy instance serves: what it answers itself and what it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The proxy listener: forwards to the upstream; answers the admin API too unless
    /// `listen.admin` gives it a listener of its own.
    Proxy { serves_admin: bool },
    /// `listen.admin`: the admin API only; everything else is 404 and nothing is forwarded.
    Admin,
    /// `listen.authz` (SPEC §13): answers edges whether the request they describe may pass;
    /// decides it as the proxy listener would, forwards nothing, serves no admin API.
    Authz,
}

impl Listener {
    fn serves_admin(self) -> bool {
        matches!(
            self,
            Listener::Admin | Listener::Proxy { serves_admin: true }
        )
    }
}

/// What decides a request once its principal is known: the route and the normalized target,
/// under the configuration the request started with.
struct Decision<'a> {
    config: &'a Config,
    route: &'a Route,
    target: &'a RequestTarget,
}

/// Where an admitted request goes.
pub(crate) enum Admission {
    Upstream,
    Admin,
    /// The browser pages, answered by keyward (`/.keyward/…`).
    Browser,
}

impl KeywardProxy {
    pub fn new(config: Arc<LiveConfig>, listener: Listener, parts: ProxyParts) -> KeywardProxy {
        let ProxyParts {
            metrics,
            auth,
            admin,
            browser,
            upstreams,
            limits,
            uploads,
        } = parts;
        let backends = upstreams.backends().get_backend();
        let single_upstream = match backends.len() {
            1 => backends.first().map(|backend| backend.addr.clone()),
            _ => None,
        };
        KeywardProxy {
            config,
            listener,
            metrics,
            auth,
            admin,
            browser,
            upstreams,
            single_upstream,
            limits,
            uploads,
        }
    }

    /// The listener this proxy serves.
    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// Decides a request: to the upstream (with `ctx.principal` set), to the admin API, or
    /// refused. Each step either passes or refuses; nothing is forwarded before all passed.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Admission, Refusal> {
        if self.listener != Listener::Authz {
            // On `listen.authz` the scheme is the described request's (see `authz`).
            ctx.tls = is_tls(session);
        }
        // A client that stops reading its answer (or keeps an HTTP/2 window closed) holds a
        // connection, its client slot and an upstream connection: each write may wait at most
        // `limits.send_timeout` (nginx's `send_timeout`), then the connection is closed.
        session.set_write_timeout(Some(ctx.config.limits.network.send_timeout));
        self.arm_body_deadline(session, ctx);
        let target = inspect(
            session.req_header(),
            ctx.config.limits.max_request_header_bytes,
        )?;
        self.client_address(session, ctx)?;
        if let Some(authority) = target.authority() {
            // An absolute-form target names the host itself (RFC 9112 §3.2.2); everything
            // after this step (token domains, `@authority`, the upstream) sees that one.
            session
                .req_header_mut()
                .insert_header(http::header::HOST, authority)
                .map_err(|_| Refusal::BadRequest("invalid_request_target"))?;
        }
        // HTTP/2 names the host in `:authority`, which pingora keeps as the URI's authority,
        // often without a `Host` header: token domains, `@authority` and the admin origin
        // check read the URI's authority when `Host` is absent, pingora refuses a `Host` that
        // differs from it, and writes it as `Host` for the HTTP/1.1 upstream.

        self.address_limit(ctx)?;
        let path = target.path();
        // Routes match in any case: so do keyward's own namespaces, and the spellings that an
        // upstream folding case (IIS, ASP.NET) reads as another path are refused (SPEC §15).
        let case_insensitive = routes_case_insensitive(&ctx.config);
        if case_insensitive {
            target.check_windows_aliases()?;
        }
        // The browser pages' namespace is new and keyward's alone: it is reserved in every
        // case spelling whatever the routes do, so no spelling of it is ever forwarded.
        let reserved = match case_insensitive {
            true => namespace::is_reserved_in_any_case(path),
            false => namespace::is_reserved(path) || namespace::is_browser_path(path),
        };
        if reserved {
            if self.listener == Listener::Authz {
                // keyward's own paths are keyward's, never the upstream's: an edge asking about
                // one is refused, and nothing of the admin API runs here.
                return Err(Refusal::Forbidden("reserved_path"));
            }
            if namespace::is_browser_path(path) {
                // On the proxy listener only (where browsers come), and only when the operator
                // turned the pages on; otherwise nothing answers there.
                if !matches!(self.listener, Listener::Proxy { .. }) || !ctx.config.browser.sign_in {
                    return Err(Refusal::NotFound);
                }
                ctx.target = Some(target);
                ctx.route_kind = RouteKind::Admin;
                return Ok(Admission::Browser);
            }
            if !self.listener.serves_admin() {
                // `listen.admin` is set: the admin API is not on this listener at all.
                return Err(Refusal::NotFound);
            }
            ctx.target = Some(target);
            ctx.route_kind = RouteKind::Admin;
            return Ok(Admission::Admin);
        }
        if self.listener == Listener::Admin {
            return Err(Refusal::NotFound);
        }
        let config = ctx.config.clone();
        let route = route(&config, &session.req_header().method, &target)?;
        ctx.route_kind = match route.public {
            true => RouteKind::Public,
            false => RouteKind::Protected,
        };
        let client = ctx
            .client_ip
            .ok_or(Refusal::BadRequest("no_client_address"))?;
        let budget = CheckBudget::new(self.limits.local(), &ctx.config.rate_limits, client);
        let decision = Decision {
            config: &config,
            route,
            target: &target,
        };
        let authenticated = match self.authenticate(session, ctx, &budget, &decision).await {
            Ok(authenticated) => authenticated,
            Err(refusal @ Refusal::Unauthenticated(_)) => {
                self.settle(&budget, Some(AuthOutcome::Refused)).await?;
                return Err(refusal);
            }
            Err(refusal) => {
                // Undecided (503) or refused by a limit: a charge, if any, goes back.
                self.settle(&budget, None).await?;
                return Err(refusal);
            }
        };
        let outcome = match (&authenticated.principal, authenticated.clear_token_cookie) {
            (Some(principal), _) => AuthOutcome::Authenticated(principal.rate_limit),
            (None, true) => AuthOutcome::Refused,
            (None, false) => AuthOutcome::Anonymous,
        };
        ctx.principal = authenticated.principal;
        ctx.clear_token_cookie = authenticated.clear_token_cookie;
        if !authenticated.limit_counted {
            self.settle(&budget, Some(outcome)).await?;
        }
        self.decide(
            &config,
            route,
            ctx.principal.as_deref(),
            session.req_header(),
            &target,
        )?;
        // Last, just before forwarding: only a request that would be forwarded spends its
        // key's quota.
        if let Some(principal) = ctx.principal.as_deref() {
            self.auth
                .take_quota(principal)
                .await
                .map_err(|refusal| match refusal {
                    QuotaRefusal::Exhausted(exhausted) => Refusal::QuotaExhausted(exhausted),
                    QuotaRefusal::Unavailable => Refusal::Unavailable("quota_unavailable"),
                })?;
        }
        ctx.target = Some(target);
        Ok(Admission::Upstream)
    }

    /// Counts a proxied request made with an API key for `…/usage`: forwarded, refused by the
    /// route policy (403), or over its rate limit or quota (429). A request whose key did not check
    /// out has no principal and is not counted (anyone can write a key's prefix); admin calls
    /// are answered by keyward itself and are not counted either.
    fn count_key_use(&self, ctx: &RequestCtx, admission: &Result<Admission, Refusal>) {
        let Some(principal) = ctx.principal.as_deref() else {
            return;
        };
        let outcome = match admission {
            Ok(Admission::Upstream) => KeyOutcome::Accepted,
            Err(Refusal::Forbidden(_)) => KeyOutcome::Refused,
            Err(Refusal::RateLimited(_) | Refusal::QuotaExhausted(_)) => KeyOutcome::RateLimited,
            Ok(Admission::Admin | Admission::Browser) | Err(_) => return,
        };
        self.auth.api_keys.count(principal, outcome);
    }

    /// `limits.body_timeout` (SPEC §15): a request with a body must have sent it whole within
    /// this time of its header, whoever asks and wherever it goes — forwarded, admin, refused.
    /// Over HTTP/1.1 pingora's read timeout carries the time left into each body read (and
    /// [`ProxyHttp::request_body_filter`] shortens it chunk by chunk), and the drain of a body
    /// left unread behind a refusal is bounded by it too; the admin API and signed bodies hold
    /// their reads to the deadline themselves. An upgrade's stream is no body.
    fn arm_body_deadline(&self, session: &mut Session, ctx: &mut RequestCtx) {
        // The body question first: most requests have none, and pingora answers it once.
        if session.is_body_empty()
            || session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE)
        {
            return;
        }
        let timeout = ctx.config.limits.network.body_timeout;
        let deadline = Instant::now() + timeout;
        ctx.body_deadline = Some(deadline);
        crate::connection::arm_body_deadline(deadline);
        session.set_read_timeout(Some(timeout));
        session.set_total_drain_timeout(Some(timeout));
    }

    /// Who is asking: fail closed without a client address, since every policy needs one.
    fn client_address(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d` (SPEC §15).
            .map(|a| a.ip().to_canonical())
        else {
            return Err(Refusal::BadRequest("no_client_address"));
        };
        let config = &ctx.config;
        // On `listen.authz` the caller (a trusted edge) names the client as a trusted proxy
        // would: the chain is read past it.
        let callers;
        let trusted = match self.listener {
            Listener::Authz => {
                callers = [
                    &config.external_authz.trusted_callers[..],
                    &config.trusted_proxies[..],
                ]
                .concat();
                &callers[..]
            }
            _ => &config.trusted_proxies[..],
        };
        let address = client_ip::resolve(
            peer,
            &session.req_header().headers,
            trusted,
            config.trusted_proxies_header,
        );
        ctx.peer_trusted = config.trusted_proxies.iter().any(|net| net.contains(&peer));
        ctx.x_forwarded_for = Some(Forwarding::chain_value(&address.chain));
        ctx.client_ip = Some(address.client);
        Ok(())
    }

    /// A client network whose refused credentials used up `per_client_unauthenticated` is
    /// refused before any credential is checked (admin calls included).
    fn address_limit(&self, ctx: &RequestCtx) -> Result<(), Refusal> {
        let client = ctx
            .client_ip
            .ok_or(Refusal::BadRequest("no_client_address"))?;
        self.limits
            .local()
            .before_authentication(&ctx.config.rate_limits, client, Instant::now())
            .map_err(|limited| self.limited(limited))
    }

    /// Counts the request against its credential's and its user's quotas, or its client
    /// network's, minding what its credential check already charged (`None`: undecided, the
    /// charge goes back). Under `rate_limits.scope: fleet` the counts are the fleet's (see
    /// `keyward_auth::fleet_limit`): most take a token of the replica's lease, a few await a
    /// Redis call.
    async fn settle(
        &self,
        budget: &CheckBudget<'_>,
        outcome: Option<AuthOutcome>,
    ) -> Result<(), Refusal> {
        self.limits
            .settle(budget, outcome)
            .await
            .map_err(|refused| match refused {
                Refused::Limited(limited) => self.limited(limited),
                Refused::Unavailable => Refusal::Unavailable("rate_limit_unavailable"),
            })
    }

    fn limited(&self, limited: Limited) -> Refusal {
        self.metrics.rate_limited(limited.kind);
        Refusal::RateLimited(limited)
    }

    /// Checks the request's credential. A signed request with a body is checked in two steps
    /// around its body: the signature first, so only a good signature gets its body read;
    /// then the whole body against `Content-Digest`, before anything is forwarded (see
    /// `upload`). Whether there is a body is pingora's framing decision (any `Content-Length`
    /// form, any `Transfer-Encoding`, HTTP/2 DATA frames), the one the upstream will see.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        budget: &CheckBudget<'_>,
        decision: &Decision<'_>,
    ) -> Result<Authenticated, Refusal> {
        // A gRPC `Check` carries the described request's body in its message (see `authz_grpc`).
        let has_body = match &ctx.described_body {
            Some(body) => !body.is_empty(),
            None => !session.is_body_empty(),
        };
        let client_ip = ctx
            .client_ip
            .ok_or(Refusal::BadRequest("no_client_address"))?;
        let request = session.req_header();
        let credential = self.auth.find_credential(&request.headers)?;
        let view = signature::RequestView {
            header: request,
            body: None,
            tls: ctx.tls,
        };
        if credential != Credential::Signature {
            return Ok(self
                .auth
                .authenticate_found(credential, &view, client_ip, budget)
                .await?);
        }
        Box::pin(self.authenticate_signed(session, ctx, client_ip, budget, decision, has_body))
            .await
    }

    /// A signed request: the signature first (a used one is refused there), then the
    /// credential's rate limit and the route's decision, and only then — for a request that
    /// would pass — its body, read and hashed within the credential's share of the in-flight
    /// bound, and the claim in the replay window. A request refused by its limit or its route
    /// spends no place in the window, so a key cannot fill it with requests that never pass.
    async fn authenticate_signed(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        client_ip: std::net::IpAddr,
        budget: &CheckBudget<'_>,
        decision: &Decision<'_>,
        has_body: bool,
    ) -> Result<Authenticated, Refusal> {
        let view = signature::RequestView {
            header: session.req_header(),
            body: None,
            tls: ctx.tls,
        };
        let pending = self
            .auth
            .verify_signature(&view, has_body, client_ip, budget)
            .await?;
        let credential = pending.principal().rate_limit;
        self.settle(budget, Some(AuthOutcome::Authenticated(credential)))
            .await?;
        self.decide(
            decision.config,
            decision.route,
            Some(pending.principal()),
            session.req_header(),
            decision.target,
        )?;
        let authz = self.listener == Listener::Authz;
        if !has_body {
            // An edge that did not forward the body cannot have a digest over it checked
            // (SPEC §13): refused, never taken as the empty body.
            if authz && covers_content_digest(session.req_header()) {
                return Err(Refusal::Forbidden("body_not_forwarded"));
            }
            let principal = self.auth.accept_signature(pending, None, client_ip).await?;
            return Ok(Authenticated {
                principal: Some(principal),
                clear_token_cookie: false,
                limit_counted: true,
            });
        }
        let expected = pending
            .expected_body()
            .cloned()
            .ok_or(Refusal::BadRequest("unframed_body"))?;
        // Envoy cut the body at `max_request_bytes` (`allow_partial_message`): not the whole
        // body, so not forwarded (SPEC §13). Whoever sets the marker, a cut body never passes:
        // without it, it is a digest mismatch.
        if authz && partial_body(session.req_header()) {
            return Err(Refusal::Forbidden("body_not_forwarded"));
        }
        let forward_body_max = ctx.config.external_authz.forward_body_max;
        let (hasher, body) = match &ctx.described_body {
            // A gRPC caller's forwarded body, already read with its message.
            Some(described) => {
                if described.len() as u64 > forward_body_max {
                    return Err(Refusal::Forbidden("body_not_forwarded"));
                }
                let mut hasher = expected.hasher();
                hasher.update(described);
                (hasher, None)
            }
            None => {
                let mut limits = std::borrow::Cow::Borrowed(&ctx.config.signed_bodies);
                if authz {
                    limits.to_mut().max_body = limits.max_body.min(forward_body_max);
                }
                let body = upload::read(
                    session,
                    &expected,
                    &limits,
                    &self.uploads,
                    pending.principal().user_id,
                )
                .await
                .map_err(|refusal| match refusal {
                    // More than the caller may forward: the digest cannot be checked.
                    Refusal::PayloadTooLarge if authz => Refusal::Forbidden("body_not_forwarded"),
                    refusal => refusal,
                })?;
                (body.hasher.clone(), Some(body))
            }
        };
        let principal = self
            .auth
            .accept_signature(pending, Some(hasher), client_ip)
            .await
            .map_err(|e| match e {
                // The edge forwarded a body that is not the one signed: the request it asks
                // about may not pass (SPEC §13: 403); a client's own is the proxy's 401.
                AuthError::Signature(SignatureError::DigestMismatch) if authz => {
                    Refusal::Forbidden("digest_mismatch")
                }
                e => Refusal::from(e),
            })?;
        // An edge's question is answered, never forwarded: its body goes nowhere.
        if let Some(body) = body.filter(|_| !authz) {
            body.install(session).await?;
        }
        crate::connection::body_done();
        Ok(Authenticated {
            principal: Some(principal),
            clear_token_cookie: false,
            limit_counted: true,
        })
    }

    /// The route's decision for the request's method and for every method it asks the
    /// upstream to serve instead (method-override headers, `_method`): the upstream serves
    /// the override, so the policy must allow it on the same route. A read-only credential
    /// may not override at all.
    fn decide(
        &self,
        config: &Config,
        route: &Route,
        principal: Option<&Principal>,
        request: &RequestHeader,
        target: &RequestTarget,
    ) -> Result<(), Refusal> {
        if let Some(refusal) = Refusal::from_decision(route.decide(principal, &request.method)) {
            return Err(refusal);
        }
        let overrides = policy::method_overrides(&request.headers, target.query())
            .map_err(|_| Refusal::BadRequest("invalid_method_override"))?;
        for method in &overrides {
            if principal.is_some_and(|p| p.read_only) {
                return Err(Refusal::Forbidden("read_only"));
            }
            let same_route =
                self::route(config, method, target).is_ok_and(|other| std::ptr::eq(other, route));
            if !same_route {
                return Err(Refusal::Forbidden("method_override_not_allowed"));
            }
            if let Some(refusal) = Refusal::from_decision(route.decide(principal, method)) {
                return Err(refusal);
            }
        }
        Ok(())
    }
}

/// Drops the upstream's spelling of its response's header names. pingora keeps it in a
/// second map beside the headers, which every header keyward or pingora adds to the answer
/// (`Gateway-Request-Id`, `Date`, `Connection`) must also grow and fill: measured under
/// callgrind, that second map cost ~1 000 instructions a request. Without it pingora writes
/// standard names in their usual capitals and others in lower case, as behind Envoy or
/// linkerd (header names are case-insensitive, RFC 9110 §5.1; HTTP/2 has only lower case).
/// A reason phrase of the upstream's own is kept.
fn forget_header_case(response: &mut ResponseHeader) -> pingora::Result<()> {
    let custom_reason = response
        .get_reason_phrase()
        .filter(|reason| Some(*reason) != response.status.canonical_reason())
        .map(str::to_owned);
    let (empty, ()) = http::Response::new(()).into_parts();
    let spelled = std::mem::replace(response, ResponseHeader::from(empty));
    *response = ResponseHeader::from(http::response::Parts::from(spelled));
    if custom_reason.is_some() {
        response.set_reason_phrase(custom_reason.as_deref())?;
    }
    Ok(())
}

/// Whether a signature covers `content-digest` (one that does not parse covers nothing; it
/// was refused before this is asked).
fn covers_content_digest(request: &RequestHeader) -> bool {
    signature::parse_headers(request)
        .is_ok_and(|signed| signed.components.iter().any(|c| c == "content-digest"))
}

/// Envoy's mark on a check request whose body it cut (`x-envoy-auth-partial-body: true`).
fn partial_body(request: &RequestHeader) -> bool {
    request
        .headers
        .get_all("x-envoy-auth-partial-body")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// Whether the request came over TLS: the connection's TLS digest, whatever the protocol.
pub fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The first step, on the request as pingora parsed it: its size, its method, then its
/// normalized target.
fn inspect(request: &RequestHeader, header_limit: usize) -> Result<RequestTarget, Refusal> {
    check_header_size(request, header_limit)?;
    // Methods are case-sensitive (RFC 9110 §9.1) but frameworks upper-case them (Werkzeug,
    // Rack): `delete` would pass a route limited to `DELETE` and be served as DELETE.
    if request
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(Refusal::BadRequest("invalid_method"));
    }
    Ok(RequestTarget::parse(&request.method, request.raw_path())?)
}

/// `routes_case_insensitive`: the setting is kept on each route (they all share it).
fn routes_case_insensitive(config: &Config) -> bool {
    config
        .routes
        .first()
        .is_some_and(|route| route.case_insensitive)
}

/// The first route for the normalized path; `OPTIONS *` is about the whole server, so the
/// route of `/` decides it.
fn route<'c>(
    config: &'c Config,
    method: &http::Method,
    target: &RequestTarget,
) -> Result<&'c Route, Refusal> {
    let path = if target.is_asterisk() {
        "/"
    } else {
        target.path()
    };
    policy::route_for(&config.routes, method, path).ok_or(Refusal::Forbidden("no_route"))
}

/// Request line plus header fields, as the client sent them, within the configured limit
/// (431 above it, as Envoy and nginx answer). pingora itself reads at most 1 MiB of header.
fn check_header_size(request: &RequestHeader, limit: usize) -> Result<(), Refusal> {
    // `METHOD SP target SP HTTP/1.1 CRLF`, then `name: value CRLF` per field.
    let mut size = request.method.as_str().len() + request.raw_path().len() + 11;
    for (name, value) in &request.headers {
        size += name.as_str().len() + value.len() + 4;
        if size > limit {
            return Err(Refusal::HeaderTooLarge);
        }
    }
    match size > limit {
        true => Err(Refusal::HeaderTooLarge),
        false => Ok(()),
    }
}

fn header_str<'r>(request: &'r RequestHeader, name: &http::header::HeaderName) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The host the client asked for: `Host`, or HTTP/2's `:authority`.
fn request_host(request: &RequestHeader) -> Option<&str> {
    header_str(request, &http::header::HOST).or_else(|| request.uri.authority().map(|a| a.as_str()))
}

/// Why a request could not be proxied, for an error on the upstream side.
fn upstream_error(e: &Error) -> Option<UpstreamError> {
    if e.etype() == &ErrorType::ConnectNoRoute {
        return Some(UpstreamError::NoHealthyUpstream);
    }
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ConnectRefused => UpstreamError::ConnectRefused,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            UpstreamError::Timeout
        }
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            UpstreamError::Reset
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => UpstreamError::Tls,
        _ => UpstreamError::Other,
    })
}

/// The normalized path once it is known, else the path as the client sent it.
fn logged_path<'a>(request: &'a RequestHeader, ctx: &'a RequestCtx) -> &'a str {
    ctx.target
        .as_ref()
        .map_or(request.uri.path(), RequestTarget::path)
}

/// The path as logs may show it: the token API accepts a token itself where it takes a
/// token name, so any segment holding a token there is redacted. A refused request is logged
/// with the path it sent (`//.TOKEN/<token>%00`), so the check looks for the token API's
/// names anywhere and for a token anywhere in a segment.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    // Any case: with `routes_case_insensitive`, `/.token/<token>` is the token API's namespace
    // too (answered 404, but its token must not reach the log).
    if !contains_ignore_ascii_case(path, ".token") && !contains_ignore_ascii_case(path, "_admin") {
        return path.into();
    }
    path.split('/')
        .map(|segment| match holds_token(segment) {
            true => "[redacted]",
            false => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A run of 32 hex digits (a token, in any case, with anything around it).
fn holds_token(segment: &str) -> bool {
    let mut run = 0;
    for b in segment.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 32 {
            return true;
        }
    }
    false
}

#[async_trait]
impl ProxyHttp for KeywardProxy {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default adds a response-compression module, disabled,
    /// that is still set up and called on every request and body chunk. keyward compresses
    /// nothing (it passes the upstream's encoding through).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.config.current(), self.metrics.request_started())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        // pingora makes an HTTP/1.1 connection's idle time endless when the client names none
        // (`respect_keepalive`, after the request is read): every connection keyward keeps
        // waits at most its keep-alive time for the next request.
        if session
            .get_keepalive()
            .is_some_and(|idle| idle == 0 || idle > connection::KEEPALIVE_SECONDS)
        {
            session.set_keepalive(Some(connection::KEEPALIVE_SECONDS));
        }
        if self.listener == Listener::Authz {
            Box::pin(self.answer_authz(session, ctx)).await?;
            return Ok(true);
        }
        let admission = self.admit(session, ctx).await;
        self.count_key_use(ctx, &admission);
        match admission {
            Ok(Admission::Upstream) => Ok(false),
            Ok(admission @ (Admission::Admin | Admission::Browser)) => {
                let service = match admission {
                    Admission::Browser => &self.browser,
                    _ => &self.admin,
                };
                // Boxed, as the signed-body path below: the future of every request holds the
                // state of its largest path, and these two are rare and large.
                let handled = Box::pin(service.handle(session, ctx)).await;
                // The admin API read the body within the deadline, or never will; a body left
                // unread is drained within `limits.body_timeout` (the drain timeout).
                crate::connection::body_done();
                handled?;
                Ok(true)
            }
            Err(refusal) => {
                crate::connection::body_done();
                ctx.outcome = Some(refusal.outcome());
                ctx.reason = Some(refusal.reason());
                let clear = ctx.clear_token_cookie.then_some(token::CLEAR_COOKIE);
                if ctx.config.browser.sign_in
                    && matches!(refusal, Refusal::Unauthenticated(_))
                    && self.listener != Listener::Authz
                {
                    if let Some(location) =
                        keyward_http::browser::sign_in_redirect(session.req_header())
                    {
                        return respond::send_redirect(
                            session,
                            &location,
                            ctx.request_id.as_str(),
                            clear,
                        )
                        .await
                        .map(|()| true);
                    }
                }
                refusal
                    .send(session, ctx.request_id.as_str(), clear)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Each chunk of a forwarded body: the next read may take only what is left of
    /// `limits.body_timeout`.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if end_of_stream {
            crate::connection::body_done();
        }
        let Some(deadline) = ctx.body_deadline.filter(|_| !end_of_stream) else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "request body not received within limits.body_timeout",
            )
            .into_down());
        }
        session.set_read_timeout(Some(left));
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let address = match &self.single_upstream {
            Some(address) => address.clone(),
            None => {
                self.upstreams
                    .select(b"", 256)
                    .ok_or_else(|| {
                        Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream")
                    })?
                    .addr
            }
        };
        ctx.upstream_started = Some(Instant::now());
        ctx.upstream_address = address.as_inet().copied();
        let upstream = &ctx.config.upstream;
        let mut peer = HttpPeer::new(address, upstream.tls, upstream.sni.clone());
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        peer.options.read_timeout = Some(upstream.read_timeout);
        peer.options.write_timeout = Some(upstream.read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let identity = forward::Identity {
            headers: ctx.principal.as_deref().map(Principal::identity_headers),
            request_id: ctx.request_id.as_str(),
        };
        let target = ctx.target.as_ref();
        let forwarding = Forwarding {
            target: target.filter(|t| t.rewritten()).map(RequestTarget::as_str),
            authority: target.and_then(RequestTarget::authority),
            x_forwarded_for: ctx
                .x_forwarded_for
                .clone()
                .ok_or_else(|| Error::explain(ErrorType::InternalError, "no client address"))?,
            peer_trusted: ctx.peer_trusted,
            tls: ctx.tls,
        };
        *upstream = forward::upstream_request(
            upstream,
            identity,
            forwarding,
            ctx.config.forward_credentials,
        )?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.metrics.upstream_response(response.status.as_u16());
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !upgrade::websocket_accepted(&session.req_header().headers, &response.headers)
        {
            // What follows a 101 is relayed unseen: only a completed WebSocket handshake
            // may open that tunnel (see `upgrade`). The error answers 502 and closes.
            ctx.reason = Some("upstream_bad_upgrade");
            return Err(pingora::Error::explain(
                pingora::ErrorType::HTTPStatus(502),
                "upstream answered 101 without completing a WebSocket handshake",
            ));
        }
        // Informational responses (100 Continue) come before the real one: time that.
        if !response.status.is_informational() {
            if let Some(started) = ctx.upstream_started {
                let seconds = started.elapsed().as_secs_f64();
                ctx.upstream_seconds = Some(seconds);
                self.metrics.upstream_duration(seconds);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if response.has_case() {
            forget_header_case(response)?;
        }
        response.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if ctx.clear_token_cookie {
            response.append_header("set-cookie", token::CLEAR_COOKIE)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let refusal = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(400)) => Some(Refusal::BadRequest("malformed_request")),
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some(Refusal::RequestBodyTimeout),
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) if e.esource() == &ErrorSource::Upstream => Some(Refusal::GatewayTimeout),
            (ErrorSource::Upstream, _) | (_, ErrorType::ConnectNoRoute) => {
                Some(Refusal::BadGateway("upstream_unavailable"))
            }
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(Refusal::BadRequest("malformed_request")),
            _ => Some(Refusal::Unavailable("internal_error")),
        };
        if let Some(reason) = upstream_error(e) {
            self.metrics.upstream_error(reason);
            // keyward's own 502/504 stands for the upstream's answer: an upstream that is
            // down entirely must show in the 5xx rate, not vanish from it.
            if let Some(refusal) = refusal {
                self.metrics.upstream_response(refusal.status());
            }
        }
        let Some(refusal) = refusal else {
            ctx.outcome = Some(Outcome::Error);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.outcome = Some(refusal.outcome());
        ctx.reason = Some(refusal.reason());
        // Once the upstream's response has started, the status line is gone; just close.
        if session.response_written().is_none() {
            if let Err(write_error) = refusal.send(session, ctx.request_id.as_str(), None).await {
                tracing::debug!(error = %write_error, "could not send error response");
            }
        }
        FailToProxy {
            error_code: refusal.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let request = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let outcome = ctx.outcome.unwrap_or(if error.is_some() {
            Outcome::Error
        } else {
            Outcome::Allowed
        });
        self.metrics.request(&request.method, outcome);
        self.metrics
            .request_duration(ctx.route_kind, ctx.started.elapsed().as_secs_f64());
        let principal = ctx.principal.as_deref();
        // Fields as text, not `Display` values: formatting through `fmt` was most of the cost
        // of an access log line (measured under callgrind). Each is computed inside the macro,
        // so only when the access log is on.
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = ctx.request_id.as_str(),
            method = request.method.as_str(),
            // The path only (query strings can carry secrets), tokens in it redacted.
            path = &*loggable_path(logged_path(request, ctx)),
            status,
            outcome = outcome.as_str(),
            reason = ctx.reason.unwrap_or(""),
            user = principal.map(|p| p.user_name.as_str()).unwrap_or("-"),
            auth_method = principal.map(|p| p.method.as_str()).unwrap_or("-"),
            client_ip = ctx.client_ip.map(IpText::ip).as_ref().map(IpText::as_str),
            host = request_host(request),
            user_agent = header_str(request, &http::header::USER_AGENT),
            bytes_received = session.body_bytes_read(),
            bytes_sent = session.body_bytes_sent(),
            upstream = ctx.upstream_address.map(IpText::socket).as_ref().map(IpText::as_str),
            upstream_ms = ctx.upstream_seconds.map(|s| s * 1000.0),
            duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
        );
    }

    /// A client that goes away mid-request is not keyward's error, and must not be able to
    /// write an error line per connection: over TLS every close without `close_notify` (load
    /// tools, closed browser tabs) fails the read. The access log still records the request.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            )
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let request = session.req_header();
        format!(
            "{} {} request_id={}",
            request.method,
            loggable_path(logged_path(request, ctx)),
            ctx.request_id.as_str()
        )
    }
}
