//! The binary, driven as a user would: exit codes, `check`, `serve` refusing a bad config, and
//! the demo end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

use std::process::Command;

fn firebreak() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
}

const GOOD: &str = r#"[server]
public_url = "https://fb.acme.example"
data_dir = "data"

[[issuer]]
id = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://fb.acme.example"
profile = "github-actions"
algorithms = ["RS256"]

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy acme/api"
expires = 2099-06-30
tenant = "acme"
environment = "production"
tier = "write"
identity = { issuer = "github", claims = { repository = "acme/api", repository_id = "1", ref = "refs/heads/main" }, events = ["push"] }
"#;

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("firebreak.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// SECURITY-TESTS.md X01 at the binary: `check` and `serve` exit 78 naming file, line and rule.
#[test]
fn x01_check_and_serve_exit_78_on_broad_rules() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD.replace(
        r#"repository = "acme/api", repository_id = "1", ref = "refs/heads/main""#,
        r#"sub = "repo:acme/*""#,
    );
    let p = write(&dir, &bad);
    for cmd in ["check", "serve"] {
        let out = firebreak()
            .args([cmd, "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("firebreak.toml:13: agent \"deploy-bot\" identity"),
            "{cmd}: {err}"
        );
        assert!(err.contains("wildcards"), "{err}");
    }
    // Positive twin.
    let p = write(&dir, GOOD);
    let out = firebreak()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 issuers, 1 agents"));
    let out = firebreak()
        .args(["-o", "json", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
}

/// SECURITY-TESTS.md X09 (config) and T12 (leeway) at the binary.
#[test]
fn x09_t12_config_refusals_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, &format!("{GOOD}\n[limits]\nleeway = \"120s\"\n"));
    assert_eq!(
        firebreak()
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap()
            .status
            .code(),
        Some(78)
    );
    let target = "\n[[target]]\nid = \"t\"\naudience = \"https://gw/t\"\nkind = \"http\"\ntenant = \"acme\"\nenvironment = \"production,staging\"\n";
    let p = write(&dir, &format!("{GOOD}{target}"));
    assert_eq!(
        firebreak()
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap()
            .status
            .code(),
        Some(78)
    );
    let p = write(&dir, "not toml [");
    assert_eq!(
        firebreak()
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap()
            .status
            .code(),
        Some(78)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        firebreak()
            .arg("frobnicate")
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let help = firebreak().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("78 configuration error"));
}

/// The Quick start's main job, end to end: every narrated step is checked by the demo itself.
#[test]
fn demo_runs_end_to_end() {
    let out = firebreak().args(["-o", "json", "demo"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.rfind("\n{").map_or(0, |i| i + 1);
    let v: serde_json::Value = serde_json::from_str(&stdout[last..]).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["steps"].as_array().unwrap().len() >= 8);
    assert!(
        !stdout.contains("fbadm_"),
        "the admin token never reaches output"
    );
}

const POLICY: &str = r#"@id("deploy-read")
permit(principal == Agent::"deploy-bot", action == Action::"exchange", resource == Target::"tools")
when { ["read"].containsAll(context.scope) };
"#;

const TARGET: &str = "\n[[target]]\nid = \"tools\"\naudience = \"https://gw/tools\"\nkind = \"http\"\ntenant = \"acme\"\nenvironment = \"production\"\ntier = \"write\"\n\n[policy]\ndir = \"policies\"\n";

fn policy_dir(dir: &tempfile::TempDir, cases: &str) -> std::path::PathBuf {
    let p = dir.path().join("policies");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("main.cedar"), POLICY).unwrap();
    std::fs::write(p.join("main.test.toml"), cases).unwrap();
    write(dir, &format!("{GOOD}{TARGET}"))
}

/// `policy test` passes on right expectations and exits 1 on a deliberately wrong one: a
/// changed decision is caught.
#[test]
fn policy_test_catches_a_changed_decision() {
    let dir = tempfile::tempdir().unwrap();
    let right = r#"
[[case]]
name = "read allowed"
principal = { agent = "deploy-bot" }
action = "exchange"
resource = { target = "tools" }
context = { scope = ["read"] }
expect = "allow"
reasons = ["deploy-read"]

[[case]]
name = "write refused"
principal = { agent = "deploy-bot" }
action = "exchange"
resource = { target = "tools" }
context = { scope = ["write"] }
expect = "deny"
"#;
    let cfg = policy_dir(&dir, right);
    let out = firebreak()
        .args(["policy", "test", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 passed, 0 failed"));
    let wrong = right.replace("expect = \"deny\"", "expect = \"allow\"");
    let cfg = policy_dir(&dir, &wrong);
    let out = firebreak()
        .args(["policy", "test", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed, 1 failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `check` validates the policies: a broken policy file is a config error (78) naming it.
#[test]
fn check_refuses_a_bad_policy_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = policy_dir(&dir, "");
    assert_eq!(
        firebreak()
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let out = firebreak()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cedar") && err.contains("@id"), "{err}");
    let out = firebreak()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "serve refuses it too");
}

#[test]
fn approver_token_prints_token_and_hash() {
    let out = firebreak()
        .args(["-o", "json", "approver", "token", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["token"].as_str().unwrap();
    assert_eq!(
        v["token_sha256"],
        firebreak_token::sha256_hex(token.as_bytes())
    );
}
