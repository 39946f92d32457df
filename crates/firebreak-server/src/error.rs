//! The broker's one error type and the exhaustive mappings that decide what a peer sees: OAuth
//! JSON (RFC 6749 §5.2) on `/oauth2/*`, problem JSON (RFC 9457) on `/v1/*`. The body comes from
//! the code alone; detail goes to the log under the request id, never to the peer.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use firebreak_core::Reason;
use firebreak_store::StoreError;
use firebreak_token::TokenError;

use crate::form::FormError;
use crate::scope::ScopeError;

/// Why a subject or actor token was refused. All of these answer `invalid_request` (RFC 8693
/// §2.2.2); the variant is the reason code in logs, metrics and (later) audit.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// Malformed, badly signed, expired, wrong type … (the token crate's cause).
    #[error("token: {0}")]
    Token(#[from] TokenError),
    /// `iss` is no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// The token type parameter does not fit the token (an at+jwt as id_token, …).
    #[error("subject_token_type does not fit the token")]
    TypeMismatch,
    /// No agent is bound to this issuer at all.
    #[error("no agent matches")]
    NoAgentMatch,
    /// Agents are bound to this issuer, but a claim differs from each rule.
    #[error("trust rule mismatch on claim {claim:?}")]
    TrustRuleMismatch {
        /// The first claim that failed (of the nearest rule).
        claim: String,
    },
    /// Several agents match (a config the checks should have refused).
    #[error("several agents match")]
    AmbiguousAgent,
    /// The agent's registration has expired.
    #[error("agent registration expired")]
    AgentExpired,
    /// The token, its session, an ancestor session or its agent was revoked; or the agent is
    /// no longer in the inventory.
    #[error("revoked")]
    Revoked,
    /// The token's `kid` is unknown and the issuer's keys cannot be fetched.
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// The store could not say whether the token is revoked: fail closed (503).
    #[error("store unavailable")]
    StoreUnavailable,
    /// The token is DPoP-bound (`cnf.jkt`) and the request proves possession of no key, or of
    /// another one (RFC 9449 §6: a bound token is useless without its key).
    #[error("DPoP-bound token without a proof of its key")]
    DpopBindingMismatch,
}

impl SubjectError {
    /// The reason code.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Token(e) => token_reason(e),
            Self::UnknownIssuer => Reason::UnknownIssuer,
            Self::TypeMismatch => Reason::TokenTypeMismatch,
            Self::NoAgentMatch => Reason::NoAgentMatch,
            Self::TrustRuleMismatch { .. } => Reason::TrustRuleMismatch,
            Self::AmbiguousAgent => Reason::AmbiguousAgent,
            Self::AgentExpired => Reason::AgentExpired,
            Self::Revoked => Reason::Revoked,
            Self::KeysUnavailable => Reason::IssuerKeysUnavailable,
            Self::StoreUnavailable => Reason::StoreUnavailable,
            Self::DpopBindingMismatch => Reason::DpopBindingMismatch,
        }
    }
}

