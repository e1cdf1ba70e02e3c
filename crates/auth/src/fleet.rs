//! Fleet-wide claims in Redis (`redis.url`): what one replica accepted, every replica
//! refuses. Three things are shared this way:
//!
//! - the replay window of signed requests: each accepted signature is claimed with
//!   `SET key 1 NX PX ttl`, so a second use is refused by whichever replica sees it, and after
//!   a restart;
//! - TOTP codes: a code is used once per fleet, not once per replica;
//! - the failure throttles (wrong TOTP codes per user, failed password logins per name and
//!   client address): counted with `INCR` and `PEXPIRE` in one script, so guesses spread over
//!   the replicas add up.
//!
//! Keys are fixed-size and reveal nothing: `keyward:<kind>:` followed by the hex of an
//! HMAC-SHA-256 of the claim, keyed with a secret derived from the store's pepper under a
//! label of its own. Replicas sharing a store share the keys; distinct stores never collide,
//! and nothing written to Redis can be guessed or looked up without the pepper.
//!
//! Every Redis call runs on a small runtime of its own (like the store's) and is bounded by
//! [`REDIS_TIMEOUT`], so an unreachable Redis costs a request at most that long. After a
//! failure, calls fail at once for [`RETRY_INTERVAL`] instead of each waiting out the
//! timeout; the first call after it probes Redis again. What a failure means is the
//! operator's choice (`redis.on_error`): `refuse` answers 503, `local` falls back to
//! the replica's own window and counts the fallback in `keyward_replay_local_fallback_total`.
//! A replica logs one line when Redis goes away and one when it is back.
//!
//! With a `rediss://` URL every connection is TLS (rustls): the server's certificate must
//! chain to `redis.tls.ca` (the system's roots without it) and name the URL's host, and the
//! client certificate of `redis.tls.cert`/`key` is presented when the server asks for one.
//! [`check_tls`] makes one connection at start and on every reload, so that a certificate
//! that does not verify stops keyward (or refuses the reload) with the key named, instead of
//! turning every signed request into a 503.

use crate::api_key::KeyHasher;
use keyward_core::now_ms;
use keyward_metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest one Redis call may take, connecting included; then it counts as a failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, how long calls fail at once before Redis is tried again; also the
/// `Retry-After` of the 503 that `refuse` answers.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Separates the key of fleet claims from every other use of the store's pepper.
const KEY_LABEL: &[u8] = b"keyward fleet claims in redis v1";
/// The key prefix and hash label of fleet-scoped rate limits (`fleet_limit`).
const LIMIT_PREFIX: &str = "keyward:limit:";
const LIMIT_LABEL: &[u8] = b"rate_limit";

/// How long [`check_tls`] waits for its connection (TLS handshake and `PING`).
pub const TLS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub use keyward_config::fleet::{check_redis_url, FleetSettings, OnRedisError};

/// What is claimed or counted. Each kind has its own key prefix and hash label, so equal
/// inputs of two kinds never share a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// A signature's fingerprint, in the replay window.
    Signature,
    /// A TOTP code of a user.
    TotpCode,
    /// The wrong TOTP codes of a user.
    TotpFailures,
    /// The failed password logins of a (user name, client address) pair.
    PasswordFailures,
    /// An API key's requests in one quota period (see `quota`).
    Quota,
}

impl ClaimKind {
    fn prefix(self) -> &'static str {
        match self {
            ClaimKind::Signature => "keyward:replay:",
            ClaimKind::TotpCode => "keyward:totp:",
            ClaimKind::TotpFailures | ClaimKind::PasswordFailures => "keyward:throttle:",
            ClaimKind::Quota => "keyward:quota:",
        }
    }

    /// The hash label, and the `claim` label of `keyward_replay_local_fallback_total`.
    pub fn label(self) -> &'static str {
        match self {
            ClaimKind::Signature => "signature",
            ClaimKind::TotpCode => "totp",
            ClaimKind::TotpFailures => "totp_throttle",
            ClaimKind::PasswordFailures => "password_throttle",
            ClaimKind::Quota => "quota",
        }
    }

    /// Password logins are not refused when Redis is away, whatever `redis.on_error` says:
    /// the throttle falls back to the replica's own count (the admin API stays reachable).
    fn always_falls_back(self) -> bool {
        self == ClaimKind::PasswordFailures
    }
}

pub use keyward_core::refusal::FleetUnavailable;

