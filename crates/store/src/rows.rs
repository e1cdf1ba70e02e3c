//! What both SQL backends share: column lists, list encoding and row decoding. The tables
//! have the same columns in both (lists are JSON text, flags decode as `bool`), so decoding a
//! row is written once and instantiated for each backend's row type by [`row_decoders!`].

pub(super) const API_KEY_COLUMNS: &str = "user_id, key_id, secret_hash, description, \
    created_at_ms, created_by_id, created_by_name, valid_until_ms, valid_sources, functions, \
    customers, read_only, last_used_at_ms, last_used_ip, rate_limit_per_ks, rate_limit_burst, \
    quota_requests, quota_period";

pub(super) const USER_COLUMNS: &str = "id, name, domain, customer, functions, external, \
    password_hash, totp_secret, locked, created_at_ms, source";

pub(super) const SIGNATURE_KEY_COLUMNS: &str = "user_id, key_id, public_key, description, \
    created_at_ms, valid_until_ms, valid_sources, last_used_at_ms, last_used_ip";

pub(super) const TOKEN_SELECT: &str = "SELECT t.name, t.token_hash, t.owner_id, \
    u.name AS owner_name, t.domain, t.tenant, t.level, t.created_at_ms, t.expires_at_ms, \
    t.custom_source FROM tokens t JOIN users u ON u.id = t.owner_id";

pub(super) fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// Defines `user_from_row`, `api_key_from_row`, `signature_key_from_row` and `token_from_row`
/// for one backend's row type.
macro_rules! row_decoders {
    ($row:ty) => {
        fn json_list(row: &$row, column: &str) -> Result<Vec<String>, StoreError> {
            let text: String = row.try_get(column)?;
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
        }

        fn api_key_from_row(row: &$row) -> Result<ApiKey, StoreError> {
            let functions: Option<String> = row.try_get("functions")?;
            let functions = functions
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("api_keys.functions: {e}")))?;
            let per_ks: Option<i64> = row.try_get("rate_limit_per_ks")?;
            let burst: Option<i64> = row.try_get("rate_limit_burst")?;
            let rate_limit = match (per_ks, burst) {
                (Some(per_ks), Some(burst)) => Some(
                    keyward_core::limit::Limit::from_stored(per_ks, burst)
                        .map_err(|e| StoreError::Corrupt(format!("api_keys.rate_limit: {e}")))?,
                ),
                _ => None,
            };
            let quota_requests: Option<i64> = row.try_get("quota_requests")?;
            let quota_period: Option<String> = row.try_get("quota_period")?;
            let quota = match (quota_requests, quota_period) {
                (Some(requests), Some(period)) => Some(
                    keyward_core::quota::Quota::from_stored(requests, &period).ok_or_else(
                        || {
                            StoreError::Corrupt(format!(
                                "api_keys.quota: {requests} per {period:?}"
                            ))
                        },
                    )?,
                ),
                _ => None,
            };
            Ok(ApiKey {
                user_id: row.try_get("user_id")?,
                key_id: row.try_get("key_id")?,
                secret_hash: row.try_get("secret_hash")?,
                description: row.try_get("description")?,
                created_at_ms: row.try_get("created_at_ms")?,
                created_by_id: row.try_get("created_by_id")?,
                created_by_name: row.try_get("created_by_name")?,
                valid_until_ms: row.try_get("valid_until_ms")?,
                valid_sources: json_list(row, "valid_sources")?,
                functions,
                customers: json_list(row, "customers")?,
                read_only: row.try_get("read_only")?,
                last_used_at_ms: row.try_get("last_used_at_ms")?,
                last_used_ip: row.try_get("last_used_ip")?,
                rate_limit,
                quota,
            })
        }

        fn signature_key_from_row(row: &$row) -> Result<SignatureKey, StoreError> {
            Ok(SignatureKey {
                user_id: row.try_get("user_id")?,
                key_id: row.try_get("key_id")?,
                public_key: row.try_get("public_key")?,
                description: row.try_get("description")?,
                created_at_ms: row.try_get("created_at_ms")?,
                valid_until_ms: row.try_get("valid_until_ms")?,
                valid_sources: json_list(row, "valid_sources")?,
                last_used_at_ms: row.try_get("last_used_at_ms")?,
                last_used_ip: row.try_get("last_used_ip")?,
            })
        }

        fn token_from_row(row: &$row) -> Result<Token, StoreError> {
            Ok(Token {
                name: row.try_get("name")?,
                token_hash: row.try_get("token_hash")?,
                owner_id: row.try_get("owner_id")?,
                owner_name: row.try_get("owner_name")?,
                domain: row.try_get("domain")?,
                tenant: row.try_get("tenant")?,
                level: row.try_get("level")?,
                created_at_ms: row.try_get("created_at_ms")?,
                expires_at_ms: row.try_get("expires_at_ms")?,
                custom_source: row.try_get("custom_source")?,
            })
        }

        fn user_from_row(row: &$row) -> Result<User, StoreError> {
            let functions = json_list(row, "functions")?;
            Ok(User {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                domain: row.try_get("domain")?,
                customer: row.try_get("customer")?,
                functions,
                external: row.try_get("external")?,
                password_hash: row.try_get("password_hash")?,
                totp_secret: row.try_get("totp_secret")?,
                locked: row.try_get("locked")?,
                created_at_ms: row.try_get("created_at_ms")?,
                source: {
                    let source: String = row.try_get("source")?;
                    UserSource::parse(&source)
                        .ok_or_else(|| StoreError::Corrupt(format!("source: {source:?}")))?
                },
            })
        }
    };
}
pub(super) use row_decoders;
