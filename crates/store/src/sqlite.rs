//! SQLite backend: one file, WAL journal, `synchronous=FULL` so an acknowledged write survives
//! `kill -9` and power loss alike. Admin writes are rare; the request path reads from caches.

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
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct SqliteStore {
    pool: SqlitePool,
}

/// The database holds the API key pepper, TOTP secrets and password hashes: its directory is
/// created 0700 and the file 0600 before SQLite opens it (SQLite gives `-wal` and `-shm` the
/// database file's mode). An existing directory or file readable by others is left as it is,
/// with a warning naming it.
fn prepare_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let wide = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
            .filter(|mode| mode & 0o077 != 0)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            if let Some(mode) = wide(dir) {
                tracing::warn!(
                    directory = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the store's directory is accessible to other users; it should be 0700"
                );
            }
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::Task(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let file = Path::new(&name);
                if let Some(mode) = wide(file) {
                    tracing::warn!(
                        file = %file.display(),
                        mode = format!("{mode:o}"),
                        "the store file is readable by other users; it should be 0600"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Task(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

impl SqliteStore {
    pub async fn open(path: &Path, pool: PoolSettings) -> Result<SqliteStore, StoreError> {
        prepare_files(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Every transaction here writes. `BEGIN IMMEDIATE` takes the write lock at the start,
    /// under `busy_timeout`; a deferred `BEGIN` that reads first and then writes fails at once
    /// with SQLITE_BUSY when another connection committed in between (WAL snapshot), which
    /// surfaced as a 503 on admin writes racing the last-use flusher.
    async fn write_transaction(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
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
             (SELECT {key} FROM {table} WHERE {time} < ? ORDER BY {time}, {key} LIMIT ?)"
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
        executor: impl sqlx::Executor<'e, Database = Sqlite>,
        owner_id: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tokens WHERE owner_id = ? AND expires_at_ms > ?",
        )
        .bind(owner_id)
        .bind(now_ms)
        .fetch_one(executor)
        .await?;
        Ok(count.max(0) as u64)
    }

    /// Appends the change to the feed and its audit record, in the caller's transaction.
    async fn record_change(
        tx: &mut Transaction<'_, Sqlite>,
        kind: ChangeKind,
        user_id: i64,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let at_ms = now_ms();
        sqlx::query("INSERT INTO changes (kind, user_id, at_ms) VALUES (?, ?, ?)")
            .bind(kind.as_str())
            .bind(user_id)
            .bind(at_ms)
            .execute(&mut **tx)
            .await?;
        Self::insert_audit(tx, audit, at_ms).await
    }

    async fn insert_audit(
        tx: &mut Transaction<'_, Sqlite>,
        audit: &AuditEvent,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit (at_ms, record) VALUES (?, ?)")
            .bind(at_ms)
            .bind(audit.to_json())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Takes the user's next key id from `column` (locking the user's row until commit).
    async fn next_key_id(
        tx: &mut Transaction<'_, Sqlite>,
        column: &'static str,
        user_id: i64,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(&format!(
            "UPDATE users SET {column} = {column} + 1 WHERE id = ? RETURNING {column} - 1"
        ))
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("no user with id {user_id}")))
    }

    /// Records last uses of keys in `table` (`api_keys` or `signature_keys`), in one
    /// transaction; an older use never overwrites a newer one.
    async fn record_usage(
        &self,
        table: &'static str,
        usage: &[KeyUsage],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {table} SET last_used_at_ms = ?, last_used_ip = ? \
             WHERE user_id = ? AND key_id = ? AND last_used_at_ms < ?"
        );
        let mut tx = self.write_transaction().await?;
        for u in usage {
            sqlx::query(&sql)
                .bind(u.at_ms)
                .bind(&u.ip)
                .bind(u.user_id)
                .bind(u.key_id)
                .bind(u.at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs `update` (an UPDATE of one active key), records the change and returns the key as
    /// it is after the update (`revoked`: as it was just before being revoked).
    /// Inserts a key under the user's next key id, in the caller's transaction.
    async fn insert_api_key(
        tx: &mut Transaction<'_, Sqlite>,
        key: &NewApiKey,
    ) -> Result<ApiKey, StoreError> {
        let key_id = Self::next_key_id(tx, "next_api_key_id", key.user_id).await?;
        sqlx::query(
            "INSERT INTO api_keys (user_id, key_id, secret_hash, description, created_at_ms, \
             created_by_id, created_by_name, valid_until_ms, valid_sources, functions, customers, \
             read_only, rate_limit_per_ks, rate_limit_burst, quota_requests, quota_period) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        .execute(&mut **tx)
        .await?;
        Self::active_api_key(&mut **tx, key.user_id, key_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an inserted key vanished".into()))
    }

    /// An active (not revoked) key, read through the pool or a transaction.
    async fn active_api_key<'e>(
        executor: impl sqlx::Executor<'e, Database = Sqlite>,
        user_id: i64,
        key_id: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = ? AND key_id = ? AND revoked = 0"
        ))
        .bind(user_id)
        .bind(key_id)
        .fetch_optional(executor)
        .await?
        .map(|row| api_key_from_row(&row))
        .transpose()
    }

    async fn change_api_key<'q>(
        &self,
        user_id: i64,
        key_id: i64,
        update: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        revoked: bool,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.write_transaction().await?;
        if update.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(None);
        }
        Self::record_change(&mut tx, ChangeKind::ApiKey, user_id, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ? AND key_id = ? \
             AND revoked = ?"
        ))
        .bind(user_id)
        .bind(key_id)
        .bind(revoked)
        .fetch_one(&mut *tx)
        .await?;
        let key = api_key_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Runs `update` (an UPDATE of one user) and records a user change, atomically.
    async fn update_user<'q>(
        &self,
        id: i64,
        update: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let done = update.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }
}

row_decoders!(SqliteRow);

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        let functions = serde_json::to_string(&user.functions)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write_transaction().await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (name, domain, customer, functions, external, password_hash, \
             created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING \
             RETURNING id",
        )
        .bind(&user.name)
        .bind(&user.domain)
        .bind(&user.customer)
        .bind(&functions)
        .bind(user.external)
        .bind(&user.password_hash)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = inserted else {
            return Err(StoreError::Conflict(format!(
                "a user named {:?} already exists",
                user.name
            )));
        };
        Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let created = user_from_row(&row)?;
        tx.commit().await?;
        Ok(created)
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
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
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query("UPDATE users SET locked = ? WHERE id = ?")
            .bind(locked)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if locked {
            sqlx::query("DELETE FROM tokens WHERE owner_id = ?")
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
        let update = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id);
        self.update_user(id, update, audit).await
    }

    async fn upsert_directory_user(
        &self,
        login: DirectoryLogin,
        mut audit: AuditEvent,
    ) -> Result<Option<User>, StoreError> {
        let functions = to_json(&login.functions);
        let mut tx = self.write_transaction().await?;
        let existing = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?"))
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
                        "UPDATE users SET customer = ?, functions = ?, external = ? WHERE id = ?",
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
                     created_at_ms, source) VALUES (?, ?, ?, ?, '', ?, ?) RETURNING id",
                )
                .bind(&login.name)
                .bind(&login.customer)
                .bind(&functions)
                .bind(login.external)
                .bind(now_ms())
                .bind(login.source.as_str())
                .fetch_one(&mut *tx)
                .await?;
                audit.operation = "user.create".into();
                Self::record_change(&mut tx, ChangeKind::User, id, &audit).await?;
                id
            }
        };
        if let Some(seen) = login.seen_ms {
            sqlx::query("UPDATE users SET directory_seen_ms = ? WHERE id = ?")
                .bind(seen)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
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
            "SELECT {USER_COLUMNS} FROM users u WHERE source = 'ldap' AND locked = 0 AND id > ? \
             AND (directory_seen_ms >= ? \
              OR EXISTS (SELECT 1 FROM api_keys k WHERE k.user_id = u.id AND k.revoked = 0 \
                         AND (k.valid_until_ms = 0 OR k.valid_until_ms > ?)) \
              OR EXISTS (SELECT 1 FROM signature_keys s WHERE s.user_id = u.id AND s.deleted = 0 \
                         AND (s.valid_until_ms = 0 OR s.valid_until_ms > ?)) \
              OR EXISTS (SELECT 1 FROM tokens t WHERE t.owner_id = u.id AND t.expires_at_ms > ?)) \
             ORDER BY id LIMIT ?"
        ))
        .bind(after_id)
        .bind(seen_since_ms)
        .bind(now_ms)
        .bind(now_ms)
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
        let mut tx = self.write_transaction().await?;
        let claimed = sqlx::query(
            "INSERT INTO directory_sweeps (id, last_ms, holder, lease_until_ms) VALUES (1, 0, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, \
             lease_until_ms = excluded.lease_until_ms \
             WHERE (directory_sweeps.holder IS NULL AND directory_sweeps.last_ms <= ?) \
             OR (directory_sweeps.holder IS NOT NULL AND directory_sweeps.lease_until_ms <= ?)",
        )
        .bind(holder)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(now_ms.saturating_sub(every_ms))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn renew_directory_sweep(
        &self,
        holder: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE directory_sweeps SET lease_until_ms = ? WHERE id = 1 AND holder = ?",
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
            "UPDATE directory_sweeps SET holder = NULL, lease_until_ms = NULL, last_ms = ? \
             WHERE id = 1 AND holder = ?",
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
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ('api_key_pepper', ?) \
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
        let mut tx = self.write_transaction().await?;
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
        let mut tx = self.write_transaction().await?;
        let Some(old) = Self::active_api_key(&mut *tx, user_id, key_id).await? else {
            return Ok(None);
        };
        if !roll.may_roll(&old) {
            return Ok(None);
        }
        let created = Self::insert_api_key(&mut tx, &roll.replacement(&old)).await?;
        sqlx::query("UPDATE api_keys SET valid_until_ms = ? WHERE user_id = ? AND key_id = ?")
            .bind(roll.old_key_end(&old))
            .bind(user_id)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        audit.target_credential = format!("{} {}", old.prefix(), created.prefix());
        Self::record_change(&mut tx, ChangeKind::ApiKey, user_id, &audit).await?;
        let old = Self::active_api_key(&mut *tx, user_id, key_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a rolled key vanished".into()))?;
        tx.commit().await?;
        Ok(Some((old, created)))
    }

    async fn api_key(&self, user_id: i64, key_id: i64) -> Result<Option<ApiKey>, StoreError> {
        Self::active_api_key(&self.pool, user_id, key_id).await
    }

    async fn list_api_keys(&self, user_id: i64) -> Result<Vec<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = ? AND revoked = 0 ORDER BY key_id"
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
        let new_limit = rate_limit.flatten();
        let new_quota = quota.flatten();
        let update = sqlx::query(
            "UPDATE api_keys SET valid_until_ms = ?, \
             rate_limit_per_ks = CASE WHEN ? THEN ? ELSE rate_limit_per_ks END, \
             rate_limit_burst = CASE WHEN ? THEN ? ELSE rate_limit_burst END, \
             quota_requests = CASE WHEN ? THEN ? ELSE quota_requests END, \
             quota_period = CASE WHEN ? THEN ? ELSE quota_period END \
             WHERE user_id = ? AND key_id = ? AND revoked = 0",
        )
        .bind(valid_until_ms)
        .bind(rate_limit.is_some())
        .bind(new_limit.map(|l| l.per_kilosecond()))
        .bind(rate_limit.is_some())
        .bind(new_limit.map(|l| i64::from(l.burst())))
        .bind(quota.is_some())
        .bind(new_quota.map(|q| q.requests() as i64))
        .bind(quota.is_some())
        .bind(new_quota.map(|q| q.period().as_str()))
        .bind(user_id)
        .bind(key_id);
        self.change_api_key(user_id, key_id, update, false, audit)
            .await
    }

    async fn revoke_api_key(
        &self,
        user_id: i64,
        key_id: i64,
        audit: AuditEvent,
    ) -> Result<Option<ApiKey>, StoreError> {
        let update = sqlx::query(
            "UPDATE api_keys SET revoked = 1 WHERE user_id = ? AND key_id = ? AND revoked = 0",
        )
        .bind(user_id)
        .bind(key_id);
        self.change_api_key(user_id, key_id, update, true, audit)
            .await
    }

    async fn record_api_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        self.record_usage("api_keys", usage).await
    }

    async fn add_api_key_usage(&self, counts: &[UsageCount]) -> Result<(), StoreError> {
        // One order for every writer: two replicas adding to the same rows lock them in the
        // same order, so they queue instead of deadlocking.
        let mut counts = counts.to_vec();
        counts.sort_by_key(|c| (c.user_id, c.key_id, c.hour_ms));
        let mut tx = self.write_transaction().await?;
        for c in &counts {
            sqlx::query(
                "INSERT INTO api_key_usage \
                 (user_id, key_id, hour_ms, accepted, refused, rate_limited) \
                 VALUES (?, ?, ?, ?, ?, ?) \
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
             FROM api_key_usage WHERE user_id = ? AND key_id = ? \
             AND hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms",
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
        self.delete_oldest("api_key_usage", "rowid", "hour_ms", before_ms, limit)
            .await
    }

    async fn create_signature_key(
        &self,
        key: NewSignatureKey,
        mut audit: AuditEvent,
    ) -> Result<SignatureKey, StoreError> {
        let mut tx = self.write_transaction().await?;
        let key_id = Self::next_key_id(&mut tx, "next_signature_key_id", key.user_id).await?;
        sqlx::query(
            "INSERT INTO signature_keys (user_id, key_id, public_key, description, \
             created_at_ms, valid_until_ms, valid_sources) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.user_id)
        .bind(key_id)
        .bind(&key.public_key)
        .bind(&key.description)
        .bind(now_ms())
        .bind(key.valid_until_ms)
        .bind(to_json(&key.valid_sources))
        .execute(&mut *tx)
        .await?;
        audit.target_credential = format!("{}/{key_id}", audit.target_user);
        Self::record_change(&mut tx, ChangeKind::SignatureKey, key.user_id, &audit).await?;
        let row = sqlx::query(&format!(
            "SELECT {SIGNATURE_KEY_COLUMNS} FROM signature_keys WHERE user_id = ? AND key_id = ?"
        ))
        .bind(key.user_id)
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let created = signature_key_from_row(&row)?;
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
             WHERE user_id = ? AND key_id = ? AND deleted = 0"
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
             WHERE user_id = ? AND deleted = 0 ORDER BY key_id"
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
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query(
            "UPDATE signature_keys SET deleted = 1 \
             WHERE user_id = ? AND key_id = ? AND deleted = 0",
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

    async fn set_user_totp(
        &self,
        id: i64,
        secret: Option<&str>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let update = sqlx::query("UPDATE users SET totp_secret = ? WHERE id = ?")
            .bind(secret)
            .bind(id);
        self.update_user(id, update, audit).await
    }

    async fn create_token(
        &self,
        token: NewToken,
        cap: Option<u64>,
        audit: AuditEvent,
    ) -> Result<Option<Token>, StoreError> {
        // BEGIN IMMEDIATE: one writer at a time, so the count below holds until the commit.
        let mut tx = self.write_transaction().await?;
        if let Some(cap) = cap {
            if Self::unexpired_tokens(&mut *tx, token.owner_id, now_ms()).await? >= cap {
                return Ok(None);
            }
        }
        sqlx::query(
            "INSERT INTO tokens (name, token_hash, owner_id, domain, tenant, level, \
             created_at_ms, expires_at_ms, custom_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE t.name = ?"))
            .bind(&token.name)
            .fetch_one(&mut *tx)
            .await?;
        let created = token_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn token_by_hash(&self, token_hash: &[u8]) -> Result<Option<Token>, StoreError> {
        sqlx::query(&format!("{TOKEN_SELECT} WHERE t.token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| token_from_row(&row))
            .transpose()
    }

    async fn token_by_name(&self, name: &str) -> Result<Option<Token>, StoreError> {
        sqlx::query(&format!("{TOKEN_SELECT} WHERE t.name = ?"))
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
                    "{TOKEN_SELECT} WHERE t.owner_id = ? AND t.domain = ? AND t.tenant IS NULL \
                     AND t.expires_at_ms > ? ORDER BY t.created_at_ms"
                ))
                .bind(owner_id)
                .bind(domain)
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?
            }
            TokenScope::Tenant(tenant) => {
                sqlx::query(&format!(
                    "{TOKEN_SELECT} WHERE t.tenant = ? AND t.expires_at_ms > ? \
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
        let mut tx = self.write_transaction().await?;
        let owner: Option<i64> = sqlx::query_scalar("SELECT owner_id FROM tokens WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(owner) = owner else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM tokens WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        Self::record_change(&mut tx, ChangeKind::Token, owner, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_tokens(&self, owner_id: i64, now_ms: i64) -> Result<u64, StoreError> {
        Self::unexpired_tokens(&self.pool, owner_id, now_ms).await
    }

    async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, user_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(Change {
                    seq: row.try_get("seq")?,
                    kind: ChangeKind::parse(&kind).ok_or_else(|| {
                        StoreError::Corrupt(format!("changes.kind: unknown {kind:?}"))
                    })?,
                    user_id: row.try_get("user_id")?,
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
        let done = sqlx::query("DELETE FROM changes WHERE at_ms < ?")
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
        let mut tx = self.write_transaction().await?;
        Self::insert_audit(&mut tx, &audit, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_since(&self, after: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, record FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|(seq, text)| AuditEvent::from_json(*seq, text))
            .collect()
    }

    async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, record FROM (SELECT seq, record FROM audit ORDER BY seq DESC LIMIT ?) \
             ORDER BY seq",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|(seq, text)| AuditEvent::from_json(*seq, text))
            .collect()
    }

    fn listen(&self, _signal: Arc<FeedSignal>) -> bool {
        false
    }
}