/// A fleet-wide answer, or `Local`: Redis could not answer, and the caller decides with its
/// own window (the fallback has been counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<T> {
    Fleet(T),
    Local,
}

/// A counter's state after [`FleetClaims::count`] or [`FleetClaims::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Whether this attempt was counted (false: the limit was already reached).
    pub counted: bool,
    pub count: u64,
    /// Until the window ends (0 when the counter does not exist).
    pub remaining: Duration,
}

impl Count {
    /// `Retry-After` seconds for a refused attempt: the rest of the window, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.remaining.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// Counts an attempt unless the counter has reached `ARGV[2]` (0: no limit); the first count
/// starts the window of `ARGV[1]` ms. Returns {counted, count, remaining ms}.
const COUNT_SCRIPT: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[2])
if limit > 0 and n >= limit then
  return {0, n, redis.call('PTTL', KEYS[1])}
end
n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {1, n, ttl}
"#;
/// Takes one count back (never below zero); the window keeps its end.
const UNCOUNT_SCRIPT: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
"#;

pub struct FleetClaims {
    runtime: tokio::runtime::Handle,
    client: redis::Client,
    /// Replaced after a timeout: a connection that stopped answering (a half-open TCP
    /// connection to a host that went away) is never reported broken by the manager itself.
    connection: Mutex<ConnectionManager>,
    keys: KeyHasher,
    on_error: OnRedisError,
    metrics: Arc<Metrics>,
    /// Whether the last call failed: the down and recovered lines are logged once each.
    down: AtomicBool,
    /// Until when (ms since the epoch) calls fail without trying Redis.
    retry_at_ms: AtomicI64,
    count: redis::Script,
    uncount: redis::Script,
}

impl FleetClaims {
    /// Starts the Redis runtime and a connection manager that connects on first use and
    /// reconnects after failures; Redis need not be reachable yet.
    pub fn start(
        settings: &FleetSettings,
        pepper: &[u8],
        metrics: Arc<Metrics>,
    ) -> Result<FleetClaims, String> {
        let client = redis_client(settings)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyward-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis runtime: {e}"))?;
        let connection = connection_manager(&runtime.handle().clone(), &client)?;
        let handle = runtime.handle().clone();
        handle.spawn(check_eviction_policy(client.clone()));
        // Never dropped, like the store's: dropping a runtime inside another one panics.
        std::mem::forget(runtime);
        Ok(FleetClaims {
            runtime: handle,
            client,
            connection: Mutex::new(connection),
            keys: KeyHasher::new(KeyHasher::new(pepper.to_vec()).hash32(KEY_LABEL).to_vec()),
            on_error: settings.on_redis_error,
            metrics,
            down: AtomicBool::new(false),
            retry_at_ms: AtomicI64::new(0),
            count: redis::Script::new(COUNT_SCRIPT),
            uncount: redis::Script::new(UNCOUNT_SCRIPT),
        })
    }

    /// The Redis key of a claim.
    fn key(&self, kind: ClaimKind, claim: &[u8]) -> String {
        let label = kind.label().as_bytes();
        let mut input = Vec::with_capacity(label.len() + 1 + claim.len());
        input.extend_from_slice(label);
        input.push(0);
        input.extend_from_slice(claim);
        let mut key = String::with_capacity(kind.prefix().len() + 64);
        key.push_str(kind.prefix());
        key.push_str(&hex::encode(self.keys.hash32(input)));
        key
    }

    /// The Redis key of a fleet-scoped rate limit's bucket (`claim`: the limit key's bytes).
    pub fn limit_key(&self, claim: &[u8]) -> String {
        let mut input = Vec::with_capacity(LIMIT_LABEL.len() + 1 + claim.len());
        input.extend_from_slice(LIMIT_LABEL);
        input.push(0);
        input.extend_from_slice(claim);
        let mut key = String::with_capacity(LIMIT_PREFIX.len() + 64);
        key.push_str(LIMIT_PREFIX);
        key.push_str(&hex::encode(self.keys.hash32(input)));
        key
    }

    /// `redis.on_error`.
    pub fn on_error(&self) -> OnRedisError {
        self.on_error
    }

