//! `redis`: the fleet's shared Redis, as configured (the claims themselves live in
//! `keyward-auth`'s `fleet`), and its TLS files.

use crate::tls::{TlsError, TlsFiles};
use std::path::PathBuf;

/// The config key of the URL (`redis.url_env` when the URL comes from the environment).
pub const URL_KEY: &str = "redis.url";
/// The config key of the CA file the server is verified against.
pub const CA_KEY: &str = "redis.tls.ca";
/// The config key of the client certificate file.
pub const CERT_KEY: &str = "redis.tls.cert";
/// The config key of the client certificate's private key file.
pub const KEY_KEY: &str = "redis.tls.key";

/// `redis.on_error` (alias `replay.on_redis_error`): what a request gets when Redis cannot
/// answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRedisError {
    /// 503 with `Retry-After` for signed requests and TOTP logins.
    #[default]
    Refuse,
    /// The replica's own window and counters decide, as without Redis.
    Local,
}

/// `redis.tls`: where the PEM files are. Used with a `rediss://` URL only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA (one or more certificates) the server's certificate must chain to; `None`: the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// `redis.tls.cert` and `redis.tls.key`: the client certificate presented to a Redis that
    /// asks for one (`tls-auth-clients`).
    pub client: Option<TlsFiles>,
}

/// The contents of the `redis.tls` files, read and checked.
#[derive(Clone, Default)]
pub struct RedisTlsPem {
    /// PEM certificates; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// (certificate chain PEM, private key PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// A `redis.tls` file that cannot be used, with the key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTlsError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for RedisTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl RedisTls {
    /// Reads the files (bounded in size and time) and checks them: the CA holds certificates
    /// usable as trust anchors, the client certificate and key are PEM and belong together.
    /// Blocking file I/O.
    pub fn load(&self) -> Result<RedisTlsPem, RedisTlsError> {
        let ca = match &self.ca {
            Some(path) => {
                Some(
                    crate::tls::read_trust_anchors(path).map_err(|message| RedisTlsError {
                        key: CA_KEY,
                        message,
                    })?,
                )
            }
            None => None,
        };
        let client = match &self.client {
            Some(files) => {
                crate::tls::check_key_pair(files).map_err(|e| RedisTlsError {
                    key: match &e {
                        TlsError::Certificate(_) => CERT_KEY,
                        TlsError::Key(_) => KEY_KEY,
                    },
                    message: e.message().to_owned(),
                })?;
                let read = |path: &PathBuf, key: &'static str| {
                    crate::file::read_bounded(path, crate::file::MAX_PEM_BYTES).map_err(|e| {
                        RedisTlsError {
                            key,
                            message: e.to_string(),
                        }
                    })
                };
                Some((read(&files.cert, CERT_KEY)?, read(&files.key, KEY_KEY)?))
            }
            None => None,
        };
        Ok(RedisTlsPem { ca, client })
    }
}

/// `redis`: the validated settings.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// Never logged: it may hold a password.
    pub redis_url: String,
    /// `Some` for a `rediss://` URL (with `redis.tls`, or the defaults: the system's roots and
    /// no client certificate); `None` for plain `redis://` and `unix://`.
    pub tls: Option<RedisTls>,
    pub on_redis_error: OnRedisError,
}

/// Leaves the URL out: a config printed with `{:?}` must not show a Redis password.
impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("redis_url", &"<redacted>")
            .field("tls", &self.tls)
            .field("on_redis_error", &self.on_redis_error)
            .finish()
    }
}

/// Whether a (checked) Redis URL asks for TLS.
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}

/// Checks a `redis.url` without connecting. The message never repeats the URL, which may
/// hold a password.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if ![
        "redis://",
        "rediss://",
        "valkey://",
        "valkeys://",
        "unix://",
        "redis+unix://",
    ]
    .iter()
    .any(|scheme| url.starts_with(scheme))
    {
        return Err(
            "expected redis://[user:password@]host[:port][/db], rediss://... (TLS) or unix:///path"
                .into(),
        );
    }
    // `rediss://host/#insecure` would turn certificate checks off: the CA goes in
    // redis.tls.ca instead.
    if url.contains('#') {
        return Err(
            "a URL fragment (#insecure) is not accepted: the server's certificate is always \
             verified; give its CA in redis.tls.ca"
                .into(),
        );
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("not a usable Redis URL ({:?})", e.kind()))
}
