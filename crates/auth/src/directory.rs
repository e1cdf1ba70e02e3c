//! Directory users (`identity.ldap`, SPEC §14): a login name and password checked against an
//! LDAP directory, and the same directory asked again whether it still vouches for a user.
//!
//! A login is a search under `user_base` with `user_filter` — the name put in place of
//! `{user}` escaped per RFC 4515 by `ldap3::ldap_escape`, so a name is only ever a value —
//! made as the service account, then a simple bind as the one entry found, on a connection of
//! its own. Functions come from the configured groups: each is asked, with a base search on
//! the group's DN, whether it names the entry (`member`, `uniqueMember`) or the name
//! (`memberUid`); the server compares DNs by its own matching rules. An empty password never
//! reaches the directory (RFC 4513 §5.1.2: a bind with a DN and no password is an anonymous
//! bind, which succeeds without proving anything).
//!
//! All directory I/O runs on a runtime of its own (one thread, like the store's), every
//! operation bounded by `identity.ldap.timeout`: a slow or dead directory never holds a proxy
//! thread. The service connection is kept and shared (LDAP multiplexes requests on one
//! connection); a failed one is dropped and made again at the next call, so a directory that
//! comes back is used again without a restart.

use keyward_config::LdapSettings;
use keyward_metrics::DirectorySeries;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `rc` values (RFC 4511 §4.1.9) of a bind that refuse the credential rather than fail.
const REFUSED_BIND: [u32; 5] = [
    19, // constraintViolation (password policy)
    48, // inappropriateAuthentication
    49, // invalidCredentials
    50, // insufficientAccessRights
    53, // unwillingToPerform
];
const SUCCESS: u32 = 0;
const SIZE_LIMIT_EXCEEDED: u32 = 4;
const NO_SUCH_OBJECT: u32 = 32;

/// What the directory says of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub dn: String,
    /// The first value of `customer_attribute`.
    pub customer: Option<String>,
    /// From the groups the entry belongs to; sorted, without repeats.
    pub functions: Vec<String>,
}

/// The outcome of a directory login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Accepted(DirectoryEntry),
    /// No entry (or more than one) matches `user_filter` for the name.
    NoSuchUser,
    /// The entry refused the password (or the password is empty).
    BadPassword,
}

/// The directory could not answer (unreachable, TLS, timeout, the service account refused,
/// a search that failed): new directory logins get 503, and nothing is locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the directory is unavailable: {0}")]
pub struct DirectoryUnavailable(pub String);

impl From<LdapError> for DirectoryUnavailable {
    fn from(e: LdapError) -> Self {
        DirectoryUnavailable(e.to_string())
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// `keyward_directory_up`, the error counter, and one log line per transition.
struct Health {
    series: DirectorySeries,
    state: AtomicU8,
}

impl Health {
    fn ok(&self) {
        self.series.up.set(1);
        if self.state.swap(UP, Ordering::AcqRel) == DOWN {
            tracing::info!("the directory answers again; directory logins work again");
        }
    }

    fn failed(&self, e: &DirectoryUnavailable) {
        self.series.errors.inc();
        self.series.up.set(0);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::warn!(error = %e.0, "the directory cannot be reached: new directory logins get 503, cached logins keep working until their TTL");
        }
    }
}

struct Inner {
    settings: LdapSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The service account's connection, shared by searches; `None` until made, or after it
    /// failed.
    service: tokio::sync::Mutex<Option<Ldap>>,
    health: Health,
}

/// The directory of `identity.ldap`.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

impl Directory {
    /// Starts the directory's runtime; connects lazily (a directory down at start is an
    /// outage like any other, not a reason to stop keyward).
    pub fn start(settings: LdapSettings, series: DirectorySeries) -> Result<Directory, String> {
        let tls = match &settings.ca_pem {
            Some(pem) => Some(Arc::new(client_config(pem)?)),
            None => {
                // ldap3 then trusts the system's roots, on the process's default provider.
                let _ = rustls::crypto::ring::default_provider().install_default();
                None
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyward-ldap")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle().clone();
        // Never dropped, like the store's: dropping a runtime inside another one panics.
        std::mem::forget(runtime);
        Ok(Directory {
            inner: Arc::new(Inner {
                settings,
                tls,
                service: tokio::sync::Mutex::new(None),
                health: Health {
                    series,
                    state: AtomicU8::new(UNKNOWN),
                },
            }),
            runtime: handle,
        })
    }

    pub fn settings(&self) -> &LdapSettings {
        &self.inner.settings
    }

    /// Runs `f` on the directory runtime.
    async fn on_runtime<T, F, Fut>(&self, f: F) -> Result<T, DirectoryUnavailable>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, DirectoryUnavailable>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.inner.clone());
        let result = match self.runtime.spawn(fut).await {
            Ok(result) => result,
            Err(e) => Err(DirectoryUnavailable(e.to_string())),
        };
        match &result {
            Ok(_) => self.inner.health.ok(),
            Err(e) => self.inner.health.failed(e),
        }
        result
    }

