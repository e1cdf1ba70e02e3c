//! The Argus response envelope (SPEC §2) and the admin API's errors, mapped to status codes
//! here and nowhere else.

use serde_json::{json, Value};

/// A successful admin answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub data: Value,
    /// `count`/`size` of the envelope: list length, or 1 for one object.
    pub count: usize,
    /// An answer in another shape than the Argus envelope (the token API's).
    pub raw: Option<RawReply>,
    /// The credential the call created or deleted, for the audit record.
    pub credential: Option<String>,
}

#[derive(Debug)]
pub struct RawReply {
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn ok(data: Value) -> Reply {
        let count = data.as_array().map_or(1, Vec::len);
        Reply {
            status: 200,
            data,
            count,
            raw: None,
            credential: None,
        }
    }

    pub fn raw(
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Reply {
        Reply {
            status,
            data: Value::Null,
            count: 0,
            raw: Some(RawReply {
                content_type,
                body,
                headers,
            }),
            credential: None,
        }
    }

    pub fn with_credential(self, credential: String) -> Reply {
        Reply {
            credential: Some(credential),
            ..self
        }
    }

    pub fn created(data: Value) -> Reply {
        Reply {
            status: 201,
            ..Reply::ok(data)
        }
    }

    pub fn body(&self) -> Value {
        envelope(self.status, self.count, self.data.clone(), Vec::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("not authenticated ({0})")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 405; the value is the `Allow` header: the methods the path has.
    #[error("method not allowed (allowed: {0})")]
    MethodNotAllowed(String),
    /// 413: the body exceeds the admin API's limit (bytes).
    #[error("the body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the body did not arrive within `limits.body_timeout`.
    #[error("the request body did not arrive within limits.body_timeout")]
    BodyTimeout,
    /// 429 with `Retry-After`: too many failed password logins from this address, or wrong
    /// TOTP codes for this user.
    #[error("too many failed logins; try again in {0} s")]
    RetryLater(u64),
    /// 429 with `Retry-After`, `RateLimit-Policy` and `RateLimit`: over a rate limit.
    #[error("too many requests; try again in {} s", .0.retry_after_secs())]
    RateLimited(keyward_auth::ratelimit::Limited),
    /// Validation failed on `field` (412, `FIELD_ERROR`).
    #[error("{field}: {message}")]
    Field {
        field: String,
        message: String,
        template: &'static str,
    },
    #[error("the credential store or the shared replay window is unavailable; retry later")]
    Unavailable,
}

/// A refused credential on an admin call, mapped as the proxy maps it (`proxy::respond`):
/// 503 when the store could not answer, 429 with `Retry-After` when throttled, else 401.
impl From<keyward_auth::AuthError> for AdminError {
    fn from(e: keyward_auth::AuthError) -> Self {
        use keyward_auth::AuthError;
        match e {
            AuthError::StoreUnavailable
            | AuthError::DirectoryUnavailable
            | AuthError::ReplayWindowUnavailable
            | AuthError::ReplayWindowFull
            | AuthError::PasswordChecksBusy => AdminError::Unavailable,
            AuthError::ClientBudget(limited) => AdminError::RateLimited(limited),
            AuthError::TotpRateLimited(secs) | AuthError::PasswordThrottled(secs) => {
                AdminError::RetryLater(secs)
            }
            _ => AdminError::Unauthenticated(e.reason()),
        }
    }
}

impl AdminError {
    pub fn field(
        field: impl Into<String>,
        message: impl Into<String>,
        template: &'static str,
    ) -> Self {
        AdminError::Field {
            field: field.into(),
            message: message.into(),
            template,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::Unauthenticated(_) => 401,
            AdminError::Forbidden(_) => 403,
            AdminError::NotFound(_) => 404,
            AdminError::MethodNotAllowed(_) => 405,
            AdminError::PayloadTooLarge(_) => 413,
            AdminError::BodyTimeout => 408,
            AdminError::RetryLater(_) | AdminError::RateLimited(_) => 429,
            AdminError::Field { .. } => 412,
            AdminError::Unavailable => 503,
        }
    }

    /// The `outcome` label of `keyward_admin_operations_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_)
            | AdminError::MethodNotAllowed(_)
            | AdminError::PayloadTooLarge(_)
            | AdminError::BodyTimeout => "bad_request",
            AdminError::Unauthenticated(_) | AdminError::RetryLater(_) => "unauthenticated",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::RateLimited(_) => "rate_limited",
            AdminError::Field { .. } => "invalid",
            AdminError::Unavailable => "error",
        }
    }

    fn template(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "request.malformed",
            AdminError::Unauthenticated(_) => "access.unauthenticated",
            AdminError::Forbidden(_) => "access.denied",
            AdminError::NotFound(_) => "object.not.found",
            AdminError::MethodNotAllowed(_) => "request.method.not.allowed",
            AdminError::PayloadTooLarge(_) => "request.too.large",
            AdminError::BodyTimeout => "request.timeout",
            AdminError::RetryLater(_) | AdminError::RateLimited(_) => "access.rate.limited",
            AdminError::Field { template, .. } => template,
            AdminError::Unavailable => "service.unavailable",
        }
    }

