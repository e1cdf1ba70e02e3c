//! CSRF protection of the pages' forms: a random token in a cookie that only keyward's own
//! origin receives (`SameSite=Strict`, `HttpOnly`, `__Host-` over TLS so that no sibling
//! site can plant one), repeated in a hidden field of every form. A post is accepted only
//! when both are present and equal (compared in constant time). Another site can make a
//! browser post a form, but it can neither read the cookie nor, under `SameSite=Strict`, make
//! the browser send it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The cookie's name: `__Host-` prefixed over TLS (the browser then refuses it unless it is
/// `Secure`, for `/`, and set by this host itself).
pub fn cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-keyward_csrf"
    } else {
        "keyward_csrf"
    }
}

/// A new token: 256 bits from the OS's generator.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token has this shape; anything else in the cookie is ignored (and replaced).
pub fn is_token(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `Set-Cookie` value that gives the browser `token`.
pub fn set_cookie(token: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict{secure}",
        cookie_name(tls)
    )
}

/// The request's CSRF cookie, when it holds a well-formed token (exactly one such cookie).
pub fn from_request(headers: &http::HeaderMap, tls: bool) -> Option<String> {
    let name = cookie_name(tls);
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        let text = value.to_str().ok()?;
        for cookie in cookie::Cookie::split_parse(text).flatten() {
            if cookie.name() != name {
                continue;
            }
            if found.is_some() {
                return None;
            }
            found = Some(cookie.value().to_owned());
        }
    }
    found.filter(|t| is_token(t))
}

/// A posted form's token matches the cookie.
pub fn matches(cookie: Option<&str>, field: Option<&str>) -> bool {
    match (cookie, field) {
        (Some(cookie), Some(field)) if is_token(cookie) => {
            bool::from(cookie.as_bytes().ct_eq(field.as_bytes()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_needs_the_cookies_token_in_its_field() {
        let token = new_token();
        assert!(is_token(&token));
        assert_ne!(token, new_token());
        assert!(matches(Some(&token), Some(&token)));
        assert!(!matches(Some(&token), None));
        assert!(!matches(None, Some(&token)));
        assert!(!matches(Some(&token), Some(&new_token())));
        assert!(!matches(Some(""), Some("")));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("a=1; keyward_csrf={token}").parse().unwrap(),
        );
        assert_eq!(from_request(&headers, false), Some(token.clone()));
        assert_eq!(
            from_request(&headers, true),
            None,
            "over TLS only the __Host- cookie"
        );
        headers.append(
            http::header::COOKIE,
            format!("keyward_csrf={}", new_token()).parse().unwrap(),
        );
        assert_eq!(from_request(&headers, false), None, "two cookies: neither");
        assert!(set_cookie(&token, true).starts_with("__Host-keyward_csrf="));
        assert!(set_cookie(&token, true).ends_with("; Secure"));
    }
}
