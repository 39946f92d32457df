//! Loading: errors name file and line with Cedar's message; versions; directories.

mod common;

use common::{inventory, summary};
use firebreak_policy::{Action, Context, Pdp, PolicyError, Principal, Request, Resource, SCHEMA};

fn load(files: &[(&str, &str)]) -> Result<Pdp, PolicyError> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    Pdp::from_sources(&files, None, &inventory())
}

const OK: &str = "@id(\"ok\")\npermit(principal, action, resource);\n";

#[test]
fn parse_error_names_file_and_line() {
    let err = load(&[
        ("a.cedar", OK),
        (
            "b.cedar",
            "@id(\"x\")\npermit(principal, action, resource)\n  when { context.env == };\n",
        ),
    ])
    .unwrap_err();
    match err {
        PolicyError::Parse {
            file,
            line,
            message,
        } => {
            assert_eq!((file.as_str(), line), ("b.cedar", 3));
            assert!(!message.is_empty());
        }
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn missing_id_names_file_and_line() {
    let text = "// two policies\n@id(\"first\")\npermit(principal, action, resource);\n\n@description(\"no id\")\nforbid(principal, action, resource);\n";
    match load(&[("m.cedar", text)]).unwrap_err() {
        PolicyError::MissingId { file, line } => assert_eq!((file.as_str(), line), ("m.cedar", 5)),
        other => panic!("expected MissingId, got {other:?}"),
    }
    match load(&[("e.cedar", "@id(\"\") permit(principal, action, resource);")]).unwrap_err() {
        PolicyError::MissingId { line: 1, .. } => {}
        other => panic!("expected MissingId, got {other:?}"),
    }
}

#[test]
fn duplicate_id_names_both_places() {
    let second = "\n\n@id(\"ok\")\nforbid(principal, action, resource);\n";
    match load(&[("z.cedar", second), ("a.cedar", OK)]).unwrap_err() {
        PolicyError::DuplicateId {
            id,
            first_file,
            first_line,
            second_file,
            second_line,
        } => {
            assert_eq!(id, "ok");
            assert_eq!((first_file.as_str(), first_line), ("a.cedar", 1));
            assert_eq!((second_file.as_str(), second_line), ("z.cedar", 3));
        }
        other => panic!("expected DuplicateId, got {other:?}"),
    }
}

#[test]
fn validation_error_names_file_line_and_policy() {
    let text = "@id(\"ok\")\npermit(principal, action, resource);\n@id(\"typo\")\npermit(principal is Agent, action == Action::\"exchange\", resource)\n  when { principal.teir == \"high\" };\n";
    match load(&[("v.cedar", text)]).unwrap_err() {
        PolicyError::Validation {
            file,
            line,
            policy,
            message,
            more,
        } => {
            assert_eq!(
                (file.as_str(), line, policy.as_str(), more),
                ("v.cedar", 5, "typo", 0)
            );
            assert!(message.contains("teir"), "{message}");
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    // An undeclared action or entity type is a validation error too.
    assert!(matches!(
        load(&[(
            "u.cedar",
            "@id(\"u\") permit(principal, action == Action::\"delete\", resource);"
        )]),
        Err(PolicyError::Validation { .. })
    ));
}

#[test]
fn templates_and_bad_approval_values_are_refused() {
    assert!(matches!(
        load(&[(
            "t.cedar",
            "@id(\"t\")\npermit(principal == ?principal, action, resource);"
        )]),
        Err(PolicyError::Template { line: 1, .. })
    ));
    match load(&[(
        "p.cedar",
        "@id(\"a\")\n@approval(\"requried\")\npermit(principal, action, resource);",
    )])
    .unwrap_err()
    {
        PolicyError::ApprovalAnnotation {
            policy,
            value,
            line,
            ..
        } => {
            assert_eq!(
                (policy.as_str(), value.as_str(), line),
                ("a", "requried", 1)
            );
        }
        other => panic!("expected ApprovalAnnotation, got {other:?}"),
    }
    assert!(matches!(
        load(&[(
            "f.cedar",
            "@id(\"f\") @approval(\"required\") forbid(principal, action, resource);"
        )]),
        Err(PolicyError::ApprovalAnnotation { .. })
    ));
    // Other annotations are allowed and ignored.
    assert!(
        load(&[(
            "d.cedar",
            "@id(\"d\") @description(\"x\") @owner(\"sec\") permit(principal, action, resource);"
        )])
        .is_ok()
    );
}

#[test]
fn schema_errors_name_the_schema_and_line() {
    let bad = "entity Agent;\nentity Oops = { x: Strng };\n";
    let err =
        Pdp::from_sources(&[("a.cedar".into(), OK.into())], Some(bad), &inventory()).unwrap_err();
    match err {
        PolicyError::Schema { file, line, .. } => {
            assert_eq!((file.as_str(), line), ("schema.cedarschema", 2))
        }
        other => panic!("expected Schema, got {other:?}"),
    }
    // A schema that parses but disagrees with the entity model refuses the inventory.
    let thin = "entity Agent; entity Target; entity Tool in [Target]; entity Host; entity Approver;\naction exchange appliesTo { principal: Agent, resource: Target };";
    assert!(matches!(
        Pdp::from_sources(&[("a.cedar".into(), OK.into())], Some(thin), &inventory()),
        Err(PolicyError::InventoryMismatch { .. })
    ));
}

#[test]
fn custom_schema_must_still_validate_the_policies() {
    let custom = format!("{SCHEMA}\nentity Extra;\n");
    let pdp = Pdp::from_sources(
        &[("a.cedar".into(), OK.into())],
        Some(&custom),
        &inventory(),
    )
    .unwrap();
    assert_eq!(pdp.schema_text(), custom);
    let bad = "@id(\"x\") permit(principal is Agent, action == Action::\"exchange\", resource) when { principal.extra == 1 };";
    assert!(matches!(
        Pdp::from_sources(
            &[("a.cedar".into(), bad.into())],
            Some(&custom),
            &inventory()
        ),
        Err(PolicyError::Validation { .. })
    ));
}

#[test]
fn duplicate_inventory_is_refused() {
    let mut inv = inventory();
    inv.agents.push(inv.agents[0].clone());
    assert!(matches!(
        Pdp::from_sources(&[], None, &inv),
        Err(PolicyError::DuplicateInventory { kind: "agent", .. })
    ));
}

#[test]
fn version_covers_names_texts_and_schema_and_ignores_order() {
    let a = load(&[
        ("a.cedar", OK),
        ("b.cedar", "@id(\"b\") forbid(principal, action, resource);"),
    ])
    .unwrap();
    let b = load(&[
        ("b.cedar", "@id(\"b\") forbid(principal, action, resource);"),
        ("a.cedar", OK),
    ])
    .unwrap();
    assert_eq!(a.version(), b.version());
    assert_eq!(a.sources()[0].0, "a.cedar");
    assert_eq!(a.policy_count(), 2);
    let renamed = load(&[
        ("a2.cedar", OK),
        ("b.cedar", "@id(\"b\") forbid(principal, action, resource);"),
    ])
    .unwrap();
    assert_ne!(a.version(), renamed.version());
    let custom = format!("{SCHEMA}\n");
    let other_schema = Pdp::from_sources(
        &[("a.cedar".into(), OK.into())],
        Some(&custom),
        &inventory(),
    )
    .unwrap();
    assert_ne!(
        load(&[("a.cedar", OK)]).unwrap().version(),
        other_schema.version()
    );
    assert!(a.version().starts_with("sha256:") && a.version().len() == 71);
    assert!(matches!(
        load(&[("a.cedar", OK), ("a.cedar", OK)]),
        Err(PolicyError::DuplicateFile { .. })
    ));
}

#[test]
fn load_reads_cedar_files_and_optional_schema_from_a_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-permit.cedar"), OK).unwrap();
    std::fs::write(dir.path().join("README.md"), "not policy").unwrap();
    std::fs::write(dir.path().join("cases.test.toml"), "").unwrap();
    let pdp = Pdp::load(dir.path(), &inventory()).unwrap();
    assert_eq!(pdp.policy_count(), 1);
    assert_eq!(pdp.schema_text(), SCHEMA);
    let r = Request {
        principal: Principal::Agent("deploy-bot"),
        action: Action::Exchange,
        resource: Resource::Target("github-tools"),
        context: Context::default(),
    };
    assert_eq!(summary(&pdp.decide(&r)), ("allow", vec!["ok".into()]));

    std::fs::write(dir.path().join("schema.cedarschema"), "entity Broken = {").unwrap();
    assert!(matches!(
        Pdp::load(dir.path(), &inventory()),
        Err(PolicyError::Schema { .. })
    ));
    assert!(matches!(
        Pdp::load(&dir.path().join("missing"), &inventory()),
        Err(PolicyError::ReadDir { .. })
    ));
}

#[test]
fn error_messages_read_file_colon_line() {
    let err = load(&[(
        "m.cedar",
        "\n@description(\"x\") permit(principal, action, resource);",
    )])
    .unwrap_err();
    assert_eq!(err.to_string(), "m.cedar:2: policy has no @id annotation");
}
