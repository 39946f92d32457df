//! Request-path normalisation for decisions (`context.http.path`): what policy decides on must be
//! what the upstream serves, so the gateway forwards the normalised path, never the raw one.

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` segment would climb above the root, or a percent-escape is malformed.
    Invalid,
    /// An encoded `/`, `\` or NUL, which upstreams disagree about.
    AmbiguousEncoding,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §6.2.2 normalisation of a path: percent-escapes of unreserved characters decoded,
/// others upper-cased; `.` and `..` segments removed (§5.2.4); empty segments (`//`) collapsed.
/// Refuses encoded separators (`%2F`, `%5C`), NUL, backslashes and climbing above the root.
///
/// # Errors
/// A [`PathError`].
pub fn normalize(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::Invalid);
            };
            let v = h * 16 + l;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::AmbiguousEncoding);
            }
            if unreserved(v) {
                decoded.push(v);
            } else {
                decoded.extend_from_slice(format!("%{v:02X}").as_bytes());
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b == 0 {
            return Err(PathError::AmbiguousEncoding);
        }
        decoded.push(b);
        i += 1;
    }
    let text = String::from_utf8(decoded).map_err(|_| PathError::Invalid)?;
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::Invalid);
                }
            }
            s => out.push(s),
        }
    }
    let trailing = text.ends_with('/') && !out.is_empty();
    let mut s = String::with_capacity(text.len() + 1);
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(normalize("/a/./b/../c"), Ok("/a/c".into()));
        assert_eq!(normalize("//a///b/"), Ok("/a/b/".into()));
        assert_eq!(normalize("/%61%2d%7E"), Ok("/a-~".into()));
        assert_eq!(normalize("/%3a%3A"), Ok("/%3A%3A".into()));
        assert_eq!(normalize("/"), Ok("/".into()));
        assert_eq!(normalize("/a/../../etc"), Err(PathError::Invalid));
        assert_eq!(normalize("/a%2f..%2fb"), Err(PathError::AmbiguousEncoding));
        assert_eq!(normalize("/a%5cb"), Err(PathError::AmbiguousEncoding));
        assert_eq!(normalize("/a%00"), Err(PathError::AmbiguousEncoding));
        assert_eq!(normalize("/a%zz"), Err(PathError::Invalid));
        assert_eq!(normalize("/a%"), Err(PathError::Invalid));
        assert_eq!(normalize("/a\\..\\b"), Err(PathError::AmbiguousEncoding));
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::Invalid));
    }
}
