//! `listen.authz` (SPEC §13): an edge (nginx `auth_request`, Traefik ForwardAuth, Caddy
//! `forward_auth`, Envoy `ext_authz`) describes a request and asks whether it may pass.
//!
//! Nothing here decides: the description is turned back into the request it describes (its
//! method, target, host and scheme, on the caller's own header and body), and that request
//! goes through the proxy's one decision, [`KeywardProxy::admit`], exactly as if it had been
//! sent to the proxy listener. Only the answer differs: the identity headers instead of a
//! forwarded request, and each convention's statuses.

use crate::{is_tls, KeywardProxy};
use http::header::{HeaderName, HeaderValue, HOST};
use http::Method;
use keyward_auth::token;
use keyward_core::{IdentityHeaders, Principal};
use keyward_http::ctx::RequestCtx;
use keyward_http::respond::{self, Refusal, REQUEST_ID_HEADER};
use keyward_metrics::RouteKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Where the reason of a refusal is named for edges that keep only the status (nginx).
pub const REASON_HEADER: &str = "x-keyward-reason";

/// The caller's convention, chosen by the path it asks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `/auth/nginx`: nginx `auth_request`, ingress-nginx `auth-url`. Only 200, 401 and 403
    /// may be answered (nginx turns anything else into 500).
    Nginx,
    /// `/auth/forward`: Traefik ForwardAuth, Caddy `forward_auth` (`X-Forwarded-*`).
    Forward,
    /// `/auth/envoy/<original path>`: Envoy and Istio `ext_authz` over HTTP.
    Envoy,
}

const NGINX_PATH: &[u8] = b"/auth/nginx";
const FORWARD_PATH: &[u8] = b"/auth/forward";
const ENVOY_PREFIX: &[u8] = b"/auth/envoy";

/// Envoy's instruction, in an allowed answer of its HTTP service, to remove request headers.
pub const ENVOY_HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The names of the request's headers that claim to be keyward's (`x-keyward-*` or
/// `gateway-request-id`, with `_` read as `-`) and that the answer does not set, comma-separated.
pub fn forged_headers(request: &RequestHeader, answer: &ResponseHeader) -> String {
    let mut names: Vec<&str> = Vec::new();
    for name in request.headers.keys() {
        let name = name.as_str();
        if !is_keyward_name(name) || answer.headers.contains_key(name) || names.contains(&name) {
            continue;
        }
        names.push(name);
    }
    names.join(",")
}

/// A header name keyward owns, in any spelling an upstream may read as it.
pub fn is_keyward_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    folded.starts_with("x-keyward-") || folded == REQUEST_ID_HEADER
}

impl Convention {
    /// The convention of the caller's own request target (its path exactly, any query).
    pub fn of(raw_target: &[u8]) -> Option<Convention> {
        let path = raw_target.split(|b| *b == b'?').next().unwrap_or_default();
        if path == NGINX_PATH {
            return Some(Convention::Nginx);
        }
        if path == FORWARD_PATH {
            return Some(Convention::Forward);
        }
        let rest = path.strip_prefix(ENVOY_PREFIX)?;
        (rest.is_empty() || rest.starts_with(b"/")).then_some(Convention::Envoy)
    }

    /// The status the caller is answered for a refusal: nginx keeps 401 (its challenge goes
    /// to the client) and 403; anything else is 403, the reason in `X-Keyward-Reason`.
    pub fn status(self, refusal: Refusal) -> u16 {
        match (self, refusal.status()) {
            (Convention::Nginx, status @ (401 | 403)) => status,
            (Convention::Nginx, _) => 403,
            (_, status) => status,
        }
    }
}

/// What the description says beyond the method, target and host it rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// The original request came over TLS (its scheme was `https`).
    pub tls: bool,
}

