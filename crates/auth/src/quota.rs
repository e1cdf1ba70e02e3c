//! API keys' quotas (SPEC §12): `quota: {requests, period}` admits that many requests per UTC
//! day or month, for the whole fleet.
//!
//! With Redis (the `redis` section), each key and period has one counter, taken with `INCR`
//! and given the period's end with `PEXPIREAT` in one script, before the request is
//! forwarded: the replicas together admit exactly `requests`, and the count survives a
//! restart because it lives in Redis. A Redis that does not answer follows
//! `redis.on_error`: `refuse` → 503, `local` → the replica's own counter (counted in
//! `keyward_replay_local_fallback_total{claim="quota"}`).
//!
//! Without Redis (one replica), the counter is the replica's own, seeded when a key is first
//! counted in a period from the store's usage rows of that period (the requests forwarded for
//! it, written every `api_keys.last_used_flush`): a restart keeps the count, less at most the
//! requests of the last flush interval before a crash.

use crate::fleet::{Answer, ClaimKind, FleetClaims};
use keyward_core::quota::{Exhausted, Quota};
use keyward_store::Db;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts one request against the key and period of `KEYS[1]`; the first count sets the
/// counter to expire at `ARGV[1]` (ms since the epoch: the period's end). Returns the count.
const TAKE_SCRIPT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return n
"#;
/// The count, without counting.
const PEEK_SCRIPT: &str = "return tonumber(redis.call('GET', KEYS[1]) or '0')";

/// Why a request was not admitted by its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// Used up for this period: 429 until the period ends.
    Exhausted(Exhausted),
    /// Redis did not answer and `redis.on_error` is `refuse`: 503.
    Unavailable,
}

/// A replica's own count of one key in one period.
#[derive(Debug, Clone, Copy)]
struct LocalCount {
    period_start: i64,
    count: u64,
}

pub struct QuotaCounter {
    fleet: Option<Arc<FleetClaims>>,
    db: Db,
    /// (user id, key id) → the current period's count; only keys with a quota.
    local: Mutex<HashMap<(i64, i64), LocalCount>>,
    take: redis::Script,
    peek: redis::Script,
}

impl QuotaCounter {
    pub fn new(db: Db, fleet: Option<Arc<FleetClaims>>) -> QuotaCounter {
        QuotaCounter {
            fleet,
            db,
            local: Mutex::new(HashMap::new()),
            take: redis::Script::new(TAKE_SCRIPT),
            peek: redis::Script::new(PEEK_SCRIPT),
        }
    }

    /// Counts one request of key (`user_id`, `key_id`) against `quota`; `Ok(remaining)` when it
    /// is admitted.
    pub async fn take(
        &self,
        user_id: i64,
        key_id: i64,
        quota: Quota,
        now_ms: i64,
    ) -> Result<u64, QuotaRefusal> {
        let (start, end) = quota.period().bounds(now_ms);
        let count = match &self.fleet {
            Some(fleet) => {
                let claim = claim(user_id, key_id, quota, start);
                match fleet
                    .eval_integer(ClaimKind::Quota, &claim, &self.take, &[end])
                    .await
                {
                    Ok(Answer::Fleet(count)) => count.max(0) as u64,
                    Ok(Answer::Local) => self.local_count(user_id, key_id, start, 1).await,
                    Err(_) => return Err(QuotaRefusal::Unavailable),
                }
            }
            None => self.local_count(user_id, key_id, start, 1).await,
        };
        match count > quota.requests() {
            true => Err(QuotaRefusal::Exhausted(Exhausted::at(quota, now_ms))),
            false => Ok(quota.requests() - count),
        }
    }

    /// What is left of `quota` in the current period (the descriptor's `quotaRemaining`);
    /// `None` when Redis cannot say and `redis.on_error` is `refuse`.
    pub async fn remaining(
        &self,
        user_id: i64,
        key_id: i64,
        quota: Quota,
        now_ms: i64,
    ) -> Option<u64> {
        let (start, _) = quota.period().bounds(now_ms);
        let count = match &self.fleet {
            Some(fleet) => {
                let claim = claim(user_id, key_id, quota, start);
                match fleet
                    .eval_integer(ClaimKind::Quota, &claim, &self.peek, &[])
                    .await
                {
                    Ok(Answer::Fleet(count)) => count.max(0) as u64,
                    Ok(Answer::Local) => self.local_count(user_id, key_id, start, 0).await,
                    Err(_) => return None,
                }
            }
            None => self.local_count(user_id, key_id, start, 0).await,
        };
        Some(quota.requests().saturating_sub(count))
    }

    /// Adds `add` to the replica's own count of the key in the period that starts at
    /// `period_start` and returns it; a key first counted in a period starts from the
    /// requests the store's usage rows hold for that period.
    async fn local_count(&self, user_id: i64, key_id: i64, period_start: i64, add: u64) -> u64 {
        if let Some(count) = self.bump(user_id, key_id, period_start, add) {
            return count;
        }
        let seed = self.stored_count(user_id, key_id, period_start).await;
        let Ok(mut local) = self.local.lock() else {
            return seed + add;
        };
        let entry = local.entry((user_id, key_id)).or_insert(LocalCount {
            period_start,
            count: seed,
        });
        if entry.period_start != period_start {
            *entry = LocalCount {
                period_start,
                count: seed,
            };
        }
        entry.count += add;
        entry.count
    }

    /// The count, when this replica already counts the key in this period.
    fn bump(&self, user_id: i64, key_id: i64, period_start: i64, add: u64) -> Option<u64> {
        let mut local = self.local.lock().ok()?;
        let entry = local
            .get_mut(&(user_id, key_id))
            .filter(|entry| entry.period_start == period_start)?;
        entry.count += add;
        Some(entry.count)
    }

    /// The forwarded requests of the key since `period_start`, as the usage rows hold them
    /// (0 when the store cannot say: the replica then counts alone).
    async fn stored_count(&self, user_id: i64, key_id: i64, period_start: i64) -> u64 {
        let counted = self
            .db
            .call(move |store| async move {
                store
                    .api_key_usage(user_id, key_id, period_start, i64::MAX)
                    .await
            })
            .await;
        match counted {
            Ok(rows) => rows.iter().map(|row| row.accepted.max(0) as u64).sum(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a key's usage for its quota; counting from 0");
                0
            }
        }
    }
}

/// What identifies one key's counter in one period (hashed into the Redis key).
fn claim(user_id: i64, key_id: i64, quota: Quota, period_start: i64) -> Vec<u8> {
    let mut claim = Vec::with_capacity(32);
    claim.extend_from_slice(&user_id.to_be_bytes());
    claim.extend_from_slice(&key_id.to_be_bytes());
    claim.extend_from_slice(quota.period().as_str().as_bytes());
    claim.extend_from_slice(&period_start.to_be_bytes());
    claim
}