/// Reason codes for token-crate refusals. Exhaustive on purpose: a new refusal in the token
/// crate does not compile here until someone picks its code.
pub fn token_reason(e: &TokenError) -> Reason {
    use TokenError as T;
    match e {
        T::TokenTooLarge => Reason::TokenTooLarge,
        T::TokenExpired | T::NotYetValid | T::IssuedInFuture | T::TooOld => Reason::TokenExpired,
        T::IssuerKeysUnavailable => Reason::IssuerKeysUnavailable,
        T::WrongTokenType => Reason::TokenTypeMismatch,
        T::DpopKeyMissing | T::DpopBadJti | T::DpopClaimMismatch { .. } | T::DpopReplayed => {
            Reason::InvalidDpopProof
        }
        T::DpopReplayCacheFull => Reason::DpopReplayCacheFull,
        T::Malformed
        | T::JweNotSupported
        | T::JsonSerializationNotSupported
        | T::BadBase64(_)
        | T::BadJson(_)
        | T::NotAnObject(_)
        | T::DuplicateMember(_)
        | T::JsonTooDeep(_)
        | T::MissingAlgorithm
        | T::AlgorithmNotAllowed
        | T::AlgorithmMismatch { .. }
        | T::EmbeddedKeyRefused
        | T::UnsupportedCritical
        | T::UnencodedPayloadRefused
        | T::NestedJwtRefused
        | T::HeaderMemberType { .. }
        | T::BadKid
        | T::UnknownKey
        | T::SignatureLength
        | T::BadSignature
        | T::BadKeyDocument
        | T::JwkMember { .. }
        | T::UnsupportedKeyType
        | T::UnsupportedCurve
        | T::PrivateKeyMaterial
        | T::KeyUseNotSig
        | T::KeyOpsNoVerify
        | T::KeyAlgorithmMismatch
        | T::BadKeyMaterial
        | T::RsaKeySize { .. }
        | T::RsaExponent
        | T::RsaRocaVulnerable
        | T::MissingClaim { .. }
        | T::ClaimType { .. }
        | T::NumericDateOutOfRange { .. }
        | T::TimeOverflow
        | T::IssuerMismatch
        | T::AudienceMismatch
        | T::MultipleAudiencesRefused
        | T::AuthorizedPartyMismatch
        | T::UnsupportedSigningAlgorithm
        | T::PrivateKeyRejected
        | T::SigningFailed
        | T::ApiMisuse(_) => Reason::InvalidToken,
    }
}

/// Everything that can go wrong in the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The body is larger than 64 KiB.
    #[error("request body too large")]
    BodyTooLarge,
    /// Not `application/x-www-form-urlencoded`.
    #[error("unsupported content type")]
    NotForm,
    /// The form does not parse or repeats a parameter.
    #[error("malformed form: {0:?}")]
    Form(FormError),
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// `grant_type` is not token exchange.
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    /// `subject_token_type`/`actor_token_type` is not one we accept.
    #[error("unsupported token type")]
    UnsupportedTokenType,
    /// The subject token was refused.
    #[error("subject token: {0}")]
    Subject(SubjectError),
    /// The actor token was refused.
    #[error("actor token: {0}")]
    Actor(SubjectError),
    /// The subject does not allow this actor (`may_act`), or the chain is too deep.
    #[error("delegation not allowed")]
    Delegation,
    /// The subject token was already used.
    #[error("subject token replayed")]
    Replay,
    /// The `DPoP` header is repeated, or its proof was refused (RFC 9449 §4.3), or replayed.
    #[error("DPoP proof: {0}")]
    DpopProof(TokenError),
    /// The DPoP replay cache is full of live proofs: no proof can be checked for replay, so none
    /// is accepted (fail closed) until some expire.
    #[error("DPoP replay cache full")]
    DpopCacheFull,
    /// The audience/resource is not exactly one registered target.
    #[error("target not registered")]
    TargetNotRegistered,
    /// The target is in another tenant or environment than the agent (or above its tier).
    #[error("target in another tenant, environment or tier")]
    CrossEnvironment,
    /// The policy refused (target, scope, or approval required), with its reasons.
    #[error("denied by policy: {0:?}")]
    Denied(Box<crate::decider::Denial>),
    /// A named elevation or break-glass window is expired, used, denied or someone else's.
    #[error("grant not usable")]
    GrantUnusable,
    /// A self-approval: the approver is the requester, the agent's owner or in the act chain.
    #[error("self-approval refused")]
    SelfApproval,
    /// The scope is malformed or beyond what is granted.
    #[error("scope refused: {0}")]
    Scope(Reason),
    /// Every bound leaves no lifetime (the subject or parent is about to expire).
    #[error("no lifetime left")]
    NoLifetime,
    /// Client authentication failed. `basic`: the client used the Authorization header.
    #[error("client authentication failed")]
    ClientAuth {
        /// Whether to answer with `WWW-Authenticate: Basic`.
        basic: bool,
    },
    /// Authenticated, but this client (or agent) may not do this.
    #[error("not authorised for this endpoint")]
    Forbidden,
    /// The token to revoke belongs to someone else (RFC 7009 §2.1).
    #[error("token belongs to another client")]
    NotOwner,
    /// Admin API: missing or invalid credentials.
    #[error("unauthenticated")]
    Unauthenticated,
    /// Admin API: no such object.
    #[error("not found")]
    NotFound,
    /// Admin API: a bad argument.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Admin API: the operation conflicts with current state.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// An ingested audit chain was refused (the cause is logged).
    #[error("ingest refused: {0}")]
    IngestRefused(String),
    /// The audit record could not be made durable within the write deadline: fail closed.
    #[error("audit unavailable: {0}")]
    AuditUnavailable(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Signing or key handling failed.
    #[error("signing: {0}")]
    Signing(String),
}

