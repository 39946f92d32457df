//! Policy as code end to end: Cedar decisions at the exchange, JIT elevation, the approval
//! queue, self-approval refusal, break-glass, AuthZEN and reload, on a real broker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use std::sync::Arc;

use common::*;
use firebreak_server::form::encode_pairs;
use serde_json::{Value, json};

const POLICIES: &str = r#"
@id("admin-scope-needs-elevation")
permit(principal == Agent::"deploy-bot", action == Action::"exchange", resource == Target::"tools")
when { context.scope.contains("admin") && context.elevations.contains("exchange:tools") };

@id("elevation-needs-approval")
@approval("required")
permit(principal, action == Action::"elevate", resource);

@id("break-glass-scope")
permit(principal == Agent::"deploy-bot", action == Action::"exchange", resource == Target::"tools")
when { context.break_glass && context.scope.contains("breakglass") };
"#;

fn extra(dir: &std::path::Path) -> String {
    let h = |s: &str| firebreak_token::sha256_hex(s.as_bytes());
    format!(
        r#"
[policy]
dir = "{pdir}"

[elevation]
reason_codes = ["incident", "change-ticket"]
max_duration = "1h"

[breakglass]
default_duration = "30m"
max_duration = "2h"

[[approver]]
id = "alice"
token_sha256 = "{a}"
expires = 2099-01-01
identities = [{{ iss = "https://idp.acme.example", sub = "alice" }}]
emails = ["alice@acme.example"]

[[approver]]
id = "bob"
token_sha256 = "{b}"
expires = 2099-01-01
emails = ["Platform@Acme.example"]

[[approver]]
id = "old"
token_sha256 = "{o}"
expires = 2000-01-01
emails = ["old@acme.example"]

[[client]]
id = "pdp-client"
secret_sha256 = "{e}"
roles = ["evaluate"]
"#,
        pdir = dir.join("policies").display(),
        a = h("alice-token"),
        b = h("bob-token"),
        o = h("old-token"),
        e = h("eval-secret"),
    )
}

async fn harness() -> Harness {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), POLICIES).unwrap();
    let extra = extra(dir.path());
    Harness::start_with(&extra, Some(dir), None).await
}

