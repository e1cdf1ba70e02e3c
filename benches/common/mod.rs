//! Setup shared by the benchmarks: a real SQLite store in a temporary directory, and cache
//! settings that keep every entry for the whole run.

use keyward::cache::{CacheSettings, LiveDuration};
use keyward::config::StoreUrl;
use keyward::metrics::Metrics;
use keyward::store::{Db, PoolSettings, StoreHealth};
use std::time::Duration;

pub fn bench_db(dir: &tempfile::TempDir) -> Db {
    let url = StoreUrl::Sqlite(dir.path().join("bench.db"));
    let (errors, up) = Metrics::new().store_series();
    Db::start(
        &url,
        PoolSettings::default_for(&url),
        StoreHealth::new(errors, up),
    )
    .unwrap()
}

/// An hour for every entry; the negative cache (unknown prefixes) `negative_ttl`.
pub fn cache_settings(negative_ttl: Duration) -> CacheSettings {
    CacheSettings {
        ttl: LiveDuration::new(Duration::from_secs(3600)),
        capacity: 100_000,
        negative_ttl: LiveDuration::new(negative_ttl),
        negative_capacity: 100_000,
    }
}
