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
    pub identity: OnceLock<Vec<(http::HeaderName, http::HeaderValue)>>,
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
    /// (a control character in a stored name) is left out rather than failing the request.
    pub fn identity_headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        self.identity.get_or_init(|| {
            let mut customers = self.customers.join(",");
            if customers.is_empty() {
                customers = self.customer.clone().unwrap_or_default();
            }
            [
                (identity_header::USER, self.user_name.clone()),
                (identity_header::USER_ID, self.user_id.to_string()),
                (identity_header::CUSTOMER, customers),
                (identity_header::FUNCTIONS, self.functions.join(",")),
                (
                    identity_header::SECURITY_LEVEL,
                    self.level.as_str().to_owned(),
                ),
                (
                    identity_header::AUTH_METHOD,
                    self.method.as_str().to_owned(),
                ),
                (identity_header::CREDENTIAL, self.credential_id.clone()),
                (
                    identity_header::TENANT,
                    self.tenant.clone().unwrap_or_default(),
                ),
            ]
            .into_iter()
            .filter(|(name, value)| !value.is_empty() || *name == identity_header::FUNCTIONS)
            .filter_map(|(name, value)| Some((name, http::HeaderValue::try_from(value).ok()?)))
            .collect()
        })
    }

    pub fn has_function(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f == function)
    }
}
