//! Authentication: turning a request's credential into a [`Principal`], or a reason why not.
//!
//! Each credential kind lives in its own module and answers the same question the same way:
//! `Ok(Principal)` or `Err(AuthError)`. The proxy picks the authenticator by the credential the
//! request carries (see [`Credential::find`]) and never consults more than one.

pub mod basic;
pub mod client_ip;
pub mod password;

use std::fmt;
use std::str::FromStr;

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
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "APIKEY",
            AuthMethod::Signature => "SIGNATURE",
            AuthMethod::Token => "TOKEN",
            AuthMethod::Password => "PASSWORD",
            AuthMethod::Totp => "TOTP",
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
}

impl Principal {
    pub fn has_function(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f == function)
    }
}

/// Why a credential was refused. Each maps to one status code and one metrics reason
/// (`keyward_auth_failures_total{reason}`) in [`AuthError::reason`] and the proxy's responder.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("the credential is malformed")]
    Malformed,
    #[error("unknown user or key")]
    UnknownKey,
    #[error("wrong secret")]
    BadSecret,
    #[error("the account is locked")]
    Locked,
    #[error("more than one credential was presented")]
    Ambiguous,
    /// The store could not be asked; the credential may well be valid (answered 503).
    #[error("the credential store is unavailable")]
    StoreUnavailable,
}

impl AuthError {
    /// The `reason` label of `keyward_auth_failures_total`, and the reason in 401 bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSecret => "bad_secret",
            AuthError::Locked => "locked",
            AuthError::Ambiguous => "ambiguous_credentials",
            AuthError::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The credential a request presents, found without any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    Basic(&'a [u8]),
}

impl<'a> Credential<'a> {
    /// Finds the one credential of a request. Several explicit credentials are refused rather
    /// than guessed between: a proxy that picks one silently can be talked into the wrong one.
    pub fn find(headers: &'a http::HeaderMap) -> Result<Credential<'a>, AuthError> {
        let mut authorization = headers.get_all(http::header::AUTHORIZATION).iter();
        let first = authorization.next();
        if authorization.next().is_some() {
            return Err(AuthError::Ambiguous);
        }
        match first {
            Some(value) if basic::is_basic(value.as_bytes()) => {
                Ok(Credential::Basic(value.as_bytes()))
            }
            // An Authorization scheme keyward does not know is not a credential for it; refuse
            // rather than forward something the upstream might honour.
            Some(_) => Err(AuthError::Malformed),
            None => Ok(Credential::None),
        }
    }

    pub fn kind(&self) -> Option<CredentialKind> {
        match self {
            Credential::None => None,
            Credential::Basic(_) => Some(CredentialKind::Basic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered() {
        assert!(SecurityLevel::External < SecurityLevel::Default);
        assert!(SecurityLevel::Default < SecurityLevel::Administrative);
    }

    #[test]
    fn credential_kinds_set() {
        let set: CredentialKinds = [CredentialKind::ApiKey, CredentialKind::Basic]
            .into_iter()
            .collect();
        assert!(set.contains(CredentialKind::Basic));
        assert!(!set.contains(CredentialKind::Token));
        assert!(CredentialKinds::ALL.contains(CredentialKind::Signature));
    }

    #[test]
    fn two_authorization_headers_are_ambiguous() {
        let mut headers = http::HeaderMap::new();
        headers.append("authorization", "Basic YTpi".parse().unwrap());
        headers.append("authorization", "Basic YzpK".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Ambiguous));
    }

    #[test]
    fn unknown_authorization_scheme_is_malformed() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(Credential::find(&headers), Err(AuthError::Malformed));
    }
}
