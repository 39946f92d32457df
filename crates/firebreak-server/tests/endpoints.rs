//! Introspection, revocation, the admin API, keys and discovery, end to end on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use common::*;
use firebreak_server::form::encode_pairs;
use serde_json::{Value, json};

/// SECURITY-TESTS.md X11: introspection needs client auth; foreign, unknown, expired and
/// revoked tokens all get the same `{"active": false}`.
#[tokio::test]
async fn x11_introspection_requires_client_auth() {
    let h = Harness::start().await;
    let t = h.tool_token(Some("read")).await;
    let url = format!("{}/oauth2/introspect", h.url);
    let body = encode_pairs([("token", t.as_str())]);
    let r = h.http.post_form(&url, &[], &body).await;
    assert_oauth(&r, 401, "invalid_client", "malformed_request");
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(r.json().get("active").is_none());
    let r = h.introspect(&t, "rs-tools", "wrong").await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(r.json().get("active").is_none());
    // Positive twin.
    let r = h.introspect(&t, "rs-tools", CLIENT_SECRET).await;
    let v = r.json();
    assert_eq!(
        (v["active"].clone(), v["sub"].clone(), v["scope"].clone()),
        (json!(true), json!("deploy-bot"), json!("read"))
    );
    // Another audience's resource server learns nothing.
    assert_eq!(
        h.introspect(&t, "rs-other", OTHER_SECRET).await.json(),
        json!({ "active": false })
    );
    // Unknown, expired and revoked look the same.
    let unknown = h
        .introspect("not-a-token", "rs-tools", CLIENT_SECRET)
        .await
        .json();
    let expired = {
        h.clock.advance_secs(301 + 60);
        let v = h.introspect(&t, "rs-tools", CLIENT_SECRET).await.json();
        h.clock.advance_secs(-(301 + 60));
        v
    };
    let sid = claims_of(&t)["sid"].as_str().unwrap().to_owned();
    assert_eq!(
        h.admin_delete(&format!("/v1/sessions/{sid}")).await.status,
        200
    );
    let revoked = h.introspect(&t, "rs-tools", CLIENT_SECRET).await.json();
    assert_eq!(unknown, json!({ "active": false }));
    assert_eq!(expired, unknown);
    assert_eq!(revoked, unknown);
    // Admin may introspect anything.
    let t2 = h.tool_token(None).await;
    let auth = format!("Bearer {}", h.admin);
    let r = h
        .http
        .post_form(
            &url,
            &[("authorization", &auth)],
            &encode_pairs([("token", t2.as_str())]),
        )
        .await;
    assert_eq!(r.json()["active"], true);
}

/// SECURITY-TESTS.md X12: revocation by a non-owner, unauthenticated, and of unknown tokens.
#[tokio::test]
async fn x12_revocation_by_non_owner_refused() {
    let h = Harness::start().await;
    let victim = h.tool_token(None).await;
    // other-bot's own broker token.
    let mut c = h
        .issuer
        .github_claims(&h.url, "acme/other", "refs/heads/main", h.now());
    c["repository_id"] = json!("4343");
    let r = h.exchange(&h.issuer.sign(&c), JWT, &h.url, None).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let other_self = r.json()["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/oauth2/revoke", h.url);
    let body = encode_pairs([("token", victim.as_str())]);
    let auth = format!("Bearer {other_self}");
    assert_oauth(
        &h.http
            .post_form(&url, &[("authorization", &auth)], &body)
            .await,
        400,
        "invalid_grant",
        "malformed_request",
    );
    assert_eq!(
        h.introspect(&victim, "rs-tools", CLIENT_SECRET)
            .await
            .json()["active"],
        true,
        "still active"
    );
    // Unauthenticated.
    let r = h.http.post_form(&url, &[], &body).await;
    assert_oauth(&r, 401, "invalid_client", "malformed_request");
    // A client without the revoke role.
    let basic_tools = basic("rs-tools", CLIENT_SECRET);
    assert_eq!(
        h.http
            .post_form(&url, &[("authorization", &basic_tools)], &body)
            .await
            .status,
        403
    );
    // Unknown token: 200, so the endpoint is no oracle.
    assert_eq!(
        h.http
            .post_form(
                &url,
                &[("authorization", &auth)],
                &encode_pairs([("token", "bogus")])
            )
            .await
            .status,
        200
    );
    // Positive twins: the owner revokes (with its broker token), and a revoke-role client may.
    let mine = h.exchange(&h.subject(), JWT, &h.url, None).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth_mine = format!("Bearer {mine}");
    assert_eq!(
        h.http
            .post_form(&url, &[("authorization", &auth_mine)], &body)
            .await
            .status,
        200
    );
    assert_eq!(
        h.introspect(&victim, "rs-tools", CLIENT_SECRET)
            .await
            .json(),
        json!({ "active": false })
    );
    let another = h.tool_token(None).await;
    let basic_other = basic("rs-other", OTHER_SECRET);
    assert_eq!(
        h.http
            .post_form(
                &url,
                &[("authorization", &basic_other)],
                &encode_pairs([("token", another.as_str())])
            )
            .await
            .status,
        200
    );
    assert_eq!(
        h.introspect(&another, "rs-tools", CLIENT_SECRET)
            .await
            .json(),
        json!({ "active": false })
    );
}

