//! `keyward serve`: assembles the services from a validated config and runs them.

use crate::admin::AdminApi;
use crate::audit::AuditLog;
use crate::auth::api_key::{ApiKeyAuthenticator, KeyHasher};
use crate::auth::basic::{BasicAuthenticator, ThrottleSettings};
use crate::auth::password::PasswordHasher;
use crate::auth::quota::QuotaCounter;
use crate::auth::signature::SignatureAuthenticator;
use crate::auth::token::TokenAuthenticator;
use crate::auth::Authenticator;
use crate::cache::CacheSettings;
use crate::cache::LiveDuration;
use crate::config::{BootstrapAdmin, Config};
use crate::connection::ConnectionLimits;
use crate::fleet::FleetClaims;
use crate::fleet_limit::{FleetLimiter, Limits};
use crate::invalidation::{ChangeFollower, UsageFlusher};
use crate::logging::LogFilterHandle;
use crate::metrics::Metrics;
use crate::ops::{bind_listener, OpsApp, OpsListener, Readiness};
use crate::proxy::upload::UploadSpool;
use crate::proxy::{KeywardProxy, Listener, ProxyParts};
use crate::ratelimit::RateLimiter;
use crate::reload::{HangupReloader, LiveConfig, PidFile};
use crate::store::{Db, Retention, StoreError, StoreHealth};
use crate::tls::{CertificateExpiry, TlsCertificates};
use crate::users::{self, UserSpec};
use anyhow::{anyhow, Context};
use pingora::apps::HttpServerOptions;
use pingora::lb::{health_check::TcpHealthCheck, selection::RoundRobin, LoadBalancer};
use pingora::listeners::tls::Acceptor;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;

