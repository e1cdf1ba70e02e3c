//! `api_key::parse`: never panics, and what it accepts is exactly `<prefix>/<secret>` taken
//! from the input, in the one spelling keys are issued in.
#![no_main]

use keyward::auth::api_key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((prefix, secret)) = api_key::parse(data) else {
        return;
    };
    let text = std::str::from_utf8(data).expect("accepted a key that is not UTF-8");
    let prefix_text = prefix.to_string();
    assert!(
        text.contains(&prefix_text),
        "prefix {prefix_text:?} not in {text:?}"
    );
    assert!(text.contains(secret), "secret not in the input");
    // The secret is a sub-slice of the input (borrowed, not re-built) at its end.
    let start = secret.as_ptr() as usize - data.as_ptr() as usize;
    assert!(start + secret.len() == data.len());
    // One accepted spelling per key: no leading zeros, lower-case hex, nothing around it.
    assert_eq!(format!("{prefix_text}/{secret}"), text);
    assert_eq!(secret.len(), 43);
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(prefix.user_id >= 0 && prefix.key_id > 0);
    // Its prefix parses back to itself.
    let (user_hex, key_id) = prefix_text.split_once('/').unwrap();
    assert_eq!(api_key::Prefix::parse(user_hex, key_id), Some(prefix));
});
