//! The pages: askama templates (every value HTML-escaped by the template engine) and the
//! headers every page is sent with.

use askama::Template;
use bytes::Bytes;
use keyward_http::respond::REQUEST_ID_HEADER;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// No script, no frame, no third party: styles from keyward itself, forms posted to keyward
/// itself, and no page may frame these (clickjacking).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The one stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("../static/style.css");
pub const STYLESHEET_PATH: &str = "/.keyward/style.css";

/// What every page shows at its top.
pub struct Chrome<'a> {
    /// `browser.title`, or "keyward".
    pub title: &'a str,
}

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignIn<'a> {
    pub chrome: Chrome<'a>,
    pub csrf: &'a str,
    /// Where to go afterwards (already checked to be a path on this origin).
    pub rd: &'a str,
    /// The name typed before (a failed attempt), shown again.
    pub name: &'a str,
    pub error: Option<&'a str>,
    /// "Sign in with …": the provider's name and the link that starts its flow.
    pub oidc: Option<(&'a str, String)>,
}

#[derive(Template)]
#[template(path = "signed_out.html")]
pub struct SignedOut<'a> {
    pub chrome: Chrome<'a>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message<'a> {
    pub chrome: Chrome<'a>,
    pub heading: &'a str,
    pub text: &'a str,
    /// A link onwards (path, label).
    pub link: Option<(&'a str, &'a str)>,
}

/// One API key row.
pub struct KeyRow {
    pub prefix: String,
    pub description: String,
    pub created: String,
    pub last_used: String,
    pub valid_until: String,
    pub sources: String,
    pub read_only: bool,
}

/// One token row.
pub struct TokenRow {
    pub name: String,
    pub domain: String,
    pub created: String,
    pub source: String,
    /// The token this browser signed in with.
    pub current: bool,
}

/// One signature key row.
pub struct SignatureRow {
    pub key_id: String,
    pub description: String,
    pub created: String,
    pub last_used: String,
}

/// A section of the account page: its rows, or why the account may not see them (the admin
/// API's own answer).
pub enum Section<T> {
    Rows(Vec<T>),
    Refused(String),
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct Account<'a> {
    pub chrome: Chrome<'a>,
    pub csrf: &'a str,
    pub user: &'a str,
    pub level: &'a str,
    pub functions: String,
    /// A note about the last action (a fixed text, never one the request chose).
    pub note: Option<&'a str>,
    pub error: Option<String>,
    /// A key just created or rolled: shown this once.
    pub new_key: Option<String>,
    pub tokens: Section<TokenRow>,
    pub keys: Section<KeyRow>,
    pub signatures: Section<SignatureRow>,
}

/// Writes a page with every security header.
pub async fn send(
    session: &mut Session,
    status: u16,
    html: String,
    request_id: &str,
    cookies: &[String],
) -> pingora::Result<()> {
    let body = Bytes::from(html);
    let mut header = base_header(status, request_id, "text/html; charset=utf-8", body.len())?;
    for cookie in cookies {
        header.append_header("set-cookie", cookie)?;
    }
    keyward_http::respond::send(session, header, body).await
}

/// A 303 to `location` (a path on this origin, or the OpenID provider).
pub async fn redirect(
    session: &mut Session,
    location: &str,
    request_id: &str,
    cookies: &[String],
) -> pingora::Result<()> {
    let mut header = base_header(303, request_id, "text/plain; charset=utf-8", 0)?;
    header.insert_header("location", location)?;
    for cookie in cookies {
        header.append_header("set-cookie", cookie)?;
    }
    keyward_http::respond::send(session, header, Bytes::new()).await
}

/// The stylesheet (cacheable: it changes only with keyward's version).
pub async fn stylesheet(session: &mut Session, request_id: &str) -> pingora::Result<()> {
    let body = Bytes::from_static(STYLESHEET.as_bytes());
    let mut header = base_header(200, request_id, "text/css; charset=utf-8", body.len())?;
    header.insert_header("cache-control", "public, max-age=3600")?;
    keyward_http::respond::send(session, header, body).await
}

fn base_header(
    status: u16,
    request_id: &str,
    content_type: &str,
    length: usize,
) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(status, Some(12))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", length.to_string())?;
    header.insert_header("content-security-policy", CONTENT_SECURITY_POLICY)?;
    header.insert_header("x-frame-options", "DENY")?;
    header.insert_header("x-content-type-options", "nosniff")?;
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on the
    // pages' own form posts, which the admin API's origin check refuses.
    header.insert_header("referrer-policy", "same-origin")?;
    header.insert_header("cross-origin-opener-policy", "same-origin")?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header(REQUEST_ID_HEADER, request_id)?;
    Ok(header)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM UTC`; `None` as "—".
pub fn when(ms: Option<i64>) -> String {
    let Some(ms) = ms.filter(|ms| *ms > 0) else {
        return "—".into();
    };
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    let text =
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    // "Thu, 03 Dec 2026 21:30:00 GMT" → "03 Dec 2026 21:30 GMT"
    text.get(5..22).map(|t| format!("{t} UTC")).unwrap_or(text)
}
