//! The paths keyward answers itself: the admin API's namespaces, reserved from the first
//! release so that an upstream never starts receiving requests for them.

/// Namespaces reserved for keyward's own endpoints, from the first release, so an upstream
/// never starts receiving requests for them and then silently stops.
/// `/.keyward/` holds the browser pages (SPEC §14): answered by keyward when
/// `browser.sign_in` is on, 404 otherwise, never forwarded.
pub const RESERVED_PREFIXES: [&str; 4] =
    ["/authentication/", "/.TOKEN/", "/_admin/", BROWSER_PREFIX];
/// The browser pages' namespace.
pub const BROWSER_PREFIX: &str = "/.keyward/";

/// A path of the browser pages, in any case spelling (`/.KEYWARD/account` is refused as one,
/// not forwarded).
pub fn is_browser_path(path: &str) -> bool {
    path.eq_ignore_ascii_case(BROWSER_PREFIX.trim_end_matches('/'))
        || path
            .get(..BROWSER_PREFIX.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(BROWSER_PREFIX))
}
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
