//! `token::find_cookie` and `token::forwarded_cookie`: a token found is a token, and a
//! `Cookie` value forwarded upstream never still carries the `token` cookie.
#![no_main]

use http::{header::COOKIE, HeaderMap, HeaderValue};
use keyward::auth::token::{self, CookieToken, ForwardedCookie};
use libfuzzer_sys::fuzz_target;

/// Whether `value`, read the way an upstream reads a `Cookie` header (RFC 6265 §5.4: pairs
/// split on `;`, name before the first `=`, whitespace trimmed), sets a `token` cookie.
fn names_token(value: &[u8]) -> bool {
    value.split(|&b| b == b';').any(|pair| {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return false;
        };
        pair[..eq].trim_ascii() == token::COOKIE.as_bytes()
    })
}

fuzz_target!(|data: &[u8]| {
    // One `Cookie` header per line; lines that are not valid header values are skipped.
    let mut headers = HeaderMap::new();
    let mut values = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value.clone());
            values.push(value);
        }
    }

    match token::find_cookie(&headers) {
        CookieToken::Present(t) => {
            assert!(token::is_token(t), "Present({t:?}) is not a token");
            assert!(
                values
                    .iter()
                    .any(|v| v.as_bytes().windows(t.len()).any(|w| w == t.as_bytes())),
                "Present({t:?}) is in none of the values"
            );
        }
        CookieToken::Absent => {
            // No value names a token cookie the way an upstream would read it.
            for v in &values {
                if let Ok(text) = v.to_str() {
                    if v.len() <= 8192 {
                        assert!(
                            !cookie::Cookie::split_parse(text)
                                .flatten()
                                .any(|c| c.name() == token::COOKIE),
                            "Absent, but {text:?} has a token cookie"
                        );
                    }
                }
            }
        }
        CookieToken::Malformed => {}
    }

    for value in &values {
        match token::forwarded_cookie(value.as_bytes()) {
            ForwardedCookie::Rewritten(kept) => {
                assert!(!kept.is_empty());
                assert!(
                    !names_token(kept.as_bytes()),
                    "Rewritten {kept:?} (from {value:?}) still has a token cookie"
                );
                assert!(
                    !cookie::Cookie::split_parse(kept.as_str())
                        .flatten()
                        .any(|c| c.name() == token::COOKIE),
                    "Rewritten {kept:?} parses to a token cookie"
                );
                // It is forwarded as a header value, so it must be one.
                assert!(
                    HeaderValue::from_str(&kept).is_ok(),
                    "Rewritten {kept:?} is not a header value"
                );
                // Rewriting again changes nothing.
                assert!(
                    matches!(
                        token::forwarded_cookie(kept.as_bytes()),
                        ForwardedCookie::Unchanged
                    ) || !kept.contains(token::COOKIE),
                    "Rewritten {kept:?} is rewritten again"
                );
            }
            ForwardedCookie::Unchanged => {
                // Forwarded untouched: it must hold no token cookie however it is read.
                assert!(
                    !names_token(value.as_bytes()),
                    "Unchanged {value:?} sets a token cookie"
                );
                if let Ok(text) = value.to_str() {
                    assert!(
                        !cookie::Cookie::split_parse(text)
                            .flatten()
                            .any(|c| c.name() == token::COOKIE),
                        "Unchanged {text:?} has a token cookie"
                    );
                }
            }
            ForwardedCookie::Dropped => {}
        }
    }
});
