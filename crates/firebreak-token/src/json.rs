//! Strict JSON for JOSE: UTF-8 without a BOM, no duplicate member names at any depth (compared
//! after unescaping, so `"aud"` and `"\u0061ud"` collide), and a nesting limit far below
//! serde_json's own, so hostile depth ends in an error rather than a deep stack.
//!
//! serde_json's `Value` silently keeps the last of two duplicate members, which is a
//! parser-differential hazard (RFC 7493 §2.3); hence the custom `DeserializeSeed` below.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{Segment, TokenError};

/// What made a document fail, recorded by the seed before it aborts serde's walk, so the caller
/// gets a typed cause instead of serde's message text.
#[derive(Clone, Copy)]
enum Violation {
    Duplicate,
    TooDeep,
}

struct StrictSeed<'v> {
    depth_left: usize,
    violation: &'v Cell<Option<Violation>>,
}

impl<'v> StrictSeed<'v> {
    fn child<E: serde::de::Error>(&self) -> Result<StrictSeed<'v>, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(StrictSeed {
                depth_left,
                violation: self.violation,
            }),
            None => {
                self.violation.set(Some(Violation::TooDeep));
                Err(E::custom("nesting too deep"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields NaN or infinity, but refuse them rather than map to null.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        // Each element is one level deeper; the check happens before serde_json recurses further.
        while let Some(v) = seq.next_element_seed(self.child()?)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // Keys arrive unescaped, so escaped spellings of one name compare equal here.
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.violation.set(Some(Violation::Duplicate));
                return Err(serde::de::Error::custom("duplicate member"));
            }
            let value = map.next_value_seed(self.child()?)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `bytes` as one strict JSON value. `max_depth` counts containers: `{}` is depth 1.
pub(crate) fn parse_value(
    bytes: &[u8],
    max_depth: usize,
    seg: Segment,
) -> Result<Value, TokenError> {
    // serde_json would refuse a BOM too, but as a generic syntax error; name it explicitly.
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(TokenError::BadJson(seg));
    }
    let violation = Cell::new(None);
    // The top-level value itself counts as one level when it is a container.
    let seed = StrictSeed {
        depth_left: max_depth,
        violation: &violation,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (result, violation.get()) {
        (Ok(v), None) => Ok(v),
        (_, Some(Violation::Duplicate)) => Err(TokenError::DuplicateMember(seg)),
        (_, Some(Violation::TooDeep)) => Err(TokenError::JsonTooDeep(seg)),
        (Err(_), None) => Err(TokenError::BadJson(seg)),
    }
}

/// Parses `bytes` as one strict JSON object.
pub(crate) fn parse_object(
    bytes: &[u8],
    max_depth: usize,
    seg: Segment,
) -> Result<Map<String, Value>, TokenError> {
    match parse_value(bytes, max_depth, seg)? {
        Value::Object(m) => Ok(m),
        _ => Err(TokenError::NotAnObject(seg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_containers() {
        // Depth 2: an object holding an array.
        assert!(parse_value(br#"{"a":[1]}"#, 2, Segment::Payload).is_ok());
        assert_eq!(
            parse_value(br#"{"a":[[1]]}"#, 2, Segment::Payload),
            Err(TokenError::JsonTooDeep(Segment::Payload))
        );
    }

    #[test]
    fn duplicates_found_when_nested_and_escaped() {
        assert_eq!(
            parse_value(br#"{"a":{"b":1,"b":2}}"#, 8, Segment::Header),
            Err(TokenError::DuplicateMember(Segment::Header))
        );
        assert_eq!(
            parse_value(br#"[{"aud":1,"\u0061ud":2}]"#, 8, Segment::Header),
            Err(TokenError::DuplicateMember(Segment::Header))
        );
        assert!(parse_value(br#"{"a":{"b":1},"b":2}"#, 8, Segment::Header).is_ok());
    }

    #[test]
    fn trailing_garbage_and_bom_refused() {
        assert_eq!(
            parse_value(b"{} x", 8, Segment::Header),
            Err(TokenError::BadJson(Segment::Header))
        );
        assert_eq!(
            parse_value(b"\xEF\xBB\xBF{}", 8, Segment::Header),
            Err(TokenError::BadJson(Segment::Header))
        );
        assert_eq!(
            parse_value(br#"{"a":"\ud800"}"#, 8, Segment::Header),
            Err(TokenError::BadJson(Segment::Header))
        );
        assert_eq!(
            parse_value(b"{\"a\":\"\xff\"}", 8, Segment::Header),
            Err(TokenError::BadJson(Segment::Header))
        );
    }

    #[test]
    fn ten_thousand_levels_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse_value(deep.as_bytes(), 32, Segment::Payload),
            Err(TokenError::JsonTooDeep(Segment::Payload))
        );
        let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert_eq!(
            parse_value(deep_obj.as_bytes(), 32, Segment::Payload),
            Err(TokenError::JsonTooDeep(Segment::Payload))
        );
    }
}
