//! `/authentication/v1/.../apikey`: list, create, renew, roll and revoke API keys (SPEC §2).

use crate::call::{authorize_manage, parse_body, AdminApi, Call, OneOrMany, POWER_USER};
use crate::envelope::{AdminError, Reply};
use keyward_auth::api_key::{generate_secret, Prefix};
use keyward_auth::ratelimit::{Limit, LimitError};
use keyward_core::quota::MAX_QUOTA_REQUESTS;
use keyward_store::{
    expiry_after_days, now_ms, ApiKey, ApiKeyRoll, NewApiKey, Quota, QuotaPeriod, User, DAY_MS,
    MAX_LIFETIME_DAYS, MAX_LIFETIME_MS,
};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

const MAX_DESCRIPTION: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBody {
    description: Option<String>,
    valid_sources: Option<OneOrMany<String>>,
    expiration_days: Option<i64>,
    disable_expiration: Option<bool>,
    session_constraints: Option<SessionConstraints>,
    rate_limit: Option<RateLimitBody>,
    quota: Option<QuotaBody>,
}

/// `quota`: requests per UTC day or month, counted fleet-wide.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    requests: u64,
    period: String,
}

impl QuotaBody {
    fn quota(self) -> Result<Quota, AdminError> {
        let period = QuotaPeriod::parse(&self.period).ok_or_else(|| {
            AdminError::field("quota.period", "must be day or month", "validation.invalid")
        })?;
        Quota::new(self.requests, period).ok_or_else(|| {
            AdminError::field(
                "quota.requests",
                format!("must be an integer from 1 to {MAX_QUOTA_REQUESTS}"),
                "validation.range",
            )
        })
    }
}

/// `quota` of a renew or roll: absent (`None`), `null` (`Some(None)`) or a quota.
fn quota_change(body: Option<Option<QuotaBody>>) -> Result<Option<Option<Quota>>, AdminError> {
    match body {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(body)) => Ok(Some(Some(body.quota()?))),
    }
}

/// `rateLimit`: the key's own quota, instead of `rate_limits.per_credential`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimitBody {
    requests_per_second: f64,
    burst: u64,
}

