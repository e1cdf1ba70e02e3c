//! PostgreSQL backend, for fleets: many keyward replicas share one database.
//!
//! Every mutation appends to the change feed and its audit record in the transaction that makes
//! it, and publishes the feed position with `pg_notify` (delivered at commit). Each replica
//! `LISTEN`s and reads the feed as soon as a notification arrives; the follower's poll remains
//! as the catch-up path for a replica whose listening connection was lost.
//!
//! Transactions run at PostgreSQL's default READ COMMITTED. What SQLite gets from its single
//! writer is made explicit here: key ids come from a per-user counter row (one UPDATE, which
//! locks the row), and feed rows are appended under a transaction-scoped advisory lock so
//! their sequence numbers are handed out in commit order.

use super::rows::{
    row_decoders, to_json, API_KEY_COLUMNS, SIGNATURE_KEY_COLUMNS, TOKEN_SELECT, USER_COLUMNS,
};
use super::{
    now_ms, ApiKey, ApiKeyRoll, AuditEvent, Change, ChangeKind, DirectoryLogin, FeedSignal,
    KeyUsage, NewApiKey, NewSignatureKey, NewToken, NewUser, PoolSettings, Quota, SignatureKey,
    Store, StoreError, Token, TokenScope, UsageCount, User, UserSource,
};
use async_trait::async_trait;
use keyward_core::limit::Limit;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// The notification channel every replica listens on.
pub const CHANNEL: &str = "keyward_changes";
/// Serializes appends to the change feed (see the module comment). Any constant unlikely to be
/// used by another application sharing the database.
const FEED_LOCK: i64 = 0x6b77_6665_6564_0001;
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The connection options of a URL: sqlx's reading of it, except that `require` with an
/// `sslrootcert` verifies the server against it, as libpq does (sqlx alone would not).
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let require_with_ca =
        |tls: super::PgTls| tls.mode.as_deref() == Some("require") && tls.root_cert.is_some();
    Ok(match super::PgTls::of(url).is_ok_and(require_with_ca) {
        true => options.ssl_mode(sqlx::postgres::PgSslMode::VerifyCa),
        false => options,
    })
}

