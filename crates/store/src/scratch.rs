//! Throw-away PostgreSQL databases for tests: each test gets a database of its own on the
//! server named by `KEYWARD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`),
//! so tests run in parallel and leave nothing behind. Not used by the server itself.

use sqlx::Connection;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test and dropped (with its connections) when this is dropped.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    pub async fn create() -> Result<ScratchDatabase, sqlx::Error> {
        let admin_url =
            std::env::var("KEYWARD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let name = format!("keyward_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Ok(ScratchDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// Blocking form, for synchronous tests.
    pub fn create_blocking() -> Result<ScratchDatabase, sqlx::Error> {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(sqlx::Error::Io)?
                .block_on(ScratchDatabase::create())
        })
        .join()
        .unwrap_or_else(|_| Err(sqlx::Error::PoolClosed))
    }

    /// `postgres://.../keyward_test_...`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime; a thread of its own works from both.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}