    /// Runs `script` on `key` with integer arguments and two integers back, like every other
    /// call (on the Redis runtime, bounded by [`REDIS_TIMEOUT`], failing fast after a
    /// failure); `None` when Redis did not answer. What that means is the caller's choice.
    pub async fn script_pair(
        &self,
        script: &redis::Script,
        key: String,
        args: [i64; 3],
    ) -> Option<(i64, i64)> {
        let script = script.clone();
        self.call(move |mut connection| async move {
            let mut invocation = script.key(key);
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// Claims `claim` for `ttl`: `Fleet(true)` when this call was the first, `Fleet(false)`
    /// when another call (on any replica) had claimed it.
    pub async fn claim(
        &self,
        kind: ClaimKind,
        claim: &[u8],
        ttl: Duration,
    ) -> Result<Answer<bool>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let answer = self
            .call(move |mut connection| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut connection)
                    .await?;
                Ok(set.is_some())
            })
            .await;
        self.answer(kind, answer)
    }

    /// Whether `claim` is held on any replica, without claiming it: a used signature is found
    /// before its request costs its key's limit or a body read on this replica (SPEC §15).
    pub async fn claimed(
        &self,
        kind: ClaimKind,
        claim: &[u8],
    ) -> Result<Answer<bool>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let answer = self
            .call(move |mut connection| async move {
                let held: bool = redis::cmd("EXISTS")
                    .arg(key)
                    .query_async(&mut connection)
                    .await?;
                Ok(held)
            })
            .await;
        self.answer(kind, answer)
    }

    /// Counts an attempt against `limit` (0: no limit) in a window of `window` that begins
    /// with the first count.
    pub async fn count(
        &self,
        kind: ClaimKind,
        claim: &[u8],
        limit: u32,
        window: Duration,
    ) -> Result<Answer<Count>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let window_ms = window.as_millis().max(1) as u64;
        let script = self.count.clone();
        let answer = self
            .call(move |mut connection| async move {
                let (counted, count, remaining): (i64, i64, i64) = script
                    .key(key)
                    .arg(window_ms)
                    .arg(limit)
                    .invoke_async(&mut connection)
                    .await?;
                Ok(count_of(counted == 1, count, remaining))
            })
            .await;
        self.answer(kind, answer)
    }

    /// A counter's state, without counting.
    pub async fn peek(
        &self,
        kind: ClaimKind,
        claim: &[u8],
    ) -> Result<Answer<Count>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let answer = self
            .call(move |mut connection| async move {
                // Two reads in one round trip, without a script: this is the warm path of
                // cached Basic logins.
                let (count, remaining): (Option<i64>, i64) = redis::pipe()
                    .get(&key)
                    .pttl(&key)
                    .query_async(&mut connection)
                    .await?;
                Ok(count_of(false, count.unwrap_or(0), remaining))
            })
            .await;
        self.answer(kind, answer)
    }

    /// Takes one count back (an attempt that could not be decided).
    pub async fn uncount(
        &self,
        kind: ClaimKind,
        claim: &[u8],
    ) -> Result<Answer<()>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let script = self.uncount.clone();
        let answer = self
            .call(move |mut connection| async move {
                let _: i64 = script.key(key).invoke_async(&mut connection).await?;
                Ok(())
            })
            .await;
        self.answer(kind, answer)
    }

    /// Deletes a counter (a success starts the pair over).
    pub async fn clear(
        &self,
        kind: ClaimKind,
        claim: &[u8],
    ) -> Result<Answer<()>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let answer = self
            .call(move |mut connection| async move {
                let _: i64 = redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await?;
                Ok(())
            })
            .await;
        self.answer(kind, answer)
    }

    /// Runs `script` with the key of `claim` as `KEYS[1]` and `args` as `ARGV`, for a script
    /// that answers one integer (a generic helper for counters kept elsewhere).
    pub async fn eval_integer(
        &self,
        kind: ClaimKind,
        claim: &[u8],
        script: &redis::Script,
        args: &[i64],
    ) -> Result<Answer<i64>, FleetUnavailable> {
        let key = self.key(kind, claim);
        let script = script.clone();
        let args = args.to_vec();
        let answer = self
            .call(move |mut connection| async move {
                let mut invocation = script.key(key);
                for arg in &args {
                    invocation.arg(*arg);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await;
        self.answer(kind, answer)
    }

    /// Runs one Redis call on the Redis runtime, bounded by [`REDIS_TIMEOUT`]; `None` when it
    /// failed, timed out, or was not tried because Redis failed less than
    /// [`RETRY_INTERVAL`] ago.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if self.down.load(Ordering::Acquire) && now_ms() < self.retry_at_ms.load(Ordering::Acquire)
        {
            return None;
        }
        let connection = match self.connection.lock() {
            Ok(connection) => connection.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let call = f(connection);
        let result = self
            .runtime
            .spawn(async move { tokio::time::timeout(REDIS_TIMEOUT, call).await })
            .await;
        let error = match result {
            Ok(Ok(Ok(value))) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!("redis is reachable again: replay claims are fleet-wide");
                }
                return Some(value);
            }
            Ok(Ok(Err(e))) => {
                if e.is_timeout() {
                    self.reconnect();
                }
                e.to_string()
            }
            Ok(Err(_)) => {
                self.reconnect();
                format!("no answer within {} ms", REDIS_TIMEOUT.as_millis())
            }
            Err(e) => format!("the Redis task failed: {e}"),
        };
        self.metrics.redis_error();
        self.retry_at_ms.store(
            now_ms() + RETRY_INTERVAL.as_millis() as i64,
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            let fallback = match self.on_error {
                OnRedisError::Refuse => {
                    "signed requests, TOTP logins and requests that need a fleet rate-limit \
                     lease get 503 until it is back"
                }
                OnRedisError::Local => {
                    "each replica's own replay window and rate-limit buckets decide until it is \
                     back"
                }
            };
            tracing::warn!(error = %error, "redis is unreachable: {fallback}");
        }
        None
    }

    /// Starts over with a new connection manager (connecting on its first use).
    fn reconnect(&self) {
        if let Ok(fresh) = connection_manager(&self.runtime, &self.client) {
            match self.connection.lock() {
                Ok(mut connection) => *connection = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
        }
    }

    /// What a failed call means for `kind`, by `redis.on_error`.
    fn answer<T>(&self, kind: ClaimKind, answer: Option<T>) -> Result<Answer<T>, FleetUnavailable> {
        match answer {
            Some(value) => Ok(Answer::Fleet(value)),
            None if self.on_error == OnRedisError::Local || kind.always_falls_back() => {
                self.metrics.replay_local_fallback(kind.label());
                Ok(Answer::Local)
            }
            None => Err(FleetUnavailable),
        }
    }
}

/// Warns, once at start, when Redis may evict claims: every claim has a TTL, so under a
/// `volatile-*` or `allkeys-*` policy a Redis at `maxmemory` forgets live signatures and they
/// replay on another replica. With `noeviction` (or no `maxmemory`) a full Redis refuses the
/// write instead, which `redis.on_error` then decides like an outage. A Redis that does not
/// answer `CONFIG GET` (managed services often refuse it) is not warned about.
async fn check_eviction_policy(client: redis::Client) {
    let asked = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let policy: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut connection)
            .await?;
        let memory: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory")
            .query_async(&mut connection)
            .await?;
        redis::RedisResult::Ok((policy.get(1).cloned(), memory.get(1).cloned()))
    };
    match tokio::time::timeout(Duration::from_secs(5), asked).await {
        Ok(Ok((Some(policy), Some(memory)))) => {
            if evicts_claims(&policy, &memory) {
                tracing::warn!(
                    maxmemory_policy = %policy,
                    maxmemory = %memory,
                    "redis may evict live replay claims when full (maxmemory-policy {policy}): a \
                     forgotten signature can replay on another replica; set maxmemory-policy \
                     noeviction for the replay window's Redis"
                );
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot read redis's maxmemory-policy"),
        Err(_) => tracing::debug!("redis did not answer CONFIG GET maxmemory-policy in time"),
    }
}

/// Whether a Redis with this `maxmemory-policy` and `maxmemory` may evict keys with a TTL.
fn evicts_claims(policy: &str, maxmemory: &str) -> bool {
    policy != "noeviction" && maxmemory.trim() != "0"
}

/// A connection manager on the Redis runtime that connects on first use and reconnects after
/// I/O errors.
fn connection_manager(
    runtime: &tokio::runtime::Handle,
    client: &redis::Client,
) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        // Answers are bounded by the timeout around each call, which also replaces a
        // connection that stopped answering.
        .set_response_timeout(None)
        // Reconnecting is retried by the first call after RETRY_INTERVAL, not by a backoff
        // inside the manager that calls would wait on.
        .set_number_of_retries(0);
    let _entered = runtime.enter();
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| format!("{}: {e}", keyward_config::fleet::URL_KEY))
}

