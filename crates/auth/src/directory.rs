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
//! bind, which succeeds without proving anything). A name the search does not find costs a
//! bind all the same — with the password, as [`ABSENT_RDN`] under `user_base`, an entry that
//! does not exist — so that an unknown name does the directory work of a wrong password and
//! answers no faster.
//!
//! Revalidation reads each group's members once per sweep ([`Directory::group_members`]) and
//! searches each user once, with `user_filter`; the groups are asked about the user the login's
//! way (by the server's matching rules) only where the members read say something other than
//! what keyward holds, so that a change is always decided by the directory itself.
//!
//! All directory I/O runs on a runtime of its own (one thread, like the store's), every
//! operation bounded by `identity.ldap.timeout`: a slow or dead directory never holds a proxy
//! thread. The service connection is kept and shared (LDAP multiplexes requests on one
//! connection); a failed one is dropped and made again at the next call, so a directory that
//! comes back is used again without a restart.

use keyward_config::LdapSettings;
use keyward_metrics::DirectorySeries;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use std::collections::HashSet;
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
/// The entry, under `user_base`, that an unknown name's bind is made as: one that does not exist
/// (see the module's notes).
pub const ABSENT_RDN: &str = "cn=keyward-no-such-user";

/// Attributes that name a group's members: DNs (`member`, `uniqueMember`) or login names
/// (`memberUid`).
const MEMBER_DN_ATTRIBUTES: [&str; 2] = ["member", "uniqueMember"];
const MEMBER_NAME_ATTRIBUTE: &str = "memberUid";

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

/// The members of one configured group, as read once for a revalidation sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Members {
    /// Member DNs (ASCII lower-cased) and member login names.
    Read {
        dns: HashSet<String>,
        names: HashSet<String>,
    },
    /// Not read whole (a server that hands out large groups in ranges, as Active Directory
    /// does past 1 500 members): each user is asked about this group the login's way.
    Unread,
}

impl Members {
    fn names(&self, dn: &str, name: &str) -> Option<bool> {
        match self {
            Members::Read { dns, names } => {
                Some(dns.contains(&dn.to_ascii_lowercase()) || names.contains(name))
            }
            Members::Unread => None,
        }
    }
}

