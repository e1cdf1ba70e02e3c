//! The credential store: one trait, one implementation per backend.
//!
//! Every mutation also appends a row to a change feed in the same transaction. A running
//! keyward reads that feed to drop cache entries that another process (the `keyward user`
//! CLI, or another replica) made stale, so the feed is part of the store's contract, not an
//! optimisation.

pub mod audit;
#[cfg(test)]
mod contract;
mod db;
pub mod health;
pub mod postgres;
mod rows;
pub mod scratch;
pub mod sqlite;

use async_trait::async_trait;
pub use health::StoreHealth;
use keyward_core::limit::Limit;
pub use keyward_core::quota::{Quota, QuotaPeriod};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the store lives: `sqlite://PATH` (one process, or processes on one machine) or
/// `postgres://...` (a fleet sharing one database).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Never prints a PostgreSQL password.
impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

/// The store as messages name it: the SQLite path, or the PostgreSQL URL without its password.
impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Postgres(url) => match url.split_once("://") {
                // The last `@` ends the user information, whatever the password holds.
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => write!(f, "{scheme}://***@{host}"),
                    None => f.write_str(url),
                },
                None => f.write_str("postgres://..."),
            },
        }
    }
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://data/keyward.db".into());
            }
            // What `serve` would refuse (or silently misread) is refused here, so that
            // `check-config` finds it.
            if path == ":memory:" || path.starts_with("file::memory:") {
                return Err(
                    "an in-memory database would lose every key at restart: give a file path"
                        .into(),
                );
            }
            if path.contains('?') {
                return Err("sqlite:// takes a file path only, without ?options".into());
            }
            let path = PathBuf::from(path);
            if path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir() {
                return Err(format!(
                    "{} is a directory: name the database file in it, e.g. {}",
                    path.display(),
                    path.join("keyward.db").display()
                ));
            }
            if let Some(existing) = path.ancestors().skip(1).find(|a| a.exists()) {
                if !existing.as_os_str().is_empty() && !existing.is_dir() {
                    return Err(format!("{} is not a directory", existing.display()));
                }
            }
            Ok(StoreUrl::Sqlite(path))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Its TLS parameters first, for a message that says which one is wrong.
            PgTls::of(url)?;
            // sqlx's message may quote the URL, password included: not repeated here.
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|_| "not a valid PostgreSQL URL".to_owned())?;
            Ok(StoreUrl::Postgres(url.to_owned()))
        } else {
            Err("unsupported store URL: use sqlite://PATH or postgres://...".into())
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreUrl::Postgres(_))
    }

    /// The TLS parameters of a PostgreSQL URL; `None` for SQLite.
    pub fn postgres_tls(&self) -> Option<PgTls> {
        match self {
            StoreUrl::Postgres(url) => PgTls::of(url).ok(),
            StoreUrl::Sqlite(_) => None,
        }
    }
}

