//! Unix time with millisecond precision, RFC 3339 formatting and `YYYY-MM-DD` dates, without a
//! calendar dependency (the civil-date arithmetic is Howard Hinnant's, exact for all i64 days in
//! range).

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixTime(i64);

impl UnixTime {
    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    /// From whole seconds since the epoch (saturating).
    pub const fn from_secs(s: i64) -> Self {
        Self(s.saturating_mul(1000))
    }
    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }
    /// Whole seconds since the epoch, rounded down (JWT NumericDate).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// This time plus `secs` seconds, saturating.
    pub const fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)))
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let d = i64::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-01T06:36:52.123Z` (the audit record format).
pub fn format_rfc3339_millis(t: UnixTime) -> String {
    let ms = t.as_millis();
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let h = rem / 3_600_000;
    let mi = (rem / 60_000) % 60;
    let s = (rem / 1000) % 60;
    let milli = rem % 1000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Parses `YYYY-MM-DD` into the Unix time of that day's start (UTC). `None` when malformed or
/// not a real date.
pub fn parse_date(s: &str) -> Option<UnixTime> {
    let mut parts = s.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || s.len() != 10 || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // Reject 2027-02-30 and friends: the round trip must give back the same date.
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    Some(UnixTime::from_secs(days.checked_mul(86_400)?))
}

/// Parses exactly the format [`format_rfc3339_millis`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub fn parse_rfc3339_millis(s: &str) -> Option<UnixTime> {
    if s.len() != 24 || !s.ends_with('Z') {
        return None;
    }
    let day = parse_date(s.get(..10)?)?;
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|p| p.parse::<i64>().ok());
    if s.get(10..11)? != "T"
        || s.get(13..14)? != ":"
        || s.get(16..17)? != ":"
        || s.get(19..20)? != "."
    {
        return None;
    }
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some(UnixTime::from_millis(
        day.as_millis() + ((h * 60 + mi) * 60 + sec) * 1000 + ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instant() {
        assert_eq!(
            format_rfc3339_millis(UnixTime::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(UnixTime::from_millis(1_796_107_012_345)),
            "2026-12-01T06:36:52.345Z"
        );
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UnixTime::from_millis(1_796_107_012_345);
        assert_eq!(parse_rfc3339_millis(&format_rfc3339_millis(t)), Some(t));
        assert_eq!(parse_rfc3339_millis("2026-12-01T24:00:00.000Z"), None);
        assert_eq!(parse_rfc3339_millis("2026-12-01 06:36:52.345Z"), None);
    }

    #[test]
    fn dates_round_trip_and_reject_impossible_days() {
        assert_eq!(parse_date("1970-01-02"), Some(UnixTime::from_secs(86_400)));
        assert_eq!(parse_date("2027-02-30"), None);
        assert_eq!(parse_date("2027-2-3"), None);
        assert_eq!(
            parse_date("2024-02-29").map(|t| t.as_secs() % 86_400),
            Some(0)
        );
    }
}