impl RateLimitBody {
    fn limit(self) -> Result<Limit, AdminError> {
        Limit::new(self.requests_per_second, self.burst).map_err(|e| {
            let field = match e {
                LimitError::Rate => "rateLimit.requestsPerSecond",
                LimitError::Burst => "rateLimit.burst",
            };
            AdminError::field(field, e.to_string(), "validation.range")
        })
    }
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionConstraints {
    function: Option<OneOrMany<String>>,
    #[serde(rename = "customerID")]
    customer_id: Option<OneOrMany<IdValue>>,
    customer: Option<OneOrMany<IdValue>>,
    #[serde(rename = "readOnly")]
    read_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RenewBody {
    expiration_days: Option<i64>,
    disable_expiration: Option<bool>,
    /// Absent: the key keeps its rate limit; `null`: it takes `per_credential` again.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimitBody>>,
    /// Absent: the key keeps its quota; `null`: it has none.
    #[serde(default, deserialize_with = "present")]
    quota: Option<Option<QuotaBody>>,
}

/// Customer ids arrive as numbers (`[1]`) or strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdValue {
    Number(u64),
    Text(String),
}

impl IdValue {
    fn into_string(self) -> String {
        match self {
            IdValue::Number(n) => n.to_string(),
            IdValue::Text(t) => t,
        }
    }
}

/// The expiry of a new or renewed key, in ms since the epoch (0 = never).
fn valid_until(
    call: &Call<'_>,
    expiration_days: Option<i64>,
    disable_expiration: bool,
) -> Result<i64, AdminError> {
    let power = call.caller.has_function(POWER_USER);
    if disable_expiration {
        if !power {
            return Err(AdminError::field(
                "disableExpiration",
                format!("only {POWER_USER} may create keys that never expire"),
                "validation.not.allowed",
            ));
        }
        return Ok(0);
    }
    let limits = &call.config.api_keys;
    let days = expiration_days.unwrap_or(limits.default_expiration_days);
    if days < 1 {
        return Err(AdminError::field(
            "expirationDays",
            "must be at least 1",
            "validation.min",
        ));
    }
    if days > limits.max_expiration_days && !power {
        return Err(AdminError::field(
            "expirationDays",
            format!("must not exceed {}", limits.max_expiration_days),
            "validation.max",
        ));
    }
    // Whoever asks: beyond 100 years is a mistake, and keeps every later computation (a
    // roll's `now + lifetime`) far from i64's end.
    expiry_after_days(now_ms(), days).ok_or_else(|| {
        AdminError::field(
            "expirationDays",
            format!("must not exceed {MAX_LIFETIME_DAYS} (100 years)"),
            "validation.max",
        )
    })
}

/// The longest lifetime `call`'s caller may give a key: `api_keys.max_expiration_days`, or
/// 100 years for a POWER-USER.
fn max_lifetime_ms(call: &Call<'_>) -> i64 {
    match call.caller.has_function(POWER_USER) {
        true => MAX_LIFETIME_MS,
        false => call
            .config
            .api_keys
            .max_expiration_days
            .clamp(0, MAX_LIFETIME_DAYS)
            .saturating_mul(DAY_MS),
    }
}

/// Limits are set from above (SPEC §15): a caller without POWER-USER may give a key a rate
/// limit no looser than the one that holds it now (its own, else `rate_limits.per_credential`),
/// and never remove the key's own limit. `change` is what the call asks: `None` nothing,
/// `Some(None)` removal, `Some(Some(limit))` a new limit.
fn check_rate_limit_change(
    call: &Call<'_>,
    current: Option<Limit>,
    change: Option<Option<Limit>>,
) -> Result<(), AdminError> {
    if call.caller.has_function(POWER_USER) {
        return Ok(());
    }
    let holding = current.or(call.config.rate_limits.per_credential);
    match change {
        None => Ok(()),
        Some(None) if current.is_none() => Ok(()),
        Some(None) => Err(AdminError::Forbidden(format!(
            "only {POWER_USER} may remove a key's rate limit"
        ))),
        Some(Some(asked)) => match holding {
            Some(holding)
                if asked.per_kilosecond() > holding.per_kilosecond()
                    || asked.burst() > holding.burst() =>
            {
                Err(AdminError::Forbidden(format!(
                    "only {POWER_USER} may raise a key's rate limit (now {} requests/s, burst {})",
                    holding.requests_per_second(),
                    holding.burst()
                )))
            }
            _ => Ok(()),
        },
    }
}

/// Limits are set from above (SPEC §15), for quotas: a caller without POWER-USER may give a
/// key a quota no looser than the one it has (see [`Quota::no_looser_than`]) and never
/// remove it (403).
fn check_quota_change(
    call: &Call<'_>,
    current: Option<Quota>,
    change: Option<Option<Quota>>,
) -> Result<(), AdminError> {
    if call.caller.has_function(POWER_USER) {
        return Ok(());
    }
    match (change, current) {
        (None, _) | (Some(_), None) => Ok(()),
        (Some(None), Some(_)) => Err(AdminError::Forbidden(format!(
            "only {POWER_USER} may remove a key's quota"
        ))),
        (Some(Some(asked)), Some(current)) if !asked.no_looser_than(&current) => {
            Err(AdminError::Forbidden(format!(
                "only {POWER_USER} may raise a key's quota (now {} requests per {})",
                current.requests(),
                current.period().as_str()
            )))
        }
        (Some(Some(_)), Some(_)) => Ok(()),
    }
}

/// [`descriptor`] with the key's `quotaRemaining` asked of the quota counter.
pub async fn describe(api: &AdminApi, key: &ApiKey) -> Value {
    let remaining = match key.quota {
        Some(quota) => {
            api.auth
                .quotas
                .remaining(key.user_id, key.key_id, quota, now_ms())
                .await
        }
        None => None,
    };
    descriptor(key, remaining)
}

/// A key's descriptor (SPEC §2, §12); `remaining`: what is left of its quota this period.
pub fn descriptor(key: &ApiKey, remaining: Option<u64>) -> Value {
    json!({
        "prefix": key.prefix(),
        "description": key.description,
        "createdTimestamp": key.created_at_ms,
        "createdByUser": { "id": key.created_by_id, "name": key.created_by_name },
        "lastUsedTimestamp": key.last_used_at_ms,
        "lastUsedIP": key.last_used_ip,
        "validUntil": key.valid_until_ms,
        "validSources": key.valid_sources,
        "constraints": {
            "functions": key.functions.clone().unwrap_or_default(),
            "customers": key.customers,
            "readOnly": key.read_only,
        },
        "rateLimit": key.rate_limit.map(|l| json!({
            "requestsPerSecond": l.requests_per_second(),
            "burst": l.burst(),
        })),
        "quota": key.quota.map(|q| json!({
            "requests": q.requests(),
            "period": q.period().as_str(),
        })),
        "quotaRemaining": key.quota.and(remaining),
    })
}

pub async fn list(api: &AdminApi, call: &Call<'_>, target: &User) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let user_id = target.id;
    let keys = api
        .db
        .call(move |store| async move { store.list_api_keys(user_id).await })
        .await?;
    let mut descriptors = Vec::with_capacity(keys.len());
    for key in &keys {
        descriptors.push(describe(api, key).await);
    }
    Ok(Reply::ok(Value::Array(descriptors)))
}

pub async fn create(api: &AdminApi, call: &Call<'_>, target: &User) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let body: CreateBody = parse_body(call.body)?;
    let description = body.description.unwrap_or_default().trim().to_owned();
    if description.is_empty() {
        return Err(AdminError::field(
            "description",
            "a description is required",
            "validation.required",
        ));
    }
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(AdminError::field(
            "description",
            format!("must not exceed {MAX_DESCRIPTION} characters"),
            "validation.max",
        ));
    }
    let valid_sources = crate::call::parse_valid_sources(body.valid_sources)?;
    let rate_limit = body.rate_limit.map(RateLimitBody::limit).transpose()?;
    if rate_limit.is_some() {
        check_rate_limit_change(call, None, Some(rate_limit))?;
    }
    let quota = body.quota.map(QuotaBody::quota).transpose()?;
    let valid_until_ms = valid_until(
        call,
        body.expiration_days,
        body.disable_expiration.unwrap_or(false),
    )?;