impl Harness {
    /// A token for the broker itself (what an agent uses for the grant API).
    async fn broker_token(&self) -> String {
        let r = self
            .exchange(&self.subject(), JWT, &self.url.clone(), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.json());
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn post_json(&self, path: &str, bearer: &str, body: Value) -> firebreak_testkit::Reply {
        let auth = format!("Bearer {bearer}");
        self.http
            .send(
                "POST",
                &format!("{}{path}", self.url),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
    }

    async fn exchange_with(&self, scope: &str, extra: &[(&str, &str)]) -> firebreak_testkit::Reply {
        let s = self.subject();
        let mut pairs = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", s.as_str()),
            ("subject_token_type", JWT),
            ("audience", TOOLS),
            ("scope", scope),
        ];
        pairs.extend_from_slice(extra);
        self.token_raw(&encode_pairs(pairs)).await
    }

    async fn request_elevation(&self, body: Value) -> Value {
        let t = self.broker_token().await;
        let r = self.post_json("/v1/elevations", &t, body).await;
        assert_eq!(r.status, 201, "{}", r.json());
        r.json()
    }
}

fn elevation_body(duration: &str, single_use: bool) -> Value {
    json!({ "action": "exchange", "target": "tools", "reason_code": "incident", "justification": "prod is down", "duration": duration, "single_use": single_use })
}

#[tokio::test]
async fn exchange_decisions_come_from_cedar_with_reasons_and_version() {
    let h = harness().await;
    let r = h.exchange_with("read", &[]).await;
    assert_eq!(r.status, 200);
    let pv = claims_of(r.json()["access_token"].as_str().unwrap())["fb_pv"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(pv.starts_with("sha256:"));
    // Not granted without an elevation: the policy refuses the scope (invalid_scope).
    assert_oauth(
        &h.exchange_with("admin", &[]).await,
        400,
        "invalid_scope",
        "scope_not_granted",
    );
    // The audit record of each decision names its policy and version.
    let admin = format!("Bearer {}", h.admin);
    let export = h
        .http
        .get(
            &format!("{}/v1/audit/export", h.url),
            &[("authorization", &admin)],
        )
        .await;
    let recs: Vec<Value> = String::from_utf8_lossy(&export.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allow = recs
        .iter()
        .find(|r| r["kind"] == "exchange" && r["decision"] == "allow")
        .unwrap();
    assert_eq!(
        allow["reasons"],
        json!([{ "policy": "grant:deploy-bot:tools" }])
    );
    assert_eq!(allow["policy_version"], pv.as_str());
    let deny = recs
        .iter()
        .find(|r| r["kind"] == "exchange" && r["decision"] == "deny")
        .unwrap();
    assert_eq!(deny["policy_version"], pv.as_str());
}

/// SECURITY-TESTS.md X13: an elevation used after expiry, from another session, or twice when
/// single-use → 400 invalid_grant, nothing issued, and the audit record names the elevation.
#[tokio::test]
async fn x13_elevation_after_expiry_other_session_or_reused_refused() {
    let h = harness().await;
    let e = h.request_elevation(elevation_body("5m", false)).await;
    assert_eq!(e["status"], "pending", "policy queues it for approval");
    let approval = e["approval_id"].as_str().unwrap().to_owned();
    let r = h
        .post_json(
            &format!("/v1/approvals/{approval}/approve"),
            "alice-token",
            json!({ "why": "on call" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["status"], "approved");
    let id = e["id"].as_str().unwrap().to_owned();
    // Positive twin: within the elevation the admin scope is granted, bounded by its end.
    h.clock.advance_secs(10);
    let r = h.exchange_with("admin", &[("elevation", &id)]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(r.json()["expires_in"].as_i64().unwrap() <= 290);
    // +5 min 1 s: hard expiry.
    h.clock.advance_secs(291);
    let r = h.exchange_with("admin", &[("elevation", &id)]).await;
    assert_oauth(&r, 400, "invalid_grant", "elevation_expired");
    let admin = format!("Bearer {}", h.admin);
    let export = String::from_utf8(
        h.http
            .get(
                &format!("{}/v1/audit/export", h.url),
                &[("authorization", &admin)],
            )
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        export.lines().any(|l| l.contains("\"decision\":\"deny\"")
            && l.contains(&format!("\"elevation\":\"{id}\""))),
        "the refusal names the elevation"
    );

    // Single use: the second use is refused.
    let e = h.request_elevation(elevation_body("5m", true)).await;
    let ap = e["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "alice-token",
            json!({})
        )
        .await
        .status,
        200
    );
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.exchange_with("admin", &[("elevation", &id)]).await.status,
        200
    );
    assert_oauth(
        &h.exchange_with("admin", &[("elevation", &id)]).await,
        400,
        "invalid_grant",
        "elevation_expired",
    );

    // Bound to another session: refused from this one.
    let parent = h.tool_token(Some("read")).await;
    let sid = claims_of(&parent)["sid"].as_str().unwrap().to_owned();
    let mut body = elevation_body("5m", false);
    body["session"] = json!("s_someone_elses_session");
    let e = h.request_elevation(body).await;
    let ap = e["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "alice-token",
            json!({})
        )
        .await
        .status,
        200
    );
    let id = e["id"].as_str().unwrap().to_owned();
    let child = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", parent.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", TOOLS),
        ("scope", "read"),
        ("elevation", id.as_str()),
    ]);
    assert_oauth(
        &h.token_raw(&child).await,
        400,
        "invalid_grant",
        "elevation_expired",
    );
    let _ = sid;
}

