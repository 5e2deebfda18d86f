//! Timestamps: microseconds since the Unix epoch, always UTC, rendered as RFC 3339 with six
//! fractional digits and a `Z`. Stored as integers so comparisons and indexes are cheap.
//! RFC 3339 has four-digit years, so only years 0000 to 9999 in UTC can be rendered; times
//! from clients are checked against that range here.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// `0000-01-01T00:00:00.000000Z`, the earliest time RFC 3339 can write.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200_000_000);
    /// `9999-12-31T23:59:59.999999Z`, the latest time RFC 3339 can write.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999_999);

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
    /// The result may lie outside [`MIN`](Self::MIN)..=[`MAX`](Self::MAX) (a year-9999 time
    /// with a negative offset is in year 10000 in UTC): check with [`is_rfc3339`](Self::is_rfc3339).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        // chrono also takes a space between date and time; RFC 3339's grammar (and JSON
        // Schema's `date-time`) has only `T` or `t` there.
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return None;
        }
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        Some(Timestamp(parsed.with_timezone(&Utc).timestamp_micros()))
    }

    /// Whether this time has a four-digit UTC year, so that it renders as RFC 3339.
    pub fn is_rfc3339(self) -> bool {
        (Self::MIN..=Self::MAX).contains(&self)
    }

    pub fn plus(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// RFC 3339 with milliseconds (`2026-12-01T17:28:28.123Z`), as log lines write times.
    pub fn to_rfc3339_millis(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(time) => time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => format!("invalid-timestamp({})", self.0),
        }
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
        assert!(Timestamp::parse_rfc3339("2026-11-28 20:53:10Z").is_none());
        assert!(Timestamp::parse_rfc3339("2026-11-28t20:53:10z").is_some());
    }

    #[test]
    fn the_rfc3339_range_is_years_0000_to_9999_in_utc() {
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        for (text, representable) in [
            ("0000-01-01T00:00:00Z", true),
            ("9999-12-31T23:59:59.999999Z", true),
            ("9999-12-31T23:00:00+01:00", true),
            ("0000-01-01T00:30:00+00:30", true),
            // A local year 9999 that is year 10000 in UTC, and a year 0000 that is -0001.
            ("9999-12-31T23:59:59-00:01", false),
            ("0000-01-01T00:00:00+00:01", false),
        ] {
            let stamp = Timestamp::parse_rfc3339(text).unwrap();
            assert_eq!(stamp.is_rfc3339(), representable, "{text} is {stamp}");
        }
        assert!(!Timestamp::MAX.plus(Duration::from_micros(1)).is_rfc3339());
    }
}
