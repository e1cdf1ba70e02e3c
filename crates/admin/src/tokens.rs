//! Gateway tokens (SPEC §4), in the Swarm Content Gateway's shapes: `/.TOKEN/` for a caller's
//! own tokens and `/_admin/manage/tenants/{tenant}/tokens/` for tenants.

use crate::call::{AdminApi, Call, POWER_USER};
use crate::envelope::{AdminError, Reply};
use keyward_auth::{token, CredentialKind, SecurityLevel};
use keyward_config::Config;
use keyward_store::{now_ms, NewToken, Token, TokenScope, User};
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

pub const EXPIRES_HEADER: &str = "x-user-token-expires-meta";
pub const OWNER_HEADER: &str = "x-owner-meta";
pub const SOURCE_HEADER: &str = "x-custom-meta-source";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// What a token call needs from the request besides the caller.
pub struct TokenRequest<'a> {
    /// The `Host`, lower-cased, without port: the domain tokens are scoped to.
    pub domain: String,
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    /// The request's own `token` cookie, if it presented a valid one.
    pub cookie_token: Option<&'a str>,
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Result<Option<&'a str>, AdminError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| AdminError::BadRequest(format!("{name} is not text")))
        })
        .transpose()
}

fn is_token_administrator(call: &Call<'_>) -> bool {
    call.config.tokens.administrator.as_deref() == Some(call.caller.user_name.as_str())
}

/// `X-User-Token-Expires-Meta`: POSIX seconds, `+N` days, `YYYY`, `YYYY-MM-DD` or RFC 3339
/// (UTC). Absent: `tokens.ttl`. In the past or beyond `tokens.max_ttl`: 400.
pub fn parse_expiry(
    value: Option<&str>,
    now_ms: i64,
    ttl: Duration,
    max_ttl: Duration,
) -> Result<i64, AdminError> {
    let bad = |why: &str| AdminError::BadRequest(format!("{EXPIRES_HEADER}: {why}"));
    let at_ms = match value {
        None => now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        Some(text) => {
            let rfc3339 = |t: &str| {
                humantime::parse_rfc3339_weak(t)
                    .ok()
                    .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64)
            };
            if let Some(days) = text.strip_prefix('+') {
                let days: i64 = days.parse().map_err(|_| bad("+N needs a number of days"))?;
                now_ms.saturating_add(days.saturating_mul(DAY_MS))
            } else if text.len() == 4 && text.bytes().all(|b| b.is_ascii_digit()) {
                rfc3339(&format!("{text}-01-01T00:00:00")).ok_or_else(|| bad("invalid year"))?
            } else if text.bytes().all(|b| b.is_ascii_digit()) {
                let secs: i64 = text.parse().map_err(|_| bad("invalid POSIX time"))?;
                secs.saturating_mul(1000)
            } else if text.len() == 10 {
                rfc3339(&format!("{text}T00:00:00")).ok_or_else(|| bad("invalid date"))?
            } else {
                let text = text.trim_end_matches('Z').trim_end_matches("+00:00");
                rfc3339(text).ok_or_else(|| bad("not a time keyward understands"))?
            }
        }
    };
    if at_ms <= now_ms {
        return Err(bad("the expiry is in the past"));
    }
    if at_ms.saturating_sub(now_ms) > i64::try_from(max_ttl.as_millis()).unwrap_or(i64::MAX) {
        return Err(bad("beyond the maximum lifetime (tokens.max_ttl)"));
    }
    Ok(at_ms)
}