/// The `sslmode` values sqlx (like libpq) knows.
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The TLS parameters of a PostgreSQL URL, as sqlx reads them: `sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey` (and sqlx's other spellings, `ssl-mode`, `ssl-root-cert`, `ssl-ca`,
/// `ssl-cert`, `ssl-key`). The files are paths, read at every new connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    /// Lowercase; `None` when the URL says none (sqlx's default, `prefer`: TLS when the
    /// server offers it, its certificate unchecked).
    pub mode: Option<String>,
    /// The CA the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// The client certificate (chain) and its key, for `hostssl ... cert` in `pg_hba.conf`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl PgTls {
    /// Reads and checks the parameters (not the files). Messages never repeat the URL.
    pub fn of(url: &str) -> Result<PgTls, String> {
        let parsed = url::Url::parse(url).map_err(|_| "not a valid PostgreSQL URL".to_owned())?;
        let mut tls = PgTls::default();
        for (name, value) in parsed.query_pairs() {
            let path = || Some(PathBuf::from(&*value));
            match &*name {
                "sslmode" | "ssl-mode" => tls.mode = Some(value.to_ascii_lowercase()),
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => tls.root_cert = path(),
                "sslcert" | "ssl-cert" => tls.cert = path(),
                "sslkey" | "ssl-key" => tls.key = path(),
                _ => {}
            }
        }
        if let Some(mode) = &tls.mode {
            if !SSL_MODES.contains(&mode.as_str()) {
                return Err(format!(
                    "sslmode={mode} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => Err("sslcert without sslkey: give both or neither".into()),
            (None, Some(_)) => Err("sslkey without sslcert: give both or neither".into()),
            _ => Ok(tls),
        }
    }

    /// Whether the server's certificate is verified: `verify-ca`, `verify-full`, or (as libpq
    /// does) `require` with an `sslrootcert`.
    pub fn verifies(&self) -> bool {
        match self.mode.as_deref() {
            Some("verify-ca" | "verify-full") => true,
            Some("require") => self.root_cert.is_some(),
            _ => false,
        }
    }

    /// Whether every connection is TLS (`require` and the `verify-*` modes).
    pub fn required(&self) -> bool {
        matches!(
            self.mode.as_deref(),
            Some("require" | "verify-ca" | "verify-full")
        )
    }
}

/// How the store's connections are sized (`store.max_connections`, `store.connect_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Longest wait for a connection: bounds how long an uncached request waits on a store
    /// that does not answer before it is refused with 503.
    pub acquire_timeout: std::time::Duration,
}

impl PoolSettings {
    /// One SQLite file takes one writer at a time; a network database serves many.
    pub fn default_for(url: &StoreUrl) -> PoolSettings {
        PoolSettings {
            max_connections: if url.is_postgres() { 16 } else { 4 },
            acquire_timeout: std::time::Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// The store could not be reached (as opposed to refusing one statement): what marks the
    /// store down in [`StoreHealth`] and `/readyz`.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Unavailable(e) => !matches!(
                e,
                sqlx::Error::Database(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
            ),
            StoreError::Task(_) => true,
            _ => false,
        }
    }
}

/// The audit record of one admin call or CLI change (`keyward audit tail` reads them back).
///
/// A change is written in the same transaction as its record, so the store never holds one
/// without the other; calls that change nothing (refusals, lists) are appended on their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the audit table (0 until stored).
    #[serde(default, skip_serializing_if = "unstored")]
    pub seq: i64,
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    pub request_id: String,
    /// The authenticated caller, `-` when authentication failed.
    pub actor: String,
    pub auth_method: String,
    pub operation: String,
    pub target_user: String,
    /// Prefix, `user/keyId` or token name; never a secret. A create fills in what it made.
    pub target_credential: String,
    /// The HTTP status of the answer.
    pub status: u16,
    pub outcome: String,
    pub source_ip: Option<String>,
}

fn unstored(seq: &i64) -> bool {
    *seq == 0
}

impl AuditEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn from_json(seq: i64, text: &str) -> Result<AuditEvent, StoreError> {
        let mut event: AuditEvent = serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("audit.record: {e}")))?;
        event.seq = seq;
        Ok(event)
    }
}

/// How a backend with change notifications tells the change follower to read the feed now.
pub struct FeedSignal {
    pub wake: tokio::sync::Notify,
    /// `keyward_change_feed_listening`: 1 while notifications arrive.
    pub listening: prometheus::IntGauge,
}

/// A user (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub domain: Option<String>,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub external: bool,
    /// argon2id PHC string.
    pub password_hash: String,
    pub totp_secret: Option<String>,
    pub locked: bool,
    pub created_at_ms: i64,
    pub source: UserSource,
}

/// Where a user comes from (`keyward user list` shows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserSource {
    /// Created with the CLI, the bootstrap or the admin API; checked against its password.
    #[default]
    Local,
    /// Created and updated by directory logins (`identity.ldap`); no local password.
    Ldap,
    /// Created and updated by OpenID Connect sign-ins (`identity.oidc`); no local password.
    Oidc,
}

impl UserSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Ldap => "ldap",
            UserSource::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Option<UserSource> {
        match s {
            "local" => Some(UserSource::Local),
            "ldap" => Some(UserSource::Ldap),
            "oidc" => Some(UserSource::Oidc),
            _ => None,
        }
    }
}

/// What a directory login (or a revalidation) says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryLogin {
    /// `Ldap` or `Oidc`: a user of one source is never taken over by a login from another.
    pub source: UserSource,
    pub name: String,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub external: bool,
    /// A login's time (it counts as a cached login until the cache forgets it); `None` for a
    /// revalidation, which only updates what the directory says.
    pub seen_ms: Option<i64>,
}

