//! gRPC `envoy.service.auth.v3.Authorization/Check` (SPEC §13) on `listen.authz`, beside the
//! HTTP conventions: the same port (HTTP/2 by prior knowledge, h2c), told apart by path and
//! `content-type: application/grpc`. The `CheckRequest` describes the request (method, path,
//! host, scheme, headers, body when Envoy forwards it); it becomes the session's request and
//! goes through the proxy's one decision, as the HTTP conventions do (see `authz`).
//!
//! The messages are the subset of `envoy/service/auth/v3/external_auth.proto` and
//! `attribute_context.proto` keyward reads and writes, with their field numbers: unknown fields
//! are skipped by protobuf's rules, so Envoy's full messages decode into these. The tests ask
//! with Python's `grpcio` and the `xds-protos` package's generated classes, the other side's
//! own definitions.

use crate::authz::{forged_headers, trusted_caller, REASON_HEADER};
use crate::KeywardProxy;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, HOST};
use keyward_http::ctx::RequestCtx;
use keyward_http::respond::{Refusal, REQUEST_ID_HEADER};
use keyward_metrics::RouteKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use prost::Message;
use std::collections::HashMap;

/// The gRPC method's path.
pub const CHECK_PATH: &[u8] = b"/envoy.service.auth.v3.Authorization/Check";

/// `envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: i32 = 2;
/// gRPC status codes (`google.rpc.Code`).
const GRPC_OK: i32 = 0;
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<AttributeRequest>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address` (its `socket_address` member of the `address` oneof).
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeRequest {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(string, tag = "6")]
    pub scheme: String,
    #[prost(string, tag = "11")]
    pub body: String,
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMapMessage>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderMapMessage {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValueMessage>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueMessage {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValueMessage>,
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

/// `envoy.service.auth.v3.CheckResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(oneof = "HttpResponse", tags = "2, 3")]
    pub http_response: Option<HttpResponse>,
}

/// `CheckResponse.http_response`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HttpResponse {
    #[prost(message, tag = "2")]
    Denied(DeniedHttpResponse),
    #[prost(message, tag = "3")]
    Ok(OkHttpResponse),
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `envoy.service.auth.v3.OkHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
}

/// `envoy.service.auth.v3.DeniedHttpResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// `envoy.type.v3.HttpStatus` (its `StatusCode` enum's values are the HTTP statuses).
#[derive(Clone, PartialEq, Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

/// A gRPC `Check` call: `POST` on [`CHECK_PATH`] with a gRPC content type.
pub fn is_check(request: &RequestHeader) -> bool {
    let grpc = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    grpc && request.method == http::Method::POST && request.raw_path() == CHECK_PATH
}

/// Why a call could not be read as one `CheckRequest` (a gRPC error, no decision).
#[derive(Debug, PartialEq, Eq)]
pub struct BadCall(pub &'static str);

/// The one message of a unary call: a 5-byte prefix (uncompressed), then exactly its length.
pub fn unframe(body: &[u8]) -> Result<&[u8], BadCall> {
    let (prefix, message) = body
        .split_at_checked(5)
        .ok_or(BadCall("truncated message"))?;
    let [compressed, length @ ..] = prefix else {
        return Err(BadCall("truncated message"));
    };
    if *compressed != 0 {
        return Err(BadCall("compressed messages are not accepted"));
    }
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if message.len() != length {
        return Err(BadCall("one message per call"));
    }
    Ok(message)
}

fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    out.extend_from_slice(&message.encode_to_vec());
    out.freeze()
}

