//! Who a request is: the principal a credential proves, its security level and how it proved it.

use crate::limit::CredentialLimit;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// How much a request is trusted, lowest to highest (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityLevel {
    External,
    Default,
    Administrative,
}

impl SecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityLevel::External => "EXTERNAL",
            SecurityLevel::Default => "DEFAULT",
            SecurityLevel::Administrative => "ADMINISTRATIVE",
        }
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a principal proved who it is; the value of `X-Keyward-Auth-Method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Signature,
    Token,
    Password,
    Totp,
    /// A sign-in at the OpenID provider (`identity.oidc`), for the token it mints.
    Oidc,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "APIKEY",
            AuthMethod::Signature => "SIGNATURE",
            AuthMethod::Token => "TOKEN",
            AuthMethod::Password => "PASSWORD",
            AuthMethod::Totp => "TOTP",
            AuthMethod::Oidc => "OIDC",
        }
    }
}

/// The kinds of credential a route may accept (`routes[].allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ApiKey,
    Signature,
    Token,
    Basic,
}

impl CredentialKind {
    /// The label used in metrics and logs (`method="basic"`).
    pub fn label(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "apikey",
            CredentialKind::Signature => "signature",
            CredentialKind::Token => "token",
            CredentialKind::Basic => "basic",
        }
    }

    fn bit(self) -> u8 {
        match self {
            CredentialKind::ApiKey => 1,
            CredentialKind::Signature => 2,
            CredentialKind::Token => 4,
            CredentialKind::Basic => 8,
        }
    }
}

impl FromStr for CredentialKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "apikey" => Ok(CredentialKind::ApiKey),
            "signature" => Ok(CredentialKind::Signature),
            "token" => Ok(CredentialKind::Token),
            "basic" => Ok(CredentialKind::Basic),
            _ => Err(()),
        }
    }
}

/// A set of [`CredentialKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialKinds(u8);

impl CredentialKinds {
    pub const ALL: CredentialKinds = CredentialKinds(1 | 2 | 4 | 8);

    pub fn contains(self, kind: CredentialKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl FromIterator<CredentialKind> for CredentialKinds {
    fn from_iter<I: IntoIterator<Item = CredentialKind>>(iter: I) -> Self {
        CredentialKinds(iter.into_iter().fold(0, |acc, k| acc | k.bit()))
    }
}

/// The outcome of a successful authentication (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub user_name: String,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub level: SecurityLevel,
    pub method: AuthMethod,
    pub kind: CredentialKind,
    /// Key prefix, signature key id or token name; the user name for a password.
    pub credential_id: String,
    pub read_only: bool,
    pub customers: Vec<String>,
    /// Set for a tenant token (SPEC §4): the principal is the tenant's application, acting
    /// under its owner's name at EXTERNAL with no functions, and never an administrator.
    pub tenant: Option<String>,
    /// Whose quota this principal's requests count against, and the credential's own quota.
    pub rate_limit: CredentialLimit,
    /// The `X-Keyward-*` headers for this principal, built on first use. Principals live in the
    /// credential caches, so a warm request forwards them without formatting anything.
    pub identity: OnceLock<IdentityHeaders>,
}

/// A principal's identity headers (SPEC §6), one optional value per name of
/// [`identity_header::ALL`], the values slices of one shared buffer: a cached key holds a
/// million of these at scale, so they are kept to one allocation of text (plus its shared
/// count) beside the fixed array, instead of a name, a value and one or two allocations per
/// header (~800 bytes a key, measured by `examples/key_memory.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityHeaders {
    values: [Option<http::HeaderValue>; 8],
}

/// [`identity_header::ALL`] at a fixed address, so iteration hands out `&'static` names.
static IDENTITY_NAMES: [http::HeaderName; 8] = identity_header::ALL;

impl IdentityHeaders {
    /// Every identity header name, in [`identity_header::ALL`]'s order, with its value if it
    /// has one.
    pub fn all(
        &self,
    ) -> impl Iterator<Item = (&'static http::HeaderName, Option<&http::HeaderValue>)> {
        IDENTITY_NAMES
            .iter()
            .zip(self.values.iter().map(Option::as_ref))
    }

    /// The headers that have a value, in [`identity_header::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static http::HeaderName, &http::HeaderValue)> {
        self.all().filter_map(|(name, value)| Some((name, value?)))
    }

    /// How many headers have a value.
    pub fn len(&self) -> usize {
        self.values.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `name`'s value; false (and nothing set) when `name` is not an identity header.
    pub fn set(&mut self, name: &http::HeaderName, value: http::HeaderValue) -> bool {
        let Some(at) = slot(name) else {
            return false;
        };
        self.values[at] = Some(value);
        true
    }

    /// The value set for `name`, if it is an identity header with one.
    pub fn get(&self, name: &http::HeaderName) -> Option<&http::HeaderValue> {
        self.values[slot(name)?].as_ref()
    }
}

/// Where `name`'s value is kept, if it is an identity header.
fn slot(name: &http::HeaderName) -> Option<usize> {
    IDENTITY_NAMES.iter().position(|known| known == name)
}

