//! The paths keyward answers itself: the admin API's namespaces, reserved from the first
//! release so that an upstream never starts receiving requests for them.

/// Namespaces reserved for keyward's own endpoints, from the first release, so an upstream
/// never starts receiving requests for them and then silently stops.
pub const RESERVED_PREFIXES: [&str; 3] = ["/authentication/", "/.TOKEN/", "/_admin/"];
/// Paths of the token API, where a path segment may be a token.
pub fn is_token_path(path: &str) -> bool {
    path.starts_with("/.TOKEN/") || path.starts_with("/_admin/")
}

pub fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix) || path == prefix.trim_end_matches('/'))
}

/// [`is_reserved`] in every ASCII case spelling (`/AUTHENTICATION/v1/apikey`, `/.token/`):
/// with `routes_case_insensitive` the upstream would serve them as keyward's own paths, so
/// keyward answers them itself (SPEC §15) and they are never forwarded.
pub fn is_reserved_in_any_case(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        let bare = prefix.trim_end_matches('/');
        path.eq_ignore_ascii_case(bare)
            || path
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}
