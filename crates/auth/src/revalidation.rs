//! Revalidation of directory users (SPEC §14): every `identity.ldap.revalidate_every`, each
//! directory user who holds live credentials — an active API key or signature key, an
//! unexpired token, or a login recent enough to be in a replica's login cache — is searched
//! again. One the directory no longer returns through `user_filter` (removed, moved, or
//! filtered out by a lock attribute) is locked in keyward at once: the lock deletes their
//! tokens and is published like any other, so every credential of theirs is refused on every
//! replica (§7). One whose groups or customer changed is updated (also published).
//!
//! A lock is never undone here: a user who comes back in the directory stays locked until an
//! operator unlocks them. The directory cannot say why an entry went away and came back (a
//! rename, a restore from backup, an attacker with write access to one attribute), and the
//! lock has already deleted the user's tokens; unlocking is a decision for a person.
//!
//! One replica sweeps at a time, for the whole sweep ([`SweepLease`]): a replica takes the
//! sweep's lease in the store with one conditional write (`claim_directory_sweep`), renews it
//! while it sweeps, and on finishing writes when it finished; the next sweep starts
//! `revalidate_every` after that, however long this one took. A replica that dies mid-sweep
//! stops renewing: its lease runs out ([`LEASE`]) and another replica takes the sweep over.
//!
//! A sweep reads each configured group's members once, then the users from the store in
//! batches of `revalidate_batch`, each searched once with `user_filter`, a few at a time on the
//! directory's shared connection. A directory that cannot answer ends the sweep (nothing is
//! locked for being unreachable); the next period tries again.

use crate::basic::directory_audit;
use crate::directory::{Directory, DirectoryEntry, GroupMembers};
use crate::Authenticator;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use keyward_metrics::DirectorySeries;
use keyward_store::{now_ms, Db, DirectoryLogin, StoreError, User, UserSource};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Directory searches of one sweep in flight at once.
const CONCURRENT_SEARCHES: usize = 8;

/// How long the sweep's lease lasts unless renewed: how long the fleet waits for a replica that
/// died mid-sweep before another takes the sweep over. The sweeping replica renews it every
/// third of this, whatever its sweep is doing.
pub const LEASE: Duration = Duration::from_secs(30);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The sweep's lease in the store: whoever holds it is the one replica sweeping.
pub struct SweepLease {
    db: Db,
    /// Names this replica's sweeps in the store (random, made once).
    holder: String,
    lease: Duration,
}

/// Why a sweep held under the lease did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLost {
    #[error("the sweep's lease ran out and another replica took the sweep over")]
    TakenOver,
}

impl SweepLease {
    pub fn new(db: Db, lease: Duration) -> SweepLease {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        SweepLease {
            db,
            holder: hex::encode(id),
            lease,
        }
    }

    /// Runs `sweep` when it is this replica's turn — nobody holds the lease, and the last sweep
    /// finished at least `every` ago — holding the lease until it returns; `None`: not this
    /// replica's turn (or the store could not be asked).
    pub async fn run_if_due<T>(
        &self,
        every: Duration,
        sweep: impl Future<Output = T>,
    ) -> Option<Result<T, LeaseLost>> {
        let (holder, every_ms, lease_ms) = (self.holder.clone(), millis(every), millis(self.lease));
        let now = now_ms();
        let claimed = self
            .db
            .call(move |store| async move {
                store
                    .claim_directory_sweep(&holder, every_ms, lease_ms, now)
                    .await
            })
            .await;
        match claimed {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot claim the directory sweep");
                return None;
            }
        }
        let done = tokio::select! {
            done = sweep => done,
            lost = self.keep() => return Some(Err(lost)),
        };
        let holder = self.holder.clone();
        let finished = now_ms();
        let ended = self
            .db
            .call(move |store| async move { store.finish_directory_sweep(&holder, finished).await })
            .await;
        match ended {
            Ok(true) => Some(Ok(done)),
            Ok(false) => Some(Err(LeaseLost::TakenOver)),
            Err(e) => {
                // The lease runs out on its own; the next sweep waits for that.
                tracing::debug!(error = %e, "cannot record the end of the directory sweep");
                Some(Ok(done))
            }
        }
    }

    /// Renews the lease every third of its length; returns when another replica holds it.
    async fn keep(&self) -> LeaseLost {
        let mut ticker = tokio::time::interval(self.lease / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => return LeaseLost::TakenOver,
                // Tried again at the next tick; if the lease runs out meanwhile, the next
                // renewal says so.
                Err(e) => tracing::debug!(error = %e, "cannot renew the directory sweep's lease"),
            }
        }
    }

    async fn renew(&self) -> Result<bool, StoreError> {
        let (holder, lease_ms) = (self.holder.clone(), millis(self.lease));
        let now = now_ms();
        self.db
            .call(move |store| async move {
                store.renew_directory_sweep(&holder, lease_ms, now).await
            })
            .await
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub searched: u64,
    pub locked: u64,
    pub updated: u64,
}