/// The Redis client of `settings`: with a `rediss://` URL, TLS with the CA and client
/// certificate of `redis.tls` (read now; a reconnection uses what was read). Errors name the
/// key at fault, never the URL.
fn redis_client(settings: &FleetSettings) -> Result<redis::Client, String> {
    use keyward_config::fleet::URL_KEY;
    let url = settings.redis_url.as_str();
    let Some(tls) = &settings.tls else {
        return redis::Client::open(url)
            .map_err(|e| format!("{URL_KEY}: not a usable Redis URL ({:?})", e.kind()));
    };
    // The Redis client builds its rustls configuration on the process's default provider:
    // ring, as everywhere in keyward (a second call finds it installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = tls.load().map_err(|e| e.to_string())?;
    let certificates = redis::TlsCertificates {
        client_tls: pem
            .client
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: pem.ca,
    };
    redis::Client::build_with_tls(url, certificates).map_err(|e| {
        format!(
            "{URL_KEY}: cannot set up TLS to Redis ({:?}: {})",
            e.kind(),
            e.detail().unwrap_or("")
        )
    })
}

/// Connects once to a `rediss://` Redis (handshake and `PING`, within
/// [`TLS_CHECK_TIMEOUT`]) and fails when its certificate does not verify, or when it refuses
/// ours, naming the key to fix. A Redis that cannot be reached passes (it is logged): an
/// outage is `redis.on_error`'s business, and Redis need not be up before keyward. Nothing
/// to check for plain `redis://`. Blocking: runs on a thread of its own.
pub fn check_tls(settings: &FleetSettings) -> Result<(), String> {
    if settings.tls.is_none() {
        return Ok(());
    }
    let client = redis_client(settings)?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("keyward-redis-check".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| {
                    // The timer is made inside the runtime.
                    runtime.block_on(async move {
                        tokio::time::timeout(TLS_CHECK_TIMEOUT, async move {
                            let mut connection = client.get_multiplexed_async_connection().await?;
                            let pong: String =
                                redis::cmd("PING").query_async(&mut connection).await?;
                            redis::RedisResult::Ok(pong)
                        })
                        .await
                    })
                });
            let _ = sender.send(result);
        })
        .map_err(|e| format!("cannot start the Redis TLS check: {e}"))?;
    let outcome = receiver.recv_timeout(TLS_CHECK_TIMEOUT + Duration::from_secs(1));
    let error = match outcome {
        Ok(Ok(Ok(Ok(_)))) => return Ok(()),
        Ok(Ok(Ok(Err(e)))) => e,
        Ok(Ok(Err(_))) | Err(_) => {
            // A plain-text Redis port waits for the end of a "command" that never comes.
            tracing::warn!(
                "redis did not answer within {} s (is the port in redis.url a TLS port?): its \
                 TLS certificate is checked at first use",
                TLS_CHECK_TIMEOUT.as_secs()
            );
            return Ok(());
        }
        Ok(Err(e)) => return Err(format!("cannot start the Redis TLS check: {e}")),
    };
    match tls_failure(&error) {
        Some(failure) => Err(failure),
        None if error.is_timeout() => {
            tracing::warn!(
                error = %error,
                "redis did not answer (is the port in redis.url a TLS port?): its TLS \
                 certificate is checked at first use"
            );
            Ok(())
        }
        None => {
            tracing::warn!(
                error = %error,
                "cannot reach redis to check its TLS certificate now; it is checked at first use"
            );
            Ok(())
        }
    }
}

