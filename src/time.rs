//! Timestamps: microseconds since the Unix epoch, always UTC, rendered as RFC 3339 with six
//! fractional digits and a `Z`. Stored as integers so comparisons and indexes are cheap.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 time with any offset; precision beyond microseconds is dropped.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        Some(Timestamp(parsed.with_timezone(&Utc).timestamp_micros()))
    }

    pub fn plus(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// How long from `self` until `later`; zero when `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        let micros = later.0.saturating_sub(self.0).max(0);
        Duration::from_micros(micros.unsigned_abs())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(time) => write!(f, "{}", time.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_microseconds_and_z() {
        let stamp = Timestamp::parse_rfc3339("2026-11-28T21:53:10.1234567+01:00").unwrap();
        assert_eq!(stamp.to_string(), "2026-11-28T20:53:10.123456Z");
    }

    #[test]
    fn until_is_zero_for_the_past() {
        let now = Timestamp::from_micros(1_000);
        assert_eq!(now.until(Timestamp::from_micros(10)), Duration::ZERO);
        assert_eq!(
            now.until(Timestamp::from_micros(3_000)),
            Duration::from_micros(2_000)
        );
    }

    #[test]
    fn rejects_text_that_is_not_rfc3339() {
        assert!(Timestamp::parse_rfc3339("tomorrow").is_none());
        assert!(Timestamp::parse_rfc3339("2026-11-28 20:53:10").is_none());
    }
}
