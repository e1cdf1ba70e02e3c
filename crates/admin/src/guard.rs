//! The rules every admin call passes before its handler runs (issue #9 hardening), in one
//! place so that no endpoint can forget one. The handlers still check what is particular to
//! them (self or POWER-USER, the token administrator, ADMINISTRATIVE to enroll your own key).

use crate::envelope::AdminError;
use http::{HeaderMap, Method, Uri};
use keyward_auth::{CredentialKind, Principal, SecurityLevel};

/// Which family of admin endpoints a call is for: they differ in the credentials they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/authentication/...` (Argus shapes, JSON bodies).
    Argus,
    /// `/.TOKEN/...`: a caller's own tokens.
    OwnTokens,
    /// `/_admin/manage/tenants/...`.
    TenantTokens,
}

/// keyward's own scheme: what the request came over.
fn own_scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Reads (the methods a read-only credential may use) change nothing; everything else writes.
fn is_write(method: &Method) -> bool {
    !keyward_config::policy::is_safe(method)
}

/// The request as [`admit`] needs to see it.
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// keyward's own origin is `https://…`: the request came over TLS, or through a TLS proxy
    /// (`tokens.secure_cookie`).
    pub tls: bool,
}

/// Admits (or refuses with 403) an authenticated call to `surface`.
pub fn admit(
    surface: Surface,
    caller: &Principal,
    request: &Incoming<'_>,
) -> Result<(), AdminError> {
    let forbidden = |why: &str| Err(AdminError::Forbidden(why.to_owned()));
    // Why: a tenant token is handed to a tenant's applications. If it could call the admin API
    // it would act as the administrator who minted it (SPEC §4) — so it never may, anywhere.
    if caller.tenant.is_some() {
        return forbidden("a tenant token cannot call the admin API");
    }
    // Why: the token API takes exactly the credentials of SPEC §4's "auth" column. An API key
    // or a signed request is a machine credential with its own constraints (read-only,
    // EXTERNAL, narrowed functions); letting it list or delete tokens — or mint one, which
    // would carry none of those constraints — would launder them away.
    match (surface, caller.kind) {
        (Surface::OwnTokens, CredentialKind::Basic | CredentialKind::Token) => {}
        (Surface::OwnTokens, _) => {
            return forbidden("the token API takes a password (HTTP Basic) or a token")
        }
        (Surface::TenantTokens, CredentialKind::Basic) => {}
        (Surface::TenantTokens, _) => {
            return forbidden("tenant tokens are managed with a password (HTTP Basic)")
        }
        (Surface::Argus, _) => {}
    }
    // Why: SPEC §2 — admin calls need DEFAULT or above, so an external user's API key (and
    // anything else at EXTERNAL) manages nothing, whatever its functions say.
    if caller.level < SecurityLevel::Default {
        return Err(AdminError::Forbidden(format!(
            "security level {} is too low for the admin API (DEFAULT needed)",
            caller.level
        )));
    }
    // Why: a read-only credential promises that nothing changes through it, admin calls
    // included.
    if caller.read_only && is_write(request.method) {
        return forbidden("a read-only key cannot change anything");
    }
    if caller.kind == CredentialKind::Token && is_write(request.method) {
        // Why: the browser attaches the token cookie to requests other sites make it send.
        // `SameSite=Lax` keeps most of them out, but not those from a sibling site or an
        // old browser; the Origin (or Referer) a browser adds says who asked (SPEC §6).
        same_origin(request)?;
        // Why: a page can make a browser POST only `text/plain`, form or blob bodies without
        // asking first (CORS preflight, which keyward never grants). The Argus endpoints
        // take JSON, so a cookie-authenticated body that is not declared JSON is refused.
        if surface == Surface::Argus && !request.body.is_empty() && !is_json(request.headers) {
            return forbidden(
                "a cookie-authenticated admin call must send its body as application/json",
            );
        }
    }
    Ok(())
}