/// A renewal's new expiry, rate limit change and quota change (see `Store::renew_api_key`).
type Renewal = (i64, Option<Option<Limit>>, Option<Option<Quota>>);

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and migrates. Migrations run under PostgreSQL's advisory lock (sqlx's
    /// migrator takes it), so replicas starting together against an empty database apply them
    /// once, one after another.
    pub async fn open(url: &str, settings: PoolSettings) -> Result<PostgresStore, StoreError> {
        let options = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// Opens one connection (TLS handshake and start-up included) and closes it: what
    /// `open` would meet, without migrating.
    pub async fn check_connection(url: &str) -> Result<(), StoreError> {
        use sqlx::{ConnectOptions, Connection};
        let connection = connect_options(url)?.connect().await?;
        connection.close().await?;
        Ok(())
    }

    /// Deletes at most `limit` rows of `table` whose `time` is before `before_ms`, oldest
    /// first (`key` names a row); the names are this file's constants, never input.
    async fn delete_oldest(
        &self,
        table: &str,
        key: &str,
        time: &str,
        before_ms: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN \
             (SELECT {key} FROM {table} WHERE {time} < $1 ORDER BY {time}, {key} LIMIT $2)"
        );
        let done = sqlx::query(&sql)
            .bind(before_ms)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Unexpired tokens `owner_id` holds (the `limits.tokens_per_user` count), on the pool or
    /// inside a transaction.
    async fn unexpired_tokens<'e>(
        executor: impl sqlx::Executor<'e, Database = Postgres>,
        owner_id: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tokens WHERE owner_id = $1 AND expires_at_ms > $2",
        )
        .bind(owner_id)
        .bind(now_ms)
        .fetch_one(executor)
        .await?;
        Ok(count.max(0) as u64)
    }

    /// Appends the change to the feed, publishes it, and writes its audit record, in the
    /// caller's transaction.
    async fn record_change(
        tx: &mut Transaction<'_, Postgres>,
        kind: ChangeKind,
        user_id: i64,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FEED_LOCK)
            .execute(&mut **tx)
            .await?;
        let at_ms = now_ms();
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO changes (kind, user_id, at_ms) VALUES ($1, $2, $3) RETURNING seq",
        )
        .bind(kind.as_str())
        .bind(user_id)
        .bind(at_ms)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(seq.to_string())
            .execute(&mut **tx)
            .await?;
        Self::insert_audit(tx, audit, at_ms).await
    }

    async fn insert_audit(
        tx: &mut Transaction<'_, Postgres>,
        audit: &AuditEvent,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit (at_ms, record) VALUES ($1, $2)")
            .bind(at_ms)
            .bind(audit.to_json())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Takes the user's next key id from `column`; the row stays locked until commit.
    async fn next_key_id(
        tx: &mut Transaction<'_, Postgres>,
        column: &'static str,
        user_id: i64,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(&format!(
            "UPDATE users SET {column} = {column} + 1 WHERE id = $1 RETURNING {column} - 1"
        ))
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("no user with id {user_id}")))
    }

    async fn record_usage(
        &self,
        table: &'static str,
        usage: &[KeyUsage],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {table} SET last_used_at_ms = $1, last_used_ip = $2 \
             WHERE user_id = $3 AND key_id = $4 AND last_used_at_ms < $1"
        );
        let mut tx = self.pool.begin().await?;
        for u in usage {
            sqlx::query(&sql)
                .bind(u.at_ms)
                .bind(&u.ip)
                .bind(u.user_id)
                .bind(u.key_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs `update` (an UPDATE of one active key) and returns the key as it is afterwards.
    /// Inserts a key under the user's next key id, in the caller's transaction.
    async fn insert_api_key(
        tx: &mut Transaction<'_, Postgres>,
        key: &NewApiKey,
    ) -> Result<ApiKey, StoreError> {
        let key_id = Self::next_key_id(tx, "next_api_key_id", key.user_id).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (user_id, key_id, secret_hash, description, created_at_ms, \
             created_by_id, created_by_name, valid_until_ms, valid_sources, functions, customers, \
             read_only, rate_limit_per_ks, rate_limit_burst, quota_requests, quota_period) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(key.user_id)
        .bind(key_id)
        .bind(&key.secret_hash)
        .bind(&key.description)
        .bind(now_ms())
        .bind(key.created_by_id)
        .bind(&key.created_by_name)
        .bind(key.valid_until_ms)
        .bind(to_json(&key.valid_sources))
        .bind(key.functions.as_deref().map(to_json))
        .bind(to_json(&key.customers))
        .bind(key.read_only)
        .bind(key.rate_limit.map(|l| l.per_kilosecond()))
        .bind(key.rate_limit.map(|l| i64::from(l.burst())))
        .bind(key.quota.map(|q| q.requests() as i64))
        .bind(key.quota.map(|q| q.period().as_str()))
        .fetch_one(&mut **tx)
        .await?;
        api_key_from_row(&row)
    }

    async fn change_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        update: &'static str,
        renewal: Option<Renewal>,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query(update).bind(user_id).bind(key_id);
        if let Some((valid_until_ms, rate_limit, quota)) = renewal {
            let new_limit = rate_limit.flatten();
            let new_quota = quota.flatten();
            query = query
                .bind(valid_until_ms)
                .bind(rate_limit.is_some())
                .bind(new_limit.map(|l| l.per_kilosecond()))
                .bind(new_limit.map(|l| i64::from(l.burst())))
                .bind(quota.is_some())
                .bind(new_quota.map(|q| q.requests() as i64))
                .bind(new_quota.map(|q| q.period().as_str()));
        }
        if query.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(None);
        }
        Self::record_change(&mut tx, ChangeKind::ApiKey, user_id, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND key_id = $2"
        ))
        .bind(user_id)
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let key = api_key_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Runs one UPDATE of user `id` (`$1`) with `value` (`$2`) and records a user change.
    async fn update_user<V>(
        &self,
        id: i64,
        update: &'static str,
        value: V,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>
    where
        V: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(update)
            .bind(id)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn audit_rows(
        &self,
        query: sqlx::query::QueryAs<'_, Postgres, (i64, String), sqlx::postgres::PgArguments>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|(seq, text)| AuditEvent::from_json(*seq, text))
            .collect()
    }
}