/// What the `CheckRequest` describes: the request header (method, target, host, the client's
/// headers, `X-Forwarded-For` ending with the source address), whether it was `https`, and
/// the body Envoy forwarded (empty when none).
pub fn describe(check: CheckRequest) -> Result<(RequestHeader, bool, Bytes), Refusal> {
    let invalid = || Refusal::BadRequest("invalid_original_request");
    let attributes = check.attributes.unwrap_or_default();
    let http = attributes
        .request
        .and_then(|r| r.http)
        .ok_or(Refusal::BadRequest("original_request_missing"))?;
    if http.method.is_empty() || http.path.is_empty() {
        return Err(Refusal::BadRequest("original_request_missing"));
    }
    let mut request =
        RequestHeader::build(http.method.as_str(), b"/", None).map_err(|_| invalid())?;
    request
        .set_raw_path(http.path.as_bytes())
        .map_err(|_| invalid())?;
    let mut headers: Vec<(String, Vec<u8>)> = http
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    if let Some(map) = http.header_map {
        headers.extend(map.headers.into_iter().map(|h| {
            let value = match h.raw_value.is_empty() {
                true => h.value.into_bytes(),
                false => h.raw_value,
            };
            (h.key, value)
        }));
    }
    // One order whatever the map's: the same request decides the same way.
    headers.sort();
    for (name, value) in headers {
        // Pseudo-headers (`:authority`, `:path` …) are the fields above.
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            continue;
        }
        request.append_header(name, value).map_err(|_| invalid())?;
    }
    if !http.host.is_empty() {
        request
            .insert_header(HOST, http.host)
            .map_err(|_| invalid())?;
    }
    let source = attributes
        .source
        .and_then(|peer| peer.address)
        .and_then(|address| address.socket_address)
        .map(|socket| socket.address)
        .filter(|address| !address.is_empty());
    if let Some(source) = source {
        // The source is the client Envoy saw: last in the chain, as a proxy appends it.
        let chain = match request.headers.get("x-forwarded-for") {
            Some(existing) => format!("{}, {source}", existing.to_str().map_err(|_| invalid())?),
            None => source,
        };
        request
            .insert_header("x-forwarded-for", chain)
            .map_err(|_| invalid())?;
    }
    let tls = match http.scheme.as_str() {
        s if s.eq_ignore_ascii_case("https") => true,
        s if s.is_empty() || s.eq_ignore_ascii_case("http") => false,
        _ => return Err(invalid()),
    };
    let body = match http.raw_body.is_empty() {
        false => Bytes::from(http.raw_body),
        true => Bytes::from(http.body.into_bytes()),
    };
    Ok((request, tls, body))
}

fn option(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValueMessage {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: OVERWRITE_IF_EXISTS_OR_ADD,
    }
}

/// The allowed answer: the identity headers to set, the client's forged ones to remove.
fn allowed(ctx: &RequestCtx, request: &RequestHeader) -> CheckResponse {
    let mut answer = ResponseHeader::build(200, None).ok();
    let mut headers = Vec::new();
    if let Some(principal) = ctx.principal.as_deref() {
        for (name, value) in principal.identity_headers() {
            headers.push(option(name.as_str(), value.as_bytes()));
            if let Some(answer) = answer.as_mut() {
                let _ = answer.insert_header(name.clone(), value.clone());
            }
        }
    }
    headers.push(option(
        REQUEST_ID_HEADER,
        ctx.request_id.as_str().as_bytes(),
    ));
    let forged = match answer.as_mut() {
        Some(answer) => {
            let _ = answer.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str());
            forged_headers(request, answer)
        }
        None => String::new(),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: GRPC_OK,
            message: String::new(),
        }),
        http_response: Some(HttpResponse::Ok(OkHttpResponse {
            headers,
            headers_to_remove: forged
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        })),
    }
}

