//! Configuration: the YAML schema (`schema`) and the validated form the rest of keyward uses.
//!
//! Loading collects every problem it can find and names each by its key path
//! (`routes[2].require.min_security_level`), so one `check-config` run shows all of them.

pub mod file;
pub mod fleet;
pub mod identity;
pub mod oidc;
pub mod policy;
pub mod purpose;
pub mod reload;
pub mod schema;
pub mod tls;

use crate::fleet::{FleetSettings, OnRedisError};
pub use crate::identity::LdapSettings;
pub use crate::oidc::OidcSettings;
use crate::policy::{Requirement, Route};
pub use crate::purpose::Purpose;
pub use crate::tls::TlsFiles;
use ipnet::IpNet;
use keyward_core::limit::{Limit, LimitScope, RateLimitSettings};
use keyward_core::{CredentialKind, CredentialKinds, SecurityLevel};
pub use keyward_store::{PoolSettings, StoreUrl};
pub use schema::TrustedProxiesHeader;
use schema::{FileConfig, LogFormat};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shortest accepted `audit.retention`: records are evidence, not a cache.
const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(86_400);
/// Shortest accepted `usage.retention`: the counts are kept by the hour.
const MIN_USAGE_RETENTION: Duration = Duration::from_secs(3600);
/// Largest accepted `signatures.max_body` (1 GiB).
pub const MAX_SIGNED_BODY: u64 = 1 << 30;

/// The default configuration, compiled into the binary so `keyward serve` runs out of the box.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/keyward.yaml");

/// One problem in a configuration file, named by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file itself could not be read (see [`file::ReadError`]).
    #[error("{0}")]
    Read(#[from] file::ReadError),
    #[error("{}", join_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn join_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_proxy: String,
    pub listen_ops: String,
    /// `listen.admin`: the admin API's own listener; `None`: it is served on the proxy's.
    pub listen_admin: Option<String>,
    /// `listen.tls`: the proxy listener speaks TLS (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen_tls: Option<TlsFiles>,
    /// `listen.authz`: the external-authorization listener (SPEC §13); `None`: none.
    pub listen_authz: Option<String>,
    /// `external_authz`: who may ask `listen.authz`.
    pub external_authz: ExternalAuthz,
    pub upstream: Upstream,
    pub store: StoreUrl,
    pub store_pool: PoolSettings,
    pub bootstrap_admin: Option<BootstrapAdmin>,
    pub tokens: Tokens,
    pub routes: Vec<Route>,
    pub trusted_proxies: Vec<IpNet>,
    pub trusted_proxies_header: TrustedProxiesHeader,
    pub limits: Limits,
    pub forward_credentials: bool,
    pub logging: Logging,
    pub cache: CacheSettings,
    pub server: ServerSettings,
    pub api_keys: ApiKeySettings,
    pub signatures: SignatureSettings,
    pub signed_bodies: SignedBodies,
    pub audit_path: Option<PathBuf>,
    /// `audit.retention`: how long the store keeps audit records; `None`: forever.
    pub audit_retention: Option<Duration>,
    /// `redis` (or its old aliases `replay.redis_*`): the fleet's shared Redis; `None`:
    /// each replica keeps its own replay window and counters.
    pub redis: Option<FleetSettings>,
    /// `usage.retention`: how long the store keeps API key usage counts (default 90 days).
    pub usage_retention: Duration,
    pub rate_limits: RateLimitSettings,
    /// `identity.ldap`: directory users (SPEC §14); `None`: only keyward's own users.
    pub ldap: Option<LdapSettings>,
    /// `identity.oidc`: browsers sign in at an OpenID provider (SPEC §14).
    pub oidc: Option<OidcSettings>,
    /// `browser`: the sign-in, sign-out and account pages.
    pub browser: Browser,
    /// What the file says that works but should change (an old key that has a new name):
    /// logged at start and on every reload, printed by `check-config`.
    pub warnings: Vec<ConfigIssue>,
}

/// `browser` (SPEC §14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Browser {
    /// `/.keyward/…` is served, and browsers on protected routes are sent to the sign-in page.
    pub sign_in: bool,
    /// The name the pages show; `None`: "keyward".
    pub title: Option<String>,
}

/// `external_authz` (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAuthz {
    /// The peers whose `X-Original-*` / `X-Forwarded-*` description of a request is believed.
    pub trusted_callers: Vec<IpNet>,
    /// The largest body a caller may forward for a `content-digest` check.
    pub forward_body_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureSettings {
    pub max_age: Duration,
    pub max_future: Duration,
    pub skew_tolerance: Duration,
    pub session_ttl: Duration,
    pub replay_memory_bytes: u64,
    pub key_cache_ttl: Duration,
    pub key_cache_capacity: u64,
    pub negative_ttl: Duration,
}

/// Signed request bodies, read whole and checked before anything is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBodies {
    pub max_body: u64,
    pub in_memory: u64,
    pub timeout: Duration,
    /// Restart-only: the bound on all bodies held at once, on those of one user, and
    /// where spool files go.
    pub in_flight: u64,
    pub in_flight_per_user: u64,
    pub spool_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ApiKeySettings {
    pub default_expiration_days: i64,
    pub max_expiration_days: i64,
    pub last_used_flush: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` strings; resolved when the proxy starts.
    pub addresses: Vec<String>,
    pub tls: bool,
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_check_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    pub name: String,
    pub password_env: String,
    pub functions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub administrator: Option<String>,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub secure_cookie: bool,
}

#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    pub level: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub basic_ttl: Duration,
    pub basic_capacity: u64,
    pub invalidation_poll: Duration,
    pub api_key_ttl: Duration,
    pub api_key_capacity: u64,
    pub negative_ttl: Duration,
    pub negative_capacity: u64,
}

/// `limits` (see `schema::LimitsFile` for each one's meaning).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub password_failures: u32,
    pub password_failure_window: Duration,
    pub password_hash_threads: usize,
    pub token_metadata_bytes: usize,
    pub tokens_per_user: u32,
    /// `limits.body_timeout`, `limits.max_connections_per_client`, `limits.max_h2_streams`.
    pub network: NetworkLimits,
}

/// The network bounds of SPEC §15 (see `schema::NetworkLimitsFile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkLimits {
    pub body_timeout: Duration,
    /// `None`: no cap.
    pub max_connections_per_client: Option<usize>,
    pub max_h2_streams: u32,
    pub send_timeout: Duration,
}

fn validate_network_limits(
    (body_timeout, max_connections_per_client, max_h2_streams, send_timeout): (
        schema::Seconds,
        usize,
        u32,
        schema::Seconds,
    ),
    problem: &mut impl FnMut(String, String),
) -> NetworkLimits {
    for (key, timeout) in [
        ("limits.body_timeout", body_timeout),
        ("limits.send_timeout", send_timeout),
    ] {
        if timeout.0.is_zero() {
            problem(key.into(), "must be greater than zero".into());
        }
    }
    if max_h2_streams == 0 {
        problem("limits.max_h2_streams".into(), "must be at least 1".into());
    }
    NetworkLimits {
        body_timeout: body_timeout.0,
        max_connections_per_client: Some(max_connections_per_client).filter(|n| *n > 0),
        max_h2_streams,
        send_timeout: send_timeout.0,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    /// Where `serve` writes its pid, for `keyward reload`.
    pub pid_file: PathBuf,
}

impl Config {
    /// Reads (a regular file, at most [`file::MAX_CONFIG_BYTES`], within
    /// [`file::READ_TIMEOUT`]) and validates a file, for serving.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::from_file_for(path, Purpose::Serve)
    }

    /// [`Config::from_file`] for `purpose`.
    pub fn from_file_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
        let bytes = file::read_bounded(path, file::MAX_CONFIG_BYTES)?;
        Config::from_bytes_for(&bytes, purpose)
    }

    /// Validates the bytes of a configuration file, read once into memory, for serving.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::from_bytes_for(bytes, Purpose::Serve)
    }

    fn from_bytes_for(bytes: &[u8], purpose: Purpose) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::from_yaml_for(text, purpose),
            Err(e) => Err(ConfigError::Invalid(vec![ConfigIssue {
                key: String::new(),
                message: format!("the file is not UTF-8 text: {e}"),
            }])),
        }
    }

    /// Parses and validates YAML text, for serving.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_for(text, Purpose::Serve)
    }

    /// [`Config::from_yaml`] for `purpose`.
    pub fn from_yaml_for(text: &str, purpose: Purpose) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let file: FileConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ConfigError::Invalid(vec![issue_from_serde(&e)]))?;
        let mut issues = Vec::new();
        let config = validate(file, purpose, &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }
}

