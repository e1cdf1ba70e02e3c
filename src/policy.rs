//! Route policy (SPEC §6): the first route whose path prefix and methods match decides.

use crate::auth::{CredentialKinds, Principal, SecurityLevel};
use http::Method;

#[derive(Debug, Clone)]
pub struct Route {
    /// Matched on whole segments: `/api` matches `/api` and `/api/x`, not `/apiary`.
    pub path: String,
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
        let prefix_ok = match path.strip_prefix(self.path.as_str()) {
            Some(rest) => self.path.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        };
        prefix_ok && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    pub fn decide(&self, principal: Option<&Principal>, method: &Method) -> Decision {
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
        if principal.read_only && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Decision::Forbidden("read_only");
        }
        Decision::Allow
    }
}

/// The first matching route, if any.
pub fn route_for<'a>(routes: &'a [Route], method: &Method, path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.matches(method, path))
}

/// Paths that upstreams may normalise into something else are refused outright, so a route
/// prefix cannot be sidestepped with `/public/../admin` or `/%61dmin`-style spellings of
/// separators and dots.
pub fn is_ambiguous_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return true;
    }
    // %2e, %2f, %5c in either case: an encoded dot, slash or backslash.
    let encoded_separator = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    });
    if encoded_separator {
        return true;
    }
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, CredentialKind};

    fn route(path: &str) -> Route {
        Route {
            path: path.into(),
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
        r.allow = [CredentialKind::ApiKey].into_iter().collect();
        r.require.functions_any.clear();
        assert_eq!(
            r.decide(Some(&p), &Method::GET),
            Decision::Unauthenticated("credential_kind_not_allowed")
        );
    }

    #[test]
    fn ambiguous_paths() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/%2e%2e/x",
            "/a%2Fb",
            "/a%5cb",
            "/%2E./x",
            "/a\\b",
            "x",
        ] {
            assert!(is_ambiguous_path(bad), "{bad}");
        }
        for good in [
            "/",
            "/a/b",
            "/a..b/c",
            "/.well-known/x",
            "/a%20b",
            "/%",
            "/a%2",
        ] {
            assert!(!is_ambiguous_path(good), "{good}");
        }
    }
}