/// A cookie-authenticated write must come from keyward's own origin, when the browser says
/// where it comes from: `Origin`, or failing that `Referer`. Neither: a non-browser client,
/// admitted.
fn same_origin(request: &Incoming<'_>) -> Result<(), AdminError> {
    let named = |name: http::HeaderName| -> Result<Option<Option<Origin>>, AdminError> {
        let mut values = request.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Ok(Some(value.to_str().ok().and_then(Origin::of_url))),
            // Two of them: no browser sends that; refuse rather than choose.
            (Some(_), Some(_)) => Err(AdminError::Forbidden(
                "several Origin or Referer headers".into(),
            )),
        }
    };
    let claimed = match named(http::header::ORIGIN)? {
        Some(origin) => origin,
        None => match named(http::header::REFERER)? {
            Some(origin) => origin,
            None => return Ok(()),
        },
    };
    // `Origin: null` (a sandboxed or privacy-stripped page) and anything unreadable count as
    // another origin.
    match (claimed, Origin::own(request)) {
        (Some(claimed), Some(own)) if claimed == own => Ok(()),
        _ => Err(AdminError::Forbidden(
            "a cookie-authenticated change must come from keyward's own origin (Origin/Referer)"
                .into(),
        )),
    }
}

/// scheme, lower-cased host and port (the scheme's default when absent).
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an `Origin` value or a `Referer` URL.
    fn of_url(text: &str) -> Option<Origin> {
        let uri: Uri = text.trim().parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let authority = uri.authority()?;
        let port = match (authority.port_u16(), scheme.as_str()) {
            (Some(port), _) => port,
            (None, "http") => 80,
            (None, "https") => 443,
            (None, _) => return None,
        };
        Some(Origin {
            host: authority.host().to_ascii_lowercase(),
            scheme,
            port,
        })
    }

    /// The origin the request was sent to: the `Host` header (or an absolute-form target's
    /// authority) on the scheme the request came over.
    fn own(request: &Incoming<'_>) -> Option<Origin> {
        let host = match request.headers.get(http::header::HOST) {
            Some(value) => value.to_str().ok()?,
            None => request.uri.authority()?.as_str(),
        };
        Origin::of_url(&format!("{}://{host}", own_scheme(request.tls)))
    }
}

/// `Content-Type: application/json` or `application/<something>+json`, any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> Incoming<'a> {
        Incoming {
            method,
            uri,
            headers,
            body,
            tls: false,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let uri: Uri = "/.TOKEN/".parse().unwrap();
        let post = Method::POST;
        let check = |pairs: &[(&'static str, &str)]| {
            let h = headers(pairs);
            same_origin(&request(&post, &uri, &h, b"")).is_ok()
        };
        let host = ("host", "Keyward.Example:8080");
        assert!(check(&[host]), "no Origin, no Referer");
        assert!(check(&[host, ("origin", "http://keyward.example:8080")]));
        assert!(!check(&[host, ("origin", "https://keyward.example:8080")]));
        assert!(!check(&[host, ("origin", "http://keyward.example")]));
        assert!(!check(&[host, ("origin", "https://evil.example")]));
        assert!(!check(&[host, ("origin", "null")]));
        assert!(check(&[
            ("host", "k.example"),
            ("origin", "http://k.example:80")
        ]));
        assert!(check(&[
            host,
            ("referer", "http://keyward.example:8080/ui?x=1")
        ]));
        assert!(!check(&[host, ("referer", "https://evil.example/page")]));
        assert!(!check(&[host, ("referer", "not a url")]));
        // Origin wins over Referer.
        assert!(check(&[
            host,
            ("origin", "http://keyward.example:8080"),
            ("referer", "https://evil.example/")
        ]));
        assert!(!check(&[
            host,
            ("origin", "http://keyward.example:8080"),
            ("origin", "http://keyward.example:8080")
        ]));
        assert!(
            !check(&[("origin", "http://keyward.example:8080")]),
            "no Host"
        );
    }

    #[test]
    fn over_tls_the_own_origin_is_https() {
        let uri: Uri = "/.TOKEN/".parse().unwrap();
        let post = Method::POST;
        let check = |pairs: &[(&'static str, &str)]| {
            let h = headers(pairs);
            let incoming = Incoming {
                tls: true,
                ..request(&post, &uri, &h, b"")
            };
            same_origin(&incoming).is_ok()
        };
        let host = ("host", "keyward.example");
        assert!(check(&[host, ("origin", "https://keyward.example")]));
        assert!(check(&[host, ("origin", "https://keyward.example:443")]));
        assert!(!check(&[host, ("origin", "http://keyward.example")]));
        assert!(check(&[
            ("host", "keyward.example:8443"),
            ("referer", "https://keyward.example:8443/ui")
        ]));
        assert!(!check(&[
            ("host", "keyward.example:8443"),
            ("origin", "http://keyward.example:8443")
        ]));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        assert!(is_json(&headers(&[(
            "content-type",
            "application/merge-patch+json"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(!is_json(&headers(&[])));
    }
}
