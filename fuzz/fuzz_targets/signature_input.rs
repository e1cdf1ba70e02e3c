//! `signature::parse_headers` and `signature::parse_keyid`: never panic, and what is accepted
//! re-serialises to a `Signature-Input` that parses to the same signed request.
#![no_main]

use base64::Engine as _;
use keyward::auth::signature::{self, SignedRequest};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

fn header(input: &[u8], sig: &[u8]) -> Option<RequestHeader> {
    let mut header = RequestHeader::build("GET", b"/", None).ok()?;
    header.insert_header("Signature-Input", input).ok()?;
    header.insert_header("Signature", sig).ok()?;
    Some(header)
}

fn check_keyid(keyid: &str) {
    if let Some((user, key_id)) = signature::parse_keyid(keyid) {
        assert!(!user.is_empty());
        assert!(key_id >= 0);
        let rest = keyid
            .strip_prefix(user.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or_else(|| panic!("keyid {keyid:?} does not start with {user:?}/"));
        assert!(!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(rest.parse::<i64>().ok(), Some(key_id));
    }
}

fn same(a: &SignedRequest, b: &SignedRequest) -> bool {
    a.components == b.components
        && a.params == b.params
        && a.created == b.created
        && a.expires == b.expires
        && a.nonce == b.nonce
        && a.keyid == b.keyid
        && a.signature == b.signature
}

fuzz_target!(|data: &[u8]| {
    // `Signature-Input` \n `Signature` \n keyid.
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let input = parts.next().unwrap_or_default();
    let sig = parts.next().unwrap_or_default();
    if let Some(keyid) = parts.next() {
        if let Ok(keyid) = std::str::from_utf8(keyid) {
            check_keyid(keyid);
        }
    }
    let Some(request) = header(input, sig) else {
        return;
    };
    let Ok(parsed) = signature::parse_headers(&request) else {
        return;
    };
    for (i, name) in parsed.components.iter().enumerate() {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
        assert!(!parsed.components[..i].contains(name), "duplicate {name:?}");
    }
    check_keyid(&parsed.keyid);

    // `@signature-params` is the inner list as sent, re-serialised: as a Signature-Input
    // member of its own it parses to the same request.
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(parsed.signature);
    let again = header(
        format!("sig={}", parsed.params).as_bytes(),
        format!("sig=:{sig_b64}:").as_bytes(),
    )
    .expect("re-serialised headers are header values");
    let reparsed = signature::parse_headers(&again)
        .unwrap_or_else(|e| panic!("re-serialised {:?} refused: {e:?}", parsed.params));
    assert!(same(&parsed, &reparsed), "{parsed:?} != {reparsed:?}");
});
