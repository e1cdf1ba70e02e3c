//! The request as the upstream receives it (SPEC §6): the client's request at its normalized
//! target, without any `X-Keyward-*` or `Gateway-Request-Id` header the client sent, without
//! any header whose name holds `_` (CGI/WSGI upstreams read `X_Keyward_User` as
//! `X-Keyward-User`; nginx drops them too), without client-written forwarding headers
//! (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`), without headers that frameworks read in place of
//! the request target (`X-Original-URL`, `X-Rewrite-URL`, `X-Original-URI`) and, unless
//! `forward_credentials` is set,
//! without its credentials (`Authorization`, `Argus-API-Key`, `X-Totp-Code`, `Signature`,
//! `Signature-Input`, the `token` cookie); then the identity keyward established, the
//! forwarding headers keyward writes, and the request id.
//!
//! The forwarded header map is built once, sized for everything it will hold. Editing pingora's
//! copy of the client's request in place instead grows its two header maps (values, and the
//! names' original spelling) several times over per request: measured under callgrind, that
//! cost more than authenticating the request. The built map keeps no original spelling, so
//! header names reach the upstream in lower case (the common standard ones in title case),
//! as they do behind Envoy or linkerd; HTTP header names are case-insensitive (RFC 9110 §5.1).

use crate::ip_text::IpText;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, COOKIE, FORWARDED, HOST,
};
use keyward_auth::{api_key, token, totp, IdentityHeaders};
use keyward_http::respond::REQUEST_ID_HEADER;
use pingora::http::RequestHeader;

/// Every header under this prefix is keyward's to set; clients' copies are removed.
pub const IDENTITY_PREFIX: &str = "x-keyward-";
/// Client-written forwarding headers are replaced by keyward's own.
const FORWARDING_PREFIX: &str = "x-forwarded-";

const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const SIGNATURE: HeaderName = HeaderName::from_static("signature");
const SIGNATURE_INPUT: HeaderName = HeaderName::from_static("signature-input");

/// Headers some frameworks read in place of the request target (IIS URL Rewrite and ASP.NET,
/// Symfony before CVE-2018-14773, Zend Framework 1, Magento 1): the route keyward decided on
/// is the only target the upstream may see, so a client's copies never reach it.
const TARGET_OVERRIDES: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-original-uri"];

/// Room for the headers pingora may add after the filters (`Host`, framing) and the three
/// forwarding headers.
const HEADROOM: usize = 5;

/// What keyward adds to a forwarded request.
pub struct Identity<'a> {
    /// The principal's `X-Keyward-*` headers; none for an anonymous request.
    pub headers: Option<&'a IdentityHeaders>,
    pub request_id: &'a str,
}