/// The refused answer: the proxy's status, headers and JSON body, for Envoy to send.
fn denied(refusal: Refusal, ctx: &RequestCtx) -> pingora::Result<CheckResponse> {
    let (mut header, body) = refusal.response(ctx.request_id.as_str(), None)?;
    header.insert_header(REASON_HEADER, refusal.reason())?;
    let headers = header
        .headers
        .iter()
        .filter(|(name, _)| name.as_str() != "content-length")
        .map(|(name, value)| option(name.as_str(), value.as_bytes()))
        .collect();
    let code = match refusal {
        Refusal::Unauthenticated(_) => GRPC_UNAUTHENTICATED,
        _ => GRPC_PERMISSION_DENIED,
    };
    Ok(CheckResponse {
        status: Some(RpcStatus {
            code,
            message: refusal.reason().to_owned(),
        }),
        http_response: Some(HttpResponse::Denied(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(refusal.status()),
            }),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
    })
}

impl KeywardProxy {
    /// Answers one question on `listen.authz`: a gRPC `Check`, or one of the HTTP conventions.
    pub(crate) async fn answer_authz(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        match is_check(session.req_header()) {
            true => self.check_grpc(session, ctx).await,
            false => self.authorize(session, ctx).await,
        }
    }

    /// Answers one gRPC `Check`; an untrusted caller's is refused unread.
    pub(crate) async fn check_grpc(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let decided = match trusted_caller(session, ctx) {
            false => Ok(Err(Refusal::Forbidden("untrusted_caller"))),
            true => self.decide_check(session, ctx).await,
        };
        ctx.route_kind = RouteKind::Authz;
        crate::connection::body_done();
        let response = match decided {
            Err(BadCall(message)) => {
                ctx.reason = Some("invalid_check_request");
                return send(session, None, GRPC_INVALID_ARGUMENT, message).await;
            }
            Ok(Ok(())) => allowed(ctx, session.req_header()),
            Ok(Err(refusal)) => {
                ctx.outcome = Some(refusal.outcome());
                ctx.reason = Some(refusal.reason());
                denied(refusal, ctx)?
            }
        };
        send(session, Some(&response), GRPC_OK, "").await
    }

    /// Reads the call's one message and decides the request it describes.
    async fn decide_check(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Result<(), Refusal>, BadCall> {
        // The description, the client's headers and a forwarded body of at most
        // `forward_body_max` (a larger one is decided as not forwarded).
        let limit = ctx.config.external_authz.forward_body_max
            + ctx.config.limits.max_request_header_bytes as u64
            + 4096;
        let deadline = std::time::Instant::now() + ctx.config.limits.network.body_timeout;
        let mut body = BytesMut::new();
        loop {
            let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
                .await
                .map_err(|_| BadCall("the message did not arrive in time"))?
                .map_err(|_| BadCall("unreadable message"))?;
            let Some(chunk) = chunk else { break };
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(BadCall("message too large"));
            }
            body.extend_from_slice(&chunk);
        }
        let check =
            CheckRequest::decode(unframe(&body)?).map_err(|_| BadCall("not a CheckRequest"))?;
        let (request, tls, described_body) = match describe(check) {
            Ok(described) => described,
            Err(refusal) => return Ok(Err(refusal)),
        };
        *session.req_header_mut() = request;
        ctx.tls = tls;
        ctx.described_body = Some(described_body);
        let decided = self.admit(session, ctx).await;
        self.count_key_use(ctx, &decided);
        Ok(decided.map(|_| ()))
    }
}

