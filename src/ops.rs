//! The ops listener: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. Separate from the proxy listener so it
//! can be bound to a private interface.
//!
//! It is bound before anything else starts (a port in use stops keyward at once, with the
//! key named) and keeps answering through a graceful shutdown, so that `/readyz` can say 503
//! while in-flight requests drain. `/readyz` is 200 only once every proxy listener accepts
//! connections, the store answers, and no shutdown has begun.

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::proxy::ctx::RequestId;
use crate::proxy::respond::REQUEST_ID_HEADER;
use crate::store::Db;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::HttpServer;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::ServerApp;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// What `/readyz` knows besides the store.
#[derive(Debug, Default)]
pub struct Readiness {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Why the process is not ready, if it is not (the store aside).
    fn not_ready(&self) -> Option<&'static [u8]> {
        if self.draining.load(Ordering::Relaxed) {
            return Some(b"shutting down\n");
        }
        if !self.listeners_bound.load(Ordering::Relaxed) {
            return Some(b"listeners not bound yet\n");
        }
        None
    }
}

pub struct OpsApp {
    readiness: Arc<Readiness>,
    db: Db,
    metrics: Arc<Metrics>,
    auth: Arc<Authenticator>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

impl OpsApp {
    pub fn new(
        db: Db,
        metrics: Arc<Metrics>,
        auth: Arc<Authenticator>,
        upstreams: Arc<LoadBalancer<RoundRobin>>,
        readiness: Arc<Readiness>,
    ) -> OpsApp {
        OpsApp {
            readiness,
            db,
            metrics,
            auth,
            upstreams,
        }
    }

    /// `keyward_upstream_healthy`, as the health checks see the configured addresses now.
    fn report_upstream_health(&self) {
        let backends = self.upstreams.backends();
        for backend in backends.get_backend().iter() {
            self.metrics
                .set_upstream_healthy(&backend.addr.to_string(), backends.ready(backend));
        }
    }

    async fn store_ready(&self) -> bool {
        let ping = self.db.call(|store| async move { store.ping().await });
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(())) => true,
            // Counted, and logged once per outage, by the store's health tracker.
            Ok(Err(_)) => false,
            Err(_) => {
                self.db.health().timed_out();
                false
            }
        }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header(REQUEST_ID_HEADER, RequestId::random().as_str())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header = session.req_header();
        if header.method != http::Method::GET && header.method != http::Method::HEAD {
            return reply(405, "text/plain", b"method not allowed\n".to_vec());
        }
        match header.uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if let Some(why) = self.readiness.not_ready() {
                    reply(503, "text/plain", why.to_vec())
                } else if self.store_ready().await {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(503, "text/plain", b"store unreachable\n".to_vec())
                }
            }
            "/metrics" => {
                self.auth.report_cache_entries().await;
                self.report_upstream_health();
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            // The admin API's contract, next to the other things an operator reads from here.
            "/openapi.json" => reply(
                200,
                "application/json",
                crate::admin::openapi::DOCUMENT.as_bytes().to_vec(),
            ),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// The ops listener, served by keyward itself rather than as a pingora listening service,
/// which would stop answering the moment a shutdown begins.
pub struct OpsListener {
    listener: Mutex<Option<std::net::TcpListener>>,
    app: Arc<HttpServer<OpsApp>>,
    readiness: Arc<Readiness>,
    /// The proxy (and admin) listeners `/readyz` waits for.
    listeners: Vec<SocketAddr>,
}

impl OpsListener {
    /// `listener` is bound already (see `bind_listener`).
    pub fn new(
        listener: std::net::TcpListener,
        app: OpsApp,
        listeners: Vec<SocketAddr>,
    ) -> OpsListener {
        OpsListener {
            listener: Mutex::new(Some(listener)),
            readiness: app.readiness.clone(),
            app: Arc::new(HttpServer::new_app(app)),
            listeners,
        }
    }
}

/// Binds `address` for the listener named `key`, or says plainly why not. A port held only
/// for a moment (an outgoing connection's ephemeral port, a socket closing) is retried for up
/// to two seconds; a port another server listens on fails then.
pub fn bind_listener(key: &str, address: &str) -> anyhow::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let bound = loop {
        match std::net::TcpListener::bind(address) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => break other,
        }
    };
    bound.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{key}: {address} is already in use by another process (stop it or choose another port)"
        ),
        _ => anyhow::anyhow!("{key}: cannot listen on {address}: {e}"),
    })
}

/// Where a listener on `address` can be reached from this host.
pub fn local_address(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, address.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, address.port()))
        }
        _ => address,
    }
}

/// Marks the listeners bound once each accepts a connection. Their ports were free when
/// keyward started (`bind_listener`), so what answers is keyward.
async fn wait_for_listeners(listeners: Vec<SocketAddr>, readiness: Arc<Readiness>) {
    for address in listeners.into_iter().map(local_address) {
        while tokio::net::TcpStream::connect(address).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    readiness.listeners_bound.store(true, Ordering::Relaxed);
    tracing::info!("every listener is bound: ready once the store answers");
}

#[async_trait]
impl BackgroundService for OpsListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        let listener = match listener.map(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }) {
            Some(Ok(listener)) => listener,
            Some(Err(e)) => {
                tracing::error!(error = %e, "listen.ops: cannot serve the ops listener");
                return;
            }
            None => return,
        };
        tokio::spawn(wait_for_listeners(
            self.listeners.clone(),
            self.readiness.clone(),
        ));
        // Connections answer until the process exits, whatever the shutdown signal says.
        let (_keep_open, never) = tokio::sync::watch::channel(false);
        let mut draining = false;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let app = self.app.clone();
                    let never = never.clone();
                    tokio::spawn(async move {
                        let mut stream: pingora::protocols::Stream =
                            Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                        while let Some(reused) = app.process_new(stream, &never).await {
                            stream = reused;
                        }
                    });
                }
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    self.readiness.draining.store(true, Ordering::Relaxed);
                    tracing::info!("shutting down: /readyz answers 503 while requests drain");
                }
            }
        }
    }
}