impl BrokerError {
    /// The reason code for logs and metrics.
    pub fn reason(&self) -> Reason {
        use BrokerError as E;
        match self {
            E::Subject(s) | E::Actor(s) => s.reason(),
            E::Delegation => Reason::DelegationNotAllowed,
            E::Replay => Reason::Replay,
            // Whatever was wrong with the proof, the peer learns only that it was (the log has
            // the cause); a client's fix is the same: a fresh, correct proof.
            E::DpopProof(_) => Reason::InvalidDpopProof,
            E::DpopCacheFull => Reason::DpopReplayCacheFull,
            E::TargetNotRegistered => Reason::AudienceNotRegistered,
            E::CrossEnvironment => Reason::CrossEnvironment,
            E::Scope(r) => *r,
            E::Denied(d) => match d.kind {
                crate::decider::DenialKind::Target(r) | crate::decider::DenialKind::Scope(r) => r,
                crate::decider::DenialKind::Approval => Reason::ApprovalRequired,
            },
            E::GrantUnusable => Reason::GrantUnusable,
            E::SelfApproval => Reason::SelfApproval,
            E::NoLifetime => Reason::TokenExpired,
            E::Store(_) | E::Signing(_) => Reason::StoreUnavailable,
            E::AuditUnavailable(_) => Reason::AuditUnavailable,
            E::IngestRefused(_) => Reason::AuditChainRejected,
            E::BodyTooLarge
            | E::NotForm
            | E::Form(_)
            | E::Missing(_)
            | E::UnsupportedGrantType
            | E::UnsupportedTokenType
            | E::ClientAuth { .. }
            | E::Forbidden
            | E::NotOwner
            | E::Unauthenticated
            | E::NotFound
            | E::BadRequest(_)
            | E::Conflict(_) => Reason::MalformedRequest,
        }
    }