/// `path`: the file the configuration came from, re-read on `SIGHUP`; `None` for the
/// embedded default. `log_filter`: how a reload changes the log filter (see `logging::init`).
pub fn serve(
    config: Config,
    path: Option<PathBuf>,
    log_filter: Option<LogFilterHandle>,
) -> anyhow::Result<()> {
    crate::reload::log_warnings(&config);
    let live = Arc::new(LiveConfig::new(config, path));
    let config = live.current();
    // Ports first: a port in use stops keyward here, with the listener named, instead of
    // pingora retrying the bind for half a minute while the process looks alive.
    let ops_listener = bind_listener("listen.ops", &config.listen_ops)?;
    let mut proxy_listeners = Vec::new();
    for (key, address) in [
        ("listen.proxy", Some(&config.listen_proxy)),
        ("listen.admin", config.listen_admin.as_ref()),
        ("listen.authz", config.listen_authz.as_ref()),
    ] {
        let Some(address) = address else { continue };
        let probe = bind_listener(key, address)?;
        proxy_listeners.push(probe.local_addr()?);
    }
    let metrics = Arc::new(Metrics::new());
    let (store_errors, store_up) = metrics.store_series();
    let db = Db::start(
        &config.store,
        config.store_pool,
        StoreHealth::new(store_errors, store_up),
    )
    .map_err(|e| store_open_error(e, &config.store))?;
    if let Some(admin) = &config.bootstrap_admin {
        bootstrap_admin(&db, admin)?;
    }
    // Read before serving so that no change written from here on is missed.
    let feed_start = db.block_on(|store| async move { store.latest_change().await })?;
    let pepper = db.block_on(|store| async move { store.api_key_pepper().await })?;

    let fleet = match &config.redis {
        Some(settings) => {
            // A certificate that does not verify stops keyward here, naming the key.
            crate::fleet::check_tls(settings).map_err(|e| anyhow!(e))?;
            Some(Arc::new(
                FleetClaims::start(settings, &pepper, metrics.clone()).map_err(|e| anyhow!(e))?,
            ))
        }
        None => None,
    };
    // The shared stores' TLS as the reloaded file says it must work: the next start would
    // use it (and sqlx reads the PostgreSQL CA file at every new connection).
    live.check_on_reload(Box::new(|next: &Config| {
        if let Some(settings) = &next.redis {
            crate::fleet::check_tls(settings)?;
        }
        check_store_tls(&next.store)
    }));
    let hasher = PasswordHasher::new(
        config.limits.password_hash_threads,
        metrics.password_checks_waiting(),
    );
    // Cache TTLs follow reloads (for entries stored after them).
    let basic_ttl = LiveDuration::new(config.cache.basic_ttl);
    let key_ttl = LiveDuration::new(config.cache.api_key_ttl);
    let negative_ttl = LiveDuration::new(config.cache.negative_ttl);
    {
        let (basic_ttl, key_ttl, negative_ttl) =
            (basic_ttl.clone(), key_ttl.clone(), negative_ttl.clone());
        live.on_reload(Box::new(move |next: &Config| {
            basic_ttl.set(next.cache.basic_ttl);
            key_ttl.set(next.cache.api_key_ttl);
            negative_ttl.set(next.cache.negative_ttl);
            Ok(())
        }));
    }
    if let Some(handle) = log_filter {
        live.on_reload(Box::new(move |next: &Config| handle.set(&next.logging)));
    }
    // `identity.ldap`: the directory's runtime and series; it connects at the first login.
    let directory = match &config.ldap {
        Some(settings) => {
            let series = metrics
                .directory_series()
                .ok_or_else(|| anyhow!("the directory's metrics are registered twice"))?;
            let directory =
                crate::auth::directory::Directory::start(settings.clone(), series.clone())
                    .map_err(|e| anyhow!("identity.ldap: {e}"))?;
            Some((directory, series))
        }
        None => None,
    };
    let basic = Arc::new(
        BasicAuthenticator::new(
            db.clone(),
            hasher,
            metrics.clone(),
            basic_ttl.clone(),
            config.cache.basic_capacity,
            ThrottleSettings {
                failures: config.limits.password_failures,
                window: config.limits.password_failure_window,
            },
        )
        .with_fleet(fleet.clone())
        .with_directory(directory.as_ref().map(|(directory, _)| directory.clone())),
    );
    let key_cache = CacheSettings {
        ttl: key_ttl,
        capacity: config.cache.api_key_capacity,
        negative_ttl,
        negative_capacity: config.cache.negative_capacity,
    };
    let api_keys = Arc::new(ApiKeyAuthenticator::new(
        db.clone(),
        metrics.clone(),
        KeyHasher::new(pepper.clone()),
        &key_cache,
    ));
    let tokens = Arc::new(TokenAuthenticator::new(
        db.clone(),
        metrics.clone(),
        KeyHasher::new(pepper.clone()),
        &key_cache,
    ));
    let quotas = Arc::new(QuotaCounter::new(db.clone(), fleet.clone()));
    // Rate-limit counters, shared by the proxy and the admin API and kept across reloads: the
    // replica's own, and the fleet's leases when the fleet shares a Redis.
    let limits = Arc::new(Limits::new(
        Arc::new(RateLimiter::new(config.rate_limits.max_tracked)),
        fleet.clone().map(|claims| {
            FleetLimiter::new(claims, metrics.clone(), config.rate_limits.max_tracked)
        }),
    ));
    let signatures = Arc::new(
        SignatureAuthenticator::new(db.clone(), metrics.clone(), config.signatures.clone())
            .with_fleet(fleet),
    );
    let auth = Arc::new(Authenticator::new(
        basic,
        api_keys,
        signatures,
        tokens,
        quotas,
        metrics.clone(),
    ));
    let audit = match &config.audit_path {
        Some(path) => AuditLog::with_file(path)
            .with_context(|| format!("audit.path: cannot open {}", path.display()))?,
        None => AuditLog::tracing_only(),
    };
    let admin = Arc::new(AdminApi::new(
        db.clone(),
        auth.clone(),
        metrics.clone(),
        audit,
        limits.clone(),
    ));
    // The browser pages make their admin calls in-process, through this same admin API.
    let browser = Arc::new(
        keyward_browser::BrowserPages::new(admin.clone(), db.clone(), config.oidc.clone())
            .map_err(|e| anyhow::anyhow!(e))?,
    );

    let server_conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let upstream = &config.upstream;
    let mut balancer =
        LoadBalancer::<RoundRobin>::try_from_iter(upstream.addresses.iter().map(String::as_str))
            .with_context(|| format!("upstream: cannot resolve {:?}", upstream.addresses))?;
    // One upstream (the sidecar) is always tried: a health check could only turn a clear
    // connection error into "no healthy upstream". Several are health-checked.
    let upstreams = if upstream.addresses.len() > 1 {
        balancer.set_health_check(TcpHealthCheck::new());
        balancer.health_check_frequency = Some(upstream.health_check_interval);
        let health = background_service("upstream health check", balancer);
        let upstreams = health.task();
        server.add_service(health);
        upstreams
    } else {
        Arc::new(balancer)
    };

    let uploads = Arc::new(UploadSpool::new(&config.signed_bodies));
    let proxy_for = |listener: Listener| {
        let parts = ProxyParts {
            metrics: metrics.clone(),
            auth: auth.clone(),
            admin: admin.clone(),
            browser: browser.clone(),
            upstreams: upstreams.clone(),
            limits: limits.clone(),
            uploads: uploads.clone(),
        };
        KeywardProxy::new(live.clone(), listener, parts)
    };
    // `listen.tls`: the certificates live in `tls_certificates` for the process's life;
    // `TlsCertificates::reload` swaps them for new handshakes (on every configuration reload).
    let tls_certificates = match &config.listen_tls {
        Some(files) => Some(Arc::new(TlsCertificates::load(files)?)),
        None => None,
    };
    if let Some(certificates) = &tls_certificates {
        certificate_loaded(certificates, &metrics);
        let certificates = certificates.clone();
        let metrics = metrics.clone();
        live.on_reload(Box::new(move |next: &Config| match &next.listen_tls {
            Some(files) => {
                certificates.reload(files).map_err(|e| e.to_string())?;
                certificate_loaded(&certificates, &metrics);
                Ok(())
            }
            // Turning TLS off needs a restart (the listener is built at start).
            None => Ok(()),
        }));
    }
    // Connection limits (and the TLS handshake) wrap pingora's HTTP proxy app (see
    // `connection`), on each listener.
    let network = config.limits.network;
    let service = |name: &str, proxy: KeywardProxy, tls: bool| -> anyhow::Result<_> {
        let authz = proxy.listener() == Listener::Authz;
        let mut http = pingora::proxy::http_proxy(&server.configuration, proxy);
        let mut http_options = HttpServerOptions::default();
        // `listen.authz` speaks HTTP/1.1 and h2c on one port (Envoy's HTTP service may
        // use either).
        http_options.h2c = authz;
        // An HTTP/2 connection with no request in progress is closed after the keep-alive
        // time of HTTP/1.1 (pingora's default keeps it forever, holding a connection permit).
        http_options.h2_idle_timeout = Some(crate::connection::KEEPALIVE);
        http.server_options = Some(http_options);
        // pingora's bounded defaults (64 KiB of decoded headers), with `limits.max_h2_streams`
        // concurrent streams instead of its 100, advertised in the SETTINGS frame.
        let mut h2_options = pingora::protocols::http::v2::server::default_h2_options();
        h2_options.max_concurrent_streams(network.max_h2_streams);
        http.h2_options = Some(h2_options);
        let trusted_live = live.clone();
        let trusted: crate::connection::TrustedPeer = Arc::new(move |peer| {
            let current = trusted_live.current();
            // An edge asking `listen.authz` is one client with many connections.
            let trusted = match authz {
                true => &current.external_authz.trusted_callers,
                false => &current.trusted_proxies,
            };
            trusted.iter().any(|net| net.contains(&peer))
        });
        let mut limits = ConnectionLimits::new(
            http,
            config.limits.max_connections,
            config.limits.header_read_timeout,
            &metrics,
        )
        .with_client_cap(network.max_connections_per_client, trusted);
        if let Some(certificates) = tls_certificates.as_ref().filter(|_| tls) {
            let server_config = certificates
                .server_config()
                .context("listen.tls: cannot build the TLS server configuration")?;
            limits = limits.with_tls(Acceptor::from_server_config(server_config));
        }
        Ok(Service::new(name.to_owned(), limits))
    };
    let serves_admin = config.listen_admin.is_none();
    let mut proxy_service = service(
        "keyward proxy",
        proxy_for(Listener::Proxy { serves_admin }),
        true,
    )?;
    // Plain TCP even with TLS: `ConnectionLimits` makes the handshake.
    proxy_service.add_listener(crate::connection::listener_config(
        &config.listen_proxy,
        config.listen_tls.is_some(),
    ));
    // The admin listener is plaintext: it belongs on a private address (see the book's admin API chapter, "The admin listener").
    let admin_service = match config.listen_admin.as_ref() {
        Some(address) => {
            let mut admin_service = service("keyward admin", proxy_for(Listener::Admin), false)?;
            admin_service.add_listener(crate::connection::listener_config(address, false));
            Some(admin_service)
        }
        None => None,
    };
    // `listen.authz` (SPEC §13): plaintext, for the edges named in `external_authz`.
    let authz_service = match config.listen_authz.as_ref() {
        Some(address) => {
            let mut authz_service = service("keyward authz", proxy_for(Listener::Authz), false)?;
            authz_service.add_listener(crate::connection::listener_config(address, false));
            Some(authz_service)
        }
        None => None,
    };

    let ops_app = OpsApp::new(
        db.clone(),
        metrics.clone(),
        auth.clone(),
        upstreams.clone(),
        Arc::new(Readiness::default()),
    );
    let ops = OpsListener::new(ops_listener, ops_app, proxy_listeners);

    let sweeper = directory.map(|(directory, series)| {
        crate::auth::revalidation::DirectorySweeper::new(
            db.clone(),
            directory,
            auth.clone(),
            series,
            basic_ttl.clone(),
        )
    });
    let flusher = UsageFlusher::new(auth.clone(), config.api_keys.last_used_flush);
    let follower = ChangeFollower::new(
        db,
        auth,
        metrics.clone(),
        config.cache.invalidation_poll,
        feed_start,
        Retention {
            audit: config.audit_retention,
            usage: config.usage_retention,
        },
    );

    server.add_service(proxy_service);
    if let Some(admin_service) = admin_service {
        server.add_service(admin_service);
    }
    if let Some(authz_service) = authz_service {
        server.add_service(authz_service);
    }
    server.add_service(background_service("keyward ops", ops));
    server.add_service(background_service(
        "config reload",
        HangupReloader::new(live.clone(), metrics.clone()),
    ));
    server.add_service(background_service("change feed", follower));
    server.add_service(background_service("key usage", flusher));
    if let Some(sweeper) = sweeper {
        server.add_service(background_service("directory revalidation", sweeper));
    }
    let _pid_file = match PidFile::write(&config.server.pid_file) {
        Ok(pid_file) => Some(pid_file),
        Err(e) => {
            tracing::warn!(path = %config.server.pid_file.display(), error = %e, "cannot write the pid file; `keyward reload` will not find this process (SIGHUP still reloads)");
            None
        }
    };
    tracing::info!(
        proxy = %config.listen_proxy,
        admin = config.listen_admin.as_deref().unwrap_or("(on the proxy listener)"),
        authz = config.listen_authz.as_deref().unwrap_or("-"),
        tls = tls_certificates.is_some(),
        ops = %config.listen_ops,
        upstreams = ?config.upstream.addresses,
        "keyward starting"
    );
    // `run` returns once the shutdown is complete (`run_forever` would exit the process
    // there, before the log writer has written out its queue).
    server.run(pingora::server::RunArgs::default());
    Ok(())
}