/// SECURITY-TESTS.md X17: revoking a session while children are being exchanged; after the
/// revocation commits, no descendant is active and none can be added.
#[tokio::test]
async fn x17_cascade_revocation_racing_child_exchanges() {
    let h = std::sync::Arc::new(Harness::start().await);
    let root = h.tool_token(Some("read")).await;
    let sid = claims_of(&root)["sid"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let h = std::sync::Arc::clone(&h);
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            h.exchange(&root, ACCESS, TOOLS, Some("read")).await
        }));
    }
    let revoke = h.admin_delete(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(revoke.status, 200);
    let mut issued = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => issued.push(r.json()["access_token"].as_str().unwrap().to_owned()),
            400 => assert_oauth(&r, 400, "invalid_request", "revoked"),
            s => panic!("unexpected status {s}"),
        }
    }
    for child in &issued {
        assert_eq!(
            h.introspect(child, "rs-tools", CLIENT_SECRET).await.json(),
            json!({ "active": false })
        );
    }
    assert_oauth(
        &h.exchange(&root, ACCESS, TOOLS, Some("read")).await,
        400,
        "invalid_request",
        "revoked",
    );
    // The lineage is visible: every child that was issued records the root as parent.
    let v = h
        .admin_get(&format!("/v1/sessions/{sid}"), Some(&h.admin))
        .await
        .json();
    assert_eq!(v["state"], "revoked");
    let desc = v["descendants"].as_array().unwrap();
    assert_eq!(desc.len(), issued.len());
    assert!(
        desc.iter()
            .all(|d| d["parent"] == sid.as_str() && d["state"] == "revoked" && d["depth"] == 1)
    );
}