/// Where the request came from and where it goes, as keyward tells the upstream.
pub struct Forwarding<'a> {
    /// The normalized target, when it differs from what the client sent.
    pub target: Option<&'a str>,
    /// The authority of an absolute-form target: it is the `Host` (RFC 9112 §3.2.2).
    pub authority: Option<&'a str>,
    /// `X-Forwarded-For`: the believed chain of addresses, peer last.
    pub x_forwarded_for: HeaderValue,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` / `X-Forwarded-Host` are kept.
    pub peer_trusted: bool,
    /// The client reached keyward over TLS: `X-Forwarded-Proto: https` unless a trusted peer
    /// said otherwise.
    pub tls: bool,
}

impl Forwarding<'_> {
    /// `X-Forwarded-For` for a chain of addresses, nearest last.
    pub fn chain_value(chain: &[std::net::IpAddr]) -> HeaderValue {
        // One allocation: this runs on every request (and without `fmt`, see `IpText`).
        let mut text = Vec::with_capacity(chain.len() * 17);
        for (i, ip) in chain.iter().enumerate() {
            if i > 0 {
                text.extend_from_slice(b", ");
            }
            text.extend_from_slice(IpText::ip(*ip).as_bytes());
        }
        // IP addresses are ASCII.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// Builds the upstream request from `client`, pingora's (already hop-by-hop-sanitised) copy of
/// the request as the client sent it.
pub fn upstream_request(
    client: &RequestHeader,
    identity: Identity<'_>,
    forwarding: Forwarding<'_>,
    forward_credentials: bool,
) -> pingora::Result<RequestHeader> {
    let mut headers = HeaderMap::with_capacity(
        client.headers.len() + identity.headers.map_or(0, IdentityHeaders::len) + 1 + HEADROOM,
    );
    let mut content_length_seen = false;
    let (mut proto_kept, mut host_kept) = (false, false);
    let mut host = None;
    for (name, value) in &client.headers {
        let text = name.as_str();
        if text.contains('_') || text.starts_with(IDENTITY_PREFIX) || name == REQUEST_ID {
            continue;
        }
        if text.starts_with(FORWARDING_PREFIX) {
            // A trusted proxy in front knows the original scheme and host; nobody else does.
            let kept = forwarding.peer_trusted
                && ((name == X_FORWARDED_PROTO && !proto_kept)
                    || (name == X_FORWARDED_HOST && !host_kept));
            if kept {
                proto_kept |= name == X_FORWARDED_PROTO;
                host_kept |= name == X_FORWARDED_HOST;
                headers.append(name.clone(), value.clone());
            }
            continue;
        }
        if name == FORWARDED || name == X_REAL_IP || TARGET_OVERRIDES.contains(&text) {
            continue;
        }
        if name == HOST {
            if host.is_some() {
                continue;
            }
            let value = match forwarding.authority {
                Some(authority) => HeaderValue::from_str(authority).map_err(|_| {
                    pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad authority")
                })?,
                None => value.clone(),
            };
            host = Some(value.clone());
            headers.append(HOST, value);
            continue;
        }
        if name == CONTENT_LENGTH {
            // pingora accepts only identical values (`N, N` or repeated headers) and frames
            // the body by them; the upstream gets that one value, once.
            if content_length_seen {
                continue;
            }
            content_length_seen = true;
            let first = value
                .as_bytes()
                .split(|&b| b == b',')
                .next()
                .unwrap_or_default();
            let single = HeaderValue::from_bytes(first.trim_ascii()).map_err(|_| {
                pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad content-length")
            })?;
            headers.append(CONTENT_LENGTH, single);
            continue;
        }
        if !forward_credentials {
            if name == AUTHORIZATION
                || name == api_key::HEADER_NAME
                || name == totp::HEADER_NAME
                || name == SIGNATURE
                || name == SIGNATURE_INPUT
            {
                continue;
            }
            if name == COOKIE {
                match token::forwarded_cookie(value.as_bytes()) {
                    token::ForwardedCookie::Unchanged => {}
                    token::ForwardedCookie::Dropped => continue,
                    token::ForwardedCookie::Rewritten(kept) => {
                        // Made of cookies parsed from a valid header value, so valid too.
                        if let Ok(kept) = HeaderValue::try_from(kept) {
                            headers.append(COOKIE, kept);
                        }
                        continue;
                    }
                }
            }
        }
        headers.append(name.clone(), value.clone());
    }
    if host.is_none() {
        if let Some(authority) = forwarding.authority {
            if let Ok(value) = HeaderValue::from_str(authority) {
                host = Some(value.clone());
                headers.append(HOST, value);
            }
        }
    }
    headers.append(X_FORWARDED_FOR, forwarding.x_forwarded_for);
    if !proto_kept {
        let proto = if forwarding.tls { "https" } else { "http" };
        headers.append(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let (false, Some(host)) = (host_kept, host) {
        headers.append(X_FORWARDED_HOST, host);
    }
    for (name, value) in identity.headers.iter().flat_map(|h| h.iter()) {
        headers.append(name.clone(), value.clone());
    }
    let request_id = HeaderValue::from_str(identity.request_id).map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InternalError, "invalid request id")
    })?;
    headers.append(REQUEST_ID, request_id);

    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = client.method.clone();
    parts.uri = client.uri.clone();
    parts.version = client.version;
    parts.extensions = client.extensions.clone();
    parts.headers = headers;
    let mut forwarded = RequestHeader::from(parts);
    if let Some(target) = forwarding.target {
        forwarded.set_raw_path(target.as_bytes())?;
    } else {
        // A request target the URI does not reproduce byte for byte (`*`) is carried over
        // as the client sent it.
        let from_uri = client
            .uri
            .path_and_query()
            .map(|p| p.as_str().as_bytes())
            .unwrap_or_default();
        if !client.raw_path_is_utf8() || client.raw_path() != from_uri {
            forwarded.set_raw_path(client.raw_path())?;
        }
    }
    if let Some(end_stream) = client.send_end_stream() {
        forwarded.set_send_end_stream(end_stream);
    }
    Ok(forwarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("POST", b"/a/b?c=1", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    fn direct() -> Forwarding<'static> {
        Forwarding {
            target: None,
            authority: None,
            x_forwarded_for: HeaderValue::from_static("192.0.2.1"),
            peer_trusted: false,
            tls: false,
        }
    }

    /// Forwarded with no principal.
    fn anonymous(request: &RequestHeader, forward_credentials: bool) -> RequestHeader {
        let identity = Identity {
            headers: None,
            request_id: "0123456789ABCDEF",
        };
        upstream_request(request, identity, direct(), forward_credentials).unwrap()
    }

    fn names(request: &RequestHeader) -> Vec<&str> {
        request.headers.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn client_identity_and_credentials_are_removed() {
        let t = "53dfb96dc6d5b9cacd174e3649cba6d5";
        let cookie = format!("a=1; token={t}");
        let request = client(&[
            ("Host", "app.example.com"),
            ("X-Keyward-User", "root"),
            ("x-keyward-anything", "x"),
            ("Gateway-Request-Id", "FFFFFFFFFFFFFFFF"),
            ("Authorization", "Basic YTpi"),
            ("Argus-API-Key", "1/1/secret"),
            ("X-Totp-Code", "123456"),
            ("Cookie", &cookie),
            ("X-Other", "kept"),
        ]);
        let mut identity = keyward_auth::IdentityHeaders::default();
        identity.set(
            &keyward_auth::identity_header::USER,
            HeaderValue::from_static("john"),
        );
        let forwarded = upstream_request(
            &request,
            Identity {
                headers: Some(&identity),
                request_id: "0123456789ABCDEF",
            },
            direct(),
            false,
        )
        .unwrap();
        assert_eq!(
            names(&forwarded),
            [
                "host",
                "cookie",
                "x-other",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-keyward-user",
                "gateway-request-id"
            ]
        );
        assert_eq!(forwarded.headers["x-forwarded-host"], "app.example.com");
        assert_eq!(forwarded.headers["x-keyward-user"], "john");
        assert_eq!(forwarded.headers["cookie"], "a=1");
        assert_eq!(forwarded.headers["gateway-request-id"], "0123456789ABCDEF");
        assert_eq!(forwarded.method, "POST");
        assert_eq!(forwarded.raw_path(), b"/a/b?c=1");
    }

    #[test]
    fn credentials_are_kept_when_configured() {
        let request = client(&[
            ("Authorization", "Basic YTpi"),
            ("Cookie", "token=53dfb96dc6d5b9cacd174e3649cba6d5"),
            ("X-Keyward-User", "root"),
        ]);
        let forwarded = anonymous(&request, true);
        assert_eq!(
            names(&forwarded),
            [
                "authorization",
                "cookie",
                "x-forwarded-for",
                "x-forwarded-proto",
                "gateway-request-id"
            ]
        );
    }

    #[test]
    fn underscored_names_forwarding_headers_target_overrides_and_signatures_are_removed() {
        let request = client(&[
            ("X_Keyward_User", "root"),
            ("Gateway_Request_Id", "FFFFFFFFFFFFFFFF"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x_anything", "1"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Prefix", "/admin"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Original-URL", "/api/admin"),
            ("x-rewrite-url", "/api/admin"),
            ("X-Original-URI", "/api/admin"),
            ("Signature", "sig1=:AAAA:"),
            ("Signature-Input", "sig1=();created=1"),
            ("Content-Length", "12, 12"),
        ]);
        let forwarded = anonymous(&request, false);
        assert_eq!(
            names(&forwarded),
            [
                "content-length",
                "x-forwarded-for",
                "x-forwarded-proto",
                "gateway-request-id"
            ]
        );
        assert_eq!(forwarded.headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(forwarded.headers["x-forwarded-proto"], "http");
        assert_eq!(forwarded.headers["content-length"], "12");
    }

    #[test]
    fn forwarded_for_chains_are_written_as_std_formats_them() {
        let chains: [&[&str]; 4] = [
            &["0.0.0.0"],
            &["255.255.255.255", "10.0.0.1", "192.168.100.9"],
            &["1.20.199.250", "2001:db8::1"],
            &["::ffff:192.0.2.1", "100.64.7.99"],
        ];
        for chain in chains {
            let ips: Vec<std::net::IpAddr> = chain.iter().map(|ip| ip.parse().unwrap()).collect();
            let expected = ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            assert_eq!(Forwarding::chain_value(&ips), expected.as_str());
        }
        for octet in 0..=255u8 {
            let ip = std::net::IpAddr::from([octet, 0, 10, octet]);
            assert_eq!(Forwarding::chain_value(&[ip]), ip.to_string().as_str());
        }
    }

    #[test]
    fn a_trusted_peer_keeps_its_scheme_and_host() {
        let request = client(&[
            ("Host", "internal:8080"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "app.example.com"),
            ("X-Forwarded-For", "203.0.113.9"),
        ]);
        let forwarding = Forwarding {
            x_forwarded_for: Forwarding::chain_value(&[
                "203.0.113.9".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ]),
            peer_trusted: true,
            ..direct()
        };
        let identity = Identity {
            headers: None,
            request_id: "0123456789ABCDEF",
        };
        let forwarded = upstream_request(&request, identity, forwarding, false).unwrap();
        assert_eq!(
            forwarded.headers["x-forwarded-for"],
            "203.0.113.9, 10.0.0.2"
        );
        assert_eq!(forwarded.headers["x-forwarded-proto"], "https");
        assert_eq!(forwarded.headers["x-forwarded-host"], "app.example.com");
        assert_eq!(
            forwarded.headers.get_all("x-forwarded-host").iter().count(),
            1
        );
    }

    #[test]
    fn the_normalized_target_and_authority_are_forwarded() {
        let mut request = client(&[("Host", "spoofed.example")]);
        request
            .set_raw_path(b"http://app.example.com//a/%62?c=1")
            .unwrap();
        let forwarding = Forwarding {
            target: Some("/a/b?c=1"),
            authority: Some("app.example.com"),
            ..direct()
        };
        let identity = Identity {
            headers: None,
            request_id: "0123456789ABCDEF",
        };
        let forwarded = upstream_request(&request, identity, forwarding, false).unwrap();
        assert_eq!(forwarded.raw_path(), b"/a/b?c=1");
        assert_eq!(forwarded.headers["host"], "app.example.com");
        assert_eq!(forwarded.headers["x-forwarded-host"], "app.example.com");
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order() {
        let request = client(&[("Accept", "a"), ("accept", "b"), ("Cookie", "x=1")]);
        let forwarded = anonymous(&request, false);
        let accepts: Vec<_> = forwarded.headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["a", "b"]);
        assert_eq!(forwarded.headers["cookie"], "x=1");
    }
}
