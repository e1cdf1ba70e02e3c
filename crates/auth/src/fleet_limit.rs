//! Fleet-scoped rate limits (`rate_limits.scope: fleet`): a quota holds for the whole fleet,
//! not per replica, without a Redis round trip on most requests.
//!
//! Each limited key (a credential, a user, an anonymous client network) has one GCRA bucket in
//! the fleet's Redis: its theoretical arrival time (TAT), in microseconds of Redis's own clock,
//! kept by one Lua script ([`LEASE_SCRIPT`]). A replica does not ask Redis per request: it
//! *leases* a slice of the bucket — up to [`slice`] requests, a tenth of the burst — in one
//! script call, and serves requests from the slice locally until it is spent; the request
//! that finds the slice empty asks for the next one (the other requests of that key on this
//! replica wait for that one call, at most `REDIS_TIMEOUT`). When the bucket has nothing to
//! lease, the script answers how long until it has, and the replica refuses the key locally
//! until then (429) without asking again.
//!
//! **The bound.** GCRA grants at most `burst + W × rate` requests in any window of `W`
//! seconds, whether one at a time or a slice at once. A request a replica accepts in a window
//! spent either a token granted in the window or one it already held when the window began,
//! and a replica never holds more than one slice. So all replicas together accept at most
//! `burst + W × rate + replicas × slice` ≤ `burst + W × rate` plus 10 % of the burst per
//! replica: SPEC §12's bound for `W` = 10 s (and any other `W`).
//!
//! **The cost.** One round trip (one `EVALSHA`, which runs `TIME`, `GET` and `SET` inside
//! Redis) per slice: `1000 / slice` calls per 1 000 requests of a key under its quota (50 for
//! a burst of 200, 5 for a burst of 2 000; every request for a burst under 20, where a tenth
//! of the burst is one request). A key over its quota costs one call per replica each time
//! its bucket earns a token back.
//!
//! A slice does not expire: the tokens it holds were taken from the bucket when it was leased,
//! and the bucket earns them back at its rate whether or not the replica uses them, so an idle
//! replica holds at most one slice (counted in the bound above) and costs the fleet nothing
//! after `slice / rate` seconds. A slice is dropped (not used) when the key's quota changes
//! (a reload, an API key's new `rateLimit`), and when the key is forgotten (idle for
//! [`crate::ratelimit::IDLE`], or evicted beyond `rate_limits.max_tracked`).
//!
//! **Redis away** (`redis.on_error`): a replica still serves the slices it holds; a
//! request that needs a lease gets, with `refuse`, 503 with `Retry-After`; with `local`, the
//! replica's own bucket (the one `scope: replica` uses) decides, counted in
//! `keyward_rate_limit_local_fallback_total` and logged once per outage.
//!
//! Refused credentials (the `per_client_unauthenticated` budget that credential checks charge
//! before they run, SPEC §15) stay counted per replica.

use crate::fleet::{FleetClaims, OnRedisError};
use crate::ratelimit::{
    checks, AuthOutcome, CheckBudget, Limit, LimitKey, LimitScope, Limited, RateLimitSettings,
    RateLimiter, IDLE,
};
use keyward_metrics::Metrics;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A slice is at most this share of the burst (1/10: SPEC §12's 10 % per replica).
pub const SLICE_DIVISOR: u32 = 10;

/// Leases up to `ARGV[3]` requests from the GCRA bucket `KEYS[1]` with an interval of
/// `ARGV[1]` µs and a burst of `ARGV[2]`, on Redis's clock. Returns {granted, µs until one
/// request conforms (0 when granted)}. A TAT further ahead than one full burst (the state of
/// an earlier, slower quota) counts as one full burst. The key expires when the bucket is
/// full again. [`grant`] is the same arithmetic, for the tests.
pub const LEASE_SCRIPT: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local full = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat > now + full then tat = now + full end
local granted = math.floor((now + full - tat) / interval)
if granted > want then granted = want end
if granted < 1 then
  return {0, tat + interval - full - now}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX',
  string.format('%.0f', math.floor((tat - now) / 1000) + 1000))
return {granted, 0}
"#;

/// The most requests a replica leases at once for `limit`: a tenth of the burst, at least one.
pub fn slice(limit: &Limit) -> u32 {
    (limit.burst() / SLICE_DIVISOR).max(1)
}

