//! gRPC `envoy.service.auth.v3.Authorization/Check` (SPEC §13) on `listen.authz`, beside the
//! HTTP conventions: the same port (HTTP/2 by prior knowledge, h2c), told apart by path and
//! `content-type: application/grpc`. The `CheckRequest` describes the request (method, path,
//! host, scheme, headers, body when Envoy forwards it); it becomes the session's request and
//! goes through the proxy's one decision, as the HTTP conventions do (see `authz`).
//!
//! The messages and the service are the `envoy-types` crate's, generated from Envoy's
//! data-plane-api protos; the gRPC protocol (message framing, compression flags, size limits,
//! `grpc-status`) is tonic's. pingora owns the connection: the call's header and body, read
//! here within the listener's limits, are handed to envoy-types' generated
//! [`AuthorizationServer`] (a tower `Service`) in-process. Its `check` hands the decoded
//! `CheckRequest` over to this handler, which owns the session and decides the described
//! request exactly as the proxy would, and returns the `CheckResponse` it is given; tonic's
//! HTTP response (header, message, trailers) is then written to the pingora session. A call
//! tonic cannot read is answered by tonic with a gRPC error status, and nothing is decided.
//! Why not a second port with tonic's own server: see docs/architecture.md.

use crate::authz::{forged_headers, trusted_caller, REASON_HEADER};
use crate::KeywardProxy;
use bytes::{Bytes, BytesMut};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue as HeaderField, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::header::HOST;
use http_body_util::{BodyExt, Full};
use keyward_http::ctx::RequestCtx;
use keyward_http::respond::{Refusal, REQUEST_ID_HEADER};
use keyward_metrics::RouteKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Mutex;
use tokio::sync::oneshot;
use tonic::codegen::Service;
use tonic::{Code, Status};

/// The gRPC method's path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A gRPC `Check` call: `POST` on [`CHECK_PATH`] with a gRPC content type.
pub fn is_check(request: &RequestHeader) -> bool {
    let grpc = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    grpc && request.method == http::Method::POST && request.raw_path() == CHECK_PATH.as_bytes()
}

/// The one message of an untrusted caller's call as tonic is given it: a gRPC frame of an
/// empty `CheckRequest` (uncompressed, length 0). The caller's own message is never read.
const UNREAD: &[u8] = &[0; 5];

/// What the description says: the request header (method, target, host, the client's
/// headers, `X-Forwarded-For` ending with the source address), whether it was `https`, and
/// the body Envoy forwarded (empty when none).
pub fn describe(check: CheckRequest) -> Result<(RequestHeader, bool, Bytes), Refusal> {
    let invalid = || Refusal::BadRequest("invalid_original_request");
    let source = check
        .get_client_address()
        .filter(|address| !address.is_empty())
        .cloned();
    let http = check
        .attributes
        .and_then(|attributes| attributes.request)
        .and_then(|request| request.http)
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
        header: Some(HeaderField {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn rpc_status(code: Code, message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: code.into(),
        message: message.to_owned(),
        details: Vec::new(),
    })
}

/// The allowed answer: the identity headers to set, the client's forged ones to remove.
fn allowed(ctx: &RequestCtx, request: &RequestHeader) -> CheckResponse {
    let mut answer = ResponseHeader::build(200, None).ok();
    let mut headers = Vec::new();
    if let Some(principal) = ctx.principal.as_deref() {
        for (name, value) in principal.identity_headers().iter() {
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
        status: rpc_status(Code::Ok, ""),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: forged
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
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
        Refusal::Unauthenticated(_) => Code::Unauthenticated,
        _ => Code::PermissionDenied,
    };
    Ok(CheckResponse {
        status: rpc_status(code, refusal.reason()),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(refusal.status()),
            }),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
        ..CheckResponse::default()
    })
}

/// The generated service's implementation: hands the `CheckRequest` tonic decoded to the
/// handler that owns the session, and answers the `CheckResponse` it decides.
struct Handoff {
    check: Mutex<Option<oneshot::Sender<CheckRequest>>>,
    answer: Mutex<Option<oneshot::Receiver<CheckResponse>>>,
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut slot| slot.take())
}