/// How long a reload waits for its check of the store's TLS.
const STORE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the store could not be opened, naming `store.url`: a failed TLS handshake described,
/// any other error with the store named (without its password).
pub fn store_open_error(error: StoreError, store: &crate::store::StoreUrl) -> anyhow::Error {
    match store_tls_failure(&error, store) {
        Some(failure) => anyhow!(failure),
        None => anyhow!(error).context(format!("store.url: cannot open the store {store}")),
    }
}

/// A store error that is a failed TLS handshake, described and naming `store.url`; `None`
/// for any other error.
fn store_tls_failure(error: &StoreError, store: &crate::store::StoreUrl) -> Option<String> {
    if let Some(tls) = crate::tls::find_rustls_error(error) {
        let mut described = crate::tls::describe_tls_failure(
            tls,
            "the URL's sslrootcert (or the public roots without it)",
            "the URL's sslcert and sslkey",
        );
        // sqlx 0.8's verify-ca skips the name check only for rustls's older error variant.
        let name_mismatch = matches!(
            tls,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        );
        let verify_ca = store
            .postgres_tls()
            .is_some_and(|tls| tls.mode.as_deref() == Some("verify-ca"));
        if name_mismatch && verify_ca {
            described.push_str(
                "; in this build sslmode=verify-ca checks the host name too: connect by a name \
                 the certificate holds",
            );
        }
        return Some(format!("store.url: TLS to PostgreSQL failed: {described}"));
    }
    match error {
        StoreError::Unavailable(sqlx::Error::Tls(e)) => {
            Some(format!("store.url: TLS to PostgreSQL failed: {e}"))
        }
        _ => None,
    }
}

