//! `…/apikey/{userIdHex}/{keyId}/usage`: an API key's requests per hour or day (SPEC §12),
//! read from the hour rows every replica adds to in batches.

use crate::api_keys::target_prefix;
use crate::call::{authorize_manage, AdminApi, Call};
use crate::envelope::{AdminError, Reply};
use keyward_store::{day_start, hour_start, now_ms, UsageCount, User, DAY_MS};
use serde_json::{json, Value};

/// How the counts are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    fn start(self, at_ms: i64) -> i64 {
        match self {
            Granularity::Hour => hour_start(at_ms),
            Granularity::Day => day_start(at_ms),
        }
    }

    /// The span `from` defaults to, before `to`: a day of hours, or 30 days.
    fn default_span(self) -> i64 {
        match self {
            Granularity::Hour => DAY_MS,
            Granularity::Day => 30 * DAY_MS,
        }
    }
}

/// The query of a usage call: `from` rounded down to the start of its hour or day, `to`
/// exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: Granularity,
}

/// Parses `from=MS&to=MS&granularity=hour|day` (each optional, each at most once, nothing
/// else): a bad value, a repeated or unknown parameter, or `from` not before `to` is 412
/// naming the parameter.
pub fn parse_query(query: Option<&str>, now_ms: i64) -> Result<UsageQuery, AdminError> {
    let (mut from, mut to, mut granularity) = (None, None, None);
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "from" => &mut from,
            "to" => &mut to,
            "granularity" => &mut granularity,
            _ => {
                return Err(AdminError::field(
                    name.chars().take(64).collect::<String>(),
                    "unknown query parameter (from, to and granularity are)",
                    "validation.unknown.field",
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(AdminError::field(
                name,
                "given more than once",
                "validation.invalid",
            ));
        }
    }
    let granularity = match granularity {
        None | Some("hour") => Granularity::Hour,
        Some("day") => Granularity::Day,
        Some(_) => {
            return Err(AdminError::field(
                "granularity",
                "must be hour or day",
                "validation.invalid",
            ))
        }
    };
    let millis = |name: &'static str, value: &str| {
        value
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0 && value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                AdminError::field(
                    name,
                    "must be a time in milliseconds since the epoch (a non-negative integer)",
                    "validation.invalid",
                )
            })
    };
    let to_ms = match to {
        Some(value) => millis("to", value)?,
        None => now_ms,
    };
    let from_ms = match from {
        Some(value) => millis("from", value)?,
        None => to_ms.saturating_sub(granularity.default_span()).max(0),
    };
    if from_ms >= to_ms {
        return Err(AdminError::field(
            "from",
            "must be before to",
            "validation.range",
        ));
    }
    Ok(UsageQuery {
        from_ms: granularity.start(from_ms),
        to_ms,
        granularity,
    })
}

/// Sums hour rows (oldest first) into buckets of `granularity`, oldest first.
pub fn buckets(rows: &[UsageCount], granularity: Granularity) -> Vec<Value> {
    let mut summed: Vec<UsageCount> = Vec::new();
    for row in rows {
        let start = granularity.start(row.hour_ms);
        match summed.last_mut() {
            Some(last) if last.hour_ms == start => {
                last.accepted += row.accepted;
                last.refused += row.refused;
                last.rate_limited += row.rate_limited;
            }
            _ => summed.push(UsageCount {
                hour_ms: start,
                ..*row
            }),
        }
    }
    summed
        .iter()
        .map(|c| {
            json!({
                "start": c.hour_ms,
                "accepted": c.accepted,
                "refused": c.refused,
                "rateLimited": c.rate_limited,
            })
        })
        .collect()
}

/// `GET …/usage`: authorized as listing the user's keys is (the user, or a POWER-USER); a key
/// that is not the user's, or is revoked, is 404.
pub async fn usage(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    user_hex: &str,
    key_id: &str,
    query: Option<&str>,
) -> Result<Reply, AdminError> {
    authorize_manage(call, target)?;
    let prefix = target_prefix(target, user_hex, key_id)?;
    let query = parse_query(query, now_ms())?;
    let rows = api
        .db
        .call(move |store| async move {
            match store.api_key(prefix.user_id, prefix.key_id).await? {
                Some(_) => Ok(Some(
                    store
                        .api_key_usage(prefix.user_id, prefix.key_id, query.from_ms, query.to_ms)
                        .await?,
                )),
                None => Ok(None),
            }
        })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no key {prefix}")))?;
    Ok(Reply::ok(Value::Array(buckets(&rows, query.granularity))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_store::HOUR_MS;

    const NOW: i64 = 1_800_000_000_000;

    fn field(error: AdminError) -> String {
        assert_eq!(error.status(), 412, "{error:?}");
        match error {
            AdminError::Field { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn query_defaults_and_rounding() {
        let q = parse_query(None, NOW).unwrap();
        assert_eq!(q.granularity, Granularity::Hour);
        assert_eq!(q.to_ms, NOW);
        assert_eq!(q.from_ms, hour_start(NOW - DAY_MS));
        let q = parse_query(Some("granularity=day"), NOW).unwrap();
        assert_eq!(q.from_ms, day_start(NOW - 30 * DAY_MS));
        let q = parse_query(Some("from=5&to=10&granularity=hour"), NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms), (0, 10));
        let q = parse_query(Some("from=86400001&to=172800000&granularity=day&"), NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms), (DAY_MS, 2 * DAY_MS));
        let q = parse_query(Some("to=1000"), NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms), (0, 1000));
    }

    #[test]
    fn bad_queries_are_412_naming_the_parameter() {
        for (query, name) in [
            ("from=abc", "from"),
            ("from=-5", "from"),
            ("from=+5", "from"),
            ("from=1.5", "from"),
            ("from=", "from"),
            ("to=99999999999999999999999", "to"),
            ("to=0", "from"),
            ("from=10&to=10", "from"),
            ("from=20&to=10", "from"),
            ("granularity=week", "granularity"),
            ("granularity=HOUR", "granularity"),
            ("granularity", "granularity"),
            ("from=1&from=2", "from"),
            ("limit=5", "limit"),
        ] {
            assert_eq!(
                field(parse_query(Some(query), NOW).unwrap_err()),
                name,
                "{query}"
            );
        }
    }

    #[test]
    fn hours_sum_into_days() {
        let row = |hour_ms, accepted, refused, rate_limited| UsageCount {
            user_id: 1,
            key_id: 1,
            hour_ms,
            accepted,
            refused,
            rate_limited,
        };
        let rows = [
            row(DAY_MS - HOUR_MS, 1, 0, 0),
            row(DAY_MS, 2, 1, 0),
            row(DAY_MS + 23 * HOUR_MS, 3, 0, 4),
            row(3 * DAY_MS, 0, 0, 1),
        ];
        assert_eq!(
            buckets(&rows, Granularity::Day),
            vec![
                json!({"start": 0, "accepted": 1, "refused": 0, "rateLimited": 0}),
                json!({"start": DAY_MS, "accepted": 5, "refused": 1, "rateLimited": 4}),
                json!({"start": 3 * DAY_MS, "accepted": 0, "refused": 0, "rateLimited": 1}),
            ]
        );
        assert_eq!(buckets(&rows, Granularity::Hour).len(), 4);
        assert_eq!(
            buckets(&rows, Granularity::Hour)[1],
            json!({"start": DAY_MS, "accepted": 2, "refused": 1, "rateLimited": 0})
        );
    }
}
