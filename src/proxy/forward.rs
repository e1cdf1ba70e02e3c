//! The request as the upstream receives it (SPEC §6): the client's request without any
//! `X-Keyward-*` or `Gateway-Request-Id` header the client sent and, unless
//! `forward_credentials` is set, without its credentials (`Authorization`, `Argus-API-Key`,
//! `X-Totp-Code`, the `token` cookie); then the identity keyward established and the request id.
//!
//! The forwarded header map is built once, sized for everything it will hold. Editing pingora's
//! copy of the client's request in place instead grows its two header maps (values, and the
//! names' original spelling) several times over per request: measured under callgrind, that
//! cost more than authenticating the request. The built map keeps no original spelling, so
//! header names reach the upstream in lower case (the common standard ones in title case),
//! as they do behind Envoy or linkerd; HTTP header names are case-insensitive (RFC 9110 §5.1).

use super::respond::REQUEST_ID_HEADER;
use crate::auth::{api_key, token, totp};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use pingora::http::RequestHeader;

/// Every header under this prefix is keyward's to set; clients' copies are removed.
pub const IDENTITY_PREFIX: &str = "x-keyward-";

const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Room for the headers pingora may add after the filters (`Host`, framing).
const HEADROOM: usize = 2;

/// What keyward adds to a forwarded request.
pub struct Identity<'a> {
    /// The principal's `X-Keyward-*` headers; empty for an anonymous request.
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub request_id: &'a str,
}

/// Builds the upstream request from `client`, pingora's (already hop-by-hop-sanitised) copy of
/// the request as the client sent it.
pub fn upstream_request(
    client: &RequestHeader,
    identity: Identity<'_>,
    forward_credentials: bool,
) -> pingora::Result<RequestHeader> {
    let mut headers =
        HeaderMap::with_capacity(client.headers.len() + identity.headers.len() + 1 + HEADROOM);
    for (name, value) in &client.headers {
        if name.as_str().starts_with(IDENTITY_PREFIX) || name == REQUEST_ID {
            continue;
        }
        if !forward_credentials {
            if name == AUTHORIZATION || name == api_key::HEADER_NAME || name == totp::HEADER_NAME {
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
    for (name, value) in identity.headers {
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
    // A request target the URI does not reproduce byte for byte (absolute form, non-UTF-8)
    // is carried over as the client sent it.
    let from_uri = client
        .uri
        .path_and_query()
        .map(|p| p.as_str().as_bytes())
        .unwrap_or_default();
    if !client.raw_path_is_utf8() || client.raw_path() != from_uri {
        forwarded.set_raw_path(client.raw_path())?;
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

    /// Forwarded with no principal.
    fn anonymous(request: &RequestHeader, forward_credentials: bool) -> RequestHeader {
        let identity = Identity {
            headers: &[],
            request_id: "0123456789ABCDEF",
        };
        upstream_request(request, identity, forward_credentials).unwrap()
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
        let identity = [(
            crate::auth::identity_header::USER,
            HeaderValue::from_static("john"),
        )];
        let forwarded = upstream_request(
            &request,
            Identity {
                headers: &identity,
                request_id: "0123456789ABCDEF",
            },
            false,
        )
        .unwrap();
        assert_eq!(
            names(&forwarded),
            [
                "host",
                "cookie",
                "x-other",
                "x-keyward-user",
                "gateway-request-id"
            ]
        );
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
            ["authorization", "cookie", "gateway-request-id"]
        );
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order() {
        let request = client(&[("Accept", "a"), ("accept", "b"), ("Cookie", "x=1")]);
        let forwarded = anonymous(&request, false);
        let accepts: Vec<_> = forwarded.headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["a", "b"]);
        assert_eq!(forwarded.headers["cookie"], "x=1");
    }

    #[test]
    fn absolute_form_targets_survive() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request
            .set_raw_path(b"http://app.example.com/a?b=1")
            .unwrap();
        let forwarded = anonymous(&request, false);
        assert_eq!(forwarded.raw_path(), b"http://app.example.com/a?b=1");
    }
}
