//! RFC 8785 JSON Canonicalization Scheme, written here rather than taken from a crate so that the
//! bytes every hash and signature covers are under our eyes: members sorted by UTF-16 code units,
//! no whitespace, strings escaped as ECMAScript's `JSON.stringify` does, numbers as ECMAScript's
//! `Number.prototype.toString` (RFC 8785 §3.2.2.3).

use crate::AuditError;
use serde_json::Value;

/// RFC 8785 canonical JSON of a value.
///
/// Every number is written as the IEEE-754 double it denotes (integers beyond 2^53 lose
/// precision, as RFC 8785 prescribes).
///
/// # Errors
/// [`AuditError::NonFiniteNumber`] for a number with no finite double form.
pub fn canonicalize(v: &Value) -> Result<Vec<u8>, AuditError> {
    canonical_string(v).map(String::into_bytes)
}

/// [`canonicalize`], as the `String` it is by construction.
pub(crate) fn canonical_string(v: &Value) -> Result<String, AuditError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, v)?;
    Ok(out)
}

/// An object's members, each serialised once and sorted as RFC 8785 orders them, so that the
/// object can be written with and without one more string member (a sealed record's leaf and its
/// stored form differ only by `hash`, which depends on the leaf).
pub(crate) struct Members(Vec<(String, String)>);

impl Members {
    pub(crate) fn of(map: &serde_json::Map<String, Value>) -> Result<Self, AuditError> {
        let mut members = Vec::with_capacity(map.len() + 1);
        for (k, v) in map {
            let mut m = String::with_capacity(64);
            write_string(&mut m, k);
            m.push(':');
            write_value(&mut m, v)?;
            members.push((k.clone(), m));
        }
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
        Ok(Self(members))
    }

    /// The object's JCS.
    pub(crate) fn join(&self) -> String {
        let mut out =
            String::with_capacity(self.0.iter().map(|m| m.1.len() + 1).sum::<usize>() + 2);
        out.push('{');
        for (i, (_, m)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(m);
        }
        out.push('}');
        out
    }

    /// The JCS of the object plus the string member `key: value` (`key` not already present).
    pub(crate) fn join_with(&self, key: &str, value: &str) -> String {
        let mut extra = String::with_capacity(key.len() + value.len() + 8);
        write_string(&mut extra, key);
        extra.push(':');
        write_string(&mut extra, value);
        let at = self
            .0
            .partition_point(|(k, _)| k.encode_utf16().cmp(key.encode_utf16()).is_lt());
        let mut out = String::with_capacity(
            self.0.iter().map(|m| m.1.len() + 1).sum::<usize>() + extra.len() + 3,
        );
        out.push('{');
        let mut first = true;
        let mut push = |out: &mut String, m: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(m);
        };
        for (i, (_, m)) in self.0.iter().enumerate() {
            if i == at {
                push(&mut out, &extra);
            }
            push(&mut out, m);
        }
        if at == self.0.len() {
            push(&mut out, &extra);
        }
        out.push('}');
        out
    }
}

fn write_value(out: &mut String, v: &Value) -> Result<(), AuditError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            // Integers of magnitude below 2^53 are exactly their own double, and ECMAScript
            // prints such a double as its plain decimal digits: no float formatting needed.
            (Some(i), _) if i.unsigned_abs() < (1u64 << 53) => {
                use std::fmt::Write as _;
                let _ = write!(out, "{i}");
            }
            (None, Some(u)) if u < (1u64 << 53) => {
                use std::fmt::Write as _;
                let _ = write!(out, "{u}");
            }
            _ => write_number(out, n.as_f64().ok_or(AuditError::NonFiniteNumber)?)?,
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3: sort by the UTF-16 code units of the names, not by UTF-8 bytes
            // (which is what serde_json's BTreeMap order is); they differ above U+FFFF.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and the C0 controls are escaped, with the short forms where
/// JSON has them and `\u00xx` (lower-case hex) otherwise. Everything else is literal UTF-8.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Most strings (ids, codes, hex) need no escaping: copy them whole.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{09}' => out.push_str("\\t"),
            '\u{0a}' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0d}' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The shortest digits that round-trip, and among those the closest to `f` (ties to even), in
