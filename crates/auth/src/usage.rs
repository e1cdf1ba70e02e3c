//! Last uses of keys, and API keys' request counts per hour, recorded in memory on the
//! request path (one short lock of one shard, no I/O) and written to the store in batches by a
//! background service.
//!
//! Both maps are split in [`SHARDS`] shards by key, each behind its own lock, so that proxy
//! threads serving different keys do not wait for each other, and hashed by [`IdHasher`] (a
//! multiply-xor of the ids) rather than SipHash: their keys are ids of keys whose secret
//! matched, not attacker-chosen data, and the hash runs on every request.

use keyward_store::{hour_start, now_ms, KeyUsage, UsageCount};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Shards per map: a power of two, several per proxy thread of a large machine.
pub const SHARDS: usize = 16;

type Map<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A hasher for tuples of ids: each integer is folded in by a multiply-xor (the constant is
/// 2⁶⁴ over the golden ratio), the result's high bits mixed down for hashbrown's control
/// bytes. Enough for keys that are ids of real API keys and hours.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// The shard of key (user id, key id): the ids mixed by a multiplication (Fibonacci hashing),
/// the top bits.
fn shard_of(user_id: i64, key_id: i64) -> usize {
    let mixed =
        (user_id as u64 ^ (key_id as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SHARDS.trailing_zeros())) as usize
}

/// [`SHARDS`] maps, each behind its own lock.
struct Sharded<K, V>([Mutex<Map<K, V>>; SHARDS]);

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded(std::array::from_fn(|_| Mutex::new(Map::default())))
    }
}

impl<K, V> Sharded<K, V> {
    fn shard(&self, user_id: i64, key_id: i64) -> Option<std::sync::MutexGuard<'_, Map<K, V>>> {
        self.0[shard_of(user_id, key_id)].lock().ok()
    }

    /// Everything in every shard, each shard emptied in turn.
    fn drain<T>(&self, mut each: impl FnMut(K, V) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for shard in &self.0 {
            if let Ok(mut map) = shard.lock() {
                out.extend(map.drain().map(|(k, v)| each(k, v)));
            }
        }
        out
    }
}

#[derive(Default)]
pub struct UsageRecorder {
    /// (user id, key id) → (ms, client address) of the latest use.
    uses: Sharded<(i64, i64), (i64, IpAddr)>,
}

impl UsageRecorder {
    pub fn record(&self, user_id: i64, key_id: i64, ip: IpAddr) {
        self.record_at(user_id, key_id, ip, now_ms());
    }

    /// [`Self::record`] at a time the caller already read.
    pub fn record_at(&self, user_id: i64, key_id: i64, ip: IpAddr, at_ms: i64) {
        if let Some(mut uses) = self.uses.shard(user_id, key_id) {
            uses.insert((user_id, key_id), (at_ms, ip));
        }
    }

    /// Takes everything recorded since the last call.
    pub fn drain(&self) -> Vec<KeyUsage> {
        self.uses.drain(|(user_id, key_id), (at_ms, ip)| KeyUsage {
            user_id,
            key_id,
            at_ms,
            ip: ip.to_string(),
        })
    }
}

/// What became of a request made with an API key, as `…/usage` counts it (the book's API keys
/// chapter, "Usage", says which refusals count as what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Admitted and forwarded to the upstream, whatever the upstream answered.
    Accepted,
    /// The key was good (secret, expiry, sources, user), and keyward refused the request
    /// itself with 403: the route policy, read-only, a method override.
    Refused,
    /// The key was good, and the request was over its rate limit (429).
    RateLimited,
}

/// Requests per key and UTC hour, counted in memory on the request path (one short lock, no
/// I/O) and added to the store's hour rows in batches by the key usage service. Only keys
/// whose secret was right are counted, so the map holds at most one entry per real key and
/// hour between two flushes.
#[derive(Default)]
pub struct UsageCounter {
    counts: Sharded<(i64, i64, i64), UsageCount>,
}

impl UsageCounter {
    pub fn count(&self, user_id: i64, key_id: i64, outcome: KeyOutcome) {
        self.count_at(user_id, key_id, outcome, now_ms());
    }

    fn count_at(&self, user_id: i64, key_id: i64, outcome: KeyOutcome, at_ms: i64) {
        let hour_ms = hour_start(at_ms);
        let Some(mut counts) = self.counts.shard(user_id, key_id) else {
            return;
        };
        let entry = counts
            .entry((user_id, key_id, hour_ms))
            .or_insert(UsageCount {
                user_id,
                key_id,
                hour_ms,
                ..UsageCount::default()
            });
        match outcome {
            KeyOutcome::Accepted => entry.accepted += 1,
            KeyOutcome::Refused => entry.refused += 1,
            KeyOutcome::RateLimited => entry.rate_limited += 1,
        }
    }

