//! keyward: an authentication sidecar built on pingora.
//!
//! This crate is the top floor: the binary's composition (`app`), its command line (`cli`),
//! its operations endpoints (`ops`) and its log output. The layers below are crates of their
//! own (see docs/architecture.md), re-exported here under the names the tests and tools use.

pub mod app;
pub mod cli;
pub mod log_output;
pub mod logging;
pub mod ops;

pub use keyward_admin as admin;
pub use keyward_auth as auth;
pub use keyward_auth::{cache, fleet, fleet_limit, invalidation, ratelimit, users};
pub use keyward_config as config;
pub use keyward_config::{policy, reload, tls};
/// The shared vocabulary (principals, refusals, quotas, the clock).
pub use keyward_core as vocabulary;
pub use keyward_metrics as metrics;
pub use keyward_store as store;
pub use keyward_store::audit;

/// The request path: the proxy crate and the HTTP vocabulary it shares with the admin API.
pub mod proxy {
    pub use keyward_http::{ctx, namespace, respond, service, target};
    pub use keyward_proxy::*;
}
pub use keyward_proxy::connection;
