//! `*.test.toml` runs: the shipped example set passes, failures and bad files are reported.

mod common;

use std::path::PathBuf;

use common::inventory;
use firebreak_policy::{Pdp, PolicyError, run_tests};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

#[test]
fn example_policies_pass_their_tests() {
    let pdp = Pdp::load(&examples(), &inventory()).unwrap();
    assert!(pdp.policy_count() >= 10);
    let report = run_tests(&examples(), &pdp).unwrap();
    let table = report.render_table();
    assert!(report.cases.len() >= 15, "{table}");
    assert_eq!(report.failed(), 0, "{table}");
    assert!(table.ends_with(&format!("{} passed, 0 failed\n", report.cases.len())));
}

#[test]
fn failures_are_reported_with_file_line_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_str().unwrap().ends_with(".cedar") {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("wrong.test.toml"),
        "# a wrong expectation\n[[case]]\nname = \"wrong\"\nprincipal = { agent = \"lint-bot\" }\naction = \"exchange\"\nresource = { target = \"github-tools\" }\nexpect = \"allow\"\n\n[[case]]\nname = \"wrong reasons\"\nprincipal = { agent = \"lint-bot\" }\naction = \"exchange\"\nresource = { target = \"github-tools\" }\nexpect = \"deny\"\nreasons = [\"code:no_matching_permit\"]\n",
    )
    .unwrap();
    let pdp = Pdp::load(dir.path(), &inventory()).unwrap();
    let report = run_tests(dir.path(), &pdp).unwrap();
    assert_eq!(report.failed(), 2);
    assert_eq!(
        (report.cases[0].file.as_str(), report.cases[0].line),
        ("wrong.test.toml", 2)
    );
    assert_eq!(report.cases[0].got, "deny");
    assert_eq!(report.cases[1].line, 9);
    let table = report.render_table();
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with("FAIL") && row.contains("wrong.test.toml:2"),
        "{table}"
    );
    assert!(
        table.contains("(expected code:no_matching_permit)"),
        "{table}"
    );
    assert!(table.ends_with("0 passed, 2 failed\n"), "{table}");
}

#[test]
fn unknown_keys_and_bad_cases_are_refused() {
    let pdp = Pdp::load(&examples(), &inventory()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case = "[[case]]\nname = \"x\"\nprincipal = { agent = \"lint-bot\" }\naction = \"exchange\"\nresource = { target = \"t\" }\nexpect = \"deny\"\n";
    let file = dir.path().join("a.test.toml");

    std::fs::write(&file, format!("{case}colour = \"red\"\n")).unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::TestFile { line: 7, .. })
    ));

    std::fs::write(
        &file,
        case.replace(
            "target = \"t\" }",
            "target = \"t\" }\ncontext = { tenat = \"x\" }",
        ),
    )
    .unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::TestFile { .. })
    ));

    std::fs::write(&file, case.replace("exchange", "exfiltrate")).unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::TestCase { line: 1, .. })
    ));

    std::fs::write(
        &file,
        case.replace("expect = \"deny\"", "expect = \"maybe\""),
    )
    .unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::TestCase { .. })
    ));

    std::fs::write(
        &file,
        case.replace("{ target = \"t\" }", "{ host = \"nohost\" }"),
    )
    .unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::TestCase { .. })
    ));

    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        run_tests(dir.path(), &pdp),
        Err(PolicyError::NoTestCases { .. })
    ));
}
