//! keyward: an authentication sidecar built on pingora.
//!
//! The request path is `proxy` (filter → authenticate → policy → forward); credentials are
//! checked by the modules under `auth`, decisions made by `policy`, and everything keyward
//! answers itself is written by `proxy::respond`.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod connection;
pub mod fleet;
pub mod invalidation;
pub mod log_output;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod store;
pub mod tls;
pub mod users;
