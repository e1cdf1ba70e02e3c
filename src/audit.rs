//! Audit records (SPEC §4): one per admin call, on the `keyward::audit` tracing target.
//! Secrets never appear: credentials are named by prefix, key id or token name only.

use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub request_id: &'a str,
    /// The authenticated caller, `-` when authentication failed.
    pub actor: &'a str,
    pub auth_method: &'a str,
    pub operation: &'a str,
    pub target_user: &'a str,
    pub target_credential: &'a str,
    /// The HTTP status of the answer.
    pub status: u16,
    pub outcome: &'a str,
    pub source_ip: Option<IpAddr>,
}

pub fn record(r: &AuditRecord<'_>) {
    tracing::info!(
        target: "keyward::audit",
        time = %humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        request_id = r.request_id,
        actor = r.actor,
        auth_method = r.auth_method,
        operation = r.operation,
        target_user = r.target_user,
        target_credential = r.target_credential,
        status = r.status,
        outcome = r.outcome,
        source_ip = %r.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "admin call"
    );
}