/// GCRA's emission interval of `limit`, in microseconds (at least 1).
pub fn interval_micros(limit: &Limit) -> u64 {
    (1_000_000_000 / limit.per_kilosecond().max(1) as u64).max(1)
}

/// What [`LEASE_SCRIPT`] answers, and the TAT it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// Until a request conforms, µs (0 when something was granted).
    pub wait: u64,
    pub tat: u64,
}

/// [`LEASE_SCRIPT`]'s arithmetic: leases up to `want` requests from a bucket whose TAT is
/// `tat` (0: never used) at `now` (µs).
pub fn grant(tat: u64, now: u64, interval: u64, burst: u64, want: u64) -> Grant {
    let full = burst * interval;
    let tat = tat.clamp(now, now + full);
    let granted = ((now + full - tat) / interval).min(want);
    if granted < 1 {
        return Grant {
            granted: 0,
            wait: tat + interval - full - now,
            tat,
        };
    }
    Grant {
        granted,
        wait: 0,
        tat: tat + granted * interval,
    }
}

/// One key's lease on this replica.
#[derive(Debug, Default)]
pub struct Lease {
    /// The quota its tokens were taken under; another quota drops them.
    limit: Option<Limit>,
    /// Requests this replica may still accept without asking Redis (at most one slice).
    tokens: u32,
    /// Redis had nothing to lease until then: refused here without asking again.
    empty_until: Option<Instant>,
}

/// What a lease decides on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken: the request passes.
    Taken,
    /// The bucket is known to be empty for this long.
    Over(Duration),
    /// Nothing held: ask Redis for this many.
    Ask(u32),
}

impl Lease {
    fn follow(&mut self, limit: Limit) {
        if self.limit != Some(limit) {
            *self = Lease {
                limit: Some(limit),
                ..Lease::default()
            };
        }
    }

    /// Takes one request's token under `limit`, if the lease can decide.
    pub fn take(&mut self, limit: Limit, now: Instant) -> Take {
        self.follow(limit);
        if self.tokens > 0 {
            self.tokens -= 1;
            return Take::Taken;
        }
        match self.empty_until {
            Some(until) if now < until => Take::Over(until - now),
            _ => Take::Ask(slice(&limit)),
        }
    }

    /// Redis's answer to [`Take::Ask`]: `granted` tokens, or none for `wait`.
    pub fn granted(&mut self, limit: Limit, granted: u32, wait: Duration, now: Instant) {
        self.follow(limit);
        self.tokens = self.tokens.saturating_add(granted).min(slice(&limit));
        self.empty_until = (granted == 0).then(|| now + wait);
    }

    /// Gives back a token taken under `limit` for a request that was refused by another limit.
    pub fn refund(&mut self, limit: Limit) {
        if self.limit == Some(limit) {
            self.tokens = (self.tokens + 1).min(slice(&limit));
        }
    }

    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

/// A fleet-scoped check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the quota; the next request conforms after this long.
    Over(Duration),
    /// Redis could not lease and `redis.on_error` is `refuse`.
    Unavailable,
    /// Redis could not lease and `redis.on_error` is `local`: the replica's own bucket
    /// decides (the fallback is counted).
    Local,
}

/// The leases of one replica, and the script that takes them.
pub struct FleetLimiter {
    claims: Arc<FleetClaims>,
    leases: moka::sync::Cache<LimitKey, Arc<tokio::sync::Mutex<Lease>>>,
    metrics: Arc<Metrics>,
    script: redis::Script,
    /// Whether the last lease fell back to the local bucket: logged once per outage.
    falling_back: AtomicBool,
}

impl FleetLimiter {
    pub fn new(claims: Arc<FleetClaims>, metrics: Arc<Metrics>, max_tracked: u64) -> Self {
        FleetLimiter {
            claims,
            leases: moka::sync::Cache::builder()
                .max_capacity(max_tracked)
                .time_to_idle(IDLE)
                .build(),
            metrics,
            script: redis::Script::new(LEASE_SCRIPT),
            falling_back: AtomicBool::new(false),
        }
    }