/// Holds a `LISTEN` connection for as long as the process runs; reconnects with backoff when
/// it is lost. Every notification and every (re)connection wakes the follower, which reads
/// the feed from its last position, so changes made while the connection was down are
/// caught up rather than lost.
async fn listen_forever(pool: PgPool, signal: Arc<FeedSignal>) {
    let mut backoff = LISTEN_BACKOFF_MIN;
    // One log line when notifications stop, one when they are back.
    let mut down = false;
    loop {
        let mut listener = match connect_listener(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "change notifications unavailable; following the feed by polling until they are back");
                    down = true;
                }
                signal.listening.set(0);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                continue;
            }
        };
        if down {
            tracing::warn!("change notifications are back");
        }
        backoff = LISTEN_BACKOFF_MIN;
        signal.listening.set(1);
        // Whatever changed while not listening is read now.
        signal.wake.notify_one();
        // `Ok(None)` or an error: the connection is gone.
        while let Ok(Some(_)) = listener.try_recv().await {
            signal.wake.notify_one();
        }
        // Reported once; while reconnecting fails, `down` keeps the next attempts quiet.
        tracing::warn!("change notification connection lost; reconnecting");
        down = true;
        signal.listening.set(0);
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // try_recv reports a lost connection instead of reconnecting silently: the loop above
    // must know, to wake the follower after reconnecting.
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

