//! What every admin handler shares: the API's state, one authenticated call, and the checks
//! and body parsing the handlers have in common.

use crate::envelope::AdminError;
use crate::routes::Endpoint;
use http::Method;
use keyward_auth::fleet_limit::Limits;
use keyward_auth::{Authenticator, Principal, SecurityLevel};
use keyward_config::Config;
use keyward_metrics::Metrics;
use keyward_store::audit::{self, AuditLog};
use keyward_store::{AuditEvent, Db, User};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Admin request bodies are small JSON documents.
pub(crate) const MAX_BODY: usize = 64 * 1024;
pub const POWER_USER: &str = "POWER-USER";

/// What the audit record says an admin call was about.
#[derive(Debug, Default)]
pub struct AuditTarget {
    pub operation: &'static str,
    pub user: String,
    pub credential: String,
}

/// Shared by every handler.
pub struct AdminApi {
    pub(crate) db: Db,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) audit: AuditLog,
    pub(crate) router: matchit::Router<Endpoint>,
    /// The proxy's rate-limit counters: admin calls count against the same quotas.
    pub(crate) limits: Arc<Limits>,
}

/// One authenticated admin call.
pub struct Call<'a> {
    /// The configuration of this request (see `RequestCtx::config`).
    pub config: &'a Config,
    pub caller: &'a Principal,
    pub method: &'a Method,
    pub body: &'a [u8],
    pub request_id: &'a str,
    pub source_ip: Option<IpAddr>,
    pub operation: &'static str,
    /// The request came over TLS (the token cookie is then `Secure`).
    pub tls: bool,
    /// Set once a store write was handed this call's audit record (see [`Call::audit`]).
    pub audit_handed_over: &'a AtomicBool,
}

impl Call<'_> {
    /// This call's audit record as it is answered with `status` on success, for the store
    /// write that makes the change to commit with it: the record is then exactly as durable
    /// as the change. Creates fill in the credential they made.
    pub fn audit(&self, status: u16, target_user: &str, credential: &str) -> AuditEvent {
        self.audit_handed_over.store(true, Ordering::Relaxed);
        AuditEvent {
            seq: 0,
            time: audit::now_rfc3339(),
            request_id: self.request_id.to_owned(),
            actor: self.caller.user_name.clone(),
            auth_method: self.caller.method.as_str().to_owned(),
            operation: self.operation.to_owned(),
            target_user: target_user.to_owned(),
            target_credential: credential.to_owned(),
            status,
            outcome: "ok".to_owned(),
            source_ip: self.source_ip.map(|ip| ip.to_string()),
        }
    }
}

/// The caller may manage `target`'s credentials: at least DEFAULT (so never an external
/// user's API key), and `target` itself or a POWER-USER. Read-only keys change nothing.
/// (`guard::admit` already refused the first and last for every endpoint; repeated here so a
/// handler called some other way stays safe.)
pub fn authorize_manage(call: &Call<'_>, target: &User) -> Result<(), AdminError> {
    let caller = call.caller;
    if caller.level < SecurityLevel::Default {
        return Err(AdminError::Forbidden(format!(
            "security level {} is too low for key management (DEFAULT needed)",
            caller.level
        )));
    }
    if caller.user_id != target.id && !caller.has_function(POWER_USER) {
        return Err(AdminError::Forbidden(format!(
            "managing another user's credentials needs {POWER_USER}"
        )));
    }
    if caller.read_only && !keyward_config::policy::is_safe(call.method) {
        return Err(AdminError::Forbidden(
            "a read-only key cannot change anything".into(),
        ));
    }
    Ok(())
}

/// `"x"` or `["x", "y"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Parses a JSON body: broken JSON is 400, well-formed JSON of the wrong shape (an unknown
/// field, a wrong type) is 412 naming the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(AdminError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut field = e.path().to_string();
        let message = e.inner().to_string();
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            if field == "." {
                field = name.to_owned();
            } else if !field.ends_with(name) {
                field = format!("{field}.{name}");
            }
            return AdminError::field(
                field,
                format!("unknown field {name}"),
                "validation.unknown.field",
            );
        }
        AdminError::field(field, message, "validation.invalid")
    })
}

/// `validSources` of a create or enroll body: CIDRs or addresses, stored normalised.
pub fn parse_valid_sources(sources: Option<OneOrMany<String>>) -> Result<Vec<String>, AdminError> {
    sources
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|source| {
            keyward_config::parse_cidr(source)
                .map(|net| net.to_string())
                .map_err(|message| AdminError::field("validSources", message, "validation.cidr"))
        })
        .collect()
}
