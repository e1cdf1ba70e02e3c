//! The request target as keyward decides on it and forwards it (SPEC §6).
//!
//! An upstream framework routes on its own reading of the path: it percent-decodes, merges
//! slashes, resolves dot segments. If keyward decided on the raw path, `/%61pi/admin` or
//! `//api/admin` would pass a `/api/admin` route and still reach the admin page. So the target
//! is normalized once (RFC 3986 §6.2.2): percent-encoded unreserved characters decoded, other
//! escapes upper-cased, dot segments removed (§5.2.4), repeated slashes merged. Routes match
//! that path, the admin API answers on it, and the upstream receives exactly it. What cannot be
//! normalized without guessing how the upstream reads it is refused with 400: an encoded `/`
//! or `\`, a raw `\`, control characters, invalid UTF-8 after decoding, `;` path parameters
//! (which Java servers strip before routing) and a fragment. The query is forwarded untouched.
//!
//! Only origin-form (`/…`), absolute-form with an `http`/`https` scheme and an authority (its
//! path is used, and it is forwarded in origin-form) and `*` for `OPTIONS` are accepted.

use http::Method;

/// Why a request target was refused (all 400); [`TargetError::reason`] is the body's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target is not origin-form, http(s) absolute-form or OPTIONS *")]
    Form,
    #[error("the request target carries a fragment")]
    Fragment,
    #[error("the path holds a byte that is not visible ASCII")]
    InvalidByte,
    #[error("the path holds a malformed percent-escape")]
    InvalidEscape,
    #[error("the path holds an encoded slash or a backslash")]
    Separator,
    #[error("the path holds an encoded control character")]
    ControlCharacter,
    #[error("the path is not UTF-8 once decoded")]
    InvalidUtf8,
    #[error("the path holds a ';' path parameter")]
    PathParameter,
    #[error("a path segment has another meaning to IIS and Windows")]
    WindowsAlias,
}

impl TargetError {
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::Form => "invalid_request_target",
            TargetError::Fragment => "fragment_in_target",
            TargetError::InvalidByte => "invalid_path_byte",
            TargetError::InvalidEscape => "invalid_percent_encoding",
            TargetError::Separator => "encoded_separator",
            TargetError::ControlCharacter => "control_character",
            TargetError::InvalidUtf8 => "invalid_utf8_path",
            TargetError::PathParameter => "path_parameter",
            TargetError::WindowsAlias => "ambiguous_path_segment",
        }
    }
}

/// The normalized request target: what routes match and what the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// The normalized path, then `?query` when the client sent one.
    text: String,
    path_len: usize,
    /// The forwarded target differs from the bytes the client sent.
    rewritten: bool,
    /// The authority of an absolute-form target; it replaces `Host` (RFC 9112 §3.2.2).
    authority: Option<String>,
}

impl RequestTarget {
    /// Parses and normalizes `raw`, the request target exactly as the client sent it.
    pub fn parse(method: &Method, raw: &[u8]) -> Result<RequestTarget, TargetError> {
        match raw.first() {
            Some(b'/') => RequestTarget::origin_form(raw, None),
            Some(b'*') if raw.len() == 1 && *method == Method::OPTIONS => Ok(RequestTarget {
                text: "*".to_owned(),
                path_len: 1,
                rewritten: false,
                authority: None,
            }),
            _ => RequestTarget::absolute_form(raw),
        }
    }

    /// The normalized path, e.g. `/api/admin`; `*` for `OPTIONS *`.
    pub fn path(&self) -> &str {
        &self.text[..self.path_len]
    }

    pub fn query(&self) -> Option<&str> {
        self.text.get(self.path_len + 1..)
    }

    /// Path and query as forwarded.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the forwarded target must be written anew (it is not what the client sent).
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// `OPTIONS *`: about the server as a whole, so decided by the route of `/`.
    pub fn is_asterisk(&self) -> bool {
        self.text == "*"
    }