    /// Counts one request of `key` against `limit` for the whole fleet.
    pub async fn check(&self, key: LimitKey, limit: Limit) -> Verdict {
        let lease = self.leases.get_with(key, Default::default);
        // Held across the lease call: the key's other requests on this replica wait for it
        // (bounded by REDIS_TIMEOUT) rather than each asking for a slice.
        let mut lease = lease.lock().await;
        let want = match lease.take(limit, Instant::now()) {
            Take::Taken => return Verdict::Pass,
            Take::Over(wait) => return Verdict::Over(wait),
            Take::Ask(want) => want,
        };
        self.metrics.rate_limit_redis_call();
        let args = [
            interval_micros(&limit) as i64,
            i64::from(limit.burst()),
            i64::from(want),
        ];
        let name = self.claims.limit_key(&key.encode());
        let answer = self.claims.script_pair(&self.script, name, args).await;
        let now = Instant::now();
        let Some((granted, wait)) = answer else {
            return self.unanswered();
        };
        if self.falling_back.swap(false, Ordering::AcqRel) {
            tracing::info!("redis answers again: rate limits are fleet-wide again");
        }
        let granted = u32::try_from(granted.clamp(0, i64::from(want))).unwrap_or(0);
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        lease.granted(limit, granted, wait, now);
        match lease.take(limit, now) {
            Take::Taken => Verdict::Pass,
            Take::Over(wait) => Verdict::Over(wait),
            Take::Ask(_) => Verdict::Over(wait),
        }
    }

    /// Gives back a token [`FleetLimiter::check`] passed (the request was refused by another
    /// limit).
    pub async fn refund(&self, key: LimitKey, limit: Limit) {
        if let Some(lease) = self.leases.get(&key) {
            lease.lock().await.refund(limit);
        }
    }

    fn unanswered(&self) -> Verdict {
        match self.claims.on_error() {
            OnRedisError::Refuse => Verdict::Unavailable,
            OnRedisError::Local => {
                self.metrics.rate_limit_local_fallback();
                if !self.falling_back.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "redis cannot lease rate-limit slices: each replica's own bucket decides \
                         until it answers (redis.on_error: local)"
                    );
                }
                Verdict::Local
            }
        }
    }
}

/// Why the rate-limit step refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 429 with the `RateLimit` headers.
    Limited(Limited),
    /// 503 with `Retry-After`: a fleet-scoped limit needs Redis, which did not answer
    /// (`redis.on_error: refuse`).
    Unavailable,
}

/// The rate limits of one replica: its own counters, and the fleet's leases when the fleet
/// shares a Redis. Which one decides is `rate_limits.scope` of each request's configuration.
pub struct Limits {
    local: Arc<RateLimiter>,
    fleet: Option<FleetLimiter>,
}

/// Who passed a count, to give it back to the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Local,
    Fleet,
}

impl Limits {
    pub fn new(local: Arc<RateLimiter>, fleet: Option<FleetLimiter>) -> Limits {
        Limits { local, fleet }
    }

    /// The replica's own counters (`scope: replica`, the failure budget, and the fallback).
    pub fn local(&self) -> &RateLimiter {
        &self.local
    }

    /// [`CheckBudget::settle`], with the counts taken where `rate_limits.scope` says.
    pub async fn settle(
        &self,
        budget: &CheckBudget<'_>,
        outcome: Option<AuthOutcome>,
    ) -> Result<(), Refused> {
        match budget.release(outcome) {
            Some(outcome) => {
                self.after_authentication(budget.settings(), budget.client(), outcome)
                    .await
            }
            None => Ok(()),
        }
    }

    /// [`RateLimiter::after_authentication`], fleet-wide under `scope: fleet`.
    pub async fn after_authentication(
        &self,
        settings: &RateLimitSettings,
        client: IpAddr,
        outcome: AuthOutcome,
    ) -> Result<(), Refused> {
        let fleet = match (&self.fleet, settings.scope) {
            (Some(fleet), LimitScope::Fleet) => fleet,
            _ => {
                return self
                    .local
                    .after_authentication(settings, client, outcome, Instant::now())
                    .map_err(Refused::Limited)
            }
        };
        let [first, second] = checks(settings, client, outcome);
        let mut counted = None;
        if let Some(first) = first {
            counted = Some(
                self.count(fleet, first.key, first.limit).await.map_err(
                    |refused| match refused {
                        Some(wait) => Refused::Limited(first.limited(wait)),
                        None => Refused::Unavailable,
                    },
                )?,
            );
        }
        let Some(second) = second else {
            return Ok(());
        };
        let Err(refused) = self.count(fleet, second.key, second.limit).await else {
            return Ok(());
        };
        if let (Some(first), Some(counted)) = (first, counted) {
            match counted {
                Counted::Fleet => fleet.refund(first.key, first.limit).await,
                Counted::Local => self.local.refund(first.key, first.limit, Instant::now()),
            }
        }
        Err(match refused {
            Some(wait) => Refused::Limited(second.limited(wait)),
            None => Refused::Unavailable,
        })
    }

