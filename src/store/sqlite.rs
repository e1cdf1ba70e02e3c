//! SQLite backend: one file, WAL journal, `synchronous=FULL` so an acknowledged write survives
//! `kill -9` and power loss alike. Admin writes are rare; the request path reads from caches.

use super::{
    now_ms, ApiKey, Change, ChangeKind, KeyUsage, NewApiKey, NewSignatureKey, NewToken, NewUser,
    SignatureKey, Store, StoreError, Token, TokenScope, User,
};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::time::Duration;

pub struct SqliteStore {
    pool: SqlitePool,
}

const API_KEY_COLUMNS: &str = "user_id, key_id, secret_hash, description, created_at_ms, \
                               created_by_id, created_by_name, valid_until_ms, valid_sources, \
                               functions, customers, read_only, last_used_at_ms, last_used_ip";

const USER_COLUMNS: &str = "id, name, domain, customer, functions, external, password_hash, \
                            totp_secret, locked, created_at_ms";

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
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        prepare_files(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
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

    async fn record_change(
        tx: &mut Transaction<'_, Sqlite>,
        kind: ChangeKind,
        user_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO changes (kind, user_id, at_ms) VALUES (?, ?, ?)")
            .bind(kind.as_str())
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        Ok(())
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
    async fn change_api_key<'q>(
        &self,
        user_id: i64,
        key_id: i64,
        update: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        revoked: bool,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.write_transaction().await?;
        if update.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(None);
        }
        Self::record_change(&mut tx, ChangeKind::ApiKey, user_id).await?;
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
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let done = update.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::record_change(&mut tx, ChangeKind::User, id).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn json_list(row: &SqliteRow, column: &str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    let functions: Option<String> = row.try_get("functions")?;
    let functions = functions
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("api_keys.functions: {e}")))?;
    Ok(ApiKey {
        user_id: row.try_get("user_id")?,
        key_id: row.try_get("key_id")?,
        secret_hash: row.try_get("secret_hash")?,
        description: row.try_get("description")?,
        created_at_ms: row.try_get("created_at_ms")?,
        created_by_id: row.try_get("created_by_id")?,
        created_by_name: row.try_get("created_by_name")?,
        valid_until_ms: row.try_get("valid_until_ms")?,
        valid_sources: json_list(row, "valid_sources")?,
        functions,
        customers: json_list(row, "customers")?,
        read_only: row.try_get("read_only")?,
        last_used_at_ms: row.try_get("last_used_at_ms")?,
        last_used_ip: row.try_get("last_used_ip")?,
    })
}

const SIGNATURE_KEY_COLUMNS: &str = "user_id, key_id, public_key, description, created_at_ms, \
                                     valid_until_ms, valid_sources, last_used_at_ms, last_used_ip";

fn signature_key_from_row(row: &SqliteRow) -> Result<SignatureKey, StoreError> {
    Ok(SignatureKey {
        user_id: row.try_get("user_id")?,
        key_id: row.try_get("key_id")?,
        public_key: row.try_get("public_key")?,
        description: row.try_get("description")?,
        created_at_ms: row.try_get("created_at_ms")?,
        valid_until_ms: row.try_get("valid_until_ms")?,
        valid_sources: json_list(row, "valid_sources")?,
        last_used_at_ms: row.try_get("last_used_at_ms")?,
        last_used_ip: row.try_get("last_used_ip")?,
    })
}

const TOKEN_SELECT: &str = "SELECT t.name, t.token_hash, t.owner_id, u.name AS owner_name, \
                            t.domain, t.tenant, t.level, t.created_at_ms, t.expires_at_ms, \
                            t.custom_source FROM tokens t JOIN users u ON u.id = t.owner_id";

