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
//! The fleet sweeps once per period: a replica claims the sweep with one conditional write to
//! the store (`claim_directory_sweep`), and the others find it claimed. Users are read from the
//! store in batches of `revalidate_batch` and searched a few at a time on the directory's
//! shared connection. A directory that cannot answer ends the sweep (nothing is locked for
//! being unreachable); the next period tries again.

use crate::basic::directory_audit;
use crate::directory::{Directory, DirectoryEntry};
use crate::Authenticator;
use async_trait::async_trait;
use futures::StreamExt;
use keyward_metrics::DirectorySeries;
use keyward_store::{now_ms, Db, DirectoryLogin, User};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Directory searches of one sweep in flight at once.
const CONCURRENT_SEARCHES: usize = 8;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub searched: u64,
    pub locked: u64,
    pub updated: u64,
}

pub struct DirectorySweeper {
    db: Db,
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

    /// Sweeps when no replica has in the last `revalidate_every`; `None`: not this one's turn
    /// (or the store could not be asked).
    pub async fn sweep_if_due(&self) -> Option<Result<Swept, String>> {
        let every_ms = i64::try_from(self.every().as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let claimed = self
            .db
            .call(move |store| async move { store.claim_directory_sweep(every_ms, now).await })
            .await;
        match claimed {
            Ok(true) => Some(self.sweep().await),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot claim the directory sweep");
                None
            }
        }
    }

    /// Searches every directory user with live credentials again.
    pub async fn sweep(&self) -> Result<Swept, String> {
        let started = Instant::now();
        let batch = i64::try_from(self.directory.settings().revalidate_batch).unwrap_or(100);
        let mut swept = Swept::default();
        let mut after = 0;
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
            let answers: Vec<_> = futures::stream::iter(users)
                .map(|user| async move {
                    let answer = self.directory.lookup(&user.name).await;
                    (user, answer)
                })
                .buffer_unordered(CONCURRENT_SEARCHES)
                .collect()
                .await;
            for (user, answer) in answers {
                let entry = answer.map_err(|e| e.to_string())?;
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
