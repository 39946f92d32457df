//! Reason codes (DESIGN.md §9): the only words about a refusal that leave the process, in
//! `error_description`, problem bodies, audit records and metric labels.

use std::fmt;

/// A stable, snake_case reason code. Adding one means adding it to the README's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing permitted the request (default deny).
    NoMatchingPermit,
    /// An explicit rule forbade it.
    ForbiddenByPolicy,
    /// Policy evaluation failed; failing closed.
    PolicyError,
    /// The subject token did not satisfy the agent's identity rule.
    TrustRuleMismatch,
    /// No registered agent matches the subject token.
    NoAgentMatch,
    /// More than one agent matches the subject token.
    AmbiguousAgent,
    /// The matching agent's registration has expired.
    AgentExpired,
    /// The subject token was already used.
    Replay,
    /// A token was expired (or not yet valid).
    TokenExpired,
    /// The issuer's keys could not be fetched and no good copy is left.
    IssuerKeysUnavailable,
    /// The audience or resource is not a registered target.
    AudienceNotRegistered,
    /// A requested scope is not granted.
    ScopeNotGranted,
    /// The target's tenant or environment differs from the agent's.
    CrossEnvironment,
    /// The token, session or agent was revoked.
    Revoked,
    /// An elevation has expired.
    ElevationExpired,
    /// An approver tried to approve their own request.
    SelfApproval,
    /// The store could not be reached.
    StoreUnavailable,
    /// The audit log could not record the decision.
    AuditUnavailable,
    /// The revocation feed went quiet.
    EventStreamStale,
    /// The subject or actor token is malformed or fails verification.
    InvalidToken,
    /// The token request itself is malformed.
    MalformedRequest,
    /// The delegation (`actor_token`, `act`) is not permitted.
    DelegationNotAllowed,
    /// The subject token's issuer is not trusted.
    UnknownIssuer,
    /// The token type does not fit the token (an id_token sent as access_token, …).
    TokenTypeMismatch,
    /// The token is larger than the configured limit.
    TokenTooLarge,
    /// An ingested audit chain did not verify.
    AuditChainRejected,
    /// Policy allows this only with a human's approval: ask for an elevation.
    ApprovalRequired,
    /// A named elevation or break-glass window is not usable (expired, used, someone else's).
    GrantUnusable,
    /// The caller is not an approver, or not one who may act on this.
    NotAnApprover,
    /// A valid Firebreak token for another audience than the route's target.
    AudienceMismatch,
    /// The token is DPoP-bound (or the route requires DPoP) and no valid proof came with it.
    DpopRequired,
    /// The MCP tool is not one the agent may call, or does not exist.
    UnknownTool,
    /// The request's `Origin` or `Host` is not one this enforcement point serves.
    OriginNotAllowed,
    /// The upstream could not be reached or did not answer in time.
    UpstreamUnavailable,
    /// A held call's approval was denied, or not decided within the hold.
    ApprovalPending,
    /// The request is not one this protocol allows (a JSON-RPC batch, a malformed message).
    ProtocolViolation,
    /// A DPoP proof (RFC 9449) is malformed, badly signed, stale, replayed or for another
    /// request; also the OAuth error code the token endpoint answers with (RFC 9449 §5).
    InvalidDpopProof,
    /// The subject token is DPoP-bound and the request carries no proof of its key.
    DpopBindingMismatch,
    /// The DPoP replay cache is full of live proofs; new proofs are refused until some expire.
    DpopReplayCacheFull,
    /// An egress destination that is not allowed as written or as resolved: a private,
    /// loopback, link-local, multicast, reserved or documentation address (or an IPv4-mapped or
    /// NAT64 form of one) that no policy names exactly, or a host that is not a valid name.
    DestinationNotAllowed,
    /// The agent already holds as many egress connections as it may.
    ConnectionLimit,
    /// This enforcement point's clock differs from the broker's (as its heartbeats tell) by
    /// more than the leeway; nothing is decided until it is back within.
    ClockSkew,
}

impl Reason {
    /// The wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoMatchingPermit => "no_matching_permit",
            Self::ForbiddenByPolicy => "forbidden_by_policy",
            Self::PolicyError => "policy_error",
            Self::TrustRuleMismatch => "trust_rule_mismatch",
            Self::NoAgentMatch => "no_agent_match",
            Self::AmbiguousAgent => "ambiguous_agent",
            Self::AgentExpired => "agent_expired",
            Self::Replay => "replay",
            Self::TokenExpired => "token_expired",
            Self::IssuerKeysUnavailable => "issuer_keys_unavailable",
            Self::AudienceNotRegistered => "audience_not_registered",
            Self::ScopeNotGranted => "scope_not_granted",
            Self::CrossEnvironment => "cross_environment",
            Self::Revoked => "revoked",
            Self::ElevationExpired => "elevation_expired",
            Self::SelfApproval => "self_approval",
            Self::StoreUnavailable => "store_unavailable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::EventStreamStale => "event_stream_stale",
            Self::InvalidToken => "invalid_token",
            Self::MalformedRequest => "malformed_request",
            Self::DelegationNotAllowed => "delegation_not_allowed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::TokenTypeMismatch => "token_type_mismatch",
            Self::TokenTooLarge => "token_too_large",
            Self::AuditChainRejected => "audit_chain_rejected",
            Self::ApprovalRequired => "approval_required",
            Self::GrantUnusable => "elevation_expired",
            Self::NotAnApprover => "not_an_approver",
            Self::AudienceMismatch => "audience_mismatch",
            Self::DpopRequired => "dpop_required",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UnknownTool => "unknown_tool",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::ApprovalPending => "approval_pending",
            Self::ProtocolViolation => "protocol_violation",
            Self::DpopBindingMismatch => "dpop_binding_mismatch",
            Self::DpopReplayCacheFull => "dpop_replay_cache_full",
            Self::DestinationNotAllowed => "destination_not_allowed",
            Self::ConnectionLimit => "connection_limit",
            Self::ClockSkew => "clock_skew",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
