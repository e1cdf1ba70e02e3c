//! The on-disk configuration schema: exactly what the YAML file may say.
//!
//! Every struct refuses unknown keys so a typo is an error naming the key, not a silently
//! ignored setting. Nothing here is validated beyond its shape; `super::Config::from_file`
//! turns this into the checked internal form.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: ListenFile,
    pub upstream: UpstreamFile,
    pub store: StoreFile,
    #[serde(default)]
    pub bootstrap: Option<BootstrapFile>,
    #[serde(default)]
    pub tokens: TokensFile,
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which header a trusted proxy's chain of client addresses is read from.
    #[serde(default)]
    pub trusted_proxies_header: TrustedProxiesHeader,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub forward_credentials: bool,
    /// Route prefixes match without regard to ASCII case (for upstreams that route so).
    #[serde(default)]
    pub routes_case_insensitive: bool,
    #[serde(default)]
    pub logging: LoggingFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub api_keys: ApiKeysFile,
    #[serde(default)]
    pub signatures: SignaturesFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub usage: UsageFile,
    /// The fleet's shared Redis. Absent: every replica keeps its own replay window and counters.
    #[serde(default)]
    pub redis: Option<RedisFile>,
    /// The old place of the Redis settings (`replay.redis_url`, `replay.redis_url_env`,
    /// `replay.on_redis_error`): aliases of `redis.*`, accepted with a warning.
    #[serde(default)]
    pub replay: Option<ReplayFile>,
    /// Absent (or a limit left out): not limited.
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    /// Who may ask `listen.authz`, and how much body they may forward (SPEC §13).
    #[serde(default)]
    pub external_authz: Option<ExternalAuthzFile>,
    /// Users from a directory (`identity.ldap`) or an OpenID provider (`identity.oidc`).
    #[serde(default)]
    pub identity: IdentityFile,
    /// The sign-in, sign-out and account pages (`/.keyward/…`).
    #[serde(default)]
    pub browser: BrowserFile,
}

/// `browser`: the pages keyward serves to people (SPEC §14).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserFile {
    /// Serve `/.keyward/…` and send browsers on protected routes to the sign-in page.
    #[serde(default)]
    pub sign_in: bool,
    /// The name shown on the pages (an operator's product or company name).
    #[serde(default)]
    pub title: Option<String>,
}

/// `external_authz`: the callers of `listen.authz`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthzFile {
    /// The edges whose description of the original request is believed; anyone else: 403.
    #[serde(default)]
    pub trusted_callers: Vec<String>,
    /// The largest body a caller may forward for a `content-digest` check; absent: 1 MiB, or
    /// `signatures.max_body` when that is smaller.
    #[serde(default)]
    pub forward_body_max: Option<u64>,
}

/// `rate_limits`: request quotas per credential and per client address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// `fleet` or `replica`; unset: `fleet` when the fleet shares a Redis, else `replica`.
    #[serde(default)]
    pub scope: Option<LimitScopeFile>,
    #[serde(default)]
    pub per_credential: Option<QuotaFile>,
    /// All credentials of one user together, besides `per_credential`.
    #[serde(default)]
    pub per_user: Option<QuotaFile>,
    #[serde(default)]
    pub per_client_unauthenticated: Option<QuotaFile>,
    /// How many keys (credentials and client networks) the limiter remembers at most.
    #[serde(default = "defaults::rate_limits_max_tracked")]
    pub max_tracked: u64,
}

impl Default for RateLimitsFile {
    fn default() -> Self {
        RateLimitsFile {
            scope: None,
            per_credential: None,
            per_user: None,
            per_client_unauthenticated: None,
            max_tracked: defaults::rate_limits_max_tracked(),
        }
    }
}

/// `rate_limits.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScopeFile {
    Fleet,
    Replica,
}

/// `{ requests_per_second, burst }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    pub requests_per_second: f64,
    pub burst: u64,
}

/// `identity`: where users come from besides keyward's own store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    #[serde(default)]
    pub ldap: Option<LdapFile>,
    #[serde(default)]
    pub oidc: Option<OidcFile>,
}

