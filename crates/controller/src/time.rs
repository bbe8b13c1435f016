//! Wall-clock helpers: condition timestamps are RFC3339 strings with whole seconds, as upstream writes
//! them, and elapsed time since one is read back from the string.

use std::time::Duration;

use jiff::Timestamp;

/// Now, as condition timestamps spell it (`2026-11-23T08:30:00Z`).
pub(crate) fn now_rfc3339() -> String {
    // Truncated, not rounded: a stamp from the future would read back as a negative age.
    let now = Timestamp::now();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Time since `stamp`; `None` when it does not parse (then callers treat the wait as over). A stamp
/// in the future (another replica's clock ahead of ours) counts as just now.
pub(crate) fn since(stamp: &str) -> Option<Duration> {
    let then: Timestamp = stamp.parse().ok()?;
    let elapsed = Timestamp::now().duration_since(then);
    Some(Duration::try_from(elapsed).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_to_a_small_elapsed_time() {
        let stamp = now_rfc3339();
        assert!(stamp.ends_with('Z') && !stamp.contains('.'), "{stamp}");
        let elapsed = since(&stamp).expect("parses");
        assert!(elapsed < Duration::from_secs(5));
        assert_eq!(since("yesterday"), None);
        assert_eq!(since("2999-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert!(since("2000-01-01T00:00:00Z").expect("parses") > Duration::from_secs(86400 * 365));
    }
}
