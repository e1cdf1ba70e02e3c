//! Quotas of API keys (SPEC §12): a number of requests per UTC calendar day or month, counted
//! fleet-wide; the calendar arithmetic of a period's bounds; and the refusal's headers.

use std::time::Duration;

/// The most requests a quota may admit per period.
pub const MAX_QUOTA_REQUESTS: u64 = 1_000_000_000_000;

const DAY_MS: i64 = 86_400_000;

/// A UTC calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaPeriod {
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<QuotaPeriod> {
        match text {
            "day" => Some(QuotaPeriod::Day),
            "month" => Some(QuotaPeriod::Month),
            _ => None,
        }
    }

    /// The start (inclusive) and end (exclusive) of the period `at_ms` falls in, in ms since
    /// the epoch: the UTC day, or the UTC calendar month (28 to 31 days).
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        let day = at_ms.div_euclid(DAY_MS);
        match self {
            QuotaPeriod::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            QuotaPeriod::Month => {
                let (year, month, _) = civil_from_days(day);
                let start = days_from_civil(year, month, 1);
                let (next_year, next_month) = match month {
                    12 => (year + 1, 1),
                    _ => (year, month + 1),
                };
                let end = days_from_civil(next_year, next_month, 1);
                (start * DAY_MS, end * DAY_MS)
            }
        }
    }
}

/// A validated quota: 1 to [`MAX_QUOTA_REQUESTS`] requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    requests: u64,
    period: QuotaPeriod,
}

impl Quota {
    pub fn new(requests: u64, period: QuotaPeriod) -> Option<Quota> {
        (1..=MAX_QUOTA_REQUESTS)
            .contains(&requests)
            .then_some(Quota { requests, period })
    }

    /// From its stored form (requests, period name).
    pub fn from_stored(requests: i64, period: &str) -> Option<Quota> {
        Quota::new(u64::try_from(requests).ok()?, QuotaPeriod::parse(period)?)
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn period(&self) -> QuotaPeriod {
        self.period
    }

    /// Whether `self` admits no more than `other`: as many requests or fewer over a period
    /// no longer. A day quota and a month quota are compared by what they admit over a month
    /// of 31 days (a day quota of N admits up to 31 N a month).
    pub fn no_looser_than(&self, other: &Quota) -> bool {
        let per_month = |q: &Quota| match q.period {
            QuotaPeriod::Day => u128::from(q.requests) * 31,
            QuotaPeriod::Month => u128::from(q.requests),
        };
        match (self.period, other.period) {
            (a, b) if a == b => self.requests <= other.requests,
            // A day quota under a month quota also caps each day: never looser per day.
            (QuotaPeriod::Day, QuotaPeriod::Month) => per_month(self) <= per_month(other),
            // A month quota under a day quota would let a whole month's worth pass in a day.
            _ => self.requests <= other.requests,
        }
    }
}

/// A request refused because its key's quota is used up for the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub quota: Quota,
    /// The current period's length (the draft's `w`).
    pub window: Duration,
    /// Until the period ends.
    pub retry_after: Duration,
}

impl Exhausted {
    /// The refusal of `quota` at `now_ms`.
    pub fn at(quota: Quota, now_ms: i64) -> Exhausted {
        let (start, end) = quota.period.bounds(now_ms);
        Exhausted {
            quota,
            window: Duration::from_millis((end - start).max(0) as u64),
            retry_after: Duration::from_millis((end - now_ms).max(0) as u64),
        }
    }

    /// Whole seconds until the period ends, at least 1 (`Retry-After` and the draft's `t`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// `RateLimit-Policy: "quota";q=1000;w=86400`.
    pub fn policy_header(&self) -> String {
        let mut list = sfv::ListSerializer::new();
        list.bare_item(sfv::string_ref("quota"))
            .parameter(sfv::key_ref("q"), sf_integer(self.quota.requests))
            .parameter(sfv::key_ref("w"), sf_integer(self.window.as_secs()));
        list.finish().unwrap_or_default()
    }

    /// `RateLimit: "quota";r=0;t=3600`.
    pub fn limit_header(&self) -> String {
        let mut list = sfv::ListSerializer::new();
        list.bare_item(sfv::string_ref("quota"))
            .parameter(sfv::key_ref("r"), sf_integer(0))
            .parameter(sfv::key_ref("t"), sf_integer(self.retry_after_secs()));
        list.finish().unwrap_or_default()
    }
}

