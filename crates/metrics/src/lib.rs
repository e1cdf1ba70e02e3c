//! Prometheus metrics (SPEC §9): one handle with domain methods, its own registry.

use keyward_core::limit::LimitKind;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `keyward_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    Unauthenticated,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Error => "error",
        }
    }
}

const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const OUTCOMES: [Outcome; 4] = [
    Outcome::Allowed,
    Outcome::Denied,
    Outcome::Unauthenticated,
    Outcome::Error,
];

/// `keyward_request_duration_seconds{route_kind}`: what answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A `public: true` route, forwarded without a credential check.
    Public,
    /// A route with a requirement.
    Protected,
    /// The admin API, answered by keyward.
    Admin,
    /// Refused before a route was chosen (malformed, limits, no route).
    Unrouted,
    /// A question from an edge on `listen.authz` (SPEC §13): decided, never forwarded.
    Authz,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Public => "public",
            RouteKind::Protected => "protected",
            RouteKind::Admin => "admin",
            RouteKind::Unrouted => "none",
            RouteKind::Authz => "authz",
        }
    }
}

const ROUTE_KINDS: [RouteKind; 5] = [
    RouteKind::Public,
    RouteKind::Protected,
    RouteKind::Admin,
    RouteKind::Unrouted,
    RouteKind::Authz,
];

/// `keyward_upstream_errors_total{reason}`: why a request could not be proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    Timeout,
    Reset,
    NoHealthyUpstream,
    Tls,
    Other,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::ConnectRefused => "connect_refused",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::NoHealthyUpstream => "no_healthy_upstream",
            UpstreamError::Tls => "tls",
            UpstreamError::Other => "other",
        }
    }
}

const UPSTREAM_ERRORS: [UpstreamError; 6] = [
    UpstreamError::ConnectRefused,
    UpstreamError::Timeout,
    UpstreamError::Reset,
    UpstreamError::NoHealthyUpstream,
    UpstreamError::Tls,
    UpstreamError::Other,
];

/// Seconds, from a cached hit (tens of µs) to a slow upstream.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One request in flight: `keyward_requests_in_flight` counts it until this is dropped (with
/// the request's context, however the request ended).
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `keyward_upstream_responses_total{status_class}`, in `upstream_response`'s order.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Credential methods, as the `method` label of the auth metrics.
const AUTH_METHODS: [&str; 4] = ["apikey", "signature", "token", "basic"];
/// The `claim` label of `keyward_replay_local_fallback_total` (see `keyward_auth::fleet::ClaimKind`).
const FLEET_CLAIMS: [&str; 5] = [
    "signature",
    "totp",
    "totp_throttle",
    "password_throttle",
    "quota",
];
/// The caches reported by `keyward_cache_*`.
const CACHES: [&str; 9] = [
    cache_name::TOKEN,
    cache_name::TOKEN_NEGATIVE,
    cache_name::BASIC,
    cache_name::API_KEY,
    cache_name::API_KEY_NEGATIVE,
    cache_name::SIGNATURE_KEY,
    cache_name::SIGNATURE_KEY_NEGATIVE,
    cache_name::REPLAY_WINDOW,
    cache_name::SIGNATURE_SESSION,
];

/// The `cache` label of `keyward_cache_*`: one per credential cache, named here so that the
/// series exist before the caches do.
pub mod cache_name {
    pub const TOKEN: &str = "token";
    pub const TOKEN_NEGATIVE: &str = "token_negative";
    pub const BASIC: &str = "basic";
    pub const API_KEY: &str = "apikey";
    pub const API_KEY_NEGATIVE: &str = "apikey_negative";
    pub const SIGNATURE_KEY: &str = "signature_key";
    pub const SIGNATURE_KEY_NEGATIVE: &str = "signature_key_negative";
    pub const REPLAY_WINDOW: &str = "replay_window";
    pub const SIGNATURE_SESSION: &str = "signature_session";
}

/// The directory's series (see [`Metrics::directory_series`]).
#[derive(Clone)]
pub struct DirectorySeries {
    pub up: IntGauge,
    pub errors: IntCounter,
    pub locks: IntCounter,
    pub sweep: prometheus::Histogram,
}

pub struct Metrics {
    /// Series of the request path resolved once: `with_label_values` hashes the labels and
    /// takes a lock on every call.
    requests_by_label: Vec<IntCounter>,
    auth_duration_by_method: Vec<prometheus::Histogram>,
    upstream_responses_by_class: Vec<IntCounter>,
    registry: Registry,
    requests: IntCounterVec,
    auth_duration: HistogramVec,
    auth_failures: IntCounterVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_entries: IntGaugeVec,
    admin_operations: IntCounterVec,
    upstream_responses: IntCounterVec,
    store_errors: IntCounter,
    store_up: IntGauge,
    change_feed_listening: IntGauge,
    change_feed_applied: IntGauge,
    config_reloads: IntCounterVec,
    connections: ConnectionMetrics,
    redis_errors: IntCounter,
    replay_local_fallbacks: IntCounterVec,
    replay_window_full: IntCounter,
    rate_limited: IntCounterVec,
    rate_limit_redis_calls: IntCounter,
    rate_limit_local_fallbacks: IntCounter,
    request_duration_by_kind: Vec<Histogram>,
    upstream_duration: Histogram,
    in_flight: IntGauge,
    password_checks_waiting: IntGauge,
    upstream_errors_by_reason: Vec<IntCounter>,
    upstream_healthy: IntGaugeVec,
    tls_certificate_expiry: IntGauge,
}

/// The proxy listener's connection limits (`crate::connection`).
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// `keyward_connections_open`: client connections on the proxy listener now.
    pub open: IntGauge,
    /// `keyward_connections_refused_total`: connections closed at once, over `max_connections`.
    pub refused: IntCounter,
    /// `keyward_header_timeouts_total`: connections closed because a request header did not
    /// arrive within `header_read_timeout`.
    pub header_timeouts: IntCounter,
    /// `keyward_tls_handshake_failures_total`: TLS handshakes on the proxy listener that
    /// failed or did not finish within `header_read_timeout`.
    pub tls_handshake_failures: IntCounter,
}

impl ConnectionMetrics {
    // Metric names and help are constants and each is registered once: `prometheus` fails
    // only on an invalid or duplicate name, a programming error every test run would show.
    #[allow(clippy::expect_used)]
    fn new(registry: &Registry) -> ConnectionMetrics {
        let open = IntGauge::new(
            "keyward_connections_open",
            "Client connections open on the proxy listener.",
        )
        .expect("valid metric");
        let refused = IntCounter::new(
            "keyward_connections_refused_total",
            "Client connections closed at once because max_connections were open.",
        )
        .expect("valid metric");
        let header_timeouts = IntCounter::new(
            "keyward_header_timeouts_total",
            "Client connections closed because a request header did not arrive within \
             header_read_timeout.",
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounter::new(
            "keyward_tls_handshake_failures_total",
            "TLS handshakes on the proxy listener that failed or did not finish within \
             header_read_timeout.",
        )
        .expect("valid metric");
        for metric in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(header_timeouts.clone()),
            Box::new(tls_handshake_failures.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        ConnectionMetrics {
            open,
            refused,
            header_timeouts,
            tls_handshake_failures,
        }
    }
}

// Metric names and help are constants and each is registered once: `prometheus` fails
// only on an invalid or duplicate name, a programming error every test run would show.
#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

// Metric names and help are constants and each is registered once: `prometheus` fails
// only on an invalid or duplicate name, a programming error every test run would show.
#[allow(clippy::expect_used)]
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

// Metric names and help are constants and each is registered once: `prometheus` fails
// only on an invalid or duplicate name, a programming error every test run would show.
#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("metric registered once");
    counter
}

impl Metrics {
    // Metric names and help are constants and each is registered once: `prometheus` fails
    // only on an invalid or duplicate name, a programming error every test run would show.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let auth_duration = HistogramVec::new(
            HistogramOpts::new(
                "keyward_auth_duration_seconds",
                "Time spent authenticating a request, by credential method.",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
                0.025, 0.1, 0.25, 1.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(auth_duration.clone()))
            .expect("metric registered once");
        let cache_entries = IntGaugeVec::new(
            Opts::new("keyward_cache_entries", "Entries held by each cache."),
            &["cache"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(cache_entries.clone()))
            .expect("metric registered once");
        let store_errors = IntCounter::new(
            "keyward_store_errors_total",
            "Store operations that failed.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("metric registered once");
        let store_up = IntGauge::new(
            "keyward_store_up",
            "1 while the store answers, 0 from a failed connection until it answers again.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_up.clone()))
            .expect("metric registered once");
        let changes_behind = IntGauge::new(
            "keyward_change_feed_listening",
            "1 while this replica receives change notifications (PostgreSQL LISTEN), 0 while it \
             only polls the change feed.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(changes_behind.clone()))
            .expect("metric registered once");
        // What `keyward user lock` (and the other CLI changes) waits for: the running keyward
        // has applied the change feed up to the CLI's own change.
        let change_feed_applied = IntGauge::new(
            "keyward_change_feed_applied_seq",
            "The last change-feed position this replica has applied to its caches.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(change_feed_applied.clone()))
            .expect("metric registered once");
        let request_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "keyward_request_duration_seconds",
                    "Time from a request's arrival to its end (the response sent), by the kind \
                     of route that answered it: public, protected, admin, none (refused before \
                     a route was chosen).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["route_kind"],
            )
            .expect("valid metric"),
        );
        let upstream_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "keyward_upstream_duration_seconds",
                    "Time from choosing the upstream to receiving its response header \
                     (connect, sending the request, the upstream's own work).",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let upstream_errors = counter_vec(
            &registry,
            "keyward_upstream_errors_total",
            "Requests that could not be proxied, by reason: connect_refused, timeout, reset, \
             no_healthy_upstream, tls, other.",
            &["reason"],
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "keyward_build_info",
                    "Always 1; the running keyward's version as a label.",
                ),
                &["version"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        let mut metrics = Metrics {
            request_duration_by_kind: ROUTE_KINDS
                .iter()
                .map(|kind| request_duration.with_label_values(&[kind.as_str()]))
                .collect(),
            upstream_duration,
            in_flight: register(
                &registry,
                IntGauge::new(
                    "keyward_requests_in_flight",
                    "Requests on the proxy and admin listeners being handled now.",
                )
                .expect("valid metric"),
            ),
            password_checks_waiting: register(
                &registry,
                IntGauge::new(
                    "keyward_password_checks_waiting",
                    "Password checks (Basic, sign-in) queued for a hashing thread, not yet \
                     started; bounded by limits.password_hash_threads × 64 plus the lane of \
                     names that exist.",
                )
                .expect("valid metric"),
            ),
            upstream_errors_by_reason: UPSTREAM_ERRORS
                .iter()
                .map(|reason| upstream_errors.with_label_values(&[reason.as_str()]))
                .collect(),
            upstream_healthy: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "keyward_upstream_healthy",
                        "1 when the upstream address passes its health check (or health \
                         checks are off), else 0; one series per configured address.",
                    ),
                    &["address"],
                )
                .expect("valid metric"),
            ),
            tls_certificate_expiry: register(
                &registry,
                IntGauge::new(
                    "keyward_tls_certificate_expiry_timestamp_seconds",
                    "When the proxy listener's certificate (listen.tls.cert, the first of the \
                     chain) stops being valid, as a Unix time; 0 without listen.tls.",
                )
                .expect("valid metric"),
            ),
            config_reloads: counter_vec(
                &registry,
                "keyward_config_reloads_total",
                "Configuration reloads (SIGHUP, keyward reload) by outcome: ok, invalid.",
                &["outcome"],
            ),
            store_up,
            change_feed_listening: changes_behind,
            change_feed_applied,
            requests_by_label: Vec::new(),
            auth_duration_by_method: Vec::new(),
            upstream_responses_by_class: Vec::new(),
            requests: counter_vec(
                &registry,
                "keyward_requests_total",
                "Proxied requests by HTTP method and outcome.",
                &["method", "outcome"],
            ),
            auth_failures: counter_vec(
                &registry,
                "keyward_auth_failures_total",
                "Refused credentials by method and reason.",
                &["method", "reason"],
            ),
            cache_hits: counter_vec(
                &registry,
                "keyward_cache_hits_total",
                "Cache look-ups answered from the cache.",
                &["cache"],
            ),
            cache_misses: counter_vec(
                &registry,
                "keyward_cache_misses_total",
                "Cache look-ups that went to the store.",
                &["cache"],
            ),
            admin_operations: counter_vec(
                &registry,
                "keyward_admin_operations_total",
                "Admin API calls by operation and outcome.",
                &["operation", "outcome"],
            ),
            upstream_responses: counter_vec(
                &registry,
                "keyward_upstream_responses_total",
                "Responses received from the upstream by status class.",
                &["status_class"],
            ),
            redis_errors: counter(
                &registry,
                "keyward_redis_errors_total",
                "Redis calls (replay window, TOTP claims, throttles, fleet rate limits) that failed \
                 or timed out.",
            ),
            replay_local_fallbacks: counter_vec(
                &registry,
                "keyward_replay_local_fallback_total",
                "Claims decided by this replica's own window because Redis could not answer \
                 (replay.on_redis_error: local; password throttles always), by claim.",
                &["claim"],
            ),
            replay_window_full: counter(
                &registry,
                "keyward_replay_window_full_total",
                "Signed requests refused (503) because the replay window held as many live \
                 signatures as signatures.replay_memory allows.",
            ),
            rate_limited: counter_vec(
                &registry,
                "keyward_rate_limited_total",
                "Requests refused with 429 by a rate limit, by kind: credential (per_credential \
                 or the key's own rateLimit), user (per_user) or client \
                 (per_client_unauthenticated).",
                &["kind"],
            ),
            rate_limit_redis_calls: counter(
                &registry,
                "keyward_rate_limit_redis_calls_total",
                "Lease calls of fleet-scoped rate limits sent to Redis (one per slice of a \
                 bucket, not one per request).",
            ),
            rate_limit_local_fallbacks: counter(
                &registry,
                "keyward_rate_limit_local_fallback_total",
                "Requests decided by this replica's own rate-limit bucket because Redis could \
                 not answer (replay.on_redis_error: local).",
            ),
            auth_duration,
            cache_entries,
            store_errors,
            connections: ConnectionMetrics::new(&registry),
            registry,
        };
        metrics.touch_known_series();
        metrics.requests_by_label = METHOD_LABELS
            .iter()
            .flat_map(|method| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        metrics
                            .requests
                            .with_label_values(&[method, outcome.as_str()])
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        metrics.upstream_responses_by_class = STATUS_CLASSES
            .iter()
            .map(|class| metrics.upstream_responses.with_label_values(&[class]))
            .collect();
        metrics.auth_duration_by_method = AUTH_METHODS
            .iter()
            .map(|method| metrics.auth_duration.with_label_values(&[method]))
            .collect();
        metrics
    }

    /// Creates the series every deployment has, at zero, so dashboards and alerts see the
    /// families from the first scrape instead of after the first event.
    fn touch_known_series(&self) {
        for outcome in ["ok", "invalid"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for method in METHOD_LABELS {
            for outcome in OUTCOMES {
                self.requests.with_label_values(&[method, outcome.as_str()]);
            }
        }
        for method in AUTH_METHODS {
            self.auth_duration.with_label_values(&[method]);
        }
        for reason in ["malformed", "unknown_key", "bad_secret", "locked"] {
            self.auth_failures.with_label_values(&["basic", reason]);
        }
        for reason in [
            "malformed",
            "unknown_key",
            "bad_secret",
            "expired",
            "source_not_allowed",
            "locked",
        ] {
            self.auth_failures.with_label_values(&["apikey", reason]);
        }
        for reason in [
            "bad_signature",
            "replay",
            "clock_skew",
            "expired",
            "stale",
            "unknown_key",
            "digest_mismatch",
            "malformed",
            "source_not_allowed",
            "locked",
        ] {
            self.auth_failures.with_label_values(&["signature", reason]);
        }
        for reason in ["malformed", "unknown_key", "expired", "locked"] {
            self.auth_failures.with_label_values(&["token", reason]);
        }
        for class in STATUS_CLASSES {
            self.upstream_responses.with_label_values(&[class]);
        }
        for claim in FLEET_CLAIMS {
            self.replay_local_fallbacks.with_label_values(&[claim]);
        }
        for kind in LimitKind::ALL {
            self.rate_limited.with_label_values(&[kind.as_str()]);
        }
        for cache in CACHES {
            self.cache_hits.with_label_values(&[cache]);
            self.cache_misses.with_label_values(&[cache]);
            self.cache_entries.with_label_values(&[cache]);
        }
    }

    pub fn request(&self, method: &http::Method, outcome: Outcome) {
        let label = method_label(method);
        let row = METHOD_LABELS.iter().position(|m| *m == label).unwrap_or(0);
        let column = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests_by_label[row * OUTCOMES.len() + column].inc();
    }

    pub fn auth_duration(&self, method: &str, seconds: f64) {
        match AUTH_METHODS.iter().position(|m| *m == method) {
            Some(i) => self.auth_duration_by_method[i].observe(seconds),
            None => self
                .auth_duration
                .with_label_values(&[method])
                .observe(seconds),
        }
    }

    pub fn auth_failure(&self, method: &str, reason: &str) {
        self.auth_failures
            .with_label_values(&[method, reason])
            .inc();
    }

    /// The `(hits, misses)` series of one cache, for callers on the request path to keep:
    /// `with_label_values` hashes the labels and takes a lock on every call.
    pub fn cache_counters(&self, cache: &str) -> (IntCounter, IntCounter) {
        (
            self.cache_hits.with_label_values(&[cache]),
            self.cache_misses.with_label_values(&[cache]),
        )
    }

    pub fn set_cache_entries(&self, cache: &str, entries: u64) {
        self.cache_entries
            .with_label_values(&[cache])
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn admin_operation(&self, operation: &str, outcome: &str) {
        self.admin_operations
            .with_label_values(&[operation, outcome])
            .inc();
    }

    pub fn upstream_response(&self, status: u16) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.upstream_responses_by_class[class].inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// The directory's series (`identity.ldap`), registered when a directory is configured
    /// (a keyward without one exports none of them): `keyward_directory_up`,
    /// `keyward_directory_errors_total` and `keyward_directory_locks_total`. Registered once;
    /// `None` when they already are.
    pub fn directory_series(&self) -> Option<DirectorySeries> {
        let up = IntGauge::new(
            "keyward_directory_up",
            "1 while the directory (identity.ldap) answers, 0 from a failed connection or \
             operation until it answers again.",
        )
        .ok()?;
        let errors = IntCounter::new(
            "keyward_directory_errors_total",
            "Directory operations (connect, TLS, bind as the service account, search) that \
             failed or timed out; refused logins are not errors.",
        )
        .ok()?;
        let locks = IntCounter::new(
            "keyward_directory_locks_total",
            "Directory users locked in keyward because the directory no longer returns them.",
        )
        .ok()?;
        let sweep = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "keyward_directory_sweep_seconds",
                "Time one revalidation sweep of the directory users took.",
            )
            .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
        )
        .ok()?;
        self.registry.register(Box::new(up.clone())).ok()?;
        self.registry.register(Box::new(errors.clone())).ok()?;
        self.registry.register(Box::new(locks.clone())).ok()?;
        self.registry.register(Box::new(sweep.clone())).ok()?;
        Some(DirectorySeries {
            up,
            errors,
            locks,
            sweep,
        })
    }

    /// `keyward_store_errors_total` and `keyward_store_up`, for the store's health tracker.
    pub fn store_series(&self) -> (IntCounter, IntGauge) {
        (self.store_errors.clone(), self.store_up.clone())
    }

    /// A configuration reload: `ok` or `invalid`.
    pub fn config_reload(&self, outcome: &str) {
        self.config_reloads.with_label_values(&[outcome]).inc();
    }

    /// A request arrived; it is in flight until the returned guard is dropped.
    pub fn request_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// A request ended after `seconds`, answered by a route of `kind`.
    pub fn request_duration(&self, kind: RouteKind, seconds: f64) {
        let i = ROUTE_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.request_duration_by_kind[i].observe(seconds);
    }

    /// The upstream's response header arrived `seconds` after the upstream was chosen.
    pub fn upstream_duration(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    pub fn upstream_error(&self, reason: UpstreamError) {
        let i = UPSTREAM_ERRORS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.upstream_errors_by_reason[i].inc();
    }

    /// `keyward_upstream_healthy{address}` for one configured upstream address.
    pub fn set_upstream_healthy(&self, address: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[address])
            .set(i64::from(healthy));
    }

    /// `keyward_tls_certificate_expiry_timestamp_seconds`: the served certificate's notAfter.
    pub fn set_tls_certificate_expiry(&self, not_after: i64) {
        self.tls_certificate_expiry.set(not_after);
    }

    /// `keyward_password_checks_waiting`, for the password hasher to keep up to date.
    pub fn password_checks_waiting(&self) -> IntGauge {
        self.password_checks_waiting.clone()
    }

    /// `keyward_change_feed_listening`.
    pub fn change_feed_listening(&self) -> &IntGauge {
        &self.change_feed_listening
    }

    /// `keyward_change_feed_applied_seq`.
    pub fn change_feed_applied(&self) -> &IntGauge {
        &self.change_feed_applied
    }

    /// A Redis call of the shared replay window failed or timed out.
    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    /// A claim was decided by this replica's own window because Redis could not answer.
    pub fn replay_local_fallback(&self, claim: &str) {
        self.replay_local_fallbacks
            .with_label_values(&[claim])
            .inc();
    }

    /// A signature was refused because the replay window is full of live ones.
    pub fn replay_window_full(&self) {
        self.replay_window_full.inc();
    }

    /// A fleet-scoped rate limit asked Redis for a lease.
    pub fn rate_limit_redis_call(&self) {
        self.rate_limit_redis_calls.inc();
    }

    /// A fleet-scoped rate limit was decided by the replica's own bucket (Redis away).
    pub fn rate_limit_local_fallback(&self) {
        self.rate_limit_local_fallbacks.inc();
    }

    /// A request was refused by a rate limit (on the refusal path only).
    pub fn rate_limited(&self, kind: LimitKind) {
        self.rate_limited.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Bounded label values: an attacker choosing methods must not grow the metric set.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_families() {
        let m = Metrics::new();
        m.request(&http::Method::GET, Outcome::Allowed);
        m.request(&http::Method::from_bytes(b"BREW").unwrap(), Outcome::Denied);
        m.upstream_response(204);
        m.store_error();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("keyward_requests_total{method=\"GET\",outcome=\"allowed\"} 1"));
        assert!(text.contains("keyward_requests_total{method=\"OTHER\",outcome=\"denied\"} 1"));
        assert!(text.contains("keyward_upstream_responses_total{status_class=\"2xx\"} 1"));
        assert!(text.contains("keyward_store_errors_total 1"));
    }
}
