//! The ops listener: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. Separate from the proxy listener so it
//! can be bound to a private interface.

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::proxy::ctx::RequestId;
use crate::proxy::respond::REQUEST_ID_HEADER;
use crate::store::Db;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;

pub struct OpsApp {
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
    ) -> OpsApp {
        OpsApp {
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
                if self.store_ready().await {
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
