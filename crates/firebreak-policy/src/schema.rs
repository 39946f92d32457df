//! The built-in Cedar schema: Firebreak's entity types, actions and the one context record.
//!
//! A policy directory without `schema.cedarschema` is validated against [`SCHEMA`]. A directory
//! may ship its own schema, but the PDP still builds entities and contexts of this shape, so a
//! schema that disagrees with it makes loading (entities) or deciding (requests) fail closed.

/// Firebreak's Cedar schema (no namespace; entity ids per DESIGN.md §9).
pub const SCHEMA: &str = r#"// Firebreak's built-in Cedar schema.
entity Agent = {
  owner: String,
  tenant: String,
  environment: String,
  tier: String,
  purpose: String,
};
entity Target = {
  tenant: String,
  environment: String,
  tier: String,
  kind: String,
};
// Tool::"<target id>/<tool name>", whose parent is its Target.
entity Tool in [Target] = {
  name: String,
};
// Host::"<host>:<port>", host lower-case, IP literals normalised.
entity Host = {
  name: String,
  port: Long,
};
entity Approver = {
  emails?: Set<String>,
};

type Http = { method: String, path: String };
type Session = { id: String, depth: Long, age_seconds: Long };
// One context record for every action; `http` and `session` only where the action has them.
type Ctx = {
  scope: Set<String>,
  http?: Http,
  session?: Session,
  elevations: Set<String>,
  break_glass: Bool,
  env: String,
  tenant: String,
  purpose: String,
  dpop_bound: Bool,
  time: Long,
};

action exchange appliesTo { principal: Agent, resource: Target, context: Ctx };
action call_tool appliesTo { principal: Agent, resource: Tool, context: Ctx };
action http_request appliesTo { principal: Agent, resource: Target, context: Ctx };
action egress_connect appliesTo { principal: Agent, resource: Host, context: Ctx };
action elevate appliesTo { principal: Agent, resource: Target, context: Ctx };
action approve appliesTo { principal: Approver, resource: Target, context: Ctx };
action break_glass appliesTo { principal: Approver, resource: Agent, context: Ctx };
"#;
