//! Durations as written in config and on the command line: `90s`, `5m`, `1h`, `2h30m`, `500ms`.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration")]
    Empty,
    /// A number without a unit, or an unknown unit.
    #[error("bad duration {0:?}: use a number and a unit (ms, s, m, h, d), e.g. 5m or 1h30m")]
    Malformed(String),
    /// Larger than any sensible setting.
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses a duration into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let bad = || DurationError::Malformed(s.to_owned());
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError::TooLarge(s.to_owned()))?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let mult: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let part = n
            .checked_mul(mult)
            .ok_or_else(|| DurationError::TooLarge(s.to_owned()))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| DurationError::TooLarge(s.to_owned()))?;
        rest = tail;
    }
    // Ten years is far beyond any TTL, lease or deadline; anything more is a typo.
    if total > 10 * 365 * 86_400_000 {
        return Err(DurationError::TooLarge(s.to_owned()));
    }
    Ok(total)
}

/// A duration read from config (`"5m"`), kept in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(u64);

impl ConfigDuration {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }
    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1000))
    }
    /// Milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }
    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }
    /// As a std duration.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_multiple_of(1000) {
            write!(f, "{}ms", self.0)
        } else if self.0.is_multiple_of(3_600_000) && self.0 > 0 {
            write!(f, "{}h", self.0 / 3_600_000)
        } else if self.0.is_multiple_of(60_000) && self.0 > 0 {
            write!(f, "{}m", self.0 / 60_000)
        } else {
            write!(f, "{}s", self.0 / 1000)
        }
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert!(matches!(
            parse_duration("5"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("5 m"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("m"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLarge(_))
        ));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
    }
}
