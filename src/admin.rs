//! Paths keyward answers itself (SPEC §2–§5) and never forwards.
//!
//! The Argus (`/authentication/`) and gateway-token (`/.TOKEN/`, `/_admin/`) namespaces are
//! reserved from the first release, so an upstream never starts receiving requests for them
//! and then silently stops when an endpoint lands.

const RESERVED_PREFIXES: [&str; 3] = ["/authentication/", "/.TOKEN/", "/_admin/"];

pub fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix) || path == prefix.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_namespaces() {
        assert!(is_reserved("/authentication/v1/apikey"));
        assert!(is_reserved("/.TOKEN/"));
        assert!(is_reserved("/.TOKEN"));
        assert!(is_reserved("/_admin/manage/tenants/t/tokens/"));
        assert!(!is_reserved("/authenticationx"));
        assert!(!is_reserved("/api"));
    }
}