    /// With `routes_case_insensitive` (SPEC §15): refuses the spellings that an upstream which
    /// routes without regard to case (IIS, ASP.NET) reads as another path than the one routes
    /// match, so that none of them falls to a more lenient route:
    ///
    /// - a segment ending in `.` or a space (`/api/admin.`, `/api/admin%20`, `/api/admin. . `):
    ///   Windows drops them, so IIS serves `/api/admin`;
    /// - an NTFS stream name (`/api/admin::$DATA`, `admin:$I30:$INDEX_ALLOCATION`): `::` or `:$`
    ///   in a segment;
    /// - an 8.3 short name (`/api/ADMINI~1`): `~` followed by a digit;
    /// - a non-ASCII character whose case mapping is ASCII (`ı` → `I`, `ſ` → `S`, the Kelvin
    ///   sign → `k`, `ﬀ` → `FF`): .NET's case-insensitive comparisons fold them.
    ///
    /// `;` parameters, `\` and encoded separators are refused for every upstream already.
    pub fn check_windows_aliases(&self) -> Result<(), TargetError> {
        if self.is_asterisk() {
            return Ok(());
        }
        for segment in self.path().split('/') {
            // Read as IIS reads it: percent-decoded (`%3A%3A%24DATA` is `::$DATA` there).
            let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
            let trailing = decoded.ends_with('.') || decoded.ends_with(' ');
            let stream = decoded.contains("::") || decoded.contains(":$");
            let short_name = decoded
                .as_bytes()
                .windows(2)
                .any(|w| w[0] == b'~' && w[1].is_ascii_digit());
            if trailing || stream || short_name || folds_to_ascii(segment) {
                return Err(TargetError::WindowsAlias);
            }
        }
        Ok(())
    }

    fn absolute_form(raw: &[u8]) -> Result<RequestTarget, TargetError> {
        let uri = http::Uri::try_from(raw).map_err(|_| TargetError::Form)?;
        let scheme_ok = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
        let authority = match uri.authority() {
            Some(a) if scheme_ok && !a.as_str().is_empty() && !a.as_str().contains('@') => {
                a.as_str().to_owned()
            }
            _ => return Err(TargetError::Form),
        };
        // The bytes after the authority, as sent: `http::Uri` would hide a fragment.
        let after_scheme = raw
            .windows(3)
            .position(|w| w == b"://")
            .map(|i| &raw[i + 3..])
            .ok_or(TargetError::Form)?;
        let rest = &after_scheme[authority.len().min(after_scheme.len())..];
        let origin: Vec<u8> = match rest.first() {
            None => b"/".to_vec(),
            Some(b'?') => [b"/".as_slice(), rest].concat(),
            Some(b'/') => rest.to_vec(),
            Some(_) => return Err(TargetError::Form),
        };
        let mut target = RequestTarget::origin_form(&origin, Some(authority))?;
        target.rewritten = true;
        Ok(target)
    }

    fn origin_form(raw: &[u8], authority: Option<String>) -> Result<RequestTarget, TargetError> {
        if raw.contains(&b'#') {
            return Err(TargetError::Fragment);
        }
        let (raw_path, raw_query) = match raw.iter().position(|&b| b == b'?') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        let path = match is_normal(raw_path) {
            // The common case, on every request: nothing to rewrite, one copy.
            true => String::from_utf8(raw_path.to_vec()).map_err(|_| TargetError::InvalidByte)?,
            false => normalize_path(raw_path)?,
        };
        let rewritten = path.as_bytes() != raw_path;
        let path_len = path.len();
        let mut text = path;
        if let Some(query) = raw_query {
            // Untouched, but it must be text to be forwarded as such.
            let query = std::str::from_utf8(query).map_err(|_| TargetError::InvalidByte)?;
            if query.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
                return Err(TargetError::InvalidByte);
            }
            text.push('?');
            text.push_str(query);
        }
        Ok(RequestTarget {
            text,
            path_len,
            rewritten,
            authority,
        })
    }
}

/// A path [`normalize_path`] would return unchanged: visible ASCII without escapes, `\`,
/// `;`, empty segments (`//`) or dot segments.
fn is_normal(raw: &[u8]) -> bool {
    let plain_bytes = raw
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b'\\' | b';'));
    if !plain_bytes || raw.first() != Some(&b'/') {
        return false;
    }
    let mut segments = raw[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        // An empty segment is `//`, except the last one: a trailing slash is normal.
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
    }
    true
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalizes an origin-form path (starting with `/`); see the module documentation.
pub fn normalize_path(raw: &[u8]) -> Result<String, TargetError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut decoded = Vec::with_capacity(raw.len());
    // Escapes of bytes above 0x7f stay encoded; they must still decode to UTF-8.
    let mut high_escape = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let value = match (raw.get(i + 1), raw.get(i + 2)) {
                    (Some(&h), Some(&l)) => match (hex_value(h), hex_value(l)) {
                        (Some(h), Some(l)) => h << 4 | l,
                        _ => return Err(TargetError::InvalidEscape),
                    },
                    _ => return Err(TargetError::InvalidEscape),
                };
                i += 3;
                if is_unreserved(value) {
                    decoded.push(value);
                } else if value == b'/' || value == b'\\' {
                    return Err(TargetError::Separator);
                } else if value == b';' {
                    // Servlet containers and some routers decode before they split off path
                    // parameters: `%3B` must not pass where `;` does not.
                    return Err(TargetError::PathParameter);
                } else if value < 0x20 || value == 0x7f {
                    return Err(TargetError::ControlCharacter);
                } else {
                    high_escape |= value >= 0x80;
                    decoded.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(value >> 4)],
                        HEX[usize::from(value & 15)],
                    ]);
                }
                continue;
            }
            b'\\' => return Err(TargetError::Separator),
            b';' => return Err(TargetError::PathParameter),
            0x21..=0x7e => decoded.push(b),
            _ => return Err(TargetError::InvalidByte),
        }
        i += 1;
    }
    if high_escape {
        check_decoded(&decoded)?;
    }
    // Only visible ASCII was pushed above.
    let text = String::from_utf8(decoded).map_err(|_| TargetError::InvalidByte)?;
    Ok(remove_dot_segments_and_merge_slashes(&text))
}

