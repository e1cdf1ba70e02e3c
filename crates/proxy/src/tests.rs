//! The request path's first steps over raw bytes, parsed by pingora's own HTTP/1 reader (as
//! a real connection would be), without starting a process: what is refused, and what the
//! upstream would receive. End-to-end cases live in `tests/hardening.rs`.

use super::forward::{self, Forwarding, Identity};
use super::inspect;
use http::HeaderValue;
use keyward_http::respond::Refusal;
use keyward_http::target::RequestTarget;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

const LIMIT: usize = 64 * 1024;

/// The request header pingora reads from `raw`, or `None` when pingora itself refuses it.
fn parsed(raw: &[u8]) -> Option<RequestHeader> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = Box::new(std::io::Cursor::new(raw.to_vec()));
        let mut session = ServerSession::new_http1(stream);
        match session.read_request().await {
            Ok(true) => Some(session.req_header().clone()),
            _ => None,
        }
    })
}

/// What the upstream would receive for `raw`, sent by an anonymous client from 192.0.2.1.
fn forwarded(raw: &[u8]) -> Result<RequestHeader, Refusal> {
    let header = parsed(raw).ok_or(Refusal::BadRequest("pingora"))?;
    let target: RequestTarget = inspect(&header, LIMIT)?;
    let forwarding = Forwarding {
        target: target.rewritten().then_some(target.as_str()),
        authority: target.authority(),
        x_forwarded_for: HeaderValue::from_static("192.0.2.1"),
        peer_trusted: false,
        tls: false,
    };
    let identity = Identity {
        headers: None,
        request_id: "0123456789ABCDEF",
    };
    Ok(forward::upstream_request(&header, identity, forwarding, false).unwrap())
}

fn target_of(raw: &[u8]) -> Result<String, Refusal> {
    forwarded(raw).map(|h| String::from_utf8_lossy(h.raw_path()).into_owned())
}

