//! Syntax-based normalisation of absolute `http`/`https` URIs (RFC 3986 §6.2.2–6.2.3), enough to
//! compare a DPoP `htu` with the URI a request was sent to. Written here rather than pulled in as
//! a URL crate: the rules are short, and anything unusual (userinfo, a percent-encoded host,
//! non-ASCII) is refused rather than interpreted, so two parsers can never disagree about which
//! host a proof names.

/// Longest URI we normalise; a proof's `htu` has no reason to be longer.
const MAX_URI_BYTES: usize = 2048;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A path with percent-encodings normalised (§6.2.2.2): an encoded unreserved octet is decoded,
/// every other encoding gets upper-case hex digits. `None` on a stray `%` or a character that may
/// not appear in a path.
fn normalize_percent(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            let v = (hi << 4) | lo;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                out.push('%');
                out.push(char::from(
                    b"0123456789ABCDEF".get(usize::from(hi)).copied()?,
                ));
                out.push(char::from(
                    b"0123456789ABCDEF".get(usize::from(lo)).copied()?,
                ));
            }
        } else if is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/') {
            out.push(char::from(b));
        } else {
            return None;
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4 for an absolute path (one that starts with `/`).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let count = segments.len();
    for (i, seg) in segments.into_iter().enumerate() {
        let last = i.saturating_add(1) == count;
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // A trailing `.` or `..` leaves the path ending in `/` ("/a/b/.." is "/a/").
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Host (lower-cased) and port of an authority without userinfo. IPv6 literals keep their
/// brackets; a percent-encoded or empty host is refused.
fn split_host_port(authority: &str) -> Option<(String, Option<&str>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = authority.get(..=end)?;
        let inner = host.get(1..end)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        let rest = authority.get(end.saturating_add(1)..)?;
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || !host.starts_with('[') && !host.bytes().all(|b| is_unreserved(b) || is_sub_delim(b))
    {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// The normal form of an absolute `http`/`https` URI without its query and fragment.
pub(crate) fn normalize(uri: &str) -> Option<String> {
    // Printable ASCII only: no whitespace, controls or raw Unicode for a parser to disagree on.
    if uri.is_empty()
        || uri.len() > MAX_URI_BYTES
        || !uri.bytes().all(|b| (0x21..=0x7E).contains(&b))
    {
        return None;
    }
    let (scheme, rest) = uri.split_once(':')?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443u16,
        "http" => 80u16,
        _ => return None,
    };
    let rest = rest.strip_prefix("//")?;
    // The fragment first: a `?` inside it is not a query.
    let rest = rest.split('#').next()?;
    let rest = rest.split('?').next()?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, ""),
    };
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is deprecated, and a classic way of making a
    // URI look like it names another host.
    if authority.contains('@') {
        return None;
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        // §6.2.3: an empty port is the default port.
        None | Some("") => None,
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u16 = p.parse().ok()?;
            (n != default_port).then_some(n)
        }
    };
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        remove_dot_segments(&normalize_percent(path)?)
    };
    Some(match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn rfc3986_normalisations_applied() {
        for (input, want) in [
            (
                "https://server.example.com/token",
                "https://server.example.com/token",
            ),
            (
                "HTTPS://Server.Example.COM/token",
                "https://server.example.com/token",
            ),
            (
                "https://server.example.com:443/token",
                "https://server.example.com/token",
            ),
            (
                "https://server.example.com:/token",
                "https://server.example.com/token",
            ),
            (
                "http://server.example.com:80/token",
                "http://server.example.com/token",
            ),
            (
                "https://server.example.com:8443/token",
                "https://server.example.com:8443/token",
            ),
            (
                "https://server.example.com:08443/token",
                "https://server.example.com:8443/token",
            ),
            ("http://127.0.0.1:443/t", "http://127.0.0.1:443/t"),
            ("https://server.example.com", "https://server.example.com/"),
            (
                "https://server.example.com?x=1",
                "https://server.example.com/",
            ),
            (
                "https://server.example.com/token?x=1#f",
                "https://server.example.com/token",
            ),
            (
                "https://server.example.com/token#f?x",
                "https://server.example.com/token",
            ),
            (
                "https://server.example.com/a/./b/../token",
                "https://server.example.com/a/token",
            ),
            (
                "https://server.example.com/a/b/..",
                "https://server.example.com/a/",
            ),
            (
                "https://server.example.com/%7Etoken",
                "https://server.example.com/~token",
            ),
            (
                "https://server.example.com/%2e%2E/token",
                "https://server.example.com/token",
            ),
            (
                "https://server.example.com/a%2fb",
                "https://server.example.com/a%2Fb",
            ),
            ("https://[::1]:8440/t", "https://[::1]:8440/t"),
            ("https://[::1]:443/t", "https://[::1]/t"),
            ("https://[FE80::1]/t", "https://[fe80::1]/t"),
        ] {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
        }
        // Case in the path is significant.
        assert_ne!(
            normalize("https://a.example/Token"),
            normalize("https://a.example/token")
        );
    }

    #[test]
    fn non_http_and_ambiguous_uris_refused() {
        for input in [
            "",
            "/oauth2/token",
            "ftp://server.example.com/token",
            "https:server.example.com/token",
            "https:///token",
            "https://user@server.example.com/token",
            "https://server.example.com@evil.example/token",
            "https://server.example.com:99999/token",
            "https://server.example.com:-1/token",
            "https://server.example.com:8a/token",
            "https://server.example.com:1:2/token",
            "https://ser%76er.example.com/token",
            "https://server.example.com/to ken",
            "https://server.example.com/tök",
            "https://server.example.com/%zz",
            "https://server.example.com/%4",
            "https://server.example.com/a\"b",
            "https://[::1/t",
            "https://[]/t",
            "https://[::g]/t",
            "https://[::1]x/t",
        ] {
            assert_eq!(normalize(input), None, "{input}");
        }
        assert_eq!(
            normalize(&format!("https://a.example/{}", "a".repeat(3000))),
            None
        );
        // Positive twin for the length bound.
        assert!(normalize(&format!("https://a.example/{}", "a".repeat(1000))).is_some());
    }
}
