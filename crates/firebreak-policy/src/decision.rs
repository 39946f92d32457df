//! The PDP's answer: a [`Decision`] the caller must match on, each variant carrying its reasons
//! and the policy version that produced it (STYLE.md §5).

use std::sync::Arc;

/// Reason code: no permit matched (Cedar's default deny).
pub const NO_MATCHING_PERMIT: &str = "no_matching_permit";
/// Reason code: a policy failed to evaluate, or the request did not fit the schema.
pub const POLICY_ERROR: &str = "policy_error";
/// Reason code: the principal or resource is not in the inventory.
pub const UNKNOWN_ENTITY: &str = "unknown_entity";

/// One reason as on the wire: `{"policy": "<@id>"}` or `{"code": "<snake_case>"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum ReasonRef {
    /// A policy, by its `@id`.
    Policy {
        /// The `@id`.
        policy: String,
    },
    /// A reason code (DESIGN.md §9).
    Code {
        /// The snake_case code.
        code: String,
    },
}

impl ReasonRef {
    pub(crate) fn code(code: &str) -> Self {
        ReasonRef::Code {
            code: code.to_owned(),
        }
    }

    pub(crate) fn policy(id: &str) -> Self {
        ReasonRef::Policy {
            policy: id.to_owned(),
        }
    }
}

impl std::fmt::Display for ReasonRef {
    /// `<@id>` for a policy, `code:<code>` for a code (the policy-test notation).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReasonRef::Policy { policy } => f.write_str(policy),
            ReasonRef::Code { code } => write!(f, "code:{code}"),
        }
    }
}

/// The PDP's answer. Variants are verbs, and each one carries its reasons.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; the permits that allowed it are the reasons.
    Allow(Permit),
    /// Refused; forbids, a code, or `policy_error` with the erroring policies.
    Deny(Denial),
    /// Allowed only once approved: a determining permit has `@approval("required")`.
    RequireApproval(Pending),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    policy_version: Arc<str>,
    reasons: Vec<ReasonRef>,
}

/// Proof of an `Allow`. Private fields: only `firebreak-policy` builds one, so code taking a
/// `Permit` cannot be reached without a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permit(Outcome);

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial(Outcome);

/// A request that needs an approval for exactly this action and resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending(Outcome);

macro_rules! outcome_accessors {
    ($t:ident) => {
        impl $t {
            /// The reasons, policy ids sorted, codes first.
            #[must_use]
            pub fn reasons(&self) -> &[ReasonRef] {
                &self.0.reasons
            }

            /// `sha256:<hex>` of the policy set and schema that decided.
            #[must_use]
            pub fn policy_version(&self) -> &str {
                &self.0.policy_version
            }
        }
    };
}
outcome_accessors!(Permit);
outcome_accessors!(Denial);
outcome_accessors!(Pending);

impl Decision {
    pub(crate) fn allow(version: &Arc<str>, reasons: Vec<ReasonRef>) -> Self {
        Decision::Allow(Permit(Outcome {
            policy_version: Arc::clone(version),
            reasons,
        }))
    }

    pub(crate) fn deny(version: &Arc<str>, reasons: Vec<ReasonRef>) -> Self {
        Decision::Deny(Denial(Outcome {
            policy_version: Arc::clone(version),
            reasons,
        }))
    }

    pub(crate) fn require_approval(version: &Arc<str>, reasons: Vec<ReasonRef>) -> Self {
        Decision::RequireApproval(Pending(Outcome {
            policy_version: Arc::clone(version),
            reasons,
        }))
    }

    /// `"allow"`, `"deny"` or `"require_approval"`, as on the wire.
    #[must_use]
    pub fn wire(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::RequireApproval(_) => "require_approval",
        }
    }

    /// The reasons of whichever variant this is.
    #[must_use]
    pub fn reasons(&self) -> &[ReasonRef] {
        match self {
            Decision::Allow(p) => p.reasons(),
            Decision::Deny(d) => d.reasons(),
            Decision::RequireApproval(p) => p.reasons(),
        }
    }

    /// The policy version of whichever variant this is.
    #[must_use]
    pub fn policy_version(&self) -> &str {
        match self {
            Decision::Allow(p) => p.policy_version(),
            Decision::Deny(d) => d.policy_version(),
            Decision::RequireApproval(p) => p.policy_version(),
        }
    }
}