    /// The OAuth answer (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 7009, RFC 7662).
    pub fn oauth(&self) -> (StatusCode, &'static str) {
        use BrokerError as E;
        match self {
            E::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            E::NotForm | E::Form(_) | E::Missing(_) | E::UnsupportedTokenType => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            E::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            // RFC 9449 §5: the token endpoint's error for a missing-but-required, invalid or
            // unacceptable proof.
            E::DpopProof(_) => (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
            // RFC 8693 §2.2.2: a subject/actor token that is invalid or unacceptable.
            E::Subject(_) | E::Actor(_) | E::Delegation | E::Replay | E::NoLifetime => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            // RFC 8693 §2.2.2: we won't issue for this target.
            E::TargetNotRegistered | E::CrossEnvironment => {
                (StatusCode::BAD_REQUEST, "invalid_target")
            }
            E::Denied(d) => match d.kind {
                crate::decider::DenialKind::Scope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
                // An approval-only allow is not an allow: the agent must ask for an elevation.
                crate::decider::DenialKind::Target(_) | crate::decider::DenialKind::Approval => {
                    (StatusCode::BAD_REQUEST, "invalid_target")
                }
            },
            E::Scope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            // SECURITY-TESTS §0: a Firebreak grant that has expired, been used or is bound to
            // someone else is invalid_grant.
            E::GrantUnusable => (StatusCode::BAD_REQUEST, "invalid_grant"),
            E::SelfApproval => (StatusCode::FORBIDDEN, "unauthorized_client"),
            E::ClientAuth { .. } | E::Unauthenticated => {
                (StatusCode::UNAUTHORIZED, "invalid_client")
            }
            E::Forbidden => (StatusCode::FORBIDDEN, "unauthorized_client"),
            E::NotOwner => (StatusCode::BAD_REQUEST, "invalid_grant"),
            E::NotFound | E::BadRequest(_) | E::Conflict(_) | E::IngestRefused(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            // Our outage, not the caller's mistake (RFC 6749 §4.1.2.1's code).
            E::Store(_) | E::Signing(_) | E::AuditUnavailable(_) | E::DpopCacheFull => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
        }
    }

    /// The admin API answer: status and problem `type` slug.
    pub fn problem(&self) -> (StatusCode, &'static str) {
        use BrokerError as E;
        match self {
            E::Unauthenticated | E::ClientAuth { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            E::Forbidden | E::NotOwner => (StatusCode::FORBIDDEN, "forbidden"),
            E::SelfApproval => (StatusCode::FORBIDDEN, "self-approval"),
            E::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
            E::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            E::Store(_) | E::Signing(_) | E::AuditUnavailable(_) | E::DpopCacheFull => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            E::BadRequest(_)
            | E::IngestRefused(_)
            | E::NotForm
            | E::Form(_)
            | E::Missing(_)
            | E::UnsupportedGrantType
            | E::UnsupportedTokenType
            | E::Subject(_)
            | E::Actor(_)
            | E::Delegation
            | E::Replay
            | E::DpopProof(_)
            | E::TargetNotRegistered
            | E::CrossEnvironment
            | E::GrantUnusable
            | E::Scope(_)
            | E::NoLifetime => (StatusCode::BAD_REQUEST, "bad-request"),
        }
    }
}

impl BrokerError {
    /// A refused subject token; a store outage while checking it is our outage, not the
    /// caller's mistake, and answers 503.
    pub fn subject(e: SubjectError) -> Self {
        match e {
            SubjectError::StoreUnavailable => {
                Self::Store(StoreError::Database("revocation check".into()))
            }
            other => Self::Subject(other),
        }
    }

    /// A refused actor token (same rule as [`BrokerError::subject`]).
    pub fn actor(e: SubjectError) -> Self {
        match e {
            SubjectError::StoreUnavailable => {
                Self::Store(StoreError::Database("revocation check".into()))
            }
            other => Self::Actor(other),
        }
    }
}

impl From<FormError> for BrokerError {
    fn from(e: FormError) -> Self {
        Self::Form(e)
    }
}

impl From<ScopeError> for BrokerError {
    fn from(_: ScopeError) -> Self {
        Self::Scope(Reason::ScopeNotGranted)
    }
}

/// An OAuth error response.
pub struct OAuthError(pub BrokerError);

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code) = self.0.oauth();
        let body =
            serde_json::json!({ "error": code, "error_description": self.0.reason().as_str() });
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self.0, BrokerError::ClientAuth { basic: true }) {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"firebreak\""),
            );
        } else if matches!(self.0, BrokerError::Unauthenticated) {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"firebreak\""),
            );
        }
        if matches!(
            self.0,
            BrokerError::Store(_)
                | BrokerError::Signing(_)
                | BrokerError::AuditUnavailable(_)
                | BrokerError::DpopCacheFull
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A problem-JSON response (RFC 9457) for the admin API.
pub struct Problem(pub BrokerError);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, slug) = self.0.problem();
        let body = serde_json::json!({
            "type": format!("https://firebreak.dev/problems/{slug}"),
            "title": slug,
            "status": status.as_u16(),
            "detail": self.0.reason().as_str(),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"firebreak\""),
            );
        }
        resp
    }
}
