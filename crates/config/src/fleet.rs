//! `replay`: the fleet's shared Redis, as configured (the claims themselves live in
//! `keyward-auth`'s `fleet`).

/// `replay.on_redis_error`: what a request gets when Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRedisError {
    /// 503 with `Retry-After` for signed requests and TOTP logins.
    #[default]
    Refuse,
    /// The replica's own window and counters decide, as without Redis.
    Local,
}

/// `replay`: the validated settings.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// Never logged: it may hold a password.
    pub redis_url: String,
    pub on_redis_error: OnRedisError,
}

/// Leaves the URL out: a config printed with `{:?}` must not show a Redis password.
impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("redis_url", &"<redacted>")
            .field("on_redis_error", &self.on_redis_error)
            .finish()
    }
}

/// Checks a `replay.redis_url` without connecting. The message never repeats the URL, which
/// may hold a password.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        return Err("TLS to Redis (rediss://) is not supported; use redis://host:port".into());
    }
    if !["redis://", "valkey://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err("expected redis://[user:password@]host[:port][/db] or unix:///path".into());
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("not a usable Redis URL ({:?})", e.kind()))
}
