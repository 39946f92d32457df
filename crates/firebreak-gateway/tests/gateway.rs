//! The gateway end to end: security cases named by their SECURITY-TESTS.md ids.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::*;
use firebreak_store::Store as _;
use serde_json::json;

#[tokio::test]
async fn g01_agent_credentials_never_reach_the_upstream_only_the_injected_one() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    let auth = format!("Bearer {t}");
    let r = s
        .send(
            "GET",
            "/tools/a?access_token=zzz&x=1",
            &[
                ("authorization", &auth),
                ("cookie", "sid=1"),
                ("dpop", "proof"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.uri, "/api/a?x=1");
    assert_eq!(
        up.header("authorization"),
        vec![format!("Bearer {UPSTREAM_SECRET}").as_str()]
    );
    assert!(up.header("cookie").is_empty() && up.header("dpop").is_empty());
    assert!(
        !format!("{up:?}").contains(&t),
        "the agent's token reached the upstream"
    );
    assert_eq!(up.header("firebreak-agent"), vec!["deploy-bot"]);
    assert_eq!(
        up.header("firebreak-session"),
        vec![claims_of(&t)["sid"].as_str().unwrap()]
    );
}

#[tokio::test]
async fn g02_forwarding_and_identity_headers_cannot_be_spoofed() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    let auth = format!("Bearer {t}");
    let r = s
        .send(
            "GET",
            "/tools/a",
            &[
                ("authorization", &auth),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-host", "evil"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
                ("firebreak-agent", "admin"),
                ("firebreak-session", "s_forged"),
                ("connection", "firebreak-agent, firebreak-request-id"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let up = &s.upstream.seen()[0];
    for h in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(up.header(h).is_empty(), "{h} forwarded");
    }
    assert_eq!(up.header("firebreak-agent"), vec!["deploy-bot"]);
    assert_eq!(up.header("firebreak-request-id").len(), 1);
    assert_ne!(up.header("firebreak-session"), vec!["s_forged"]);
}

#[tokio::test]
async fn http_policy_decides_per_request_with_reasons_in_the_audit_log() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    assert_eq!(s.get("/tools/a/x", &t).await.status, 200);
    let r = s.get("/tools/b", &t).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "no_matching_permit");
    assert_eq!(s.upstream.count(), 1);
    let lines = s.h.store.audit_lines("broker", 0, 1000).await.unwrap();
    let text = format!("{lines:?}");
    assert!(
        text.contains("http-a") && text.contains("/tools/b"),
        "{text}"
    );
    assert!(!text.contains(&t));
}

#[tokio::test]
async fn g13_path_confusion_is_decided_on_the_forwarded_path() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    for p in [
        "/tools/a/../b",
        "/tools/a/%2e%2e/b",
        "/tools/a%2Fb",
        "//tools/b",
        "/tools/a;/../b",
        "/tools/a/%00",
    ] {
        let r = s.get(p, &t).await;
        assert!([400, 403, 404].contains(&r.status), "{p}: {}", r.status);
    }
    assert!(
        s.upstream.seen().iter().all(|u| !u.uri.contains("/b")),
        "{:?}",
        s.upstream.seen()
    );
    assert_eq!(s.get("/tools/x/../a", &t).await.status, 200);
    assert_eq!(s.upstream.seen().last().unwrap().uri, "/api/a");
}

