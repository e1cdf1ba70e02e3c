//! The floor under keyward: a bare pingora passthrough, built from the same pingora (version
//! and features) as keyward, with nothing of keyward's own — no routes, no authentication, no
//! metrics, no access log. Its `ProxyHttp` only names the upstream; pingora's defaults do the
//! rest (HTTP/1.1 keep-alive to the upstream through its connection pool). What keyward costs
//! above this is keyward's work; what this costs above nginx is pingora's.
//!
//! `cargo run --release --example bare_pingora -- LISTEN_ADDR UPSTREAM_ADDR [THREADS]`
//! (threads default to 1). Used by `scripts/compare.sh` and `scripts/instructions.sh`.
//!
//! Same global allocator as the keyward binary (src/main.rs), so that the difference between
//! the two is the per-request work, not malloc.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

#[global_allocator]
static ALLOCATOR: keyward_alloc::Allocator = keyward_alloc::Allocator;

/// Every request goes to one fixed upstream, in plaintext.
struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR: ip:port");
    let threads = args
        .get(3)
        .map_or(1, |t| t.parse().expect("THREADS: a number"));
    // As keyward builds it (src/app.rs): no daemon, `threads` worker threads; a short grace
    // period, since nothing here needs draining.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Passthrough { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