#[test]
fn path_spellings_are_forwarded_normalized() {
    for (raw, want) in [
        (
            &b"GET /%61pi//admin HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "/api/admin",
        ),
        (
            b"GET /x/%2E%2e/api/./admin?q=/../ HTTP/1.1\r\nHost: a\r\n\r\n",
            "/api/admin?q=/../",
        ),
        (
            b"GET http://a/%7euser HTTP/1.1\r\nHost: a\r\n\r\n",
            "/~user",
        ),
        (b"GET /a%3ab HTTP/1.1\r\nHost: a\r\n\r\n", "/a%3Ab"),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "*"),
    ] {
        assert_eq!(
            target_of(raw).as_deref(),
            Ok(want),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn unsafe_targets_are_refused_before_anything_else() {
    for (raw, reason) in [
        (
            &b"GET api/admin HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "invalid_request_target",
        ),
        (
            b"GET x:/api/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid_request_target",
        ),
        (
            b"GET mailto:api/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid_request_target",
        ),
        (
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid_request_target",
        ),
        (
            b"GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n",
            "encoded_separator",
        ),
        (
            b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n",
            "control_character",
        ),
        (b"GET /a;b HTTP/1.1\r\nHost: a\r\n\r\n", "path_parameter"),
        (
            b"GET /a%e9 HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid_utf8_path",
        ),
    ] {
        let refusal = target_of(raw).unwrap_err();
        // pingora refusing first is as good: nothing reaches the upstream either way.
        assert!(
            refusal == Refusal::BadRequest(reason) || refusal == Refusal::BadRequest("pingora"),
            "{} gave {refusal:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn methods_must_be_upper_case() {
    for raw in [
        &b"get /x HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"Delete /x HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(target_of(raw), Err(Refusal::BadRequest("invalid_method")));
    }
    assert!(target_of(b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
}

#[test]
fn raw_bytes_in_the_path_are_refused() {
    let refusal = target_of(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err();
    assert!(matches!(refusal, Refusal::BadRequest(_)), "{refusal:?}");
}

#[test]
fn folded_and_forwarding_headers_never_leave() {
    let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nX_Keyward_User: root\r\nx-keyward-user: root\r\n\
        Gateway_Request_Id: 1\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
        X-Real-IP: 6.6.6.6\r\nSignature-Input: a=()\r\nSignature: a=:AA==:\r\n\r\n";
    let upstream = forwarded(raw).unwrap();
    let names: Vec<_> = upstream.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "gateway-request-id"
        ]
    );
    assert_eq!(upstream.headers["x-forwarded-for"], "192.0.2.1");
}

#[test]
fn content_length_lists_are_forwarded_once() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc";
    let upstream = forwarded(raw).unwrap();
    let lengths: Vec<_> = upstream.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["3"]);
    // Differing lengths are refused by pingora before any filter runs.
    assert!(parsed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabc").is_none());
    assert!(parsed(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    )
    .is_none());
}

#[test]
fn oversized_headers_are_431() {
    let raw = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(LIMIT)
    );
    assert_eq!(target_of(raw.as_bytes()), Err(Refusal::HeaderTooLarge));
}

#[test]
fn tokens_in_token_api_paths_never_reach_the_log() {
    let t = "53dfb96dc6d5b9cacd174e3649cba6d5";
    for path in [
        format!("/.TOKEN/{t}"),
        format!("//.TOKEN/{t}%00"),
        format!("/.TOKEN/x{}y", t.to_uppercase()),
        format!("/_admin/manage/tenants/a/tokens/{t};x"),
    ] {
        let logged = super::loggable_path(&path);
        assert!(
            !logged.to_ascii_lowercase().contains(t),
            "{path} logged as {logged}"
        );
    }
    assert_eq!(super::loggable_path("/api/x"), "/api/x");
}

/// The request header of an HTTP/2 request as the h2 crate hands it to pingora: the URI built
/// from `:scheme`, `:authority` and `:path`, no `Host` header.
fn h2_request(method: &str, authority: &str, path: &str) -> RequestHeader {
    let request = http::Request::builder()
        .method(method)
        .version(http::Version::HTTP_2)
        .uri(format!("https://{authority}{path}"))
        .body(())
        .unwrap();
    RequestHeader::from(request.into_parts().0)
}

#[test]
fn h2_targets_are_their_path_normalized_as_over_http1() {
    for (path, want) in [
        ("/%61pi//admin?x=/../", "/api/admin?x=/../"),
        ("/x/%2E%2e/api/./admin", "/api/admin"),
        ("/plain?q", "/plain?q"),
    ] {
        let request = h2_request("GET", "App.example:8443", path);
        let target = inspect(&request, LIMIT).unwrap();
        assert_eq!(target.as_str(), want, "{path}");
        // The authority is `:authority`'s, not an absolute-form target's to rewrite.
        assert_eq!(target.authority(), None);
        let forwarding = Forwarding {
            target: target.rewritten().then_some(target.as_str()),
            authority: None,
            x_forwarded_for: HeaderValue::from_static("192.0.2.1"),
            peer_trusted: false,
            tls: true,
        };
        let identity = Identity {
            headers: None,
            request_id: "0123456789ABCDEF",
        };
        let mut client = request.clone();
        // pingora's copy for an HTTP/1.1 upstream gets `Host` from `:authority` before
        // the filter builds the forwarded request from it.
        client.insert_header("host", "App.example:8443").unwrap();
        let upstream = forward::upstream_request(&client, identity, forwarding, false).unwrap();
        // Origin-form towards the upstream, whatever the URI holds.
        assert_eq!(upstream.raw_path(), want.as_bytes(), "{path}");
        assert_eq!(upstream.headers["host"], "App.example:8443");
        assert_eq!(upstream.headers["x-forwarded-host"], "App.example:8443");
        assert_eq!(upstream.headers["x-forwarded-proto"], "https");
    }
    for (path, reason) in [
        ("/a%2fb", "encoded_separator"),
        ("/a%00", "control_character"),
        ("/a;b", "path_parameter"),
    ] {
        let request = h2_request("GET", "a", path);
        assert_eq!(inspect(&request, LIMIT), Err(Refusal::BadRequest(reason)));
    }
    // CONNECT carries only `:authority`: no origin-form path, refused.
    let mut connect = h2_request("GET", "a:443", "/");
    connect.set_method(http::Method::CONNECT);
    connect.set_uri(http::Uri::from_static("a:443"));
    assert_eq!(
        inspect(&connect, LIMIT),
        Err(Refusal::BadRequest("invalid_request_target"))
    );
}

/// An upstream response's header-name spelling is dropped, its headers (repeated ones in
/// order), status and own reason phrase kept; written out, standard names keep their usual
/// capitals and the rest are lower case.
#[test]
fn an_upstream_response_loses_only_its_header_spelling() {
    use pingora::http::ResponseHeader;
    let mut response = ResponseHeader::build(299, None).unwrap();
    response.set_reason_phrase(Some("Fine Indeed")).unwrap();
    response
        .append_header("Content-Type", "text/plain")
        .unwrap();
    response.append_header("X-Custom-Header", "1").unwrap();
    response.append_header("Set-Cookie", "a=1").unwrap();
    response.append_header("SET-COOKIE", "b=2").unwrap();
    assert!(response.has_case());
    super::forget_header_case(&mut response).unwrap();
    assert!(!response.has_case());
    assert_eq!(response.status.as_u16(), 299);
    assert_eq!(response.get_reason_phrase(), Some("Fine Indeed"));
    let cookies: Vec<_> = response.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let mut wire = Vec::new();
    response.header_to_h1_wire(&mut wire);
    let wire = String::from_utf8(wire).unwrap();
    assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
    assert!(wire.contains("x-custom-header: 1\r\n"), "{wire}");
    assert!(
        wire.contains("Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"),
        "{wire}"
    );

    // A canonical reason phrase stays the default one.
    let mut ok = ResponseHeader::build(200, None).unwrap();
    ok.append_header("Date", "x").unwrap();
    super::forget_header_case(&mut ok).unwrap();
    assert_eq!(ok.get_reason_phrase(), Some("OK"));
    assert_eq!(ok.headers.len(), 1);
}
