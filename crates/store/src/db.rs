//! Opening the store, the runtime its calls run on, and housekeeping.

use crate::health::StoreHealth;
use crate::{postgres, sqlite};
use crate::{FeedSignal, PoolSettings, Store, StoreError, StoreUrl};
use std::future::Future;
use std::sync::Arc;

/// Opens the store named by the config, creating and migrating it as needed.
pub async fn connect(url: &StoreUrl, pool: PoolSettings) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path, pool).await?)),
        StoreUrl::Postgres(url) => Ok(Arc::new(postgres::PostgresStore::open(url, pool).await?)),
    }
}

/// Connects once to a PostgreSQL store and closes the connection, within `timeout`, on a
/// thread and runtime of its own (callable from anywhere): `Ok` when it worked, or when the
/// store is SQLite; the error otherwise (`StoreError::Task` for the timeout). For checking
/// that a URL's TLS settings work before they are used.
pub fn check_connection(url: &StoreUrl, timeout: std::time::Duration) -> Result<(), StoreError> {
    let StoreUrl::Postgres(url) = url else {
        return Ok(());
    };
    let url = url.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("keyward-store-check".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    tokio::time::timeout(timeout, postgres::PostgresStore::check_connection(&url))
                        .await
                        .unwrap_or_else(|_| Err(StoreError::Task("no answer in time".into())))
                }),
                Err(e) => Err(StoreError::Task(e.to_string())),
            };
            let _ = sender.send(result);
        })
        .map_err(|e| StoreError::Task(e.to_string()))?;
    receiver
        .recv_timeout(timeout + std::time::Duration::from_secs(1))
        .unwrap_or_else(|_| Err(StoreError::Task("no answer in time".into())))
}

/// The store as the server uses it: every call runs on a runtime of its own.
///
/// pingora gives each service its own tokio runtime, and a database connection is bound to the
/// runtime it was opened on. Running all store I/O on one long-lived runtime keeps connections
/// valid whichever service asks, and keeps store latency off the proxy's worker threads.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
    health: Arc<StoreHealth>,
}

impl Db {
    /// Starts the store runtime and connects on it. The runtime lives as long as the process.
    pub fn start(
        url: &StoreUrl,
        pool: PoolSettings,
        health: StoreHealth,
    ) -> Result<Db, StoreError> {
        // A network database answers many queries at once; one file takes one writer.
        let threads = if url.is_postgres() { 2 } else { 1 };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("keyward-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let store = runtime.block_on(connect(url, pool))?;
        let handle = runtime.handle().clone();
        // Never dropped: dropping a runtime from inside another one panics, and the store
        // must outlive every service anyway.
        std::mem::forget(runtime);
        Ok(Db {
            store,
            runtime: handle,
            health: Arc::new(health),
        })
    }

    /// Whether the store answered its last call, and the counter of its failures.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Starts the backend's change notifications (see [`Store::listen`]) on the store runtime.
    pub fn listen(&self, signal: Arc<FeedSignal>) -> bool {
        let _guard = self.runtime.enter();
        self.store.listen(signal)
    }

    /// Runs `f` against the store on the store runtime.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.store.clone());
        let result = match self.runtime.spawn(fut).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Task(e.to_string())),
        };
        self.health.observe(result.as_ref().err());
        result
    }

    /// Runs `f` to completion from synchronous code (start-up, before the services run).
    pub fn block_on<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.runtime.block_on(f(self.store.clone()))
    }
}

/// How long an expired token stays in the store before housekeeping deletes it: a day, so
/// that a `DELETE` of a token that has just expired still finds it.
pub const EXPIRED_TOKEN_KEEP: std::time::Duration = std::time::Duration::from_secs(86_400);
/// Rows deleted per statement: a large backlog never holds the write lock for long.
const PRUNE_BATCH: i64 = 1000;

/// What one housekeeping pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub tokens: u64,
    pub audit: u64,
    /// API key usage rows (hours) older than `usage.retention`.
    pub usage: u64,
}

/// How long housekeeping keeps what it prunes by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `audit.retention`; `None`: audit records are kept forever.
    pub audit: Option<std::time::Duration>,
    /// `usage.retention`: API key usage hours that ended longer ago than this are deleted.
    pub usage: std::time::Duration,
}

/// Deletes the tokens that expired more than [`EXPIRED_TOKEN_KEEP`] before `now_ms`, with an
/// audit retention the audit records older than it, and the API key usage hours that ended
/// more than the usage retention ago; in batches of [`PRUNE_BATCH`], so other writers get the
/// store between them.
pub async fn housekeep(
    store: &dyn Store,
    now_ms: i64,
    retention: Retention,
) -> Result<Pruned, StoreError> {
    let tokens_before = now_ms.saturating_sub(EXPIRED_TOKEN_KEEP.as_millis() as i64);
    let mut pruned = Pruned {
        tokens: in_batches(|| store.prune_expired_tokens(tokens_before, PRUNE_BATCH)).await?,
        ..Pruned::default()
    };
    if let Some(audit) = retention.audit {
        let audit_before = now_ms.saturating_sub(millis(audit));
        pruned.audit = in_batches(|| store.prune_audit(audit_before, PRUNE_BATCH)).await?;
    }
    // An hour row goes once its whole hour is older than the retention.
    let usage_before = now_ms
        .saturating_sub(millis(retention.usage))
        .saturating_sub(crate::HOUR_MS);
    pruned.usage = in_batches(|| store.prune_api_key_usage(usage_before, PRUNE_BATCH)).await?;
    Ok(pruned)
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one batched delete until a batch comes back short; returns how many rows went.
async fn in_batches<F, Fut>(mut delete_batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete_batch().await?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}
