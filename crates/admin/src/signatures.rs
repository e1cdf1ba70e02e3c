//! `/authentication/v1/.../signature`: enrolled Ed25519 keys and signature sessions (SPEC §3).

use crate::call::{authorize_manage, parse_body, AdminApi, Call, POWER_USER};
use crate::envelope::{AdminError, Reply};
use base64::Engine as _;
use keyward_auth::signature::parse_public_key;
use keyward_auth::SecurityLevel;
use keyward_store::{now_ms, NewSignatureKey, SignatureKey, User};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnrollBody {
    public_key: Option<String>,
    description: Option<String>,
    valid_days: Option<i64>,
    valid_sources: Option<crate::call::OneOrMany<String>>,
}

fn describe(key: &SignatureKey) -> Value {
    json!({
        "keyID": key.key_id,
        "description": key.description,
        "publicKey": base64::engine::general_purpose::STANDARD.encode(&key.public_key),
        "validSources": key.valid_sources,
        "validUntil": key.valid_until_ms,
        "createdTimestamp": key.created_at_ms,
        "lastUsedTimestamp": key.last_used_at_ms,
        "lastUsedSourceIP": key.last_used_ip,
    })
}

pub async fn list(api: &AdminApi, call: &Call<'_>, target: &User) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let user_id = target.id;
    let keys = api
        .db
        .call(move |store| async move { store.list_signature_keys(user_id).await })
        .await?;
    let keys: Vec<Value> = keys.iter().map(describe).collect();
    Ok(Reply {
        count: keys.len(),
        ..Reply::ok(json!({ "keys": keys }))
    })
}

/// Enrolling is the one place a signature key comes from, so it needs more than managing:
/// ADMINISTRATIVE for your own keys (a password + TOTP login), POWER-USER for someone else's.
fn authorize_enroll(call: &Call<'_>, target: &User) -> Result<(), AdminError> {
    authorize_manage(call, target)?;
    let caller = call.caller;
    if caller.user_id == target.id && caller.level < SecurityLevel::Administrative {
        return Err(AdminError::Forbidden(format!(
            "enrolling your own signature key needs security level ADMINISTRATIVE (this call is {})",
            caller.level
        )));
    }
    if caller.user_id != target.id && !caller.has_function(POWER_USER) {
        return Err(AdminError::Forbidden(format!(
            "enrolling a key for another user needs {POWER_USER}"
        )));
    }
    Ok(())
}

pub async fn enroll(api: &AdminApi, call: &Call<'_>, target: &User) -> Result<Reply, AdminError> {
    authorize_enroll(call, target)?;
    let body: EnrollBody = parse_body(call.body)?;
    let public_key = body.public_key.unwrap_or_default();
    if public_key.trim().is_empty() {
        return Err(AdminError::field(
            "publicKey",
            "a public key is required",
            "validation.required",
        ));
    }
    let public_key = parse_public_key(&public_key)
        .map_err(|message| AdminError::field("publicKey", message, "validation.public.key"))?;
    let description = body.description.unwrap_or_default().trim().to_owned();
    if description.is_empty() {
        return Err(AdminError::field(
            "description",
            "a description is required",
            "validation.required",
        ));
    }
    let valid_until_ms = match body.valid_days {
        None | Some(0) => 0,
        Some(days) if days < 0 => {
            return Err(AdminError::field(
                "validDays",
                "must not be negative",
                "validation.min",
            ))
        }
        Some(days) => keyward_store::expiry_after_days(now_ms(), days).ok_or_else(|| {
            AdminError::field(
                "validDays",
                format!(
                    "must not exceed {} (100 years)",
                    keyward_store::MAX_LIFETIME_DAYS
                ),
                "validation.max",
            )
        })?,
    };
    let valid_sources = crate::call::parse_valid_sources(body.valid_sources)?;
    let new_key = NewSignatureKey {
        user_id: target.id,
        public_key: public_key.to_bytes().to_vec(),
        description,
        valid_until_ms,
        valid_sources,
    };
    let audit = call.audit(201, &target.name, "");
    let key = api
        .db
        .call(move |store| async move { store.create_signature_key(new_key, audit).await })
        .await?;
    api.auth.signatures.invalidate_user(target.id);
    Ok(Reply::created(json!({ "keyID": key.key_id })))
}

fn key_id(text: &str) -> Result<i64, AdminError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AdminError::NotFound(format!("no signature key {text}")))
}

pub async fn delete(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    key: &str,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let key_id = key_id(key)?;
    let user_id = target.id;
    let audit = call.audit(200, &target.name, &format!("{}/{key_id}", target.name));
    let deleted = api
        .db
        .call(move |store| async move { store.delete_signature_key(user_id, key_id, audit).await })
        .await?;
    if !deleted {
        return Err(AdminError::NotFound(format!("no signature key {key_id}")));
    }
    // Effective on this instance before the call returns.
    api.auth.signatures.invalidate_user(user_id);
    api.auth.signatures.evict_sessions(user_id, Some(key_id));
    Ok(Reply::ok(json!({ "keyID": key_id })))
}

/// `?keyID=N`, if given.
fn key_id_query(query: Option<&str>) -> Result<Option<i64>, AdminError> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("keyID="))
    else {
        return Ok(None);
    };
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(Some)
        .ok_or_else(|| {
            AdminError::field("keyID", "must be a positive integer", "validation.invalid")
        })
}

pub fn evict_sessions(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    query: Option<&str>,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let key_id = key_id_query(query)?;
    let evicted = api.auth.signatures.evict_sessions(target.id, key_id);
    Ok(Reply::ok(json!({ "evictedKeys": evicted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_query_parameter() {
        assert_eq!(key_id_query(None).unwrap(), None);
        assert_eq!(key_id_query(Some("a=1&keyID=7")).unwrap(), Some(7));
        assert_eq!(key_id_query(Some("keyID=x")).unwrap_err().status(), 412);
    }
}
