//! Rate-limit vocabulary: quotas, whose requests a check counts, and a refusal's headers.
//! The counters themselves live in `keyward-auth`'s `ratelimit`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// `rate_limits.max_tracked` unless configured.
pub const DEFAULT_MAX_TRACKED: u64 = 100_000;
/// Bounds of a quota, so that the window and the header values stay meaningful.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
pub const MAX_BURST: u32 = 1_000_000;

/// A validated quota: `requests_per_second` (> 0) and `burst` (≥ 1). The rate is kept in
/// requests per 1000 s (so to 0.001 requests per second) so that it is an integer: `Eq`,
/// `Hash`, stored exactly and shown as it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    per_kilosecond: u64,
    burst: NonZeroU32,
}

/// Why a quota was refused, in words for config errors and 412 field errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("requests per second must be a number from 0.001 to 1000000")]
    Rate,
    #[error("burst must be an integer from 1 to 1000000")]
    Burst,
}

impl Limit {
    pub fn new(requests_per_second: f64, burst: u64) -> Result<Limit, LimitError> {
        if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&requests_per_second) {
            return Err(LimitError::Rate);
        }
        let burst = u32::try_from(burst)
            .ok()
            .filter(|b| *b <= MAX_BURST)
            .and_then(NonZeroU32::new)
            .ok_or(LimitError::Burst)?;
        Ok(Limit {
            per_kilosecond: ((requests_per_second * 1000.0).round() as u64).max(1),
            burst,
        })
    }

    /// From its stored form (see [`Limit::per_kilosecond`]).
    pub fn from_stored(per_kilosecond: i64, burst: i64) -> Result<Limit, LimitError> {
        let rate = u64::try_from(per_kilosecond).map_err(|_| LimitError::Rate)?;
        Limit::new(
            rate as f64 / 1000.0,
            u64::try_from(burst).map_err(|_| LimitError::Burst)?,
        )
    }

    pub fn requests_per_second(&self) -> f64 {
        self.per_kilosecond as f64 / 1000.0
    }

    /// Requests per 1000 seconds: the stored form of the rate.
    pub fn per_kilosecond(&self) -> i64 {
        self.per_kilosecond as i64
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The draft's `q` and `w` (whole requests per whole seconds): the sustained rate, rounded
    /// down so that a client pacing itself by it is never refused. The burst is the vendor
    /// parameter `keyward-burst`.
    pub fn window(&self) -> (u64, u64) {
        let rate = self.requests_per_second();
        if rate >= 1.0 {
            (rate.floor() as u64, 1)
        } else {
            (1, (1.0 / rate).ceil() as u64)
        }
    }
}

/// Whose requests a check counts. Fixed-size: a flood of random credentials or addresses cannot
/// grow a key, and only authenticated credentials become credential keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    ApiKey {
        user_id: i64,
        key_id: i64,
    },
    Signature {
        user_id: i64,
        key_id: i64,
    },
    /// The token's public name (16 bytes of its hash).
    Token([u8; 16]),
    /// A password login, by user id.
    Basic(i64),
    /// All credentials of one user together (`rate_limits.per_user`), by user id.
    User(i64),
    /// Requests without a credential, by client network (see [`client_network`]).
    Anonymous(u128),
    /// Refused credentials, by client network.
    Failures(u128),
}

impl LimitKey {
    /// A fixed-size encoding that tells every key apart (the input of a fleet limit's Redis
    /// key name): a tag byte, then the key's fields.
    pub fn encode(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        let (tag, a, b): (u8, [u8; 16], [u8; 16]) = match *self {
            LimitKey::ApiKey { user_id, key_id } => (1, wide(user_id), wide(key_id)),
            LimitKey::Signature { user_id, key_id } => (2, wide(user_id), wide(key_id)),
            LimitKey::Token(name) => (3, name, [0; 16]),
            LimitKey::Basic(user_id) => (4, wide(user_id), [0; 16]),
            LimitKey::User(user_id) => (5, wide(user_id), [0; 16]),
            LimitKey::Anonymous(network) => (6, network.to_be_bytes(), [0; 16]),
            LimitKey::Failures(network) => (7, network.to_be_bytes(), [0; 16]),
        };
        out[0] = tag;
        out[1..17].copy_from_slice(&a);
        out[17..].copy_from_slice(&b);
        out
    }
}