fn token_from_row(row: &SqliteRow) -> Result<Token, StoreError> {
    Ok(Token {
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        owner_id: row.try_get("owner_id")?,
        owner_name: row.try_get("owner_name")?,
        domain: row.try_get("domain")?,
        tenant: row.try_get("tenant")?,
        level: row.try_get("level")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        custom_source: row.try_get("custom_source")?,
    })
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    let functions = json_list(row, "functions")?;
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        domain: row.try_get("domain")?,
        customer: row.try_get("customer")?,
        functions,
        external: row.try_get("external")?,
        password_hash: row.try_get("password_hash")?,
        totp_secret: row.try_get("totp_secret")?,
        locked: row.try_get("locked")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let functions = serde_json::to_string(&user.functions)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write_transaction().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (name, domain, customer, functions, external, password_hash, \
             created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.domain)
        .bind(&user.customer)
        .bind(&functions)
        .bind(user.external)
        .bind(&user.password_hash)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a user named {:?} already exists",
                user.name
            )));
        }
        let id = inserted.last_insert_rowid();
        Self::record_change(&mut tx, ChangeKind::User, id).await?;
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

    async fn set_user_locked(&self, id: i64, locked: bool) -> Result<bool, StoreError> {
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
        Self::record_change(&mut tx, ChangeKind::User, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_user_password(&self, id: i64, password_hash: &str) -> Result<bool, StoreError> {
        let update = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id);
        self.update_user(id, update).await
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

    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKey, StoreError> {
        let mut tx = self.write_transaction().await?;
        let key_id: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(key_id), 0) + 1 FROM api_keys WHERE user_id = ?",
        )
        .bind(key.user_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_keys (user_id, key_id, secret_hash, description, created_at_ms, \
             created_by_id, created_by_name, valid_until_ms, valid_sources, functions, customers, \
             read_only) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&mut *tx)
        .await?;
        Self::record_change(&mut tx, ChangeKind::ApiKey, key.user_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ? AND key_id = ?"
        ))
        .bind(key.user_id)
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let created = api_key_from_row(&row)?;
        tx.commit().await?;
        Ok(created)
    }

    async fn api_key(&self, user_id: i64, key_id: i64) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys \
             WHERE user_id = ? AND key_id = ? AND revoked = 0"
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
    ) -> Result<Option<ApiKey>, StoreError> {
        let update = sqlx::query(
            "UPDATE api_keys SET valid_until_ms = ? \
             WHERE user_id = ? AND key_id = ? AND revoked = 0",
        )
        .bind(valid_until_ms)
        .bind(user_id)
        .bind(key_id);
        self.change_api_key(user_id, key_id, update, false).await
    }

    async fn revoke_api_key(
        &self,
        user_id: i64,
        key_id: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        let update = sqlx::query(
            "UPDATE api_keys SET revoked = 1 WHERE user_id = ? AND key_id = ? AND revoked = 0",
        )
        .bind(user_id)
        .bind(key_id);
        self.change_api_key(user_id, key_id, update, true).await
    }

    async fn record_api_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        self.record_usage("api_keys", usage).await
    }

    async fn create_signature_key(&self, key: NewSignatureKey) -> Result<SignatureKey, StoreError> {
        let mut tx = self.write_transaction().await?;
        let key_id: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(key_id), 0) + 1 FROM signature_keys WHERE user_id = ?",
        )
        .bind(key.user_id)
        .fetch_one(&mut *tx)
        .await?;
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
        Self::record_change(&mut tx, ChangeKind::SignatureKey, key.user_id).await?;
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

    async fn delete_signature_key(&self, user_id: i64, key_id: i64) -> Result<bool, StoreError> {
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
        Self::record_change(&mut tx, ChangeKind::SignatureKey, user_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_signature_key_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        self.record_usage("signature_keys", usage).await
    }

    async fn set_user_totp(&self, id: i64, secret: Option<&str>) -> Result<bool, StoreError> {
        let update = sqlx::query("UPDATE users SET totp_secret = ? WHERE id = ?")
            .bind(secret)
            .bind(id);
        self.update_user(id, update).await
    }

    async fn create_token(&self, token: NewToken) -> Result<Token, StoreError> {
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
        .execute(&self.pool)
        .await?;
        self.token_by_name(&token.name)
            .await?
            .ok_or_else(|| StoreError::Corrupt("token vanished after insert".into()))
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

    async fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
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
        Self::record_change(&mut tx, ChangeKind::Token, owner).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_tokens(&self, owner_id: i64, now_ms: i64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tokens WHERE owner_id = ? AND expires_at_ms > ?",
        )
        .bind(owner_id)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(count.max(0) as u64)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(name: &str) -> NewUser {
        NewUser {
            name: name.into(),
            domain: None,
            customer: Some("42".into()),
            functions: vec!["POWER-USER".into()],
            external: false,
            password_hash: "$argon2id$placeholder".into(),
        }
    }

    #[tokio::test]
    async fn users_round_trip_and_feed_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
        let before = store.latest_change().await.unwrap();
        let alice = store.create_user(new_user("alice")).await.unwrap();
        assert_eq!(alice.functions, vec!["POWER-USER".to_string()]);
        assert!(matches!(
            store.create_user(new_user("alice")).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store.set_user_locked(alice.id, true).await.unwrap());
        assert!(!store.set_user_locked(alice.id + 100, true).await.unwrap());
        let fetched = store.user_by_name("alice").await.unwrap().unwrap();
        assert!(fetched.locked);
        let changes = store.changes_since(before, 10).await.unwrap();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.user_id == alice.id));
        assert_eq!(store.prune_changes(now_ms() + 1).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn api_keys_get_increasing_ids_and_revocation_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
        let pepper = store.api_key_pepper().await.unwrap();
        assert_eq!(pepper.len(), 32);
        assert_eq!(store.api_key_pepper().await.unwrap(), pepper, "made once");
        let user = store.create_user(new_user("bob")).await.unwrap();
        let new_key = |description: &str| NewApiKey {
            user_id: user.id,
            secret_hash: vec![1; 32],
            description: description.into(),
            created_by_id: user.id,
            created_by_name: user.name.clone(),
            valid_until_ms: 0,
            valid_sources: vec!["10.0.0.0/8".into()],
            functions: Some(vec!["A".into()]),
            customers: vec![],
            read_only: true,
        };
        let first = store.create_api_key(new_key("one")).await.unwrap();
        let second = store.create_api_key(new_key("two")).await.unwrap();
        assert_eq!((first.key_id, second.key_id), (1, 2));
        assert_eq!(second.prefix(), format!("{:x}/2", user.id));
        assert!(store.revoke_api_key(user.id, 2).await.unwrap().is_some());
        assert!(store.revoke_api_key(user.id, 2).await.unwrap().is_none());
        assert!(store.api_key(user.id, 2).await.unwrap().is_none());
        let third = store.create_api_key(new_key("three")).await.unwrap();
        assert_eq!(third.key_id, 3, "a revoked key's id is not reused");
        let renewed = store
            .renew_api_key(user.id, 1, 1234)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renewed.valid_until_ms, 1234);
        store
            .record_api_key_usage(&[KeyUsage {
                user_id: user.id,
                key_id: 1,
                at_ms: 99,
                ip: "10.1.1.1".into(),
            }])
            .await
            .unwrap();
        let listed = store.list_api_keys(user.id).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].last_used_ip.as_deref(), Some("10.1.1.1"));
        assert_eq!(listed[0].functions, Some(vec!["A".to_string()]));
    }

    /// Concurrent writers on the pool's connections (key creation reads the next id, then
    /// inserts) all succeed: none is refused with SQLITE_BUSY for a snapshot another
    /// connection moved past, which a deferred `BEGIN` gave as a 503 under load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_never_see_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("k.db")).await.unwrap());
        let user = store.create_user(new_user("erin")).await.unwrap();
        let user_id = user.id;
        let key = move |description: String| NewApiKey {
            user_id,
            secret_hash: vec![1; 32],
            description,
            created_by_id: user_id,
            created_by_name: "erin".into(),
            valid_until_ms: 0,
            valid_sources: vec![],
            functions: None,
            customers: vec![],
            read_only: false,
        };
        store.create_api_key(key("used".into())).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    store
                        .record_api_key_usage(&[KeyUsage {
                            user_id,
                            key_id: 1,
                            at_ms: i,
                            ip: "10.1.1.1".into(),
                        }])
                        .await
                        .map(|_| ())
                } else {
                    store.create_api_key(key(format!("k{i}"))).await.map(|_| ())
                }
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.list_api_keys(user_id).await.unwrap().len(), 33);
    }

    #[tokio::test]
    async fn count_tokens_counts_only_the_owners_unexpired_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db")).await.unwrap();
        let carol = store.create_user(new_user("carol")).await.unwrap();
        let dave = store.create_user(new_user("dave")).await.unwrap();
        let now = now_ms();
        let token = |n: u8, owner_id: i64, tenant: Option<&str>, expires_at_ms: i64| NewToken {
            name: format!("{n:032x}"),
            token_hash: vec![n; 32],
            owner_id,
            domain: "example.com".into(),
            tenant: tenant.map(str::to_owned),
            level: "DEFAULT".into(),
            expires_at_ms,
            custom_source: None,
        };
        assert_eq!(store.count_tokens(carol.id, now).await.unwrap(), 0);
        store
            .create_token(token(1, carol.id, None, now + 60_000))
            .await
            .unwrap();
        store
            .create_token(token(2, carol.id, Some("t1"), now + 60_000))
            .await
            .unwrap();
        store
            .create_token(token(3, carol.id, None, now - 1))
            .await
            .unwrap();
        store
            .create_token(token(4, dave.id, None, now + 60_000))
            .await
            .unwrap();
        assert_eq!(
            store.count_tokens(carol.id, now).await.unwrap(),
            2,
            "the expired token and dave's are not counted; the tenant token is"
        );
        assert_eq!(store.count_tokens(dave.id, now).await.unwrap(), 1);
    }
}
