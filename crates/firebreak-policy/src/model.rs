//! What a decision is asked about: the inventory the entities come from, and one request.
//!
//! These are plain data; [`Pdp`](crate::Pdp) turns them into Cedar values.

use std::str::FromStr;

use crate::PolicyError;

/// One registered agent, as the broker's config or store knows it. Becomes `Agent::"<id>"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAttrs {
    /// The agent id (the Cedar entity id).
    pub id: String,
    /// Who owns the agent (a person or team identity).
    pub owner: String,
    /// Tenant the agent belongs to.
    pub tenant: String,
    /// Environment (e.g. `prod`, `staging`).
    pub environment: String,
    /// Privilege tier.
    pub tier: String,
    /// Declared purpose.
    pub purpose: String,
}

/// One registered target (an audience). Becomes `Target::"<id>"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetAttrs {
    /// The target id (the Cedar entity id).
    pub id: String,
    /// Tenant the target belongs to.
    pub tenant: String,
    /// Environment.
    pub environment: String,
    /// Privilege tier.
    pub tier: String,
    /// Kind of target (e.g. `mcp`, `http`).
    pub kind: String,
}

/// Everything the PDP knows by name. Tools and hosts are not listed: they are made per request
/// from [`Resource::Tool`] and [`Resource::Host`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Registered agents.
    pub agents: Vec<AgentAttrs>,
    /// Registered targets.
    pub targets: Vec<TargetAttrs>,
    /// Approver ids (`Approver::"<id>"`).
    pub approvers: Vec<String>,
}

/// The seven actions of DESIGN.md §5. [`Action::as_str`] is the Cedar action id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `exchange`: Agent → Target.
    Exchange,
    /// `call_tool`: Agent → Tool.
    CallTool,
    /// `http_request`: Agent → Target.
    HttpRequest,
    /// `egress_connect`: Agent → Host.
    EgressConnect,
    /// `elevate`: Agent → Target.
    Elevate,
    /// `approve`: Approver → Target.
    Approve,
    /// `break_glass`: Approver → Agent.
    BreakGlass,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 7] = [
        Action::Exchange,
        Action::CallTool,
        Action::HttpRequest,
        Action::EgressConnect,
        Action::Elevate,
        Action::Approve,
        Action::BreakGlass,
    ];

    /// The Cedar action id (`Action::"<this>"`), also the wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Exchange => "exchange",
            Action::CallTool => "call_tool",
            Action::HttpRequest => "http_request",
            Action::EgressConnect => "egress_connect",
            Action::Elevate => "elevate",
            Action::Approve => "approve",
            Action::BreakGlass => "break_glass",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownAction {
                action: s.to_owned(),
            })
    }
}

/// Who asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal<'a> {
    /// `Agent::"<agent id>"`.
    Agent(&'a str),
    /// `Approver::"<id>"`.
    Approver(&'a str),
}

/// What is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `Target::"<target id>"`.
    Target(&'a str),
    /// `Tool::"<target>/<tool>"`, child of `Target::"<target>"`.
    Tool {
        /// The target id the tool belongs to.
        target: &'a str,
        /// The tool name.
        tool: &'a str,
    },
    /// `Host::"<host>:<port>"`. The PDP lower-cases the host, drops one trailing dot and
    /// normalises IP literals (IPv6 as `[addr]`), so a caller cannot dodge a `forbid` by spelling.
    Host {
        /// Host name or IP literal (IPv6 with or without brackets).
        host: &'a str,
        /// TCP port.
        port: u16,
    },
    /// `Agent::"<agent id>"` (the resource of `break_glass`).
    Agent(&'a str),
}

/// The `session` member of the context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionCtx {
    /// Session id.
    pub id: String,
    /// Delegation depth (0 for a root session).
    pub depth: i64,
    /// Seconds since the session started.
    pub age_seconds: i64,
}

/// The Cedar `context` record. Members that an action has none of stay at their default
/// (`http`/`session` absent, empty sets, `false`, empty strings, 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// Granted or requested scopes.
    pub scope: Vec<String>,
    /// `(method, normalised path)` of an HTTP request.
    pub http: Option<(String, String)>,
    /// The session the request belongs to.
    pub session: Option<SessionCtx>,
    /// Active elevations, each `"<action>:<target id>"` (DESIGN.md §9).
    pub elevations: Vec<String>,
    /// Whether break-glass is open for the agent.
    pub break_glass: bool,
    /// Environment of the request.
    pub env: String,
    /// Tenant of the request.
    pub tenant: String,
    /// Purpose of the request.
    pub purpose: String,
    /// Whether the presented token is DPoP-bound.
    pub dpop_bound: bool,
    /// Decision time, Unix seconds (from the caller's `Clock`; the PDP never reads a clock).
    pub time: i64,
}

/// One question for the PDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Who asks.
    pub principal: Principal<'a>,
    /// What they want to do.
    pub action: Action,
    /// To what.
    pub resource: Resource<'a>,
    /// The circumstances.
    pub context: Context,
}

/// The Cedar entity id of a host resource, normalised (see [`Resource::Host`]).
#[must_use]
pub fn host_id(host: &str, port: u16) -> String {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(trimmed);
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => format!("{v4}:{port}"),
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{port}"),
            None => format!("[{v6}]:{port}"),
        },
        Err(_) => format!("{}:{port}", trimmed.to_ascii_lowercase()),
    }
}
