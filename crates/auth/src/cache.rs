//! The credential caches of the request path: metadata found in the store, cached by the
//! credential's identifier, beside a negative cache of identifiers the store does not know so
//! that a flood of random credentials costs the store at most one query per identifier.
//! Concurrent misses for one identifier share a single load.
//!
//! Memory is bounded in bytes, not only in entries: keys are `Copy` (fixed-size values such as
//! a parsed API key prefix or a 32-byte digest, never an attacker-chosen string), so a full
//! negative cache holds `negative_capacity` entries of at most a few hundred bytes each
//! however long the junk credentials were. Values come from the store only.
//!
//! In front of moka each thread keeps its last few hits ([`Near`]): a warm request finds its
//! credential there without moka's bookkeeping (its hash, read log and maintenance check cost
//! ~2 400 instructions a request, a sixth of an API key's whole check). An entry there is
//! used only while no invalidation has happened since it was taken from moka (one counter,
//! [`CredentialCache::invalidate`] bumps it after moka's) and only until the moka entry it came
//! from expires, so it never outlives what moka would serve.

use crate::ratelimit::CheckBudget;
use crate::AuthError;
use keyward_metrics::Metrics;
use std::cell::RefCell;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

pub struct CacheSettings {
    pub ttl: LiveDuration,
    pub capacity: u64,
    pub negative_ttl: LiveDuration,
    pub negative_capacity: u64,
}

/// A duration a configuration reload can change while the caches using it keep their entries
/// (a TTL change applies to entries stored after it).
#[derive(Debug, Clone)]
pub struct LiveDuration(Arc<AtomicU64>);

impl LiveDuration {
    pub fn new(value: Duration) -> LiveDuration {
        LiveDuration(Arc::new(AtomicU64::new(nanos(value))))
    }

    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, value: Duration) {
        self.0.store(nanos(value), Ordering::Relaxed);
    }

    /// A moka expiry policy: entries live for the duration current when they are stored.
    pub fn expiry(&self) -> LiveExpiry {
        LiveExpiry(self.clone())
    }
}

fn nanos(value: Duration) -> u64 {
    u64::try_from(value.as_nanos()).unwrap_or(u64::MAX)
}

pub struct LiveExpiry(LiveDuration);

impl<K, V> moka::Expiry<K, V> for LiveExpiry {
    fn expire_after_create(
        &self,
        _key: &K,
        _value: &V,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0.get())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
enum LoadError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Store(String),
}

/// A cached value and when its moka entry expires (its TTL was read when it was loaded, as
/// moka's own expiry reads it).
pub struct CacheEntry<V> {
    value: V,
    expires_at: Instant,
}

impl<V> std::ops::Deref for CacheEntry<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

/// How many recent hits each thread keeps in front of moka: a proxy thread serves few
/// credentials at a time on its connections, and a miss here costs only a scan of these.
const NEAR_ENTRIES: usize = 4;

/// One thread's recent hits, replaced in turn.
struct Near<K, V> {
    entries: [Option<NearEntry<K, V>>; NEAR_ENTRIES],
    next: usize,
}

struct NearEntry<K, V> {
    key: K,
    value: Arc<CacheEntry<V>>,
    /// [`CredentialCache::epoch`] when the value was taken from moka.
    epoch: u64,
}

impl<K: Eq + Copy, V> Near<K, V> {
    fn get(&self, key: &K, epoch: u64, now: Instant) -> Option<Arc<CacheEntry<V>>> {
        self.entries.iter().flatten().find_map(|entry| {
            (entry.key == *key && entry.epoch == epoch && now < entry.value.expires_at)
                .then(|| entry.value.clone())
        })
    }

    fn put(&mut self, key: K, value: Arc<CacheEntry<V>>, epoch: u64) {
        let slot = match self
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.key == key))
        {
            Some(same) => same,
            None => {
                let slot = self.next;
                self.next = (slot + 1) % NEAR_ENTRIES;
                slot
            }
        };
        self.entries[slot] = Some(NearEntry { key, value, epoch });
    }
}

