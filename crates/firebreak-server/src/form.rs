//! `application/x-www-form-urlencoded` bodies parsed strictly (SECURITY-TESTS.md X16, Z8): every
//! pair decodes to UTF-8, and a parameter that appears twice is an error rather than a silent
//! first-or-last pick, so two parsers can never disagree about which value we used.

use std::collections::HashMap;

/// Why a form was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// A percent escape that is not two hex digits, or bytes that are not UTF-8.
    BadEncoding,
    /// A parameter given more than once (RFC 6749 §3.2: "parameters MUST NOT be included more
    /// than once").
    Repeated(String),
}

/// A parsed form. Names map to one value, except those allowed to repeat.
#[derive(Debug, Default)]
pub struct Form {
    single: HashMap<String, String>,
    multi: HashMap<String, Vec<String>>,
}

impl Form {
    /// Parses `body`. Names in `multi` may repeat (their values are collected in order); any
    /// other repeated name is `FormError::Repeated`.
    pub fn parse(body: &[u8], multi: &[&str]) -> Result<Self, FormError> {
        let mut form = Form::default();
        if body.is_empty() {
            return Ok(form);
        }
        for pair in body.split(|b| *b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let mut it = pair.splitn(2, |b| *b == b'=');
            let name = decode(it.next().unwrap_or_default())?;
            let value = decode(it.next().unwrap_or_default())?;
            if multi.contains(&name.as_str()) {
                form.multi.entry(name).or_default().push(value);
            } else {
                match form.single.entry(name) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        return Err(FormError::Repeated(e.key().clone()));
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(value);
                    }
                }
            }
        }
        Ok(form)
    }

    /// The value of a single-valued parameter; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.single
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The values of a repeatable parameter (empty values dropped).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.multi
            .get(name)
            .map(|v| {
                v.iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode(raw: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(&b) = i.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = i
                    .next()
                    .copied()
                    .and_then(hex)
                    .ok_or(FormError::BadEncoding)?;
                let lo = i
                    .next()
                    .copied()
                    .and_then(hex)
                    .ok_or(FormError::BadEncoding)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| FormError::BadEncoding)
}

/// Percent-encodes a value for a form body (clients: the CLI, tests, the demo).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes pairs as a form body.
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SECURITY-TESTS.md Z8 (parser checks): repeats refused, bad escapes refused, and the
    /// parser's allocation is bounded by the body it was given.
    #[test]
    fn z8_token_form_parser_checks() {
        assert_eq!(
            Form::parse(b"grant_type=a&grant_type=b", &[]).unwrap_err(),
            FormError::Repeated("grant_type".into())
        );
        // An escaped name is the same name.
        assert_eq!(
            Form::parse(b"scope=a&%73cope=b", &[]).unwrap_err(),
            FormError::Repeated("scope".into())
        );
        assert_eq!(
            Form::parse(b"a=%zz", &[]).unwrap_err(),
            FormError::BadEncoding
        );
        assert_eq!(
            Form::parse(b"a=%f", &[]).unwrap_err(),
            FormError::BadEncoding
        );
        assert_eq!(
            Form::parse(b"a=%ff%fe", &[]).unwrap_err(),
            FormError::BadEncoding
        );
        let f = Form::parse(b"a=x+y%21&resource=1&resource=2&b=", &["resource"]).unwrap();
        assert_eq!(f.get("a"), Some("x y!"));
        assert_eq!(f.get("b"), None);
        assert_eq!(f.all("resource"), vec!["1", "2"]);
        // Round trip.
        let body = encode_pairs([("k", "a b&c=d/é")]);
        assert_eq!(
            Form::parse(body.as_bytes(), &[]).unwrap().get("k"),
            Some("a b&c=d/é")
        );
    }
}
