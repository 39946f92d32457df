//! Shared fixtures for the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::panic, reason = "test fixtures fail the test by panicking")]

use firebreak_policy::{
    Action, AgentAttrs, Context, Inventory, Pdp, Principal, Request, Resource, TargetAttrs,
};

pub fn agent(id: &str, env: &str, tier: &str) -> AgentAttrs {
    AgentAttrs {
        id: id.into(),
        owner: format!("{id}-owner"),
        tenant: "acme".into(),
        environment: env.into(),
        tier: tier.into(),
        purpose: "ci".into(),
    }
}

pub fn target(id: &str, env: &str, tier: &str) -> TargetAttrs {
    TargetAttrs {
        id: id.into(),
        tenant: "acme".into(),
        environment: env.into(),
        tier: tier.into(),
        kind: "mcp".into(),
    }
}

pub fn inventory() -> Inventory {
    Inventory {
        agents: vec![
            agent("deploy-bot", "prod", "high"),
            agent("lint-bot", "staging", "low"),
        ],
        targets: vec![
            target("github-tools", "prod", "high"),
            target("staging-api", "staging", "low"),
        ],
        approvers: vec!["alice".into()],
    }
}

pub fn pdp(policies: &str) -> Pdp {
    match Pdp::from_sources(&[("p.cedar".into(), policies.into())], None, &inventory()) {
        Ok(pdp) => pdp,
        Err(e) => panic!("load failed: {e}"),
    }
}

pub fn req<'a>(
    agent: &'a str,
    action: Action,
    resource: Resource<'a>,
    context: Context,
) -> Request<'a> {
    Request {
        principal: Principal::Agent(agent),
        action,
        resource,
        context,
    }
}

/// Decision as (wire, reasons in test notation), for exact comparisons.
pub fn summary(d: &firebreak_policy::Decision) -> (&'static str, Vec<String>) {
    (
        d.wire(),
        d.reasons().iter().map(ToString::to_string).collect(),
    )
}