/// The level a token was stored with.
fn stored_level(token: &Token) -> SecurityLevel {
    match token.level.as_str() {
        "ADMINISTRATIVE" => SecurityLevel::Administrative,
        "EXTERNAL" => SecurityLevel::External,
        _ => SecurityLevel::Default,
    }
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn listing(token: &Token) -> Value {
    let mut entry = json!({
        "x_token_domain_meta": token.domain,
        "x_owner_meta": token.owner_name,
        "last_modified": rfc3339(token.created_at_ms),
        "lifepoint": format!("[{}] reps=2,[] delete", http_date(token.expires_at_ms)),
        "name": token.name,
    });
    if let Some(source) = &token.custom_source {
        entry["x_custom_meta_source"] = source.clone().into();
    }
    entry
}

/// Resolves who the call acts for: the caller, or with `X-Owner-Meta` / `?x-owner-meta`
/// another user — for the token administrator only.
async fn owner(api: &AdminApi, call: &Call<'_>, named: Option<&str>) -> Result<User, AdminError> {
    match named.filter(|n| *n != call.caller.user_name) {
        Some(name) => {
            if !is_token_administrator(call) {
                return Err(AdminError::Forbidden(
                    "only the token administrator may act for another user".into(),
                ));
            }
            api.resolve_user(name).await
        }
        None => api.resolve_caller(call.caller).await,
    }
}

/// What a mint decided the new token is, before it has a secret.
struct Minting {
    level: SecurityLevel,
    domain: String,
    tenant: Option<String>,
    expires_at_ms: i64,
    custom_source: Option<String>,
}

async fn mint_token(
    api: &AdminApi,
    call: &Call<'_>,
    owner: &User,
    minting: Minting,
) -> Result<(String, Token), AdminError> {
    let Minting {
        level,
        domain,
        tenant,
        expires_at_ms,
        custom_source,
    } = minting;
    let secret = token::generate();
    let hash = api.auth.tokens.hash(&secret);
    let new_token = NewToken {
        name: token::name_for(&hash),
        token_hash: hash,
        owner_id: owner.id,
        domain,
        tenant,
        level: level.as_str().to_owned(),
        expires_at_ms,
        custom_source,
    };
    // Why: every token is a row in the store and an entry in the caches; a script looping on
    // a password must not grow them without bound (`limits.tokens_per_user`). Counted in the
    // insert's transaction, so concurrent mints cannot pass the cap together.
    let cap = u64::from(call.config.limits.tokens_per_user);
    let audit = call.audit(201, &owner.name, &new_token.name);
    let stored = api
        .db
        .call(move |store| async move { store.create_token(new_token, Some(cap), audit).await })
        .await?
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "{} already holds {cap} unexpired tokens (limits.tokens_per_user); delete one first",
                owner.name
            ))
        })?;
    Ok((secret, stored))
}

/// The minting headers every mint reads: the expiry (validated against `tokens.ttl` and
/// `tokens.max_ttl`, and never past `cap_ms`) and `X-Custom-Meta-Source`.
fn expiry_and_source(
    config: &Config,
    req: &TokenRequest<'_>,
    cap_ms: Option<i64>,
) -> Result<(i64, Option<String>), AdminError> {
    let tokens = &config.tokens;
    let requested = header(req.headers, EXPIRES_HEADER)?;
    let mut expires = parse_expiry(requested, now_ms(), tokens.ttl, tokens.max_ttl)?;
    if let Some(cap) = cap_ms {
        // Why: a token minted with a token must not outlive it (SPEC §4), or a stolen token
        // could be renewed forever. An explicit expiry past the cap is an error (400); the
        // default `tokens.ttl` is quietly capped instead, so a client that never names an
        // expiry keeps working until the token it started with runs out.
        match requested {
            Some(_) if expires > cap => {
                return Err(AdminError::BadRequest(format!(
                    "{EXPIRES_HEADER}: a token cannot mint a token that outlives it"
                )))
            }
            _ => expires = expires.min(cap),
        }
    }
    let source = header(req.headers, SOURCE_HEADER)?.map(str::to_owned);
    // Why: stored and listed back on every GET; bounded like any stored input
    // (`limits.token_metadata_bytes`).
    let limit = config.limits.token_metadata_bytes;
    if source.as_ref().is_some_and(|s| s.len() > limit) {
        return Err(AdminError::BadRequest(format!(
            "{SOURCE_HEADER} exceeds {limit} bytes (limits.token_metadata_bytes)"
        )));
    }
    Ok((expires, source))
}

/// When the caller is a token: its own expiry and level, read from the store (the principal
/// does not carry the expiry). A token deleted meanwhile authenticates nothing.
async fn asking_token(api: &AdminApi, call: &Call<'_>) -> Result<Option<Token>, AdminError> {
    if call.caller.kind != CredentialKind::Token {
        return Ok(None);
    }
    let name = call.caller.credential_id.clone();
    let found = api
        .db
        .call(move |store| async move { store.token_by_name(&name).await })
        .await?;
    found
        .map(Some)
        .ok_or(AdminError::Unauthenticated("expired"))
}

