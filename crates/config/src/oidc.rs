//! `identity.oidc` (SPEC §14): the OpenID provider browsers sign in with, checked here so that
//! `check-config` names a bad issuer, a missing secret or a bad function name before a start
//! does. The provider itself is asked nothing until the first sign-in (keyward starts while
//! the provider is down; that sign-in then gets a 503 page).

use crate::identity::Secret;
use crate::purpose::Purpose;
use crate::schema::OidcFile;
use std::time::Duration;

/// `identity.oidc`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The issuer exactly as the provider names itself (discovery is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE alone, no secret at the token endpoint).
    pub client_secret: Option<Secret>,
    /// Always includes `openid`.
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: Option<String>,
    /// (group, functions), in the file's order.
    pub groups: Vec<(String, Vec<String>)>,
    /// PEM certificates the issuer's must chain to; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// "Sign in with …".
    pub display_name: String,
    pub external: bool,
    pub timeout: Duration,
}

impl OidcSettings {
    /// The functions a user with `groups` gets, each once, in the file's order.
    pub fn functions_for<'g>(
        &self,
        groups: impl IntoIterator<Item = &'g str> + Clone,
    ) -> Vec<String> {
        let mut functions: Vec<String> = Vec::new();
        for (group, granted) in &self.groups {
            if groups.clone().into_iter().any(|g| g == group) {
                for function in granted {
                    if !functions.contains(function) {
                        functions.push(function.clone());
                    }
                }
            }
        }
        functions
    }
}

