//! Audit records: one per admin call. The store's audit table is the durable record (a change
//! and its record commit together; `keyward audit tail` reads them back); each record is also
//! exported to the `keyward::audit` tracing target and, when `audit.path` is set, appended as
//! one JSON object per line to that file. Secrets never appear: credentials are named by
//! prefix, key id or token name only.

pub use crate::AuditEvent;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Where audit records go. File writes happen on a thread of their own, never on the
/// request path's runtime.
pub struct AuditLog {
    file: Option<mpsc::Sender<String>>,
}

impl AuditLog {
    /// Records only to the tracing target.
    pub fn tracing_only() -> AuditLog {
        AuditLog { file: None }
    }

    /// Also appends JSON lines to `path` (created with mode 0600 if missing).
    pub fn with_file(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("keyward-audit".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
                        tracing::error!(path = %shown, error = %e, "cannot write the audit log");
                    }
                }
            })?;
        Ok(AuditLog { file: Some(tx) })
    }

    pub fn record(&self, r: &AuditEvent) {
        tracing::info!(
            target: "keyward::audit",
            time = %r.time,
            request_id = r.request_id.as_str(),
            actor = r.actor.as_str(),
            auth_method = r.auth_method.as_str(),
            operation = r.operation.as_str(),
            target_user = r.target_user.as_str(),
            target_credential = r.target_credential.as_str(),
            status = r.status,
            outcome = r.outcome.as_str(),
            source_ip = %r.source_ip.as_deref().unwrap_or_default(),
            "admin call"
        );
        if let Some(file) = &self.file {
            let mut line = r.to_json();
            line.push('\n');
            let _ = file.send(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_file(&path).unwrap();
        let record = AuditEvent {
            seq: 0,
            time: now_rfc3339(),
            request_id: "0123456789ABCDEF".into(),
            actor: "admin".into(),
            auth_method: "PASSWORD".into(),
            operation: "user.lock".into(),
            target_user: "john".into(),
            target_credential: String::new(),
            status: 200,
            outcome: "ok".into(),
            source_ip: Some("127.0.0.1".into()),
        };
        log.record(&record);
        log.record(&record);
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                let first: serde_json::Value =
                    serde_json::from_str(text.lines().next().unwrap()).unwrap();
                assert_eq!(first["operation"], "user.lock");
                assert_eq!(first["source_ip"], "127.0.0.1");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "audit lines not written"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