/// Names the key itself for unknown-key errors, whatever path serde reported.
fn issue_from_serde(e: &serde_path_to_error::Error<serde_yaml::Error>) -> ConfigIssue {
    let mut key = e.path().to_string();
    if key == "." {
        key.clear();
    }
    let mut message = e.inner().to_string();
    // serde_yaml may prefix its own rendering of the path; the key is shown once, in front.
    if let Some((prefix, rest)) = message.split_once(": ") {
        if !prefix.contains(' ') {
            message = rest.to_owned();
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            // serde_path_to_error usually includes the unknown key already; add it if not.
            if key.is_empty() {
                key = name.to_owned();
            } else if key.rsplit('.').next() != Some(name) {
                key = format!("{key}.{name}");
            }
            return ConfigIssue {
                key,
                message: "unknown key".to_owned(),
            };
        }
    }
    // serde_yaml appends "at line L column C"; keep it, it helps find the spot.
    ConfigIssue { key, message }
}

/// `external_authz`: required (with at least one trusted caller) when `listen.authz` is set,
/// since a caller's `X-Original-URI` is believed only from the edges named there.
fn validate_external_authz(
    file: Option<schema::ExternalAuthzFile>,
    listener: bool,
    max_body: u64,
    problem: &mut impl FnMut(String, String),
) -> ExternalAuthz {
    let file = file.unwrap_or(schema::ExternalAuthzFile {
        trusted_callers: Vec::new(),
        forward_body_max: None,
    });
    let mut trusted_callers = Vec::with_capacity(file.trusted_callers.len());
    for (i, text) in file.trusted_callers.iter().enumerate() {
        match parse_cidr(text) {
            Ok(net) => trusted_callers.push(net),
            Err(message) => problem(format!("external_authz.trusted_callers[{i}]"), message),
        }
    }
    if listener && file.trusted_callers.is_empty() {
        problem(
            "external_authz.trusted_callers".into(),
            "is required with listen.authz: name the edges that may ask (any other caller gets 403)"
                .into(),
        );
    }
    let forward_body_max = match file.forward_body_max {
        Some(explicit) => {
            if explicit > max_body {
                problem(
                    "external_authz.forward_body_max".into(),
                    "must be at most signatures.max_body".into(),
                );
            }
            explicit
        }
        None => schema::defaults::forward_body_max().min(max_body),
    };
    ExternalAuthz {
        trusted_callers,
        forward_body_max,
    }
}

