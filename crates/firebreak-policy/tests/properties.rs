//! Properties (STYLE.md §9): the sliced PDP agrees exactly with whole-set Cedar on random
//! requests over random policy sets, and with a tiny reference model on a policy family; an
//! evaluation error never yields an allow.

#![allow(
    clippy::indexing_slicing,
    reason = "generator indices are drawn from the arrays they index"
)]

mod common;

use std::fmt::Write as _;

use common::{agent, summary, target};
use firebreak_policy::{Action, Context, Decision, Inventory, Pdp, Principal, Request, Resource};
use proptest::prelude::*;

const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
const TARGETS: [&str; 3] = ["t0", "t1", "t2"];

fn inventory() -> Inventory {
    Inventory {
        agents: vec![
            agent("a0", "prod", "high"),
            agent("a1", "staging", "low"),
            agent("a2", "prod", "low"),
        ],
        targets: vec![
            target("t0", "prod", "high"),
            target("t1", "staging", "low"),
            target("t2", "prod", "low"),
        ],
        approvers: vec!["ap0".into()],
    }
}

// ---- random policy sets (schema-valid by construction) ----

#[derive(Clone, Debug)]
enum PScope {
    Any,
    EqAgent(usize),
    InAgent(usize),
    IsAgent,
    EqApprover,
    IsApprover,
}

#[derive(Clone, Debug)]
enum RScope {
    Any,
    EqTarget(usize),
    InTarget(usize),
    IsTarget,
    IsTool,
    EqTool(usize),
    IsToolInTarget(usize),
    EqHost,
    IsAgent,
}

#[derive(Clone, Debug)]
enum Cond {
    BreakGlass,
    NotBreakGlass,
    Elevation(usize, usize),
    HttpGet,
    ScopeRead,
    DpopBound,
    /// Errors whenever `context.time > 0` (integer overflow).
    Overflow,
    /// Errors whenever evaluated: the entity does not exist.
    GhostAttr,
    /// Reads an inventory entity named literally.
    LiteralAttr(usize),
    /// Needs `principal is Agent`.
    PrincipalTier,
    /// Needs `resource is Target`.
    ResourceEnv,
}

#[derive(Clone, Debug)]
struct GenPolicy {
    forbid: bool,
    approval: bool,
    principal: PScope,
    actions: Vec<Action>,
    resource: RScope,
    when: Vec<Cond>,
    unless: Option<Cond>,
}

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(Action::ALL.to_vec())
}

fn pscope() -> impl Strategy<Value = PScope> {
    prop_oneof![
        2 => Just(PScope::Any),
        3 => (0..3usize).prop_map(PScope::EqAgent),
        1 => (0..3usize).prop_map(PScope::InAgent),
        2 => Just(PScope::IsAgent),
        1 => Just(PScope::EqApprover),
        1 => Just(PScope::IsApprover),
    ]
}

fn rscope() -> impl Strategy<Value = RScope> {
    prop_oneof![
        2 => Just(RScope::Any),
        3 => (0..3usize).prop_map(RScope::EqTarget),
        2 => (0..3usize).prop_map(RScope::InTarget),
        1 => Just(RScope::IsTarget),
        1 => Just(RScope::IsTool),
        1 => (0..3usize).prop_map(RScope::EqTool),
        1 => (0..3usize).prop_map(RScope::IsToolInTarget),
        1 => Just(RScope::EqHost),
        1 => Just(RScope::IsAgent),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        3 => Just(Cond::BreakGlass),
        3 => Just(Cond::NotBreakGlass),
        3 => (0..2usize, 0..3usize).prop_map(|(a, t)| Cond::Elevation(a, t)),
        3 => Just(Cond::HttpGet),
        3 => Just(Cond::ScopeRead),
        3 => Just(Cond::DpopBound),
        1 => Just(Cond::Overflow),
        1 => Just(Cond::GhostAttr),
        3 => (0..3usize).prop_map(Cond::LiteralAttr),
        3 => Just(Cond::PrincipalTier),
        3 => Just(Cond::ResourceEnv),
    ]
}

fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    (
        any::<bool>(),
        any::<bool>(),
        pscope(),
        prop::collection::vec(action(), 0..3),
        rscope(),
        prop::collection::vec(cond(), 0..3),
        prop::option::weighted(0.2, cond()),
    )
        .prop_map(
            |(forbid, approval, principal, actions, resource, when, unless)| GenPolicy {
                forbid,
                approval: approval && !forbid,
                principal,
                actions,
                resource,
                when,
                unless,
            },
        )
}

