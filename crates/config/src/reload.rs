//! Live reload: `SIGHUP` (or `keyward reload`) re-reads the configuration file.
//!
//! The running configuration is one snapshot in an [`ArcSwap`]; each request takes it once when
//! it arrives (`RequestCtx::config`) and is decided by it to the end, so a reload applies to
//! the requests that arrive after it and in-flight requests finish on the configuration they
//! started with. A file that does not validate changes nothing: every problem is logged and
//! counted (`keyward_config_reloads_total{outcome="invalid"}`), and the old configuration keeps
//! serving.
//!
//! The file is read whole, once, when it has settled (see [`crate::file`]); a route
//! with neither `public: true` nor `require:` is invalid (SPEC §15), so a file caught cut
//! short in a route refuses the reload instead of opening that route. Write the file to a new
//! name and rename it over the old one (as Kubernetes does with ConfigMap volumes) for a
//! reload that never sees it half-written.
//!
//! What a reload changes: everything read per request — routes, trusted proxies and their
//! header, `limits` (except the connection limits), `rate_limits` (`scope` included: a fleet
//! scope without the Redis the replica started with counts per replica), `tokens`, `api_keys` expiry
//! rules, `forward_credentials` — plus the cache TTLs and the log filter, which the hooks
//! registered with [`LiveConfig::on_reload`] apply. Settings bound to what was built at start
//! (listeners, store, upstreams, Redis, threads, audit file, signature windows, cache
//! capacities) keep their running values; a reload that changes them says which, in one log
//! line, and they take effect at the next restart.

use crate::{file, Config, ConfigError};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use keyward_metrics::Metrics;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Applies a validated configuration to something built at start (cache TTLs, the log filter,
/// TLS certificates). A hook that fails refuses the whole reload: it runs before the swap.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Checks a validated configuration as the file says it, before the settings that need a
/// restart are set back to their running values: what the next start would use must work
/// (the TLS certificates of the shared stores verify). A check that fails refuses the reload.
pub type ReloadCheck = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

pub struct LiveConfig {
    current: ArcSwap<Config>,
    /// The file to re-read; `None` when running on the embedded default.
    path: Option<PathBuf>,
    hooks: Mutex<Vec<ReloadHook>>,
    checks: Mutex<Vec<ReloadCheck>>,
    /// One reload at a time (two SIGHUPs in a row apply in order).
    reloading: Mutex<()>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed settings that keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("keyward runs on the embedded default configuration: there is no file to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Apply(String),
}

impl LiveConfig {
    pub fn new(config: Config, path: Option<PathBuf>) -> LiveConfig {
        LiveConfig {
            current: ArcSwap::from_pointee(config),
            path,
            hooks: Mutex::new(Vec::new()),
            checks: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
        }
    }

    /// The running configuration.
    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Registers something to apply on every successful reload.
    pub fn on_reload(&self, hook: ReloadHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// Registers a check of every reloaded file, as written (see [`ReloadCheck`]).
    pub fn check_on_reload(&self, check: ReloadCheck) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(check);
    }

    /// Re-reads the file and switches to it when it is valid.
    ///
    /// The file is read once into memory, when it has settled (not modified for a few hundred
    /// milliseconds, and unchanged from the start of the read to its end; see
    /// [`crate::file::read_stable`]), bounded in size and time, and only if it is a
    /// regular file. That reading, and the checks (the shared stores' certificate files),
    /// happen before the reload lock is taken, so a file that cannot be read never holds up
    /// the reloads after it. The listener's certificate and key are read by a hook, under the
    /// lock, with the same bounds (regular files only, 1 MiB, 5 s each).
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        let bytes = file::read_stable(path, file::MAX_CONFIG_BYTES).map_err(ConfigError::from)?;
        let mut next = Config::from_bytes(&bytes)?;
        // Checks may take a network round trip: before the lock, like the reading.
        for check in self.checks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            check(&next).map_err(ReloadError::Apply)?;
        }
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let running = self.current();
        let needs_restart = keep_start_settings(&running, &mut next);
        for hook in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            hook(&next).map_err(ReloadError::Apply)?;
        }
        self.current.store(Arc::new(next));
        Ok(Reloaded { needs_restart })
    }

    /// [`reload`](Self::reload), logged and counted.
    pub fn reload_and_report(&self, metrics: &Metrics) {
        match self.reload() {
            Ok(Reloaded { needs_restart }) => {
                metrics.config_reload("ok");
                log_warnings(&self.current());
                if needs_restart.is_empty() {
                    tracing::info!("configuration reloaded");
                } else {
                    tracing::warn!(
                        needs_restart = needs_restart.join(", "),
                        "configuration reloaded; these changed settings keep their running value until a restart"
                    );
                }
            }
            Err(ReloadError::Config(ConfigError::Invalid(issues))) => {
                metrics.config_reload("invalid");
                for issue in &issues {
                    tracing::error!(key = %issue.key, problem = %issue.message, "configuration reload refused");
                }
                tracing::error!(
                    problems = issues.len(),
                    "the new configuration is invalid; still running on the previous one"
                );
            }
            Err(e) => {
                metrics.config_reload("invalid");
                tracing::error!(error = %e, "configuration reload failed; still running on the previous one");
            }
        }
    }
}

