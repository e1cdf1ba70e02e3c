//! Connections that leave HTTP. After a `101 Switching Protocols` pingora relays raw bytes
//! both ways for the rest of the connection: nothing after it is a request keyward sees,
//! checks or logs. An upstream that answers 101 without switching (a framework that echoes
//! any `Upgrade`, a misconfigured sidecar) would so open a tunnel past every check for
//! whatever the client sends next (request smuggling through a fake upgrade). keyward
//! therefore relays a 101 only for a WebSocket handshake the upstream completed (RFC 6455
//! §4.2.2: `Upgrade: websocket` asked and answered, `Sec-WebSocket-Accept` computed from the
//! client's `Sec-WebSocket-Key`); any other 101 is a bad gateway and the connection closes.
//! `h2c` upgrades never reach the upstream (pingora removes them).

use base64::Engine as _;
use http::header::{HeaderMap, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a 101 answer to `request` completes a WebSocket handshake.
pub fn websocket_accepted(request: &HeaderMap, response: &HeaderMap) -> bool {
    let asks_websocket = names_websocket(request);
    let Some(key) = single(request, &SEC_WEBSOCKET_KEY) else {
        return false;
    };
    let Some(accept) = single(response, &SEC_WEBSOCKET_ACCEPT) else {
        return false;
    };
    asks_websocket && names_websocket(response) && accept.trim_ascii() == expected_accept(key)
}

/// `Upgrade: websocket`, alone (case-insensitive, RFC 6455 §4.1).
fn names_websocket(headers: &HeaderMap) -> bool {
    single(headers, &UPGRADE)
        .is_some_and(|value| value.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The one value of `name`, or `None` when absent or given more than once.
fn single<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value.as_bytes())
}

fn expected_accept(key: &[u8]) -> Vec<u8> {
    let mut sha1 = Sha1::new();
    sha1.update(key.trim_ascii());
    sha1.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD
        .encode(sha1.finalize())
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_rfc_example_handshake_is_accepted() {
        // RFC 6455 §1.3's example key and accept.
        let request = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let response = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(websocket_accepted(&request, &response));
    }

    #[test]
    fn any_other_101_is_refused() {
        let request = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let good = ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for response in [
            headers(&[("upgrade", "websocket")]),
            headers(&[("upgrade", "websocket"), ("sec-websocket-accept", "AAAA")]),
            headers(&[("upgrade", "h2c"), good]),
            headers(&[good]),
            headers(&[("upgrade", "websocket"), good, good]),
        ] {
            assert!(!websocket_accepted(&request, &response), "{response:?}");
        }
        let answer = headers(&[("upgrade", "websocket"), good]);
        for request in [
            headers(&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]),
            headers(&[
                ("upgrade", "foo"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ]),
            headers(&[("upgrade", "websocket")]),
        ] {
            assert!(!websocket_accepted(&request, &answer), "{request:?}");
        }
    }
}
