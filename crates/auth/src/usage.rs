//! Last uses of keys, and API keys' request counts per hour, recorded in memory on the
//! request path (one short lock, no I/O) and written to the store in batches by a background
//! service.

use keyward_store::{hour_start, now_ms, KeyUsage, UsageCount};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Default)]
pub struct UsageRecorder {
    /// (user id, key id) → (ms, client address) of the latest use.
    uses: Mutex<HashMap<(i64, i64), (i64, IpAddr)>>,
}

impl UsageRecorder {
    pub fn record(&self, user_id: i64, key_id: i64, ip: IpAddr) {
        if let Ok(mut uses) = self.uses.lock() {
            uses.insert((user_id, key_id), (now_ms(), ip));
        }
    }

    /// Takes everything recorded since the last call.
    pub fn drain(&self) -> Vec<KeyUsage> {
        match self.uses.lock() {
            Ok(mut uses) => uses
                .drain()
                .map(|((user_id, key_id), (at_ms, ip))| KeyUsage {
                    user_id,
                    key_id,
                    at_ms,
                    ip: ip.to_string(),
                })
                .collect(),
            Err(_) => Vec::new(),
        }
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
    counts: Mutex<HashMap<(i64, i64, i64), UsageCount>>,
}

impl UsageCounter {
    pub fn count(&self, user_id: i64, key_id: i64, outcome: KeyOutcome) {
        self.count_at(user_id, key_id, outcome, now_ms());
    }

    fn count_at(&self, user_id: i64, key_id: i64, outcome: KeyOutcome, at_ms: i64) {
        let hour_ms = hour_start(at_ms);
        let Ok(mut counts) = self.counts.lock() else {
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
        match self.counts.lock() {
            Ok(mut counts) => counts.drain().map(|(_, count)| count).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Puts back a batch the store did not take, so that a store outage delays the counts
    /// instead of losing them.
    pub fn restore(&self, batch: Vec<UsageCount>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for count in batch {
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