/// SECURITY-TESTS.md X14: approval by the requester's own side (the agent's owner under another
/// casing of the e-mail, the agent itself) → 403 self-approval, still pending; another approver
/// succeeds; an expired approver is not an approver.
#[tokio::test]
async fn x14_self_approval_refused() {
    let h = harness().await;
    let e = h.request_elevation(elevation_body("10m", false)).await;
    let ap = e["approval_id"].as_str().unwrap().to_owned();
    let r = h
        .post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "bob-token",
            json!({ "why": "mine" }),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("/self-approval"),
        "{}",
        r.json()
    );
    let agent = h.broker_token().await;
    assert_eq!(
        h.post_json(&format!("/v1/approvals/{ap}/approve"), &agent, json!({}))
            .await
            .status,
        403
    );
    assert_eq!(
        h.post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "old-token",
            json!({})
        )
        .await
        .status,
        401
    );
    let admin = format!("Bearer {}", h.admin);
    let a = h
        .http
        .get(
            &format!("{}/v1/approvals/{ap}", h.url),
            &[("authorization", &admin)],
        )
        .await
        .json();
    assert_eq!(a["status"], "pending");
    let r = h
        .post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "alice-token",
            json!({ "why": "ok" }),
        )
        .await;
    assert_eq!(r.status, 200);
    let a = h
        .http
        .get(
            &format!("{}/v1/approvals/{ap}", h.url),
            &[("authorization", &admin)],
        )
        .await
        .json();
    assert_eq!(
        (
            a["status"].clone(),
            a["decided_by"].clone(),
            a["why"].clone()
        ),
        (json!("approved"), json!("approver:alice"), json!("ok"))
    );
    // A decided approval cannot be decided again.
    assert_eq!(
        h.post_json(
            &format!("/v1/approvals/{ap}/deny"),
            "alice-token",
            json!({})
        )
        .await
        .status,
        409
    );
    let m = String::from_utf8(
        h.http
            .get(&format!("{}/metrics", h.url), &[])
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(m.contains("firebreak_approval_wait_seconds_count 1"), "{m}");
    assert!(
        m.contains("firebreak_elevations_total{outcome=\"approved\",reason=\"incident\"} 1"),
        "{m}"
    );
}

