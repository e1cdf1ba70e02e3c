//! The credential caches of the request path: metadata found in the store, cached by the
//! credential's identifier, beside a negative cache of identifiers the store does not know so
//! that a flood of random credentials costs the store at most one query per identifier.
//! Concurrent misses for one identifier share a single load.
//!
//! Memory is bounded in bytes, not only in entries: keys are `Copy` (fixed-size values such as
//! a parsed API key prefix or a 32-byte digest, never an attacker-chosen string), so a full
//! negative cache holds `negative_capacity` entries of at most a few hundred bytes each
//! however long the junk credentials were. Values come from the store only.

use crate::auth::AuthError;
use crate::metrics::Metrics;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

pub struct CacheSettings {
    pub ttl: Duration,
    pub capacity: u64,
    pub negative_ttl: Duration,
    pub negative_capacity: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
enum LoadError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Store(String),
}

pub struct CredentialCache<K, V> {
    known: moka::future::Cache<K, Arc<V>>,
    unknown: moka::future::Cache<K, ()>,
    /// `cache` label of the metrics (the negative cache has its own).
    name: &'static str,
    negative_name: &'static str,
    /// This cache's series, resolved once (see [`Metrics::cache_counters`]).
    hits: prometheus::IntCounter,
    negative_hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl<K, V> CredentialCache<K, V>
where
    K: Hash + Eq + Copy + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    pub fn new(
        metrics: Arc<Metrics>,
        name: &'static str,
        negative_name: &'static str,
        settings: &CacheSettings,
    ) -> Self {
        let (hits, misses) = metrics.cache_counters(name);
        let (negative_hits, _) = metrics.cache_counters(negative_name);
        CredentialCache {
            known: moka::future::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl)
                .support_invalidation_closures()
                .build(),
            unknown: moka::future::Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .support_invalidation_closures()
                .build(),
            hits,
            negative_hits,
            misses,
            name,
            negative_name,
        }
    }

    /// The cached value for `key`, or what `load` finds in the store (`Ok(None)`: unknown,
    /// remembered in the negative cache). A store failure is `StoreUnavailable` (503).
    pub async fn get_or_load<F>(&self, key: K, load: F) -> Result<Arc<V>, AuthError>
    where
        F: Future<Output = Result<Option<V>, String>> + Send + 'static,
    {
        // Known first: that is the warm path of every authenticated request. An identifier
        // in both (created after it was remembered as unknown) is known.
        if let Some(value) = self.known.get(&key).await {
            self.hits.inc();
            return Ok(value);
        }
        if self.unknown.contains_key(&key) {
            self.negative_hits.inc();
            return Err(AuthError::UnknownKey);
        }
        self.misses.inc();
        let loaded = self
            .known
            .try_get_with(key, async move {
                match load.await {
                    Ok(Some(value)) => Ok(Arc::new(value)),
                    Ok(None) => Err(LoadError::NotFound),
                    Err(message) => Err(LoadError::Store(message)),
                }
            })
            .await;
        match loaded {
            Ok(value) => Ok(value),
            Err(e) => match e.as_ref() {
                LoadError::NotFound => {
                    self.unknown.insert(key, ()).await;
                    Err(AuthError::UnknownKey)
                }
                LoadError::Store(message) => {
                    // Counted, and logged once per outage, by the store's health tracker.
                    tracing::debug!(cache = self.name, error = %message, "store lookup failed during authentication");
                    Err(AuthError::StoreUnavailable)
                }
            },
        }
    }

    /// Drops the cached entries for which `known` holds, and the unknown identifiers for which
    /// `unknown` holds.
    pub fn invalidate(
        &self,
        known: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        unknown: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) {
        // Only fails without invalidation closures, which `new` always enables.
        let _ = self.known.invalidate_entries_if(move |k, v| known(k, v));
        let _ = self.unknown.invalidate_entries_if(move |k, _| unknown(k));
    }

    /// `(cache label, entries)` of both caches, exact once pending maintenance has run.
    pub async fn entry_counts(&self) -> [(&'static str, u64); 2] {
        self.known.run_pending_tasks().await;
        self.unknown.run_pending_tasks().await;
        [
            (self.name, self.known.entry_count()),
            (self.negative_name, self.unknown.entry_count()),
        ]
    }
}