pub struct DirectorySweeper {
    db: Db,
    lease: SweepLease,
    directory: Directory,
    auth: Arc<Authenticator>,
    series: DirectorySeries,
    /// Logins within this long count as live credentials (the login cache's TTL).
    login_ttl: crate::cache::LiveDuration,
}

impl DirectorySweeper {
    pub fn new(
        db: Db,
        directory: Directory,
        auth: Arc<Authenticator>,
        series: DirectorySeries,
        login_ttl: crate::cache::LiveDuration,
    ) -> DirectorySweeper {
        DirectorySweeper {
            lease: SweepLease::new(db.clone(), LEASE),
            db,
            directory,
            auth,
            series,
            login_ttl,
        }
    }

    fn every(&self) -> Duration {
        self.directory.settings().revalidate_every
    }

    /// Sweeps when it is this replica's turn (see [`SweepLease`]); `None`: not its turn (or
    /// the store could not be asked).
    pub async fn sweep_if_due(&self) -> Option<Result<Swept, String>> {
        match self.lease.run_if_due(self.every(), self.sweep()).await? {
            Ok(swept) => Some(swept),
            Err(lost) => Some(Err(lost.to_string())),
        }
    }

    /// Searches every directory user with live credentials again.
    pub async fn sweep(&self) -> Result<Swept, String> {
        let started = Instant::now();
        let batch = i64::try_from(self.directory.settings().revalidate_batch).unwrap_or(100);
        let mut swept = Swept::default();
        let mut after = 0;
        // Read at the first user, once for the whole sweep.
        let mut groups: Option<GroupMembers> = None;
        loop {
            let now = now_ms();
            let seen_since =
                now - i64::try_from(self.login_ttl.get().as_millis()).unwrap_or(i64::MAX / 2);
            let users = self
                .db
                .call(move |store| async move {
                    store
                        .directory_users_to_revalidate(after, batch, seen_since, now)
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = users.last() else {
                break;
            };
            after = last.id;
            if groups.is_none() {
                groups = Some(
                    self.directory
                        .group_members()
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let groups = groups.as_ref();
            // The first search the directory cannot answer ends the batch and the sweep.
            let answers: Vec<_> = futures::stream::iter(users)
                .map(|user| async move {
                    let answer = self
                        .directory
                        .revalidate(&user.name, groups, &user.functions)
                        .await;
                    answer.map(|entry| (user, entry))
                })
                .buffer_unordered(CONCURRENT_SEARCHES)
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            for (user, entry) in answers {
                swept.searched += 1;
                match entry {
                    None => {
                        self.lock(&user).await?;
                        swept.locked += 1;
                    }
                    Some(entry) => {
                        if self.update(&user, entry).await? {
                            swept.updated += 1;
                        }
                    }
                }
            }
        }
        self.series.sweep.observe(started.elapsed().as_secs_f64());
        Ok(swept)
    }

    async fn lock(&self, user: &User) -> Result<(), String> {
        let (id, name) = (user.id, user.name.clone());
        let mut audit = directory_audit("directory", &name);
        audit.operation = "user.lock".into();
        self.db
            .call(move |store| async move { store.set_user_locked(id, true, audit).await })
            .await
            .map_err(|e| e.to_string())?;
        // This replica at once; the others through the change feed (§7).
        self.auth.invalidate_user(id);
        self.series.locks.inc();
        tracing::warn!(
            user = user.name.as_str(),
            "the directory no longer returns this user (identity.ldap.user_filter): locked, every credential refused"
        );
        Ok(())
    }

    /// Writes what changed in the directory; true when something did.
    async fn update(&self, user: &User, entry: DirectoryEntry) -> Result<bool, String> {
        if user.functions == entry.functions && user.customer == entry.customer {
            return Ok(false);
        }
        let login = DirectoryLogin {
            source: UserSource::Ldap,
            name: user.name.clone(),
            customer: entry.customer,
            functions: entry.functions,
            external: self.directory.settings().external,
            seen_ms: None,
        };
        let audit = directory_audit("directory", &user.name);
        self.db
            .call(move |store| async move { store.upsert_directory_user(login, audit).await })
            .await
            .map_err(|e| e.to_string())?;
        self.auth.invalidate_user(user.id);
        tracing::info!(
            user = user.name.as_str(),
            "the directory changed this user's groups or customer: updated"
        );
        Ok(true)
    }
}

#[async_trait]
impl BackgroundService for DirectorySweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Asked often enough that the fleet's sweep starts at most a tenth of a period late.
        let tick = (self.every() / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    match self.sweep_if_due().await {
                        Some(Ok(swept)) => tracing::debug!(
                            searched = swept.searched,
                            locked = swept.locked,
                            updated = swept.updated,
                            "directory users revalidated"
                        ),
                        Some(Err(e)) => tracing::debug!(error = %e, "directory revalidation ended early; the next period tries again"),
                        None => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::{PoolSettings, StoreHealth, StoreUrl};
    use std::sync::Mutex;

    /// The store the replicas share (a real SQLite file).
    fn shared_store(dir: &std::path::Path) -> Db {
        let url = StoreUrl::Sqlite(dir.join("keyward.db"));
        let health = StoreHealth::new(
            prometheus::IntCounter::new("errors", "test").unwrap(),
            prometheus::IntGauge::new("up", "test").unwrap(),
        );
        Db::start(&url, PoolSettings::default_for(&url), health).unwrap()
    }

    type Sweeps = Arc<Mutex<Vec<(Instant, Instant, usize)>>>;

    /// One replica's sweeper loop: asks every 20 ms, each sweep taking `sweep_takes`.
    async fn replica(
        replica: usize,
        lease: Arc<SweepLease>,
        every: Duration,
        sweep_takes: Duration,
        sweeps: Sweeps,
    ) {
        loop {
            let sweeps = sweeps.clone();
            let _ = lease
                .run_if_due(every, async move {
                    let started = Instant::now();
                    tokio::time::sleep(sweep_takes).await;
                    sweeps
                        .lock()
                        .unwrap()
                        .push((started, Instant::now(), replica));
                })
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sweeps much longer than `revalidate_every` and than the lease itself (renewed while they
    /// run) are never overlapped by another replica's, and the next starts `revalidate_every`
    /// after the last one finished.
    #[test]
    fn a_slow_sweep_is_not_overlapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = shared_store(dir.path());
        let every = Duration::from_millis(300);
        let lease = Duration::from_millis(600);
        let sweep_takes = Duration::from_millis(1_500);
        let sweeps: Sweeps = Arc::default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let replicas = (0..3).map(|i| {
                let lease = Arc::new(SweepLease::new(db.clone(), lease));
                tokio::spawn(replica(i, lease, every, sweep_takes, sweeps.clone()))
            });
            let replicas: Vec<_> = replicas.collect();
            tokio::time::sleep(Duration::from_millis(5_500)).await;
            for replica in replicas {
                replica.abort();
            }
        });
        let mut sweeps = sweeps.lock().unwrap().clone();
        sweeps.sort();
        assert!(sweeps.len() >= 2, "{sweeps:?}");
        for pair in sweeps.windows(2) {
            let ((_, ended, _), (next, _, _)) = (pair[0], pair[1]);
            assert!(next > ended, "overlapped: {sweeps:?}");
            // Wall-clock milliseconds in the store, Instants here: a few ms of slack.
            assert!(
                next.duration_since(ended) + Duration::from_millis(10) >= every,
                "started {:?} after the last one finished: {sweeps:?}",
                next.duration_since(ended)
            );
        }
    }

    /// A replica that dies mid-sweep stops renewing: once its lease runs out, another replica
    /// takes the sweep over.
    #[test]
    fn a_dead_replicas_sweep_is_taken_over_when_its_lease_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = shared_store(dir.path());
        let every = Duration::from_millis(100);
        let lease = Duration::from_millis(800);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dying = Arc::new(SweepLease::new(db.clone(), lease));
            let (started, entered) = tokio::sync::oneshot::channel();
            let sweep = tokio::spawn(async move {
                dying
                    .run_if_due(every, async move {
                        let _ = started.send(Instant::now());
                        std::future::pending::<()>().await
                    })
                    .await
            });
            let claimed = entered.await.unwrap();
            // Held and renewed while its replica lives.
            let other = SweepLease::new(db.clone(), lease);
            tokio::time::sleep(2 * lease).await;
            assert!(other.run_if_due(every, async {}).await.is_none());
            // The replica dies.
            sweep.abort();
            let died = Instant::now();
            let taken_over = loop {
                if other.run_if_due(every, async {}).await.is_some() {
                    break Instant::now();
                }
                assert!(died.elapsed() < 3 * lease, "never taken over");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(taken_over > claimed + 2 * lease);
            assert!(
                taken_over.duration_since(died) + Duration::from_millis(10) >= lease / 3,
                "taken over before the lease could have run out"
            );
        });
    }
}
