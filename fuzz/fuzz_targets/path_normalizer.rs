//! `RequestTarget::parse`: whatever it accepts is a fixed point of the normalization and
//! carries no spelling an upstream could read as another path.
#![no_main]

use http::Method;
use keyward::proxy::target::RequestTarget;
use libfuzzer_sys::fuzz_target;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes every `%XX` in `path`; every escape left in a normalized path must be well-formed.
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = bytes.get(i + 1).copied().and_then(hex);
            let l = bytes.get(i + 2).copied().and_then(hex);
            match (h, l) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => panic!("malformed escape left in normalized path {path:?}"),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method (`*` is only accepted for OPTIONS), the rest is the target.
    let Some((&selector, raw)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::OPTIONS,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let Ok(target) = RequestTarget::parse(&method, raw) else {
        return;
    };
    let text = target.as_str();
    let path = target.path();
    assert!(
        text.starts_with(path),
        "{text:?} does not start with its path {path:?}"
    );

    // Idempotent: the forwarded target parses to itself and needs no rewriting.
    let again = RequestTarget::parse(&method, text.as_bytes())
        .unwrap_or_else(|e| panic!("normalized target {text:?} refused on re-parse: {e:?}"));
    assert_eq!(again.as_str(), text, "not idempotent (input {raw:?})");
    assert_eq!(again.path(), path);
    assert_eq!(again.query(), target.query());
    assert!(!again.rewritten(), "{text:?} rewritten again");

    // Only visible ASCII is forwarded, path and query alike.
    assert!(
        text.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "non-visible byte in {text:?}"
    );
    if target.is_asterisk() {
        assert_eq!(path, "*");
        assert_eq!(method, Method::OPTIONS);
        return;
    }
    assert!(path.starts_with('/'), "path {path:?} does not start with /");
    assert!(!path.contains("//"), "path {path:?} has //");
    // No dot segment anywhere: `/./`, `/../`, nor a trailing `/.` or `/..`.
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "dot segment in {path:?}");
    }
    assert!(!path.contains('?') && !path.contains('#') && !path.contains(';'));
    assert!(!path.contains('\\'), "backslash in {path:?}");
    let upper = path.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C"),
        "encoded separator in {path:?}"
    );
    // Fully decoded, the path is UTF-8 without control characters, and decoding reveals no
    // new separator or dot segment (an upstream that decodes once routes on the same path).
    let decoded = percent_decode(path);
    let decoded = std::str::from_utf8(&decoded)
        .unwrap_or_else(|_| panic!("path {path:?} does not decode to UTF-8"));
    assert!(
        !decoded.chars().any(char::is_control),
        "control character in decoded {path:?}"
    );
    assert!(!decoded.contains('\\'), "decoded {path:?} has a backslash");
    assert_eq!(
        decoded.matches('/').count(),
        path.matches('/').count(),
        "decoding {path:?} adds a slash"
    );
    for segment in decoded.split('/') {
        assert!(
            segment != "." && segment != "..",
            "decoded {path:?} has a dot segment"
        );
    }
    // Unreserved characters are never left encoded, and escapes are upper-case.
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let (h, l) = (bytes[i + 1], bytes[i + 2]);
        assert!(
            !h.is_ascii_lowercase() && !l.is_ascii_lowercase(),
            "lower-case escape in {path:?}"
        );
        let value = hex(h).unwrap() << 4 | hex(l).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~')),
            "unreserved character left encoded in {path:?}"
        );
    }
});
