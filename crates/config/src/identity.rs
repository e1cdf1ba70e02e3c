//! `identity.ldap` (SPEC §14): where directory users log in, checked here so that
//! `check-config` names a bad URL, a filter without `{user}`, an unreadable CA or a missing
//! password variable before a start does.

use crate::purpose::Purpose;
use crate::schema::LdapFile;
use std::time::Duration;

/// The placeholder of `user_filter` that the login name (escaped, RFC 4515) replaces.
pub const USER_PLACEHOLDER: &str = "{user}";

/// The service account's password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `identity.ldap`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSettings {
    /// `ldaps://host[:port]` or `ldap://host[:port]`.
    pub url: String,
    pub start_tls: bool,
    /// PEM certificates the server's must chain to; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The service account searches are made as; `None`: anonymous searches (or, with
    /// `bind_password_unset`, a service account whose password was not read).
    pub bind: Option<(String, Secret)>,
    /// Loaded for the store commands ([`Purpose::Store`]) where `bind_password_env` is not set:
    /// the variable's name. Never set for [`Purpose::Serve`], where that is an error; a
    /// directory is never started from such settings.
    pub bind_password_unset: Option<String>,
    pub user_base: String,
    pub user_filter: String,
    /// (group DN, functions), in the file's order.
    pub groups: Vec<(String, Vec<String>)>,
    pub customer_attribute: Option<String>,
    pub external: bool,
    pub revalidate_every: Duration,
    pub timeout: Duration,
    pub revalidate_batch: usize,
}

impl LdapSettings {
    /// `user_filter` for one login name: `{user}` replaced by the name escaped per RFC 4515
    /// (`*`, `(`, `)`, `\` and NUL as `\XX`), so a name is only ever a value, never filter syntax.
    pub fn filter_for(&self, name: &str) -> String {
        self.user_filter
            .replace(USER_PLACEHOLDER, &ldap3::ldap_escape(name))
    }
}

fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        // `ldap:` is not a special scheme to the URL parser: its hosts, addresses included,
        // come back as opaque names.
        url::Host::Domain(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

pub(crate) fn valid_function(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An attribute description (RFC 4512 §2.5: a name or an OID, options after `;`).
fn valid_attribute(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';')
}

/// Checks `identity.ldap`; every problem names its key.
pub fn validate_ldap(
    file: LdapFile,
    purpose: Purpose,
    problem: &mut impl FnMut(String, String),
) -> Option<LdapSettings> {
    const K: &str = "identity.ldap";
    let mut ok = true;
    let mut bad = |key: &str, message: String| {
        problem(format!("{K}.{key}"), message);
    };
    match url::Url::parse(&file.url) {
        Ok(url) => {
            let scheme = url.scheme();
            if scheme != "ldap" && scheme != "ldaps" {
                bad(
                    "url",
                    format!("{:?}: use ldaps:// or ldap:// (with start_tls)", file.url),
                );
                ok = false;
            } else if url.host().is_none() {
                bad("url", format!("{:?} names no host", file.url));
                ok = false;
            } else if !matches!(url.path(), "" | "/") || url.query().is_some() {
                bad(
                    "url",
                    format!(
                        "{:?}: only ldap[s]://host[:port]; the base and filter are user_base \
                         and user_filter",
                        file.url
                    ),
                );
                ok = false;
            } else if scheme == "ldaps" && file.start_tls {
                bad(
                    "start_tls",
                    "ldaps:// is TLS from the start: start_tls is for ldap:// URLs".into(),
                );
                ok = false;
            } else if scheme == "ldap"
                && !file.start_tls
                && !url.host().is_some_and(|h| is_loopback_host(&h))
            {
                bad(
                    "url",
                    format!(
                        "{:?} would send passwords in clear text: use ldaps:// or set \
                         start_tls: true (plain ldap:// is accepted on a loopback address only)",
                        file.url
                    ),
                );
                ok = false;
            }
        }
        Err(e) => {
            bad("url", format!("{:?} is not a URL: {e}", file.url));
            ok = false;
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
    let mut bind_password_unset = None;
    let bind = match (file.bind_dn, file.bind_password_env) {
        (Some(dn), Some(var)) => match std::env::var(&var) {
            Ok(password) if !password.is_empty() => Some((dn, Secret(password))),
            // The store commands never talk to the directory.
            _ if purpose == Purpose::Store => {
                bind_password_unset = Some(var);
                None
            }
            _ => {
                bad(
                    "bind_password_env",
                    format!("the environment variable {var} is not set (or is empty)"),
                );
                ok = false;
                None
            }
        },
        (None, None) => None,
        (Some(_), None) => {
            bad(
                "bind_password_env",
                "bind_dn needs bind_password_env (the variable holding its password)".into(),
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            bad(
                "bind_dn",
                "bind_password_env needs bind_dn (the service account)".into(),
            );
            ok = false;
            None
        }
    };
    if file.user_base.trim().is_empty() {
        bad(
            "user_base",
            "must name the entry users are searched under".into(),
        );
        ok = false;
    }
    if !file.user_filter.contains(USER_PLACEHOLDER) {
        bad(
            "user_filter",
            format!("must contain {USER_PLACEHOLDER}, where the login name goes"),
        );
        ok = false;
    } else {
        let sample = file
            .user_filter
            .replace(USER_PLACEHOLDER, &ldap3::ldap_escape("a*()\\\0"));
        if ldap3::parse_filter(&sample).is_err() {
            bad(
                "user_filter",
                format!("{:?} is not an LDAP filter (RFC 4515)", file.user_filter),
            );
            ok = false;
        }
    }
    for (dn, functions) in &file.groups {
        if dn.trim().is_empty() {
            bad("groups", "a group DN is empty".into());
            ok = false;
        }
        for function in functions {
            if !valid_function(function) {
                bad(
                    &format!("groups.{dn}"),
                    format!("invalid function name {function:?}: use letters, digits, '-' and '_'"),
                );
                ok = false;
            }
        }
    }
    if let Some(attribute) = &file.customer_attribute {
        if !valid_attribute(attribute) {
            bad(
                "customer_attribute",
                format!("{attribute:?} is not an attribute name"),
            );
            ok = false;
        }
    }
    if file.revalidate_every.0 < Duration::from_secs(1) {
        bad("revalidate_every", "must be at least 1s".into());
        ok = false;
    }
    if file.timeout.0.is_zero() {
        bad("timeout", "must be greater than zero".into());
        ok = false;
    }
    if file.revalidate_batch == 0 {
        bad("revalidate_batch", "must be at least 1".into());
        ok = false;
    }
    ok.then(|| LdapSettings {
        url: file.url,
        start_tls: file.start_tls,
        ca_pem,
        bind,
        bind_password_unset,
        user_base: file.user_base,
        user_filter: file.user_filter,
        groups: file.groups.into_iter().collect(),
        customer_attribute: file.customer_attribute,
        external: file.external,
        revalidate_every: file.revalidate_every.0,
        timeout: file.timeout.0,
        revalidate_batch: file.revalidate_batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> LdapFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    const GOOD: &str = r#"
url: ldaps://ldap.example.com
user_base: ou=people,dc=example,dc=com
user_filter: "(&(objectClass=inetOrgPerson)(uid={user}))"
groups: { "cn=secops,ou=groups,dc=example,dc=com": [CASE-SECMON-RO] }
customer_attribute: departmentNumber
"#;

    fn problems(yaml: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let settings = validate_ldap(file(yaml), Purpose::Serve, &mut |k, m| found.push((k, m)));
        assert_eq!(settings.is_some(), found.is_empty(), "{found:?}");
        found
    }

    #[test]
    fn a_good_section_validates() {
        assert!(problems(GOOD).is_empty());
    }

    #[test]
    fn bad_urls_are_named() {
        for url in [
            "http://ldap.example.com",
            "ldap://ldap.example.com",
            "ldaps://",
            "not a url",
            "ldaps://ldap.example.com/dc=example?uid",
        ] {
            let found = problems(&GOOD.replace("ldaps://ldap.example.com", url));
            assert_eq!(found.len(), 1, "{url}: {found:?}");
            assert_eq!(found[0].0, "identity.ldap.url", "{url}");
        }
        // Plain LDAP on loopback (tests, a local slapd), or anywhere with StartTLS.
        for loopback in [
            "ldap://127.0.0.1:3890",
            "ldap://[::1]:3890",
            "ldap://localhost",
        ] {
            assert!(
                problems(&GOOD.replace("ldaps://ldap.example.com", loopback)).is_empty(),
                "{loopback}"
            );
        }
        // Not loopback, however it is spelt.
        for remote in [
            "ldap://127.0.0.1.example.com",
            "ldap://10.0.0.1",
            "ldap://[::2]",
        ] {
            let found = problems(&GOOD.replace("ldaps://ldap.example.com", remote));
            assert_eq!(found[0].0, "identity.ldap.url", "{remote}");
        }
        assert!(problems(&format!(
            "{}start_tls: true\n",
            GOOD.replace("ldaps://", "ldap://")
        ))
        .is_empty());
        let both = problems(&format!("{GOOD}start_tls: true\n"));
        assert_eq!(both[0].0, "identity.ldap.start_tls");
    }

    #[test]
    fn the_filter_needs_the_placeholder_and_must_parse() {
        let found = problems(&GOOD.replace("{user}", "john"));
        assert_eq!(found[0].0, "identity.ldap.user_filter");
        assert!(found[0].1.contains("{user}"));
        let found = problems(&GOOD.replace("(uid={user}))", "(uid={user})"));
        assert_eq!(found[0].0, "identity.ldap.user_filter");
    }

    #[test]
    fn unreadable_ca_and_missing_password_variable_are_named() {
        let found = problems(&format!("{GOOD}ca: /nonexistent/ca.pem\n"));
        assert_eq!(found[0].0, "identity.ldap.ca");
        let found = problems(&format!(
            "{GOOD}bind_dn: cn=keyward\nbind_password_env: KEYWARD_TEST_SURELY_UNSET_LDAP_PW\n"
        ));
        assert_eq!(found[0].0, "identity.ldap.bind_password_env");
        assert!(found[0].1.contains("KEYWARD_TEST_SURELY_UNSET_LDAP_PW"));
        let found = problems(&format!("{GOOD}bind_dn: cn=keyward\n"));
        assert_eq!(found[0].0, "identity.ldap.bind_password_env");
    }

    #[test]
    fn the_store_commands_need_no_bind_password() {
        let yaml = format!(
            "{GOOD}bind_dn: cn=keyward\nbind_password_env: KEYWARD_TEST_SURELY_UNSET_LDAP_PW\n"
        );
        let mut found = Vec::new();
        let settings =
            validate_ldap(file(&yaml), Purpose::Store, &mut |k, m| found.push((k, m))).unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(settings.bind, None);
        assert_eq!(
            settings.bind_password_unset.as_deref(),
            Some("KEYWARD_TEST_SURELY_UNSET_LDAP_PW")
        );
        // Everything else is still checked.
        let bad = yaml.replace("{user}", "john");
        let mut found = Vec::new();
        assert!(
            validate_ldap(file(&bad), Purpose::Store, &mut |k, m| found.push((k, m))).is_none()
        );
        assert_eq!(found[0].0, "identity.ldap.user_filter");
    }

    #[test]
    fn the_book_examples_validate() {
        let ad = "(&(objectCategory=person)(objectClass=user)(sAMAccountName={user})(!(userAccountControl:1.2.840.113556.1.4.803:=2))(memberOf=CN=keyward-users,OU=Groups,DC=corp,DC=example,DC=com))";
        let yaml = GOOD.replace("(&(objectClass=inetOrgPerson)(uid={user}))", ad);
        assert!(problems(&yaml).is_empty());
        let ppolicy = "(&(objectClass=inetOrgPerson)(uid={user})(!(pwdAccountLockedTime=*)))";
        let yaml = GOOD.replace("(&(objectClass=inetOrgPerson)(uid={user}))", ppolicy);
        assert!(problems(&yaml).is_empty());
    }

    #[test]
    fn names_are_escaped_per_rfc_4515() {
        let mut found = Vec::new();
        let settings =
            validate_ldap(file(GOOD), Purpose::Serve, &mut |k, m| found.push((k, m))).unwrap();
        for (name, escaped) in [
            ("john", "john"),
            ("*", "\\2a"),
            (")(uid=*", "\\29\\28uid=\\2a"),
            ("a\\b", "a\\5cb"),
            ("\0", "\\00"),
        ] {
            assert_eq!(
                settings.filter_for(name),
                format!("(&(objectClass=inetOrgPerson)(uid={escaped}))")
            );
            assert!(ldap3::parse_filter(settings.filter_for(name)).is_ok());
        }
    }
}