/// A path whose remaining escapes are all well-formed must decode to UTF-8 without control
/// characters: escapes of C1 controls (`%C2%80`–`%C2%9F`, NEL among them) too, which some
/// runtimes read as whitespace or line breaks.
fn check_decoded(path: &[u8]) -> Result<(), TargetError> {
    let mut bytes = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let value =
                hex_value(path[i + 1]).unwrap_or(0) << 4 | hex_value(path[i + 2]).unwrap_or(0);
            bytes.push(value);
            i += 3;
        } else {
            bytes.push(path[i]);
            i += 1;
        }
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| TargetError::InvalidUtf8)?;
    match text.chars().any(char::is_control) {
        true => Err(TargetError::ControlCharacter),
        false => Ok(()),
    }
}

/// Whether a normalized segment holds a non-ASCII character (percent-encoded: the path was
/// checked to decode to UTF-8) whose upper or lower case holds an ASCII letter.
fn folds_to_ascii(segment: &str) -> bool {
    if !segment.contains('%') {
        return false;
    }
    let mut bytes = Vec::with_capacity(segment.len());
    let raw = segment.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex_value),
            raw.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(h), Some(l)) => {
                bytes.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).chars().any(|c| {
        !c.is_ascii()
            && (c.to_uppercase().any(|u| u.is_ascii()) || c.to_lowercase().any(|l| l.is_ascii()))
    })
}