/// What a failed connection says about TLS, naming the key to fix; `None` when it failed for
/// another reason (unreachable, refused, a wrong password).
fn tls_failure(error: &redis::RedisError) -> Option<String> {
    use keyward_config::fleet::{CA_KEY, CERT_KEY, URL_KEY};
    use rustls::CertificateError;
    let tls = keyward_config::tls::find_rustls_error(error)?;
    let key = match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => URL_KEY,
        rustls::Error::InvalidCertificate(_) => CA_KEY,
        rustls::Error::AlertReceived(_) => CERT_KEY,
        // Not TLS at all on the other end (a plain-text port), and the like.
        _ => URL_KEY,
    };
    let described = keyward_config::tls::describe_tls_failure(
        tls,
        "redis.tls.ca (or the system's roots without it)",
        "redis.tls.cert and redis.tls.key",
    );
    Some(format!("{key}: {described}"))
}

fn count_of(counted: bool, count: i64, remaining_ms: i64) -> Count {
    Count {
        counted,
        count: count.max(0) as u64,
        remaining: Duration::from_millis(remaining_ms.max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_port() -> u16 {
        // Bound, then released: nothing listens there.
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn unreachable(on_redis_error: OnRedisError) -> (FleetClaims, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let settings = FleetSettings {
            redis_url: format!("redis://127.0.0.1:{}", closed_port()),
            tls: None,
            on_redis_error,
        };
        let fleet = FleetClaims::start(&settings, b"pepper", metrics.clone()).unwrap();
        (fleet, metrics)
    }

    #[test]
    fn urls_are_checked_without_repeating_them() {
        assert!(check_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_redis_url("redis://:secret@redis.internal:6380/2").is_ok());
        assert!(check_redis_url("unix:///run/redis.sock").is_ok());
        assert!(check_redis_url("rediss://:secret@redis.internal:6380/2").is_ok());
        assert!(check_redis_url("valkeys://127.0.0.1:6380").is_ok());
        for bad in [
            "http://secret@127.0.0.1:6379",
            "rediss://secret@127.0.0.1:6379/#insecure",
            "redis://secret@[::1",
            "",
        ] {
            let message = check_redis_url(bad).unwrap_err();
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn settings_never_print_the_url() {
        let settings = FleetSettings {
            redis_url: "redis://:topsecret@10.0.0.5:6379".into(),
            tls: None,
            on_redis_error: OnRedisError::Local,
        };
        let printed = format!("{settings:?}");
        assert!(
            !printed.contains("topsecret") && printed.contains("Local"),
            "{printed}"
        );
    }

    #[test]
    fn keys_are_fixed_size_separated_by_kind_and_by_store() {
        let metrics = Arc::new(Metrics::new());
        let settings = FleetSettings {
            redis_url: "redis://127.0.0.1:1".into(),
            tls: None,
            on_redis_error: OnRedisError::Refuse,
        };
        let a = FleetClaims::start(&settings, b"pepper a", metrics.clone()).unwrap();
        let b = FleetClaims::start(&settings, b"pepper b", metrics).unwrap();
        let key = a.key(ClaimKind::Signature, b"same");
        assert!(key.starts_with("keyward:replay:"));
        assert_eq!(key.len(), "keyward:replay:".len() + 64);
        assert_eq!(key, a.key(ClaimKind::Signature, b"same"), "stable");
        assert_ne!(key, b.key(ClaimKind::Signature, b"same"), "another store");
        let totp = a.key(ClaimKind::TotpFailures, b"same");
        let password = a.key(ClaimKind::PasswordFailures, b"same");
        assert!(totp.starts_with("keyward:throttle:") && password.starts_with("keyward:throttle:"));
        assert_ne!(totp, password, "kinds sharing a prefix still differ");
        assert!(a
            .key(ClaimKind::TotpCode, b"same")
            .starts_with("keyward:totp:"));
    }

    #[test]
    fn every_kind_has_its_fallback_series_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).unwrap();
        for kind in [
            ClaimKind::Signature,
            ClaimKind::TotpCode,
            ClaimKind::TotpFailures,
            ClaimKind::PasswordFailures,
        ] {
            let series = format!(
                "keyward_replay_local_fallback_total{{claim=\"{}\"}} 0",
                kind.label()
            );
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
    }

    #[tokio::test]
    async fn unreachable_redis_refuses_or_falls_back_quickly() {
        let (fleet, metrics) = unreachable(OnRedisError::Refuse);
        let started = std::time::Instant::now();
        let ttl = Duration::from_secs(1);
        assert_eq!(
            fleet.claim(ClaimKind::Signature, b"x", ttl).await,
            Err(FleetUnavailable)
        );
        // Within RETRY_INTERVAL the next call fails without trying.
        assert_eq!(
            fleet.claim(ClaimKind::TotpCode, b"x", ttl).await,
            Err(FleetUnavailable)
        );
        assert_eq!(
            fleet.count(ClaimKind::PasswordFailures, b"x", 3, ttl).await,
            Ok(Answer::Local),
            "password logins always fall back"
        );
        assert!(
            started.elapsed() < REDIS_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("keyward_redis_errors_total 1\n"), "{text}");
        assert!(
            text.contains(r#"keyward_replay_local_fallback_total{claim="password_throttle"} 1"#),
            "{text}"
        );

        let (fleet, metrics) = unreachable(OnRedisError::Local);
        assert_eq!(
            fleet.claim(ClaimKind::Signature, b"x", ttl).await,
            Ok(Answer::Local)
        );
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"keyward_replay_local_fallback_total{claim="signature"} 1"#),
            "{text}"
        );
    }
}
