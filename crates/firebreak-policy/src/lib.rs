//! Firebreak's Cedar policy decision point (DESIGN.md §5): loads and validates a policy set,
//! builds entities from the inventory once, and answers each request with a [`Decision`] that
//! carries its reasons and the policy version. No network, no clock: time is passed in
//! [`Context::time`]. The broker owns HTTP, the store, elevations, approvals and break-glass
//! state; it fills [`Context`] and swaps an `Arc<Pdp>` on reload.
//!
//! # Cedar model
//!
//! No namespace. Entities `Agent::"<agent id>"`, `Target::"<target id>"`,
//! `Tool::"<target id>/<tool name>"` (parent: its target), `Host::"<host>:<port>"`,
//! `Approver::"<id>"`; actions `exchange`, `call_tool`, `http_request`, `egress_connect`,
//! `elevate`, `approve`, `break_glass`; one context record for all actions. See [`SCHEMA`].
//! Validation is strict, so a policy that reads an optional member (`context.http`,
//! `context.session`) must guard it with `has`, or it is refused at load.
//!
//! # Decisions
//!
//! Default deny. See [`Pdp::decide`] for the full mapping: a matching forbid denies with its
//! id; matching permits allow with theirs (or `require_approval` under
//! `@approval("required")`); any evaluation error denies with `code:policy_error` and the
//! erroring ids; an unknown principal or resource denies with `code:unknown_entity`.
//!
//! # Slicing
//!
//! Cedar evaluates every policy it is handed. [`Pdp::decide`] hands it only the policies whose
//! scope can match the request's (principal, action, resource), from a bounded cache of
//! per-triple policy sets and entity sets; [`Pdp::decide_unsliced`] is the whole-set reference.
//!
//! # Policy tests (`*.test.toml`)
//!
//! [`run_tests`] reads every `*.test.toml` beside the policies. Each file is a list of cases;
//! unknown keys are refused:
//!
//! ```toml
//! [[case]]
//! name = "deploy-bot may get github-tools"
//! principal = { agent = "deploy-bot" }     # or { approver = "alice" }
//! action = "exchange"                       # any of the seven actions
//! resource = { target = "github-tools" }   # or { tool = "github-tools/create_issue" },
//!                                          #    { host = "api.github.com:443" }, { agent = "x" }
//! # Any Context member; a missing one takes its default (empty, false, 0, absent).
//! context = { scope = ["repo:read"], break_glass = false, elevations = [], time = 1700000000 }
//! # context.http = { method = "GET", path = "/repos" }; context.session = { id = "s1", depth = 0, age_seconds = 5 }
//! expect = "allow"                          # allow | deny | require_approval
//! reasons = ["permit-deploy"]               # optional, order-insensitive: @ids and/or "code:<snake_case>"
//! ```
//!
//! A case passes when the decision matches and, if `reasons` is given, the reasons match as a
//! set. A directory without any case is an error: zero cases prove nothing.

#![forbid(unsafe_code)]

mod decision;
mod error;
mod load;
mod model;
mod pdp;
mod schema;
mod testing;

pub use decision::{
    Decision, Denial, NO_MATCHING_PERMIT, POLICY_ERROR, Pending, Permit, ReasonRef, UNKNOWN_ENTITY,
};
pub use error::PolicyError;
pub use model::{
    Action, AgentAttrs, Context, Inventory, Principal, Request, Resource, SessionCtx, TargetAttrs,
    host_id,
};
pub use pdp::Pdp;
pub use schema::SCHEMA;
pub use testing::{CaseResult, TestReport, run_tests};
