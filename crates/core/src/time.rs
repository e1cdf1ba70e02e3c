//! The clock, in the unit the store and the wire use.

pub fn now_ms() -> i64 {
    // Seconds and milliseconds apart: `as_millis` divides a u128, which costs more than the
    // clock read itself (this runs on every authenticated request).
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| {
            i64::try_from(d.as_secs())
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .and_then(|ms| ms.checked_add(i64::from(d.subsec_millis())))
                .unwrap_or(i64::MAX)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    /// The same milliseconds as `as_millis` gives, read around it.
    #[test]
    fn milliseconds_since_the_epoch() {
        let since = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        };
        let before = since(std::time::SystemTime::now());
        let now = super::now_ms();
        let after = since(std::time::SystemTime::now());
        assert!(before <= now && now <= after, "{before} {now} {after}");
    }
}