/// Tokens are minted with a password (optionally + TOTP) or with a token; which credentials
/// may reach this endpoint at all is `guard::admit`'s rule.
pub async fn mint(
    api: &AdminApi,
    call: &Call<'_>,
    req: &TokenRequest<'_>,
) -> Result<Reply, AdminError> {
    let owner = owner(api, call, header(req.headers, OWNER_HEADER)?).await?;
    let asking = asking_token(api, call).await?;
    let (expires, source) =
        expiry_and_source(call.config, req, asking.as_ref().map(|t| t.expires_at_ms))?;
    // Why: a token carries the level of the login that minted it — never more, so a DEFAULT
    // token cannot mint an ADMINISTRATIVE one (a token-authenticated call's level *is* the
    // asking token's level; `X-Totp-Code` is only read with a password) — and never more
    // than DEFAULT for someone else.
    let level = if owner.id == call.caller.user_id {
        call.caller.level
    } else {
        SecurityLevel::Default.min(call.caller.level)
    };
    debug_assert!(asking.is_none_or(|t| level <= stored_level(&t)));
    let minting = Minting {
        level,
        domain: req.domain.clone(),
        tenant: None,
        expires_at_ms: expires,
        custom_source: source,
    };
    let (secret, stored) = mint_token(api, call, &owner, minting).await?;
    let body = format!("Token {secret} expires {}\n", rfc3339(stored.expires_at_ms));
    let set_cookie = query_param(req.query, "setcookie") != Some("false");
    let mut headers = Vec::new();
    if set_cookie {
        // Over TLS the browser must never send the cookie in clear; `tokens.secure_cookie`
        // is for a TLS proxy in front of keyward.
        let secure = if call.tls || call.config.tokens.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        headers.push((
            "set-cookie",
            format!("token={secret}; Path=/; HttpOnly; SameSite=Lax{secure}"),
        ));
    } else {
        headers.push(("gateway-token", secret));
    }
    Ok(Reply::raw(
        201,
        "text/plain; charset=utf-8",
        body.into_bytes(),
        headers,
    ))
}

pub async fn list(
    api: &AdminApi,
    call: &Call<'_>,
    req: &TokenRequest<'_>,
) -> Result<Reply, AdminError> {
    let owner = owner(api, call, query_param(req.query, "x-owner-meta")).await?;
    let scope = TokenScope::Owner {
        owner_id: owner.id,
        domain: req.domain.clone(),
    };
    let now = now_ms();
    let tokens = api
        .db
        .call(move |store| async move { store.list_tokens(scope, now).await })
        .await?;
    let body: Vec<Value> = tokens.iter().map(listing).collect();
    let count = body.len().to_string();
    Ok(Reply::raw(
        200,
        "application/json",
        Value::Array(body).to_string().into_bytes(),
        vec![("castor-object-count", count)],
    ))
}

/// The token a path names: by its name, or by the token itself (so a token can delete
/// itself).
async fn find_token(api: &AdminApi, name_or_token: &str) -> Result<Option<Token>, AdminError> {
    if !token::is_token(name_or_token) {
        return Ok(None);
    }
    let candidates = [
        name_or_token.to_owned(),
        token::name_for(&api.auth.tokens.hash(name_or_token)),
    ];
    Ok(api
        .db
        .call(move |store| async move {
            for name in candidates {
                if let Some(t) = store.token_by_name(&name).await? {
                    return Ok(Some(t));
                }
            }
            Ok(None)
        })
        .await?)
}

/// Deletes a token, effective on this keyward before the call returns.
async fn remove(
    api: &AdminApi,
    call: &Call<'_>,
    owner: &str,
    name: &str,
) -> Result<(), AdminError> {
    let deleted_name = name.to_owned();
    let audit = call.audit(200, owner, name);
    let deleted = api
        .db
        .call(move |store| async move { store.delete_token(&deleted_name, audit).await })
        .await?;
    api.auth.tokens.invalidate_name(name);
    if !deleted {
        // Deleted by a concurrent call (here or on another replica) since it was found.
        return Err(AdminError::NotFound("no such token".into()));
    }
    Ok(())
}

pub async fn delete(
    api: &AdminApi,
    call: &Call<'_>,
    req: &TokenRequest<'_>,
    name_or_token: &str,
) -> Result<Reply, AdminError> {
    let admin = is_token_administrator(call);
    let caller_id = call.caller.user_id;
    let found = find_token(api, name_or_token).await?;
    // Someone else's token is "not found" unless the caller is the token administrator.
    let token = found
        .filter(|t| t.tenant.is_none() && (t.owner_id == caller_id || admin))
        .ok_or_else(|| AdminError::NotFound("no such token".into()))?;
    let name = token.name.clone();
    remove(api, call, &token.owner_name, &name).await?;
    let mut headers = vec![("content-length", "0".to_owned())];
    let own_cookie = req
        .cookie_token
        .is_some_and(|t| token::name_for(&api.auth.tokens.hash(t)) == name);
    if own_cookie {
        headers.push(("set-cookie", token::CLEAR_COOKIE.to_owned()));
    }
    Ok(Reply::raw(200, "text/plain", Vec::new(), headers).with_credential(name))
}