/// On reload: connects once to a PostgreSQL store whose URL asks for TLS and fails when the
/// handshake does; a store that cannot be reached passes (logged), as an outage is not the
/// file's fault.
fn check_store_tls(store: &crate::store::StoreUrl) -> Result<(), String> {
    if !store.postgres_tls().is_some_and(|tls| tls.required()) {
        return Ok(());
    }
    match crate::store::check_connection(store, STORE_CHECK_TIMEOUT) {
        Ok(()) => Ok(()),
        Err(e) => match store_tls_failure(&e, store) {
            Some(failure) => Err(failure),
            None => {
                tracing::warn!(error = %e, "cannot reach the store to check its TLS settings now");
                Ok(())
            }
        },
    }
}

/// The certificate just loaded: its expiry goes to the metrics, and the log warns when it is
/// near or past, so an operator sees it before clients refuse handshakes.
fn certificate_loaded(certificates: &TlsCertificates, metrics: &Metrics) {
    let not_after = certificates.not_after();
    metrics.set_tls_certificate_expiry(not_after);
    match CertificateExpiry::of(not_after, std::time::SystemTime::now()) {
        CertificateExpiry::Distant => {}
        CertificateExpiry::Soon { days_left } => tracing::warn!(
            key = crate::tls::CERT_KEY,
            not_after,
            days_left,
            "the TLS certificate expires in less than 14 days"
        ),
        CertificateExpiry::Past => tracing::error!(
            key = crate::tls::CERT_KEY,
            not_after,
            "the TLS certificate has expired: clients will refuse the handshake"
        ),
    }
}