    let constraints = body.session_constraints;
    let (functions, customers, read_only) = match constraints {
        None => (None, Vec::new(), false),
        Some(c) => {
            let functions = c.function.map(OneOrMany::into_vec);
            for f in functions.iter().flatten() {
                if !target.functions.contains(f) {
                    return Err(AdminError::field(
                        "sessionConstraints.function",
                        format!("user {} does not have function {f}", target.name),
                        "validation.function.not.held",
                    ));
                }
            }
            let mut customers: Vec<String> = c
                .customer_id
                .into_iter()
                .chain(c.customer)
                .flat_map(OneOrMany::into_vec)
                .map(IdValue::into_string)
                .collect();
            customers.sort();
            customers.dedup();
            // A customer user's key can only narrow to that customer.
            if target.external {
                if let Some(other) = customers
                    .iter()
                    .find(|c| Some(c.as_str()) != target.customer.as_deref())
                {
                    return Err(AdminError::field(
                        "sessionConstraints.customerID",
                        format!("user {} cannot act for customer {other}", target.name),
                        "validation.customer.not.allowed",
                    ));
                }
            }
            (functions, customers, c.read_only.unwrap_or(false))
        }
    };

    let secret = generate_secret();
    let new_key = NewApiKey {
        user_id: target.id,
        secret_hash: api.auth.api_keys.hasher().hash(&secret),
        description,
        created_by_id: call.caller.user_id,
        created_by_name: call.caller.user_name.clone(),
        valid_until_ms,
        valid_sources,
        functions,
        customers,
        read_only,
        rate_limit,
        quota,
    };
    let audit = call.audit(201, &target.name, "");
    let key = api
        .db
        .call(move |store| async move { store.create_api_key(new_key, audit).await })
        .await?;
    // The prefix may have been probed (and cached as unknown) before it existed.
    api.auth.api_keys.invalidate_user(target.id);
    Ok(Reply::created(json!({
        "apiKeyString": format!("{}/{}", key.prefix(), secret),
        "keyDescriptor": describe(api, &key).await,
    })))
}