/// A unary gRPC answer: its message (if any), then `grpc-status` in the trailers.
async fn send(
    session: &mut Session,
    response: Option<&CheckResponse>,
    status: i32,
    message: &str,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(200, Some(2))?;
    header.insert_header("content-type", "application/grpc")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    if let Some(response) = response {
        session
            .write_response_body(Some(frame(response)), false)
            .await?;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if !message.is_empty() {
        if let Ok(message) = HeaderValue::from_str(message) {
            trailers.insert("grpc-message", message);
        }
    }
    session.write_response_trailers(trailers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(http: HttpRequest, source: Option<&str>) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: source.map(|address| Peer {
                    address: Some(Address {
                        socket_address: Some(SocketAddress {
                            address: address.to_owned(),
                        }),
                    }),
                }),
                request: Some(AttributeRequest { http: Some(http) }),
            }),
        }
    }

    fn http(method: &str, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            host: "app.example".into(),
            scheme: "https".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..HttpRequest::default()
        }
    }

    #[test]
    fn frames_hold_exactly_one_uncompressed_message() {
        let message = CheckRequest::default();
        let framed = frame(&message);
        assert_eq!(unframe(&framed).unwrap(), b"");
        assert!(unframe(b"").is_err());
        assert!(unframe(b"\0\0\0\0").is_err());
        assert!(unframe(b"\x01\0\0\0\0").is_err());
        assert!(unframe(b"\0\0\0\0\x02a").is_err());
        assert!(unframe(b"\0\0\0\0\x01ab").is_err());
        assert_eq!(unframe(b"\0\0\0\0\x02ab").unwrap(), b"ab");
    }

    #[test]
    fn a_check_request_becomes_the_request_it_describes() {
        let described = check(
            http(
                "DELETE",
                "//admin?x=1",
                &[
                    (":authority", "evil.example"),
                    (":path", "/public"),
                    ("argus-api-key", "k"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
            ),
            Some("198.51.100.7"),
        );
        let (request, tls, body) = describe(described).unwrap();
        assert_eq!(request.method, http::Method::DELETE);
        assert_eq!(request.raw_path(), b"//admin?x=1");
        assert_eq!(request.headers["host"], "app.example");
        assert_eq!(request.headers["argus-api-key"], "k");
        assert_eq!(
            request.headers["x-forwarded-for"],
            "203.0.113.9, 198.51.100.7"
        );
        assert!(!request.headers.contains_key(":authority"));
        assert!(tls);
        assert!(body.is_empty());
    }

    #[test]
    fn incomplete_or_odd_descriptions_are_refused() {
        assert!(describe(CheckRequest::default()).is_err());
        assert!(describe(check(http("", "/", &[]), None)).is_err());
        assert!(describe(check(http("GET", "", &[]), None)).is_err());
        assert!(describe(check(http("G T", "/", &[]), None)).is_err());
        let mut odd = http("GET", "/", &[]);
        odd.scheme = "gopher".into();
        assert!(describe(check(odd, None)).is_err());
        assert!(describe(check(http("GET", "/", &[("bad name", "v")]), None)).is_err());
    }

    #[test]
    fn the_raw_body_wins_over_the_text_body() {
        let mut both = http("POST", "/", &[]);
        both.body = "text".into();
        both.raw_body = b"raw".to_vec();
        assert_eq!(&describe(check(both, None)).unwrap().2[..], b"raw");
        let mut text = http("POST", "/", &[]);
        text.body = "text".into();
        assert_eq!(&describe(check(text, None)).unwrap().2[..], b"text");
    }

    #[test]
    fn denied_answers_carry_the_proxys_status_and_reason() {
        let config = std::sync::Arc::new(
            keyward_config::Config::from_yaml(keyward_config::EMBEDDED_DEFAULT).unwrap(),
        );
        let ctx = RequestCtx::new(config, keyward_metrics::Metrics::new().request_started());
        let response = denied(Refusal::Unauthenticated("credentials_required"), &ctx).unwrap();
        assert_eq!(response.status.as_ref().unwrap().code, GRPC_UNAUTHENTICATED);
        let Some(HttpResponse::Denied(denied)) = response.http_response else {
            panic!("not denied");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        let names: Vec<&str> = denied
            .headers
            .iter()
            .map(|h| h.header.as_ref().unwrap().key.as_str())
            .collect();
        for name in [
            "www-authenticate",
            REASON_HEADER,
            REQUEST_ID_HEADER,
            "cache-control",
        ] {
            assert!(names.contains(&name), "{name}: {names:?}");
        }
        assert!(!names.contains(&"content-length"));
        assert!(denied.body.contains("credentials_required"));
    }
}
