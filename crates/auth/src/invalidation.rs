//! Follows the store's change feed and drops cache entries that another process made stale.
//!
//! Changes made through this keyward's own admin API are applied to its caches before the call
//! returns; this loop is for everything else — the `keyward user` CLI writing to the same store,
//! and other replicas. With PostgreSQL every committed change is also announced (`NOTIFY`), and
//! the loop reads the feed as soon as the announcement arrives; the poll every
//! `cache.invalidation_poll` is the catch-up path, which alone bounds staleness with SQLite and
//! while the listening connection is down. The feed is read from the last position applied,
//! so nothing written while a replica was cut off is missed. A replica that could not read the
//! feed for longer than the feed is kept drops every cached credential instead.

use crate::Authenticator;
use async_trait::async_trait;
use keyward_metrics::Metrics;
use keyward_store::{housekeep, now_ms, ChangeKind, Db, FeedSignal, Pruned, Retention};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Feed rows are kept this long; a replica that falls further behind flushes everything.
const FEED_RETENTION: Duration = Duration::from_secs(3600);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const BATCH: i64 = 1000;
/// A replica that has not read the feed for this long may have missed pruned rows.
const BLIND_AFTER: Duration = Duration::from_secs(FEED_RETENTION.as_secs() - PRUNE_EVERY.as_secs());

pub struct ChangeFollower {
    db: Db,
    auth: Arc<Authenticator>,
    interval: Duration,
    last_seq: AtomicI64,
    /// When the feed was last read successfully.
    last_read: Mutex<Instant>,
    signal: Arc<FeedSignal>,
    /// `keyward_change_feed_applied_seq`: `last_seq`, for the CLI to wait on.
    applied: prometheus::IntGauge,
    /// `audit.retention` (audit records older than it are deleted; kept forever when unset)
    /// and `usage.retention` (API key usage hours older than it are deleted).
    retention: Retention,
}

impl ChangeFollower {
    /// `start_seq` is the feed position read before the proxy started serving, so nothing
    /// written after it is missed.
    pub fn new(
        db: Db,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        interval: Duration,
        start_seq: i64,
        retention: Retention,
    ) -> ChangeFollower {
        let signal = Arc::new(FeedSignal {
            wake: tokio::sync::Notify::new(),
            listening: metrics.change_feed_listening().clone(),
        });
        let applied = metrics.change_feed_applied().clone();
        applied.set(start_seq);
        ChangeFollower {
            db,
            auth,
            interval,
            applied,
            last_seq: AtomicI64::new(start_seq),
            last_read: Mutex::new(Instant::now()),
            signal,
            retention,
        }
    }

    /// Applies every change after the last one seen. Returns how many were applied.
    pub async fn poll_once(&self) -> usize {
        let mut applied = 0;
        loop {
            let after = self.last_seq.load(Ordering::Acquire);
            let changes = match self
                .db
                .call(move |store| async move { store.changes_since(after, BATCH).await })
                .await
            {
                Ok(changes) => changes,
                Err(e) => {
                    // Counted and logged (once per outage) by the store's health tracker.
                    tracing::debug!(error = %e, "cannot read the change feed");
                    self.flush_if_blind();
                    return applied;
                }
            };
            *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            let count = changes.len();
            for change in &changes {
                match change.kind {
                    ChangeKind::User => self.auth.invalidate_user(change.user_id),
                    ChangeKind::ApiKey => self.auth.api_keys.invalidate_user(change.user_id),
                    ChangeKind::SignatureKey => {
                        self.auth.signatures.invalidate_user(change.user_id)
                    }
                    ChangeKind::Token => self.auth.tokens.invalidate_user_tokens(change.user_id),
                }
                self.last_seq.store(change.seq, Ordering::Release);
            }
            self.applied.set(self.last_seq.load(Ordering::Acquire));
            applied += count;
            if (count as i64) < BATCH {
                return applied;
            }
        }
    }

    /// After longer than the feed's retention without reading it, rows this replica never saw
    /// may have been pruned: every cached credential is dropped, to be read again from the
    /// store when it answers.
    fn flush_if_blind(&self) {
        let mut last_read = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        if last_read.elapsed() >= BLIND_AFTER {
            tracing::warn!(
                "the change feed was unreadable for too long; dropping every cached credential"
            );
            self.auth.invalidate_all();
            *last_read = Instant::now();
        }
    }

    /// Old feed rows, long-expired tokens and audit records past `audit.retention`. Every
    /// replica runs this; the deletes are idempotent.
    async fn prune(&self) {
        let now = now_ms();
        let before = now - FEED_RETENTION.as_millis() as i64;
        if let Err(e) = self
            .db
            .call(move |store| async move { store.prune_changes(before).await })
            .await
        {
            tracing::debug!(error = %e, "cannot prune the change feed");
        }
        let retention = self.retention;
        match self
            .db
            .call(move |store| async move { housekeep(store.as_ref(), now, retention).await })
            .await
        {
            Ok(pruned) if pruned != Pruned::default() => tracing::info!(
                expired_tokens = pruned.tokens,
                audit_records = pruned.audit,
                usage_hours = pruned.usage,
                "store housekeeping deleted expired tokens, and audit records and API key usage past their retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot run the store housekeeping"),
        }
    }
}

/// Writes key last uses to the store every `interval`, off the request path.
pub struct UsageFlusher {
    auth: Arc<Authenticator>,
    interval: Duration,
}

impl UsageFlusher {
    pub fn new(auth: Arc<Authenticator>, interval: Duration) -> UsageFlusher {
        UsageFlusher { auth, interval }
    }
}

#[async_trait]
impl BackgroundService for UsageFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // What was recorded since the last tick is written before exiting.
                    self.auth.flush_usage().await;
                    return;
                }
                _ = ticker.tick() => self.auth.flush_usage().await,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ChangeFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.db.listen(self.signal.clone()) {
            tracing::info!("following the change feed through PostgreSQL notifications");
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick prunes too: a replica started after a long stop catches up at once.
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.signal.wake.notified() => {
                    self.poll_once().await;
                }
                _ = ticker.tick() => {
                    self.poll_once().await;
                    if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                        self.prune().await;
                        last_prune = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }
}