impl User {
    /// The id as written in API key prefixes (`15a6`).
    pub fn id_hex(&self) -> String {
        format!("{:x}", self.id)
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub domain: Option<String>,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub external: bool,
    pub password_hash: String,
}

/// An API key as stored (SPEC §2). The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub user_id: i64,
    pub key_id: i64,
    pub secret_hash: Vec<u8>,
    pub description: String,
    pub created_at_ms: i64,
    pub created_by_id: i64,
    pub created_by_name: String,
    /// 0 = never expires.
    pub valid_until_ms: i64,
    pub valid_sources: Vec<String>,
    /// `None`: the key carries the user's functions, whatever they are at the time of use.
    pub functions: Option<Vec<String>>,
    pub customers: Vec<String>,
    pub read_only: bool,
    pub last_used_at_ms: i64,
    pub last_used_ip: Option<String>,
    /// The key's own rate limit; `None`: `rate_limits.per_credential`.
    pub rate_limit: Option<Limit>,
    /// Requests per UTC day or month, counted fleet-wide; `None`: no quota.
    pub quota: Option<Quota>,
}

impl ApiKey {
    /// `<userIdHex>/<keyId>`.
    pub fn prefix(&self) -> String {
        format!("{:x}/{}", self.user_id, self.key_id)
    }
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub user_id: i64,
    pub secret_hash: Vec<u8>,
    pub description: String,
    pub created_by_id: i64,
    pub created_by_name: String,
    pub valid_until_ms: i64,
    pub valid_sources: Vec<String>,
    pub functions: Option<Vec<String>>,
    pub customers: Vec<String>,
    pub read_only: bool,
    pub rate_limit: Option<Limit>,
    pub quota: Option<Quota>,
}

/// One day, in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// The longest lifetime any credential may be given, in days (100 years): a request for more
/// is refused (412), whoever asks, so that no time computation comes near `i64`'s end.
pub const MAX_LIFETIME_DAYS: i64 = 36_500;
/// [`MAX_LIFETIME_DAYS`] in milliseconds.
pub const MAX_LIFETIME_MS: i64 = MAX_LIFETIME_DAYS * DAY_MS;

/// `now_ms + days`, or `None` when `days` is below 1 or above [`MAX_LIFETIME_DAYS`] (or the sum
/// would not fit: checked arithmetic, never a wrap or a debug-build panic).
pub fn expiry_after_days(now_ms: i64, days: i64) -> Option<i64> {
    if !(1..=MAX_LIFETIME_DAYS).contains(&days) {
        return None;
    }
    days.checked_mul(DAY_MS)
        .and_then(|ms| now_ms.checked_add(ms))
}

/// A key rolled over (`…/roll`): the replacement gets a new secret and the old key's
/// description, sources, constraints and rate limit; its lifetime is the old key's
/// (`validUntil − created`) counted from now, capped at `max_lifetime_ms` as a create's is (a
/// key that never expires gives one that never expires only when `keep_never_expires`, i.e. for
/// a POWER-USER). The old key ends after the grace period, or at its own expiry if that comes
/// first. An expired key is not rolled.
#[derive(Debug, Clone)]
pub struct ApiKeyRoll {
    pub secret_hash: Vec<u8>,
    pub created_by_id: i64,
    pub created_by_name: String,
    pub now_ms: i64,
    pub grace_ms: i64,
    /// The longest lifetime the caller may give a key (`api_keys.max_expiration_days`, or
    /// [`MAX_LIFETIME_MS`] for a POWER-USER).
    pub max_lifetime_ms: i64,
    /// Whether a key that never expires is replaced by one that never expires.
    pub keep_never_expires: bool,
    /// The new key's quota: `None` the old key's, `Some(None)` none, `Some(Some(q))` `q`.
    pub quota: Option<Option<Quota>>,
}

impl ApiKeyRoll {
    /// Whether `old` may be rolled now: not expired (an expired key is 404 to roll).
    pub fn may_roll(&self, old: &ApiKey) -> bool {
        old.valid_until_ms == 0 || old.valid_until_ms > self.now_ms
    }