    /// Takes everything counted since the last call.
    pub fn drain(&self) -> Vec<UsageCount> {
        self.counts.drain(|_, count| count)
    }

    /// Puts back a batch the store did not take, so that a store outage delays the counts
    /// instead of losing them.
    pub fn restore(&self, batch: Vec<UsageCount>) {
        for count in batch {
            let Some(mut counts) = self.counts.shard(count.user_id, count.key_id) else {
                continue;
            };
            let entry = counts
                .entry((count.user_id, count.key_id, count.hour_ms))
                .or_insert(UsageCount {
                    accepted: 0,
                    refused: 0,
                    rate_limited: 0,
                    ..count
                });
            entry.accepted += count.accepted;
            entry.refused += count.refused;
            entry.rate_limited += count.rate_limited;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::HOUR_MS;

    #[test]
    fn keys_spread_over_the_shards_and_each_key_keeps_one() {
        let mut used = [0usize; SHARDS];
        for user_id in 0..64 {
            for key_id in 1..=64 {
                let shard = shard_of(user_id, key_id);
                assert_eq!(shard, shard_of(user_id, key_id));
                used[shard] += 1;
            }
        }
        // 4 096 keys: every shard used, none with more than twice its share.
        assert!(
            used.iter().all(|&n| n > 0 && n < 2 * 4096 / SHARDS),
            "{used:?}"
        );
    }

    #[test]
    fn last_uses_keep_the_latest_per_key_across_shards_and_drain_once() {
        let recorder = UsageRecorder::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for key_id in 1..=100 {
            recorder.record_at(7, key_id, a, 1_000);
            recorder.record_at(7, key_id, b, 2_000 + key_id);
        }
        let mut drained = recorder.drain();
        drained.sort_by_key(|u| u.key_id);
        assert_eq!(drained.len(), 100);
        for (i, usage) in drained.iter().enumerate() {
            let key_id = i as i64 + 1;
            assert_eq!((usage.user_id, usage.key_id), (7, key_id));
            assert_eq!(
                (usage.at_ms, usage.ip.as_str()),
                (2_000 + key_id, "10.0.0.2")
            );
        }
        assert!(recorder.drain().is_empty());
    }

    /// Threads counting the same and different keys at once lose no count.
    #[test]
    fn concurrent_counts_add_up() {
        let counter = std::sync::Arc::new(UsageCounter::default());
        let hour = 1_800_000 * HOUR_MS;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        counter.count_at(1, 1 + (i % 8), KeyOutcome::Accepted, hour);
                        counter.count_at(2, t, KeyOutcome::Refused, hour);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let drained = counter.drain();
        let accepted: i64 = drained.iter().map(|c| c.accepted).sum();
        let refused: i64 = drained.iter().map(|c| c.refused).sum();
        assert_eq!((accepted, refused), (8_000, 8_000));
        assert_eq!(drained.len(), 8 + 4);
    }

    #[test]
    fn counts_per_key_and_hour_and_drains_once() {
        let counter = UsageCounter::default();
        let hour = 1_800_000 * HOUR_MS;
        counter.count_at(1, 1, KeyOutcome::Accepted, hour);
        counter.count_at(1, 1, KeyOutcome::Accepted, hour + HOUR_MS - 1);
        counter.count_at(1, 1, KeyOutcome::Refused, hour + 5);
        counter.count_at(1, 1, KeyOutcome::RateLimited, hour + HOUR_MS);
        counter.count_at(1, 2, KeyOutcome::RateLimited, hour);
        let mut drained = counter.drain();
        drained.sort_by_key(|c| (c.key_id, c.hour_ms));
        let row = |key_id, hour_ms, accepted, refused, rate_limited| UsageCount {
            user_id: 1,
            key_id,
            hour_ms,
            accepted,
            refused,
            rate_limited,
        };
        assert_eq!(
            drained,
            vec![
                row(1, hour, 2, 1, 0),
                row(1, hour + HOUR_MS, 0, 0, 1),
                row(2, hour, 0, 0, 1)
            ]
        );
        assert!(counter.drain().is_empty());
        // A batch the store refused comes back, added to what was counted since.
        counter.count_at(1, 2, KeyOutcome::Accepted, hour);
        counter.restore(drained);
        let mut again = counter.drain();
        again.sort_by_key(|c| (c.key_id, c.hour_ms));
        assert_eq!(
            again,
            vec![
                row(1, hour, 2, 1, 0),
                row(1, hour + HOUR_MS, 0, 0, 1),
                row(2, hour, 1, 0, 1)
            ]
        );
    }
}