    /// Checks `name` and `password` against the directory.
    pub async fn login(&self, name: &str, password: &str) -> Result<Login, DirectoryUnavailable> {
        if password.is_empty() {
            return Ok(Login::BadPassword);
        }
        let (name, password) = (name.to_owned(), password.to_owned());
        self.on_runtime(move |inner| async move {
            inner
                .with_service(|inner, ldap| {
                    let (name, password) = (name.clone(), password.clone());
                    async move { inner.login(ldap, &name, &password).await }
                })
                .await
        })
        .await
    }

    /// What the directory says of `name` now; `None`: it no longer returns them.
    pub async fn lookup(&self, name: &str) -> Result<Option<DirectoryEntry>, DirectoryUnavailable> {
        let name = name.to_owned();
        self.on_runtime(move |inner| async move {
            inner
                .with_service(|inner, ldap| {
                    let name = name.clone();
                    async move {
                        let mut searcher = ldap.clone();
                        match inner.find(&mut searcher, &name).await? {
                            None => Ok(None),
                            Some(found) => Ok(Some(inner.entry(&ldap, &name, found).await?)),
                        }
                    }
                })
                .await
        })
        .await
    }
}

/// A rustls client trusting exactly the PEM certificates of `identity.ldap.ca`.
fn client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|e| format!("identity.ldap.ca: {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("identity.ldap.ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A search's entries, referrals and intermediate messages left out.
fn entries(found: Vec<ldap3::ResultEntry>) -> Vec<SearchEntry> {
    found
        .into_iter()
        .filter(|e| !e.is_ref() && !e.is_intermediate())
        .map(SearchEntry::construct)
        .collect()
}

impl Inner {
    fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Bounds `op` by the configured timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, LdapError>>,
    ) -> Result<T, DirectoryUnavailable> {
        match tokio::time::timeout(self.timeout(), op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(DirectoryUnavailable(format!(
                "no answer within {:?}",
                self.timeout()
            ))),
        }
    }

    /// A new connection (TLS as configured), driven on this runtime.
    async fn connect(&self) -> Result<Ldap, DirectoryUnavailable> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout())
            .set_starttls(self.settings.start_tls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = self
            .bounded(LdapConnAsync::with_settings(settings, &self.settings.url))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        Ok(ldap)
    }

    /// The shared service connection, made (and bound as `bind_dn`) when there is none.
    async fn service(&self) -> Result<(Ldap, bool), DirectoryUnavailable> {
        let mut slot = self.service.lock().await;
        if let Some(ldap) = slot.as_mut() {
            if !ldap.is_closed() {
                return Ok((ldap.clone(), true));
            }
        }
        *slot = None;
        let mut ldap = self.connect().await?;
        if let Some((dn, password)) = &self.settings.bind {
            let bound = self.bounded(ldap.simple_bind(dn, &password.0)).await?;
            if bound.rc != SUCCESS {
                return Err(DirectoryUnavailable(format!(
                    "the service account (identity.ldap.bind_dn) cannot bind: rc {} {}",
                    bound.rc, bound.text
                )));
            }
        }
        *slot = Some(ldap.clone());
        Ok((ldap, false))
    }