/// `{:e}` layout: ECMA-262 §6.1.6.1.20 step 5 and its note.
///
/// Rust's `{:e}` gives the shortest length `k`, but when two k-digit strings round-trip it may
/// pick the farther (…206.3 for 1424953923781206.25, where ECMAScript says …206.2). Formatting
/// with exactly `k` digits is correctly rounded (half to even), so it is the closest candidate;
/// it is taken whenever it still round-trips, which fails only next to a power of two, where the
/// rounding interval is lopsided and the shortest form is then the answer.
fn closest_shortest(f: f64) -> String {
    let shortest = format!("{f:e}");
    let digits = shortest
        .split_once('e')
        .map_or(0, |(m, _)| m.bytes().filter(u8::is_ascii_digit).count());
    let Some(precision) = digits.checked_sub(1) else {
        return shortest;
    };
    let closest = format!("{f:.precision$e}");
    if closest
        .parse::<f64>()
        .is_ok_and(|back| back.to_bits() == f.to_bits())
    {
        closest
    } else {
        shortest
    }
}

/// ECMAScript `Number::toString(x)` (ECMA-262 §6.1.6.1.20) for a finite double.
///
/// Rust's `{:e}` gives the shortest digit string that round-trips (the same digits ECMAScript
/// picks); only the layout differs, and that is what this function redoes.
pub(crate) fn write_number(out: &mut String, f: f64) -> Result<(), AuditError> {
    if !f.is_finite() {
        return Err(AuditError::NonFiniteNumber);
    }
    // Both zeros print as "0" (step 2 of Number::toString).
    if f == 0.0 {
        out.push('0');
        return Ok(());
    }
    let sci = closest_shortest(f);
    let (negative, sci) = match sci.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sci.as_str()),
    };
    // `{:e}` of a finite non-zero double is `d[.ddd]e[-]x`; anything else would be a std change.
    let (mantissa, exp) = sci.split_once('e').ok_or(AuditError::NonFiniteNumber)?;
    let exp: i32 = exp.parse().map_err(|_| AuditError::NonFiniteNumber)?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // k digits, decimal point after position n (ECMA-262 names).
    let k = i32::try_from(digits.len()).map_err(|_| AuditError::NonFiniteNumber)?;
    let n = exp.checked_add(1).ok_or(AuditError::NonFiniteNumber)?;

    if negative {
        out.push('-');
    }
    let zeros = |out: &mut String, count: i32| {
        for _ in 0..count {
            out.push('0');
        }
    };
    if k <= n && n <= 21 {
        // Integer: the digits, then n − k zeros.
        out.push_str(&digits);
        zeros(out, n - k);
    } else if 0 < n && n <= 21 {
        // Fixed with the point inside the digits.
        let split = usize::try_from(n).map_err(|_| AuditError::NonFiniteNumber)?;
        out.extend(digits.chars().take(split));
        out.push('.');
        out.extend(digits.chars().skip(split));
    } else if -6 < n && n <= 0 {
        // 0.000ddd
        out.push_str("0.");
        zeros(out, -n);
        out.push_str(&digits);
    } else {
        // Exponential: d[.ddd]e±x
        out.extend(digits.chars().take(1));
        if k > 1 {
            out.push('.');
            out.extend(digits.chars().skip(1));
        }
        let e = n - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&e.unsigned_abs().to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(f: f64) -> String {
        let mut out = String::new();
        write_number(&mut out, f).unwrap();
        out
    }

    #[test]
    fn numbers_in_ecmascript_layout() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(-0.0), "0");
        assert_eq!(num(1.0), "1");
        assert_eq!(num(-1.5), "-1.5");
        assert_eq!(num(1e21), "1e+21");
        assert_eq!(num(1e20), "100000000000000000000");
        assert_eq!(num(1e-6), "0.000001");
        assert_eq!(num(1e-7), "1e-7");
        assert_eq!(num(5e-324), "5e-324");
        assert_eq!(num(123.456e-10), "1.23456e-8");
        assert_eq!(num(333_333_333.333_333_3), "333333333.3333333");
        assert!(matches!(
            write_number(&mut String::new(), f64::NAN),
            Err(AuditError::NonFiniteNumber)
        ));
        assert!(matches!(
            write_number(&mut String::new(), f64::INFINITY),
            Err(AuditError::NonFiniteNumber)
        ));
    }

    #[test]
    fn keys_sorted_by_utf16_and_strings_escaped() {
        // U+1F600 (surrogates D83D DE00) sorts before U+FB33 in UTF-16 but after it in UTF-8.
        let v = json!({"\u{fb33}": 1, "\u{1f600}": 2, "a\u{1}\n\"\\\u{7f}": [true, null]});
        let out = canonical_string(&v).unwrap();
        assert_eq!(
            out,
            "{\"a\\u0001\\n\\\"\\\\\u{7f}\":[true,null],\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }
}
