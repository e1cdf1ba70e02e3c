//! The ground floor of keyward: the vocabulary every layer shares, and nothing else. This crate
//! imports no other keyward crate and does no I/O.
//!
//! - [`principal`]: who a request is ([`Principal`]), how much it is trusted ([`SecurityLevel`])
//!   and with which kind of credential ([`CredentialKind`]).
//! - [`refusal`]: why a request was refused ([`AuthError`], [`SignatureError`]).
//! - [`limit`]: quotas and whose requests they count ([`Limit`], [`LimitKey`], [`Limited`]).
//! - [`quota`]: API keys' quotas per UTC day or month ([`Quota`]) and their refusal.
//! - [`time`] and [`request_id`]: the clock and the id every request carries.

pub mod limit;
pub mod principal;
pub mod quota;
pub mod refusal;
pub mod request_id;
pub mod time;

pub use limit::{CredentialLimit, Limit, LimitKey, Limited};
pub use principal::{
    identity_header, AuthMethod, CredentialKind, CredentialKinds, IdentityHeaders, Principal,
    SecurityLevel,
};
pub use quota::{Quota, QuotaPeriod};
pub use refusal::{AuthError, FleetUnavailable, SignatureError};
pub use request_id::RequestId;
pub use time::now_ms;