/// SECURITY-TESTS.md X15: break-glass needs a known reason code, a duration within the cap and
/// an approver; once open it unlocks what policy says until its end, then exchanges under it
/// get invalid_grant; the audit log shows the opening, the use and the close.
#[tokio::test]
async fn x15_breakglass_rules_and_expiry() {
    let h = harness().await;
    let open = |body: Value, who: &'static str| {
        let h = &h;
        async move { h.post_json("/v1/breakglass", who, body).await }
    };
    assert_eq!(
        open(json!({ "agent": "deploy-bot" }), "alice-token")
            .await
            .status,
        400
    );
    assert_eq!(
        open(
            json!({ "agent": "deploy-bot", "reason_code": "whim" }),
            "alice-token"
        )
        .await
        .status,
        400
    );
    assert_eq!(
        open(
            json!({ "agent": "deploy-bot", "justification": "trust me" }),
            "alice-token"
        )
        .await
        .status,
        400
    );
    assert_eq!(
        open(
            json!({ "agent": "deploy-bot", "reason_code": "incident", "duration": "3h" }),
            "alice-token"
        )
        .await
        .status,
        400
    );
    let agent = h.broker_token().await;
    let r = h
        .post_json(
            "/v1/breakglass",
            &agent,
            json!({ "agent": "deploy-bot", "reason_code": "incident" }),
        )
        .await;
    assert_eq!(r.status, 403);
    // Nothing was granted by the refusals.
    assert_eq!(
        h.exchange_with("breakglass", &[]).await.json()["error"],
        "invalid_scope"
    );
    let r = open(json!({ "agent": "deploy-bot", "reason_code": "incident", "duration": "15m", "justification": "outage" }), "alice-token").await;
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = h.exchange_with("breakglass", &[("break_glass", &id)]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(r.json()["expires_in"].as_i64().unwrap() <= 900);
    h.clock.advance_secs(15 * 60 + 1);
    assert_oauth(
        &h.exchange_with("breakglass", &[("break_glass", &id)]).await,
        400,
        "invalid_grant",
        "elevation_expired",
    );
    assert_eq!(
        h.exchange_with("breakglass", &[]).await.json()["error"],
        "invalid_scope",
        "closed by itself"
    );
    h.broker.maintain().await.unwrap();
    let admin = format!("Bearer {}", h.admin);
    let export = String::from_utf8(
        h.http
            .get(
                &format!("{}/v1/audit/export", h.url),
                &[("authorization", &admin)],
            )
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    let bg: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.to_string().contains(&id))
        .collect();
    let kinds: Vec<String> = bg
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["action"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(kinds.contains(&"break_glass/open".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"exchange/exchange".to_owned()),
        "the use is tagged: {kinds:?}"
    );
    assert!(
        kinds.contains(&"break_glass/expire".to_owned()),
        "{kinds:?}"
    );
    let used = bg
        .iter()
        .find(|v| v["kind"] == "exchange" && v["decision"] == "allow")
        .unwrap();
    assert_eq!(used["break_glass"]["opened_by"], "approver:alice");
}

/// An approved elevation survives a restart; an expired one does not come back.
#[tokio::test]
async fn elevations_survive_restart_and_expiry_holds() {
    let h = harness().await;
    let e = h.request_elevation(elevation_body("10m", false)).await;
    let ap = e["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.post_json(
            &format!("/v1/approvals/{ap}/approve"),
            "alice-token",
            json!({})
        )
        .await
        .status,
        200
    );
    let id = e["id"].as_str().unwrap().to_owned();
    let now = h.now();
    let (dir, issuer) = h.stop().await;
    let ex = extra(dir.path());
    let h = Harness::start_with(&ex, Some(Arc::clone(&dir)), Some(issuer.clone())).await;
    h.clock.set(now.plus_secs(60));
    assert_eq!(
        h.exchange_with("admin", &[("elevation", &id)]).await.status,
        200,
        "approved elevation survived"
    );
    let (dir, issuer) = h.stop().await;
    let h = Harness::start_with(&ex, Some(dir), Some(issuer)).await;
    h.clock.set(now.plus_secs(601));
    assert_oauth(
        &h.exchange_with("admin", &[("elevation", &id)]).await,
        400,
        "invalid_grant",
        "elevation_expired",
    );
    let admin = format!("Bearer {}", h.admin);
    let v = h
        .http
        .get(
            &format!("{}/v1/elevations/{id}", h.url),
            &[("authorization", &admin)],
        )
        .await
        .json();
    assert_eq!(v["status"], "expired");
}

/// AuthZEN answers exactly what the exchange decides.
#[tokio::test]
async fn authzen_evaluation_matches_the_exchange() {
    let h = harness().await;
    let url = format!("{}/access/v1/evaluation", h.url);
    let ask = |scope: Value, auth: Option<String>| {
        let (http, url) = (h.http.clone(), url.clone());
        async move {
            let body = json!({ "subject": { "type": "agent", "id": "deploy-bot" }, "action": { "name": "exchange" }, "resource": { "type": "target", "id": "tools" }, "context": { "scope": scope } });
            let mut hd = vec![("content-type".to_owned(), "application/json".to_owned())];
            if let Some(a) = auth {
                hd.push(("authorization".to_owned(), a));
            }
            let refs: Vec<(&str, &str)> =
                hd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http.send("POST", &url, &refs, body.to_string()).await
        }
    };
    let auth = Some(basic("pdp-client", "eval-secret"));
    let yes = ask(json!(["read"]), auth.clone()).await.json();
    assert_eq!(yes["decision"], true);
    assert_eq!(
        yes["context"]["reasons"],
        json!([{ "policy": "grant:deploy-bot:tools" }])
    );
    let no = ask(json!(["admin"]), auth.clone()).await.json();
    assert_eq!(no["decision"], false);
    assert_eq!(h.exchange_with("read", &[]).await.status, 200);
    assert_eq!(h.exchange_with("admin", &[]).await.status, 400);
    // SECURITY-TESTS.md X11: the evaluation endpoint needs client authentication.
    let r = ask(json!(["read"]), None).await;
    assert_eq!(r.status, 401);
    assert!(r.json().get("decision").is_none());
    assert_eq!(
        ask(json!(["read"]), Some(basic("rs-tools", CLIENT_SECRET)))
            .await
            .status,
        403
    );
}

