//! Decisions through the public API: default deny, forbids, approvals, errors, entities.

mod common;

use common::{inventory, pdp, req, summary};
use firebreak_policy::{Action, Context, Decision, Pdp, Principal, ReasonRef, Request, Resource};

const PERMIT_DEPLOY: &str = r#"
@id("permit-deploy")
permit(principal == Agent::"deploy-bot", action == Action::"exchange", resource == Target::"github-tools");
"#;

fn ctx() -> Context {
    Context {
        time: 1_700_000_000,
        ..Context::default()
    }
}

#[test]
fn default_deny_names_no_matching_permit() {
    let pdp = pdp(PERMIT_DEPLOY);
    let d = pdp.decide(&req(
        "lint-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    assert_eq!(
        summary(&d),
        ("deny", vec!["code:no_matching_permit".into()])
    );
    assert!(matches!(d, Decision::Deny(_)));
    assert_eq!(d.policy_version(), pdp.version());
}

#[test]
fn permit_allows_with_its_id() {
    let pdp = pdp(PERMIT_DEPLOY);
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    let Decision::Allow(permit) = &d else {
        panic!("expected allow, got {d:?}");
    };
    assert_eq!(
        permit.reasons(),
        [ReasonRef::Policy {
            policy: "permit-deploy".into()
        }]
    );
    assert!(permit.policy_version().starts_with("sha256:"));
}

#[test]
fn forbid_overrides_permit_and_lists_every_matching_forbid() {
    let pdp = pdp(&format!(
        r#"{PERMIT_DEPLOY}
        @id("z-no-prod-on-weekends") forbid(principal, action, resource) when {{ context.purpose == "weekend" }};
        @id("a-no-deploy") forbid(principal == Agent::"deploy-bot", action, resource) when {{ context.purpose == "weekend" }};
        "#
    ));
    let c = Context {
        purpose: "weekend".into(),
        ..ctx()
    };
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        c,
    ));
    assert_eq!(
        summary(&d),
        (
            "deny",
            vec!["a-no-deploy".into(), "z-no-prod-on-weekends".into()]
        )
    );
}

#[test]
fn approval_annotation_requires_approval() {
    let pdp = pdp(r#"
        @id("plain") permit(principal, action == Action::"exchange", resource);
        @id("needs-approval") @approval("required") permit(principal == Agent::"deploy-bot", action, resource == Target::"github-tools");
    "#);
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    let Decision::RequireApproval(pending) = &d else {
        panic!("expected require_approval, got {d:?}");
    };
    assert_eq!(
        summary(&d).1,
        vec!["needs-approval".to_string(), "plain".into()]
    );
    assert_eq!(pending.policy_version(), pdp.version());
    // Another target: only the plain permit determines, so no approval.
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("staging-api"),
        ctx(),
    ));
    assert_eq!(summary(&d), ("allow", vec!["plain".into()]));
}

/// SECURITY-TESTS.md F11 (c): a forbid whose condition errors (integer overflow) must deny even
/// though a permit matches; Cedar alone would skip the forbid and allow.
#[test]
fn f11_erroring_forbid_denies() {
    let pdp = pdp(&format!(
        r#"{PERMIT_DEPLOY}
        @id("forbid-overflow") forbid(principal, action, resource) when {{ context.time + 9223372036854775807 > 0 }};
        "#
    ));
    let r = req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    );
    let d = pdp.decide(&r);
    assert_eq!(
        summary(&d),
        (
            "deny",
            vec!["code:policy_error".into(), "forbid-overflow".into()]
        )
    );
    assert_eq!(summary(&pdp.decide_unsliced(&r)), summary(&d));
}

/// SECURITY-TESTS.md F11 (c): a forbid reading an attribute of an entity that does not exist
/// errors at evaluation; the decision is a deny naming it.
#[test]
fn f11_erroring_forbid_on_missing_entity_denies() {
    let pdp = pdp(&format!(
        r#"{PERMIT_DEPLOY}
        @id("forbid-ghost") forbid(principal, action, resource) when {{ Agent::"ghost".tier == "high" }};
        "#
    ));
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    assert_eq!(
        summary(&d),
        (
            "deny",
            vec!["code:policy_error".into(), "forbid-ghost".into()]
        )
    );
}