/// The configured groups' members, read once for a revalidation sweep
/// ([`Directory::group_members`]), in `identity.ldap.groups`' order; shared by the sweep's
/// searches, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembers(Arc<Vec<Members>>);

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
        if let Some(var) = &settings.bind_password_unset {
            return Err(format!(
                "bind_password_env: the environment variable {var} is not set (or is empty)"
            ));
        }
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

    /// Reads the members of every configured group (one base search each), for a sweep.
    pub async fn group_members(&self) -> Result<GroupMembers, DirectoryUnavailable> {
        self.on_runtime(move |inner| async move {
            inner
                .with_service(|inner, ldap| async move { inner.group_members(&ldap).await })
                .await
        })
        .await
    }

    /// Revalidation's question: what the directory says of `name` now (`None`: it no longer
    /// returns them through `user_filter`), one search for the entry. Functions come from
    /// `groups` (read once per sweep; a group not read whole is asked about the entry alone).
    /// Where they say something other than `known` (the functions keyward holds), or without
    /// `groups`, every group is asked about the entry the login's way, so that only the
    /// directory's own matching changes a user.
    pub async fn revalidate(
        &self,
        name: &str,
        groups: Option<&GroupMembers>,
        known: &[String],
    ) -> Result<Option<DirectoryEntry>, DirectoryUnavailable> {
        let name = name.to_owned();
        let groups = groups.cloned();
        let known = known.to_vec();
        self.on_runtime(move |inner| async move {
            inner
                .with_service(|inner, ldap| {
                    let (name, groups, known) = (name.clone(), groups.clone(), known.clone());
                    async move {
                        let mut searcher = ldap.clone();
                        let Some(found) = inner.find(&mut searcher, &name).await? else {
                            return Ok(None);
                        };
                        let read = match &groups {
                            Some(groups) => {
                                inner
                                    .functions_from(&ldap, &found.dn, &name, groups)
                                    .await?
                            }
                            None => None,
                        };
                        let functions = match read {
                            Some(functions) if functions == known => functions,
                            _ => inner.functions(&ldap, &found.dn, &name).await?,
                        };
                        Ok(Some(inner.entry_with(found, functions)))
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

    /// The entry's customer and functions, the groups asked the login's way.
    async fn entry(
        &self,
        ldap: &Ldap,
        name: &str,
        found: SearchEntry,
    ) -> Result<DirectoryEntry, DirectoryUnavailable> {
        let functions = self.functions(ldap, &found.dn, name).await?;
        Ok(self.entry_with(found, functions))
    }

    /// The entry found with `functions`; the customer from `customer_attribute`.
    fn entry_with(&self, found: SearchEntry, functions: Vec<String>) -> DirectoryEntry {
        let customer = self.settings.customer_attribute.as_ref().and_then(|a| {
            found
                .attrs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(a))
                .and_then(|(_, values)| values.first().cloned())
        });
        DirectoryEntry {
            dn: found.dn,
            customer,
            functions,
        }
    }

    /// Whether `group` names the entry (`filter`: its DN or login name as a member), by the
    /// server's own matching: a base search on the group.
    async fn is_member(
        &self,
        ldap: &Ldap,
        group: &str,
        filter: &str,
    ) -> Result<bool, DirectoryUnavailable> {
        let mut ldap = ldap.clone();
        let answer = self
            .bounded(ldap.with_timeout(self.timeout()).search(
                group,
                Scope::Base,
                filter,
                vec!["1.1"],
            ))
            .await?;
        match answer.1.rc {
            SUCCESS => Ok(!entries(answer.0).is_empty()),
            // The group does not exist (any more): nobody is in it.
            NO_SUCH_OBJECT => {
                tracing::debug!(group, "identity.ldap.groups: no such group");
                Ok(false)
            }
            rc => Err(DirectoryUnavailable(format!(
                "the group search on {group} failed: rc {rc} {}",
                answer.1.text
            ))),
        }
    }

    /// The filter that finds the entry (`dn`, login `name`) among a group's members.
    fn member_filter(dn: &str, name: &str) -> String {
        format!(
            "(|(member={dn})(uniqueMember={dn})(memberUid={name}))",
            dn = ldap3::ldap_escape(dn),
            name = ldap3::ldap_escape(name),
        )
    }

    /// Reads each configured group's members: one base search per group.
    async fn group_members(&self, ldap: &Ldap) -> Result<GroupMembers, DirectoryUnavailable> {
        let mut attributes: Vec<&str> = MEMBER_DN_ATTRIBUTES.to_vec();
        attributes.push(MEMBER_NAME_ATTRIBUTE);
        let reads = self.settings.groups.iter().map(|(group, _)| {
            let mut ldap = ldap.clone();
            let attributes = attributes.clone();
            async move {
                self.bounded(ldap.with_timeout(self.timeout()).search(
                    group,
                    Scope::Base,
                    "(objectClass=*)",
                    attributes,
                ))
                .await
            }
        });
        let answers = futures::future::join_all(reads).await;
        let mut groups = Vec::with_capacity(answers.len());
        for ((group, _), answer) in self.settings.groups.iter().zip(answers) {
            let answer = answer?;
            let members = match answer.1.rc {
                SUCCESS => members_of(entries(answer.0)),
                NO_SUCH_OBJECT => Members::Read {
                    dns: HashSet::new(),
                    names: HashSet::new(),
                },
                rc => {
                    return Err(DirectoryUnavailable(format!(
                        "reading the group {group} failed: rc {rc} {}",
                        answer.1.text
                    )))
                }
            };
            groups.push(members);
        }
        Ok(GroupMembers(Arc::new(groups)))
    }

    /// The functions `groups` (read for the sweep) give the entry; groups not read whole are
    /// asked about it. `None` when `groups` was read for other settings (a reload changed
    /// `identity.ldap.groups`).
    async fn functions_from(
        &self,
        ldap: &Ldap,
        dn: &str,
        name: &str,
        groups: &GroupMembers,
    ) -> Result<Option<Vec<String>>, DirectoryUnavailable> {
        if groups.0.len() != self.settings.groups.len() {
            return Ok(None);
        }
        let mut functions = Vec::new();
        for ((group, granted), members) in self.settings.groups.iter().zip(groups.0.iter()) {
            let member = match members.names(dn, name) {
                Some(member) => member,
                None => {
                    self.is_member(ldap, group, &Self::member_filter(dn, name))
                        .await?
                }
            };
            if member {
                functions.extend(granted.iter().cloned());
            }
        }
        functions.sort();
        functions.dedup();
        Ok(Some(functions))
    }

    /// The functions of the configured groups that name the entry, asked together.
    async fn functions(
        &self,
        ldap: &Ldap,
        dn: &str,
        name: &str,
    ) -> Result<Vec<String>, DirectoryUnavailable> {
        let filter = Self::member_filter(dn, name);
        let checks = self
            .settings
            .groups
            .iter()
            .map(|(group, _)| self.is_member(ldap, group, &filter));
        let answers = futures::future::join_all(checks).await;
        let mut functions = Vec::new();
        for ((_, granted), answer) in self.settings.groups.iter().zip(answers) {
            if answer? {
                functions.extend(granted.iter().cloned());
            }
        }
        functions.sort();
        functions.dedup();
        Ok(functions)
    }

    /// A simple bind as `dn` with `password` on a connection of its own (a bind changes who a
    /// connection is); the server's result code.
    async fn bind_as(
        &self,
        dn: &str,
        password: &str,
    ) -> Result<(u32, String), DirectoryUnavailable> {
        let mut own = self.connect().await?;
        let bound = self
            .bounded(own.with_timeout(self.timeout()).simple_bind(dn, password))
            .await;
        let _ = tokio::time::timeout(self.timeout(), own.unbind()).await;
        let bound = bound?;
        Ok((bound.rc, bound.text))
    }

    async fn login(
        &self,
        ldap: Ldap,
        name: &str,
        password: &str,
    ) -> Result<Login, DirectoryUnavailable> {
        let mut searcher = ldap.clone();
        let Some(found) = self.find(&mut searcher, name).await? else {
            // The directory work of a wrong password (a connection, a bind that fails), so
            // that an unknown name answers no faster than a known one: with the password, as
            // an entry that does not exist, so that no account's failed-bind count moves.
            // Whatever it answers, the name is unknown.
            let absent = format!("{ABSENT_RDN},{}", self.settings.user_base);
            let _ = self.bind_as(&absent, password).await?;
            return Ok(Login::NoSuchUser);
        };
        let (rc, text) = self.bind_as(&found.dn, password).await?;
        match rc {
            SUCCESS => {}
            rc if REFUSED_BIND.contains(&rc) => return Ok(Login::BadPassword),
            rc => {
                return Err(DirectoryUnavailable(format!(
                    "the bind failed: rc {rc} {text}"
                )))
            }
        }
        Ok(Login::Accepted(self.entry(&ldap, name, found).await?))
    }
}

/// A group entry's members; a value handed out in ranges (`member;range=0-1499`) leaves the
/// group unread.
fn members_of(found: Vec<SearchEntry>) -> Members {
    let mut dns = HashSet::new();
    let mut names = HashSet::new();
    for entry in found {
        for (attribute, values) in entry.attrs {
            let (base, options) = attribute
                .split_once(';')
                .map_or((attribute.as_str(), ""), |(b, o)| (b, o));
            if options.to_ascii_lowercase().contains("range=") {
                return Members::Unread;
            }
            if MEMBER_DN_ATTRIBUTES
                .iter()
                .any(|a| a.eq_ignore_ascii_case(base))
            {
                dns.extend(values.iter().map(|v| v.to_ascii_lowercase()));
            } else if base.eq_ignore_ascii_case(MEMBER_NAME_ATTRIBUTE) {
                names.extend(values);
            }
        }
    }
    Members::Read { dns, names }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: "cn=g,ou=groups,dc=example,dc=com".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<HashMap<_, _>>(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn members_are_read_from_dns_and_names() {
        let members = members_of(vec![entry(&[
            ("member", &["uid=Alice,ou=People,dc=example,dc=com"]),
            ("uniquemember", &["uid=bob,ou=people,dc=example,dc=com"]),
            ("memberUid", &["carol"]),
        ])]);
        assert_eq!(
            members.names("uid=alice,ou=people,dc=example,dc=com", "alice"),
            Some(true),
            "DNs compared without regard to ASCII case"
        );
        assert_eq!(
            members.names("uid=bob,ou=people,dc=example,dc=com", "bob"),
            Some(true)
        );
        assert_eq!(
            members.names("uid=carol,ou=people,dc=example,dc=com", "carol"),
            Some(true)
        );
        assert_eq!(
            members.names("uid=dave,ou=people,dc=example,dc=com", "dave"),
            Some(false)
        );
        // A group without members names nobody.
        assert_eq!(members_of(vec![]).names("uid=x", "x"), Some(false));
    }

    #[test]
    fn a_group_handed_out_in_ranges_is_unread() {
        let members = members_of(vec![entry(&[(
            "member;range=0-1499",
            &["CN=A,DC=corp,DC=example,DC=com"],
        )])]);
        assert_eq!(members, Members::Unread);
        assert_eq!(members.names("CN=A,DC=corp,DC=example,DC=com", "a"), None);
    }
}