/// Tenant tokens are managed by a POWER-USER or the token administrator (with a password:
/// `guard::admit`).
fn authorize_tenant(call: &Call<'_>) -> Result<(), AdminError> {
    if !call.caller.has_function(POWER_USER) && !is_token_administrator(call) {
        return Err(AdminError::Forbidden(format!(
            "tenant tokens need {POWER_USER} or the token administrator"
        )));
    }
    Ok(())
}

fn valid_tenant(tenant: &str) -> Result<(), AdminError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(())
        .ok_or_else(|| AdminError::NotFound(format!("no tenant {tenant:?}")))
}

pub async fn tenant_list(
    api: &AdminApi,
    call: &Call<'_>,
    tenant: &str,
) -> Result<Reply, AdminError> {
    authorize_tenant(call)?;
    valid_tenant(tenant)?;
    let scope = TokenScope::Tenant(tenant.to_owned());
    let now = now_ms();
    let tokens = api
        .db
        .call(move |store| async move { store.list_tokens(scope, now).await })
        .await?;
    let body: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut entry = listing(t);
            entry["scope"] = format!("+{tenant}").into();
            entry
        })
        .collect();
    let count = body.len().to_string();
    Ok(Reply::raw(
        200,
        "application/json",
        Value::Array(body).to_string().into_bytes(),
        vec![("castor-object-count", count)],
    ))
}

pub async fn tenant_mint(
    api: &AdminApi,
    call: &Call<'_>,
    req: &TokenRequest<'_>,
    tenant: &str,
) -> Result<Reply, AdminError> {
    authorize_tenant(call)?;
    valid_tenant(tenant)?;
    let owner = api.resolve_caller(call.caller).await?;
    let (expires, source) = expiry_and_source(call.config, req, None)?;
    // Stored as EXTERNAL: what the token authenticates as (crates/auth/src/token.rs `cached`).
    let minting = Minting {
        level: SecurityLevel::External,
        domain: tenant.to_owned(),
        tenant: Some(tenant.to_owned()),
        expires_at_ms: expires,
        custom_source: source,
    };
    let (secret, stored) = mint_token(api, call, &owner, minting).await?;
    let body = json!({
        "token": secret,
        "owner": owner.name,
        "scope": format!("+{tenant}"),
        "expiration": rfc3339(stored.expires_at_ms),
        "creation": rfc3339(stored.created_at_ms),
    });
    Ok(Reply::raw(
        201,
        "application/json",
        body.to_string().into_bytes(),
        Vec::new(),
    )
    .with_credential(stored.name))
}

pub async fn tenant_delete(
    api: &AdminApi,
    call: &Call<'_>,
    tenant: &str,
    name_or_token: &str,
) -> Result<Reply, AdminError> {
    authorize_tenant(call)?;
    valid_tenant(tenant)?;
    let found = find_token(api, name_or_token).await?;
    let token = found
        .filter(|t| t.tenant.as_deref() == Some(tenant))
        .ok_or_else(|| AdminError::NotFound("no such token".into()))?;
    let name = token.name.clone();
    remove(api, call, &token.owner_name, &name).await?;
    Ok(Reply::raw(
        200,
        "text/plain",
        Vec::new(),
        vec![("content-length", "0".to_owned())],
    )
    .with_credential(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn expiry_forms() {
        let now = 1_700_000_000_000; // 2023-11-14
        let max = Duration::from_secs(3650 * 86_400);
        let parse = |v: &str| parse_expiry(Some(v), now, DAY, max);
        assert_eq!(parse_expiry(None, now, DAY, max).unwrap(), now + DAY_MS);
        assert_eq!(parse("+2").unwrap(), now + 2 * DAY_MS);
        assert_eq!(parse("1800000000").unwrap(), 1_800_000_000_000);
        assert_eq!(parse("2030").unwrap(), 1_893_456_000_000);
        assert_eq!(parse("2030-01-02").unwrap(), 1_893_542_400_000);
        assert_eq!(parse("2030-01-02T03:04:05Z").unwrap(), 1_893_553_445_000);
        assert!(parse("2020").is_err(), "past");
        assert!(parse("+9999").is_err(), "beyond max_ttl");
        assert!(parse("soon").is_err());
        assert!(parse("+x").is_err());
    }
}