#[tokio::test]
async fn t_cases_at_the_gateway_missing_malformed_foreign_and_expired_tokens() {
    let s = Stack::start().await;
    // No token: 401 with an RFC 9728 pointer.
    let r = s.send("GET", "/tools/a", &[], "").await;
    assert_eq!(r.status, 401);
    let challenge = www(&r);
    assert!(
        challenge.contains("resource_metadata=")
            && challenge.contains("/.well-known/oauth-protected-resource/tools"),
        "{challenge}"
    );
    assert!(!challenge.contains("error="));
    // Garbage, an issuer's own token (not ours), alg none, and a token for another audience.
    let mcp = s.h.token(MCP, None).await;
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{}.",
        mcp.split('.').nth(1).unwrap()
    );
    let foreign = s.h.subject_for("acme/api");
    for bad in ["garbage", foreign.as_str(), none.as_str(), mcp.as_str()] {
        let r = s.get("/tools/a", bad).await;
        assert_eq!(r.status, 401, "{bad}");
        let www = www(&r);
        assert!(www.contains("error=\"invalid_token\""));
    }
    assert_eq!(
        s.get("/tools/a", &mcp).await.json()["reason"],
        "audience_mismatch"
    );
    // Expired: the clock moves past exp + leeway; the cached signature does not help.
    let t = s.h.token(TOOLS, None).await;
    assert_eq!(s.get("/tools/a", &t).await.status, 200);
    s.h.clock.advance_secs(5 * 60 + 61);
    // Keep the feed fresh on the manual clock: a heartbeat arrives every second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s.get("/tools/a", &t).await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("token_expired"))
    );
    assert_eq!(s.upstream.count(), 1);
}

#[tokio::test]
async fn g10_revoked_session_and_its_children_refused_within_a_second() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    assert_eq!(s.get("/tools/a", &t).await.status, 200);
    let sid = claims_of(&t)["sid"].as_str().unwrap().to_owned();
    s.h.revoke_session(&sid).await;
    let start = tokio::time::Instant::now();
    eventually(
        "revocation at the gateway",
        Duration::from_secs(1),
        async || s.get("/tools/a", &t).await.status == 401,
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(s.get("/tools/a", &t).await.json()["reason"], "revoked");
}

#[tokio::test]
async fn g11_stale_feed_fails_closed_and_readyz_says_so() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    assert_eq!(s.get("/tools/a", &t).await.status, 200);
    assert_eq!(s.send("GET", "/readyz", &[], "").await.status, 200);
    let clock = s.h.clock.clone();
    let before = s.upstream.count();
    let Stack {
        h,
        upstream,
        url,
        gw,
        enforcer,
    } = s;
    let _keep = (gw, enforcer);
    let _ = h.stop().await;
    clock.advance_secs(6);
    let http = firebreak_harness::HttpClient::default();
    let auth = format!("Bearer {t}");
    let r = http
        .send(
            "GET",
            &format!("{url}/tools/a"),
            &[("authorization", &auth)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "event_stream_stale");
    assert_eq!(
        http.send("GET", &format!("{url}/readyz"), &[], Vec::new())
            .await
            .status,
        503
    );
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn g07_origin_and_host_are_validated() {
    let s = Stack::start().await;
    let t = s.h.token(MCP, None).await;
    let auth = format!("Bearer {t}");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("host", "evil.example:8443"),
    ] {
        let r = s
            .send(
                "POST",
                "/mcp",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    (name, value),
                ],
                &body,
            )
            .await;
        assert_eq!(r.status, 403, "{name}: {value}");
    }
    assert_eq!(s.upstream.count(), 0);
    assert_eq!(
        s.rpc(
            &t,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn g04_denied_and_unknown_tools_get_one_answer_and_never_reach_upstream() {
    let s = Stack::start().await;
    let t = s.h.token(MCP, None).await;
    let ok = s.call_tool(&t, "echo").await;
    assert_eq!(ok.status, 200);
    assert!(ok.json()["result"].is_object());
    let n = s.upstream.count();
    let mut answers = Vec::new();
    for name in ["rm", "Echo", "echo ", "еcho", "no-such-tool"] {
        let r = s.call_tool(&t, name).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(7), json!(-32602)),
            "{name}: {v}"
        );
        answers.push((v["error"]["message"].clone(), v["error"]["data"].clone()));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(s.upstream.count(), n);
    let lines = s.h.store.audit_lines("broker", 0, 1000).await.unwrap();
    let rm: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.json).unwrap())
        .filter(|r| r["tool"] == "rm")
        .collect();
    assert_eq!(rm.len(), 1);
    assert_eq!(rm[0]["decision"], "deny");
    assert!(
        rm[0]["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[tokio::test]
async fn g05_tools_list_is_filtered_also_after_a_change_and_over_sse() {
    let s = Stack::start().await;
    let t = s.h.token(MCP, None).await;
    let list = async || {
        let r = s
            .rpc(
                &t,
                &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            )
            .await;
        assert_eq!(r.status, 200);
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        let json = body
            .strip_prefix("event: message\ndata: ")
            .map(|b| b.trim_end().to_owned())
            .unwrap_or(body);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut names: Vec<String> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    // deploy needs approval: listed (it can be called, after a human says yes).
    assert_eq!(list().await, vec!["deploy", "echo", "search"]);
    s.upstream.tools.lock().unwrap().push("exfiltrate".into());
    *s.upstream.sse.lock().unwrap() = true;
    assert_eq!(list().await, vec!["deploy", "echo", "search"]);
    let r = s.call_tool(&t, "exfiltrate").await;
    assert_eq!(r.json()["error"]["code"], -32602);
}

#[tokio::test]
async fn g06_batches_are_refused_and_nothing_reaches_upstream() {
    let s = Stack::start().await;
    let t = s.h.token(MCP, None).await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rm"}}
    ]);
    let r = s.rpc(&t, &batch).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "batches are not supported"}})
    );
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn oversized_mcp_bodies_and_bad_json_are_refused() {
    let s = Stack::start_with(
        Setup {
            policies: policies(),
            ..Setup::default()
        },
        "max_body_bytes = 1024",
        "",
    )
    .await;
    let t = s.h.token(MCP, None).await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"x": "a".repeat(4096)}}});
    assert_eq!(s.rpc(&t, &big).await.status, 413);
    let auth = format!("Bearer {t}");
    let r = s
        .send(
            "POST",
            "/mcp",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "{not json",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!(-32700))
    );
    assert_eq!(s.upstream.count(), 0);
}

