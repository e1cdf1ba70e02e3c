//! Request rate limits: per credential, per user (`per_user`), and per client address for
//! requests that do not authenticate — this replica's own counters. `scope: fleet` counts
//! them for the whole fleet instead (`crate::fleet_limit`), and falls back to these.
//!
//! The algorithm is governor's GCRA (a token bucket without a refill timer): a key may send
//! `burst` requests at once, then one every `1 / requests_per_second`. What governor keeps per
//! key is one number, the key's theoretical arrival time (TAT).
//!
//! The counters live in one long-lived [`RateLimiter`]; the quota is passed in with every
//! check. A reload that changes a quota therefore keeps every key's state (its TAT is read
//! under the new quota), and a key with its own quota (an API key's `rateLimit`) needs no limiter
//! of its own. governor ties a quota to a limiter object and measures TATs from that object's
//! creation, so each check builds a throw-away governor limiter on the stack (no allocation;
//! a few integer operations) over a clock frozen at the check's instant, and the state store
//! below shifts the stored TATs between that instant and this limiter's epoch.
//!
//! Memory is bounded: keys are fixed-size values ([`LimitKey`]), never strings a client chose,
//! and they live in a moka cache of at most `rate_limits.max_tracked` entries that forgets keys
//! idle for [`IDLE`]. Under a flood of distinct keys moka evicts the least useful entries; an
//! evicted key starts again with a full burst.
//!
//! This module imports nothing of the rest of keyward, so that `auth` and `config` can use its
//! vocabulary.

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A key idle this long is forgotten (and would start with a full burst). Ten minutes is longer
/// than any key with a sensible quota takes to earn its whole burst back.
pub const IDLE: Duration = Duration::from_secs(600);
pub use keyward_core::limit::*;

/// governor's quota for a [`Limit`].
fn quota(limit: &Limit) -> governor::Quota {
    // `with_period` is `None` only for a zero interval, which `Limit::new` rules out.
    let interval_nanos = 1_000_000_000_000 / limit.per_kilosecond().max(1) as u64;
    let burst = NonZeroU32::new(limit.burst()).unwrap_or(NonZeroU32::MIN);
    governor::Quota::with_period(Duration::from_nanos(interval_nanos.max(1)))
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The counters, shared by every request and kept across reloads.
pub struct RateLimiter {
    states: moka::sync::Cache<LimitKey, Arc<InMemoryState>>,
    epoch: Instant,
}

impl RateLimiter {
    pub fn new(max_tracked: u64) -> RateLimiter {
        RateLimiter {
            states: moka::sync::Cache::builder()
                .max_capacity(max_tracked)
                .time_to_idle(IDLE)
                .build(),
            epoch: Instant::now(),
        }
    }

    /// Counts one request of `key` against `limit`: `Ok` with the requests left in the burst,
    /// or `Err` with the time until the next one conforms (nothing is counted then).
    pub fn check(&self, key: LimitKey, limit: Limit, now: Instant) -> Result<u32, Duration> {
        let state = self
            .states
            .get_with(key, || Arc::new(InMemoryState::default()));
        self.decide(&state, limit, now, true)
    }

    /// Whether a request of `key` would conform, counting nothing (and remembering nothing
    /// for a key not seen yet).
    pub fn peek(&self, key: LimitKey, limit: Limit, now: Instant) -> Result<(), Duration> {
        match self.states.get(&key) {
            Some(state) => self.decide(&state, limit, now, false).map(|_| ()),
            None => Ok(()),
        }
    }

    fn decide(
        &self,
        state: &InMemoryState,
        limit: Limit,
        now: Instant,
        count: bool,
    ) -> Result<u32, Duration> {
        // Never zero: governor's state reads zero as "never seen".
        let now = Nanos::from(now.saturating_duration_since(self.epoch)) + Nanos::new(1);
        // A TAT beyond a full burst of this quota (its state under an earlier, slower quota)
        // counts as a full burst: the key waits at most one interval of the current quota.
        let quota = quota(&limit);
        let full = Nanos::from(quota.burst_size_replenished_in());
        let store = Shifted {
            state,
            now,
            full,
            count,
        };
        let gcra = governor::RateLimiter::<NotKeyed, _, _, StateInformationMiddleware>::new(
            quota,
            store,
            Frozen(now),
        );
        match gcra.check() {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(now)),
        }
    }

    /// Gives back one request counted against `key` (a charge whose check succeeded): its
    /// TAT moves back by one interval, never before `now`.
    pub fn refund(&self, key: LimitKey, limit: Limit, now: Instant) {
        let Some(state) = self.states.get(&key) else {
            return;
        };
        let now = Nanos::from(now.saturating_duration_since(self.epoch)) + Nanos::new(1);
        let interval = Nanos::from(quota(&limit).replenish_interval());
        let _ = state.measure_and_replace(&NotKeyed::NonKey, |tat| match tat {
            Some(tat) if tat > now => Ok(((), std::cmp::max(tat.saturating_sub(interval), now))),
            _ => Err(()),
        });
    }

    /// Keys currently tracked (after moka's pending maintenance).
    pub fn tracked(&self) -> u64 {
        self.states.run_pending_tasks();
        self.states.entry_count()
    }

    /// The rate-limit step before authentication: a client network whose refused credentials
    /// used up its quota is refused at once, before any credential work (argon2, the store).
    pub fn before_authentication(
        &self,
        settings: &RateLimitSettings,
        client: IpAddr,
        now: Instant,
    ) -> Result<(), Limited> {
        let Some(limit) = settings.per_client_unauthenticated else {
            return Ok(());
        };
        let key = LimitKey::Failures(client_network(client));
        self.peek(key, limit, now).map_err(|retry_after| Limited {
            kind: LimitKind::Client,
            limit,
            retry_after,
        })
    }

    /// The rate-limit step after authentication (see [`checks`]), on this replica's own
    /// counters. When the user's limit refuses, the credential's count is given back: a
    /// refused request counts against neither.
    pub fn after_authentication(
        &self,
        settings: &RateLimitSettings,
        client: IpAddr,
        outcome: AuthOutcome,
        now: Instant,
    ) -> Result<(), Limited> {
        let [first, second] = checks(settings, client, outcome);
        if let Some(first) = first {
            self.check(first.key, first.limit, now)
                .map_err(|wait| first.limited(wait))?;
        }
        if let Some(second) = second {
            if let Err(wait) = self.check(second.key, second.limit, now) {
                if let Some(first) = first {
                    self.refund(first.key, first.limit, now);
                }
                return Err(second.limited(wait));
            }
        }
        Ok(())
    }
}