/// A body that may be left out (empty or blank): every field at its default then.
fn parse_optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, AdminError> {
    match body.iter().all(u8::is_ascii_whitespace) {
        true => Ok(T::default()),
        false => parse_body(body),
    }
}

pub(crate) fn target_prefix(
    target: &User,
    user_hex: &str,
    key_id: &str,
) -> Result<Prefix, AdminError> {
    Prefix::parse(user_hex, key_id)
        .filter(|p| p.user_id == target.id)
        .ok_or_else(|| {
            AdminError::NotFound(format!("no key {user_hex}/{key_id} for {}", target.name))
        })
}

pub async fn renew(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    user_hex: &str,
    key_id: &str,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let prefix = target_prefix(target, user_hex, key_id)?;
    let body: RenewBody = parse_optional_body(call.body)?;
    let valid_until_ms = valid_until(
        call,
        body.expiration_days,
        body.disable_expiration.unwrap_or(false),
    )?;
    let rate_limit = match body.rate_limit {
        None => None,
        Some(None) => Some(None),
        Some(Some(body)) => Some(Some(body.limit()?)),
    };
    let quota = quota_change(body.quota)?;
    if (rate_limit.is_some() || quota.is_some()) && !call.caller.has_function(POWER_USER) {
        let current = api
            .db
            .call(move |store| async move { store.api_key(prefix.user_id, prefix.key_id).await })
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
        check_rate_limit_change(call, current.rate_limit, rate_limit)?;
        check_quota_change(call, current.quota, quota)?;
    }
    let audit = call.audit(200, &target.name, &prefix.to_string());
    let renewed = api
        .db
        .call(move |store| async move {
            store
                .renew_api_key(
                    prefix.user_id,
                    prefix.key_id,
                    valid_until_ms,
                    rate_limit,
                    quota,
                    audit,
                )
                .await
        })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
    api.auth.api_keys.invalidate_user(target.id);
    Ok(Reply::ok(
        json!({ "renewedKey": describe(api, &renewed).await }),
    ))
}

/// Longest grace period of a roll: one day.
const MAX_GRACE_SECONDS: i64 = 86_400;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RollBody {
    grace_period_seconds: Option<i64>,
    /// Absent: the new key gets the old key's quota; `null`: none; or this one.
    #[serde(default, deserialize_with = "present")]
    quota: Option<Option<QuotaBody>>,
}

