//! Per-request state, created empty by `new_ctx` and filled as the request moves through the
//! phases.

use crate::target::RequestTarget;
use keyward_config::Config;
use keyward_core::Principal;
use keyward_metrics::{InFlight, Outcome, RouteKind};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use keyward_core::request_id::RequestId;

pub struct RequestCtx {
    /// The configuration this request is decided by, taken once when it arrives: a reload
    /// applies to the requests that arrive after it, never halfway through one.
    pub config: Arc<Config>,
    pub request_id: RequestId,
    pub started: Instant,
    pub client_ip: Option<IpAddr>,
    /// The normalized target: what routes matched and what the upstream receives.
    pub target: Option<RequestTarget>,
    /// `X-Forwarded-For` as keyward forwards it.
    pub x_forwarded_for: Option<http::HeaderValue>,
    /// The TCP peer is one of `trusted_proxies`.
    pub peer_trusted: bool,
    /// The request came over TLS (from the session, see `Transport::of`).
    pub tls: bool,
    pub principal: Option<Arc<Principal>>,
    /// Set when keyward answered the request itself (a refusal, or an admin answer).
    pub outcome: Option<Outcome>,
    /// Why the request was refused, for the access log.
    pub reason: Option<&'static str>,
    /// The `token` cookie was refused: every answer clears it.
    pub clear_token_cookie: bool,
    /// What answered: the route's kind, or the admin API.
    pub route_kind: RouteKind,
    /// When the upstream was chosen, and which address: for the upstream latency and the log.
    pub upstream_started: Option<Instant>,
    pub upstream_address: Option<std::net::SocketAddr>,
    /// Upstream latency up to its response header, once it arrived.
    pub upstream_seconds: Option<f64>,
    /// When the request body must be in whole (`limits.body_timeout` from the header); `None`
    /// for a request without a body.
    pub body_deadline: Option<Instant>,
    /// `listen.authz` over gRPC: the body the caller forwarded inside its `CheckRequest`
    /// (empty when none), read in place of the session's body.
    pub described_body: Option<bytes::Bytes>,
    /// Counts the request in `keyward_requests_in_flight` while the context lives.
    _in_flight: InFlight,
}

impl RequestCtx {
    pub fn new(config: Arc<Config>, in_flight: InFlight) -> RequestCtx {
        RequestCtx {
            config,
            request_id: RequestId::random(),
            started: Instant::now(),
            client_ip: None,
            target: None,
            x_forwarded_for: None,
            peer_trusted: false,
            tls: false,
            principal: None,
            outcome: None,
            reason: None,
            clear_token_cookie: false,
            route_kind: RouteKind::Unrouted,
            upstream_started: None,
            upstream_address: None,
            upstream_seconds: None,
            body_deadline: None,
            described_body: None,
            _in_flight: in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_upper_hex_and_differ() {
        let a = RequestId::random();
        let b = RequestId::random();
        assert_eq!(a.as_str().len(), 16);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
        assert_ne!(a, b);
    }
}