/// Rewrites the caller's request header into the original request it describes: method,
/// request-target and `Host`. Framing headers are left alone, so the body (if the caller
/// forwarded one) is read as the caller sent it. `caller_tls`: the caller's own connection.
///
/// Each convention's fields are read once; a field given twice or also in an underscore
/// spelling (`X_Original_URI`), two fields naming the target (`X-Original-URI` and
/// `X-Original-URL`: one of them would be the client's), or a missing one refuses the request
/// rather than picking.
pub fn describe(
    convention: Convention,
    request: &mut RequestHeader,
    caller_tls: bool,
) -> Result<Original, Refusal> {
    // An HTTP/2 caller names the host in `:authority`; the target rewritten below drops it.
    if !request.headers.contains_key(HOST) {
        if let Some(authority) = request.uri.authority().map(|a| a.as_str().to_owned()) {
            request
                .insert_header(HOST, authority)
                .map_err(|_| invalid())?;
        }
    }
    let proto = single(request, "x-forwarded-proto")?;
    let mut tls = match proto.as_deref() {
        None => caller_tls,
        Some(proto) => scheme_is_tls(proto)?,
    };
    let (method, target, host) = match convention {
        Convention::Nginx => {
            let method = single(request, "x-original-method")?.ok_or_else(missing)?;
            let uri = single(request, "x-original-uri")?;
            let url = single(request, "x-original-url")?;
            let target = match (uri, url) {
                (Some(uri), None) => uri,
                (None, Some(url)) => {
                    // `scheme://host/path`: absolute-form, whose host the decision then uses.
                    let scheme = url.split(|b| *b == b':').next().unwrap_or_default();
                    tls = scheme_is_tls(scheme)?;
                    url
                }
                (Some(_), Some(_)) => return Err(Refusal::BadRequest("ambiguous_original_uri")),
                (None, None) => return Err(missing()),
            };
            (method, target, None)
        }
        Convention::Forward => {
            let method = single(request, "x-forwarded-method")?.ok_or_else(missing)?;
            let target = single(request, "x-forwarded-uri")?.ok_or_else(missing)?;
            let host = single(request, "x-forwarded-host")?.ok_or_else(missing)?;
            (method, target, Some(host))
        }
        Convention::Envoy => {
            let method = request.method.as_str().as_bytes().to_vec();
            let raw = request.raw_path();
            let rest = raw.get(ENVOY_PREFIX.len()..).unwrap_or_default();
            let target = match rest.first() {
                Some(b'/') => rest.to_vec(),
                _ => [b"/", rest].concat(),
            };
            (method, target, None)
        }
    };
    let method = Method::from_bytes(&method).map_err(|_| Refusal::BadRequest("invalid_method"))?;
    request.set_method(method);
    request.set_raw_path(&target).map_err(|_| invalid())?;
    if let Some(host) = host {
        request.insert_header(HOST, host).map_err(|_| invalid())?;
    }
    Ok(Original { tls })
}

fn missing() -> Refusal {
    Refusal::BadRequest("original_request_missing")
}

fn invalid() -> Refusal {
    Refusal::BadRequest("invalid_original_request")
}

fn scheme_is_tls(scheme: &[u8]) -> Result<bool, Refusal> {
    match scheme {
        s if s.eq_ignore_ascii_case(b"https") => Ok(true),
        s if s.eq_ignore_ascii_case(b"http") => Ok(false),
        _ => Err(invalid()),
    }
}

/// The one value of a field the convention reads. Twice is refused, and so is any other
/// spelling of its name with `_` for `-` (`X_Original_URI`): HTTP/1.1 parsers here and in Go
/// edges accept it as a distinct name, while nginx variables, CGI and WSGI read it as the same
/// field, so one of the two would be the client's. Edges never send those spellings.
fn single(request: &RequestHeader, name: &'static str) -> Result<Option<Vec<u8>>, Refusal> {
    let respelled = request
        .headers
        .keys()
        .any(|key| key.as_str() != name && same_field(key.as_str(), name));
    if respelled {
        return Err(Refusal::BadRequest("ambiguous_original_request"));
    }
    let name = HeaderName::from_static(name);
    let mut values = request.headers.get_all(&name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("ambiguous_original_request"));
    }
    Ok(Some(first.as_bytes().to_vec()))
}