/// Reload: a good set replaces the old one atomically, a bad one is refused and the old stays.
#[tokio::test]
async fn policy_reload_keeps_the_old_set_on_error() {
    let h = harness().await;
    let url = format!("{}/v1/policy/reload", h.url);
    let admin = format!("Bearer {}", h.admin);
    let before = claims_of(&h.tool_token(Some("read")).await)["fb_pv"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(
        h.dir.path().join("policies/broken.cedar"),
        "permit(principal, action, resource) when { nonsense };",
    )
    .unwrap();
    let r = h
        .http
        .send("POST", &url, &[("authorization", &admin)], Vec::new())
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("broken.cedar"),
        "{}",
        r.json()
    );
    assert_eq!(
        claims_of(&h.tool_token(Some("read")).await)["fb_pv"],
        before.as_str(),
        "old set still in force"
    );
    std::fs::remove_file(h.dir.path().join("policies/broken.cedar")).unwrap();
    std::fs::write(
        h.dir.path().join("policies/extra.cedar"),
        "@id(\"no-write\")\nforbid(principal, action == Action::\"exchange\", resource) when { context.scope.contains(\"write\") };\n",
    )
    .unwrap();
    let r = h
        .http
        .send("POST", &url, &[("authorization", &admin)], Vec::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["previous"], before.as_str());
    assert_ne!(r.json()["policy_version"], before.as_str());
    let denied = h.exchange_with("write", &[]).await;
    // The target stays allowed without `write`, so the refusal is the scope's.
    assert_eq!(denied.json()["error"], "invalid_scope", "{}", denied.json());
    assert_eq!(h.exchange_with("read", &[]).await.status, 200);
    // Only an admin may reload.
    assert_eq!(h.http.send("POST", &url, &[], Vec::new()).await.status, 401);
}

/// Bad elevation requests: unknown reason code, duration over the cap, a target in another
/// environment, an unknown action → 400 problem JSON, nothing stored.
#[tokio::test]
async fn bad_elevation_requests_refused() {
    let h = harness().await;
    let t = h.broker_token().await;
    for body in [
        json!({ "action": "exchange", "target": "tools", "reason_code": "whim", "justification": "x", "duration": "5m" }),
        json!({ "action": "exchange", "target": "tools", "reason_code": "incident", "justification": "x", "duration": "2h" }),
        json!({ "action": "exchange", "target": "staging-tools", "reason_code": "incident", "justification": "x", "duration": "5m" }),
        json!({ "action": "fly", "target": "tools", "reason_code": "incident", "justification": "x", "duration": "5m" }),
        json!({ "action": "exchange", "target": "tools", "reason_code": "incident", "duration": "5m" }),
    ] {
        let r = h.post_json("/v1/elevations", &t, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.json());
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    let admin = format!("Bearer {}", h.admin);
    let list = h
        .http
        .get(
            &format!("{}/v1/elevations", h.url),
            &[("authorization", &admin)],
        )
        .await
        .json();
    assert_eq!(list["elevations"].as_array().unwrap().len(), 0);
    // An agent cannot ask on another agent's behalf.
    let r = h.post_json("/v1/elevations", &t, json!({ "agent": "other-bot", "action": "exchange", "target": "tools", "reason_code": "incident", "justification": "x" })).await;
    assert_eq!(r.status, 403);
}