/// Creates the configured administrator if it does not exist. An existing user is left as it
/// is: the environment variable seeds the first password, it does not reset it on every start.
pub fn bootstrap_admin(db: &Db, admin: &BootstrapAdmin) -> anyhow::Result<()> {
    let name = admin.name.clone();
    let existing = db.block_on(|store| async move { store.user_by_name(&name).await })?;
    if existing.is_some() {
        return Ok(());
    }
    let password = std::env::var(&admin.password_env)
        .ok()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "bootstrap.admin: user {:?} does not exist and the environment variable {} is not \
                 set; set {} to the password the administrator should get",
                admin.name,
                admin.password_env,
                admin.password_env
            )
        })?;
    let spec = UserSpec {
        name: admin.name.clone(),
        functions: admin.functions.clone(),
        ..UserSpec::default()
    };
    let created =
        db.block_on(
            |store| async move { Ok(users::add_user(store.as_ref(), spec, &password).await) },
        )?;
    match created {
        Ok(user) => {
            tracing::info!(user = %user.name, id = user.id, "created the bootstrap administrator")
        }
        // Replicas starting together against a new database race to create it; one wins.
        Err(users::UserError::Store(StoreError::Conflict(_))) => {
            tracing::info!(user = %admin.name, "the bootstrap administrator was created by another replica")
        }
        Err(e) => return Err(anyhow!("bootstrap.admin: {e}")),
    }
    Ok(())
}
