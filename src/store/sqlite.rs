//! SQLite backend: one file, WAL journal, `synchronous=FULL` so an acknowledged write survives
//! `kill -9` and power loss alike. Admin writes are rare; the request path reads from caches.

use super::{now_ms, Change, ChangeKind, NewUser, Store, StoreError, User};
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

const USER_COLUMNS: &str = "id, name, domain, customer, functions, external, password_hash, \
                            totp_secret, locked, created_at_ms";

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Task(format!("cannot create {}: {e}", dir.display())))?;
        }
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

    /// Runs `update` (an UPDATE of one user) and records a user change, atomically.
    async fn update_user<'q>(
        &self,
        id: i64,
        update: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = update.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::record_change(&mut tx, ChangeKind::User, id).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    let functions: String = row.try_get("functions")?;
    let functions: Vec<String> = serde_json::from_str(&functions)
        .map_err(|e| StoreError::Corrupt(format!("users.functions: {e}")))?;
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
        let mut tx = self.pool.begin().await?;
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
        let update = sqlx::query("UPDATE users SET locked = ? WHERE id = ?")
            .bind(locked)
            .bind(id);
        self.update_user(id, update).await
    }

    async fn set_user_password(&self, id: i64, password_hash: &str) -> Result<bool, StoreError> {
        let update = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(id);
        self.update_user(id, update).await
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
}