fn wide(value: i64) -> [u8; 16] {
    i128::from(value).to_be_bytes()
}

/// An IPv4 client by its address, an IPv6 client by its /64: one IPv6 host usually holds a
/// whole /64, so counting single addresses would let it pick a fresh one per request. An
/// IPv4 client translated by NAT64 (the RFC 6052 well-known prefix `64:ff9b::/96`) counts as
/// its IPv4 address, not as one /64 shared by every IPv4 client behind the translator.
pub fn client_network(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match (v6.to_ipv4_mapped(), nat64_ipv4(v6)) {
            (Some(_), _) => u128::from(v6),
            (None, Some(v4)) => u128::from(v4.to_ipv6_mapped()),
            (None, None) => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

/// The IPv4 address inside an address of the NAT64 well-known prefix `64:ff9b::/96`.
pub fn nat64_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    const WELL_KNOWN: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
    let bits = u128::from(v6);
    (bits >> 32 == WELL_KNOWN >> 32).then(|| std::net::Ipv4Addr::from(bits as u32))
}

/// The rate-limit identity of an authenticated principal: its key, and its own quota when the
/// credential carries one (an API key's `rateLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialLimit {
    pub key: LimitKey,
    pub own: Option<Limit>,
    /// The credential's quota per day or month (an API key's `quota`), counted fleet-wide.
    pub quota: Option<crate::quota::Quota>,
    /// The credential's user: `rate_limits.per_user` counts all of a user's credentials
    /// together under [`LimitKey::User`].
    pub user_id: i64,
}

/// The configured quotas (`rate_limits`); `None` turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitSettings {
    pub per_credential: Option<Limit>,
    /// All credentials of one user together, besides `per_credential` (both must pass).
    pub per_user: Option<Limit>,
    pub per_client_unauthenticated: Option<Limit>,
    pub max_tracked: u64,
    pub scope: LimitScope,
}

/// `rate_limits.scope`: whose requests a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitScope {
    /// Each replica counts its own requests (a fleet of N accepts up to N times a quota).
    #[default]
    Replica,
    /// The quota holds for the whole fleet, through leases from a bucket in the shared Redis.
    Fleet,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Replica => "replica",
            LimitScope::Fleet => "fleet",
        }
    }
}

/// Which limit refused a request: the label of `keyward_rate_limited_total{kind}` and the
/// policy name in the `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Credential,
    /// `rate_limits.per_user`: all credentials of the user together.
    User,
    Client,
    /// An API key's `quota` per day or month is used up.
    Quota,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Credential,
        LimitKind::User,
        LimitKind::Client,
        LimitKind::Quota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Credential => "credential",
            LimitKind::User => "user",
            LimitKind::Client => "client",
            LimitKind::Quota => "quota",
        }
    }
}

/// A refused request: which limit, its quota, and when the next request would conform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds until the next request conforms, at least 1 (`Retry-After` and the
    /// draft's `t`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// `RateLimit-Policy: "credential";q=100;w=1;keyward-burst=200`.
    pub fn policy_header(&self) -> String {
        let (q, w) = self.limit.window();
        let mut list = sfv::ListSerializer::new();
        list.bare_item(sfv::string_ref(self.kind.as_str()))
            .parameter(sfv::key_ref("q"), sf_integer(q))
            .parameter(sfv::key_ref("w"), sf_integer(w))
            .parameter(
                sfv::key_ref("keyward-burst"),
                sf_integer(u64::from(self.limit.burst())),
            );
        list.finish().unwrap_or_default()
    }

    /// `RateLimit: "credential";r=0;t=1`.
    pub fn limit_header(&self) -> String {
        let mut list = sfv::ListSerializer::new();
        list.bare_item(sfv::string_ref(self.kind.as_str()))
            .parameter(sfv::key_ref("r"), sf_integer(0))
            .parameter(sfv::key_ref("t"), sf_integer(self.retry_after_secs()));
        list.finish().unwrap_or_default()
    }
}

/// Every value written here is below 10^9 (bounded quotas and waits), within sfv's integers.
fn sf_integer(value: u64) -> sfv::Integer {
    sfv::Integer::try_from(value.min(999_999_999_999_999)).unwrap_or(sfv::integer(0))
}
