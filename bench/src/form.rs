//! `application/x-www-form-urlencoded`, as the broker does it (`firebreak_server::form`: strict
//! decoding, a repeated single-valued name refused), kept here so the harness builds against
//! `firebreak-token` alone and the limit route pays the same parsing cost as the broker.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A parsed form.
#[derive(Debug, Default)]
pub struct Form {
    single: HashMap<String, String>,
    multi: HashMap<String, Vec<String>>,
}

impl Form {
    /// Parses `body`; names in `multi` may repeat. `None` for bad encoding or a repeat.
    pub fn parse(body: &[u8], multi: &[&str]) -> Option<Self> {
        let mut form = Form::default();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let name = decode(it.next().unwrap_or_default())?;
            let value = decode(it.next().unwrap_or_default())?;
            if multi.contains(&name.as_str()) {
                form.multi.entry(name).or_default().push(value);
            } else if form.single.insert(name, value).is_some() {
                return None;
            }
        }
        Some(form)
    }

    /// A single-valued parameter; empty counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.single
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The first value of a repeatable parameter.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.multi
            .get(name)
            .and_then(|v| v.iter().map(String::as_str).find(|s| !s.is_empty()))
    }
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(&b) = i.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = i.next().copied().and_then(hex)?;
                let lo = i.next().copied().and_then(hex)?;
                out.push((hi << 4) | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
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

    #[test]
    fn round_trip_and_repeats() {
        let body = encode_pairs([
            ("subject_token", "a.b+c/d"),
            ("audience", "https://x/y"),
            ("audience", "z"),
        ]);
        let f = Form::parse(body.as_bytes(), &["audience"]).unwrap();
        assert_eq!(f.get("subject_token"), Some("a.b+c/d"));
        assert_eq!(f.first("audience"), Some("https://x/y"));
        assert!(Form::parse(b"a=1&a=2", &[]).is_none());
        assert!(Form::parse(b"a=%zz", &[]).is_none());
    }
}