/// Every value written here is at most 10^12, within sfv's integers.
fn sf_integer(value: u64) -> sfv::Integer {
    sfv::Integer::try_from(value.min(999_999_999_999_999)).unwrap_or(sfv::integer(0))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (year, month 1–12, day 1–31) of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ms of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64) -> i64 {
        days_from_civil(year, month, day) * DAY_MS + hour * 3_600_000
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{days}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn day_periods_are_utc_days() {
        let noon = at(2026, 12, 3, 12);
        assert_eq!(
            QuotaPeriod::Day.bounds(noon),
            (at(2026, 12, 3, 0), at(2026, 12, 4, 0))
        );
        let midnight = at(2026, 12, 31, 0);
        assert_eq!(
            QuotaPeriod::Day.bounds(midnight),
            (midnight, at(2027, 1, 1, 0))
        );
        assert_eq!(
            QuotaPeriod::Day.bounds(midnight - 1),
            (at(2026, 12, 30, 0), midnight)
        );
        assert_eq!(QuotaPeriod::Day.bounds(-1), (-DAY_MS, 0));
    }

    #[test]
    fn month_periods_have_their_calendar_lengths() {
        let days = |year, month| {
            let (start, end) = QuotaPeriod::Month.bounds(at(year, month, 15, 6));
            assert_eq!(start, at(year, month, 1, 0));
            (end - start) / DAY_MS
        };
        for (month, length) in [
            (1, 31),
            (3, 31),
            (4, 30),
            (5, 31),
            (6, 30),
            (7, 31),
            (8, 31),
            (9, 30),
            (10, 31),
            (11, 30),
            (12, 31),
        ] {
            assert_eq!(days(2026, month), length, "month {month}");
        }
        // February: leap years are divisible by 4, except centuries not divisible by 400.
        assert_eq!(days(2024, 2), 29);
        assert_eq!(days(2026, 2), 28);
        assert_eq!(days(2000, 2), 29);
        assert_eq!(days(2100, 2), 28);
        assert_eq!(days(1900, 2), 28);
        // December ends at the next year's January.
        assert_eq!(
            QuotaPeriod::Month.bounds(at(2026, 12, 31, 23) + 3_599_999),
            (at(2026, 12, 1, 0), at(2027, 1, 1, 0))
        );
        assert_eq!(
            QuotaPeriod::Month.bounds(at(2027, 1, 1, 0)),
            (at(2027, 1, 1, 0), at(2027, 2, 1, 0))
        );
        // The last millisecond of February in a leap year, and the first of March.
        assert_eq!(
            QuotaPeriod::Month.bounds(at(2024, 3, 1, 0) - 1).1,
            at(2024, 3, 1, 0)
        );
        assert_eq!(
            QuotaPeriod::Month.bounds(at(2024, 3, 1, 0)).0,
            at(2024, 3, 1, 0)
        );
        // Before the epoch too.
        assert_eq!(QuotaPeriod::Month.bounds(-1), (at(1969, 12, 1, 0), 0));
    }

    #[test]
    fn every_instant_lies_in_its_period() {
        let mut t = at(1999, 12, 25, 0);
        while t < at(2001, 3, 10, 0) {
            for period in [QuotaPeriod::Day, QuotaPeriod::Month] {
                let (start, end) = period.bounds(t);
                assert!(start <= t && t < end, "{period:?} {t}");
                assert_eq!(period.bounds(end).0, end, "periods tile");
                assert_eq!(period.bounds(start - 1).1, start, "periods tile");
            }
            t += 7 * 3_600_000 + 13;
        }
    }

    #[test]
    fn refusal_headers_name_the_quota_and_the_period() {
        let quota = Quota::new(5, QuotaPeriod::Day).unwrap();
        let exhausted = Exhausted::at(quota, at(2026, 12, 3, 22) + 1);
        assert_eq!(exhausted.policy_header(), r#""quota";q=5;w=86400"#);
        assert_eq!(exhausted.retry_after_secs(), 7200);
        assert_eq!(exhausted.limit_header(), r#""quota";r=0;t=7200"#);
        let month = Quota::new(100, QuotaPeriod::Month).unwrap();
        let february = Exhausted::at(month, at(2024, 2, 29, 12));
        assert_eq!(february.policy_header(), r#""quota";q=100;w=2505600"#);
        assert_eq!(february.retry_after_secs(), 12 * 3600);
    }

    #[test]
    fn quota_bounds_and_order() {
        assert!(Quota::new(0, QuotaPeriod::Day).is_none());
        assert!(Quota::new(MAX_QUOTA_REQUESTS + 1, QuotaPeriod::Day).is_none());
        assert!(Quota::from_stored(-1, "day").is_none());
        assert!(Quota::from_stored(5, "week").is_none());
        let q = |n, p| Quota::new(n, p).unwrap();
        use QuotaPeriod::{Day, Month};
        assert!(q(5, Day).no_looser_than(&q(5, Day)));
        assert!(!q(6, Day).no_looser_than(&q(5, Day)));
        assert!(q(10, Day).no_looser_than(&q(310, Month)));
        assert!(!q(11, Day).no_looser_than(&q(310, Month)));
        assert!(q(5, Month).no_looser_than(&q(5, Day)));
        assert!(!q(6, Month).no_looser_than(&q(5, Day)));
    }
}