pub struct CredentialCache<K: Send, V: Send + Sync> {
    known: moka::future::Cache<K, Arc<CacheEntry<V>>>,
    unknown: moka::future::Cache<K, ()>,
    /// Each thread's recent hits (see the module docs).
    near: ThreadLocal<RefCell<Near<K, V>>>,
    /// Bumped by every invalidation, after moka's: a near entry taken before it is not used.
    epoch: AtomicU64,
    ttl: LiveDuration,
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
                .expire_after(settings.ttl.expiry())
                .support_invalidation_closures()
                .build(),
            unknown: moka::future::Cache::builder()
                .max_capacity(settings.negative_capacity)
                .expire_after(settings.negative_ttl.expiry())
                .support_invalidation_closures()
                .build(),
            near: ThreadLocal::new(),
            epoch: AtomicU64::new(0),
            ttl: settings.ttl.clone(),
            hits,
            negative_hits,
            misses,
            name,
            negative_name,
        }
    }

    /// The cached value for `key`, or what `load` finds in the store (`Ok(None)`: unknown,
    /// remembered in the negative cache). A store failure is `StoreUnavailable` (503). A miss
    /// is paid for from the client's `budget` before the store is asked (SPEC §15).
    pub async fn get_or_load<F>(
        &self,
        key: K,
        budget: &CheckBudget<'_>,
        load: F,
    ) -> Result<Arc<CacheEntry<V>>, AuthError>
    where
        F: Future<Output = Result<Option<V>, String>> + Send + 'static,
    {
        // Read before moka is: an invalidation after this read makes what moka returns
        // below unusable from the near entries (see `invalidate`).
        let epoch = self.epoch.load(Ordering::Acquire);
        let now = Instant::now();
        if let Some(value) = self.near().borrow().get(&key, epoch, now) {
            self.hits.inc();
            return Ok(value);
        }
        // Known first: that is the warm path of every authenticated request. An identifier
        // in both (created after it was remembered as unknown) is known.
        if let Some(value) = self.known.get(&key).await {
            self.hits.inc();
            // This thread's slot, wherever the task now runs (no borrow is held across an
            // await).
            self.near().borrow_mut().put(key, value.clone(), epoch);
            return Ok(value);
        }
        if self.unknown.contains_key(&key) {
            self.negative_hits.inc();
            return Err(AuthError::UnknownKey);
        }
        // Counted once paid for: a miss refused by the budget never reaches the store, and
        // the metric promises one store query per miss.
        budget.charge().map_err(AuthError::ClientBudget)?;
        self.misses.inc();
        let ttl = self.ttl.clone();
        let loaded = self
            .known
            .try_get_with(key, async move {
                let loaded = load.await;
                // Read as moka's expiry reads it, once the value is loaded (moka reads it when
                // it stores the entry, just after): a TTL changed during the load applies to
                // both, and the near entries never outlive moka's.
                let expires_at = Instant::now() + ttl.get();
                match loaded {
                    Ok(Some(value)) => Ok(Arc::new(CacheEntry { value, expires_at })),
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

    /// This thread's recent hits.
    fn near(&self) -> &RefCell<Near<K, V>> {
        self.near.get_or(|| {
            RefCell::new(Near {
                entries: Default::default(),
                next: 0,
            })
        })
    }

    /// Drops the cached entries for which `known` holds, and the unknown identifiers for which
    /// `unknown` holds.
    pub fn invalidate(
        &self,
        known: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        unknown: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) {
        // Only fails without invalidation closures, which `new` always enables.
        let _ = self
            .known
            .invalidate_entries_if(move |k, v| known(k, &v.value));
        let _ = self.unknown.invalidate_entries_if(move |k, _| unknown(k));
        // After moka's: from here on moka no longer returns what was invalidated, and no near
        // entry taken before is used. Bumped before, a request in between could take a stale
        // value from moka under the new epoch.
        self.epoch.fetch_add(1, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_ttl_applies_to_entries_stored_after_it() {
        let ttl = LiveDuration::new(Duration::from_secs(3600));
        let cache = cache(&ttl);
        let load = |v: u64| async move { Ok::<_, String>(Some(v)) };
        let budget = CheckBudget::unlimited(std::net::Ipv4Addr::LOCALHOST.into());
        cache.get_or_load(1, &budget, load(1)).await.unwrap();
        ttl.set(Duration::from_millis(50));
        cache.get_or_load(2, &budget, load(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        // 1 is still cached (loaded again it would be 10); 2 expired and is loaded anew.
        assert_eq!(**cache.get_or_load(1, &budget, load(10)).await.unwrap(), 1);
        assert_eq!(**cache.get_or_load(2, &budget, load(20)).await.unwrap(), 20);
    }

    fn cache(ttl: &LiveDuration) -> CredentialCache<u64, u64> {
        CredentialCache::new(
            Arc::new(Metrics::new()),
            "apikey",
            "apikey_negative",
            &CacheSettings {
                ttl: ttl.clone(),
                capacity: 100,
                negative_ttl: LiveDuration::new(Duration::from_secs(3600)),
                negative_capacity: 100,
            },
        )
    }

    /// A thread's recent hits answer without moka (an entry dropped from moka alone is still
    /// served from them), and never after an invalidation: whether or not it matched the
    /// entry, it makes every near entry taken before it unusable.
    #[tokio::test]
    async fn near_entries_serve_until_an_invalidation() {
        let cache = cache(&LiveDuration::new(Duration::from_secs(3600)));
        let load = |v: u64| async move { Ok::<_, String>(Some(v)) };
        let budget = CheckBudget::unlimited(std::net::Ipv4Addr::LOCALHOST.into());
        assert_eq!(**cache.get_or_load(1, &budget, load(1)).await.unwrap(), 1);
        // The second request takes it from moka, and keeps it near.
        assert_eq!(**cache.get_or_load(1, &budget, load(2)).await.unwrap(), 1);
        cache.known.invalidate(&1).await;
        assert_eq!(**cache.get_or_load(1, &budget, load(3)).await.unwrap(), 1);
        // An invalidation of another entry: moka is asked again, and (1 being gone from it)
        // the store.
        cache.invalidate(|k, _| *k == 99, |_| false);
        assert_eq!(**cache.get_or_load(1, &budget, load(4)).await.unwrap(), 4);
        assert_eq!(**cache.get_or_load(1, &budget, load(5)).await.unwrap(), 4);
        // The entry's own invalidation.
        cache.invalidate(|k, v| *k == 1 && *v == 4, |_| false);
        assert_eq!(**cache.get_or_load(1, &budget, load(6)).await.unwrap(), 6);
        // Several keys, more than a thread keeps: each still answers its own value.
        for key in 10..20 {
            cache.get_or_load(key, &budget, load(key)).await.unwrap();
        }
        for _ in 0..3 {
            for key in 10..20 {
                assert_eq!(
                    **cache.get_or_load(key, &budget, load(0)).await.unwrap(),
                    key
                );
            }
        }
    }

    /// A near entry expires with the moka entry it came from.
    #[tokio::test]
    async fn near_entries_expire_with_their_moka_entry() {
        let cache = cache(&LiveDuration::new(Duration::from_millis(100)));
        let load = |v: u64| async move { Ok::<_, String>(Some(v)) };
        let budget = CheckBudget::unlimited(std::net::Ipv4Addr::LOCALHOST.into());
        cache.get_or_load(1, &budget, load(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Taken from moka 60 ms into its 100: near for the 40 left, not for another 100.
        assert_eq!(**cache.get_or_load(1, &budget, load(2)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert_eq!(**cache.get_or_load(1, &budget, load(3)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_miss_refused_by_the_budget_neither_reads_the_store_nor_counts() {
        use crate::ratelimit::{RateLimitSettings, RateLimiter};
        let metrics = Arc::new(Metrics::new());
        let cache = CredentialCache::<u64, u64>::new(
            metrics.clone(),
            "apikey",
            "apikey_negative",
            &CacheSettings {
                ttl: LiveDuration::new(Duration::from_secs(3600)),
                capacity: 100,
                negative_ttl: LiveDuration::new(Duration::from_secs(3600)),
                negative_capacity: 100,
            },
        );
        let limiter = RateLimiter::new(100);
        let settings = RateLimitSettings {
            per_client_unauthenticated: Some(keyward_core::limit::Limit::new(0.001, 2).unwrap()),
            ..RateLimitSettings::default()
        };
        let client = std::net::Ipv4Addr::LOCALHOST.into();
        let loads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut refused = 0;
        for key in 0..5u64 {
            let budget = CheckBudget::new(&limiter, &settings, client);
            let loads = loads.clone();
            let load = async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, String>(None)
            };
            if let Err(AuthError::ClientBudget(_)) = cache.get_or_load(key, &budget, load).await {
                refused += 1;
            }
        }
        let (_, misses) = metrics.cache_counters("apikey");
        assert_eq!(refused, 3);
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(misses.get(), 2, "a miss is one store query");
    }
}