/// Whether header name `other` (lower-case, as stored) is `name` with any `-` spelled `_`.
fn same_field(other: &str, name: &str) -> bool {
    other.len() == name.len()
        && other
            .bytes()
            .zip(name.bytes())
            .all(|(o, n)| o == n || (o == b'_' && n == b'-'))
}

/// The caller is one of `external_authz.trusted_callers`: only then is its description of a
/// request read at all.
pub fn trusted_caller(session: &Session, ctx: &RequestCtx) -> bool {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    peer.is_some_and(|peer| {
        ctx.config
            .external_authz
            .trusted_callers
            .iter()
            .any(|net| net.contains(&peer))
    })
}

impl KeywardProxy {
    /// Answers one question on `listen.authz`. Untrusted callers are refused before anything
    /// is read from their description.
    pub(crate) async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let convention = Convention::of(session.req_header().raw_path());
        let trusted = trusted_caller(session, ctx);
        let decided = match (trusted, convention) {
            (false, _) => Err(Refusal::Forbidden("untrusted_caller")),
            (true, None) => Err(Refusal::NotFound),
            (true, Some(convention)) => {
                let decided = self.decide_described(session, ctx, convention).await;
                self.count_key_use(ctx, &decided);
                decided.map(|_| ())
            }
        };
        ctx.route_kind = RouteKind::Authz;
        crate::connection::body_done();
        let request_id = ctx.request_id.as_str();
        match decided {
            Ok(()) => {
                // Every identity header, empty where the request has no value (an anonymous
                // request on a public route, a user without customers): an edge that copies
                // them from the answer overwrites whatever the client sent under those names,
                // and one that substitutes a missing header literally (Caddy 2.6) has none.
                let mut header = ResponseHeader::build(200, Some(12))?;
                let anonymous = IdentityHeaders::default();
                let identity = ctx
                    .principal
                    .as_deref()
                    .map_or(&anonymous, Principal::identity_headers);
                for (name, value) in identity.all() {
                    let value = value.map_or(HeaderValue::from_static(""), HeaderValue::clone);
                    header.insert_header(name.clone(), value)?;
                }
                header.insert_header(REQUEST_ID_HEADER, request_id)?;
                if convention == Some(Convention::Envoy) {
                    // Envoy overwrites the headers of the answer and keeps the client's
                    // others: the client's X-Keyward-* that the answer does not set are named
                    // for removal (`x-envoy-auth-headers-to-remove`).
                    let forged = forged_headers(session.req_header(), &header);
                    if !forged.is_empty() {
                        header.insert_header(ENVOY_HEADERS_TO_REMOVE, forged)?;
                    }
                }
                header.insert_header("cache-control", "no-store")?;
                header.insert_header("content-length", "0")?;
                respond::send(session, header, bytes::Bytes::new()).await
            }
            Err(refusal) => {
                ctx.outcome = Some(refusal.outcome());
                ctx.reason = Some(refusal.reason());
                let clear = ctx.clear_token_cookie.then_some(token::CLEAR_COOKIE);
                let (mut header, body) = refusal.response(request_id, clear)?;
                let status = convention.map_or(refusal.status(), |c| c.status(refusal));
                header.set_status(status)?;
                header.insert_header(REASON_HEADER, refusal.reason())?;
                respond::send(session, header, body).await
            }
        }
    }

    /// The described request, through the proxy's own decision.
    async fn decide_described(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        convention: Convention,
    ) -> Result<crate::Admission, Refusal> {
        // The body's framing is the caller's: fixed before the header is rewritten.
        let _ = session.is_body_empty();
        let caller_tls = is_tls(session);
        let original = describe(convention, session.req_header_mut(), caller_tls)?;
        ctx.tls = original.tls;
        self.admit(session, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.append_header(*name, *value).unwrap();
        }
        request
    }

    #[test]
    fn conventions_are_chosen_by_the_exact_path() {
        assert_eq!(Convention::of(b"/auth/nginx"), Some(Convention::Nginx));
        assert_eq!(Convention::of(b"/auth/nginx?x=1"), Some(Convention::Nginx));
        assert_eq!(Convention::of(b"/auth/forward"), Some(Convention::Forward));
        assert_eq!(Convention::of(b"/auth/envoy"), Some(Convention::Envoy));
        assert_eq!(Convention::of(b"/auth/envoy/a/b"), Some(Convention::Envoy));
        assert_eq!(Convention::of(b"/auth/envoy?q"), Some(Convention::Envoy));
        for other in [
            &b"/auth/envoyx"[..],
            b"/auth//nginx",
            b"/auth/nginx/",
            b"/AUTH/nginx",
            b"/auth/%6Eginx",
            b"/",
            b"",
        ] {
            assert_eq!(Convention::of(other), None, "{other:?}");
        }
    }

    #[test]
    fn nginx_answers_only_200_401_403() {
        use keyward_core::limit::{Limit, LimitKind, Limited};
        let limited = Limited {
            kind: LimitKind::Credential,
            limit: Limit::new(1.0, 1).unwrap(),
            retry_after: std::time::Duration::from_secs(1),
        };
        let refusals = [
            Refusal::BadRequest("x"),
            Refusal::Unauthenticated("x"),
            Refusal::Forbidden("x"),
            Refusal::NotFound,
            Refusal::RateLimited(limited),
            Refusal::Unavailable("x"),
            Refusal::PayloadTooLarge,
            Refusal::HeaderTooLarge,
            Refusal::RequestBodyTimeout,
        ];
        for refusal in refusals {
            let status = Convention::Nginx.status(refusal);
            assert!(status == 401 || status == 403, "{refusal:?} → {status}");
            assert_eq!(Convention::Forward.status(refusal), refusal.status());
            assert_eq!(Convention::Envoy.status(refusal), refusal.status());
        }
        assert_eq!(Convention::Nginx.status(Refusal::Unauthenticated("x")), 401);
    }

    #[test]
    fn nginx_description_becomes_the_request() {
        let mut r = request(
            "GET",
            "/auth/nginx",
            &[
                ("host", "app.example"),
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/a/%2e%2e/admin?x=1"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let original = describe(Convention::Nginx, &mut r, false).unwrap();
        assert!(original.tls);
        assert_eq!(r.method, Method::DELETE);
        assert_eq!(r.raw_path(), b"/a/%2e%2e/admin?x=1");
        assert_eq!(r.headers["host"], "app.example");
    }

    #[test]
    fn ingress_nginx_url_names_scheme_and_host() {
        let mut r = request(
            "GET",
            "/auth/nginx",
            &[
                ("host", "keyward.svc"),
                ("x-original-method", "GET"),
                ("x-original-url", "http://app.example/x"),
            ],
        );
        let original = describe(Convention::Nginx, &mut r, true).unwrap();
        assert!(!original.tls);
        assert_eq!(r.raw_path(), b"http://app.example/x");
    }

    #[test]
    fn two_or_no_descriptions_are_refused() {
        let cases: [&[(&'static str, &str)]; 6] = [
            &[("x-original-method", "GET")],
            &[("x-original-uri", "/")],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/"),
                ("x-original-url", "http://h/admin"),
            ],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/"),
                ("x-original-uri", "/admin"),
            ],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/"),
                ("x-forwarded-proto", "gopher"),
            ],
            &[("x-original-method", "G T"), ("x-original-uri", "/")],
        ];
        for headers in cases {
            let mut r = request("GET", "/auth/nginx", headers);
            assert!(
                describe(Convention::Nginx, &mut r, false).is_err(),
                "{headers:?}"
            );
        }
        // Underscore spellings of a field the convention reads, alone or beside it.
        for (convention, headers) in [
            (
                Convention::Nginx,
                &[("x-original-method", "GET"), ("x_original_uri", "/admin")][..],
            ),
            (
                Convention::Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/"),
                    ("x_original_uri", "/admin"),
                ],
            ),
            (
                Convention::Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/"),
                    ("x-original_url", "http://h/admin"),
                ],
            ),
            (
                Convention::Forward,
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/"),
                    ("x-forwarded-host", "h"),
                    ("x_forwarded_method", "DELETE"),
                ],
            ),
            (
                Convention::Envoy,
                &[
                    ("x-forwarded-proto", "https"),
                    ("x_forwarded_proto", "http"),
                ],
            ),
        ] {
            let mut r = request("GET", "/auth/envoy/x", headers);
            assert_eq!(
                describe(convention, &mut r, false),
                Err(Refusal::BadRequest("ambiguous_original_request")),
                "{headers:?}"
            );
        }
        // Other names that only look alike are not the field.
        let mut r = request(
            "GET",
            "/auth/nginx",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/x"),
                ("x-original-uri-", "/admin"),
                ("x.original.uri", "/admin"),
            ],
        );
        describe(Convention::Nginx, &mut r, false).unwrap();
        assert_eq!(r.raw_path(), b"/x");
        let mut r = request(
            "GET",
            "/auth/forward",
            &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/")],
        );
        assert_eq!(
            describe(Convention::Forward, &mut r, false),
            Err(Refusal::BadRequest("original_request_missing"))
        );
    }

    #[test]
    fn forward_description_names_the_host() {
        let mut r = request(
            "GET",
            "/auth/forward",
            &[
                ("host", "keyward.svc"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "//admin;x"),
                ("x-forwarded-host", "app.example"),
                ("x-forwarded-proto", "http"),
            ],
        );
        let original = describe(Convention::Forward, &mut r, true).unwrap();
        assert!(!original.tls);
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.raw_path(), b"//admin;x");
        assert_eq!(r.headers["host"], "app.example");
    }

    #[test]
    fn forged_keyward_headers_are_named_for_removal_unless_answered() {
        let r = request(
            "GET",
            "/auth/envoy/x",
            &[
                ("x-keyward-user", "mallory"),
                ("X_Keyward_Functions", "POWER-USER"),
                ("x-keyward-anything", "1"),
                ("gateway-request-id", "forged"),
                ("x-keywardish", "kept"),
                ("cookie", "a=b"),
            ],
        );
        let mut answer = ResponseHeader::build(200, None).unwrap();
        assert_eq!(
            forged_headers(&r, &answer),
            "x-keyward-user,x_keyward_functions,x-keyward-anything,gateway-request-id"
        );
        answer.insert_header("x-keyward-user", "john").unwrap();
        answer
            .insert_header("gateway-request-id", "0123456789ABCDEF")
            .unwrap();
        assert_eq!(
            forged_headers(&r, &answer),
            "x_keyward_functions,x-keyward-anything"
        );
    }

    #[test]
    fn envoy_path_after_the_prefix_is_the_original() {
        for (asked, original) in [
            ("/auth/envoy/a?b=c", "/a?b=c"),
            ("/auth/envoy//admin", "//admin"),
            ("/auth/envoy", "/"),
            ("/auth/envoy?q", "/?q"),
        ] {
            let mut r = request("PUT", asked, &[("host", "app.example")]);
            describe(Convention::Envoy, &mut r, false).unwrap();
            assert_eq!(r.raw_path(), original.as_bytes(), "{asked}");
            assert_eq!(r.method, Method::PUT);
        }
    }
}