/// A claim name: what a JSON object key in an ID token can reasonably be.
fn valid_claim(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

/// Checks `identity.oidc`; every problem names its key.
pub fn validate_oidc(
    file: OidcFile,
    purpose: Purpose,
    problem: &mut impl FnMut(String, String),
) -> Option<OidcSettings> {
    const K: &str = "identity.oidc";
    let mut ok = true;
    let mut bad = |key: &str, message: String| {
        problem(format!("{K}.{key}"), message);
    };
    let mut host = String::new();
    match url::Url::parse(&file.issuer) {
        Ok(url) => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            host = url.host_str().unwrap_or_default().to_owned();
            if url.host().is_none() {
                bad("issuer", format!("{:?} names no host", file.issuer));
                ok = false;
            } else if url.query().is_some() || url.fragment().is_some() {
                bad(
                    "issuer",
                    format!("{:?}: an issuer has no query or fragment", file.issuer),
                );
                ok = false;
            } else if url.scheme() == "http" && !loopback {
                bad(
                    "issuer",
                    format!(
                        "{:?}: use https:// (http:// is accepted on a loopback address only, \
                         for local development)",
                        file.issuer
                    ),
                );
                ok = false;
            } else if url.scheme() != "http" && url.scheme() != "https" {
                bad("issuer", format!("{:?}: use https://", file.issuer));
                ok = false;
            }
        }
        Err(e) => {
            bad("issuer", format!("{:?} is not a URL: {e}", file.issuer));
            ok = false;
        }
    }
    if file.client_id.trim().is_empty() {
        bad(
            "client_id",
            "must name keyward's client at the provider".into(),
        );
        ok = false;
    }
    let client_secret = match &file.client_secret_env {
        Some(var) => match std::env::var(var) {
            Ok(secret) if !secret.is_empty() => Some(Secret(secret)),
            // The store commands never talk to the provider.
            _ if purpose == Purpose::Store => None,
            _ => {
                bad(
                    "client_secret_env",
                    format!("the environment variable {var} is not set (or is empty)"),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    if !file.scopes.iter().any(|s| s == "openid") {
        bad("scopes", "must include openid".into());
        ok = false;
    }
    if let Some(scope) = file.scopes.iter().find(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        bad(
            "scopes",
            format!("{scope:?} is not a scope (RFC 6749 §3.3)"),
        );
        ok = false;
    }
    if !valid_claim(&file.username_claim) {
        bad(
            "username_claim",
            format!("{:?} is not a claim name", file.username_claim),
        );
        ok = false;
    }
    if let Some(claim) = &file.groups_claim {
        if !valid_claim(claim) {
            bad("groups_claim", format!("{claim:?} is not a claim name"));
            ok = false;
        }
    } else if !file.groups.is_empty() {
        bad(
            "groups",
            "groups needs groups_claim (the ID token claim that lists a user's groups)".into(),
        );
        ok = false;
    }
    for (group, functions) in &file.groups {
        for function in functions {
            if !crate::identity::valid_function(function) {
                bad(
                    &format!("groups.{group}"),
                    format!("invalid function name {function:?}: use letters, digits, '-' and '_'"),
                );
                ok = false;
            }
        }
    }
    let ca_pem = match &file.ca {
        Some(path) => match crate::tls::read_trust_anchors(path) {
            Ok(pem) => Some(pem),
            Err(message) => {
                bad("ca", message);
                ok = false;
                None
            }
        },
        None => None,
    };
    if file.timeout.0.is_zero() {
        bad("timeout", "must be greater than zero".into());
        ok = false;
    }
    ok.then(|| OidcSettings {
        issuer: file.issuer,
        client_id: file.client_id,
        client_secret,
        scopes: file.scopes,
        username_claim: file.username_claim,
        groups_claim: file.groups_claim,
        groups: file.groups.into_iter().collect(),
        ca_pem,
        display_name: file.display_name.unwrap_or(host),
        external: file.external,
        timeout: file.timeout.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<(String, String)> {
        let file: OidcFile = serde_yaml::from_str(yaml).unwrap();
        let mut found = Vec::new();
        let settings = validate_oidc(file, Purpose::Serve, &mut |k, m| found.push((k, m)));
        assert_eq!(settings.is_some(), found.is_empty(), "{found:?}");
        found
    }

    fn keys(found: &[(String, String)]) -> Vec<&str> {
        found.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_good_section_validates_with_defaults() {
        let file: OidcFile = serde_yaml::from_str(
            "issuer: https://idp.example.com/realms/main\nclient_id: keyward\n",
        )
        .unwrap();
        let settings = validate_oidc(file, Purpose::Serve, &mut |k, m| panic!("{k}: {m}")).unwrap();
        assert_eq!(settings.scopes, ["openid", "profile", "email"]);
        assert_eq!(settings.username_claim, "preferred_username");
        assert_eq!(settings.display_name, "idp.example.com");
        assert!(settings.client_secret.is_none());
    }

    #[test]
    fn plain_http_is_for_loopback_issuers_only() {
        assert!(problems("issuer: http://127.0.0.1:8080\nclient_id: k\n").is_empty());
        assert!(problems("issuer: http://localhost:8080\nclient_id: k\n").is_empty());
        assert_eq!(
            keys(&problems("issuer: http://idp.example.com\nclient_id: k\n")),
            ["identity.oidc.issuer"]
        );
        assert_eq!(
            keys(&problems("issuer: ftp://idp.example.com\nclient_id: k\n")),
            ["identity.oidc.issuer"]
        );
        assert_eq!(
            keys(&problems(
                "issuer: https://idp.example.com/?x=1\nclient_id: k\n"
            )),
            ["identity.oidc.issuer"]
        );
    }

    #[test]
    fn every_problem_names_its_key() {
        let found = problems(
            "issuer: https://idp.example.com\nclient_id: ' '\nclient_secret_env: KEYWARD_TEST_NO_SUCH_VARIABLE\n\
             scopes: [profile, 'a b']\nusername_claim: ''\ngroups: { ops: [bad name] }\ntimeout: 0s\n",
        );
        let keys = keys(&found);
        for key in [
            "identity.oidc.client_id",
            "identity.oidc.client_secret_env",
            "identity.oidc.scopes",
            "identity.oidc.username_claim",
            "identity.oidc.groups",
            "identity.oidc.groups.ops",
            "identity.oidc.timeout",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn functions_come_from_the_groups_a_user_is_in_once_each() {
        let file: OidcFile = serde_yaml::from_str(
            "issuer: https://idp.example.com\nclient_id: k\ngroups_claim: groups\n\
             groups: { secops: [CASE-SECMON-RO], admins: [POWER-USER, CASE-SECMON-RO] }\n",
        )
        .unwrap();
        let settings = validate_oidc(file, Purpose::Serve, &mut |k, m| panic!("{k}: {m}")).unwrap();
        assert_eq!(
            settings.functions_for(["secops", "admins", "other"]),
            ["POWER-USER", "CASE-SECMON-RO"]
        );
        assert!(settings.functions_for(["other"]).is_empty());
    }
}