/// SECURITY-TESTS.md F11 (c): the "missing optional attribute" case is caught before it can
/// run: strict validation refuses `context.http.method` without a `has` guard, naming the line.
#[test]
fn f11_unguarded_optional_attribute_refused_at_load() {
    let text = format!(
        "{PERMIT_DEPLOY}\n@id(\"forbid-get\")\nforbid(principal, action, resource)\n  when {{ context.http.method == \"GET\" }};\n"
    );
    let err = Pdp::from_sources(&[("f.cedar".into(), text)], None, &inventory()).unwrap_err();
    match err {
        firebreak_policy::PolicyError::Validation {
            file,
            line,
            policy,
            message,
            ..
        } => {
            assert_eq!(
                (file.as_str(), line, policy.as_str()),
                ("f.cedar", 7, "forbid-get")
            );
            assert!(message.contains("http"), "{message}");
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    // Guarded, it loads, and denies only GETs.
    let pdp = pdp(&format!(
        r#"{PERMIT_DEPLOY}
        @id("forbid-get") forbid(principal, action, resource) when {{ context has http && context.http.method == "GET" }};
        "#
    ));
    let get = Context {
        http: Some(("GET".into(), "/".into())),
        ..ctx()
    };
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        get,
    ));
    assert_eq!(summary(&d), ("deny", vec!["forbid-get".into()]));
    let d = pdp.decide(&req(
        "deploy-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    assert_eq!(summary(&d), ("allow", vec!["permit-deploy".into()]));
}

/// The elevation and break-glass members of the context reach policies (DESIGN.md §6); the
/// integrator's X13/X15 tests drive them from real elevations.
#[test]
fn elevations_condition_gates_permit() {
    let pdp = pdp(r#"
        @id("elevated-deploy") permit(principal is Agent, action == Action::"exchange", resource == Target::"github-tools")
          when { context.elevations.contains("exchange:github-tools") };
    "#);
    let r = |elevations: Vec<String>| {
        req(
            "lint-bot",
            Action::Exchange,
            Resource::Target("github-tools"),
            Context {
                elevations,
                ..ctx()
            },
        )
    };
    assert_eq!(summary(&pdp.decide(&r(vec![]))).0, "deny");
    assert_eq!(
        summary(&pdp.decide(&r(vec!["exchange:staging-api".into()]))).0,
        "deny"
    );
    assert_eq!(
        summary(&pdp.decide(&r(vec!["exchange:github-tools".into()]))),
        ("allow", vec!["elevated-deploy".into()])
    );
}

#[test]
fn break_glass_condition_gates_permit_and_unless() {
    let pdp = pdp(r#"
        @id("glass") permit(principal, action == Action::"exchange", resource) when { context.break_glass };
        @id("no-glass-on-tier-high") forbid(principal is Agent, action, resource is Target) when { context.break_glass && resource.tier == "high" }
          unless { principal.tier == "high" };
    "#);
    let r = |agent, target, break_glass| {
        req(
            agent,
            Action::Exchange,
            Resource::Target(target),
            Context {
                break_glass,
                ..ctx()
            },
        )
    };
    assert_eq!(
        summary(&pdp.decide(&r("lint-bot", "staging-api", false))).0,
        "deny"
    );
    assert_eq!(
        summary(&pdp.decide(&r("lint-bot", "staging-api", true))),
        ("allow", vec!["glass".into()])
    );
    assert_eq!(
        summary(&pdp.decide(&r("lint-bot", "github-tools", true))),
        ("deny", vec!["no-glass-on-tier-high".into()])
    );
    assert_eq!(
        summary(&pdp.decide(&r("deploy-bot", "github-tools", true))).0,
        "allow"
    );
}

/// SECURITY-TESTS.md X09 (tiers): a policy can keep an agent inside its environment and tier,
/// using entity attributes from the inventory.
#[test]
fn x09_cross_tier_forbid_uses_inventory_attributes() {
    let pdp = pdp(r#"
        @id("any-exchange") permit(principal, action == Action::"exchange", resource);
        @id("same-env-and-tier") forbid(principal is Agent, action, resource is Target)
          unless { principal.environment == resource.environment && principal.tier == resource.tier };
    "#);
    let d = pdp.decide(&req(
        "lint-bot",
        Action::Exchange,
        Resource::Target("github-tools"),
        ctx(),
    ));
    assert_eq!(summary(&d), ("deny", vec!["same-env-and-tier".into()]));
    let d = pdp.decide(&req(
        "lint-bot",
        Action::Exchange,
        Resource::Target("staging-api"),
        ctx(),
    ));
    assert_eq!(summary(&d), ("allow", vec!["any-exchange".into()]));
}

#[test]
fn unknown_principal_or_resource_is_denied_without_evaluation() {
    let pdp = pdp(r#"@id("everything") permit(principal, action, resource);"#);
    for r in [
        req(
            "ghost",
            Action::Exchange,
            Resource::Target("github-tools"),
            ctx(),
        ),
        req(
            "deploy-bot",
            Action::Exchange,
            Resource::Target("nowhere"),
            ctx(),
        ),
        req(
            "deploy-bot",
            Action::CallTool,
            Resource::Tool {
                target: "nowhere",
                tool: "x",
            },
            ctx(),
        ),
        Request {
            principal: Principal::Approver("mallory"),
            action: Action::Approve,
            resource: Resource::Target("github-tools"),
            context: ctx(),
        },
        Request {
            principal: Principal::Approver("alice"),
            action: Action::BreakGlass,
            resource: Resource::Agent("ghost"),
            context: ctx(),
        },
    ] {
        assert_eq!(
            summary(&pdp.decide(&r)),
            ("deny", vec!["code:unknown_entity".into()]),
            "{r:?}"
        );
        assert_eq!(
            summary(&pdp.decide_unsliced(&r)),
            ("deny", vec!["code:unknown_entity".into()])
        );
    }
    let ok = Request {
        principal: Principal::Approver("alice"),
        action: Action::BreakGlass,
        resource: Resource::Agent("lint-bot"),
        context: ctx(),
    };
    assert_eq!(summary(&pdp.decide(&ok)).0, "allow");
}

#[test]
fn request_that_does_not_fit_the_schema_is_a_policy_error() {
    let pdp = pdp(r#"@id("everything") permit(principal, action, resource);"#);
    // call_tool applies to Tool resources only; approve to Approver principals only.
    for r in [
        req(
            "deploy-bot",
            Action::CallTool,
            Resource::Target("github-tools"),
            ctx(),
        ),
        req(
            "deploy-bot",
            Action::Approve,
            Resource::Target("github-tools"),
            ctx(),
        ),
    ] {
        assert_eq!(
            summary(&pdp.decide(&r)),
            ("deny", vec!["code:policy_error".into()]),
            "{r:?}"
        );
    }
}

#[test]
fn tool_is_in_its_target_and_host_is_normalised() {
    let pdp = pdp(r#"
        @id("tools-of-github") permit(principal, action == Action::"call_tool", resource in Target::"github-tools")
          when { resource.name != "delete_repo" };
        @id("egress") permit(principal, action == Action::"egress_connect", resource);
        @id("no-evil") forbid(principal, action, resource == Host::"evil.example:443");
        @id("no-loopback6") forbid(principal, action, resource == Host::"[::1]:22");
    "#);
    let tool = |t| {
        req(
            "deploy-bot",
            Action::CallTool,
            Resource::Tool {
                target: "github-tools",
                tool: t,
            },
            ctx(),
        )
    };
    assert_eq!(
        summary(&pdp.decide(&tool("create_issue"))),
        ("allow", vec!["tools-of-github".into()])
    );
    assert_eq!(summary(&pdp.decide(&tool("delete_repo"))).0, "deny");
    let other = req(
        "deploy-bot",
        Action::CallTool,
        Resource::Tool {
            target: "staging-api",
            tool: "x",
        },
        ctx(),
    );
    assert_eq!(summary(&pdp.decide(&other)).0, "deny");
    let host = |h, port| {
        req(
            "deploy-bot",
            Action::EgressConnect,
            Resource::Host { host: h, port },
            ctx(),
        )
    };
    assert_eq!(
        summary(&pdp.decide(&host("api.github.com", 443))),
        ("allow", vec!["egress".into()])
    );
    for (h, p, id) in [
        ("EVIL.example.", 443, "no-evil"),
        ("evil.EXAMPLE", 443, "no-evil"),
        ("0:0:0:0:0:0:0:1", 22, "no-loopback6"),
        ("[::1]", 22, "no-loopback6"),
    ] {
        assert_eq!(
            summary(&pdp.decide(&host(h, p))),
            ("deny", vec![id.to_string()]),
            "{h}"
        );
    }
}

#[test]
fn approver_actions_decide() {
    let pdp = pdp(r#"
        @id("alice-approves") permit(principal == Approver::"alice", action == Action::"approve", resource);
    "#);
    let r = Request {
        principal: Principal::Approver("alice"),
        action: Action::Approve,
        resource: Resource::Target("github-tools"),
        context: ctx(),
    };
    assert_eq!(
        summary(&pdp.decide(&r)),
        ("allow", vec!["alice-approves".into()])
    );
}

#[test]
fn reasons_serialise_as_on_the_wire() {
    let reasons = vec![
        ReasonRef::Code {
            code: "policy_error".into(),
        },
        ReasonRef::Policy {
            policy: "forbid-x".into(),
        },
    ];
    assert_eq!(
        serde_json::to_string(&reasons).unwrap(),
        r#"[{"code":"policy_error"},{"policy":"forbid-x"}]"#
    );
}

#[test]
fn action_names_round_trip() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
    }
    assert!(matches!(
        "delete".parse::<Action>(),
        Err(firebreak_policy::PolicyError::UnknownAction { .. })
    ));
}