/// `identity.oidc`, as the file says it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    pub issuer: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_oidc_username_claim")]
    pub username_claim: String,
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Group name (as the claim carries it) → the functions its members get.
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// PEM certificates the issuer's must chain to; absent: the system's roots.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// The name on the sign-in page's button ("Sign in with …"); absent: the issuer's host.
    #[serde(default)]
    pub display_name: Option<String>,
    /// OIDC users are external (customer) users.
    #[serde(default)]
    pub external: bool,
    /// Bound on each call to the provider (discovery, keys, token exchange).
    #[serde(default = "default_ldap_timeout")]
    pub timeout: Seconds,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_oidc_username_claim() -> String {
    "preferred_username".into()
}

/// `identity.ldap`, as the file says it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapFile {
    pub url: String,
    #[serde(default)]
    pub start_tls: bool,
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub bind_dn: Option<String>,
    #[serde(default)]
    pub bind_password_env: Option<String>,
    pub user_base: String,
    pub user_filter: String,
    /// Group DN → the functions its members get.
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub customer_attribute: Option<String>,
    /// Directory users are external (customer) users.
    #[serde(default)]
    pub external: bool,
    #[serde(default = "default_ldap_revalidate_every")]
    pub revalidate_every: Seconds,
    /// Bound on each directory operation (connect, TLS, bind, search).
    #[serde(default = "default_ldap_timeout")]
    pub timeout: Seconds,
    /// Users searched again per batch of a revalidation sweep.
    #[serde(default = "default_ldap_batch")]
    pub revalidate_batch: usize,
}

fn default_ldap_revalidate_every() -> Seconds {
    Seconds(Duration::from_secs(300))
}

fn default_ldap_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}

fn default_ldap_batch() -> usize {
    100
}

/// `redis`: the one Redis of the fleet (replay window, TOTP codes, throttles).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://`, `rediss://` (TLS) or `unix://`; or, with `url_env`, the environment
    /// variable that holds it (a Redis password belongs in a Secret, not in the config file).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    /// TLS to Redis (`rediss://` only).
    #[serde(default)]
    pub tls: Option<RedisTlsFile>,
    #[serde(default)]
    pub on_error: OnRedisErrorFile,
}

/// `redis.tls`: PEM files. Every key is optional: without `ca` the server is verified
/// against the system's roots; `cert` and `key` (a client certificate) go together.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsFile {
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
}

/// `replay`: the old place of the Redis settings, aliases of `redis.url`, `redis.url_env`
/// and `redis.on_error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFile {
    /// `redis://...`; or, with `redis_url_env`, the environment variable that holds it (a
    /// Redis password belongs in a Secret, not in the config file).
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub redis_url_env: Option<String>,
    #[serde(default)]
    pub on_redis_error: Option<OnRedisErrorFile>,
}

/// `redis.on_error` (alias `replay.on_redis_error`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisErrorFile {
    #[default]
    Refuse,
    Local,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Append audit records as JSON lines to this file (besides the `keyward::audit` log target).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// Audit records older than this are deleted from the store; unset: kept forever.
    #[serde(default)]
    pub retention: Option<Seconds>,
}

/// `usage`: the per-key request counts of `…/apikey/{userIdHex}/{keyId}/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// Hours of counts older than this are deleted from the store.
    #[serde(default = "defaults::usage_retention")]
    pub retention: Seconds,
}