/// `…/roll`: a new key with the old key's settings, shown once; the old key keeps working for
/// `gracePeriodSeconds` (0 by default) and then expires. An expired key is 404; the new key's
/// lifetime is capped as a create's is (see [`ApiKeyRoll`]). The old key's end is a
/// `validUntil`, so every replica the change has reached ends it at the same instant whatever
/// its caches held; other replicas learn of it through the change feed (with grace 0 they may
/// accept the old key for the feed's latency: the book's API keys chapter, "Rotation", `tests/fleet.rs`).
pub async fn roll(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    user_hex: &str,
    key_id: &str,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let prefix = target_prefix(target, user_hex, key_id)?;
    let body: RollBody = parse_optional_body(call.body)?;
    let grace = body.grace_period_seconds.unwrap_or(0);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(AdminError::field(
            "gracePeriodSeconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
            "validation.range",
        ));
    }
    let quota = quota_change(body.quota)?;
    if quota.is_some() && !call.caller.has_function(POWER_USER) {
        let current = api
            .db
            .call(move |store| async move { store.api_key(prefix.user_id, prefix.key_id).await })
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
        check_quota_change(call, current.quota, quota)?;
    }
    let secret = generate_secret();
    let roll = ApiKeyRoll {
        secret_hash: api.auth.api_keys.hasher().hash(&secret),
        created_by_id: call.caller.user_id,
        created_by_name: call.caller.user_name.clone(),
        now_ms: now_ms(),
        grace_ms: grace * 1000,
        max_lifetime_ms: max_lifetime_ms(call),
        keep_never_expires: call.caller.has_function(POWER_USER),
        quota,
    };
    let audit = call.audit(201, &target.name, &prefix.to_string());
    let (old, new) = api
        .db
        .call(move |store| async move {
            store
                .roll_api_key(prefix.user_id, prefix.key_id, roll, audit)
                .await
        })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
    api.auth.api_keys.invalidate_user(target.id);
    Ok(Reply::created(json!({
        "apiKeyString": format!("{}/{}", new.prefix(), secret),
        "keyDescriptor": describe(api, &new).await,
        "rolledKey": describe(api, &old).await,
    })))
}