    pub fn replacement(&self, old: &ApiKey) -> NewApiKey {
        let cap = self.max_lifetime_ms.clamp(0, MAX_LIFETIME_MS);
        let valid_until_ms = match old.valid_until_ms {
            0 if self.keep_never_expires => 0,
            0 => self.now_ms.saturating_add(cap),
            until => {
                let lifetime = until.saturating_sub(old.created_at_ms).clamp(0, cap);
                self.now_ms.saturating_add(lifetime)
            }
        };
        NewApiKey {
            user_id: old.user_id,
            secret_hash: self.secret_hash.clone(),
            description: old.description.clone(),
            created_by_id: self.created_by_id,
            created_by_name: self.created_by_name.clone(),
            valid_until_ms,
            valid_sources: old.valid_sources.clone(),
            functions: old.functions.clone(),
            customers: old.customers.clone(),
            read_only: old.read_only,
            rate_limit: old.rate_limit,
            quota: self.quota.unwrap_or(old.quota),
        }
    }

    /// When the old key stops working.
    pub fn old_key_end(&self, old: &ApiKey) -> i64 {
        let end = self.now_ms.saturating_add(self.grace_ms.max(0));
        match old.valid_until_ms {
            0 => end,
            until => until.min(end),
        }
    }
}

/// An enrolled Ed25519 public key (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureKey {
    pub user_id: i64,
    pub key_id: i64,
    pub public_key: Vec<u8>,
    pub description: String,
    pub created_at_ms: i64,
    /// 0 = never expires.
    pub valid_until_ms: i64,
    pub valid_sources: Vec<String>,
    pub last_used_at_ms: i64,
    pub last_used_ip: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewSignatureKey {
    pub user_id: i64,
    pub public_key: Vec<u8>,
    pub description: String,
    pub valid_until_ms: i64,
    pub valid_sources: Vec<String>,
}

/// A gateway token (SPEC §4); the token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub token_hash: Vec<u8>,
    pub owner_id: i64,
    pub owner_name: String,
    pub domain: String,
    pub tenant: Option<String>,
    /// `DEFAULT` or `ADMINISTRATIVE`: the level of the login that minted it.
    pub level: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub custom_source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub token_hash: Vec<u8>,
    pub owner_id: i64,
    pub domain: String,
    pub tenant: Option<String>,
    pub level: String,
    pub expires_at_ms: i64,
    pub custom_source: Option<String>,
}

/// Which tokens to list.
#[derive(Debug, Clone)]
pub enum TokenScope {
    /// One user's tokens for one domain (`Host`).
    Owner { owner_id: i64, domain: String },
    /// A tenant's tokens.
    Tenant(String),
}

/// The last use of a key, written in batches off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub user_id: i64,
    pub key_id: i64,
    pub at_ms: i64,
    pub ip: String,
}

/// One hour of one API key's requests (`…/usage`): counted in memory on every replica and
/// added to the stored hour in batches ([`Store::add_api_key_usage`]), never written on the
/// request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageCount {
    pub user_id: i64,
    pub key_id: i64,
    /// The start of the UTC hour, ms since the epoch (a multiple of [`HOUR_MS`]).
    pub hour_ms: i64,
    pub accepted: i64,
    pub refused: i64,
    pub rate_limited: i64,
}

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the UTC hour `at_ms` falls in.
pub fn hour_start(at_ms: i64) -> i64 {
    at_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The start of the UTC day `at_ms` falls in.
pub fn day_start(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS) * DAY_MS
}

