//! The decision point for exchanges, behind a trait so the Cedar PDP (the policy issue) replaces
//! the allow-list without touching the exchange path. Decisions are values the caller must match
//! on; there is no `is_allowed() -> bool`.

use firebreak_core::Reason;
use firebreak_token::sha256_hex;

use crate::config::{Agent, Config, Target, TargetKind};

/// What an exchange asks: may `agent` get a token for `target` with these scopes?
#[derive(Debug)]
pub struct ExchangeQuery<'a> {
    /// The matched agent.
    pub agent: &'a Agent,
    /// The resolved target.
    pub target: &'a Target,
    /// The requested scopes (`None`: the request named none).
    pub requested: Option<&'a [String]>,
}

/// Proof of an allow, with what it allows. Only a `Decider` builds one.
#[derive(Debug)]
pub struct Permit {
    scopes: Vec<String>,
    policy_version: String,
}

impl Permit {
    /// The scopes to issue.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
    /// The version of the rules that allowed it (`fb_pv`).
    pub fn policy_version(&self) -> &str {
        &self.policy_version
    }
}

/// Why a decider said no, and which OAuth answer fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Not allowed to get this target at all → `invalid_target`.
    Target(Reason),
    /// Allowed the target, not these scopes → `invalid_scope`.
    Scope(Reason),
}

/// The answer.
#[must_use]
#[derive(Debug)]
pub enum Decision {
    /// Issue, with the permit's scopes.
    Allow(Permit),
    /// Refuse.
    Deny(Denial),
}

/// A policy decision point for exchanges.
pub trait Decider: Send + Sync + std::fmt::Debug {
    /// Decides one exchange.
    fn decide_exchange(&self, q: &ExchangeQuery<'_>) -> Decision;
    /// The version of the rules in force.
    fn policy_version(&self) -> &str;
}

/// The interim decider: `[[agent]] grants = [{ target, scopes }]`. The broker's own target is
/// granted to every agent with no scopes, so an agent can always revoke its own tokens.
#[derive(Debug)]
pub struct AllowList {
    version: String,
}

impl AllowList {
    /// Builds the decider; its version is a hash of every grant, so a changed grant changes it.
    pub fn new(config: &Config) -> Self {
        let mut text = String::new();
        for a in &config.agents {
            let mut grants: Vec<_> = a.grants.iter().collect();
            grants.sort_by(|x, y| x.0.cmp(y.0));
            for (t, scopes) in grants {
                text.push_str(&format!("{}\u{0}{}\u{0}{}\n", a.id, t, scopes.join(" ")));
            }
        }
        let hash = sha256_hex(text.as_bytes());
        Self {
            version: format!("allowlist-{}", hash.get(..16).unwrap_or(&hash)),
        }
    }
}

impl Decider for AllowList {
    fn decide_exchange(&self, q: &ExchangeQuery<'_>) -> Decision {
        let granted: &[String] = if q.target.kind == TargetKind::Broker {
            &[]
        } else {
            match q.agent.grants.get(&q.target.id) {
                Some(s) => s,
                None => return Decision::Deny(Denial::Target(Reason::NoMatchingPermit)),
            }
        };
        let scopes = match q.requested {
            // No scope asked: the grant's full set (RFC 6749 §3.3 lets the server pick a default).
            None => granted.to_vec(),
            Some(req) => {
                if req.iter().any(|s| !granted.contains(s)) {
                    return Decision::Deny(Denial::Scope(Reason::ScopeNotGranted));
                }
                req.to_vec()
            }
        };
        Decision::Allow(Permit {
            scopes,
            policy_version: self.version.clone(),
        })
    }

    fn policy_version(&self) -> &str {
        &self.version
    }
}
