//! Destinations: the request's authority parsed into one canonical `host:port`, and the address
//! classes the proxy refuses unless a policy names the address exactly.
//!
//! A host is either an IP literal or a DNS name. IP literals are recognised in every spelling a
//! resolver or URL parser would accept (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`,
//! `[::ffff:127.0.0.1]`) and become the canonical address, so the policy decides on what the
//! socket would connect to (CVE-2021-29922, CVE-2021-29923). A name whose last label looks
//! numeric but is not a valid IPv4 literal, and anything else that is not a plain LDH name, is
//! refused rather than guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed destination: canonical host (lower-case name, dotted IPv4, or `[v6]`) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The canonical host as the `Host` entity id spells it.
    pub host: String,
    /// The address when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// TCP port (never 0).
    pub port: u16,
}

impl Destination {
    /// `host:port`, the `Host::"…"` entity id and the audit `destination`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why an authority did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityError {
    /// Not `host:port` at all (no port, empty host, bad port): the request is malformed (400).
    Malformed,
    /// The host is not a valid name or IP literal (`a@b`, a zone id, a bad IPv4 literal): a
    /// destination we refuse to reach (403 `destination_not_allowed`).
    BadHost,
}

/// Parses `host:port` (CONNECT's authority-form, RFC 9110 §9.3.6). The port is required.
pub fn parse_authority(authority: &str) -> Result<Destination, AuthorityError> {
    split_authority(authority, None)
}

/// Parses an `http://` absolute-form target (RFC 9112 §3.2.2) into its destination (port 80 by
/// default) and the origin-form path to forward (`/` when empty; the fragment dropped).
pub fn parse_absolute(target: &str) -> Result<(Destination, String), AuthorityError> {
    let scheme = target.get(..7).ok_or(AuthorityError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return Err(AuthorityError::Malformed);
    }
    let rest = target.get(7..).unwrap_or_default();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let tail = tail.split('#').next().unwrap_or_default();
    let path = if tail.is_empty() {
        "/".to_owned()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_owned()
    };
    Ok((split_authority(authority, Some(80))?, path))
}

fn split_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<Destination, AuthorityError> {
    if authority.is_empty() {
        return Err(AuthorityError::Malformed);
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or(AuthorityError::Malformed)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(AuthorityError::Malformed),
        };
        (Host::V6(v6), port)
    } else {
        match authority.rsplit_once(':') {
            // An IPv6 literal must be bracketed: `::1:443` is ambiguous.
            Some((h, _)) if h.contains(':') => return Err(AuthorityError::Malformed),
            Some((h, p)) => (Host::Other(h), Some(p)),
            None => (Host::Other(authority), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(AuthorityError::Malformed),
    };
    let ip = match host {
        Host::V6(text) => Some(parse_v6(text)?),
        Host::Other("") => return Err(AuthorityError::Malformed),
        Host::Other(text) => match classify_name(text)? {
            Name::V4(v4) => Some(IpAddr::V4(v4)),
            Name::Dns => None,
        },
    };
    let host = match (ip, host) {
        (Some(ip), _) => canonical_ip(ip).0,
        (None, Host::Other(name)) => name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase(),
        (None, Host::V6(_)) => return Err(AuthorityError::BadHost),
    };
    Ok(Destination {
        host,
        ip: ip.map(|i| canonical_ip(i).1),
        port,
    })
}

enum Host<'a> {
    V6(&'a str),
    Other(&'a str),
}

enum Name {
    V4(Ipv4Addr),
    Dns,
}

fn parse_port(p: &str) -> Result<u16, AuthorityError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::Malformed);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::Malformed),
        Ok(n) => Ok(n),
    }
}

fn parse_v6(text: &str) -> Result<IpAddr, AuthorityError> {
    // A zone id (`fe80::1%25lo`) names an interface, not a destination: refused.
    if text.contains('%') {
        return Err(AuthorityError::BadHost);
    }
    text.parse::<Ipv6Addr>()
        .map(IpAddr::V6)
        .map_err(|_| AuthorityError::BadHost)
}

/// The canonical spelling of an address and the address itself: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> (String, IpAddr) {
    match ip {
        IpAddr::V4(v4) => (v4.to_string(), ip),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (v4.to_string(), IpAddr::V4(v4)),
            None => (format!("[{v6}]"), ip),
        },
    }
}

/// A name is an IPv4 literal when its last label is numeric (WHATWG URL "ends in a number"),
/// else it must be a plain LDH name.
fn classify_name(text: &str) -> Result<Name, AuthorityError> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return Err(AuthorityError::BadHost);
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if looks_numeric(last) {
        return parse_loose_v4(name)
            .map(Name::V4)
            .ok_or(AuthorityError::BadHost);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(AuthorityError::BadHost);
        }
    }
    Ok(Name::Dns)
}

fn looks_numeric(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// IPv4 in the forms inet_aton and the WHATWG URL parser accept: 1 to 4 parts, each decimal,
/// octal (leading `0`) or hex (`0x`); the last part fills the remaining bytes.
pub fn parse_loose_v4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_part(part)?);
    }
    let (last, init) = values.split_last()?;
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        if *v > 255 {
            return None;
        }
        let shift = 8 * (3 - u32::try_from(i).ok()?);
        addr |= v << shift;
    }
    let room = 8 * (4 - u32::try_from(init.len()).ok()?);
    if *last >= 1u64 << room {
        return None;
    }
    addr |= last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

fn parse_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (part.get(1..)?, 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // `0x` alone is 0 for WHATWG; a resolver may disagree, so neither reading is trusted.
        return None;
    }
    // Longer than any value a part can hold: not an address (and no overflow to think about).
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Whether an address is one the proxy may reach on a policy that names only a host name:
/// public unicast. Loopback, RFC 1918, CGNAT 100.64/10, link-local 169.254/16 (cloud metadata),
/// 0/8, benchmarking, documentation, multicast, reserved and broadcast IPv4 are not; nor is
/// any IPv6 outside global unicast 2000::/3, nor documentation, Teredo and the IETF protocol
/// block in it. IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged by
/// the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let [s0, s1, s2, s3, s4, s5, s6, s7] = s;
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            // NAT64 well-known prefix: the gateway would connect to the embedded address.
            if [s0, s1, s2, s3, s4, s5] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(embedded(s6, s7));
            }
            // 6to4: a relay would deliver to the embedded address.
            if s0 == 0x2002 {
                return is_public_v4(embedded(s1, s2));
            }
            let global = (s0 & 0xe000) == 0x2000;
            let documentation = (s0 == 0x2001 && s1 == 0x0db8) || (s0 & 0xfff0) == 0x3ff0;
            // 2001::/23: IETF protocol assignments (Teredo 2001::/32, ORCHID, benchmarking).
            let ietf = s0 == 0x2001 && s1 < 0x0200;
            global && !documentation && !ietf
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    let denied = a == 0 // "this network", incl. 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !denied
}

#[cfg(test)]
mod tests;
