//! Elevation, approval, self-approval refusal, expiry and break-glass through the CLI against a
//! running `firebreak serve`, with a restart in between (the policy issue's acceptance).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use std::path::Path;
use std::process::Command;

use firebreak_token::sha256_hex;

fn config(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/p.cedar"),
        "@id(\"elevation-needs-approval\")\n@approval(\"required\")\npermit(principal, action == Action::\"elevate\", resource);\n",
    )
    .unwrap();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
public_url = "https://fb.test"
data_dir = "{data}"

[[issuer]]
id = "gh"
url = "https://token.actions.githubusercontent.com"
audience = "https://fb.test"
profile = "github-actions"
algorithms = ["RS256"]

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy"
expires = 2099-01-01
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "gh", claims = {{ repository = "acme/api", repository_id = "1", ref = "refs/heads/main" }}, events = ["push"] }}

[[target]]
id = "tools"
audience = "https://gw.test/tools"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"

[policy]
dir = "policies"

[[approver]]
id = "alice"
token_sha256 = "{alice}"
expires = 2099-01-01
emails = ["alice@acme.example"]

[[approver]]
id = "owner"
token_sha256 = "{owner}"
expires = 2099-01-01
emails = ["platform@acme.example"]
"#,
        data = dir.join("data").display(),
        alice = sha256_hex(b"alice-token"),
        owner = sha256_hex(b"owner-token"),
    );
    let p = dir.join("firebreak.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn cli(
    cfg: &Path,
    url: &str,
    token: Option<&str>,
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    c.args(["-o", "json"])
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--broker")
        .arg(url);
    if let Some(t) = token {
        c.arg("--token").arg(t);
    }
    let out = c.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn elevation_approval_self_approval_and_breakglass_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = common::serve(&cfg);
    let url = server.url.clone();
    // As admin (the CLI finds <data_dir>/admin.token through the config).
    let (code, v, err) = cli(
        &cfg,
        &url,
        None,
        &[
            "elevation",
            "request",
            "--agent",
            "deploy-bot",
            "--target",
            "tools",
            "--reason",
            "incident",
            "--justification",
            "INC-1",
            "--duration",
            "10m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["status"], "pending");
    let approval = v["approval_id"].as_str().unwrap().to_owned();
    let (code, v, _) = cli(
        &cfg,
        &url,
        Some("alice-token"),
        &["elevation", "list", "--pending"],
    );
    assert_eq!(code, 0);
    assert_eq!(v["approvals"][0]["id"], approval.as_str());
    // The agent's owner may not approve.
    let (code, _, err) = cli(
        &cfg,
        &url,
        Some("owner-token"),
        &["elevation", "approve", &approval, "--why", "mine"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("self-approval"),
        "{err}"
    );
    let (code, v, err) = cli(
        &cfg,
        &url,
        Some("alice-token"),
        &["elevation", "approve", &approval, "--why", "ok"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["status"], "approved");
    let elevation = v["id"].as_str().unwrap().to_owned();

    // Break-glass: a reason code is required; then open and close.
    let (code, _, _) = cli(
        &cfg,
        &url,
        Some("alice-token"),
        &[
            "breakglass",
            "open",
            "--agent",
            "deploy-bot",
            "--reason",
            "whim",
        ],
    );
    assert_eq!(code, 1);
    let (code, v, err) = cli(
        &cfg,
        &url,
        Some("alice-token"),
        &[
            "breakglass",
            "open",
            "--agent",
            "deploy-bot",
            "--reason",
            "incident",
            "--ttl",
            "15m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let bg = v["id"].as_str().unwrap().to_owned();
    let (code, _, err) = cli(
        &cfg,
        &url,
        Some("alice-token"),
        &["breakglass", "close", &bg],
    );
    assert_eq!(code, 0, "{err}");
    drop(server);

    // Restart: the approved elevation is still there.
    let server = common::serve(&cfg);
    let (code, v, _) = cli(&cfg, &server.url, None, &["elevation", "list"]);
    assert_eq!(code, 0);
    let e = v["elevations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == elevation.as_str())
        .unwrap()
        .clone();
    assert_eq!(e["status"], "approved");
    assert_eq!(e["decided_by"], "approver:alice");
    // And the whole story verifies in the audit log.
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
