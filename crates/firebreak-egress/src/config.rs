//! The `[egress]` table as written (`EgressSection`, unknown keys refused) and the checked
//! [`EgressConfig`] the proxy runs on. Every default is the safe one from DESIGN.md §4.

use std::net::SocketAddr;
use std::time::Duration;

use firebreak_core::ConfigDuration;
use serde::Deserialize;

use crate::EgressError;

/// What the proxy runs on (checked: see [`EgressSection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// The `kind = "egress"` target whose audience proxy tokens carry.
    pub target: String,
    /// Open connections one agent may hold at once.
    pub max_conns_per_agent: usize,
    /// A tunnel with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// No tunnel lives longer than this.
    pub total_timeout: Duration,
    /// The request head must arrive within this (slowloris bound).
    pub header_timeout: Duration,
    /// The request head may be at most this many bytes (else 431).
    pub max_header_bytes: usize,
    /// Resolving and connecting to the destination must finish within this.
    pub connect_timeout: Duration,
    /// `egress_open` must be durable within this, or nothing is connected (503).
    pub audit_deadline: Duration,
}

impl EgressConfig {
    /// The DESIGN.md defaults for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            max_conns_per_agent: 64,
            idle_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            audit_deadline: Duration::from_secs(1),
        }
    }
}

/// The `[egress]` table as written. `EgressConfig::try_from` checks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Where to listen (default `127.0.0.1:8442`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The egress target id: required, no default would be safe.
    pub target: String,
    /// Default 64.
    #[serde(default)]
    pub max_conns_per_agent: Option<usize>,
    /// Default `60s`.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
    /// Default `1h`.
    #[serde(default)]
    pub total_timeout: Option<ConfigDuration>,
    /// Default `10s`.
    #[serde(default)]
    pub header_timeout: Option<ConfigDuration>,
    /// Default 16384.
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    /// Default `5s`.
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// Default `1s`.
    #[serde(default)]
    pub audit_deadline: Option<ConfigDuration>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8442))
}

/// Smallest and largest request head the proxy can be configured to read.
const HEADER_BYTES: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;

impl TryFrom<EgressSection> for EgressConfig {
    type Error = EgressError;

    fn try_from(raw: EgressSection) -> Result<Self, EgressError> {
        let bad = |field: &'static str, rule: &'static str| EgressError::Config { field, rule };
        let d = EgressConfig::new(raw.target.trim());
        if d.target.is_empty() || d.target != raw.target {
            return Err(bad("target", "must name the kind = \"egress\" target"));
        }
        let dur = |v: Option<ConfigDuration>, default: Duration, field| match v {
            None => Ok(default),
            Some(v) if v.as_millis() == 0 => Err(bad(field, "must be more than 0")),
            Some(v) => Ok(v.as_std()),
        };
        let cfg = EgressConfig {
            target: d.target.clone(),
            max_conns_per_agent: match raw.max_conns_per_agent {
                None => d.max_conns_per_agent,
                Some(0) => return Err(bad("max_conns_per_agent", "must be at least 1")),
                Some(n) => n,
            },
            idle_timeout: dur(raw.idle_timeout, d.idle_timeout, "idle_timeout")?,
            total_timeout: dur(raw.total_timeout, d.total_timeout, "total_timeout")?,
            header_timeout: dur(raw.header_timeout, d.header_timeout, "header_timeout")?,
            max_header_bytes: match raw.max_header_bytes {
                None => d.max_header_bytes,
                Some(n) if HEADER_BYTES.contains(&n) => n,
                Some(_) => return Err(bad("max_header_bytes", "must be 1024 to 1048576")),
            },
            connect_timeout: dur(raw.connect_timeout, d.connect_timeout, "connect_timeout")?,
            audit_deadline: dur(raw.audit_deadline, d.audit_deadline, "audit_deadline")?,
        };
        if cfg.idle_timeout > cfg.total_timeout {
            return Err(bad("idle_timeout", "must not exceed total_timeout"));
        }
        if cfg.header_timeout > Duration::from_secs(60) {
            return Err(bad("header_timeout", "must be at most 60s"));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parse(text: &str) -> Result<EgressConfig, String> {
        let raw: EgressSection = toml::from_str(text).map_err(|e| e.to_string())?;
        EgressConfig::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_design_values() {
        let raw: EgressSection = toml::from_str("target = \"egress\"").unwrap();
        assert_eq!(raw.listen, default_listen());
        assert_eq!(
            EgressConfig::try_from(raw).unwrap(),
            EgressConfig::new("egress")
        );
        let c = parse(
            "target = \"egress\"\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"30s\"\n\
             total_timeout = \"2h\"\nheader_timeout = \"500ms\"\nmax_header_bytes = 4096\n\
             max_conns_per_agent = 3\nconnect_timeout = \"1s\"\naudit_deadline = \"250ms\"",
        )
        .unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.total_timeout, Duration::from_secs(7200));
        assert_eq!(c.header_timeout, Duration::from_millis(500));
        assert_eq!((c.max_header_bytes, c.max_conns_per_agent), (4096, 3));
        assert_eq!(c.audit_deadline, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("", "missing field `target`"),
            ("target = \"\"", "target"),
            ("target = \"egress\"\nbogus = 1", "unknown field `bogus`"),
            ("target = \"egress\"\nidle_timeout = \"60\"", "bad duration"),
            ("target = \"egress\"\nidle_timeout = 60", "invalid type"),
            ("target = \"egress\"\nidle_timeout = \"0s\"", "idle_timeout"),
            ("target = \"egress\"\nidle_timeout = \"2h\"", "idle_timeout"),
            (
                "target = \"egress\"\nheader_timeout = \"5m\"",
                "header_timeout",
            ),
            (
                "target = \"egress\"\nmax_conns_per_agent = 0",
                "max_conns_per_agent",
            ),
            (
                "target = \"egress\"\nmax_conns_per_agent = -1",
                "invalid value",
            ),
            (
                "target = \"egress\"\nmax_header_bytes = 10",
                "max_header_bytes",
            ),
            (
                "target = \"egress\"\nmax_header_bytes = 99999999",
                "max_header_bytes",
            ),
            (
                "target = \"egress\"\nlisten = \"nowhere\"",
                "invalid socket address",
            ),
            (
                "target = \"egress\"\naudit_deadline = \"99999999999d\"",
                "too large",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
