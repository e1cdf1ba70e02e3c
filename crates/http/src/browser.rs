//! What the proxy and the browser pages agree on (SPEC §14): which refused request is a
//! browser's page load that goes to the sign-in page instead of a 401, and which `rd` (the
//! page to return to) stays on keyward's origin.

use http::header::{ACCEPT, AUTHORIZATION};
use pingora::http::RequestHeader;
use std::borrow::Cow;

/// The sign-in page.
pub const SIGN_IN_PATH: &str = "/.keyward/sign-in";

/// Headers that carry a credential other than the `token` cookie: a request with one is a
/// program's, and keeps its 401.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "argus-api-key",
    "signature",
    "signature-input",
    "x-totp-code",
];

/// The `Location` of the sign-in page for a refused request, when the request is a browser's
/// page load: `GET`/`HEAD`, an `Accept` that prefers HTML, and no credential but (at most) the
/// cookie. `None`: the request keeps its 401.
pub fn sign_in_redirect(request: &RequestHeader) -> Option<String> {
    if request.method != http::Method::GET && request.method != http::Method::HEAD {
        return None;
    }
    if request.headers.contains_key(AUTHORIZATION)
        || CREDENTIAL_HEADERS
            .iter()
            .any(|name| request.headers.contains_key(*name))
    {
        return None;
    }
    let mut accepts = request.headers.get_all(ACCEPT).iter();
    let (Some(accept), None) = (accepts.next(), accepts.next()) else {
        return None;
    };
    if !prefers_html(accept.to_str().ok()?) {
        return None;
    }
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    Some(sign_in_location(target))
}

/// `/.keyward/sign-in?rd=<target>`, the target percent-encoded as one query value.
pub fn sign_in_location(target: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    format!("{SIGN_IN_PATH}?rd={rd}")
}

/// `Accept` names `text/html` (or XHTML) itself, with a weight above zero and at least that of
/// every other type it names itself. Wildcards do not count: `*/*` (curl, most libraries)
/// prefers nothing.
pub fn prefers_html(accept: &str) -> bool {
    let mut html = None::<u16>;
    let mut best_other = 0u16;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut weight = 1000u16;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                match parse_qvalue(value.trim()) {
                    Some(q) => weight = q,
                    // A weight that does not parse: the whole header is not to be trusted.
                    None => return false,
                }
            }
        }
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = Some(html.unwrap_or(0).max(weight)),
            m if m.ends_with("/*") || m.is_empty() => {}
            _ => best_other = best_other.max(weight),
        }
    }
    html.is_some_and(|q| q > 0 && q >= best_other)
}

/// RFC 9110 §12.4.2 `qvalue` in thousandths.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(millis),
        "1" if millis == 0 => Some(1000),
        _ => None,
    }
}

/// The page to return to after signing in, when `rd` is a path on keyward's own origin;
/// anything else — another origin (`https://evil.example/`, `//evil.example`, `/\evil.example`),
/// a scheme (`javascript:`), control characters or spaces — gives `/`. Decided by the WHATWG
/// URL parser, the one browsers use: `rd` resolved against a placeholder origin must stay on
/// it, and the page returned is that parser's serialization, checked again (so what the
/// browser is sent to is what was checked).
pub fn safe_return_path(rd: Option<&str>) -> Cow<'static, str> {
    const HOME: Cow<'static, str> = Cow::Borrowed("/");
    let Some(rd) = rd else {
        return HOME;
    };
    // Browsers strip tabs and newlines from URLs and read `\` as `/`; refusing them (and
    // every other control character or space) before parsing leaves nothing to reinterpret.
    if !rd.starts_with('/')
        || rd.starts_with("//")
        || rd.bytes().any(|b| b == b'\\' || b <= b' ' || b == 0x7f)
    {
        return HOME;
    }
    let Ok(base) = url::Url::parse("http://keyward.invalid/") else {
        return HOME;
    };
    let Ok(resolved) = base.join(rd) else {
        return HOME;
    };
    if resolved.origin() != base.origin() {
        return HOME;
    }
    let mut path = resolved.path().to_owned();
    // The parser's output is checked again, not only its input: dot segments can leave an
    // empty first segment (`/.//evil.example` resolves to `//evil.example`), which a browser
    // reads as another host.
    if path.starts_with("//") {
        return HOME;
    }
    // The sign-in pages themselves are no place to return to (a loop, or a sign-out).
    if crate::namespace::is_browser_path(&path) {
        return HOME;
    }
    if let Some(query) = resolved.query() {
        path.push('?');
        path.push_str(query);
    }
    Cow::Owned(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    const CHROME: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                          image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

    #[test]
    fn browsers_prefer_html_and_programs_do_not() {
        assert!(prefers_html(CHROME));
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(prefers_html("TEXT/HTML"));
        for program in [
            "*/*",
            "",
            "application/json",
            "application/json, text/html;q=0.9",
            "text/html;q=0",
            "text/html;q=0.000",
            "text/*",
            "text/html;q=2",
            "text/html;q=abc, application/json",
        ] {
            assert!(!prefers_html(program), "{program:?}");
        }
    }

    #[test]
    fn only_a_browsers_credential_less_page_load_is_redirected() {
        let html = [("accept", CHROME)];
        let location = sign_in_redirect(&request("GET", "/app/a%20b?x=1&y=/z", &html));
        assert_eq!(
            location.as_deref(),
            Some("/.keyward/sign-in?rd=%2Fapp%2Fa%2520b%3Fx%3D1%26y%3D%2Fz")
        );
        assert!(sign_in_redirect(&request("HEAD", "/app", &html)).is_some());
        // With the cookie (an expired one): still a browser.
        assert!(sign_in_redirect(&request(
            "GET",
            "/app",
            &[("accept", CHROME), ("cookie", "token=x")]
        ))
        .is_some());
        for (method, headers) in [
            ("POST", vec![("accept", CHROME)]),
            ("GET", vec![("accept", "application/json")]),
            ("GET", vec![]),
            (
                "GET",
                vec![("accept", CHROME), ("authorization", "Basic eDp5")],
            ),
            ("GET", vec![("accept", CHROME), ("argus-api-key", "k")]),
            ("GET", vec![("accept", CHROME), ("signature-input", "s=()")]),
            (
                "GET",
                vec![("accept", CHROME), ("accept", "application/json")],
            ),
        ] {
            assert_eq!(
                sign_in_redirect(&request(method, "/app", &headers)),
                None,
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn the_return_path_never_leaves_the_origin() {
        for evil in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            " /x",
            "javascript:alert(1)",
            "http:/evil.example",
            "/x\u{7f}",
            "",
            "evil.example",
            "/.keyward/sign-out",
            "/.KEYWARD/sign-in",
            "/.//evil.example",
            "/a/..//evil.example",
            "/%2e//evil.example",
            "/././/evil.example/x?y=1",
        ] {
            assert_eq!(safe_return_path(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(safe_return_path(None), "/");
        assert_eq!(
            safe_return_path(Some("/app/page?x=1&y=2")),
            "/app/page?x=1&y=2"
        );
        // Dot segments resolve (as the browser would) and stay on the origin.
        assert_eq!(safe_return_path(Some("/a/../../b")), "/b");
        // Encoded slashes stay path bytes: the browser never reads them as an authority.
        assert_eq!(
            safe_return_path(Some("/%2F%2Fevil.example")),
            "/%2F%2Fevil.example"
        );
        // Quotes and angle brackets come back percent-encoded: nothing to inject into HTML.
        assert_eq!(safe_return_path(Some("/a\"<b>")), "/a%22%3Cb%3E");
    }
}