impl Default for UsageFile {
    fn default() -> Self {
        UsageFile {
            retention: defaults::usage_retention(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesFile {
    #[serde(default = "defaults::max_age")]
    pub max_age: Seconds,
    #[serde(default = "defaults::max_future")]
    pub max_future: Seconds,
    #[serde(default = "defaults::skew_tolerance")]
    pub skew_tolerance: Seconds,
    #[serde(default = "defaults::session_ttl")]
    pub session_ttl: Seconds,
    /// Memory bound of the replay window, in bytes.
    #[serde(default = "defaults::replay_memory")]
    pub replay_memory: u64,
    /// Largest signed request body, in bytes; larger ones get 413.
    #[serde(default = "defaults::max_body")]
    pub max_body: u64,
    /// Bytes of one signed body kept in memory; the rest spills to a temporary file.
    #[serde(default = "defaults::body_in_memory")]
    pub body_in_memory: u64,
    /// All signed bodies held at once, in bytes (memory and spool files together).
    #[serde(default = "defaults::bodies_in_flight")]
    pub bodies_in_flight: u64,
    /// Signed bodies of one user (all their signing keys) held at once, in bytes; absent: a quarter of
    /// `bodies_in_flight`, at least `max_body`.
    #[serde(default)]
    pub bodies_in_flight_per_user: Option<u64>,
    /// Directory of spool files; absent: the system's temporary directory.
    #[serde(default)]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Time for a whole signed body to arrive.
    #[serde(default = "defaults::body_timeout")]
    pub body_timeout: Seconds,
}

impl Default for SignaturesFile {
    fn default() -> Self {
        SignaturesFile {
            max_age: defaults::max_age(),
            max_future: defaults::max_future(),
            skew_tolerance: defaults::skew_tolerance(),
            session_ttl: defaults::session_ttl(),
            max_body: defaults::max_body(),
            body_in_memory: defaults::body_in_memory(),
            bodies_in_flight: defaults::bodies_in_flight(),
            bodies_in_flight_per_user: None,
            spool_dir: None,
            body_timeout: defaults::body_timeout(),
            replay_memory: defaults::replay_memory(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    #[serde(default = "defaults::default_expiration_days")]
    pub default_expiration_days: i64,
    #[serde(default = "defaults::max_expiration_days")]
    pub max_expiration_days: i64,
    /// How often recorded last uses are written to the store.
    #[serde(default = "defaults::last_used_flush")]
    pub last_used_flush: Seconds,
}

impl Default for ApiKeysFile {
    fn default() -> Self {
        ApiKeysFile {
            default_expiration_days: defaults::default_expiration_days(),
            max_expiration_days: defaults::max_expiration_days(),
            last_used_flush: defaults::last_used_flush(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    pub proxy: String,
    pub ops: String,
    /// When set, the admin API is answered only on this address.
    #[serde(default)]
    pub admin: Option<String>,
    /// The external-authorization listener (SPEC §13): edges ask it whether a request may pass.
    #[serde(default)]
    pub authz: Option<String>,
    /// TLS (and HTTP/2 by ALPN) on the proxy listener.
    #[serde(default)]
    pub tls: Option<ListenTlsFile>,
}

/// `listen.tls`: PEM files, read at start and on reload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsFile {
    /// The certificate chain: the server certificate first, then intermediates.
    pub cert: std::path::PathBuf,
    /// The private key of the server certificate.
    pub key: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// One upstream (the sidecar case).
    #[serde(default)]
    pub address: Option<String>,
    /// Several upstreams, round-robin with health checks (the edge case).
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name when `tls: true`; defaults to the host of the first address.
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Seconds,
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: Seconds,
    #[serde(default = "defaults::health_check_interval")]
    pub health_check_interval: Seconds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `sqlite://PATH` or `postgres://...`; or, with `url_env`, the environment variable that
    /// holds it (a database password belongs in a Secret, not in the config file).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    /// Connections in the pool (default 4 for SQLite, 16 for PostgreSQL).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Longest wait for a store connection before a request is refused with 503 (default 2s).
    #[serde(default)]
    pub connect_timeout: Option<Seconds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    pub admin: Option<BootstrapAdminFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapAdminFile {
    pub name: String,
    pub password_env: String,
    #[serde(default)]
    pub functions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    #[serde(default)]
    pub administrator: Option<String>,
    #[serde(default = "defaults::token_ttl")]
    pub ttl: Seconds,
    #[serde(default = "defaults::token_max_ttl")]
    pub max_ttl: Seconds,
    /// Mark the token cookie `Secure` (set it when clients reach keyward over TLS).
    #[serde(default)]
    pub secure_cookie: bool,
}

impl Default for TokensFile {
    fn default() -> Self {
        TokensFile {
            administrator: None,
            ttl: defaults::token_ttl(),
            max_ttl: defaults::token_max_ttl(),
            secure_cookie: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub require: Option<RequireFile>,
    #[serde(default)]
    pub allow: Option<Vec<CredentialKindFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireFile {
    #[serde(default)]
    pub functions_any: Vec<String>,
    #[serde(default)]
    pub min_security_level: Option<SecurityLevelFile>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum SecurityLevelFile {
    #[serde(rename = "EXTERNAL")]
    External,
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "ADMINISTRATIVE")]
    Administrative,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKindFile {
    Apikey,
    Signature,
    Token,
    Basic,
}

/// `trusted_proxies_header`: the one header a trusted proxy's client chain is read from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TrustedProxiesHeader {
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// `limits`: what one request, one connection or one user may cost keyward.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Request line plus headers, in bytes; larger requests get 431.
    #[serde(default = "defaults::max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// A request's header must arrive whole within this time of its first byte (or of the
    /// connection's start); slower connections are closed. On HTTP/2 it bounds each header
    /// block too (a HEADERS frame to the end of its END_HEADERS frame).
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Seconds,
    /// Open client connections on the proxy listener; connections beyond it are closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Failed password logins per (user name, client address) within `password_failure_window`
    /// before further attempts get 429.
    #[serde(default = "defaults::password_failures")]
    pub password_failures: u32,
    #[serde(default = "defaults::password_failure_window")]
    pub password_failure_window: Seconds,
    /// Dedicated argon2 verification threads (each keeps one ~19 MiB working set); logins
    /// beyond them wait in a bounded queue.
    #[serde(default = "defaults::password_hash_threads")]
    pub password_hash_threads: usize,
    /// Longest stored `X-Custom-Meta-Source` of a token, in bytes.
    #[serde(default = "defaults::token_metadata_bytes")]
    pub token_metadata_bytes: usize,
    /// Unexpired tokens one user may hold; minting more gets 400.
    #[serde(default = "defaults::tokens_per_user")]
    pub tokens_per_user: u32,
    // The network bounds of SPEC §15, in one block.
    /// A request body must arrive whole within this time of its request's header (408).
    #[serde(default = "defaults::request_body_timeout")]
    pub body_timeout: Seconds,
    /// Open connections (and HTTP/2 requests in progress) from one client address (an IPv6
    /// client by its /64); trusted proxies are not capped. `0`: no cap.
    #[serde(default = "defaults::max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Concurrent streams (requests) on one HTTP/2 connection.
    #[serde(default = "defaults::max_h2_streams")]
    pub max_h2_streams: u32,
    /// Longest one write of a response to the client may wait (a client that stops reading,
    /// an HTTP/2 stream whose window stays closed); then the connection or stream is closed.
    #[serde(default = "defaults::send_timeout")]
    pub send_timeout: Seconds,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_request_header_bytes: defaults::max_request_header_bytes(),
            header_read_timeout: defaults::header_read_timeout(),
            max_connections: defaults::max_connections(),
            password_failures: defaults::password_failures(),
            password_failure_window: defaults::password_failure_window(),
            password_hash_threads: defaults::password_hash_threads(),
            token_metadata_bytes: defaults::token_metadata_bytes(),
            tokens_per_user: defaults::tokens_per_user(),
            body_timeout: defaults::request_body_timeout(),
            max_connections_per_client: defaults::max_connections_per_client(),
            max_h2_streams: defaults::max_h2_streams(),
            send_timeout: defaults::send_timeout(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingFile {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `keyward=debug,info`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default = "defaults::basic_ttl")]
    pub basic_ttl: Seconds,
    #[serde(default = "defaults::basic_capacity")]
    pub basic_capacity: u64,
    #[serde(default = "defaults::invalidation_poll")]
    pub invalidation_poll: Seconds,
    #[serde(default = "defaults::api_key_ttl")]
    pub api_key_ttl: Seconds,
    #[serde(default = "defaults::cache_capacity")]
    pub api_key_capacity: u64,
    /// How long an unknown key prefix is answered without asking the store.
    #[serde(default = "defaults::negative_ttl")]
    pub negative_ttl: Seconds,
    #[serde(default = "defaults::cache_capacity")]
    pub negative_capacity: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            basic_ttl: defaults::basic_ttl(),
            basic_capacity: defaults::basic_capacity(),
            invalidation_poll: defaults::invalidation_poll(),
            api_key_ttl: defaults::api_key_ttl(),
            api_key_capacity: defaults::cache_capacity(),
            negative_ttl: defaults::negative_ttl(),
            negative_capacity: defaults::cache_capacity(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default = "defaults::threads")]
    pub threads: usize,
    /// Whether a runtime thread may take work queued on another (tokio's work-stealing
    /// scheduler); off (the default: less CPU per request, measured by `make compare`), each
    /// thread runs its own connections only (pingora's per-thread runtimes).
    #[serde(default = "defaults::work_stealing")]
    pub work_stealing: bool,
    /// How long SIGTERM waits for in-flight requests after the listeners close.
    #[serde(default = "defaults::grace_period")]
    pub grace_period: Seconds,
    /// After the grace period, how long the runtimes get to stop.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: Seconds,
    /// Where `serve` writes its process id; `keyward reload` signals the process named there.
    #[serde(default = "defaults::pid_file")]
    pub pid_file: std::path::PathBuf,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            threads: defaults::threads(),
            work_stealing: defaults::work_stealing(),
            grace_period: defaults::grace_period(),
            shutdown_timeout: defaults::shutdown_timeout(),
            pid_file: defaults::pid_file(),
        }
    }
}

/// A duration written as whole seconds (`30`) or with a unit (`500ms`, `15m`, `24h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(secs) => Ok(Seconds(Duration::from_secs(secs))),
            Raw::Text(text) => humantime::parse_duration(text.trim())
                .map(Seconds)
                .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e}"))),
        }
    }
}

pub(crate) mod defaults {
    use super::Seconds;
    use std::time::Duration;

    pub fn usage_retention() -> Seconds {
        Seconds(Duration::from_secs(90 * 86_400))
    }

    pub fn rate_limits_max_tracked() -> u64 {
        keyward_core::limit::DEFAULT_MAX_TRACKED
    }

    pub fn connect_timeout() -> Seconds {
        Seconds(Duration::from_secs(5))
    }
    pub fn read_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn health_check_interval() -> Seconds {
        Seconds(Duration::from_secs(5))
    }
    pub fn token_ttl() -> Seconds {
        Seconds(Duration::from_secs(24 * 3600))
    }
    pub fn token_max_ttl() -> Seconds {
        Seconds(Duration::from_secs(365 * 24 * 3600))
    }
    pub fn basic_ttl() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn basic_capacity() -> u64 {
        10_000
    }
    pub fn invalidation_poll() -> Seconds {
        Seconds(Duration::from_millis(250))
    }
    pub fn default_expiration_days() -> i64 {
        90
    }
    pub fn max_expiration_days() -> i64 {
        365
    }
    pub fn last_used_flush() -> Seconds {
        Seconds(Duration::from_secs(10))
    }
    pub fn api_key_ttl() -> Seconds {
        Seconds(Duration::from_secs(300))
    }
    pub fn cache_capacity() -> u64 {
        100_000
    }
    pub fn negative_ttl() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn max_age() -> Seconds {
        Seconds(Duration::from_secs(300))
    }
    pub fn max_future() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn skew_tolerance() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn session_ttl() -> Seconds {
        Seconds(Duration::from_secs(15 * 60))
    }
    pub fn replay_memory() -> u64 {
        256 * 1024 * 1024
    }
    pub fn max_body() -> u64 {
        8 * 1024 * 1024
    }
    pub(crate) fn forward_body_max() -> u64 {
        1024 * 1024
    }
    pub fn body_in_memory() -> u64 {
        1024 * 1024
    }
    pub fn bodies_in_flight() -> u64 {
        256 * 1024 * 1024
    }
    pub fn body_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn threads() -> usize {
        2
    }
    /// pingora's (and tokio's) own default: turning it off measured 3–7 % cheaper on one
    /// machine and ~5 % dearer on another (docs/performance.md), so no change is kept.
    pub fn work_stealing() -> bool {
        true
    }
    pub fn pid_file() -> std::path::PathBuf {
        "keyward.pid".into()
    }
    pub fn grace_period() -> Seconds {
        Seconds(Duration::from_secs(5))
    }
    pub fn shutdown_timeout() -> Seconds {
        Seconds(Duration::from_secs(5))
    }
    pub fn max_request_header_bytes() -> usize {
        64 * 1024
    }
    pub fn header_read_timeout() -> Seconds {
        Seconds(Duration::from_secs(10))
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn request_body_timeout() -> Seconds {
        Seconds(Duration::from_secs(30))
    }
    pub fn send_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn max_connections_per_client() -> usize {
        1_000
    }
    pub fn max_h2_streams() -> u32 {
        32
    }
    pub fn password_failures() -> u32 {
        10
    }
    pub fn password_failure_window() -> Seconds {
        Seconds(Duration::from_secs(5 * 60))
    }
    pub fn password_hash_threads() -> usize {
        2
    }
    pub fn token_metadata_bytes() -> usize {
        1024
    }
    pub fn tokens_per_user() -> u32 {
        1000
    }
}
