//! The one place that turns a refusal into an HTTP response.

use crate::target::TargetError;
use bytes::Bytes;
use keyward_config::policy::Decision;
use keyward_core::limit::Limited;
use keyward_core::quota::Exhausted;
use keyward_core::AuthError;
use keyward_metrics::Outcome;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

pub const REQUEST_ID_HEADER: &str = "gateway-request-id";
const CHALLENGE: &str = "Basic realm=\"keyward\", charset=\"UTF-8\"";

/// Every way keyward refuses a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request cannot be interpreted safely.
    BadRequest(&'static str),
    /// 401: no credential, or a bad one.
    Unauthenticated(&'static str),
    /// 403: authenticated, not allowed.
    Forbidden(&'static str),
    /// 404: a path keyward reserves for itself that has no endpoint.
    NotFound,
    /// 408: the request header did not arrive within `limits.header_read_timeout`.
    RequestTimeout,
    /// 408: a signed body did not arrive within `signatures.body_timeout`.
    BodyTimeout,
    /// 408: a request body did not arrive within `limits.body_timeout`.
    RequestBodyTimeout,
    /// 413: a signed body too large to check before forwarding.
    PayloadTooLarge,
    /// 431: the request line and headers exceed `limits.max_request_header_bytes`.
    HeaderTooLarge,
    /// 502: no upstream could be reached.
    BadGateway(&'static str),
    /// 429: too many failed second-factor attempts.
    TooManyRequests(&'static str),
    /// 429 with `Retry-After`: too many failed password logins from this address, or wrong
    /// TOTP codes for this user.
    RetryLater {
        reason: &'static str,
        retry_after_secs: u64,
    },
    /// 429 with `Retry-After`, `RateLimit-Policy` and `RateLimit`: over a rate limit.
    RateLimited(Limited),
    /// 429 `quota_exhausted` with `Retry-After` up to the period's end, `RateLimit-Policy`
    /// and `RateLimit`: an API key's quota is used up for this day or month.
    QuotaExhausted(Exhausted),
    /// 503 with `Retry-After`: keyward cannot decide right now (the store is down and nothing
    /// is cached, or the shared replay window cannot be reached).
    Unavailable(&'static str),
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthenticated(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::NotFound => 404,
            Refusal::RequestTimeout | Refusal::BodyTimeout | Refusal::RequestBodyTimeout => 408,
            Refusal::TooManyRequests(_)
            | Refusal::RetryLater { .. }
            | Refusal::RateLimited(_)
            | Refusal::QuotaExhausted(_) => 429,
            Refusal::PayloadTooLarge => 413,
            Refusal::HeaderTooLarge => 431,
            Refusal::BadGateway(_) => 502,
            Refusal::Unavailable(_) => 503,
            Refusal::GatewayTimeout => 504,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadRequest(r)
            | Refusal::Unauthenticated(r)
            | Refusal::Forbidden(r)
            | Refusal::BadGateway(r)
            | Refusal::TooManyRequests(r)
            | Refusal::Unavailable(r)
            | Refusal::RetryLater { reason: r, .. } => r,
            Refusal::NotFound => "not_found",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::QuotaExhausted(_) => "quota_exhausted",
            Refusal::RequestTimeout => "header_timeout",
            Refusal::BodyTimeout => "signed_body_timeout",
            Refusal::RequestBodyTimeout => "body_timeout",
            Refusal::PayloadTooLarge => "signed_body_too_large",
            Refusal::HeaderTooLarge => "request_header_too_large",
            Refusal::GatewayTimeout => "upstream_timeout",
        }
    }

    fn error(self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::RequestTimeout | Refusal::BodyTimeout | Refusal::RequestBodyTimeout => {
                "request_timeout"
            }
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::HeaderTooLarge => "request_header_fields_too_large",
            Refusal::TooManyRequests(_)
            | Refusal::RetryLater { .. }
            | Refusal::RateLimited(_)
            | Refusal::QuotaExhausted(_) => "too_many_requests",
            Refusal::BadGateway(_) => "bad_gateway",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::GatewayTimeout => "gateway_timeout",
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Refusal::Unauthenticated(_)
            | Refusal::TooManyRequests(_)
            | Refusal::RetryLater { .. } => Outcome::Unauthenticated,
            Refusal::BadRequest(_)
            | Refusal::Forbidden(_)
            | Refusal::NotFound
            | Refusal::RequestTimeout
            | Refusal::BodyTimeout
            | Refusal::RequestBodyTimeout
            | Refusal::PayloadTooLarge
            | Refusal::HeaderTooLarge
            | Refusal::RateLimited(_)
            | Refusal::QuotaExhausted(_) => Outcome::Denied,
            Refusal::BadGateway(_) | Refusal::Unavailable(_) | Refusal::GatewayTimeout => {
                Outcome::Error
            }
        }
    }

    /// The JSON body: small, stable, and free of anything the client did not already know.
    pub fn body(self, request_id: &str) -> Bytes {
        let mut body = serde_json::json!({
            "status": self.status(),
            "error": self.error(),
            "reason": self.reason(),
            "request_id": request_id,
        });
        if let Some(message) = explain(self.reason()) {
            body["message"] = message.into();
        }
        Bytes::from(body.to_string())
    }

    /// Writes the whole response.
    pub async fn send(
        self,
        session: &mut Session,
        request_id: &str,
        set_cookie: Option<&str>,
    ) -> pingora::Result<()> {
        let (header, body) = self.response(request_id, set_cookie)?;
        send(session, header, body).await
    }

    /// The whole response, header and body, for a caller that adds to it before sending
    /// (the external-authorization conventions).
    pub fn response(
        self,
        request_id: &str,
        set_cookie: Option<&str>,
    ) -> pingora::Result<(ResponseHeader, Bytes)> {
        let body = self.body(request_id);
        let mut header = json_header(
            self.status(),
            request_id,
            body.len(),
            matches!(self, Refusal::Unauthenticated(_)),
        );
        if let Some(cookie) = set_cookie {
            header.append_header("set-cookie", cookie)?;
        }
        if let Some(secs) = self.retry_after_secs() {
            header.insert_header("retry-after", secs.to_string())?;
        }
        if let Refusal::RateLimited(limited) = self {
            rate_limit_headers(&mut header, &limited)?;
        }
        if let Refusal::QuotaExhausted(exhausted) = self {
            header.insert_header("ratelimit-policy", exhausted.policy_header())?;
            header.insert_header("ratelimit", exhausted.limit_header())?;
        }
        Ok((header, body))
    }
}

/// `Retry-After` of a 503: a store or Redis that cannot be reached is usually back within
/// seconds (a failover, a restarted pod), and cached credentials keep working meanwhile.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

impl Refusal {
    /// The `Retry-After` seconds of a refusal that has them: throttles, and 503s.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::RetryLater {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Refusal::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            Refusal::RateLimited(limited) => Some(limited.retry_after_secs()),
            Refusal::QuotaExhausted(exhausted) => Some(exhausted.retry_after_secs()),
            _ => None,
        }
    }

    /// The whole HTTP/1.1 response, ending with `Connection: close`, for the connection-level
    /// refusals written straight to a socket before any request was parsed (see
    /// `keyward_proxy::connection`): no pingora session exists there to write it through.
    pub fn raw_http1(self, request_id: &str) -> Vec<u8> {
        let body = self.body(request_id);
        let status = self.status();
        let phrase = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\ncache-control: no-store\r\n{REQUEST_ID_HEADER}: \
             {request_id}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

/// `RateLimit-Policy` and `RateLimit` (IETF httpapi rate-limit header fields draft) of a 429;
/// `Retry-After` names the same moment as the draft's `t`.
pub fn rate_limit_headers(header: &mut ResponseHeader, limited: &Limited) -> pingora::Result<()> {
    header.insert_header("ratelimit-policy", limited.policy_header())?;
    header.insert_header("ratelimit", limited.limit_header())?;
    Ok(())
}

/// The header of every JSON answer keyward writes itself.
// `build` refuses only a status outside 100..=999; 500 is inside.
#[allow(clippy::expect_used)]
pub fn json_header(
    status: u16,
    request_id: &str,
    body_len: usize,
    challenge: bool,
) -> ResponseHeader {
    let mut header = ResponseHeader::build(status, Some(5))
        .unwrap_or_else(|_| ResponseHeader::build(500, None).expect("500 is a valid status"));
    let mut set = |name: &'static str, value: String| {
        // Only fixed names and ASCII values reach here, so this cannot fail.
        let _ = header.insert_header(name, value);
    };
    set("content-type", "application/json".into());
    set("content-length", body_len.to_string());
    set("cache-control", "no-store".into());
    set(REQUEST_ID_HEADER, request_id.to_owned());
    if challenge {
        set("www-authenticate", CHALLENGE.into());
    }
    header
}

/// Writes a complete JSON response: the one writer of keyward's own answers.
pub async fn send_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &str,
    challenge: bool,
) -> pingora::Result<()> {
    let header = json_header(status, request_id, body.len(), challenge);
    send(session, header, body).await
}

/// A 303 to `location` (a path on keyward's own origin), as the proxy sends a browser to the
/// sign-in page: no body, never cached, and varying with `Accept` (the same URL gives a
/// program its 401).
// `build` refuses only a status outside 100..=999.
#[allow(clippy::expect_used)]
pub async fn send_redirect(
    session: &mut Session,
    location: &str,
    request_id: &str,
    set_cookie: Option<&str>,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(303, Some(6)).expect("303 is a valid status");
    header.insert_header("location", location)?;
    header.insert_header("content-length", "0")?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("vary", "Accept")?;
    header.insert_header(REQUEST_ID_HEADER, request_id)?;
    if let Some(cookie) = set_cookie {
        header.append_header("set-cookie", cookie)?;
    }
    send(session, header, Bytes::new()).await
}

/// Writes a complete response keyward built itself.
pub async fn send(
    session: &mut Session,
    header: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if empty {
        return Ok(());
    }
    session.write_response_body(Some(body), true).await
}

/// A sentence for the reasons a client can act on.
fn explain(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "clock_skew" => {
            "clock skew detected: the signature's created time moved against the clock offset \
             established for this key; fix the client clock, then evict the signature session"
        }
        "replay" => "this signature was already used; sign every request anew",
        "stale" => "the signature's created time is outside the accepted window",
        "digest_mismatch" => "the body does not match Content-Digest",
        "locked" => "the account is locked",
        "bad_credentials" => "wrong user name or password",
        "too_many_failures" => "too many failed logins from this address; see Retry-After",
        "rate_limited" => "too many requests; see Retry-After and the RateLimit header",
        "expired" => "the credential has expired",
        "source_not_allowed" => "the credential may not be used from this address",
        "rate_limit_unavailable" => {
            "the fleet's shared rate-limit buckets cannot be reached right now; try again after \
             Retry-After"
        }
        "directory_unavailable" => {
            "the directory that checks this user's password cannot be reached right now; try \
             again after Retry-After"
        }
        "replay_window_unavailable" => {
            "the shared replay window (used signatures and TOTP codes) cannot be reached right \
             now; try again after Retry-After, with a new signature"
        }
        _ => return None,
    })
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::StoreUnavailable
            | AuthError::DirectoryUnavailable
            | AuthError::ReplayWindowUnavailable
            | AuthError::ReplayWindowFull
            | AuthError::PasswordChecksBusy => Refusal::Unavailable(e.reason()),
            AuthError::ClientBudget(limited) => Refusal::RateLimited(limited),
            AuthError::TotpRateLimited(retry_after_secs)
            | AuthError::PasswordThrottled(retry_after_secs) => Refusal::RetryLater {
                reason: e.reason(),
                retry_after_secs,
            },
            _ => Refusal::Unauthenticated(e.reason()),
        }
    }
}

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Self {
        Refusal::BadRequest(e.reason())
    }
}