/// The identity headers keyward sets on forwarded requests (SPEC §6), parsed at compile time.
pub mod identity_header {
    use http::HeaderName;
    pub const USER: HeaderName = HeaderName::from_static("x-keyward-user");
    pub const USER_ID: HeaderName = HeaderName::from_static("x-keyward-user-id");
    pub const CUSTOMER: HeaderName = HeaderName::from_static("x-keyward-customer");
    pub const FUNCTIONS: HeaderName = HeaderName::from_static("x-keyward-functions");
    pub const SECURITY_LEVEL: HeaderName = HeaderName::from_static("x-keyward-security-level");
    pub const AUTH_METHOD: HeaderName = HeaderName::from_static("x-keyward-auth-method");
    pub const CREDENTIAL: HeaderName = HeaderName::from_static("x-keyward-credential");
    /// Only on requests authenticated by a tenant token (SPEC §4).
    pub const TENANT: HeaderName = HeaderName::from_static("x-keyward-tenant");
    /// Every identity header, in the order they are set.
    pub const ALL: [HeaderName; 8] = [
        USER,
        USER_ID,
        CUSTOMER,
        FUNCTIONS,
        SECURITY_LEVEL,
        AUTH_METHOD,
        CREDENTIAL,
        TENANT,
    ];
}

impl Principal {
    /// The identity headers forwarded upstream (SPEC §6). A value that cannot be a header
    /// (a control character in a stored name) is left out rather than failing the request,
    /// as is an empty one, but for `X-Keyward-Functions` (a principal without functions).
    pub fn identity_headers(&self) -> &IdentityHeaders {
        self.identity.get_or_init(|| {
            let mut customers = self.customers.join(",");
            if customers.is_empty() {
                customers = self.customer.clone().unwrap_or_default();
            }
            let user_id = self.user_id.to_string();
            let functions = self.functions.join(",");
            // In `identity_header::ALL`'s order.
            let texts: [&str; 8] = [
                &self.user_name,
                &user_id,
                &customers,
                &functions,
                self.level.as_str(),
                self.method.as_str(),
                &self.credential_id,
                self.tenant.as_deref().unwrap_or_default(),
            ];
            let buffer = bytes::Bytes::from(texts.concat());
            let mut values: [Option<http::HeaderValue>; 8] = Default::default();
            let mut start = 0;
            for ((value, text), name) in values.iter_mut().zip(texts).zip(&IDENTITY_NAMES) {
                let end = start + text.len();
                if !text.is_empty() || *name == identity_header::FUNCTIONS {
                    *value = http::HeaderValue::from_maybe_shared(buffer.slice(start..end)).ok();
                }
                start = end;
            }
            IdentityHeaders { values }
        })
    }

    pub fn has_function(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f == function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::LimitKey;

    fn principal() -> Principal {
        Principal {
            user_id: 0x15a6,
            user_name: "john".into(),
            customer: Some("acme".into()),
            functions: vec!["argus.read".into(), "argus.write".into()],
            level: SecurityLevel::Default,
            method: AuthMethod::ApiKey,
            kind: CredentialKind::ApiKey,
            credential_id: "15a6/1".into(),
            read_only: false,
            customers: Vec::new(),
            tenant: None,
            rate_limit: CredentialLimit {
                key: LimitKey::ApiKey {
                    user_id: 0x15a6,
                    key_id: 1,
                },
                own: None,
                quota: None,
                user_id: 0x15a6,
            },
            identity: OnceLock::new(),
        }
    }

    fn pairs(principal: &Principal) -> Vec<(&'static str, String)> {
        principal
            .identity_headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn identity_headers_hold_each_value_in_order_and_leave_out_empty_ones() {
        let john = principal();
        assert_eq!(
            pairs(&john),
            [
                ("x-keyward-user", "john".to_owned()),
                ("x-keyward-user-id", "5542".to_owned()),
                ("x-keyward-customer", "acme".to_owned()),
                ("x-keyward-functions", "argus.read,argus.write".to_owned()),
                ("x-keyward-security-level", "DEFAULT".to_owned()),
                ("x-keyward-auth-method", "APIKEY".to_owned()),
                ("x-keyward-credential", "15a6/1".to_owned()),
            ]
        );
        let headers = john.identity_headers();
        assert_eq!(headers.len(), 7);
        assert_eq!(headers.get(&identity_header::USER).unwrap(), "john");
        assert_eq!(headers.get(&identity_header::TENANT), None);
        assert_eq!(headers.get(&http::HeaderName::from_static("x-other")), None);

        // A key's customers win over the user's; a tenant is named; no functions is an
        // empty `X-Keyward-Functions`, and a customer-less user has no customer header.
        let tenant = Principal {
            customers: vec!["a".into(), "b".into()],
            tenant: Some("app".into()),
            ..principal()
        };
        let got = pairs(&tenant);
        assert!(got.contains(&("x-keyward-customer", "a,b".to_owned())));
        assert!(got.contains(&("x-keyward-tenant", "app".to_owned())));
        let bare = Principal {
            customer: None,
            functions: Vec::new(),
            ..principal()
        };
        let got = pairs(&bare);
        assert!(got.contains(&("x-keyward-functions", String::new())));
        assert!(!got.iter().any(|(name, _)| *name == "x-keyward-customer"));
    }

    #[test]
    fn a_value_that_cannot_be_a_header_is_left_out_alone() {
        let odd = Principal {
            user_name: "jo\nhn".into(),
            ..principal()
        };
        let got = pairs(&odd);
        assert!(!got.iter().any(|(name, _)| *name == "x-keyward-user"));
        // The values after it are cut from the same buffer at the right places.
        assert!(got.contains(&("x-keyward-user-id", "5542".to_owned())));
        assert!(got.contains(&("x-keyward-credential", "15a6/1".to_owned())));
    }
}