    /// One count: `Err(Some(wait))` over the limit, `Err(None)` undecided (Redis away,
    /// `refuse`).
    async fn count(
        &self,
        fleet: &FleetLimiter,
        key: LimitKey,
        limit: Limit,
    ) -> Result<Counted, Option<Duration>> {
        let local = || {
            self.local
                .check(key, limit, Instant::now())
                .map(|_| Counted::Local)
                .map_err(Some)
        };
        if matches!(key, LimitKey::Failures(_)) {
            return local();
        }
        match fleet.check(key, limit).await {
            Verdict::Pass => Ok(Counted::Fleet),
            Verdict::Over(wait) => Err(Some(wait)),
            Verdict::Unavailable => Err(None),
            Verdict::Local => local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u64) -> Limit {
        Limit::new(rps, burst).unwrap()
    }

    #[test]
    fn a_slice_is_a_tenth_of_the_burst_and_at_least_one() {
        assert_eq!(slice(&limit(100.0, 200)), 20);
        assert_eq!(slice(&limit(2.0, 10)), 1);
        assert_eq!(slice(&limit(2.0, 9)), 1);
        assert_eq!(slice(&limit(2.0, 1)), 1);
        assert_eq!(slice(&limit(2.0, 55)), 5);
        assert_eq!(interval_micros(&limit(2.0, 10)), 500_000);
        assert_eq!(interval_micros(&limit(1_000_000.0, 10)), 1);
        assert_eq!(interval_micros(&limit(0.001, 10)), 1_000_000_000);
    }

    #[test]
    fn the_bucket_grants_a_burst_then_the_rate() {
        let (interval, burst) = (100_000, 5); // 10/s
        let now = 1_000_000_000;
        let first = grant(0, now, interval, burst, 3);
        assert_eq!((first.granted, first.wait), (3, 0));
        let second = grant(first.tat, now, interval, burst, 3);
        assert_eq!(second.granted, 2, "only what is left of the burst");
        let empty = grant(second.tat, now, interval, burst, 3);
        assert_eq!((empty.granted, empty.wait), (0, interval));
        assert_eq!(empty.tat, second.tat, "a refusal takes nothing");
        // One interval later, exactly one more.
        let later = grant(empty.tat, now + interval, interval, burst, 3);
        assert_eq!(later.granted, 1);
        // Idle for a long time: a whole burst again, no more.
        let idle = grant(later.tat, now + 100 * interval, interval, burst, 9);
        assert_eq!(idle.granted, 5);
        // A TAT far ahead (an earlier, slower quota) waits at most one full burst's time.
        let debt = grant(now + 1_000 * interval, now, interval, burst, 1);
        assert_eq!(debt.wait, interval);
    }

    #[test]
    fn a_lease_serves_its_slice_then_asks_and_remembers_an_empty_bucket() {
        let quota = limit(2.0, 50);
        let t0 = Instant::now();
        let mut lease = Lease::default();
        assert_eq!(lease.take(quota, t0), Take::Ask(5));
        lease.granted(quota, 5, Duration::ZERO, t0);
        for _ in 0..5 {
            assert_eq!(lease.take(quota, t0), Take::Taken);
        }
        assert_eq!(lease.take(quota, t0), Take::Ask(5));
        lease.granted(quota, 0, Duration::from_millis(300), t0);
        assert_eq!(
            lease.take(quota, t0 + Duration::from_millis(100)),
            Take::Over(Duration::from_millis(200))
        );
        assert_eq!(
            lease.take(quota, t0 + Duration::from_millis(300)),
            Take::Ask(5)
        );
        // Never more than a slice, refunds included.
        lease.granted(quota, 9, Duration::ZERO, t0);
        assert_eq!(lease.tokens(), 5);
        lease.refund(quota);
        assert_eq!(lease.tokens(), 5);
        // Another quota drops what the lease held.
        let faster = limit(100.0, 200);
        assert_eq!(lease.take(faster, t0), Take::Ask(20));
        lease.refund(quota);
        assert_eq!(
            lease.tokens(),
            0,
            "a refund under the old quota is not kept"
        );
    }

    /// A tiny deterministic generator, so that the simulation is the same on every run.
    struct Steps(u64);

    impl Steps {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    /// Replicas leasing from one bucket, requests arriving at random replicas and times:
    /// returns the accepted requests' times (µs).
    fn simulate(
        quota: Limit,
        replicas: usize,
        requests: usize,
        mean_gap: u64,
        seed: u64,
    ) -> Vec<u64> {
        let (interval, burst) = (interval_micros(&quota), u64::from(quota.burst()));
        let mut steps = Steps(seed);
        let mut tat = 0;
        let mut leases: Vec<Lease> = (0..replicas).map(|_| Lease::default()).collect();
        let epoch = Instant::now();
        let mut now = 1_000_000_000u64;
        let mut accepted = Vec::new();
        for _ in 0..requests {
            now += steps.next(2 * mean_gap + 1);
            let at = epoch + Duration::from_micros(now - 1_000_000_000);
            let lease = &mut leases[steps.next(replicas as u64) as usize];
            let taken = match lease.take(quota, at) {
                Take::Taken => true,
                Take::Over(_) => false,
                Take::Ask(want) => {
                    let answer = grant(tat, now, interval, burst, u64::from(want));
                    tat = answer.tat;
                    lease.granted(
                        quota,
                        answer.granted as u32,
                        Duration::from_micros(answer.wait),
                        at,
                    );
                    lease.take(quota, at) == Take::Taken
                }
            };
            if taken {
                accepted.push(now);
            }
        }
        accepted
    }

    /// The most accepted in any window of `window` µs.
    fn most_in_window(accepted: &[u64], window: u64) -> usize {
        let mut most = 0;
        let mut start = 0;
        for end in 0..accepted.len() {
            while accepted[end] - accepted[start] >= window {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    #[test]
    fn the_fleet_stays_within_the_spec_bound_over_every_ten_seconds() {
        const TEN_S: u64 = 10_000_000;
        for (quota, replicas, mean_gap) in [
            (limit(2.0, 10), 3, 20_000),
            (limit(2.0, 50), 3, 5_000),
            (limit(100.0, 200), 5, 2_000),
            (limit(100.0, 200), 2, 8_000),
            (limit(0.5, 7), 4, 100_000),
        ] {
            for seed in 1..20 {
                let accepted = simulate(quota, replicas, 20_000, mean_gap, seed * 7919);
                let most = most_in_window(&accepted, TEN_S);
                let burst = quota.burst() as f64;
                let bound = burst
                    + 10.0 * quota.requests_per_second()
                    + replicas as f64 * slice(&quota) as f64;
                let spec = burst
                    + 10.0 * quota.requests_per_second()
                    + replicas as f64 * (burst / 10.0).max(1.0);
                assert!(
                    most as f64 <= bound && bound <= spec,
                    "{quota:?} over {replicas} replicas: {most} in 10 s, bound {bound}"
                );
                // Not divided: the fleet gets (nearly) the whole quota, not a replica's share.
                assert!(
                    most as f64 >= burst + 10.0 * quota.requests_per_second() - bound * 0.2,
                    "{quota:?} over {replicas} replicas: only {most} in 10 s"
                );
            }
        }
    }

    #[test]
    fn the_cost_is_one_lease_per_slice() {
        // 1 000 requests well under a quota of 100/s (burst 200) over 3 replicas.
        let quota = limit(100.0, 200);
        let (interval, burst) = (interval_micros(&quota), u64::from(quota.burst()));
        let mut leases: Vec<Lease> = (0..3).map(|_| Lease::default()).collect();
        let epoch = Instant::now();
        let (mut tat, mut calls) = (0, 0);
        for i in 0..1_000u64 {
            let now = 1_000_000_000 + i * 20_000; // 50/s
            let at = epoch + Duration::from_micros(i * 20_000);
            let lease = &mut leases[(i % 3) as usize];
            if let Take::Ask(want) = lease.take(quota, at) {
                calls += 1;
                let answer = grant(tat, now, interval, burst, u64::from(want));
                tat = answer.tat;
                lease.granted(quota, answer.granted as u32, Duration::ZERO, at);
                assert_eq!(lease.take(quota, at), Take::Taken);
            }
        }
        assert!(calls <= 1_000 / 20 + 3, "{calls} lease calls");
    }
}
