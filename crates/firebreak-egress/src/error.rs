//! The crate's one error type and its one mapping to what the peer sees ([`EgressError::answer`]):
//! a status, a reason code and, for 407, the `Proxy-Authenticate` challenge. Internal detail
//! (the token refusal's text, an I/O error) goes to `tracing` under the request id, never to
//! the peer.

use std::io;

use firebreak_core::Reason;
use firebreak_enforce::{Refusal, TokenRefusal};
use firebreak_policy::ReasonRef;

/// Why a request through the proxy did not get its tunnel, or why a config did not load.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// An `[egress]` setting breaks a rule (a caller's mistake at start-up; never sent).
    #[error("[egress] {field}: {rule}")]
    Config {
        /// The key.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// The request line or a header is malformed, or the target has no port.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request head exceeds `max_header_bytes` (or has too many headers).
    #[error("request head too large")]
    HeadTooLarge,
    /// The request head did not arrive within `header_timeout`.
    #[error("request head not received in time")]
    HeadTimeout,
    /// No `Proxy-Authorization: Bearer …`.
    #[error("no proxy credentials")]
    NoToken,
    /// The token did not verify for the egress audience.
    #[error("token refused: {0}")]
    Token(TokenRefusal),
    /// No bundle or token verifier yet: fail closed.
    #[error("enforcement not ready")]
    NotReady,
    /// The configured egress target is not in the bundle (or is not `kind = "egress"`).
    #[error("egress target not in the policy bundle")]
    TargetUnknown,
    /// Stale feed or revoked identity.
    #[error("refused before policy: {0:?}")]
    Refused(Refusal),
    /// The agent holds `max_conns_per_agent` connections already.
    #[error("per-agent connection limit reached")]
    ConnectionLimit,
    /// The destination is not a valid host, or is/resolves to an address no policy names.
    #[error("destination not allowed: {0}")]
    Destination(&'static str),
    /// The PDP said no (to the name or to a resolved address).
    #[error("denied by policy: {reason}")]
    Denied {
        /// The code the peer gets.
        reason: Reason,
        /// The PDP's reasons, for the audit record.
        reasons: Vec<ReasonRef>,
    },
    /// The PDP said `require_approval`; the proxy does not hold connections for approvals.
    #[error("approval required")]
    ApprovalRequired {
        /// The PDP's reasons, for the audit record.
        reasons: Vec<ReasonRef>,
    },
    /// The name did not resolve (or not in time), or resolved to nothing.
    #[error("resolve: {0}")]
    Resolve(io::Error),
    /// The checked address did not accept the connection in time.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// `egress_open` was not durable within `audit_deadline`: nothing was connected.
    #[error("audit: {0}")]
    Audit(String),
    /// The client's connection failed; there is no one to answer.
    #[error("client i/o: {0}")]
    Io(io::Error),
}

/// What the peer receives for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The reason code in the problem body.
    pub reason: Reason,
    /// The `Proxy-Authenticate` value of a 407.
    pub authenticate: Option<&'static str>,
}

const CHALLENGE: &str = "Bearer realm=\"firebreak-egress\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"firebreak-egress\", error=\"invalid_token\"";

impl EgressError {
    /// The one mapping to the wire; `None` when nothing is sent (config errors never reach a
    /// peer, and a broken client connection has no one to answer).
    pub fn answer(&self) -> Option<Answer> {
        use EgressError as E;
        let a = |status, reason| {
            Some(Answer {
                status,
                reason,
                authenticate: None,
            })
        };
        let challenge = |reason, authenticate| {
            Some(Answer {
                status: 407,
                reason,
                authenticate: Some(authenticate),
            })
        };
        match self {
            E::Config { .. } | E::Io(_) => None,
            E::Malformed(_) => a(400, Reason::MalformedRequest),
            E::HeadTooLarge => a(431, Reason::MalformedRequest),
            E::HeadTimeout => a(408, Reason::MalformedRequest),
            // RFC 6750 §3.1: no error attribute when no credentials were sent.
            E::NoToken => challenge(Reason::InvalidToken, CHALLENGE),
            E::Token(t) => match t {
                TokenRefusal::Invalid(_) => challenge(Reason::InvalidToken, CHALLENGE_INVALID),
                TokenRefusal::Audience => challenge(Reason::AudienceMismatch, CHALLENGE_INVALID),
                TokenRefusal::Expired => challenge(Reason::TokenExpired, CHALLENGE_INVALID),
                // Our outage, not the caller's token.
                TokenRefusal::KeysUnavailable => a(503, Reason::IssuerKeysUnavailable),
            },
            E::NotReady => a(503, Reason::EventStreamStale),
            E::TargetUnknown => a(503, Reason::AudienceNotRegistered),
            E::Refused(Refusal::Stale) => a(503, Reason::EventStreamStale),
            E::Refused(Refusal::ClockSkew) => a(503, Reason::ClockSkew),
            E::Refused(Refusal::Revoked(_)) => challenge(Reason::Revoked, CHALLENGE_INVALID),
            E::ConnectionLimit => a(429, Reason::ConnectionLimit),
            E::Destination(_) => a(403, Reason::DestinationNotAllowed),
            E::Denied { reason, .. } => a(403, *reason),
            E::ApprovalRequired { .. } => a(403, Reason::ApprovalRequired),
            E::Resolve(_) | E::Connect(_) => a(502, Reason::UpstreamUnavailable),
            E::Audit(_) => a(503, Reason::AuditUnavailable),
        }
    }

    /// The `decision` label of `firebreak_egress_connections_total`.
    pub(crate) fn label(&self) -> &'static str {
        use EgressError as E;
        match self {
            E::Destination(_) | E::Denied { .. } => "deny",
            E::ApprovalRequired { .. } => "require_approval",
            E::Resolve(_) | E::Connect(_) | E::Audit(_) | E::Io(_) => "error",
            E::Config { .. }
            | E::Malformed(_)
            | E::HeadTooLarge
            | E::HeadTimeout
            | E::NoToken
            | E::Token(_)
            | E::NotReady
            | E::TargetUnknown
            | E::Refused(_)
            | E::ConnectionLimit => "refused",
        }
    }
}

/// The status line's text.
pub(crate) fn title(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The full response for an answer: problem JSON (RFC 9457), `Connection: close`.
pub(crate) fn render(a: &Answer) -> Vec<u8> {
    let title = title(a.status);
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": a.status,
        "reason": a.reason.as_str(),
    })
    .to_string();
    let mut out = format!("HTTP/1.1 {} {title}\r\n", a.status);
    if let Some(c) = a.authenticate {
        out.push_str(&format!("Proxy-Authenticate: {c}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}