/// `/a//b/./c/../d` → `/a/b/d`. A path that ends in `/`, `.` or `..` keeps a trailing slash,
/// as RFC 3986 §5.2.4 does.
fn remove_dot_segments_and_merge_slashes(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(raw: &str) -> Result<String, TargetError> {
        RequestTarget::parse(&Method::GET, raw.as_bytes()).map(|t| t.as_str().to_owned())
    }

    #[test]
    fn spellings_of_one_path_become_that_path() {
        for spelling in [
            "/api/admin",
            "/%61pi/admin",
            "/api/admi%6e",
            "/api/admi%6E",
            "//api/admin",
            "/api//admin",
            "///api///admin",
            "/x/../api/admin",
            "/./api/./admin",
            "/%2e/api/admin",
            "/x/%2E%2E/api/admin",
            "/../api/admin",
        ] {
            assert_eq!(
                normalized(spelling).as_deref(),
                Ok("/api/admin"),
                "{spelling}"
            );
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_normalizer() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "/a..b/.c/c.",
            "/.well-known/x",
            "//",
            "/a//b",
            "/a/.",
            "/a/./b",
            "/..",
            "/a/..",
            "/a%20",
            "/a;b",
            "/a\\b",
            "/~a-b_c",
        ] {
            if is_normal(raw.as_bytes()) {
                assert_eq!(normalize_path(raw.as_bytes()).as_deref(), Ok(raw), "{raw}");
            }
        }
        assert!(is_normal(b"/a/b/"));
        assert!(!is_normal(b"/a//b"));
        assert!(!is_normal(b"/a/./b"));
        assert!(!is_normal(b"//"));
    }

    #[test]
    fn trailing_slashes_and_dots() {
        for (raw, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/a..b/c.", "/a..b/c."),
            ("/.well-known/x", "/.well-known/x"),
        ] {
            assert_eq!(normalized(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn remaining_escapes_are_upper_cased_and_the_query_is_untouched() {
        assert_eq!(normalized("/a%2fb").unwrap_err(), TargetError::Separator);
        assert_eq!(normalized("/a%20b%3a").as_deref(), Ok("/a%20b%3A"));
        assert_eq!(normalized("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        let target = RequestTarget::parse(&Method::GET, b"//a/%62?x=%2f&y=/../").unwrap();
        assert_eq!(target.path(), "/a/b");
        assert_eq!(target.query(), Some("x=%2f&y=/../"));
        assert!(target.rewritten());
        let plain = RequestTarget::parse(&Method::GET, b"/a/b?c").unwrap();
        assert!(!plain.rewritten());
        assert_eq!(
            RequestTarget::parse(&Method::GET, b"/a?").unwrap().query(),
            Some("")
        );
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        for (raw, error) in [
            ("/a%2Fb", TargetError::Separator),
            ("/a%5cb", TargetError::Separator),
            ("/api/admin%3bx", TargetError::PathParameter),
            ("/api/admin%3B", TargetError::PathParameter),
            ("/a\\b", TargetError::Separator),
            ("/a%00b", TargetError::ControlCharacter),
            ("/a%0d%0ab", TargetError::ControlCharacter),
            ("/a%7f", TargetError::ControlCharacter),
            ("/%c2%9a", TargetError::ControlCharacter),
            ("/a%C2%85b", TargetError::ControlCharacter),
            ("/a%c2%80", TargetError::ControlCharacter),
            ("/a%ff", TargetError::InvalidUtf8),
            ("/a%c3", TargetError::InvalidUtf8),
            ("/a%", TargetError::InvalidEscape),
            ("/a%2", TargetError::InvalidEscape),
            ("/a%zz", TargetError::InvalidEscape),
            ("/api;x/admin", TargetError::PathParameter),
            ("/a#b", TargetError::Fragment),
        ] {
            assert_eq!(normalized(raw), Err(error), "{raw}");
        }
        assert_eq!(
            RequestTarget::parse(&Method::GET, b"/caf\xc3\xa9"),
            Err(TargetError::InvalidByte)
        );
    }

    #[test]
    fn windows_aliases_are_found_for_case_insensitive_routes() {
        let check = |raw: &str| {
            RequestTarget::parse(&Method::GET, raw.as_bytes())
                .unwrap()
                .check_windows_aliases()
        };
        for raw in [
            "/api/admin.",
            "/api/admin%20",
            "/api/admin.%20.%20",
            "/api/admin./x",
            "/api/admin%20/x",
            "/api/admin::$DATA",
            "/api/admin:$I30:$INDEX_ALLOCATION/x",
            "/api/ADMINI~1",
            "/api/adm%C4%B1n",
            "/api/%C5%BFecret",
            "/api/%E2%84%AAey",
            "/api/%EF%AC%80",
            "/_admin./manage",
            "/.TOKEN%20/x",
            // The same, percent-encoded: IIS decodes before it reads a file name.
            "/api/admin%3A%3A%24DATA",
            "/api/admin%3A$DATA",
            "/api/admin:%24DATA",
            "/api/admin%3A%24I30%3A%24INDEX_ALLOCATION",
            "/api/admin%2E",
            "/api/ADMINI%7E1",
        ] {
            assert_eq!(check(raw), Err(TargetError::WindowsAlias), "{raw}");
        }
        for raw in [
            "/api/admin",
            "/api/admin/",
            "/a.b/c.d",
            "/.well-known/x",
            "/v1/things:batchGet",
            "/~user/x",
            "/caf%C3%A9",
            "/a%20b",
            "/?x=a.",
        ] {
            assert_eq!(check(raw), Ok(()), "{raw}");
        }
        let star = RequestTarget::parse(&Method::OPTIONS, b"*").unwrap();
        assert_eq!(star.check_windows_aliases(), Ok(()));
    }

    #[test]
    fn only_the_three_forms_are_accepted() {
        for raw in [
            "api/admin",
            "x:/api/admin",
            "mailto:api/admin",
            "ftp://h/api/admin",
            "http:/api/admin",
            "http:///api/admin",
            "http://user@h/api/admin",
            "*",
            "",
        ] {
            assert_eq!(normalized(raw), Err(TargetError::Form), "{raw:?}");
        }
        let star = RequestTarget::parse(&Method::OPTIONS, b"*").unwrap();
        assert!(star.is_asterisk());
        let absolute =
            RequestTarget::parse(&Method::GET, b"http://App.example:8080//api/%61dmin?q").unwrap();
        assert_eq!(absolute.as_str(), "/api/admin?q");
        assert_eq!(absolute.authority(), Some("App.example:8080"));
        assert!(absolute.rewritten());
        assert_eq!(normalized("HTTPS://h").as_deref(), Ok("/"));
        assert_eq!(normalized("http://h?x=1").as_deref(), Ok("/?x=1"));
    }
}