pub async fn revoke(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    user_hex: &str,
    key_id: &str,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let prefix = target_prefix(target, user_hex, key_id)?;
    let audit = call.audit(200, &target.name, &prefix.to_string());
    let revoked = api
        .db
        .call(move |store| async move {
            store
                .revoke_api_key(prefix.user_id, prefix.key_id, audit)
                .await
        })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
    // Effective on this instance before the call returns.
    api.auth.api_keys.invalidate_user(target.id);
    Ok(Reply::ok(
        json!({ "revokedKey": descriptor(&revoked, None) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_are_400_or_412_with_the_field() {
        let broken = parse_body::<CreateBody>(b"{not json").unwrap_err();
        assert_eq!(broken.status(), 400);
        let unknown = parse_body::<CreateBody>(br#"{"description":"x","colour":1}"#).unwrap_err();
        assert!(
            matches!(&unknown, AdminError::Field { field, .. } if field == "colour"),
            "{unknown:?}"
        );
        let nested = parse_body::<CreateBody>(br#"{"sessionConstraints":{"readOnly":true,"x":1}}"#)
            .unwrap_err();
        assert!(
            matches!(&nested, AdminError::Field { field, .. } if field == "sessionConstraints.x"),
            "{nested:?}"
        );
        let wrong_type = parse_body::<CreateBody>(br#"{"expirationDays":"ten"}"#).unwrap_err();
        assert!(
            matches!(&wrong_type, AdminError::Field { field, .. } if field == "expirationDays")
        );
    }

    #[test]
    fn rate_limit_bodies() {
        let create: CreateBody =
            parse_body(br#"{"rateLimit":{"requestsPerSecond":5,"burst":10}}"#).unwrap();
        let limit = create.rate_limit.unwrap().limit().unwrap();
        assert_eq!((limit.requests_per_second(), limit.burst()), (5.0, 10));
        for (body, field) in [
            (
                r#"{"rateLimit":{"requestsPerSecond":0,"burst":10}}"#,
                "rateLimit.requestsPerSecond",
            ),
            (
                r#"{"rateLimit":{"requestsPerSecond":1,"burst":0}}"#,
                "rateLimit.burst",
            ),
        ] {
            let parsed: CreateBody = parse_body(body.as_bytes()).unwrap();
            let error = parsed.rate_limit.unwrap().limit().unwrap_err();
            assert_eq!(error.status(), 412);
            assert!(
                matches!(&error, AdminError::Field { field: f, .. } if f == field),
                "{error:?}"
            );
        }
        for (body, field) in [
            (r#"{"rateLimit":{"burst":1}}"#, "rateLimit"),
            (
                r#"{"rateLimit":{"requestsPerSecond":1,"burst":-1}}"#,
                "rateLimit.burst",
            ),
            (
                r#"{"rateLimit":{"requestsPerSecond":1,"burst":1,"window":1}}"#,
                "rateLimit.window",
            ),
        ] {
            let error = parse_body::<CreateBody>(body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), 412, "{body}");
            assert!(
                matches!(&error, AdminError::Field { field: f, .. } if f == field),
                "{body}: {error:?}"
            );
        }
        let absent: RenewBody = parse_body(br#"{"expirationDays":3}"#).unwrap();
        assert!(absent.rate_limit.is_none());
        let cleared: RenewBody = parse_body(br#"{"rateLimit":null}"#).unwrap();
        assert!(matches!(cleared.rate_limit, Some(None)));
        let set: RenewBody =
            parse_body(br#"{"rateLimit":{"requestsPerSecond":1,"burst":2}}"#).unwrap();
        assert!(matches!(set.rate_limit, Some(Some(_))));
    }

    #[test]
    fn quota_bodies() {
        let create: CreateBody = parse_body(br#"{"quota":{"requests":5,"period":"day"}}"#).unwrap();
        let quota = create.quota.unwrap().quota().unwrap();
        assert_eq!((quota.requests(), quota.period()), (5, QuotaPeriod::Day));
        for (body, field) in [
            (
                r#"{"quota":{"requests":0,"period":"day"}}"#,
                "quota.requests",
            ),
            (
                r#"{"quota":{"requests":1000000000001,"period":"month"}}"#,
                "quota.requests",
            ),
            (
                r#"{"quota":{"requests":5,"period":"week"}}"#,
                "quota.period",
            ),
            (r#"{"quota":{"requests":5,"period":"Day"}}"#, "quota.period"),
        ] {
            let parsed: CreateBody = parse_body(body.as_bytes()).unwrap();
            let error = parsed.quota.unwrap().quota().unwrap_err();
            assert_eq!(error.status(), 412, "{body}");
            assert!(
                matches!(&error, AdminError::Field { field: f, .. } if f == field),
                "{body}: {error:?}"
            );
        }
        for (body, field) in [
            (
                r#"{"quota":{"requests":-1,"period":"day"}}"#,
                "quota.requests",
            ),
            (
                r#"{"quota":{"requests":1.5,"period":"day"}}"#,
                "quota.requests",
            ),
            (r#"{"quota":{"period":"day"}}"#, "quota"),
            (
                r#"{"quota":{"requests":1,"period":"day","x":1}}"#,
                "quota.x",
            ),
            (r#"{"quota":5}"#, "quota"),
        ] {
            let error = parse_body::<CreateBody>(body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), 412, "{body}");
            assert!(
                matches!(&error, AdminError::Field { field: f, .. } if f == field),
                "{body}: {error:?}"
            );
        }
        let renew: RenewBody = parse_body(br#"{"quota":null}"#).unwrap();
        assert!(matches!(quota_change(renew.quota), Ok(Some(None))));
        let renew: RenewBody = parse_body(br#"{"expirationDays":3}"#).unwrap();
        assert!(matches!(quota_change(renew.quota), Ok(None)));
        let roll: RollBody = parse_body(br#"{"quota":{"requests":9,"period":"month"}}"#).unwrap();
        assert!(matches!(quota_change(roll.quota), Ok(Some(Some(q))) if q.requests() == 9));
    }

    #[test]
    fn valid_sources_string_or_list() {
        let one: CreateBody = parse_body(br#"{"validSources":"94.127.56.0/24"}"#).unwrap();
        assert_eq!(one.valid_sources.unwrap().into_vec().len(), 1);
        let many: CreateBody =
            parse_body(br#"{"validSources":["94.127.56.0/24","2001:db8::/32"]}"#).unwrap();
        assert_eq!(many.valid_sources.unwrap().into_vec().len(), 2);
    }
}