    /// The `Retry-After` seconds of a refusal that has them.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AdminError::RetryLater(secs) => Some(*secs),
            AdminError::RateLimited(limited) => Some(limited.retry_after_secs()),
            AdminError::Unavailable => Some(keyward_http::respond::UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The small JSON error of the token API (not the Argus envelope).
    pub fn plain_body(&self, request_id: &str) -> Value {
        serde_json::json!({
            "status": self.status(),
            "error": self.outcome(),
            "message": self.to_string(),
            "request_id": request_id,
        })
    }

    pub fn body(&self) -> Value {
        let message = match self {
            AdminError::Field {
                field,
                message,
                template,
            } => json!({
                "message": message,
                "messageTemplate": template,
                "type": "FIELD_ERROR",
                "field": field,
                "parameter": null,
            }),
            other => json!({
                "message": other.to_string(),
                "messageTemplate": other.template(),
                "type": "ACTION_ERROR",
                "field": null,
                "parameter": null,
            }),
        };
        envelope(self.status(), 0, Value::Null, vec![message])
    }
}

impl From<keyward_store::StoreError> for AdminError {
    fn from(e: keyward_store::StoreError) -> Self {
        // An outage is logged once by the store's health tracker; anything else here.
        if !e.is_outage() {
            tracing::warn!(error = %e, "store error in an admin call");
        }
        AdminError::Unavailable
    }
}

fn envelope(status: u16, count: usize, data: Value, messages: Vec<Value>) -> Value {
    json!({
        "responseCode": status,
        "limit": 0,
        "offset": 0,
        "count": count,
        "size": count,
        "metaData": {},
        "messages": messages,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_envelope() {
        let body = Reply::ok(json!([1, 2, 3])).body();
        assert_eq!(body["responseCode"], 200);
        assert_eq!(body["count"], 3);
        assert_eq!(body["size"], 3);
        assert_eq!(body["messages"], json!([]));
        assert_eq!(body["data"], json!([1, 2, 3]));
    }

    #[test]
    fn field_error_envelope() {
        let e = AdminError::field("description", "is required", "validation.required");
        assert_eq!(e.status(), 412);
        let body = e.body();
        assert_eq!(body["data"], Value::Null);
        assert_eq!(body["messages"][0]["type"], "FIELD_ERROR");
        assert_eq!(body["messages"][0]["field"], "description");
        let forbidden = AdminError::Forbidden("no".into()).body();
        assert_eq!(forbidden["messages"][0]["type"], "ACTION_ERROR");
        assert_eq!(forbidden["responseCode"], 403);
    }
}