row_decoders!(PgRow);

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, domain, customer, functions, external, password_hash, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(&user.name)
        .bind(&user.domain)
        .bind(&user.customer)
        .bind(to_json(&user.functions))
        .bind(user.external)
        .bind(&user.password_hash)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::Conflict(format!(
                "a user named {:?} already exists",
                user.name
            )));
        };
        let created = user_from_row(&row)?;
        Self::record_change(&mut tx, ChangeKind::User, created.id, &audit).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn set_user_locked(
        &self,
        id: i64,
        locked: bool,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE users SET locked = $2 WHERE id = $1")
            .bind(id)
            .bind(locked)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if locked {
            sqlx::query("DELETE FROM tokens WHERE owner_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_user_password(
        &self,
        id: i64,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE users SET password_hash = $2 WHERE id = $1";
        self.update_user(id, sql, password_hash.to_owned(), audit)
            .await
    }

    async fn set_user_totp(
        &self,
        id: i64,
        secret: Option<&str>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE users SET totp_secret = $2 WHERE id = $1";
        self.update_user(id, sql, secret.map(str::to_owned), audit)
            .await
    }

    async fn upsert_directory_user(
        &self,
        login: DirectoryLogin,
        mut audit: AuditEvent,
    ) -> Result<Option<User>, StoreError> {
        let functions = to_json(&login.functions);
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE name = $1 FOR UPDATE"
        ))
        .bind(&login.name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| user_from_row(&row))
        .transpose()?;
        let id = match existing {
            Some(user) if user.source != login.source => return Ok(None),
            Some(user) => {
                let changed = user.customer != login.customer
                    || user.functions != login.functions
                    || user.external != login.external;
                if changed {
                    sqlx::query(
                        "UPDATE users SET customer = $1, functions = $2, external = $3 WHERE id = $4",
                    )
                    .bind(&login.customer)
                    .bind(&functions)
                    .bind(login.external)
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                    audit.operation = "user.update".into();
                    Self::record_change(&mut tx, ChangeKind::User, user.id, &audit).await?;
                }
                user.id
            }
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO users (name, customer, functions, external, password_hash, \
                     created_at_ms, source) VALUES ($1, $2, $3, $4, '', $5, $6) \
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                )
                .bind(&login.name)
                .bind(&login.customer)
                .bind(&functions)
                .bind(login.external)
                .bind(now_ms())
                .bind(login.source.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(format!("{:?} was created meanwhile", login.name))
                })?;
                audit.operation = "user.create".into();
                Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
                id
            }
        };
        if let Some(seen) = login.seen_ms {
            sqlx::query("UPDATE users SET directory_seen_ms = $1 WHERE id = $2")
                .bind(seen)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let user = user_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn directory_users_to_revalidate(
        &self,
        after_id: i64,
        limit: i64,
        seen_since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE source = 'ldap' AND NOT locked AND id > $1 \
             AND (directory_seen_ms >= $2 \
              OR EXISTS (SELECT 1 FROM api_keys k WHERE k.user_id = u.id AND NOT k.revoked \
                         AND (k.valid_until_ms = 0 OR k.valid_until_ms > $3)) \
              OR EXISTS (SELECT 1 FROM signature_keys s WHERE s.user_id = u.id AND NOT s.deleted \
                         AND (s.valid_until_ms = 0 OR s.valid_until_ms > $3)) \
              OR EXISTS (SELECT 1 FROM tokens t WHERE t.owner_id = u.id AND t.expires_at_ms > $3)) \
             ORDER BY id LIMIT $4"
        ))
        .bind(after_id)
        .bind(seen_since_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn claim_directory_sweep(
        &self,
        holder: &str,
        every_ms: i64,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // ON CONFLICT DO UPDATE locks the row and checks WHERE against its latest version:
        // of replicas asking together, one updates it and the others find it held.
        let claimed = sqlx::query(
            "INSERT INTO directory_sweeps (id, last_ms, holder, lease_until_ms) \
             VALUES (1, 0, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, \
             lease_until_ms = excluded.lease_until_ms \
             WHERE (directory_sweeps.holder IS NULL AND directory_sweeps.last_ms <= $3) \
             OR (directory_sweeps.holder IS NOT NULL AND directory_sweeps.lease_until_ms <= $4)",
        )
        .bind(holder)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(now_ms.saturating_sub(every_ms))
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        Ok(claimed)
    }

    async fn renew_directory_sweep(
        &self,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE directory_sweeps SET lease_until_ms = $1 WHERE id = 1 AND holder = $2",
        )
        .bind(now_ms.saturating_add(lease_ms))
        .bind(holder)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn finish_directory_sweep(&self, holder: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE directory_sweeps SET holder = NULL, lease_until_ms = NULL, last_ms = $1 \
             WHERE id = 1 AND holder = $2",
        )
        .bind(now_ms)
        .bind(holder)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn api_key_pepper(&self) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut fresh);
        // Replicas starting together race here; the unique name makes the first one win and
        // everyone read its value.
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ('api_key_pepper', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&fresh[..])
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'api_key_pepper'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn create_api_key(
        &self,
        key: NewApiKey,
        mut audit: AuditEvent,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = Self::insert_api_key(&mut tx, &key).await?;
        audit.target_credential = created.prefix();
        Self::record_change(&mut tx, ChangeKind::ApiKey, key.user_id, &audit).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn roll_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        roll: ApiKeyRoll,
        mut audit: AuditEvent,
    ) -> Result<Option<(ApiKey, ApiKey)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE: two rolls of one key at once make one replacement, not two.
        let Some(old) = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = $1 AND key_id = $2 AND NOT revoked FOR UPDATE"
        ))
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| api_key_from_row(&row))
        .transpose()?
        else {
            return Ok(None);
        };
        if !roll.may_roll(&old) {
            return Ok(None);
        }
        let created = Self::insert_api_key(&mut tx, &roll.replacement(&old)).await?;
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET valid_until_ms = $3 WHERE user_id = $1 AND key_id = $2 \
             RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(user_id)
        .bind(key_id)
        .bind(roll.old_key_end(&old))
        .fetch_one(&mut *tx)
        .await?;
        let old = api_key_from_row(&row)?;
        audit.target_credential = format!("{} {}", old.prefix(), created.prefix());
        Self::record_change(&mut tx, ChangeKind::ApiKey, user_id, &audit).await?;
        tx.commit().await?;
        Ok(Some((old, created)))
    }

    async fn api_key(&self, user_id: i64, key_id: i64) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = $1 AND key_id = $2 AND NOT revoked"
        ))
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| api_key_from_row(&row))
        .transpose()
    }

    async fn list_api_keys(&self, user_id: i64) -> Result<Vec<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = $1 AND NOT revoked ORDER BY key_id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_key_from_row)
        .collect()
    }

    async fn renew_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        valid_until_ms: i64,
        rate_limit: Option<Option<Limit>>,
        quota: Option<Option<Quota>>,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError> {
        let sql = "UPDATE api_keys SET valid_until_ms = $3, \
                   rate_limit_per_ks = CASE WHEN $4 THEN $5 ELSE rate_limit_per_ks END, \
                   rate_limit_burst = CASE WHEN $4 THEN $6 ELSE rate_limit_burst END, \
                   quota_requests = CASE WHEN $7 THEN $8 ELSE quota_requests END, \
                   quota_period = CASE WHEN $7 THEN $9 ELSE quota_period END \
                   WHERE user_id = $1 AND key_id = $2 AND NOT revoked";
        let renewal = Some((valid_until_ms, rate_limit, quota));
        self.change_api_key(user_id, key_id, sql, renewal, audit)
            .await
    }

    async fn revoke_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError> {
        let sql = "UPDATE api_keys SET revoked = TRUE \
                   WHERE user_id = $1 AND key_id = $2 AND NOT revoked";
        self.change_api_key(user_id, key_id, sql, None, audit).await
    }

    async fn record_api_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        self.record_usage("api_keys", usage).await
    }

    async fn add_api_key_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        // One order for every writer: two replicas adding to the same rows lock them in the
        // same order, so they queue instead of deadlocking.
        let mut counts = counts.to_vec();
        counts.sort_by_key(|c| (c.user_id, c.key_id, c.hour_ms));
        let mut tx = self.pool.begin().await?;
        for c in &counts {
            sqlx::query(
                "INSERT INTO api_key_usage \
                 (user_id, key_id, hour_ms, accepted, refused, rate_limited) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, key_id, hour_ms) DO UPDATE SET \
                 accepted = api_key_usage.accepted + excluded.accepted, \
                 refused = api_key_usage.refused + excluded.refused, \
                 rate_limited = api_key_usage.rate_limited + excluded.rate_limited",
            )
            .bind(c.user_id)
            .bind(c.key_id)
            .bind(c.hour_ms)
            .bind(c.accepted)
            .bind(c.refused)
            .bind(c.rate_limited)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn api_key_usage(
        &self,
        user_id: i64,
        key_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, key_id, hour_ms, accepted, refused, rate_limited \
             FROM api_key_usage WHERE user_id = $1 AND key_id = $2 \
             AND hour_ms >= $3 AND hour_ms < $4 ORDER BY hour_ms",
        )
        .bind(user_id)
        .bind(key_id)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageCount {
                    user_id: row.try_get("user_id")?,
                    key_id: row.try_get("key_id")?,
                    hour_ms: row.try_get("hour_ms")?,
                    accepted: row.try_get("accepted")?,
                    refused: row.try_get("refused")?,
                    rate_limited: row.try_get("rate_limited")?,
                })
            })
            .collect()
    }

    async fn prune_api_key_usage(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.delete_oldest("api_key_usage", "ctid", "hour_ms", before_ms, limit)
            .await
    }

    async fn create_signature_key(
        &self,
        key: NewSignatureKey,
        mut audit: AuditEvent,
    ) -> Result<SignatureKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key_id = Self::next_key_id(&mut tx, "next_signature_key_id", key.user_id).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO signature_keys (user_id, key_id, public_key, description, \
             created_at_ms, valid_until_ms, valid_sources) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING {SIGNATURE_KEY_COLUMNS}"
        ))
        .bind(key.user_id)
        .bind(key_id)
        .bind(&key.public_key)
        .bind(&key.description)
        .bind(now_ms())
        .bind(key.valid_until_ms)
        .bind(to_json(&key.valid_sources))
        .fetch_one(&mut *tx)
        .await?;
        let created = signature_key_from_row(&row)?;
        audit.target_credential = format!("{}/{key_id}", audit.target_user);
        Self::record_change(&mut tx, ChangeKind::SignatureKey, key.user_id, &audit).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn signature_key(
        &self,
        user_id: i64,
        key_id: i64,
    ) -> Result<Option<SignatureKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SIGNATURE_KEY_COLUMNS} FROM signature_keys \
             WHERE user_id = $1 AND key_id = $2 AND NOT deleted"
        ))
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| signature_key_from_row(&row))
        .transpose()
    }

    async fn list_signature_keys(&self, user_id: i64) -> Result<Vec<SignatureKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SIGNATURE_KEY_COLUMNS} FROM signature_keys \
             WHERE user_id = $1 AND NOT deleted ORDER BY key_id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(signature_key_from_row)
        .collect()
    }

    async fn delete_signature_key(
        &self,
        user_id: i64,
        key_id: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE signature_keys SET deleted = TRUE \
             WHERE user_id = $1 AND key_id = $2 AND NOT deleted",
        )
        .bind(user_id)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::record_change(&mut tx, ChangeKind::SignatureKey, user_id, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_signature_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        self.record_usage("signature_keys", usage).await
    }

    async fn create_token(
        &self,
        token: NewToken,
        cap: Option<u64>,
        audit: AuditEvent,
    ) -> Result<Option<Token>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(cap) = cap {
            // The owner's row is locked until the commit: one user's mints take turns, and
            // each counts what the previous ones committed.
            sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(token.owner_id)
                .fetch_optional(&mut *tx)
                .await?;
            if Self::unexpired_tokens(&mut *tx, token.owner_id, now_ms()).await? >= cap {
                return Ok(None);
            }
        }
        sqlx::query(
            "INSERT INTO tokens (name, token_hash, owner_id, domain, tenant, level, \
             created_at_ms, expires_at_ms, custom_source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&token.name)
        .bind(&token.token_hash)
        .bind(token.owner_id)
        .bind(&token.domain)
        .bind(&token.tenant)
        .bind(&token.level)
        .bind(now_ms())
        .bind(token.expires_at_ms)
        .bind(&token.custom_source)
        .execute(&mut *tx)
        .await?;
        Self::record_change(&mut tx, ChangeKind::Token, token.owner_id, &audit).await?;
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE t.name = $1"))
            .bind(&token.name)
            .fetch_one(&mut *tx)
            .await?;
        let created = token_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn token_by_hash(&self, token_hash: &[u8]) -> Result<Option<Token>, StoreError> {
        sqlx::query(&format!("{TOKEN_SELECT} WHERE t.token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    async fn token_by_name(&self, name: &str) -> Result<Option<Token>, StoreError> {
        sqlx::query(&format!("{TOKEN_SELECT} WHERE t.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    async fn list_tokens(&self, scope: TokenScope, now_ms: i64) -> Result<Vec<Token>, StoreError> {
        let rows = match scope {
            TokenScope::Owner { owner_id, domain } => {
                sqlx::query(&format!(
                    "{TOKEN_SELECT} WHERE t.owner_id = $1 AND t.domain = $2 \
                     AND t.tenant IS NULL AND t.expires_at_ms > $3 ORDER BY t.created_at_ms"
                ))
                .bind(owner_id)
                .bind(domain)
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?
            }
            TokenScope::Tenant(tenant) => {
                sqlx::query(&format!(
                    "{TOKEN_SELECT} WHERE t.tenant = $1 AND t.expires_at_ms > $2 \
                     ORDER BY t.created_at_ms"
                ))
                .bind(tenant)
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_token(&self, name: &str, audit: AuditEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One statement: of two replicas deleting the same token, exactly one sees a row.
        let owner: Option<i64> =
            sqlx::query_scalar("DELETE FROM tokens WHERE name = $1 RETURNING owner_id")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(owner) = owner else {
            return Ok(false);
        };
        Self::record_change(&mut tx, ChangeKind::Token, owner, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_tokens(&self, owner_id: i64, now_ms: i64) -> Result<u64, StoreError> {
        Self::unexpired_tokens(&self.pool, owner_id, now_ms).await
    }

    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT seq, kind, user_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(seq, kind, user_id)| {
                Ok(Change {
                    seq,
                    kind: ChangeKind::parse(&kind).ok_or_else(|| {
                        StoreError::Corrupt(format!("changes.kind: unknown {kind:?}"))
                    })?,
                    user_id,
                })
            })
            .collect()
    }

    async fn latest_change(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn prune_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM changes WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn prune_expired_tokens(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.delete_oldest("tokens", "name", "expires_at_ms", before_ms, limit)
            .await
    }

    async fn prune_audit(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        self.delete_oldest("audit", "seq", "at_ms", before_ms, limit)
            .await
    }

    async fn append_audit(&self, audit: AuditEvent) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit (at_ms, record) VALUES ($1, $2)")
            .bind(now_ms())
            .bind(audit.to_json())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_since(&self, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        self.audit_rows(
            sqlx::query_as("SELECT seq, record FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit),
        )
        .await
    }

    async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        self.audit_rows(
            sqlx::query_as(
                "SELECT seq, record FROM (SELECT seq, record FROM audit ORDER BY seq DESC \
                 LIMIT $1) newest ORDER BY seq",
            )
            .bind(limit),
        )
        .await
    }

    fn listen(&self, signal: Arc<FeedSignal>) -> bool {
        tokio::spawn(listen_forever(self.pool.clone(), signal));
        true
    }
}