/// What a change-feed row says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Anything about a user: lock, unlock, password, functions.
    User,
    /// One of the user's API keys was created, renewed or revoked.
    ApiKey,
    /// One of the user's signature keys was enrolled or deleted.
    SignatureKey,
    /// One of the user's tokens was deleted.
    Token,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::User => "user",
            ChangeKind::ApiKey => "api_key",
            ChangeKind::SignatureKey => "signature_key",
            ChangeKind::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "user" => Some(ChangeKind::User),
            "api_key" => Some(ChangeKind::ApiKey),
            "signature_key" => Some(ChangeKind::SignatureKey),
            "token" => Some(ChangeKind::Token),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
    pub user_id: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError>;
    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Returns false when there is no such user. Locking also deletes the user's tokens.
    async fn set_user_locked(
        &self,
        id: i64,
        locked: bool,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;
    /// Returns false when there is no such user.
    async fn set_user_password(
        &self,
        id: i64,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;
    /// Sets (or with `None` removes) the user's TOTP secret; false when there is no such user.
    async fn set_user_totp(
        &self,
        id: i64,
        secret: Option<&str>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Creates the directory user `login.name` (`source: login.source`, `ldap` or `oidc`, no
    /// password) or updates its customer, functions and external flag; a change is published (ChangeKind::User) and
    /// audited (`audit` with operation `user.create` or `user.update`), an unchanged user is
    /// written only for `seen_ms`. `None`: a user of another source (local, or the other
    /// provider) has that name (it is not touched).
    async fn upsert_directory_user(
        &self,
        login: DirectoryLogin,
        audit: AuditEvent,
    ) -> Result<Option<User>, StoreError>;
    /// Unlocked directory users with `id > after_id` that hold live credentials (an active API
    /// key or signature key, an unexpired token) or logged in at or after `seen_since_ms`,
    /// by id, at most `limit`.
    async fn directory_users_to_revalidate(
        &self,
        after_id: i64,
        limit: i64,
        seen_since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<User>, StoreError>;
    /// Takes the directory sweep's lease for `holder` until `now_ms + lease_ms` when nobody
    /// holds it and the last sweep finished at least `every_ms` ago, or when its holder's lease
    /// ran out (a replica that crashed mid-sweep). One conditional write: of replicas asking
    /// together, one gets it; a held lease is never taken however long its sweep runs.
    async fn claim_directory_sweep(
        &self,
        holder: &str,
        every_ms: i64,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Extends `holder`'s lease to `now_ms + lease_ms`; false when `holder` no longer holds
    /// it (it ran out and another replica took it over): the sweep then stops.
    async fn renew_directory_sweep(
        &self,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Ends `holder`'s sweep at `now_ms`: the lease is released and the next sweep may start
    /// `every_ms` after `now_ms`. False when `holder` no longer held the lease.
    async fn finish_directory_sweep(&self, holder: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// The server-side key API key hashes are computed with; made on first use.
    async fn api_key_pepper(&self) -> Result<Vec<u8>, StoreError>;
    /// Stores a new key under the user's next key id.
    async fn create_api_key(&self, key: NewApiKey, audit: AuditEvent)
        -> Result<ApiKey, StoreError>;
    /// Replaces an active key by a new one with its settings, and ends the old one after a
    /// grace period, in one transaction (one change, one audit record naming both prefixes).
    /// Returns (old key as it now is, new key); `None` when there is no such key.
    async fn roll_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        roll: ApiKeyRoll,
        audit: AuditEvent,
    ) -> Result<Option<(ApiKey, ApiKey)>, StoreError>;
    /// An active (not revoked) key.
    async fn api_key(&self, user_id: i64, key_id: i64) -> Result<Option<ApiKey>, StoreError>;
    /// The user's active keys, oldest first.
    async fn list_api_keys(&self, user_id: i64) -> Result<Vec<ApiKey>, StoreError>;
    /// Sets a new expiry on an active key, its own rate limit when `rate_limit` is `Some`
    /// (`Some(None)` removes it), and its quota when `quota` is `Some` (likewise); `None` when
    /// there is no such key.
    async fn renew_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        valid_until_ms: i64,
        rate_limit: Option<Option<Limit>>,
        quota: Option<Option<Quota>>,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError>;
    /// Revokes an active key; `None` when there is no such key.
    async fn revoke_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError>;
    /// Records last uses, in one transaction.
    async fn record_api_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError>;
    /// Adds request counts to their (key, hour) rows, creating the rows that do not exist, in
    /// one transaction: batches from several replicas, or several flushes, sum.
    async fn add_api_key_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError>;
    /// One key's hour rows with `from_ms <= hour_ms < to_ms`, oldest first.
    async fn api_key_usage(
        &self,
        user_id: i64,
        key_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageCount>, StoreError>;
    /// Deletes at most `limit` usage rows of hours that started before `before_ms`; returns
    /// how many.
    async fn prune_api_key_usage(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError>;

    /// Enrolls a key under the user's next key id.
    async fn create_signature_key(
        &self,
        key: NewSignatureKey,
        audit: AuditEvent,
    ) -> Result<SignatureKey, StoreError>;
    /// An enrolled (not deleted) key.
    async fn signature_key(
        &self,
        user_id: i64,
        key_id: i64,
    ) -> Result<Option<SignatureKey>, StoreError>;
    async fn list_signature_keys(&self, user_id: i64) -> Result<Vec<SignatureKey>, StoreError>;
    /// Deletes an enrolled key; false when there is no such key.
    async fn delete_signature_key(
        &self,
        user_id: i64,
        key_id: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;
    async fn record_signature_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError>;

    /// Inserts `token`; with a `cap`, only while its owner holds fewer unexpired tokens than
    /// that, counted in the insert's transaction so that concurrent mints cannot pass it
    /// together (`None`: the owner is at the cap, nothing written).
    async fn create_token(
        &self,
        token: NewToken,
        cap: Option<u64>,
        audit: AuditEvent,
    ) -> Result<Option<Token>, StoreError>;
    async fn token_by_hash(&self, token_hash: &[u8]) -> Result<Option<Token>, StoreError>;
    async fn token_by_name(&self, name: &str) -> Result<Option<Token>, StoreError>;
    /// Unexpired tokens in `scope`, oldest first.
    async fn list_tokens(&self, scope: TokenScope, now_ms: i64) -> Result<Vec<Token>, StoreError>;
    /// Deletes one token; false when there is no such token.
    async fn delete_token(&self, name: &str, audit: AuditEvent) -> Result<bool, StoreError>;
    /// How many unexpired tokens `owner_id` holds, in every domain and tenant (the
    /// `limits.tokens_per_user` cap).
    async fn count_tokens(&self, owner_id: i64, now_ms: i64) -> Result<u64, StoreError>;

    /// Change-feed rows with `seq > after`, oldest first.
    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// The newest change-feed sequence number (0 when empty).
    async fn latest_change(&self) -> Result<i64, StoreError>;
    /// Drops change-feed rows older than `before_ms`; returns how many.
    async fn prune_changes(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Deletes at most `limit` tokens that expired before `before_ms`; returns how many.
    async fn prune_expired_tokens(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError>;
    /// Deletes at most `limit` audit records written before `before_ms`, oldest first;
    /// returns how many.
    async fn prune_audit(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError>;

    /// Appends the record of a call that changed nothing (a refusal, a list).
    async fn append_audit(&self, audit: AuditEvent) -> Result<(), StoreError>;
    /// Audit records with `seq > after`, oldest first.
    async fn audit_since(&self, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError>;
    /// The newest `limit` audit records, oldest first.
    async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError>;

    /// Starts following change notifications, when the backend has them (PostgreSQL
    /// `LISTEN`), on the current runtime: `signal.wake` is notified on every change and after
    /// every reconnection, so the follower reads the feed at once instead of at its next poll.
    /// Returns false when the backend has no notifications (SQLite: the poll is all there is).
    fn listen(&self, signal: Arc<FeedSignal>) -> bool;
}

pub use db::{check_connection, connect, housekeep, Db, Pruned, Retention, EXPIRED_TOKEN_KEEP};
pub use keyward_core::time::now_ms;

/// The time arithmetic of create, renew and roll, over edge values and pseudo-random ones (a
/// property test without a framework: every combination of the edge values, then 200 000
/// xorshift draws). In a debug build any overflow would panic; the properties say the results
/// also make sense.
#[cfg(test)]
mod time_arithmetic {
    use super::*;

    const EDGES: [i64; 16] = [
        i64::MIN,
        i64::MIN + 1,
        -9_000_000_000_000_000_000,
        -DAY_MS,
        -1,
        0,
        1,
        DAY_MS,
        1_700_000_000_000,
        4_102_444_800_000,
        MAX_LIFETIME_MS,
        MAX_LIFETIME_MS + 1,
        9_000_000_000_000_000_000,
        i64::MAX / 2,
        i64::MAX - 1,
        i64::MAX,
    ];

    fn key(created: i64, until: i64) -> ApiKey {
        ApiKey {
            user_id: 2,
            key_id: 1,
            secret_hash: Vec::new(),
            description: String::new(),
            created_at_ms: created,
            created_by_id: 1,
            created_by_name: String::new(),
            valid_until_ms: until,
            valid_sources: Vec::new(),
            functions: None,
            customers: Vec::new(),
            read_only: false,
            last_used_at_ms: 0,
            last_used_ip: None,
            rate_limit: None,
            quota: None,
        }
    }

    fn roll(now: i64, grace: i64, cap: i64, keep: bool) -> ApiKeyRoll {
        ApiKeyRoll {
            secret_hash: Vec::new(),
            created_by_id: 1,
            created_by_name: String::new(),
            now_ms: now,
            grace_ms: grace,
            max_lifetime_ms: cap,
            keep_never_expires: keep,
            quota: None,
        }
    }

    /// What must hold for one roll, whatever the inputs.
    fn check(now: i64, created: i64, until: i64, grace: i64, cap: i64, keep: bool) {
        let old = key(created, until);
        let r = roll(now, grace, cap, keep);
        let new = r.replacement(&old).valid_until_ms;
        let end = r.old_key_end(&old);
        let cap = cap.clamp(0, MAX_LIFETIME_MS);
        let case = format!("now={now} created={created} until={until} grace={grace} cap={cap}");
        if until == 0 && keep {
            assert_eq!(new, 0, "{case}");
        } else {
            // Never before now (unless now itself is so close to i64::MAX that it saturates),
            // never more than the cap after it.
            assert!(new >= now, "{case}: {new}");
            assert!(new as i128 <= now as i128 + cap as i128, "{case}: {new}");
            if now > 0 {
                assert_ne!(
                    new, 0,
                    "{case}: a lifetime never turns into 'never expires'"
                );
            }
        }
        // The old key ends no later than its own end and no later than now + grace.
        if until != 0 {
            assert!(end <= until, "{case}: {end}");
        }
        assert!(
            end as i128 <= now as i128 + grace.max(0) as i128,
            "{case}: {end}"
        );
        // An expired key is never rolled.
        if until != 0 && until <= now {
            assert!(!r.may_roll(&old), "{case}");
        }
    }

    fn check_days(now: i64, days: i64) {
        match expiry_after_days(now, days) {
            Some(at) => {
                assert!((1..=MAX_LIFETIME_DAYS).contains(&days));
                assert_eq!(at as i128, now as i128 + days as i128 * DAY_MS as i128);
            }
            None => assert!(
                !(1..=MAX_LIFETIME_DAYS).contains(&days)
                    || now as i128 + days as i128 * DAY_MS as i128 > i64::MAX as i128,
                "now={now} days={days}"
            ),
        }
    }

    #[test]
    fn every_combination_of_edge_values() {
        for now in EDGES {
            for created in EDGES {
                for until in EDGES {
                    for grace in [0, 1, 86_400_000, i64::MAX, -1, i64::MIN] {
                        for cap in [0, 365 * DAY_MS, MAX_LIFETIME_MS, i64::MAX, -1] {
                            check(now, created, until, grace, cap, true);
                            check(now, created, until, grace, cap, false);
                        }
                    }
                }
            }
            for days in EDGES.iter().copied().chain([36_500, 36_501, 9_000_000_000]) {
                check_days(now, days);
            }
        }
    }

    #[test]
    fn random_values() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Half the draws near the present and realistic lifetimes, half anywhere.
            match state % 4 {
                0 => state as i64,
                1 => 1_700_000_000_000 + (state % (200 * 365 * DAY_MS as u64)) as i64,
                2 => (state % (100_000 * DAY_MS as u64)) as i64 - 1000 * DAY_MS,
                _ => EDGES[(state % EDGES.len() as u64) as usize],
            }
        };
        for _ in 0..200_000 {
            let (now, created, until, grace, cap) = (next(), next(), next(), next(), next());
            check(now, created, until, grace, cap, now % 2 == 0);
            check_days(now, until % 50_000);
        }
    }

    #[test]
    fn the_issue_case_a_saturated_key_rolled_with_grace_zero() {
        let now = 1_800_000_000_000;
        let old = key(now - 1000, i64::MAX);
        let r = roll(now, 0, MAX_LIFETIME_MS, true);
        assert_eq!(r.replacement(&old).valid_until_ms, now + MAX_LIFETIME_MS);
        assert_eq!(r.old_key_end(&old), now);
    }
}