/// One count a request takes: whose, against which quota, and which limit it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub key: LimitKey,
    pub limit: Limit,
    pub kind: LimitKind,
}

impl Check {
    pub fn limited(&self, retry_after: Duration) -> Limited {
        Limited {
            kind: self.kind,
            limit: self.limit,
            retry_after,
        }
    }
}

/// The counts the rate-limit step after authentication takes, in order; all must pass. An
/// authenticated request counts against its credential (its own quota, else
/// `per_credential`) and then its user (`per_user`, all the user's credentials together); a
/// refused credential counts against the client network's failures and a request without one
/// against its anonymous requests (both `per_client_unauthenticated`, kept apart so that
/// anonymous traffic from a shared address never blocks the credentials used from it).
pub fn checks(
    settings: &RateLimitSettings,
    client: IpAddr,
    outcome: AuthOutcome,
) -> [Option<Check>; 2] {
    let check = |key, limit: Option<Limit>, kind| limit.map(|limit| Check { key, limit, kind });
    match outcome {
        AuthOutcome::Authenticated(credential) => [
            check(
                credential.key,
                credential.own.or(settings.per_credential),
                LimitKind::Credential,
            ),
            check(
                LimitKey::User(credential.user_id),
                settings.per_user,
                LimitKind::User,
            ),
        ],
        AuthOutcome::Refused => [
            check(
                LimitKey::Failures(client_network(client)),
                settings.per_client_unauthenticated,
                LimitKind::Client,
            ),
            None,
        ],
        AuthOutcome::Anonymous => [
            check(
                LimitKey::Anonymous(client_network(client)),
                settings.per_client_unauthenticated,
                LimitKind::Client,
            ),
            None,
        ],
    }
}