/// Whether two listen addresses would take the same port.
fn listeners_collide(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn validate(file: FileConfig, purpose: Purpose, issues: &mut Vec<ConfigIssue>) -> Config {
    let FileConfig {
        listen,
        upstream,
        store,
        bootstrap,
        tokens,
        routes,
        trusted_proxies,
        trusted_proxies_header,
        limits,
        forward_credentials,
        routes_case_insensitive,
        logging,
        cache,
        server,
        api_keys,
        signatures,
        audit,
        redis,
        usage,
        replay,
        rate_limits,
        external_authz,
        identity,
        browser,
    } = file;
    let mut warnings = Vec::new();

    let mut problem = |key: String, message: String| issues.push(ConfigIssue { key, message });

    let admin_address = listen.admin.clone().unwrap_or_default();
    let authz_address = listen.authz.clone().unwrap_or_default();
    let mut listeners = vec![("listen.proxy", &listen.proxy), ("listen.ops", &listen.ops)];
    if listen.admin.is_some() {
        listeners.push(("listen.admin", &admin_address));
    }
    if listen.authz.is_some() {
        listeners.push(("listen.authz", &authz_address));
    }
    let mut bound: Vec<(&str, std::net::SocketAddr)> = Vec::new();
    for (key, value) in listeners {
        let Ok(address) = value.parse::<std::net::SocketAddr>() else {
            problem(
                key.into(),
                format!("expected an IP address and port, got {value:?}"),
            );
            continue;
        };
        // Two listeners on one port would send one's requests to the other (the ops paths
        // to the upstream, say); `0.0.0.0` and `[::]` take the port on every address.
        if let Some((other, _)) = bound.iter().find(|(_, b)| listeners_collide(*b, address)) {
            problem(
                key.into(),
                format!("{value} is the port of {other}: every listener needs its own"),
            );
        }
        bound.push((key, address));
    }

    // The files are read here so that `check-config` finds a missing, unreadable or
    // mismatched certificate or key, not only the first start.
    let listen_tls = listen.tls.map(|tls| {
        let files = TlsFiles {
            cert: tls.cert,
            key: tls.key,
        };
        if let Err(e) = crate::tls::TlsCertificates::load(&files) {
            problem(e.key().into(), e.message().into());
        }
        files
    });

    let addresses = match (upstream.address, upstream.addresses) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many,
        (None, Some(_)) => {
            problem("upstream.addresses".into(), "must not be empty".into());
            Vec::new()
        }
        (None, None) => {
            problem("upstream".into(), "set `address` or `addresses`".into());
            Vec::new()
        }
        (Some(_), Some(_)) => {
            problem(
                "upstream".into(),
                "set `address` or `addresses`, not both".into(),
            );
            Vec::new()
        }
    };
    for (i, address) in addresses.iter().enumerate() {
        if host_port(address).is_none() {
            let key = if addresses.len() == 1 {
                "upstream.address".to_owned()
            } else {
                format!("upstream.addresses[{i}]")
            };
            problem(key, format!("expected host:port, got {address:?}"));
        }
    }
    let sni = upstream.sni.clone().unwrap_or_else(|| {
        addresses
            .first()
            .and_then(|a| host_port(a))
            .map(|(host, _)| host.trim_matches(['[', ']']).to_owned())
            .unwrap_or_default()
    });

    let (store_key, store_text) = match (&store.url, &store.url_env) {
        (Some(url), None) => ("store.url", Ok(url.clone())),
        (None, Some(var)) => (
            "store.url_env",
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("the environment variable {var} is not set")),
        ),
        (Some(_), Some(_)) => (
            "store.url",
            Err("set store.url or store.url_env, not both".into()),
        ),
        (None, None) => (
            "store.url",
            Err("missing: set store.url or store.url_env".into()),
        ),
    };
    // The URL may carry a password: errors name the key, never repeat the value.
    let store_url = match store_text.and_then(|text| StoreUrl::parse(&text)) {
        Ok(url) => url,
        Err(message) => {
            problem(store_key.into(), message);
            StoreUrl::Sqlite(PathBuf::new())
        }
    };
    // The TLS files a PostgreSQL URL names are read here, so that `check-config` and a reload
    // find a missing or unusable one; sqlx reads them again at every new connection.
    if let Some(tls) = store_url.postgres_tls() {
        if let Some(ca) = &tls.root_cert {
            if let Err(message) = crate::tls::read_trust_anchors(ca) {
                problem(store_key.into(), format!("sslrootcert: {message}"));
            }
        }
        if let (Some(cert), Some(key)) = (tls.cert, tls.key) {
            if let Err(e) = crate::tls::check_key_pair(&TlsFiles { cert, key }) {
                let parameter = match &e {
                    crate::tls::TlsError::Certificate(_) => "sslcert",
                    crate::tls::TlsError::Key(_) => "sslkey",
                };
                problem(store_key.into(), format!("{parameter}: {}", e.message()));
            }
        }
    }
    let mut store_pool = PoolSettings::default_for(&store_url);
    if let Some(max) = store.max_connections {
        if max == 0 {
            problem("store.max_connections".into(), "must be at least 1".into());
        }
        store_pool.max_connections = max;
    }
    if let Some(timeout) = store.connect_timeout {
        if timeout.0.is_zero() {
            problem(
                "store.connect_timeout".into(),
                "must be more than 0s".into(),
            );
        }
        store_pool.acquire_timeout = timeout.0;
    }

    let bootstrap_admin = bootstrap.and_then(|b| b.admin).map(|admin| {
        if admin.name.trim().is_empty() {
            problem("bootstrap.admin.name".into(), "must not be empty".into());
        }
        if admin.password_env.trim().is_empty() {
            problem(
                "bootstrap.admin.password_env".into(),
                "must name an environment variable".into(),
            );
        }
        BootstrapAdmin {
            name: admin.name,
            password_env: admin.password_env,
            functions: admin.functions,
        }
    });

    if tokens.ttl.0 > tokens.max_ttl.0 {
        problem("tokens.ttl".into(), "must not exceed tokens.max_ttl".into());
    }

    let mut parsed_routes = Vec::with_capacity(routes.len());
    if routes.is_empty() {
        problem(
            "routes".into(),
            "at least one route is needed; requests matching no route are refused".into(),
        );
    }
    for (i, route) in routes.into_iter().enumerate() {
        parsed_routes.push(validate_route(
            i,
            route,
            routes_case_insensitive,
            &mut problem,
        ));
    }

    let mut proxies = Vec::with_capacity(trusted_proxies.len());
    for (i, text) in trusted_proxies.iter().enumerate() {
        match parse_cidr(text) {
            Ok(net) => proxies.push(net),
            Err(message) => problem(format!("trusted_proxies[{i}]"), message),
        }
    }

    let external_authz = validate_external_authz(
        external_authz,
        listen.authz.is_some(),
        signatures.max_body,
        &mut problem,
    );

    if let Some(level) = &logging.level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            problem(
                "logging.level".into(),
                format!("not a valid log filter: {level:?}"),
            );
        }
    }

    if audit
        .retention
        .as_ref()
        .is_some_and(|retention| retention.0 < MIN_AUDIT_RETENTION)
    {
        problem(
            "audit.retention".into(),
            "must be at least 1 day (leave it out to keep every record)".into(),
        );
    }
    if usage.retention.0 < MIN_USAGE_RETENTION {
        problem("usage.retention".into(), "must be at least 1 hour".into());
    }
    if cache.invalidation_poll.0.is_zero() {
        problem(
            "cache.invalidation_poll".into(),
            "must be greater than zero".into(),
        );
    }
    if api_keys.max_expiration_days < 1 {
        problem(
            "api_keys.max_expiration_days".into(),
            "must be at least 1".into(),
        );
    }
    if api_keys.default_expiration_days < 1
        || api_keys.default_expiration_days > api_keys.max_expiration_days
    {
        problem(
            "api_keys.default_expiration_days".into(),
            "must be between 1 and api_keys.max_expiration_days".into(),
        );
    }
    if api_keys.last_used_flush.0.is_zero() {
        problem(
            "api_keys.last_used_flush".into(),
            "must be greater than zero".into(),
        );
    }
    if signatures.max_age.0.is_zero() {
        problem(
            "signatures.max_age".into(),
            "must be greater than zero".into(),
        );
    }
    if signatures.replay_memory < 1024 * 1024 {
        problem(
            "signatures.replay_memory".into(),
            "must be at least 1048576 bytes".into(),
        );
    }
    if signatures.max_body > MAX_SIGNED_BODY {
        problem(
            "signatures.max_body".into(),
            format!("must be at most {MAX_SIGNED_BODY} bytes"),
        );
    }
    if signatures.body_in_memory > signatures.max_body {
        problem(
            "signatures.body_in_memory".into(),
            "must be at most signatures.max_body".into(),
        );
    }
    if signatures.bodies_in_flight < signatures.max_body {
        problem(
            "signatures.bodies_in_flight".into(),
            "must be at least signatures.max_body".into(),
        );
    }
    if let Some(per_key) = signatures.bodies_in_flight_per_user {
        if per_key < signatures.max_body || per_key > signatures.bodies_in_flight {
            problem(
                "signatures.bodies_in_flight_per_user".into(),
                "must be at least signatures.max_body and at most signatures.bodies_in_flight"
                    .into(),
            );
        }
    }
    if signatures.body_timeout.0.is_zero() {
        problem(
            "signatures.body_timeout".into(),
            "must be greater than zero".into(),
        );
    }
    if let Some(dir) = &signatures.spool_dir {
        if !dir.is_dir() {
            problem(
                "signatures.spool_dir".into(),
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    if server.threads == 0 {
        problem("server.threads".into(), "must be at least 1".into());
    }
    let limits = validate_limits(limits, &mut problem);
    let redis = validate_redis(redis, replay, &mut problem, &mut warnings);
    let rate_limits = validate_rate_limits(rate_limits, redis.is_some(), &mut problem);
    let ldap = identity
        .ldap
        .and_then(|ldap| identity::validate_ldap(ldap, purpose, &mut problem));
    let oidc_set = identity.oidc.is_some();
    let oidc = identity
        .oidc
        .and_then(|oidc| oidc::validate_oidc(oidc, purpose, &mut problem));
    if oidc_set && !browser.sign_in {
        problem(
            "browser.sign_in".into(),
            "identity.oidc signs people in through the browser pages: set browser.sign_in: true"
                .into(),
        );
    }
    if let Some(title) = &browser.title {
        if title.trim().is_empty()
            || title.chars().count() > 80
            || title.chars().any(char::is_control)
        {
            problem(
                "browser.title".into(),
                "must be 1 to 80 characters without control characters".into(),
            );
        }
    }

    Config {
        listen_proxy: listen.proxy,
        listen_ops: listen.ops,
        listen_admin: listen.admin,
        listen_authz: listen.authz,
        external_authz,
        listen_tls,
        upstream: Upstream {
            addresses,
            tls: upstream.tls,
            sni,
            connect_timeout: upstream.connect_timeout.0,
            read_timeout: upstream.read_timeout.0,
            health_check_interval: upstream.health_check_interval.0,
        },
        store: store_url,
        store_pool,
        bootstrap_admin,
        tokens: Tokens {
            administrator: tokens.administrator,
            ttl: tokens.ttl.0,
            max_ttl: tokens.max_ttl.0,
            secure_cookie: tokens.secure_cookie,
        },
        routes: parsed_routes,
        trusted_proxies: proxies,
        trusted_proxies_header,
        limits,
        forward_credentials,
        logging: Logging {
            format: logging.format,
            level: logging.level,
        },
        cache: CacheSettings {
            basic_ttl: cache.basic_ttl.0,
            basic_capacity: cache.basic_capacity,
            invalidation_poll: cache.invalidation_poll.0,
            api_key_ttl: cache.api_key_ttl.0,
            api_key_capacity: cache.api_key_capacity,
            negative_ttl: cache.negative_ttl.0,
            negative_capacity: cache.negative_capacity,
        },
        audit_retention: audit.retention.map(|retention| retention.0),
        usage_retention: usage.retention.0,
        audit_path: audit.path,
        redis,
        rate_limits,
        ldap,
        oidc,
        browser: Browser {
            sign_in: browser.sign_in,
            title: browser.title,
        },
        warnings,
        signed_bodies: SignedBodies {
            max_body: signatures.max_body,
            in_memory: signatures.body_in_memory,
            timeout: signatures.body_timeout.0,
            in_flight: signatures.bodies_in_flight,
            in_flight_per_user: signatures
                .bodies_in_flight_per_user
                .unwrap_or_else(|| (signatures.bodies_in_flight / 4).max(signatures.max_body)),
            spool_dir: signatures
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
        },
        signatures: SignatureSettings {
            max_age: signatures.max_age.0,
            max_future: signatures.max_future.0,
            skew_tolerance: signatures.skew_tolerance.0,
            session_ttl: signatures.session_ttl.0,
            replay_memory_bytes: signatures.replay_memory,
            key_cache_ttl: cache.api_key_ttl.0,
            key_cache_capacity: cache.api_key_capacity,
            negative_ttl: cache.negative_ttl.0,
        },
        api_keys: ApiKeySettings {
            default_expiration_days: api_keys.default_expiration_days,
            max_expiration_days: api_keys.max_expiration_days,
            last_used_flush: api_keys.last_used_flush.0,
        },
        server: ServerSettings {
            threads: server.threads,
            work_stealing: server.work_stealing,
            grace_period: server.grace_period.0,
            shutdown_timeout: server.shutdown_timeout.0,
            pid_file: server.pid_file,
        },
    }
}

fn validate_limits(limits: schema::LimitsFile, problem: &mut impl FnMut(String, String)) -> Limits {
    let schema::LimitsFile {
        max_request_header_bytes,
        header_read_timeout,
        max_connections,
        password_failures,
        password_failure_window,
        password_hash_threads,
        token_metadata_bytes,
        tokens_per_user,
        body_timeout,
        max_connections_per_client,
        max_h2_streams,
        send_timeout,
    } = limits;
    let network = validate_network_limits(
        (
            body_timeout,
            max_connections_per_client,
            max_h2_streams,
            send_timeout,
        ),
        problem,
    );
    // Below these, ordinary requests and logins would be refused.
    let at_least: [(&str, u64, u64); 6] = [
        (
            "limits.max_request_header_bytes",
            max_request_header_bytes as u64,
            1024,
        ),
        ("limits.max_connections", max_connections as u64, 1),
        ("limits.password_failures", password_failures.into(), 1),
        (
            "limits.password_hash_threads",
            password_hash_threads as u64,
            1,
        ),
        (
            "limits.token_metadata_bytes",
            token_metadata_bytes as u64,
            1,
        ),
        ("limits.tokens_per_user", tokens_per_user.into(), 1),
    ];
    for (key, value, min) in at_least {
        if value < min {
            problem(key.into(), format!("must be at least {min}"));
        }
    }
    if max_request_header_bytes > 1024 * 1024 {
        // pingora refuses larger headers itself, with a 400 instead of 431.
        problem(
            "limits.max_request_header_bytes".into(),
            "must be at most 1048576".into(),
        );
    }
    for (key, value) in [
        ("limits.header_read_timeout", header_read_timeout),
        ("limits.password_failure_window", password_failure_window),
    ] {
        if value.0.is_zero() {
            problem(key.into(), "must be greater than zero".into());
        }
    }
    Limits {
        max_request_header_bytes,
        header_read_timeout: header_read_timeout.0,
        max_connections,
        password_failures,
        password_failure_window: password_failure_window.0,
        password_hash_threads,
        token_metadata_bytes,
        tokens_per_user,
        network,
    }
}

/// `shared_redis`: the fleet shares a Redis (`replay.redis_url`), which `scope: fleet` needs
/// and makes the default.
fn validate_rate_limits(
    rate_limits: schema::RateLimitsFile,
    shared_redis: bool,
    problem: &mut impl FnMut(String, String),
) -> RateLimitSettings {
    let schema::RateLimitsFile {
        scope,
        per_credential,
        per_user,
        per_client_unauthenticated,
        max_tracked,
    } = rate_limits;
    let scope = match (scope, shared_redis) {
        (Some(schema::LimitScopeFile::Replica), _) | (None, false) => LimitScope::Replica,
        (Some(schema::LimitScopeFile::Fleet), true) | (None, true) => LimitScope::Fleet,
        (Some(schema::LimitScopeFile::Fleet), false) => {
            problem(
                "rate_limits.scope".into(),
                "fleet needs the fleet's shared Redis: set replay.redis_url (or use scope: replica)"
                    .into(),
            );
            LimitScope::Replica
        }
    };
    let mut quota = |name: &str, quota: Option<schema::QuotaFile>| {
        let schema::QuotaFile {
            requests_per_second,
            burst,
        } = quota?;
        match Limit::new(requests_per_second, burst) {
            Ok(limit) => Some(limit),
            Err(e) => {
                let field = match e {
                    keyward_core::limit::LimitError::Rate => "requests_per_second",
                    keyward_core::limit::LimitError::Burst => "burst",
                };
                problem(format!("rate_limits.{name}.{field}"), e.to_string());
                None
            }
        }
    };
    let per_credential = quota("per_credential", per_credential);
    let per_user = quota("per_user", per_user);
    let per_client_unauthenticated =
        quota("per_client_unauthenticated", per_client_unauthenticated);
    if max_tracked < 1 {
        problem(
            "rate_limits.max_tracked".into(),
            "must be at least 1".into(),
        );
    }
    RateLimitSettings {
        per_credential,
        per_user,
        per_client_unauthenticated,
        max_tracked: max_tracked.max(1),
        scope,
    }
}

/// `redis`, or its old place `replay.redis_url`, `replay.redis_url_env`,
/// `replay.on_redis_error` (each alias warns, naming its new key; both places at once is an
/// error).
fn validate_redis(
    redis: Option<schema::RedisFile>,
    replay: Option<schema::ReplayFile>,
    problem: &mut impl FnMut(String, String),
    warnings: &mut Vec<ConfigIssue>,
) -> Option<FleetSettings> {
    let redis = match (redis, replay) {
        (redis, None) => redis?,
        (Some(redis), Some(replay)) => {
            for (set, old, new) in [
                (replay.redis_url.is_some(), "replay.redis_url", "redis.url"),
                (
                    replay.redis_url_env.is_some(),
                    "replay.redis_url_env",
                    "redis.url_env",
                ),
                (
                    replay.on_redis_error.is_some(),
                    "replay.on_redis_error",
                    "redis.on_error",
                ),
            ] {
                if set {
                    problem(
                        old.into(),
                        format!(
                            "an old name of {new}, and the redis section is set too: keep \
                             the redis section only"
                        ),
                    );
                }
            }
            redis
        }
        (None, Some(replay)) => {
            let schema::ReplayFile {
                redis_url,
                redis_url_env,
                on_redis_error,
            } = replay;
            for (set, old, new) in [
                (redis_url.is_some(), "replay.redis_url", "redis.url"),
                (
                    redis_url_env.is_some(),
                    "replay.redis_url_env",
                    "redis.url_env",
                ),
                (
                    on_redis_error.is_some(),
                    "replay.on_redis_error",
                    "redis.on_error",
                ),
            ] {
                if set {
                    warnings.push(ConfigIssue {
                        key: old.into(),
                        message: format!("renamed: write {new} instead (the old name still works)"),
                    });
                }
            }
            return Some(redis_settings(
                schema::RedisFile {
                    url: redis_url,
                    url_env: redis_url_env,
                    tls: None,
                    on_error: on_redis_error.unwrap_or_default(),
                },
                // Errors name the keys the file says.
                ("replay.redis_url", "replay.redis_url_env"),
                problem,
            ));
        }
    };
    Some(redis_settings(
        redis,
        ("redis.url", "redis.url_env"),
        problem,
    ))
}

/// Checks the URL and the TLS files of `redis` (the keys of the URL and of its environment
/// variable are those the file used).
fn redis_settings(
    redis: schema::RedisFile,
    (url_key, env_key): (&str, &str),
    problem: &mut impl FnMut(String, String),
) -> FleetSettings {
    let schema::RedisFile {
        url,
        url_env,
        tls,
        on_error,
    } = redis;
    let (key, text) = match (url, url_env) {
        (Some(url), None) => (url_key, Ok(url)),
        (None, Some(var)) => (
            env_key,
            std::env::var(&var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("the environment variable {var} is not set")),
        ),
        (Some(_), Some(_)) => (
            url_key,
            Err(format!("set {url_key} or {env_key}, not both")),
        ),
        (None, None) => (url_key, Err(format!("missing: set {url_key} or {env_key}"))),
    };
    // The URL may carry a password: errors name the key, never repeat the value.
    let redis_url = match text.and_then(|url| crate::fleet::check_redis_url(&url).map(|()| url)) {
        Ok(url) => url,
        Err(message) => {
            problem(key.into(), message);
            String::new()
        }
    };
    let tls_url = crate::fleet::is_tls_url(&redis_url);
    let tls = match tls {
        Some(_) if !redis_url.is_empty() && !tls_url => {
            problem(
                "redis.tls".into(),
                format!("TLS needs a rediss:// URL in {key}; this one is not encrypted"),
            );
            None
        }
        Some(schema::RedisTlsFile {
            ca,
            cert,
            key: key_file,
        }) => {
            let client = match (cert, key_file) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => {
                    problem(
                        crate::fleet::KEY_KEY.into(),
                        "missing: redis.tls.cert and redis.tls.key go together".into(),
                    );
                    None
                }
                (None, Some(_)) => {
                    problem(
                        crate::fleet::CERT_KEY.into(),
                        "missing: redis.tls.cert and redis.tls.key go together".into(),
                    );
                    None
                }
            };
            Some(crate::fleet::RedisTls { ca, client })
        }
        None => tls_url.then(crate::fleet::RedisTls::default),
    };
    // The files are read here, so that `check-config` and a reload find a missing,
    // unreadable or mismatched one, not only the next start.
    if let Some(tls) = &tls {
        if let Err(e) = tls.load() {
            problem(e.key.into(), e.message);
        }
    }
    FleetSettings {
        redis_url,
        tls,
        on_redis_error: match on_error {
            schema::OnRedisErrorFile::Refuse => OnRedisError::Refuse,
            schema::OnRedisErrorFile::Local => OnRedisError::Local,
        },
    }
}

fn validate_route(
    i: usize,
    route: schema::RouteFile,
    case_insensitive: bool,
    problem: &mut impl FnMut(String, String),
) -> Route {
    let schema::RouteFile {
        path,
        methods,
        public,
        require,
        allow,
    } = route;
    if !path.starts_with('/') {
        problem(
            format!("routes[{i}].path"),
            format!("must start with '/', got {path:?}"),
        );
    }
    let methods = methods.map(|m| parse_methods(&m, &format!("routes[{i}].methods"), problem));
    if public && require.is_some() {
        problem(
            format!("routes[{i}].require"),
            "a public route cannot also require anything".into(),
        );
    }
    // Route intent is explicit (SPEC §15): a route cut short (a file caught half-written)
    // must never fall back to a default that opens it.
    if !public && require.is_none() {
        problem(
            format!("routes[{i}]"),
            format!(
                "route {path:?} says neither `public: true` nor `require:` \
                 (for any authenticated caller: `require: {{ min_security_level: EXTERNAL }}`)"
            ),
        );
    }
    let requirement = require
        .map(|r| Requirement {
            functions_any: r.functions_any,
            min_security_level: r
                .min_security_level
                .map(SecurityLevel::from)
                .unwrap_or(SecurityLevel::External),
            methods: r
                .methods
                .map(|m| parse_methods(&m, &format!("routes[{i}].require.methods"), problem)),
        })
        .unwrap_or_default();
    let allow = match allow {
        None => CredentialKinds::ALL,
        Some(kinds) => {
            if kinds.is_empty() {
                problem(
                    format!("routes[{i}].allow"),
                    "must name at least one of apikey, signature, token, basic".into(),
                );
            }
            kinds
                .into_iter()
                .map(CredentialKind::from)
                .collect::<CredentialKinds>()
        }
    };
    Route {
        path,
        case_insensitive,
        methods,
        public,
        require: requirement,
        allow,
    }
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

fn parse_methods(
    methods: &[String],
    key: &str,
    problem: &mut impl FnMut(String, String),
) -> Vec<http::Method> {
    let mut parsed = Vec::with_capacity(methods.len());
    for (j, m) in methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        match KNOWN_METHODS.contains(&upper.as_str()) {
            true => {
                parsed.push(http::Method::from_bytes(upper.as_bytes()).unwrap_or(http::Method::GET))
            }
            false => problem(format!("{key}[{j}]"), format!("unknown HTTP method {m:?}")),
        }
    }
    parsed
}

/// `host:port`, with IPv6 hosts in brackets.
fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return None;
    }
    Some((host, port))
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (taken as /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(canonical_net(net.trunc()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    Err(format!("invalid CIDR {text:?}"))
}

/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) as the IPv4 network it names: client
/// addresses are canonical (SPEC §15), so the mapped form would match nothing.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

impl From<schema::SecurityLevelFile> for SecurityLevel {
    fn from(level: schema::SecurityLevelFile) -> Self {
        match level {
            schema::SecurityLevelFile::External => SecurityLevel::External,
            schema::SecurityLevelFile::Default => SecurityLevel::Default,
            schema::SecurityLevelFile::Administrative => SecurityLevel::Administrative,
        }
    }
}

impl From<schema::CredentialKindFile> for CredentialKind {
    fn from(kind: schema::CredentialKindFile) -> Self {
        match kind {
            schema::CredentialKindFile::Apikey => CredentialKind::ApiKey,
            schema::CredentialKindFile::Signature => CredentialKind::Signature,
            schema::CredentialKindFile::Token => CredentialKind::Token,
            schema::CredentialKindFile::Basic => CredentialKind::Basic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen: { proxy: 127.0.0.1:8080, ops: 127.0.0.1:9090 }
upstream: { address: 127.0.0.1:3000 }
store: { url: sqlite://data/keyward.db }
routes:
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

    fn issues(yaml: &str) -> Vec<ConfigIssue> {
        match Config::from_yaml(yaml) {
            Err(ConfigError::Invalid(issues)) => issues,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    /// `listen.authz` needs `external_authz.trusted_callers` (SPEC §13); the callers are CIDRs,
    /// the listener a port of its own, and a forwarded body at most `signatures.max_body`.
    #[test]
    fn external_authz_is_checked() {
        let with = |listen: &str, rest: &str| {
            MINIMAL.replace(
                "listen: { proxy: 127.0.0.1:8080, ops: 127.0.0.1:9090 }",
                &format!(
                    "listen: {{ proxy: 127.0.0.1:8080, ops: 127.0.0.1:9090{listen} }}\n{rest}"
                ),
            )
        };
        let keys =
            |yaml: &str| -> Vec<String> { issues(yaml).into_iter().map(|i| i.key).collect() };
        assert_eq!(
            keys(&with(", authz: 127.0.0.1:8082", "")),
            ["external_authz.trusted_callers"]
        );
        assert_eq!(
            keys(&with(
                ", authz: 127.0.0.1:8082",
                "external_authz: { trusted_callers: [10.0.0.0/8, 10.0.0.0/33] }"
            )),
            ["external_authz.trusted_callers[1]"]
        );
        assert_eq!(
            keys(&with(
                ", authz: 127.0.0.1:8080",
                "external_authz: { trusted_callers: [10.0.0.0/8] }"
            )),
            ["listen.authz"]
        );
        assert_eq!(
            keys(&with(
                ", authz: 127.0.0.1:8082",
                "external_authz: { trusted_callers: [10.0.0.0/8], forward_body_max: 2048 }\n\
                 signatures: { max_body: 1024, body_in_memory: 1024, bodies_in_flight: 1048576 }"
            )),
            ["external_authz.forward_body_max"]
        );
        let config = Config::from_yaml(&with(
            ", authz: 127.0.0.1:8082",
            "external_authz: { trusted_callers: [10.0.0.0/8] }",
        ))
        .unwrap();
        assert_eq!(config.listen_authz.as_deref(), Some("127.0.0.1:8082"));
        assert_eq!(config.external_authz.forward_body_max, 1024 * 1024);
        // Without the listener nothing is required.
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert!(config.listen_authz.is_none());
        assert!(config.external_authz.trusted_callers.is_empty());
    }

    #[test]
    fn listen_tls_files_are_checked_at_load() {
        let with_tls = |tls: &str| {
            MINIMAL.replace(
                "ops: 127.0.0.1:9090 }",
                &format!("ops: 127.0.0.1:9090, tls: {tls} }}"),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = with_tls(&format!(
            "{{ cert: {}/none.crt, key: {}/none.key }}",
            dir.path().display(),
            dir.path().display()
        ));
        let found = issues(&missing);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "listen.tls.cert");
        assert!(found[0].message.contains("cannot read"), "{found:?}");
        assert_eq!(
            issues(&with_tls("{ cert: a.crt }"))[0].key,
            "listen.tls",
            "key is required"
        );
        assert_eq!(
            issues(&with_tls("{ cert: a, key: b, colour: c }"))[0].key,
            "listen.tls.colour"
        );
        assert!(Config::from_yaml(MINIMAL).unwrap().listen_tls.is_none());
    }

    #[test]
    fn every_route_says_public_or_require() {
        let yaml = MINIMAL.replace(
            "routes:\n",
            "routes:\n  - path: /open\n    public: true\n  - path: /api/admin\n  - path: /x\n    methods: [GET]\n    allow: [apikey]\n",
        );
        let found = issues(&yaml);
        let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["routes[1]", "routes[2]"], "{found:?}");
        assert!(found[0].message.contains("/api/admin"), "{found:?}");
        // What a file cut right after a route's path looks like.
        let cut = format!("{}  - path: /api/admin\n", MINIMAL);
        assert_eq!(issues(&cut)[0].key, "routes[1]");
        let explicit_false = MINIMAL.replace(
            "    require: { min_security_level: EXTERNAL }",
            "    public: false",
        );
        assert_eq!(issues(&explicit_false)[0].key, "routes[0]");
    }

    #[test]
    fn tls_files_that_are_not_regular_files_are_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cert.pem");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let yaml = MINIMAL.replace(
            "ops: 127.0.0.1:9090 }",
            &format!(
                "ops: 127.0.0.1:9090, tls: {{ cert: {}, key: {} }} }}",
                fifo.display(),
                dir.path().display()
            ),
        );
        let start = std::time::Instant::now();
        let found = issues(&yaml);
        assert!(start.elapsed() < Duration::from_secs(2), "never blocks");
        assert_eq!(found[0].key, "listen.tls.cert", "{found:?}");
        assert!(found[0].message.contains("not a regular file"), "{found:?}");
    }

    #[test]
    fn usage_retention_is_ninety_days_by_default_and_at_least_an_hour() {
        assert_eq!(
            Config::from_yaml(MINIMAL).unwrap().usage_retention,
            Duration::from_secs(90 * 86_400)
        );
        let config = Config::from_yaml(&format!("{MINIMAL}usage: {{ retention: 7d }}\n")).unwrap();
        assert_eq!(config.usage_retention, Duration::from_secs(7 * 86_400));
        for short in ["59m", "0s"] {
            let found = issues(&format!("{MINIMAL}usage: {{ retention: {short} }}\n"));
            assert_eq!(found[0].key, "usage.retention", "{short}: {found:?}");
        }
        let found = issues(&format!("{MINIMAL}usage: {{ keep: 7d }}\n"));
        assert!(found[0].key.starts_with("usage"), "{found:?}");
    }

    #[test]
    fn audit_retention_is_unset_by_default_and_at_least_a_day() {
        assert_eq!(Config::from_yaml(MINIMAL).unwrap().audit_retention, None);
        let config = Config::from_yaml(&format!("{MINIMAL}audit: {{ retention: 90d }}\n")).unwrap();
        assert_eq!(
            config.audit_retention,
            Some(Duration::from_secs(90 * 86_400))
        );
        for short in ["0", "1h", "23h 59m"] {
            let found = issues(&format!("{MINIMAL}audit: {{ retention: {short} }}\n"));
            assert_eq!(found[0].key, "audit.retention", "{short}: {found:?}");
        }
    }

    #[test]
    fn runtime_settings_have_defaults_and_are_read() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.server.threads, 2);
        assert!(config.server.work_stealing);
        let config = Config::from_yaml(&format!(
            "{MINIMAL}server: {{ threads: 1, work_stealing: false }}\n"
        ))
        .unwrap();
        assert_eq!(config.server.threads, 1);
        assert!(!config.server.work_stealing);
        let found = issues(&format!(
            "{MINIMAL}server: {{ work_stealing: sometimes }}\n"
        ));
        assert_eq!(found[0].key, "server.work_stealing", "{found:?}");
    }

    #[test]
    fn signed_body_limits_have_defaults_and_are_checked() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.signed_bodies.max_body, 8 * 1024 * 1024);
        assert_eq!(config.signed_bodies.spool_dir, std::env::temp_dir());
        let with = |signatures: &str| format!("{MINIMAL}signatures: {signatures}\n");
        let keys = |signatures: &str| -> Vec<String> {
            issues(&with(signatures))
                .into_iter()
                .map(|i| i.key)
                .collect()
        };
        assert_eq!(keys("{ max_body: 2147483648 }")[0], "signatures.max_body");
        assert_eq!(
            keys("{ max_body: 1000, body_in_memory: 2000 }"),
            ["signatures.body_in_memory"]
        );
        assert_eq!(
            keys("{ bodies_in_flight: 1000 }"),
            ["signatures.bodies_in_flight"]
        );
        assert_eq!(keys("{ body_timeout: 0s }"), ["signatures.body_timeout"]);
        assert_eq!(
            keys("{ spool_dir: /nonexistent/keyward-spool }"),
            ["signatures.spool_dir"]
        );
    }

    #[test]
    fn listeners_must_not_share_a_port() {
        let with = |listen: &str| {
            MINIMAL.replace("{ proxy: 127.0.0.1:8080, ops: 127.0.0.1:9090 }", listen)
        };
        let found = issues(&with("{ proxy: 127.0.0.1:8080, ops: 127.0.0.1:8080 }"));
        assert_eq!(found[0].key, "listen.ops", "{found:?}");
        assert!(found[0].message.contains("listen.proxy"), "{found:?}");
        let found = issues(&with(
            "{ proxy: 0.0.0.0:8080, ops: 127.0.0.1:9090, admin: 127.0.0.1:8080 }",
        ));
        assert_eq!(found[0].key, "listen.admin", "{found:?}");
        assert!(Config::from_yaml(&with(
            "{ proxy: 0.0.0.0:8080, ops: 127.0.0.1:9090, admin: 127.0.0.1:8081 }"
        ))
        .is_ok());
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::from_yaml(EMBEDDED_DEFAULT).expect("embedded default config");
        assert_eq!(config.listen_proxy, "127.0.0.1:8080");
        assert_eq!(config.listen_ops, "127.0.0.1:9090");
    }

    #[test]
    fn minimal_config_is_valid() {
        let config = Config::from_yaml(MINIMAL).expect("minimal config");
        assert_eq!(config.routes.len(), 1);
        assert_eq!(
            config.routes[0].require.min_security_level,
            SecurityLevel::External
        );
        assert_eq!(config.store, StoreUrl::Sqlite("data/keyward.db".into()));
    }

    #[test]
    fn rate_limits_are_off_unless_configured_and_validated() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.rate_limits.per_credential, None);
        assert_eq!(config.rate_limits.per_client_unauthenticated, None);
        assert_eq!(
            config.rate_limits.max_tracked,
            keyward_core::limit::DEFAULT_MAX_TRACKED
        );
        let yaml = format!(
            "{MINIMAL}rate_limits:\n  per_credential: {{ requests_per_second: 100, burst: 200 }}\n  \
             per_client_unauthenticated: {{ requests_per_second: 0.5, burst: 40 }}\n  max_tracked: 5000\n"
        );
        let limits = Config::from_yaml(&yaml).unwrap().rate_limits;
        let credential = limits.per_credential.unwrap();
        assert_eq!(
            (credential.requests_per_second(), credential.burst()),
            (100.0, 200)
        );
        let client = limits.per_client_unauthenticated.unwrap();
        assert_eq!((client.requests_per_second(), client.burst()), (0.5, 40));
        assert_eq!(limits.max_tracked, 5000);
        for (section, key) in [
            (
                "{ per_credential: { requests_per_second: 0, burst: 1 } }",
                "rate_limits.per_credential.requests_per_second",
            ),
            (
                "{ per_client_unauthenticated: { requests_per_second: 1, burst: 0 } }",
                "rate_limits.per_client_unauthenticated.burst",
            ),
            (
                "{ per_credential: { requests_per_second: 1, burst: -3 } }",
                "rate_limits.per_credential.burst",
            ),
            (
                "{ per_credential: { requests_per_second: 1 } }",
                "rate_limits.per_credential",
            ),
            (
                "{ per_credential: { requests_per_second: 1, burst: 2, window: 3 } }",
                "rate_limits.per_credential.window",
            ),
            ("{ per_user: {} }", "rate_limits.per_user"),
            (
                "{ per_user: { requests_per_second: 1, burst: 0 } }",
                "rate_limits.per_user.burst",
            ),
            ("{ per_tenant: {} }", "rate_limits.per_tenant"),
            ("{ scope: fleet }", "rate_limits.scope"),
            ("{ scope: global }", "rate_limits.scope"),
            ("{ max_tracked: 0 }", "rate_limits.max_tracked"),
        ] {
            let found = issues(&format!("{MINIMAL}rate_limits: {section}\n"));
            assert_eq!(found.len(), 1, "{section}: {found:?}");
            assert_eq!(found[0].key, key, "{section}: {found:?}");
        }
    }

    #[test]
    fn the_scope_is_fleet_by_default_with_a_shared_redis() {
        let scope = |yaml: &str| Config::from_yaml(yaml).unwrap().rate_limits.scope;
        assert_eq!(scope(MINIMAL), LimitScope::Replica);
        let redis = format!("{MINIMAL}replay: {{ redis_url: redis://127.0.0.1:6379 }}\n");
        assert_eq!(scope(&redis), LimitScope::Fleet);
        assert_eq!(
            scope(&format!("{redis}rate_limits: {{ scope: replica }}\n")),
            LimitScope::Replica
        );
        let both = format!(
            "{redis}rate_limits:\n  scope: fleet\n  per_user: {{ requests_per_second: 3, burst: 6 }}\n"
        );
        let limits = Config::from_yaml(&both).unwrap().rate_limits;
        assert_eq!(limits.scope, LimitScope::Fleet);
        assert_eq!(limits.per_user.map(|l| l.burst()), Some(6));
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let yaml = MINIMAL.replace("store:", "listen2: 1\nstore:");
        assert_eq!(issues(&yaml)[0].key, "listen2");
        let yaml = MINIMAL.replace(
            "min_security_level: EXTERNAL",
            "min_security_level: EXTERNAL, colour: red",
        );
        assert_eq!(issues(&yaml)[0].key, "routes[0].require.colour");
    }

    #[test]
    fn bad_enum_value_is_named_with_its_path() {
        let yaml = MINIMAL.replace("EXTERNAL", "SUPREME");
        let found = issues(&yaml);
        assert_eq!(found[0].key, "routes[0].require.min_security_level");
    }

    #[test]
    fn bad_cidr_is_named_with_its_index() {
        let yaml = format!("{MINIMAL}trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n");
        let found = issues(&yaml);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "trusted_proxies[1]");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let yaml = MINIMAL
            .replace("127.0.0.1:8080", "nowhere")
            .replace("sqlite://data/keyward.db", "mysql://x");
        let keys: Vec<_> = issues(&yaml).into_iter().map(|i| i.key).collect();
        assert_eq!(keys, vec!["listen.proxy", "store.url"]);
    }

    #[test]
    fn store_url_from_the_environment_and_pool_settings() {
        let var = "KEYWARD_CONFIG_TEST_STORE_URL";
        std::env::set_var(var, "postgres://keyward:s3cret@db.example:5432/keyward");
        let yaml = MINIMAL.replace(
            "store: { url: sqlite://data/keyward.db }",
            &format!("store: {{ url_env: {var}, max_connections: 7, connect_timeout: 3s }}"),
        );
        let config = Config::from_yaml(&yaml).unwrap();
        assert!(config.store.is_postgres());
        assert_eq!(config.store_pool.max_connections, 7);
        assert_eq!(config.store_pool.acquire_timeout, Duration::from_secs(3));
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "Debug hides the password"
        );

        let missing = MINIMAL.replace(
            "store: { url: sqlite://data/keyward.db }",
            "store: { url_env: KEYWARD_CONFIG_TEST_UNSET }",
        );
        assert_eq!(issues(&missing)[0].key, "store.url_env");
        let both = MINIMAL.replace(
            "store: { url: sqlite://data/keyward.db }",
            &format!("store: {{ url: sqlite://x.db, url_env: {var} }}"),
        );
        assert_eq!(issues(&both)[0].key, "store.url");
        let bad = MINIMAL.replace(
            "sqlite://data/keyward.db",
            "postgres://keyward:s3cret@db.example:notaport/x",
        );
        let found = issues(&bad);
        assert_eq!(found[0].key, "store.url");
        assert!(!found[0].message.contains("s3cret"), "{}", found[0].message);
        let zero = MINIMAL.replace(
            "store: { url: sqlite://data/keyward.db }",
            "store: { url: sqlite://x.db, max_connections: 0 }",
        );
        assert_eq!(issues(&zero)[0].key, "store.max_connections");
    }

    #[test]
    fn store_url_tls_parameters_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        let (_, other_cert, _) = pki();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (ca, cert, key) = (
            write("ca.pem", &ca),
            write("c.pem", &cert),
            write("k.pem", &key),
        );
        let other_cert = write("other.pem", &other_cert);
        let url = |query: &str| {
            MINIMAL.replace(
                "sqlite://data/keyward.db",
                &format!("\"postgres://keyward:s3cret@db.example:5432/keyward?{query}\""),
            )
        };
        let config = Config::from_yaml(&url(&format!(
            "sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"
        )))
        .unwrap();
        let tls = config.store.postgres_tls().unwrap();
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert!(tls.verifies() && tls.required());
        assert_eq!(tls.root_cert.unwrap().display().to_string(), ca);
        // libpq's rule: `require` with a CA verifies against it.
        let require = Config::from_yaml(&url(&format!("sslmode=require&sslrootcert={ca}")));
        assert!(require.unwrap().store.postgres_tls().unwrap().verifies());
        let plain = Config::from_yaml(&url("sslmode=require")).unwrap();
        assert!(!plain.store.postgres_tls().unwrap().verifies());

        for (query, says) in [
            (
                "sslmode=verify-everything".to_owned(),
                "sslmode=verify-everything is not one of",
            ),
            (
                "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem".to_owned(),
                "sslrootcert: ",
            ),
            (
                format!("sslmode=verify-ca&sslrootcert={key}"),
                "no PEM certificate",
            ),
            (format!("sslcert={cert}"), "sslcert without sslkey"),
            (format!("sslkey={key}"), "sslkey without sslcert"),
            (
                format!("sslcert={other_cert}&sslkey={key}"),
                "sslkey: the key in",
            ),
            (format!("sslcert={key}&sslkey={key}"), "sslcert: "),
        ] {
            let found = issues(&url(&query));
            assert_eq!(found.len(), 1, "{query}: {found:?}");
            assert_eq!(found[0].key, "store.url", "{found:?}");
            assert!(found[0].message.contains(says), "{query}: {found:?}");
            assert!(!found[0].message.contains("s3cret"), "{found:?}");
        }
    }

    #[test]
    fn cidr_accepts_plain_addresses_and_ipv6() {
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(
            parse_cidr("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_cidr("10.0.0.0/8x").is_err());
        // Mapped IPv4 is IPv4 (SPEC §15).
        assert_eq!(
            parse_cidr("::ffff:10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.limits.max_request_header_bytes, 65536);
        assert_eq!(
            config.trusted_proxies_header,
            TrustedProxiesHeader::XForwardedFor
        );
        let yaml = format!(
            "{MINIMAL}limits: {{ max_connections: 0, header_read_timeout: 0 }}\ntrusted_proxies_header: forwarded\n"
        );
        let keys: Vec<_> = issues(&yaml).into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            vec!["limits.max_connections", "limits.header_read_timeout"]
        );
        let yaml = format!("{MINIMAL}trusted_proxies_header: x-real-ip\n");
        assert_eq!(issues(&yaml)[0].key, "trusted_proxies_header");
    }

    #[test]
    fn redis_section_is_optional_and_checked() {
        assert_eq!(Config::from_yaml(MINIMAL).unwrap().redis, None);
        let yaml = format!("{MINIMAL}redis: {{ url: redis://127.0.0.1:6379 }}\n");
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(
            config.redis,
            Some(FleetSettings {
                redis_url: "redis://127.0.0.1:6379".into(),
                tls: None,
                on_redis_error: OnRedisError::Refuse,
            }),
            "refuse is the default"
        );
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let yaml = format!(
            "{MINIMAL}redis: {{ url: \"redis://:pw@10.0.0.5:6380/1\", on_error: local }}\n"
        );
        let redis = Config::from_yaml(&yaml).unwrap().redis.unwrap();
        assert_eq!(redis.on_redis_error, OnRedisError::Local);
        // rediss:// without redis.tls: the system's roots, no client certificate.
        let yaml = format!("{MINIMAL}redis: {{ url: \"rediss://:pw@redis.example:6380\" }}\n");
        let redis = Config::from_yaml(&yaml).unwrap().redis.unwrap();
        assert_eq!(redis.tls, Some(fleet::RedisTls::default()));

        for (section, key) in [
            ("{ url: redis://h:1, on_error: ignore }", "redis.on_error"),
            (
                "{ url: redis://h:1, redis_url: redis://h:2 }",
                "redis.redis_url",
            ),
            ("{ on_error: local }", "redis.url"),
            ("{ url: redis://h:1, url_env: X }", "redis.url"),
            ("{ url_env: KEYWARD_CONFIG_TEST_UNSET }", "redis.url_env"),
            ("{ url: http://h:1 }", "redis.url"),
            (
                "{ url: \"rediss://:topsecret@h:1/#insecure\" }",
                "redis.url",
            ),
            (
                "{ url: \"redis://:topsecret@h:1\", tls: { ca: /nonexistent/ca.pem } }",
                "redis.tls",
            ),
            ("{ url: \"unix:///run/redis.sock\", tls: {} }", "redis.tls"),
            (
                "{ url: \"rediss://:topsecret@h:1\", tls: { ca: /nonexistent/ca.pem } }",
                "redis.tls.ca",
            ),
            (
                "{ url: \"rediss://:topsecret@h:1\", tls: { cert: /nonexistent/c.pem } }",
                "redis.tls.key",
            ),
            (
                "{ url: \"rediss://:topsecret@h:1\", tls: { key: /nonexistent/k.pem } }",
                "redis.tls.cert",
            ),
            ("{ url: redis://h:1, tls: { crt: /x } }", "redis.tls.crt"),
        ] {
            let found = issues(&format!("{MINIMAL}redis: {section}\n"));
            assert_eq!(found.len(), 1, "{section}: {found:?}");
            assert_eq!(found[0].key, key, "{section}: {found:?}");
            assert!(!found[0].message.contains("topsecret"), "{:?}", found[0]);
        }

        let var = "KEYWARD_CONFIG_TEST_REDIS_URL";
        std::env::set_var(var, "rediss://:topsecret@redis.example:6379/0");
        let yaml = format!("{MINIMAL}redis: {{ url_env: {var} }}\n");
        let config = Config::from_yaml(&yaml).unwrap();
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.redis_url, "rediss://:topsecret@redis.example:6379/0");
        assert!(
            !format!("{config:?}").contains("topsecret"),
            "Debug hides the password"
        );
    }

    #[test]
    fn the_old_replay_keys_are_aliases_that_warn() {
        let yaml = format!(
            "{MINIMAL}replay: {{ redis_url: \"redis://:pw@10.0.0.5:6380/1\", on_redis_error: local }}\n"
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.redis_url, "redis://:pw@10.0.0.5:6380/1");
        assert_eq!(redis.on_redis_error, OnRedisError::Local);
        let warned: Vec<_> = config.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(warned, ["replay.redis_url", "replay.on_redis_error"]);
        assert!(
            config.warnings[0].message.contains("redis.url"),
            "{:?}",
            config.warnings
        );
        assert!(config.warnings[1].message.contains("redis.on_error"));

        // Errors in the old place name the old keys.
        for (section, key) in [
            ("{ on_redis_error: local }", "replay.redis_url"),
            (
                "{ redis_url: redis://h:1, redis_url_env: X }",
                "replay.redis_url",
            ),
            (
                "{ redis_url_env: KEYWARD_CONFIG_TEST_UNSET }",
                "replay.redis_url_env",
            ),
            ("{ redis_url: http://h:1 }", "replay.redis_url"),
            (
                "{ redis_url: redis://h:1, on_redis_error: ignore }",
                "replay.on_redis_error",
            ),
        ] {
            let found = issues(&format!("{MINIMAL}replay: {section}\n"));
            assert_eq!(found.len(), 1, "{section}: {found:?}");
            assert_eq!(found[0].key, key, "{section}: {found:?}");
        }

        // Both places at once: each old key set is an error.
        let yaml = format!(
            "{MINIMAL}redis: {{ url: redis://h:1 }}\nreplay: {{ redis_url: redis://h:2, on_redis_error: local }}\n"
        );
        let keys: Vec<_> = issues(&yaml).into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["replay.redis_url", "replay.on_redis_error"]);
    }

    /// A CA, and a certificate with its key signed by it, as PEM.
    fn pki() -> (String, String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["keyward".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn redis_tls_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki();
        let (_, other_cert, _) = pki();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (ca, cert, key) = (
            write("ca.pem", &ca),
            write("c.pem", &cert),
            write("k.pem", &key),
        );
        let other_cert = write("other.pem", &other_cert);
        let not_pem = write("junk.pem", "not a certificate");
        let tls = |ca: &str, cert: &str, key: &str| {
            format!("{MINIMAL}redis: {{ url: \"rediss://127.0.0.1:6380\", tls: {{ ca: {ca}, cert: {cert}, key: {key} }} }}\n")
        };
        let config = Config::from_yaml(&tls(&ca, &cert, &key)).unwrap();
        let settings = config.redis.unwrap().tls.unwrap();
        let pem = settings.load().unwrap();
        assert!(pem.ca.is_some() && pem.client.is_some());
        for (yaml, key_named, says) in [
            (
                tls(&not_pem, &cert, &key),
                "redis.tls.ca",
                "no PEM certificate",
            ),
            (tls(&key, &cert, &key), "redis.tls.ca", "no PEM certificate"),
            (
                tls(&ca, &not_pem, &key),
                "redis.tls.cert",
                "no PEM certificate",
            ),
            (
                tls(&ca, &cert, &cert),
                "redis.tls.key",
                "no PEM private key",
            ),
            (
                tls(&ca, &other_cert, &key),
                "redis.tls.key",
                "does not match",
            ),
        ] {
            let found = issues(&yaml);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].key, key_named, "{found:?}");
            assert!(found[0].message.contains(says), "{found:?}");
        }
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        let yaml = format!("{MINIMAL}tokens: {{ ttl: 2h, max_ttl: 86400 }}\n");
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(config.tokens.ttl, Duration::from_secs(7200));
        assert_eq!(config.tokens.max_ttl, Duration::from_secs(86400));
    }
}