/// SECURITY-TESTS.md X18: admin API authentication and the admin token's mode.
#[tokio::test]
async fn x18_admin_api_authentication() {
    let h = Harness::start().await;
    let r = h.admin_get("/v1/agents", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(
        r.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("/unauthenticated")
    );
    assert_eq!(
        h.admin_get("/v1/agents", Some("fbadm_wrong")).await.status,
        401
    );
    let agent_token = h.tool_token(None).await;
    let r = h.admin_get("/v1/agents", Some(&agent_token)).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["type"].as_str().unwrap().ends_with("/forbidden"));
    let r = h.admin_get("/v1/agents", Some(&h.admin)).await;
    assert_eq!(r.status, 200);
    let agents = r.json();
    assert_eq!(agents["agents"][0]["id"], "deploy-bot");
    assert!(agents["agents"][0]["last_used"].is_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.dir.path().join("data/admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn revoking_an_agent_revokes_its_sessions_and_refuses_new_exchanges() {
    let h = Harness::start().await;
    let t = h.tool_token(None).await;
    let auth = format!("Bearer {}", h.admin);
    let r = h
        .http
        .send(
            "DELETE",
            &format!("{}/v1/agents/deploy-bot", h.url),
            &[("authorization", &auth)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.introspect(&t, "rs-tools", CLIENT_SECRET).await.json(),
        json!({ "active": false })
    );
    assert_oauth(
        &h.exchange(&h.subject(), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "revoked",
    );
}

#[tokio::test]
async fn discovery_documents_and_metrics() {
    let h = Harness::start().await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let v = h.http.get(&format!("{}{path}", h.url), &[]).await.json();
        assert_eq!(v["issuer"], h.url.as_str());
        assert_eq!(v["token_endpoint"], format!("{}/oauth2/token", h.url));
        assert_eq!(v["jwks_uri"], format!("{}/jwks.json", h.url));
        assert_eq!(v["grant_types_supported"], json!([EXCHANGE]));
    }
    assert_eq!(
        h.http.get(&format!("{}/healthz", h.url), &[]).await.status,
        200
    );
    assert_eq!(
        h.http.get(&format!("{}/readyz", h.url), &[]).await.status,
        200
    );
    let _ = h.tool_token(None).await;
    let _ = h.exchange("garbage", JWT, TOOLS, None).await;
    let m = String::from_utf8(
        h.http
            .get(&format!("{}/metrics", h.url), &[])
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(
        m.contains("firebreak_exchanges_total{outcome=\"issued\",reason=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("firebreak_exchanges_total{outcome=\"denied\",reason=\"invalid_token\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("firebreak_denied_total{reason=\"invalid_token\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("firebreak_exchange_duration_seconds_count 2"),
        "{m}"
    );
    assert!(
        m.contains("firebreak_issued_token_ttl_seconds_count 1"),
        "{m}"
    );
}

fn jwks_kids(v: &Value) -> Vec<String> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Keys: next is published before it signs; the retiring key stays published until every
/// token it signed has expired (max_ttl + leeway), then disappears.
#[tokio::test]
async fn key_rotation_publishes_before_use_and_retires_after_expiry() {
    let h = Harness::start().await;
    let jwks = |h: &Harness| {
        let url = format!("{}/jwks.json", h.url);
        let http = h.http.clone();
        async move { http.get(&url, &[]).await.json() }
    };
    let before = jwks(&h).await;
    assert_eq!(jwks_kids(&before).len(), 2, "active + next");
    let old = h.tool_token(None).await;
    let old_kid = h.broker.keys().active().kid().to_owned();
    let next_kid = jwks_kids(&before)
        .into_iter()
        .find(|k| *k != old_kid)
        .unwrap();
    // Too early: next was published just now.
    let auth = format!("Bearer {}", h.admin);
    let rotate = |q: &'static str| {
        let http = h.http.clone();
        let url = format!("{}/v1/keys/rotate{q}", h.url);
        let auth = auth.clone();
        async move {
            http.send("POST", &url, &[("authorization", &auth)], Vec::new())
                .await
        }
    };
    assert_eq!(rotate("").await.status, 409);
    h.clock.advance_secs(61);
    assert_eq!(rotate("").await.status, 200);
    let after = jwks(&h).await;
    let kids = jwks_kids(&after);
    assert_eq!(kids.len(), 3, "retiring + active + next");
    assert!(kids.contains(&old_kid) && kids.contains(&next_kid));
    let new = h.tool_token(None).await;
    assert_eq!(
        h.introspect(&old, "rs-tools", CLIENT_SECRET).await.json()["active"],
        true
    );
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            new.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["kid"],
        next_kid.as_str(),
        "the previously published next key signs"
    );
    // After max_ttl (1h default) + leeway the retiring key is retired and unpublished.
    h.clock.advance_secs(3600 + 60);
    h.broker.maintain().await.unwrap();
    let later = jwks_kids(&jwks(&h).await);
    assert!(!later.contains(&old_kid));
    assert_eq!(later.len(), 2);
    let keys = h.admin_get("/v1/keys", Some(&h.admin)).await.json();
    let mut states: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    // The first two keys share a creation instant, so their listing order is not fixed.
    states.sort_unstable();
    assert_eq!(states, vec!["active", "next", "retired"]);
}

/// Interop: an independent JOSE implementation (the `jsonwebtoken` crate) verifies an issued
/// token against the served JWKS.
#[tokio::test]
async fn interop_issued_token_verifies_with_jsonwebtoken() {
    let h = Harness::start().await;
    let t = h.tool_token(Some("read")).await;
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&h.http.get(&format!("{}/jwks.json", h.url), &[]).await.body)
            .unwrap();
    let header = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[TOOLS]);
    v.set_issuer(&[h.url.as_str()]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub", "jti"]);
    let data = jsonwebtoken::decode::<Value>(&t, &key, &v).unwrap();
    assert_eq!(data.claims["sub"], "deploy-bot");
    // And it refuses a tampered one: the check is real.
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"sub":"evil"}"#,
    );
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &key, &v).is_err());
}
