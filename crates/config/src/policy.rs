//! Route policy (SPEC §6): the first route whose path prefix and methods match decides.

use http::{HeaderMap, HeaderName, Method};
use keyward_core::{CredentialKinds, Principal, SecurityLevel};

#[derive(Debug, Clone)]
pub struct Route {
    /// Matched on whole segments: `/api` matches `/api` and `/api/x`, not `/apiary`.
    pub path: String,
    /// `routes_case_insensitive`: `/API/x` matches `/api` too, as it does in front of an
    /// upstream that routes without regard to case (Express by default, ASP.NET, IIS).
    pub case_insensitive: bool,
    pub methods: Option<Vec<Method>>,
    pub public: bool,
    pub require: Requirement,
    pub allow: CredentialKinds,
}

#[derive(Debug, Clone)]
pub struct Requirement {
    pub functions_any: Vec<String>,
    pub min_security_level: SecurityLevel,
    pub methods: Option<Vec<Method>>,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement {
            functions_any: Vec::new(),
            min_security_level: SecurityLevel::External,
            methods: None,
        }
    }
}

/// What the policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: no credential, or one this route does not accept.
    Unauthenticated(&'static str),
    /// 403: authenticated, but not allowed here.
    Forbidden(&'static str),
}

impl Route {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        let rest = if self.case_insensitive {
            // ASCII case only: a normalized path is visible ASCII (or it was refused).
            path.get(..self.path.len())
                .filter(|head| head.eq_ignore_ascii_case(&self.path))
                .map(|_| &path[self.path.len()..])
        } else {
            path.strip_prefix(self.path.as_str())
        };
        let prefix_ok = match rest {
            Some(rest) => self.path.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        };
        prefix_ok && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    pub fn decide(&self, principal: Option<&Principal>, method: &Method) -> Decision {
        // A presented credential's constraints hold on every route, public ones included:
        // a read-only key must not write through a public route with its user's identity.
        if principal.is_some_and(|p| p.read_only) && !is_safe(method) {
            return Decision::Forbidden("read_only");
        }
        if self.public {
            return Decision::Allow;
        }
        let Some(principal) = principal else {
            return Decision::Unauthenticated("credentials_required");
        };
        if !self.allow.contains(principal.kind) {
            return Decision::Unauthenticated("credential_kind_not_allowed");
        }
        let require = &self.require;
        if principal.level < require.min_security_level {
            return Decision::Forbidden("security_level_too_low");
        }
        if !require.functions_any.is_empty()
            && !require
                .functions_any
                .iter()
                .any(|f| principal.has_function(f))
        {
            return Decision::Forbidden("function_required");
        }
        if require
            .methods
            .as_ref()
            .is_some_and(|m| !m.contains(method))
        {
            return Decision::Forbidden("method_not_allowed");
        }
        Decision::Allow
    }
}

/// The methods a read-only credential may use.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Headers with which frameworks (Rails, Laravel, Symfony, Express, ASP.NET, Google APIs) serve
/// another method than the request line's. Spellings with `_` never reach the upstream.
const METHOD_OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// A method override that names no method (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a method override names no HTTP method")]
pub struct InvalidMethodOverride;

/// The methods a request asks the upstream to serve instead of its own, from the
/// method-override headers and a `_method` query parameter.
pub fn method_overrides(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Vec<Method>, InvalidMethodOverride> {
    let mut overrides = Vec::new();
    // One pass over the headers rather than a look-up per name: a request has few headers,
    // and each look-up hashes its name (this runs on every request).
    for (name, value) in headers {
        if METHOD_OVERRIDE_HEADERS.contains(name) {
            overrides.push(override_method(value.as_bytes())?);
        }
    }
    let from_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("_method="));
    for value in from_query {
        overrides.push(override_method(value.as_bytes())?);
    }
    Ok(overrides)
}

/// Frameworks upper-case the override (`put` is served as `PUT`), so policy does too.
fn override_method(value: &[u8]) -> Result<Method, InvalidMethodOverride> {
    Method::from_bytes(&value.trim_ascii().to_ascii_uppercase()).map_err(|_| InvalidMethodOverride)
}

/// The first matching route, if any.
pub fn route_for<'a>(routes: &'a [Route], method: &Method, path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(method, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{AuthMethod, CredentialKind};

    fn route(path: &str) -> Route {
        Route {
            path: path.into(),
            case_insensitive: false,
            methods: None,
            public: false,
            require: Requirement::default(),
            allow: CredentialKinds::ALL,
        }
    }

    fn principal(level: SecurityLevel, functions: &[&str]) -> Principal {
        Principal {
            user_id: 1,
            user_name: "john".into(),
            customer: None,
            functions: functions.iter().map(|f| f.to_string()).collect(),
            level,
            method: AuthMethod::Password,
            kind: CredentialKind::Basic,
            credential_id: "john".into(),
            read_only: false,
            customers: vec![],
            tenant: None,
            rate_limit: keyward_core::limit::CredentialLimit {
                key: keyward_core::limit::LimitKey::Basic(1),
                own: None,
                quota: None,
                user_id: 1,
            },
            identity: Default::default(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let api = route("/api");
        assert!(api.matches(&Method::GET, "/api"));
        assert!(api.matches(&Method::GET, "/api/x"));
        assert!(!api.matches(&Method::GET, "/apiary"));
        assert!(route("/").matches(&Method::GET, "/anything"));
    }

    #[test]
    fn case_insensitive_prefixes_match_every_spelling_on_whole_segments() {
        let exact = route("/api/Admin");
        let folded = Route {
            case_insensitive: true,
            ..route("/api/Admin")
        };
        for path in ["/API/ADMIN", "/api/admin", "/Api/aDmIn/x", "/api/admin/"] {
            assert!(folded.matches(&Method::GET, path), "{path}");
            assert!(!exact.matches(&Method::GET, path), "{path}");
        }
        for path in ["/api/administrator", "/api", "/ap", "/"] {
            assert!(!folded.matches(&Method::GET, path), "{path}");
        }
        assert!(exact.matches(&Method::GET, "/api/Admin/x"));
        assert!(folded.matches(&Method::GET, "/api/Admin/x"));
        // A path shorter than the prefix, or cut inside a multi-byte character, is no match.
        assert!(!folded.matches(&Method::GET, "/api/Admi\u{e9}"));
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let mut post_only = route("/x");
        post_only.methods = Some(vec![Method::POST]);
        post_only.public = true;
        let routes = vec![post_only, route("/")];
        assert!(route_for(&routes, &Method::POST, "/x").unwrap().public);
        assert!(!route_for(&routes, &Method::GET, "/x").unwrap().public);
    }

    #[test]
    fn requirements() {
        let mut r = route("/");
        assert_eq!(
            r.decide(None, &Method::GET),
            Decision::Unauthenticated("credentials_required")
        );
        r.require.min_security_level = SecurityLevel::Administrative;
        let p = principal(SecurityLevel::Default, &["A"]);
        assert_eq!(
            r.decide(Some(&p), &Method::GET),
            Decision::Forbidden("security_level_too_low")
        );
        r.require.min_security_level = SecurityLevel::Default;
        r.require.functions_any = vec!["B".into(), "A".into()];
        assert_eq!(r.decide(Some(&p), &Method::GET), Decision::Allow);
        r.require.functions_any = vec!["B".into()];
        assert_eq!(
            r.decide(Some(&p), &Method::GET),
            Decision::Forbidden("function_required")
        );
        let mut reader = principal(SecurityLevel::Default, &["B"]);
        reader.read_only = true;
        assert_eq!(r.decide(Some(&reader), &Method::GET), Decision::Allow);
        assert_eq!(
            r.decide(Some(&reader), &Method::POST),
            Decision::Forbidden("read_only")
        );
        r.allow = [CredentialKind::ApiKey].into_iter().collect();
        r.require.functions_any.clear();
        assert_eq!(
            r.decide(Some(&p), &Method::GET),
            Decision::Unauthenticated("credential_kind_not_allowed")
        );
    }

    #[test]
    fn read_only_holds_on_public_routes() {
        let mut public = route("/");
        public.public = true;
        let mut reader = principal(SecurityLevel::Default, &[]);
        reader.read_only = true;
        assert_eq!(public.decide(None, &Method::POST), Decision::Allow);
        assert_eq!(public.decide(Some(&reader), &Method::GET), Decision::Allow);
        assert_eq!(
            public.decide(Some(&reader), &Method::DELETE),
            Decision::Forbidden("read_only")
        );
    }

    #[test]
    fn method_overrides_are_found_in_headers_and_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(method_overrides(&headers, Some("a=1")), Ok(vec![]));
        headers.append("x-http-method-override", "DELETE".parse().unwrap());
        headers.append("X-Method-Override", " put ".parse().unwrap());
        let found = method_overrides(&headers, Some("x=1&_method=PATCH")).unwrap();
        assert_eq!(found, vec![Method::DELETE, Method::PUT, Method::PATCH]);
        headers.insert("x-http-method", "BAD METHOD".parse().unwrap());
        assert!(method_overrides(&headers, None).is_err());
    }
}