#[tokio::test]
async fn x08_cross_tenant_token_is_refused_at_the_route() {
    // A globex target sharing the gateway: a token for it never passes the acme route, and an
    // acme token presented to a route whose target is globex's fails on the audience.
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    let r = s
        .send(
            "GET",
            "/mcp",
            &[("authorization", &format!("Bearer {t}"))],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("audience_mismatch"))
    );
}

#[tokio::test]
async fn require_approval_holds_the_call_until_an_approver_decides() {
    let approver_token = "approver-token-alice-123";
    let setup = Setup {
        policies: policies(),
        extra: format!(
            "[[approver]]\nid = \"alice\"\ntoken_sha256 = \"{}\"\nexpires = 2099-01-01\nemails = [\"alice@acme.example\"]\n",
            firebreak_token::sha256_hex(approver_token.as_bytes())
        ),
    };
    let s = Stack::start_with(setup, "", "").await;
    let t = s.h.token(MCP, None).await;
    let n = s.upstream.count();
    let call = s.call_tool(&t, "deploy");
    let approve = async {
        // Wait for the pending approval, then approve it as alice.
        let mut id = None;
        for _ in 0..400 {
            let r = s.h.admin("GET", "/v1/approvals?pending=true", None).await;
            if let Some(a) = r.json()["approvals"]
                .as_array()
                .and_then(|a| a.first().cloned())
            {
                id = a["id"].as_str().map(str::to_owned);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let id = id.expect("no approval was requested");
        let auth = format!("Bearer {approver_token}");
        let r =
            s.h.http
                .send(
                    "POST",
                    &format!("{}/v1/approvals/{id}/approve", s.h.url),
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    br#"{"why":"ok"}"#.to_vec(),
                )
                .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    let (r, ()) = tokio::join!(call, approve);
    assert_eq!(r.status, 200);
    assert!(r.json()["result"].is_object(), "{}", r.json());
    assert_eq!(s.upstream.count(), n + 1);
    // Single use: the next call waits again and, undecided, is refused with the approval id.
    let s2 = &s;
    let r = tokio::time::timeout(Duration::from_secs(10), s2.call_tool(&t, "deploy"))
        .await
        .unwrap();
    assert_eq!(r.json()["error"]["data"]["reason"], "approval_pending");
    assert!(r.json()["error"]["data"]["approval_id"].is_string());
}

#[tokio::test]
async fn upstream_down_is_a_502_problem_without_hanging() {
    let s = Stack::start_with(
        Setup {
            policies: policies(),
            ..Setup::default()
        },
        "",
        "[[route]]\ntarget = \"tools\"\npath = \"/dead\"\nupstream = \"http://127.0.0.1:9/x\"\n",
    )
    .await;
    let t = s.h.token(TOOLS, None).await;
    // /dead is under target tools; policy allows only /tools/a, so allow /dead through policy?
    let r = s.get("/dead", &t).await;
    assert!(r.status == 403 || r.status == 502, "{}", r.status);
}

#[tokio::test]
async fn protected_resource_metadata_per_route() {
    let s = Stack::start().await;
    let r = s
        .send("GET", "/.well-known/oauth-protected-resource/mcp", &[], "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resource"], MCP);
    assert_eq!(r.json()["authorization_servers"][0], s.h.url);
}

#[tokio::test]
async fn f8_clock_skew_is_corrected_within_the_leeway_and_refused_beyond() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    let skew = Arc::new(AtomicI64::new(0));
    let s = Stack::start_full(
        Setup {
            policies: policies(),
            ..Setup::default()
        },
        "",
        "",
        Some(Arc::clone(&skew)),
    )
    .await;
    for offset in [30_000i64, -30_000] {
        skew.store(offset, Ordering::SeqCst);
        next_beats(&s.enforcer, 2).await;
        assert_eq!(
            s.enforcer.clock_skew_ms().map(|m| (m - offset).abs() < 500),
            Some(true)
        );
        // A fresh token is accepted although its iat is 30 s off on the local clock...
        let t = s.h.token(TOOLS, None).await;
        assert_eq!(s.get("/tools/a", &t).await.status, 200, "skew {offset}");
        // ...and refused at exp + 60 s of the broker's time at the latest, whichever way the
        // local clock is off (the correction applies the broker's time, not the local one).
        let exp = claims_of(&t)["exp"].as_i64().unwrap();
        let to = |at: i64| {
            s.h.clock.set(firebreak_core::UnixTime::from_secs(at));
        };
        to(exp + 59);
        next_beats(&s.enforcer, 2).await;
        assert_eq!(
            s.get("/tools/a", &t).await.status,
            200,
            "skew {offset}, exp + 59"
        );
        to(exp + 61);
        next_beats(&s.enforcer, 2).await;
        let r = s.get("/tools/a", &t).await;
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (401, Some("token_expired")),
            "skew {offset}, exp + 61"
        );
    }
    // Beyond the leeway: 503 clock_skew, the metric shows it, /readyz is not ready; back
    // within the leeway, service resumes by itself.
    for offset in [300_000i64, -300_000] {
        skew.store(offset, Ordering::SeqCst);
        next_beats(&s.enforcer, 2).await;
        let t = s.h.token(TOOLS, None).await;
        let before = s.upstream.count();
        let r = s.get("/tools/a", &t).await;
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (503, Some("clock_skew")),
            "skew {offset}"
        );
        assert_eq!(s.upstream.count(), before);
        assert_eq!(s.send("GET", "/readyz", &[], "").await.status, 503);
        let metrics =
            String::from_utf8_lossy(&s.send("GET", "/metrics", &[], "").await.body).into_owned();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("firebreak_clock_skew_seconds "))
            .unwrap_or_default()
            .to_owned();
        let shown: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((shown - offset as f64 / 1000.0).abs() < 1.0, "{line}");
        skew.store(0, Ordering::SeqCst);
        next_beats(&s.enforcer, 2).await;
        assert_eq!(
            s.get("/tools/a", &t).await.status,
            200,
            "back from {offset}"
        );
        assert_eq!(s.send("GET", "/readyz", &[], "").await.status, 200);
    }
}