/// One request's claim on its client network's budget for refused credentials
/// (`per_client_unauthenticated`, SPEC §15). A credential check that costs a store read or
/// argon2 charges it *before* the check, so that concurrent refused credentials cannot outrun
/// the budget while they are being checked; a check that succeeds gives the charge back
/// ([`CheckBudget::settle`]). A request charges at most once.
pub struct CheckBudget<'a> {
    limiter: Option<&'a RateLimiter>,
    settings: RateLimitSettings,
    client: IpAddr,
    charged: std::sync::atomic::AtomicBool,
}

impl<'a> CheckBudget<'a> {
    pub fn new(limiter: &'a RateLimiter, settings: &RateLimitSettings, client: IpAddr) -> Self {
        CheckBudget {
            limiter: Some(limiter),
            settings: *settings,
            client,
            charged: Default::default(),
        }
    }

    /// A budget that never refuses (the CLI, and unit tests of the authenticators).
    pub fn unlimited(client: IpAddr) -> CheckBudget<'static> {
        CheckBudget {
            limiter: None,
            settings: RateLimitSettings::default(),
            client,
            charged: Default::default(),
        }
    }

    fn failures(&self) -> Option<(&'a RateLimiter, Limit, LimitKey)> {
        let limiter = self.limiter?;
        let limit = self.settings.per_client_unauthenticated?;
        Some((
            limiter,
            limit,
            LimitKey::Failures(client_network(self.client)),
        ))
    }

    /// Takes this request's slot before a costly check; `Err` when the budget is used up
    /// (nothing is checked then).
    pub fn charge(&self) -> Result<(), Limited> {
        use std::sync::atomic::Ordering;
        let Some((limiter, limit, key)) = self.failures() else {
            return Ok(());
        };
        if self.charged.load(Ordering::Acquire) {
            return Ok(());
        }
        limiter
            .check(key, limit, Instant::now())
            .map_err(|retry_after| Limited {
                kind: LimitKind::Client,
                limit,
                retry_after,
            })?;
        self.charged.store(true, Ordering::Release);
        Ok(())
    }

    pub fn charged(&self) -> bool {
        self.charged.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The quotas this request is held to.
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// Ends the request's authentication. `None`: undecided (the store or Redis could not
    /// answer), so a charge is given back. Otherwise as [`RateLimiter::after_authentication`],
    /// except that a refused credential that was charged is not counted twice and an
    /// authenticated one gets its charge back first.
    pub fn settle(&self, outcome: Option<AuthOutcome>) -> Result<(), Limited> {
        let (Some(limiter), Some(outcome)) = (self.limiter, self.release(outcome)) else {
            return Ok(());
        };
        limiter.after_authentication(&self.settings, self.client, outcome, Instant::now())
    }

    /// The bookkeeping of [`CheckBudget::settle`] without the count: gives a charge back when
    /// it must, and answers the outcome still to be counted (`None`: nothing to count).
    pub fn release(&self, outcome: Option<AuthOutcome>) -> Option<AuthOutcome> {
        let charged = self
            .charged
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let refund = || {
            if let (true, Some((limiter, limit, key))) = (charged, self.failures()) {
                limiter.refund(key, limit, Instant::now());
            }
        };
        self.limiter?;
        match outcome {
            None => {
                refund();
                None
            }
            Some(AuthOutcome::Refused) if charged => None,
            Some(outcome) => {
                if matches!(outcome, AuthOutcome::Authenticated(_)) {
                    refund();
                }
                Some(outcome)
            }
        }
    }
}

/// How a request's authentication ended, as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Authenticated(CredentialLimit),
    /// A credential (or token cookie) was presented and refused.
    Refused,
    /// No credential at all.
    Anonymous,
}

/// governor's clock, stopped at the instant of one check.
#[derive(Debug, Clone, Copy)]
struct Frozen(Nanos);

impl Clock for Frozen {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.0
    }
}

/// One key's state as a governor store for one check. The limiter built for the check starts
/// at `now`, so it reads and writes TATs relative to `now`; the state holds them relative to
/// [`RateLimiter`]'s epoch. A TAT in the past reads as `now`, which GCRA treats the same.
/// Without `count`, the decision is made and no request is counted.
struct Shifted<'a> {
    state: &'a InMemoryState,
    now: Nanos,
    /// The furthest a TAT of this quota can lie ahead of `now`.
    full: Nanos,
    count: bool,
}

