//! The HTTP vocabulary the proxy and the admin API share: the per-request context, the request
//! target, keyward's own namespaces, how a refusal is written, and the service interface the
//! proxy calls the admin API through.

pub mod browser;
pub mod ctx;
pub mod namespace;
pub mod respond;
pub mod service;
pub mod target;