#[async_trait::async_trait]
impl Authorization for Handoff {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, Status> {
        let (Some(check), Some(answer)) = (take(&self.check), take(&self.answer)) else {
            return Err(Status::internal("one decision per call"));
        };
        check
            .send(request.into_inner())
            .map_err(|_| Status::internal("no decision"))?;
        let response = answer.await.map_err(|_| Status::internal("no decision"))?;
        Ok(tonic::Response::new(response))
    }
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
        let trusted = trusted_caller(session, ctx);
        // The call's message: the description, the client's headers and a forwarded body of
        // at most `forward_body_max` (a larger body is decided as not forwarded).
        let limit = ctx.config.external_authz.forward_body_max
            + ctx.config.limits.max_request_header_bytes as u64
            + 4096;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let body = match trusted {
            true => read_call(session, ctx, limit).await,
            false => Ok(Bytes::from_static(UNREAD)),
        };
        let (response, asked) = match body {
            Ok(body) => self.serve(session, ctx, body, limit, trusted).await,
            Err(status) => (status.into_http(), false),
        };
        ctx.route_kind = RouteKind::Authz;
        crate::connection::body_done();
        if !asked {
            // Answered with a gRPC error, nothing decided: the call could not be read.
            ctx.reason = Some("invalid_check_request");
        }
        write(session, response).await
    }

    /// The call through envoy-types' generated service, its `check` answered here; whether
    /// tonic asked (it read a `CheckRequest`).
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
        limit: usize,
        trusted: bool,
    ) -> (http::Response<tonic::body::Body>, bool) {
        let (check_tx, check_rx) = oneshot::channel();
        let (answer_tx, answer_rx) = oneshot::channel();
        let handoff = Handoff {
            check: Mutex::new(Some(check_tx)),
            answer: Mutex::new(Some(answer_rx)),
        };
        let mut call = http::Request::new(Full::new(body));
        *call.method_mut() = http::Method::POST;
        *call.uri_mut() = http::Uri::from_static(CHECK_PATH);
        *call.version_mut() = http::Version::HTTP_2;
        *call.headers_mut() = session.req_header().headers.clone();
        // The server is a temporary: the call's future holds the one handoff, dropped with it
        // when tonic answers without asking.
        let mut call = AuthorizationServer::new(handoff)
            .max_decoding_message_size(limit)
            .call(call);
        // tonic reads the call and asks `check`, which waits for this side's answer; or it
        // answers by itself (a gRPC error) without asking.
        let (answered, asked) = tokio::select! {
            biased;
            check = check_rx => match check {
                Ok(check) => {
                    match self.decide_check(session, ctx, check, trusted).await {
                        Ok(response) => {
                            let _ = answer_tx.send(response);
                        }
                        // tonic answers INTERNAL when no response comes.
                        Err(e) => tracing::warn!(error = %e, "gRPC Check: no answer"),
                    }
                    (None, true)
                }
                Err(_) => (None, false),
            },
            response = &mut call => (Some(response), false),
        };
        let response = match answered {
            Some(response) => response,
            None => call.await,
        };
        let response = match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
        (response, asked)
    }

    /// The answer to one `CheckRequest`: the described request through the proxy's decision.
    async fn decide_check(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        check: CheckRequest,
        trusted: bool,
    ) -> pingora::Result<CheckResponse> {
        let decided = match trusted {
            false => Err(Refusal::Forbidden("untrusted_caller")),
            true => match describe(check) {
                Err(refusal) => Err(refusal),
                Ok((request, tls, described_body)) => {
                    *session.req_header_mut() = request;
                    ctx.tls = tls;
                    ctx.described_body = Some(described_body);
                    let decided = self.admit(session, ctx).await;
                    self.count_key_use(ctx, &decided);
                    decided.map(|_| ())
                }
            },
        };
        match decided {
            Ok(()) => Ok(allowed(ctx, session.req_header())),
            Err(refusal) => {
                ctx.outcome = Some(refusal.outcome());
                ctx.reason = Some(refusal.reason());
                denied(refusal, ctx)
            }
        }
    }
}

/// The call's body, within the listener's deadline and `limit`; a failure is tonic's status.
async fn read_call(session: &mut Session, ctx: &RequestCtx, limit: usize) -> Result<Bytes, Status> {
    let deadline = std::time::Instant::now() + ctx.config.limits.network.body_timeout;
    let mut body = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
            .await
            .map_err(|_| Status::deadline_exceeded("the message did not arrive in time"))?
            .map_err(|_| Status::cancelled("the message could not be read"))?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit.saturating_add(5) {
            return Err(Status::resource_exhausted("message too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Writes tonic's HTTP response to the session: its header, message, and trailers
/// (`grpc-status`), or a trailers-only answer (the status in the header, nothing after it).
async fn write(
    session: &mut Session,
    response: http::Response<tonic::body::Body>,
) -> pingora::Result<()> {
    let (parts, mut body) = response.into_parts();
    let header = ResponseHeader::from(parts);
    let end = tonic::codegen::Body::is_end_stream(&body);
    session.write_response_header(Box::new(header), end).await?;
    if end {
        return Ok(());
    }
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(status) => {
                // An error while encoding: its status as the trailers.
                let mut trailers = http::HeaderMap::new();
                if status.add_header(&mut trailers).is_err() {
                    let _ = Status::internal("").add_header(&mut trailers);
                }
                return session.write_response_trailers(trailers).await;
            }
        };
        match frame.into_data() {
            Ok(data) => session.write_response_body(Some(data), false).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return session.write_response_trailers(trailers).await;
                }
            }
        }
    }
    session.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn check(http: HttpRequest, source: Option<&str>) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: source.map(|source| Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: source.to_owned(),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Peer::default()
                }),
                request: Some(Request {
                    http: Some(http),
                    ..Request::default()
                }),
                ..AttributeContext::default()
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
        assert_eq!(
            response.status.as_ref().unwrap().code,
            i32::from(Code::Unauthenticated)
        );
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
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

    #[test]
    fn the_untrusted_callers_message_is_an_empty_check_request() {
        use prost::Message;
        let [compressed, length @ ..] = UNREAD else {
            panic!("not a gRPC frame");
        };
        assert_eq!(*compressed, 0);
        assert_eq!(length, [0; 4]);
        assert_eq!(
            CheckRequest::decode(&b""[..]).unwrap(),
            CheckRequest::default()
        );
    }
}