impl StateStore for Shifted<'_> {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The inner store writes when its closure answers `Ok`: a counted, conforming request
        // (its new TAT), or a TAT cut down to a full burst of this quota (then kept, whatever
        // the decision, so that the cut is made once). Anything else leaves the state as is.
        let decided = self
            .state
            .measure_and_replace::<Result<T, E>, _, Result<T, E>>(key, |stored| {
                let ahead = stored.map(|tat| tat.saturating_sub(self.now));
                let capped = ahead.map(|ahead| std::cmp::min(ahead, self.full));
                match f(capped) {
                    Ok((outcome, next)) if self.count => Ok((Ok(outcome), next + self.now)),
                    decision => {
                        let decision = decision.map(|(outcome, _)| outcome);
                        match capped {
                            Some(capped) if ahead != Some(capped) => {
                                Ok((decision, capped + self.now))
                            }
                            _ => Err(decision),
                        }
                    }
                }
            });
        match decided {
            Ok(decision) | Err(decision) => decision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u64) -> Limit {
        Limit::new(rps, burst).unwrap()
    }

    const KEY: LimitKey = LimitKey::ApiKey {
        user_id: 1,
        key_id: 1,
    };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(100);
        let t0 = Instant::now();
        let quota = limit(10.0, 5);
        for left in (0..5).rev() {
            assert_eq!(limiter.check(KEY, quota, t0), Ok(left));
        }
        let wait = limiter.check(KEY, quota, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // One interval later exactly one more request conforms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check(KEY, quota, t1).is_ok());
        assert!(limiter.check(KEY, quota, t1).is_err());
        // After the whole burst's worth of time the burst is back.
        let t2 = t1 + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(limiter.check(KEY, quota, t2).is_ok());
        }
        assert!(limiter.check(KEY, quota, t2).is_err());
    }

    #[test]
    fn clients_behind_nat64_count_by_their_ipv4_address() {
        let net = |s: &str| client_network(s.parse().unwrap());
        assert_eq!(net("64:ff9b::1.2.3.4"), net("1.2.3.4"));
        assert_ne!(net("64:ff9b::1.2.3.4"), net("64:ff9b::5.6.7.8"));
        assert_eq!(net("2001:db8::1"), net("2001:db8::2"));
        assert_eq!(net("::ffff:1.2.3.4"), net("1.2.3.4"));
    }

    #[test]
    fn a_refund_gives_back_one_request_never_more() {
        let limiter = RateLimiter::new(100);
        let t0 = Instant::now();
        let quota = limit(0.001, 3);
        for _ in 0..3 {
            assert!(limiter.check(KEY, quota, t0).is_ok());
        }
        assert!(limiter.check(KEY, quota, t0).is_err());
        limiter.refund(KEY, quota, t0);
        assert!(limiter.check(KEY, quota, t0).is_ok());
        assert!(limiter.check(KEY, quota, t0).is_err());
        // Refunds past a full burst leave a full burst, not more.
        for _ in 0..10 {
            limiter.refund(KEY, quota, t0);
        }
        for _ in 0..3 {
            assert!(limiter.check(KEY, quota, t0).is_ok());
        }
        assert!(limiter.check(KEY, quota, t0).is_err());
    }

    #[test]
    fn a_budget_charges_once_refunds_success_and_never_counts_a_failure_twice() {
        let limiter = RateLimiter::new(100);
        let settings = RateLimitSettings {
            per_credential: None,
            per_client_unauthenticated: Some(limit(0.001, 2)),
            max_tracked: 100,
            ..Default::default()
        };
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let failures = LimitKey::Failures(client_network(client));
        // A charged success is refunded: the budget is whole again.
        let budget = CheckBudget::new(&limiter, &settings, client);
        budget.charge().unwrap();
        budget.charge().unwrap();
        assert!(budget.charged());
        let credential = CredentialLimit {
            key: KEY,
            own: None,
            quota: None,
            user_id: 1,
        };
        budget
            .settle(Some(AuthOutcome::Authenticated(credential)))
            .unwrap();
        assert!(limiter
            .check(failures, limit(0.001, 2), Instant::now())
            .is_ok());
        assert!(limiter
            .check(failures, limit(0.001, 2), Instant::now())
            .is_ok());
        assert!(limiter
            .check(failures, limit(0.001, 2), Instant::now())
            .is_err());

        // A charged refusal is counted once: the second refused request still finds its slot.
        let limiter = RateLimiter::new(100);
        let first = CheckBudget::new(&limiter, &settings, client);
        first.charge().unwrap();
        first.settle(Some(AuthOutcome::Refused)).unwrap();
        let second = CheckBudget::new(&limiter, &settings, client);
        second.charge().unwrap();
        // Undecided: given back.
        second.settle(None).unwrap();
        let third = CheckBudget::new(&limiter, &settings, client);
        assert!(third.charge().is_ok());
        let fourth = CheckBudget::new(&limiter, &settings, client);
        assert_eq!(fourth.charge().unwrap_err().kind, LimitKind::Client);
    }

    #[test]
    fn keys_are_independent() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        let quota = limit(1.0, 1);
        assert!(limiter.check(KEY, quota, now).is_ok());
        assert!(limiter.check(KEY, quota, now).is_err());
        assert!(limiter.check(LimitKey::Basic(1), quota, now).is_ok());
    }

    #[test]
    fn peek_counts_nothing() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        let quota = limit(1.0, 2);
        assert!(limiter.peek(KEY, quota, now).is_ok());
        assert_eq!(limiter.tracked(), 0, "a peek remembers no new key");
        assert_eq!(limiter.check(KEY, quota, now), Ok(1));
        for _ in 0..10 {
            assert!(limiter.peek(KEY, quota, now).is_ok());
        }
        assert_eq!(limiter.check(KEY, quota, now), Ok(0));
        assert!(limiter.peek(KEY, quota, now).is_err());
    }

    #[test]
    fn a_new_quota_keeps_the_counters() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(KEY, limit(1.0, 3), now).is_ok());
        }
        assert!(limiter.check(KEY, limit(1.0, 3), now).is_err());
        // A reload doubles the burst: the three used stay used, three more pass.
        for _ in 0..3 {
            assert!(limiter.check(KEY, limit(1.0, 6), now).is_ok());
        }
        assert!(limiter.check(KEY, limit(1.0, 6), now).is_err());
    }

    #[test]
    fn a_faster_quota_caps_past_use_at_one_full_burst() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(KEY, limit(0.1, 5), now).is_ok());
        }
        // 50 s of debt under the old quota; the new one is 100/s with a burst of 10.
        let faster = limit(100.0, 10);
        let wait = limiter.check(KEY, faster, now).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        let later = now + Duration::from_millis(10);
        assert!(limiter.check(KEY, faster, later).is_ok());
        // A peek cuts the debt down as well (an address refused before authentication must
        // not stay refused for the old quota's time).
        let other = LimitKey::Basic(9);
        for _ in 0..5 {
            assert!(limiter.check(other, limit(0.1, 5), now).is_ok());
        }
        assert!(limiter.peek(other, faster, now).is_err());
        assert!(limiter.peek(other, faster, later).is_ok());
    }

    #[test]
    fn memory_stays_at_the_cap_under_a_flood_of_keys() {
        let cap = 1_000;
        let limiter = RateLimiter::new(cap);
        let now = Instant::now();
        let quota = limit(1.0, 1);
        for i in 0..50_000u128 {
            let _ = limiter.check(LimitKey::Anonymous(i << 64), quota, now);
            let _ = limiter.check(LimitKey::Failures(i), quota, now);
        }
        let tracked = limiter.tracked();
        assert!(tracked <= cap, "{tracked} keys tracked, cap {cap}");
        assert!(tracked > 0);
    }

    #[test]
    fn ipv6_clients_count_by_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_network(a), client_network(b));
        assert_ne!(client_network(a), client_network(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v4b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_ne!(client_network(v4), client_network(v4b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_network(v4), client_network(mapped));
    }

    #[test]
    fn quotas_are_validated() {
        assert_eq!(Limit::new(0.0, 1), Err(LimitError::Rate));
        assert_eq!(Limit::new(-1.0, 1), Err(LimitError::Rate));
        assert_eq!(Limit::new(f64::NAN, 1), Err(LimitError::Rate));
        assert_eq!(Limit::new(1.0, 0), Err(LimitError::Burst));
        assert_eq!(Limit::new(1.0, 1 << 40), Err(LimitError::Burst));
        let quota = limit(0.5, 3);
        assert_eq!(quota.window(), (1, 2));
        assert_eq!(limit(3.0, 1).requests_per_second(), 3.0, "shown as given");
        let stored = limit(2.5, 7);
        assert_eq!(
            Limit::from_stored(stored.per_kilosecond(), 7),
            Ok(stored),
            "stored exactly"
        );
        assert_eq!(Limit::from_stored(-1, 7), Err(LimitError::Rate));
        assert_eq!(limit(100.0, 200).window(), (100, 1));
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let limited = Limited {
            kind: LimitKind::Credential,
            limit: limit(100.0, 200),
            retry_after: Duration::from_millis(10),
        };
        assert_eq!(
            limited.policy_header(),
            "\"credential\";q=100;w=1;keyward-burst=200"
        );
        assert_eq!(limited.limit_header(), "\"credential\";r=0;t=1");
        assert_eq!(limited.retry_after_secs(), 1);
        // Both parse as structured-field lists.
        for value in [limited.policy_header(), limited.limit_header()] {
            sfv::Parser::new(&value).parse::<sfv::List>().unwrap();
        }
    }

    #[test]
    fn failures_and_anonymous_requests_are_counted_apart() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        let settings = RateLimitSettings {
            per_credential: None,
            per_client_unauthenticated: Some(limit(1.0, 2)),
            max_tracked: 100,
            ..Default::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..2 {
            limiter
                .after_authentication(&settings, ip, AuthOutcome::Refused, now)
                .unwrap();
        }
        let refused = limiter
            .before_authentication(&settings, ip, now)
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::Client);
        // Anonymous requests from the address have their own count.
        limiter
            .after_authentication(&settings, ip, AuthOutcome::Anonymous, now)
            .unwrap();
        // No per-credential quota: authenticated requests are not limited.
        let credential = CredentialLimit {
            key: KEY,
            own: None,
            quota: None,
            user_id: 1,
        };
        for _ in 0..10 {
            limiter
                .after_authentication(&settings, ip, AuthOutcome::Authenticated(credential), now)
                .unwrap();
        }
        // A key's own quota applies even without `per_credential`.
        let own = CredentialLimit {
            key: KEY,
            own: Some(limit(1.0, 1)),
            quota: None,
            user_id: 1,
        };
        limiter
            .after_authentication(&settings, ip, AuthOutcome::Authenticated(own), now)
            .unwrap();
        let refused = limiter
            .after_authentication(&settings, ip, AuthOutcome::Authenticated(own), now)
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::Credential);
    }

    #[test]
    fn a_users_credentials_share_the_user_limit_and_both_must_pass() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        let settings = RateLimitSettings {
            per_credential: Some(limit(1.0, 2)),
            per_user: Some(limit(1.0, 3)),
            max_tracked: 100,
            ..Default::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let key = |key_id| {
            AuthOutcome::Authenticated(CredentialLimit {
                key: LimitKey::ApiKey { user_id: 7, key_id },
                quota: None,
                own: None,
                user_id: 7,
            })
        };
        let count = |outcome| limiter.after_authentication(&settings, ip, outcome, now);
        count(key(1)).unwrap();
        count(key(1)).unwrap();
        assert_eq!(count(key(1)).unwrap_err().kind, LimitKind::Credential);
        // The second key has its own credential bucket, but the user has one request left.
        count(key(2)).unwrap();
        assert_eq!(count(key(2)).unwrap_err().kind, LimitKind::User);
        // The refusal by the user's limit gave the credential's count back.
        assert_eq!(
            limiter.check(
                LimitKey::ApiKey {
                    user_id: 7,
                    key_id: 2
                },
                limit(1.0, 2),
                now
            ),
            Ok(0)
        );
        // Another user is not affected.
        let other = AuthOutcome::Authenticated(CredentialLimit {
            key: LimitKey::Basic(8),
            own: None,
            user_id: 8,
            quota: None,
        });
        count(other).unwrap();
    }
}