impl Refusal {
    pub fn from_decision(decision: Decision) -> Option<Refusal> {
        match decision {
            Decision::Allow => None,
            Decision::Unauthenticated(r) => Some(Refusal::Unauthenticated(r)),
            Decision::Forbidden(r) => Some(Refusal::Forbidden(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_carries_a_challenge() {
        let refusal = Refusal::Unauthenticated("bad_secret");
        let header = json_header(refusal.status(), "0123456789ABCDEF", 10, true);
        assert_eq!(header.status.as_u16(), 401);
        assert!(header.headers.get("www-authenticate").is_some());
        let body: serde_json::Value =
            serde_json::from_slice(&refusal.body("0123456789ABCDEF")).unwrap();
        assert_eq!(body["reason"], "bad_secret");
        assert_eq!(body["request_id"], "0123456789ABCDEF");
    }

    #[test]
    fn raw_refusal_is_a_whole_closing_response() {
        let raw = Refusal::RequestTimeout.raw_http1("0123456789ABCDEF");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["reason"], "header_timeout");
        assert_eq!(body["status"], 408);
    }

    #[test]
    fn store_outage_is_503_not_401() {
        assert_eq!(Refusal::from(AuthError::StoreUnavailable).status(), 503);
        assert_eq!(Refusal::from(AuthError::BadSecret).status(), 401);
        let redis = Refusal::from(AuthError::ReplayWindowUnavailable);
        assert_eq!(redis.status(), 503);
        assert_eq!(redis.reason(), "replay_window_unavailable");
        assert_eq!(redis.retry_after_secs(), Some(UNAVAILABLE_RETRY_AFTER_SECS));
        assert_eq!(Refusal::from(AuthError::BadSecret).retry_after_secs(), None);
    }
}