/// Logs what a valid configuration says that should change (old key names).
pub fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
}

/// Copies into `next` the settings that only apply at start, and names those that changed.
fn keep_start_settings(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident).+ => $name:literal) => {
            if running.$($field).+ != next.$($field).+ {
                changed.push($name);
                next.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(listen_proxy => "listen.proxy");
    keep!(listen_ops => "listen.ops");
    keep!(listen_admin => "listen.admin");
    keep!(listen_authz => "listen.authz");
    keep!(store => "store.url");
    keep!(store_pool => "store.max_connections/connect_timeout");
    keep!(upstream => "upstream");
    keep!(server => "server");
    keep!(audit_path => "audit.path");
    keep!(audit_retention => "audit.retention");
    keep!(usage_retention => "usage.retention");
    keep!(redis => "redis");
    keep!(ldap => "identity.ldap");
    keep!(oidc => "identity.oidc");
    // The signature key cache's TTLs and capacity are copies of `cache.*`, reported there.
    let mut signatures = next.signatures.clone();
    signatures.key_cache_ttl = running.signatures.key_cache_ttl;
    signatures.key_cache_capacity = running.signatures.key_cache_capacity;
    signatures.negative_ttl = running.signatures.negative_ttl;
    if signatures != running.signatures {
        changed.push("signatures");
    }
    next.signatures = running.signatures.clone();
    keep!(signed_bodies.in_flight => "signatures.bodies_in_flight");
    keep!(signed_bodies.spool_dir => "signatures.spool_dir");
    keep!(limits.max_connections => "limits.max_connections");
    keep!(limits.header_read_timeout => "limits.header_read_timeout");
    keep!(limits.network.max_connections_per_client => "limits.max_connections_per_client");
    keep!(limits.network.max_h2_streams => "limits.max_h2_streams");
    keep!(limits.password_hash_threads => "limits.password_hash_threads");
    keep!(limits.password_failures => "limits.password_failures");
    keep!(limits.password_failure_window => "limits.password_failure_window");
    keep!(cache.basic_capacity => "cache.basic_capacity");
    keep!(cache.api_key_capacity => "cache.api_key_capacity");
    keep!(cache.negative_capacity => "cache.negative_capacity");
    keep!(cache.invalidation_poll => "cache.invalidation_poll");
    keep!(api_keys.last_used_flush => "api_keys.last_used_flush");
    keep!(logging.format => "logging.format");
    // The limiter is sized once; its quotas follow the reload (counters are kept).
    keep!(rate_limits.max_tracked => "rate_limits.max_tracked");
    changed
}

/// Writes the pid file `keyward reload` signals through, and removes it on drop.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reloads on every `SIGHUP` (without it, the signal's default action ends the process).
pub struct HangupReloader {
    live: Arc<LiveConfig>,
    metrics: Arc<Metrics>,
}

impl HangupReloader {
    pub fn new(live: Arc<LiveConfig>, metrics: Arc<Metrics>) -> HangupReloader {
        HangupReloader { live, metrics }
    }
}

#[async_trait]
impl BackgroundService for HangupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP; live reload is off");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    let (live, metrics) = (self.live.clone(), self.metrics.clone());
                    // Reading and validating the file is blocking work.
                    let _ = tokio::task::spawn_blocking(move || live.reload_and_report(&metrics)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen: { proxy: 127.0.0.1:8080, ops: 127.0.0.1:9090 }
upstream: { address: 127.0.0.1:3000 }
store: { url: sqlite://data/keyward.db }
routes:
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

    #[test]
    fn a_reload_swaps_what_it_can_and_keeps_what_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        std::fs::write(&path, BASE).unwrap();
        let live = LiveConfig::new(Config::from_file(&path).unwrap(), Some(path.clone()));
        let before = live.current();
        let applied = Arc::new(Mutex::new(None));
        let seen = applied.clone();
        live.on_reload(Box::new(move |next: &Config| {
            *seen.lock().unwrap() = Some(next.cache.api_key_ttl);
            Ok(())
        }));
        let changed = BASE.replace("127.0.0.1:8080", "127.0.0.1:8081").replace(
            "routes:",
            "cache: { api_key_ttl: 7s }\nroutes:\n  - path: /open\n    public: true",
        );
        std::fs::write(&path, changed).unwrap();
        let reloaded = live.reload().unwrap();
        assert_eq!(reloaded.needs_restart, vec!["listen.proxy"]);
        let after = live.current();
        assert_eq!(after.listen_proxy, "127.0.0.1:8080", "kept until a restart");
        assert_eq!(after.routes.len(), 2);
        assert_eq!(before.routes.len(), 1, "a request's snapshot never changes");
        assert_eq!(
            *applied.lock().unwrap(),
            Some(std::time::Duration::from_secs(7))
        );

        std::fs::write(&path, "routes: [").unwrap();
        assert!(matches!(live.reload(), Err(ReloadError::Config(_))));
        assert_eq!(
            live.current().routes.len(),
            2,
            "an invalid file changes nothing"
        );

        let failing = LiveConfig::new(
            Config::from_file(&path.with_file_name("none")).unwrap_or_else(|_| (*after).clone()),
            Some(path.clone()),
        );
        std::fs::write(&path, BASE).unwrap();
        failing.on_reload(Box::new(|_| Err("listen.tls.cert: unreadable".into())));
        assert!(matches!(failing.reload(), Err(ReloadError::Apply(_))));
        assert_eq!(
            failing.current().routes.len(),
            2,
            "a failing hook refuses the reload"
        );

        // A check sees the file as written (here the new listen.proxy, which a reload keeps
        // at its running value), and refuses the reload when it fails.
        let checked = LiveConfig::new((*after).clone(), Some(path.clone()));
        let seen = Arc::new(Mutex::new(None));
        let seen_by_check = seen.clone();
        checked.check_on_reload(Box::new(move |next: &Config| {
            *seen_by_check.lock().unwrap() = Some(next.listen_proxy.clone());
            Err("redis.tls.ca: the server's certificate does not verify".into())
        }));
        std::fs::write(&path, BASE.replace("127.0.0.1:8080", "127.0.0.1:8082")).unwrap();
        match checked.reload() {
            Err(ReloadError::Apply(message)) => assert!(message.starts_with("redis.tls.ca")),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.lock().unwrap().as_deref(), Some("127.0.0.1:8082"));
        assert_eq!(
            checked.current().routes.len(),
            2,
            "a failing check refuses the reload"
        );

        let embedded = LiveConfig::new((*after).clone(), None);
        assert!(matches!(embedded.reload(), Err(ReloadError::NoFile)));
    }
}