    /// Runs `op` with the service connection; a kept connection that fails (the directory
    /// restarted, an idle timeout) is dropped and `op` tried once more on a new one.
    async fn with_service<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<T, DirectoryUnavailable>
    where
        F: Fn(Arc<Inner>, Ldap) -> Fut,
        Fut: Future<Output = Result<T, DirectoryUnavailable>>,
    {
        let (ldap, kept) = self.service().await?;
        match op(self.clone(), ldap).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                *self.service.lock().await = None;
                if !kept {
                    return Err(e);
                }
                let (ldap, _) = self.service().await?;
                let answer = op(self.clone(), ldap).await;
                if answer.is_err() {
                    *self.service.lock().await = None;
                }
                answer
            }
        }
    }

    /// The one entry `user_filter` finds for `name`; `None` for none or several.
    async fn find(
        &self,
        ldap: &mut Ldap,
        name: &str,
    ) -> Result<Option<SearchEntry>, DirectoryUnavailable> {
        let filter = self.settings.filter_for(name);
        let attributes: Vec<&str> = match &self.settings.customer_attribute {
            Some(attribute) => vec![attribute.as_str()],
            None => vec!["1.1"],
        };
        let found = self
            .bounded(
                ldap.with_search_options(SearchOptions::new().sizelimit(2))
                    .with_timeout(self.timeout())
                    .search(
                        &self.settings.user_base,
                        Scope::Subtree,
                        &filter,
                        attributes,
                    ),
            )
            .await?;
        let (found, result) = (found.0, found.1);
        match result.rc {
            SUCCESS => {}
            SIZE_LIMIT_EXCEEDED => {
                tracing::warn!(
                    user = name,
                    "identity.ldap.user_filter matches several entries for this name: refused"
                );
                return Ok(None);
            }
            rc => {
                return Err(DirectoryUnavailable(format!(
                    "the user search failed: rc {rc} {}",
                    result.text
                )))
            }
        }
        let mut found = entries(found);
        if found.len() > 1 {
            return Ok(None);
        }
        Ok(found.pop().filter(|entry| !entry.dn.is_empty()))
    }

    /// The entry's customer and functions.
    async fn entry(
        &self,
        ldap: &Ldap,
        name: &str,
        found: SearchEntry,
    ) -> Result<DirectoryEntry, DirectoryUnavailable> {
        let customer = self.settings.customer_attribute.as_ref().and_then(|a| {
            found
                .attrs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(a))
                .and_then(|(_, values)| values.first().cloned())
        });
        let functions = self.functions(ldap, &found.dn, name).await?;
        Ok(DirectoryEntry {
            dn: found.dn,
            customer,
            functions,
        })
    }

    /// The functions of the configured groups that name the entry, asked together.
    async fn functions(
        &self,
        ldap: &Ldap,
        dn: &str,
        name: &str,
    ) -> Result<Vec<String>, DirectoryUnavailable> {
        let filter = format!(
            "(|(member={dn})(uniqueMember={dn})(memberUid={name}))",
            dn = ldap3::ldap_escape(dn),
            name = ldap3::ldap_escape(name),
        );
        let checks = self.settings.groups.iter().map(|(group, _)| {
            let mut ldap = ldap.clone();
            let filter = filter.as_str();
            async move {
                self.bounded(ldap.with_timeout(self.timeout()).search(
                    group,
                    Scope::Base,
                    filter,
                    vec!["1.1"],
                ))
                .await
            }
        });
        let answers = futures::future::join_all(checks).await;
        let mut functions = Vec::new();
        for ((group, granted), answer) in self.settings.groups.iter().zip(answers) {
            let answer = answer?;
            match answer.1.rc {
                SUCCESS if !entries(answer.0).is_empty() => functions.extend(granted.clone()),
                SUCCESS => {}
                // The group does not exist (any more): nobody is in it.
                NO_SUCH_OBJECT => {
                    tracing::debug!(
                        group = group.as_str(),
                        "identity.ldap.groups: no such group"
                    )
                }
                rc => {
                    return Err(DirectoryUnavailable(format!(
                        "the group search on {group} failed: rc {rc} {}",
                        answer.1.text
                    )))
                }
            }
        }
        functions.sort();
        functions.dedup();
        Ok(functions)
    }

    async fn login(
        &self,
        ldap: Ldap,
        name: &str,
        password: &str,
    ) -> Result<Login, DirectoryUnavailable> {
        let mut searcher = ldap.clone();
        let Some(found) = self.find(&mut searcher, name).await? else {
            return Ok(Login::NoSuchUser);
        };
        // The bind changes who a connection is, so it gets a connection of its own.
        let mut own = self.connect().await?;
        let bound = self
            .bounded(
                own.with_timeout(self.timeout())
                    .simple_bind(&found.dn, password),
            )
            .await;
        let _ = tokio::time::timeout(self.timeout(), own.unbind()).await;
        let bound = bound?;
        match bound.rc {
            SUCCESS => {}
            rc if REFUSED_BIND.contains(&rc) => return Ok(Login::BadPassword),
            rc => {
                return Err(DirectoryUnavailable(format!(
                    "the bind failed: rc {rc} {}",
                    bound.text
                )))
            }
        }
        Ok(Login::Accepted(self.entry(&ldap, name, found).await?))
    }
}