fn cond_text(c: &Cond) -> String {
    match c {
        Cond::BreakGlass => "context.break_glass".into(),
        Cond::NotBreakGlass => "!context.break_glass".into(),
        Cond::Elevation(a, t) => {
            let a = ["exchange", "call_tool"][*a];
            format!("context.elevations.contains(\"{a}:{}\")", TARGETS[*t])
        }
        Cond::HttpGet => "context has http && context.http.method == \"GET\"".into(),
        Cond::ScopeRead => "context.scope.contains(\"read\")".into(),
        Cond::DpopBound => "context.dpop_bound".into(),
        Cond::Overflow => "context.time + 9223372036854775807 > 0".into(),
        Cond::GhostAttr => "Agent::\"ghost\".tier == \"high\"".into(),
        Cond::LiteralAttr(a) => format!("Agent::\"{}\".tier == \"high\"", AGENTS[*a]),
        Cond::PrincipalTier => "principal.tier == \"high\"".into(),
        Cond::ResourceEnv => "resource.environment == \"prod\"".into(),
    }
}

fn policy_text(id: usize, p: &GenPolicy) -> String {
    let mut out = format!("@id(\"p{id}\")\n");
    if p.approval {
        out.push_str("@approval(\"required\")\n");
    }
    let needs_agent = p
        .when
        .iter()
        .chain(&p.unless)
        .any(|c| matches!(c, Cond::PrincipalTier));
    let needs_target = p
        .when
        .iter()
        .chain(&p.unless)
        .any(|c| matches!(c, Cond::ResourceEnv));
    let principal = match (&p.principal, needs_agent) {
        (PScope::EqAgent(a), _) => format!("principal == Agent::\"{}\"", AGENTS[*a]),
        (PScope::InAgent(a), _) => format!("principal in Agent::\"{}\"", AGENTS[*a]),
        (PScope::IsAgent, _) | (_, true) => "principal is Agent".into(),
        (PScope::Any, false) => "principal".into(),
        (PScope::EqApprover, false) => "principal == Approver::\"ap0\"".into(),
        (PScope::IsApprover, false) => "principal is Approver".into(),
    };
    let action = match p.actions.as_slice() {
        [] => "action".into(),
        [a] => format!("action == Action::\"{a}\""),
        many => format!(
            "action in [{}]",
            many.iter()
                .map(|a| format!("Action::\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let resource = match (&p.resource, needs_target) {
        (RScope::EqTarget(t), _) => format!("resource == Target::\"{}\"", TARGETS[*t]),
        (RScope::InTarget(t), false) => format!("resource in Target::\"{}\"", TARGETS[*t]),
        (RScope::IsTarget, _) | (_, true) => "resource is Target".into(),
        (RScope::Any, false) => "resource".into(),
        (RScope::IsTool, false) => "resource is Tool".into(),
        (RScope::EqTool(t), false) => format!("resource == Tool::\"{}/x\"", TARGETS[*t]),
        (RScope::IsToolInTarget(t), false) => {
            format!("resource is Tool in Target::\"{}\"", TARGETS[*t])
        }
        (RScope::EqHost, false) => "resource == Host::\"h.example:443\"".into(),
        (RScope::IsAgent, false) => "resource is Agent".into(),
    };
    let effect = if p.forbid { "forbid" } else { "permit" };
    let _ = write!(out, "{effect}({principal}, {action}, {resource})");
    if !p.when.is_empty() {
        let body = p
            .when
            .iter()
            .map(|c| format!("({})", cond_text(c)))
            .collect::<Vec<_>>()
            .join(" && ");
        let _ = write!(out, " when {{ {body} }}");
    }
    if let Some(c) = &p.unless {
        let _ = write!(out, " unless {{ {} }}", cond_text(c));
    }
    out.push_str(";\n");
    out
}

// ---- random requests ----

#[derive(Clone, Debug)]
enum GPrincipal {
    Agent(usize),
    Ghost,
    Approver,
}

#[derive(Clone, Debug)]
enum GResource {
    Target(usize),
    Tool(usize),
    Host,
    Agent(usize),
}

#[derive(Clone, Debug)]
struct GenRequest {
    principal: GPrincipal,
    action: Action,
    resource: GResource,
    context: Context,
}

fn fitting(action: Action) -> (BoxedStrategy<GPrincipal>, BoxedStrategy<GResource>) {
    let agent =
        prop_oneof![9 => (0..3usize).prop_map(GPrincipal::Agent), 1 => Just(GPrincipal::Ghost)]
            .boxed();
    let approver = Just(GPrincipal::Approver).boxed();
    let target = (0..3usize).prop_map(GResource::Target).boxed();
    match action {
        Action::Exchange | Action::HttpRequest | Action::Elevate => (agent, target),
        Action::CallTool => (agent, (0..3usize).prop_map(GResource::Tool).boxed()),
        Action::EgressConnect => (agent, Just(GResource::Host).boxed()),
        Action::Approve => (approver, target),
        Action::BreakGlass => (approver, (0..3usize).prop_map(GResource::Agent).boxed()),
    }
}

fn context() -> impl Strategy<Value = Context> {
    (
        any::<bool>(),
        prop::collection::vec((0..2usize, 0..3usize), 0..3),
        prop::option::of(prop::sample::select(vec!["GET", "POST"])),
        prop::sample::select(vec![0i64, 1_700_000_000]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(break_glass, elevations, http, time, read, dpop_bound)| Context {
                scope: if read {
                    vec!["read".into()]
                } else {
                    vec!["write".into()]
                },
                http: http.map(|m| (m.to_owned(), "/x".to_owned())),
                elevations: elevations
                    .into_iter()
                    .map(|(a, t)| format!("{}:{}", ["exchange", "call_tool"][a], TARGETS[t]))
                    .collect(),
                break_glass,
                dpop_bound,
                time,
                ..Context::default()
            },
        )
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    let fits = action().prop_flat_map(|a| {
        let (p, r) = fitting(a);
        (p, Just(a), r, context())
    });
    // Now and then a request that does not fit the schema at all.
    let any_shape = (
        prop_oneof![
            (0..3usize).prop_map(GPrincipal::Agent),
            Just(GPrincipal::Approver)
        ],
        action(),
        prop_oneof![
            (0..3usize).prop_map(GResource::Target),
            (0..3usize).prop_map(GResource::Tool),
            Just(GResource::Host),
            (0..3usize).prop_map(GResource::Agent)
        ],
        context(),
    );
    prop_oneof![9 => fits, 1 => any_shape].prop_map(|(principal, action, resource, context)| {
        GenRequest {
            principal,
            action,
            resource,
            context,
        }
    })
}

fn as_request(g: &GenRequest) -> Request<'static> {
    Request {
        principal: match g.principal {
            GPrincipal::Agent(a) => Principal::Agent(AGENTS[a]),
            GPrincipal::Ghost => Principal::Agent("ghost"),
            GPrincipal::Approver => Principal::Approver("ap0"),
        },
        action: g.action,
        resource: match g.resource {
            GResource::Target(t) => Resource::Target(TARGETS[t]),
            GResource::Tool(t) => Resource::Tool {
                target: TARGETS[t],
                tool: "x",
            },
            GResource::Host => Resource::Host {
                host: "H.example",
                port: 443,
            },
            GResource::Agent(a) => Resource::Agent(AGENTS[a]),
        },
        context: g.context.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Slicing never changes an answer: decision, reasons and version match whole-set Cedar,
    /// asked twice so the second answer comes from the cache.
    #[test]
    fn sliced_agrees_with_whole_set(
        policies in prop::collection::vec(gen_policy(), 0..12),
        requests in prop::collection::vec(gen_request(), 1..24),
    ) {
        let text: String = policies.iter().enumerate().map(|(i, p)| policy_text(i, p)).collect();
        let pdp = match Pdp::from_sources(&[("gen.cedar".into(), text.clone())], None, &inventory()) {
            Ok(pdp) => pdp,
            Err(e) => return Err(TestCaseError::fail(format!("generated set refused: {e}\n{text}"))),
        };
        for g in requests.iter().chain(requests.iter()) {
            let r = as_request(g);
            let sliced = pdp.decide(&r);
            let whole = pdp.decide_unsliced(&r);
            prop_assert_eq!(summary(&sliced), summary(&whole), "request {:?}\n{}", r, text);
            prop_assert_eq!(sliced.policy_version(), whole.policy_version());
            // An allow is only ever backed by permits, never by a code.
            if !matches!(sliced, Decision::Deny(_)) {
                prop_assert!(summary(&sliced).1.iter().all(|id| !id.starts_with("code:")));
            }
        }
    }
}

// ---- a tiny reference model: (agent, action, target) tuples ----

#[derive(Clone, Copy, Debug)]
enum MCond {
    Always,
    BreakGlass,
    Elevation,
    /// Errors at evaluation (overflow; every model request has `time > 0`).
    Error,
}

#[derive(Clone, Debug)]
struct MPolicy {
    forbid: bool,
    approval: bool,
    agent: usize,
    action: usize,
    target: usize,
    cond: MCond,
}

const MODEL_ACTIONS: [Action; 3] = [Action::Exchange, Action::HttpRequest, Action::Elevate];

fn m_policy() -> impl Strategy<Value = MPolicy> {
    (
        any::<bool>(),
        any::<bool>(),
        0..3usize,
        0..3usize,
        0..3usize,
        prop_oneof![3 => Just(MCond::Always), 2 => Just(MCond::BreakGlass), 2 => Just(MCond::Elevation), 1 => Just(MCond::Error)],
    )
        .prop_map(|(forbid, approval, agent, action, target, cond)| MPolicy {
            forbid,
            approval: approval && !forbid,
            agent,
            action,
            target,
            cond,
        })
}

fn m_text(i: usize, p: &MPolicy) -> String {
    let action = MODEL_ACTIONS[p.action];
    let target = TARGETS[p.target];
    let cond = match p.cond {
        MCond::Always => String::new(),
        MCond::BreakGlass => " when { context.break_glass }".into(),
        MCond::Elevation => {
            format!(" when {{ context.elevations.contains(\"{action}:{target}\") }}")
        }
        MCond::Error => " when { context.time * 9223372036854775807 > 1 }".into(),
    };
    format!(
        "@id(\"m{i}\"){}\n{}(principal == Agent::\"{}\", action == Action::\"{action}\", resource == Target::\"{target}\"){cond};\n",
        if p.approval {
            " @approval(\"required\")"
        } else {
            ""
        },
        if p.forbid { "forbid" } else { "permit" },
        AGENTS[p.agent],
    )
}

/// What the PDP must answer, computed without Cedar.
fn model(
    policies: &[MPolicy],
    agent: usize,
    action: usize,
    target: usize,
    break_glass: bool,
    elevations: &[String],
) -> (&'static str, Vec<String>) {
    let elevation = format!("{}:{}", MODEL_ACTIONS[action], TARGETS[target]);
    let matching: Vec<(usize, &MPolicy)> = policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.agent == agent && p.action == action && p.target == target)
        .collect();
    let ids = |ps: Vec<usize>| {
        let mut v: Vec<String> = ps.into_iter().map(|i| format!("m{i}")).collect();
        v.sort();
        v
    };
    let errors: Vec<usize> = matching
        .iter()
        .filter(|(_, p)| matches!(p.cond, MCond::Error))
        .map(|(i, _)| *i)
        .collect();
    if !errors.is_empty() {
        let mut reasons = vec!["code:policy_error".to_string()];
        reasons.extend(ids(errors));
        return ("deny", reasons);
    }
    let holds = |p: &MPolicy| match p.cond {
        MCond::Always => true,
        MCond::BreakGlass => break_glass,
        MCond::Elevation => elevations.contains(&elevation),
        MCond::Error => false,
    };
    let forbids: Vec<usize> = matching
        .iter()
        .filter(|(_, p)| p.forbid && holds(p))
        .map(|(i, _)| *i)
        .collect();
    if !forbids.is_empty() {
        return ("deny", ids(forbids));
    }
    let permits: Vec<(usize, &MPolicy)> = matching
        .iter()
        .filter(|(_, p)| !p.forbid && holds(p))
        .copied()
        .collect();
    if permits.is_empty() {
        return ("deny", vec!["code:no_matching_permit".into()]);
    }
    let approval = permits.iter().any(|(_, p)| p.approval);
    (
        if approval {
            "require_approval"
        } else {
            "allow"
        },
        ids(permits.into_iter().map(|(i, _)| i).collect()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The PDP agrees with the model, and a matching erroring policy never yields an allow.
    #[test]
    fn pdp_agrees_with_model(
        policies in prop::collection::vec(m_policy(), 0..16),
        requests in prop::collection::vec((0..3usize, 0..3usize, 0..3usize, any::<bool>(), prop::collection::vec((0..3usize, 0..3usize), 0..3)), 1..24),
    ) {
        let text: String = policies.iter().enumerate().map(|(i, p)| m_text(i, p)).collect();
        let pdp = match Pdp::from_sources(&[("model.cedar".into(), text.clone())], None, &inventory()) {
            Ok(pdp) => pdp,
            Err(e) => return Err(TestCaseError::fail(format!("model set refused: {e}\n{text}"))),
        };
        for (agent, action, target, break_glass, elevations) in requests {
            let elevations: Vec<String> = elevations
                .into_iter()
                .map(|(a, t)| format!("{}:{}", MODEL_ACTIONS[a], TARGETS[t]))
                .collect();
            let r = Request {
                principal: Principal::Agent(AGENTS[agent]),
                action: MODEL_ACTIONS[action],
                resource: Resource::Target(TARGETS[target]),
                context: Context { break_glass, elevations: elevations.clone(), time: 1_700_000_000, ..Context::default() },
            };
            let want = model(&policies, agent, action, target, break_glass, &elevations);
            let got = pdp.decide(&r);
            prop_assert_eq!(summary(&got), want.clone(), "{:?}\n{}", r, text);
            if want.1.first().is_some_and(|c| c == "code:policy_error") {
                prop_assert!(matches!(got, Decision::Deny(_)));
            }
        }
    }
}
