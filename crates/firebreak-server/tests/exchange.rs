//! End-to-end tests of `/oauth2/token` against a real broker on loopback, named by the
//! SECURITY-TESTS.md case they cover. Every negative case has its positive twin.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use base64::Engine as _;
use common::*;
use firebreak_server::form::encode_pairs;
use firebreak_testkit::CountingListener;
use serde_json::{Value, json};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn exchange_issues_a_token_exactly_as_designed() {
    let h = Harness::start().await;
    let r = h.exchange(&h.subject(), JWT, TOOLS, Some("read")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.headers["cache-control"], "no-store");
    let v = r.json();
    assert_eq!(v["issued_token_type"], ACCESS);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 300);
    assert_eq!(v["scope"], "read");
    let token = v["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let c = claims_of(token);
    assert_eq!(c["iss"], h.url.as_str());
    assert_eq!(c["sub"], "deploy-bot");
    assert_eq!(c["client_id"], "deploy-bot");
    assert_eq!(c["aud"], TOOLS, "aud is one string");
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["env"], "production");
    assert_eq!(c["tier"], "write");
    assert_eq!(c["purpose"], "deploy acme/api");
    assert!(c["sid"].as_str().unwrap().starts_with("s_"));
    assert!(
        c["fb_pv"].as_str().unwrap().starts_with("sha256:"),
        "the Cedar policy version"
    );
    let now = h.now().as_secs();
    assert_eq!(c["exp"].as_i64().unwrap() - now, 300);
    // Without a scope: no scope (RFC 6749 §3.3 lets the server choose; we choose least).
    let r = h.exchange(&h.subject(), JWT, TOOLS, None).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("scope").is_none());
}

/// SECURITY-TESTS.md T01 at /oauth2/token.
#[tokio::test]
async fn t01_alg_none_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let claims = h.claims().to_string();
    for alg in ["none", "None", "NONE"] {
        for sig in ["", "c2ln"] {
            let t = format!(
                "{}.{}.{sig}",
                b64(&format!(
                    r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#,
                    h.issuer.key().kid()
                )),
                b64(&claims)
            );
            assert_oauth(
                &h.exchange(&t, JWT, TOOLS, None).await,
                400,
                "invalid_request",
                "invalid_token",
            );
        }
    }
    assert_eq!(h.issuer.jwks_fetches(), 0, "refused before any key lookup");
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T02 at /oauth2/token: HS256 keyed with the issuer's public key.
#[tokio::test]
async fn t02_hmac_with_public_key_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let jwk = h.issuer.key().public_key().to_jwk().to_string();
    let header = b64(&format!(
        r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#,
        h.issuer.key().kid()
    ));
    let input = format!("{header}.{}", b64(&h.claims().to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwk.as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()));
    assert_oauth(
        &h.exchange(&format!("{input}.{sig}"), JWT, TOOLS, None)
            .await,
        400,
        "invalid_request",
        "invalid_token",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T04/T05 at /oauth2/token: embedded keys and key URLs, never fetched.
#[tokio::test]
async fn t04_t05_embedded_jwk_and_jku_refused_without_fetch() {
    let h = Harness::start().await;
    let listener = CountingListener::start().await;
    let jwk = h.issuer.key().public_key().to_jwk();
    for (name, value) in [
        ("jwk", jwk.clone()),
        ("jku", json!(format!("http://{}/jwks", listener.addr))),
        ("x5u", json!(format!("http://{}/cert", listener.addr))),
        ("jku", json!("http://169.254.169.254/")),
    ] {
        let mut header = h.issuer.header();
        header[name] = value;
        let t = h
            .issuer
            .sign_raw(&header.to_string(), &h.claims().to_string());
        assert_oauth(
            &h.exchange(&t, JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "invalid_token",
        );
    }
    assert_eq!(listener.connections(), 0, "no fetch, no SSRF");
    let good = h
        .issuer
        .sign_raw(&h.issuer.header().to_string(), &h.claims().to_string());
    assert_eq!(h.exchange(&good, JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T06 at /oauth2/token: hostile `kid` values.
#[tokio::test]
async fn t06_hostile_kid_refused_at_token_endpoint() {
    let h = Harness::start().await;
    for kid in [
        json!("../../../../dev/null"),
        json!("' OR '1'='1"),
        json!("a\u{0}b"),
        json!("k".repeat(10 * 1024)),
        json!(7),
        json!({"a": 1}),
    ] {
        let mut header = h.issuer.header();
        header["kid"] = kid;
        let t = h
            .issuer
            .sign_raw(&header.to_string(), &h.claims().to_string());
        assert_oauth(
            &h.exchange(&t, JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "invalid_token",
        );
    }
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T08: keys are looked up by (issuer, kid) after `iss` chose the issuer.
#[tokio::test]
async fn t08_kid_of_other_issuer_refused() {
    let other = firebreak_testkit::TestIssuer::start(firebreak_token::Algorithm::Es256).await;
    let extra = format!(
        "[[issuer]]\nid = \"b\"\nurl = \"{}\"\naudience = \"https://b-aud.example\"\nalgorithms = [\"ES256\"]\ndanger_allow_http = true\n",
        other.url
    );
    let h = Harness::start_with(&extra, None, None).await;
    // iss = B, but signed by A (our main issuer) with A's kid.
    let mut c = h.claims();
    c["iss"] = json!(other.url);
    let t = h.issuer.sign(&c);
    assert_oauth(
        &h.exchange(&t, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T10: all six claims required.
#[tokio::test]
async fn t10_missing_claims_refused_at_token_endpoint() {
    let h = Harness::start().await;
    for claim in ["exp", "iat", "iss", "aud", "sub"] {
        let mut c = h.claims();
        c.as_object_mut().unwrap().remove(claim);
        let r = h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (400, json!("invalid_request")),
            "{claim}"
        );
    }
    // An issuer token without jti is accepted (the replay key is then the token's hash) …
    let mut c = h.claims();
    c.as_object_mut().unwrap().remove("jti");
    let t = h.issuer.sign(&c);
    assert_eq!(h.exchange(&t, JWT, TOOLS, None).await.status, 200);
    // … and that hash is refused the second time.
    assert_oauth(
        &h.exchange(&t, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "replay",
    );
}

/// SECURITY-TESTS.md T11: NumericDates of the wrong type.
#[tokio::test]
async fn t11_wrong_type_dates_refused_at_token_endpoint() {
    let h = Harness::start().await;
    for claim in ["exp", "nbf", "iat"] {
        for v in [
            json!("9999999999"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"a": 1}),
        ] {
            let mut c = h.claims();
            c[claim] = v.clone();
            let r = h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await;
            assert_oauth(&r, 400, "invalid_request", "invalid_token");
        }
    }
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T12: exp past the leeway, applied once; overflow values.
#[tokio::test]
async fn t12_exp_leeway_applied_once() {
    let h = Harness::start().await;
    let now = h.now().as_secs();
    let mut c = h.claims();
    c["iat"] = json!(now - 120);
    c["nbf"] = json!(now - 120);
    c["exp"] = json!(now - 61);
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "token_expired",
    );
    for v in [
        json!(1e300),
        json!(9_223_372_036_854_775_807_i64),
        json!(-1),
    ] {
        let mut c = h.claims();
        c["exp"] = v;
        assert_eq!(
            h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None)
                .await
                .status,
            400
        );
    }
    // −59 s is inside the leeway: accepted, but no lifetime is left for a token → still
    // refused by the lifetime bound, which proves the leeway did not extend the issued token.
    let mut c = h.claims();
    c["exp"] = json!(now - 59);
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "token_expired",
    );
    let mut c = h.claims();
    c["exp"] = json!(now + 30);
    let r = h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["expires_in"], 30);
}

/// SECURITY-TESTS.md T13: nbf / iat in the future, iat too old.
#[tokio::test]
async fn t13_future_nbf_iat_and_old_iat_refused() {
    let h = Harness::start().await;
    let now = h.now().as_secs();
    for (k, v) in [
        ("nbf", now + 61),
        ("iat", now + 61),
        ("iat", now - 601 - 60),
    ] {
        let mut c = h.claims();
        c[k] = json!(v);
        assert_oauth(
            &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "token_expired",
        );
    }
    let mut c = h.claims();
    c["nbf"] = json!(now + 59);
    assert_eq!(
        h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None)
            .await
            .status,
        200
    );
}

/// SECURITY-TESTS.md T14: an `aud` array is refused unless the issuer allows it.
#[tokio::test]
async fn t14_audience_array_refused_by_default() {
    let h = Harness::start().await;
    let mut c = h.claims();
    c["aud"] = json!([h.url, "other"]);
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    let mut c = h.claims();
    c["aud"] = json!("other");
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T15: `iss` is compared byte for byte.
#[tokio::test]
async fn t15_issuer_variants_refused() {
    let h = Harness::start().await;
    let iss = h.issuer.url.clone();
    for v in [
        format!("{iss}/"),
        iss.replace("http://127.0.0.1", "http://LOCALHOST"),
        iss.replace("http://", "https://"),
        format!("{iss}/x"),
        iss.replace('1', "\u{0661}"),
    ] {
        let mut c = h.claims();
        c["iss"] = json!(v);
        assert_oauth(
            &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "unknown_issuer",
        );
    }
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T16: `crit` is refused in every form.
#[tokio::test]
async fn t16_crit_refused_at_token_endpoint() {
    let h = Harness::start().await;
    for crit in [
        json!(["x-unknown"]),
        json!(["absent"]),
        json!([]),
        json!("x"),
        json!(["b64"]),
    ] {
        let mut header = h.issuer.header();
        header["crit"] = crit;
        header["x-unknown"] = json!(1);
        let t = h
            .issuer
            .sign_raw(&header.to_string(), &h.claims().to_string());
        assert_oauth(
            &h.exchange(&t, JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "invalid_token",
        );
    }
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T17: duplicate members, also behind escapes, on the path the broker uses.
#[tokio::test]
async fn t17_duplicate_members_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let kid = h.issuer.key().kid().to_owned();
    let good_header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#);
    let claims = h.claims().to_string();
    let dup_header = format!(r#"{{"alg":"ES256","alg":"none","typ":"JWT","kid":"{kid}"}}"#);
    let t = h.issuer.sign_raw(&dup_header, &claims);
    assert_oauth(
        &h.exchange(&t, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    let dup_sub = claims.replacen('{', r#"{"sub":"repo:evil/x:ref:refs/heads/main","#, 1);
    assert_oauth(
        &h.exchange(&h.issuer.sign_raw(&good_header, &dup_sub), JWT, TOOLS, None)
            .await,
        400,
        "invalid_request",
        "invalid_token",
    );
    let dup_aud = claims.replacen('{', r#"{"\u0061ud":"x","#, 1);
    assert_oauth(
        &h.exchange(&h.issuer.sign_raw(&good_header, &dup_aud), JWT, TOOLS, None)
            .await,
        400,
        "invalid_request",
        "invalid_token",
    );
    assert_eq!(
        h.exchange(&h.issuer.sign_raw(&good_header, &claims), JWT, TOOLS, None)
            .await
            .status,
        200
    );
}

/// SECURITY-TESTS.md T18: non-canonical base64url.
#[tokio::test]
async fn t18_bad_base64_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let good = h.subject();
    let parts: Vec<&str> = good.split('.').collect();
    let variants = [
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            parts[0].replacen(|c: char| c.is_ascii_alphabetic(), "+", 1),
            parts[1],
            parts[2]
        ),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
        format!("{}\r\n.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64("[1]"), parts[1], parts[2]),
        format!("{}.{}.{}", b64("\u{feff}{}"), parts[1], parts[2]),
    ];
    for v in variants {
        let r = h.exchange(&v, JWT, TOOLS, None).await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (400, json!("invalid_request")),
            "{v}"
        );
    }
    assert_eq!(h.exchange(&good, JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T19: size limits before decoding; 413 for a huge body; deep nesting.
#[tokio::test]
async fn t19_oversized_tokens_and_bodies_refused() {
    let h = Harness::start().await;
    let big = "a".repeat(16_385);
    assert_oauth(
        &h.exchange(&big, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "token_too_large",
    );
    let body = format!(
        "grant_type={EXCHANGE}&subject_token={}",
        "a".repeat(65 * 1024)
    );
    let r = h.token_raw(&body).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "invalid_request");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let payload = format!(r#"{{"x":{deep}}}"#);
    let t = h.issuer.sign_raw(&h.issuer.header().to_string(), &payload);
    assert_eq!(h.exchange(&t, JWT, TOOLS, None).await.status, 400);
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T20: JWE and nested JWTs are refused before anything is decrypted.
#[tokio::test]
async fn t20_jwe_and_nested_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let jwe = format!(
        "{}.a.b.c.d",
        b64(r#"{"alg":"PBES2-HS256+A128KW","p2c":2147483647,"enc":"A128GCM"}"#)
    );
    assert_oauth(
        &h.exchange(&jwe, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    let mut header = h.issuer.header();
    header["cty"] = json!("JWT");
    let nested = h
        .issuer
        .sign_raw(&header.to_string(), &h.claims().to_string());
    assert_oauth(
        &h.exchange(&nested, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "invalid_token",
    );
    let json_serialised = format!(r#"{{"payload":"{}","signatures":[]}}"#, b64("{}"));
    assert_eq!(
        h.exchange(&json_serialised, JWT, TOOLS, None).await.status,
        400
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md T22 at the broker: token types must fit the token.
#[tokio::test]
async fn t22_token_type_confusion_refused_at_broker() {
    let h = Harness::start().await;
    let ours = h.tool_token(Some("read")).await;
    assert_oauth(
        &h.exchange(&ours, ID_TOKEN, TOOLS, None).await,
        400,
        "invalid_request",
        "token_type_mismatch",
    );
    assert_oauth(
        &h.exchange(&h.subject(), ACCESS, TOOLS, None).await,
        400,
        "invalid_request",
        "token_type_mismatch",
    );
    // An issuer token typed at+jwt is not an ID token.
    let mut header = h.issuer.header();
    header["typ"] = json!("at+jwt");
    let t = h
        .issuer
        .sign_raw(&header.to_string(), &h.claims().to_string());
    assert_oauth(
        &h.exchange(&t, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "token_type_mismatch",
    );
    // Positive twins: each type where it belongs.
    assert_eq!(
        h.exchange(&h.subject(), ID_TOKEN, TOOLS, None).await.status,
        200
    );
    assert_eq!(
        h.exchange(&ours, ACCESS, TOOLS, Some("read")).await.status,
        200
    );
    // /jwks.json publishes token keys only, all Ed25519 signing keys.
    let jwks = h
        .http
        .get(&format!("{}/jwks.json", h.url), &[])
        .await
        .json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["use"] == "sig" && k.get("d").is_none())
    );
}

/// SECURITY-TESTS.md X02: fork-controlled events and other runners are refused.
#[tokio::test]
async fn x02_pull_request_target_and_workflow_run_refused() {
    let h = Harness::start().await;
    for ev in ["pull_request_target", "workflow_run", "pull_request"] {
        let mut c = h.claims();
        c["event_name"] = json!(ev);
        assert_oauth(
            &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "trust_rule_mismatch",
        );
    }
    let mut c = h.claims();
    c["sub"] = json!("repo:acme/api:pull_request");
    c["ref"] = json!("refs/pull/1/merge");
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "trust_rule_mismatch",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md X03 (drill "wrong branch"): exact matching, never by prefix.
#[tokio::test]
async fn x03_wrong_branch_refused() {
    let h = Harness::start().await;
    for r in [
        "refs/heads/main2",
        "refs/heads/feature",
        "refs/tags/main",
        "refs/pull/1/merge",
        "refs/heads/Main",
    ] {
        let mut c = h.claims();
        c["ref"] = json!(r);
        assert_oauth(
            &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "trust_rule_mismatch",
        );
    }
    let mut c = h.claims();
    c.as_object_mut().unwrap().remove("environment");
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "trust_rule_mismatch",
    );
    // A repository no agent is bound to.
    let c = h
        .issuer
        .github_claims(&h.url, "evil/repo", "refs/heads/main", h.now());
    assert_oauth(
        &h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "trust_rule_mismatch",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md X04 (SQLite twin): sequential replay on one node.
#[tokio::test]
async fn x04_subject_replay_refused_on_one_node() {
    let h = Harness::start().await;
    let t = h.subject();
    assert_eq!(h.exchange(&t, JWT, TOOLS, None).await.status, 200);
    assert_oauth(
        &h.exchange(&t, JWT, TOOLS, None).await,
        400,
        "invalid_request",
        "replay",
    );
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
}

/// SECURITY-TESTS.md X05: unknown, fragment and relative targets.
#[tokio::test]
async fn x05_target_not_allowed() {
    let h = Harness::start().await;
    assert_oauth(
        &h.exchange(&h.subject(), JWT, "https://unknown.example/", None)
            .await,
        400,
        "invalid_target",
        "audience_not_registered",
    );
    for resource in [format!("{TOOLS}#frag"), "tools".to_owned()] {
        let body = encode_pairs([
            ("grant_type", EXCHANGE),
            ("subject_token", &h.subject()),
            ("subject_token_type", JWT),
            ("resource", &resource),
        ]);
        assert_oauth(
            &h.token_raw(&body).await,
            400,
            "invalid_target",
            "audience_not_registered",
        );
    }
    // other-bot has no grant for... it has tools; make deploy-bot ask for staging (not granted,
    // other environment): cross-environment wins.
    assert_oauth(
        &h.exchange(&h.subject(), JWT, STAGING_TOOLS, None).await,
        400,
        "invalid_target",
        "cross_environment",
    );
    let body = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", &h.subject()),
        ("subject_token_type", JWT),
        ("resource", TOOLS),
    ]);
    assert_eq!(h.token_raw(&body).await.status, 200);
}

/// SECURITY-TESTS.md X06: scope escalation in every form, and a child cannot widen.
#[tokio::test]
async fn x06_scope_escalation_refused() {
    let h = Harness::start().await;
    for s in ["admin", "Read", "read read", "r\u{0435}ad", "read  write"] {
        assert_eq!(
            h.exchange(&h.subject(), JWT, TOOLS, Some(s)).await.json()["error"],
            "invalid_scope",
            "{s}"
        );
    }
    let parent = h.tool_token(Some("read")).await;
    assert_oauth(
        &h.exchange(&parent, ACCESS, TOOLS, Some("read write")).await,
        400,
        "invalid_scope",
        "scope_not_granted",
    );
    let r = h.exchange(&parent, ACCESS, TOOLS, Some("read")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["scope"], "read");
    // A child without a scope inherits the parent's, never the grant's wider set.
    assert_eq!(
        h.exchange(&parent, ACCESS, TOOLS, None).await.json()["scope"],
        "read"
    );
}

/// SECURITY-TESTS.md X07: the issued lifetime is the smallest bound.
#[tokio::test]
async fn x07_issued_lifetime_bounded() {
    let h = Harness::start().await;
    let now = h.now().as_secs();
    let mut c = h.claims();
    c["exp"] = json!(now + 40);
    let r = h.exchange(&h.issuer.sign(&c), JWT, TOOLS, None).await;
    assert_eq!(r.json()["expires_in"], 40);
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["exp"],
        now + 40
    );
    // A child never outlives its parent, even after time passed.
    let parent = h.tool_token(None).await;
    h.clock.advance_secs(200);
    let r = h.exchange(&parent, ACCESS, TOOLS, None).await;
    assert_eq!(r.json()["expires_in"], 100);
    // max_ttl above limits.max_ttl is refused at load (config unit test x07_max_ttl_above_cap).
}

/// SECURITY-TESTS.md X09: one token, one environment: two targets in one request.
#[tokio::test]
async fn x09_two_targets_refused() {
    let h = Harness::start().await;
    let s = h.subject();
    let body = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", &s),
        ("subject_token_type", JWT),
        ("resource", TOOLS),
        ("resource", STAGING_TOOLS),
    ]);
    assert_oauth(
        &h.token_raw(&body).await,
        400,
        "invalid_target",
        "audience_not_registered",
    );
    let body = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", &s),
        ("subject_token_type", JWT),
        ("audience", TOOLS),
        ("resource", STAGING_TOOLS),
    ]);
    assert_oauth(
        &h.token_raw(&body).await,
        400,
        "invalid_target",
        "audience_not_registered",
    );
    // The same target named twice (audience and resource) is one target.
    let body = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", &s),
        ("subject_token_type", JWT),
        ("audience", TOOLS),
        ("resource", TOOLS),
    ]);
    assert_eq!(h.token_raw(&body).await.status, 200);
}

/// SECURITY-TESTS.md X10 (broker part): delegation needs `may_act` naming the actor.
#[tokio::test]
async fn x10_actor_not_permitted_refused() {
    let h = Harness::start().await;
    let mut ac = h
        .issuer
        .github_claims(&h.url, "acme/other", "refs/heads/main", h.now());
    ac["repository_id"] = json!("4343");
    let actor = h.issuer.sign(&ac);
    let send = |subject: String, actor: Option<String>, actor_type: Option<&'static str>| {
        let mut pairs = vec![
            ("grant_type", EXCHANGE.to_owned()),
            ("subject_token", subject),
            ("subject_token_type", JWT.to_owned()),
            ("audience", TOOLS.to_owned()),
        ];
        if let Some(a) = actor {
            pairs.push(("actor_token", a));
        }
        if let Some(t) = actor_type {
            pairs.push(("actor_token_type", t.to_owned()));
        }
        encode_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    };
    // No may_act at all.
    assert_oauth(
        &h.token_raw(&send(h.subject(), Some(actor.clone()), Some(JWT)))
            .await,
        400,
        "invalid_request",
        "delegation_not_allowed",
    );
    // may_act names someone else.
    let mut c = h.claims();
    c["may_act"] = json!({ "sub": "someone-else" });
    assert_oauth(
        &h.token_raw(&send(h.issuer.sign(&c), Some(actor.clone()), Some(JWT)))
            .await,
        400,
        "invalid_request",
        "delegation_not_allowed",
    );
    // actor_token without actor_token_type.
    assert_oauth(
        &h.token_raw(&send(h.subject(), Some(actor.clone()), None))
            .await,
        400,
        "invalid_request",
        "malformed_request",
    );
    // Positive twin: may_act names the actor's agent; the chain lands in `act`.
    let mut c = h.claims();
    c["may_act"] = json!({ "sub": "other-bot" });
    let r = h
        .token_raw(&send(h.issuer.sign(&c), Some(actor), Some(JWT)))
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["act"],
        json!({ "sub": "other-bot" })
    );
}

/// SECURITY-TESTS.md X16: parameter pollution and non-form bodies.
#[tokio::test]
async fn x16_parameter_pollution_refused() {
    let h = Harness::start().await;
    let s = h.subject();
    for dup in ["grant_type", "subject_token", "subject_token_type", "scope"] {
        let mut pairs = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", s.as_str()),
            ("subject_token_type", JWT),
            ("audience", TOOLS),
            ("scope", "read"),
        ];
        let v = pairs.iter().find(|(k, _)| *k == dup).unwrap().1;
        pairs.push((dup, v));
        assert_oauth(
            &h.token_raw(&encode_pairs(pairs)).await,
            400,
            "invalid_request",
            "malformed_request",
        );
    }
    let json_body = json!({ "grant_type": EXCHANGE, "subject_token": s, "subject_token_type": JWT, "audience": TOOLS }).to_string();
    let r = h
        .http
        .send(
            "POST",
            &format!("{}/oauth2/token", h.url),
            &[("content-type", "application/json")],
            json_body,
        )
        .await;
    assert_oauth(&r, 400, "invalid_request", "malformed_request");
    assert_oauth(
        &h.token_raw("grant_type=password&username=a").await,
        400,
        "unsupported_grant_type",
        "malformed_request",
    );
    assert_oauth(
        &h.token_raw("subject_token=x").await,
        400,
        "invalid_request",
        "malformed_request",
    );
    assert_eq!(h.exchange(&s, JWT, TOOLS, None).await.status, 200);
}

/// Restart keeps sessions, revocations, keys and replay state.
#[tokio::test]
async fn restart_keeps_sessions_revocations_keys_and_replay_state() {
    let h = Harness::start().await;
    let used = h.subject();
    let r = h.exchange(&used, JWT, TOOLS, None).await;
    let revoked_token = r.json()["access_token"].as_str().unwrap().to_owned();
    let live_token = h.tool_token(None).await;
    let sid = claims_of(&revoked_token)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        h.admin_delete(&format!("/v1/sessions/{sid}")).await.status,
        200
    );
    let jwks_before = h
        .http
        .get(&format!("{}/jwks.json", h.url), &[])
        .await
        .json();
    let (dir, issuer) = h.stop().await;

    let h = Harness::start_with("", Some(dir), Some(issuer)).await;
    // The URL changed with the new port, so tokens minted before carry the old `iss`: check the
    // store and keys directly through introspection of the same broker data.
    let jwks_after = h
        .http
        .get(&format!("{}/jwks.json", h.url), &[])
        .await
        .json();
    assert_eq!(jwks_before, jwks_after, "same keys after restart");
    let sessions = h
        .admin_get("/v1/sessions", Some(&h.admin.clone()))
        .await
        .json();
    let states: Vec<(String, String)> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(sid.clone(), "revoked".to_owned())),
        "{states:?}"
    );
    assert_eq!(states.iter().filter(|(_, s)| s == "active").count(), 1);
    let _ = live_token;
    // Replay state survived: the used subject token (issuer `iss` unchanged) is still refused.
    let mut c = claims_of(&used);
    c["aud"] = json!(h.url);
    assert_eq!(h.exchange(&used, JWT, TOOLS, None).await.status, 400);
}

/// SECURITY-TESTS.md T07 at /oauth2/token: a flood of unknown kids causes at most one JWKS fetch
/// beyond the first, and a valid token sent during the flood still succeeds.
#[tokio::test]
async fn t07_unknown_kid_flood_at_token_endpoint() {
    let h = std::sync::Arc::new(Harness::start().await);
    // Warm the cache with one good exchange (first fetch).
    assert_eq!(h.exchange(&h.subject(), JWT, TOOLS, None).await.status, 200);
    let before = h.issuer.jwks_fetches();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let h = std::sync::Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let mut header = h.issuer.header();
            header["kid"] = json!(format!("random-{i}"));
            let t = h
                .issuer
                .sign_raw(&header.to_string(), &h.claims().to_string());
            h.exchange(&t, JWT, TOOLS, None).await
        }));
    }
    let good = h.exchange(&h.subject(), JWT, TOOLS, None).await;
    assert_eq!(
        good.status, 200,
        "a valid token still succeeds during the flood"
    );
    for t in tasks {
        assert_oauth(&t.await.unwrap(), 400, "invalid_request", "invalid_token");
    }
    assert!(
        h.issuer.jwks_fetches() - before <= 1,
        "fetches during flood: {}",
        h.issuer.jwks_fetches() - before
    );
}

/// SECURITY-TESTS.md T09 at /oauth2/token: a poisoned JWKS drops the bad keys and keeps the good.
#[tokio::test]
async fn t09_poisoned_jwks_at_token_endpoint() {
    let h = Harness::start().await;
    let good = h.issuer.key().public_key().to_jwk();
    let mut enc = good.clone();
    enc["kid"] = json!("enc-key");
    enc["use"] = json!("enc");
    let oct = json!({ "kty": "oct", "kid": "oct-key", "k": "c2VjcmV0" });
    let mut dup1 = good.clone();
    dup1["kid"] = json!("dup");
    let dup2 = dup1.clone();
    h.issuer
        .set_jwks(json!({ "keys": [good, enc, oct, dup1, dup2] }));
    for kid in ["enc-key", "oct-key", "dup"] {
        let mut header = h.issuer.header();
        header["kid"] = json!(kid);
        let t = h
            .issuer
            .sign_raw(&header.to_string(), &h.claims().to_string());
        assert_oauth(
            &h.exchange(&t, JWT, TOOLS, None).await,
            400,
            "invalid_request",
            "invalid_token",
        );
    }
    assert_eq!(
        h.exchange(&h.subject(), JWT, TOOLS, None).await.status,
        200,
        "the good key keeps working"
    );
}

/// SECURITY-TESTS.md X08 (broker part): an agent of tenant acme exchanging for tenant globex's
/// resource gets invalid_target; globex's resource server introspecting acme's token learns
/// nothing.
#[tokio::test]
async fn x08_cross_tenant_exchange_and_introspection_refused() {
    let h = Harness::start().await;
    assert_oauth(
        &h.exchange(&h.subject(), JWT, GLOBEX_TOOLS, None).await,
        400,
        "invalid_target",
        "cross_environment",
    );
    let t = h.tool_token(Some("read")).await;
    // rs-other serves another audience: the token is not active for it.
    assert_eq!(
        h.introspect(&t, "rs-other", OTHER_SECRET).await.json(),
        json!({ "active": false })
    );
    // Positive twin: the right tenant's resource server sees it.
    assert_eq!(
        h.introspect(&t, "rs-tools", CLIENT_SECRET).await.json()["tenant"],
        "acme"
    );
}

// --- DPoP (RFC 9449) at the token endpoint: SECURITY-TESTS.md G12's token-endpoint part ------

/// A DPoP proof for `h`'s token endpoint by `key`; `edit` changes header and claims first.
fn dpop_proof(
    h: &Harness,
    key: &firebreak_token::SigningKey,
    edit: impl FnOnce(&mut Value, &mut Value),
) -> String {
    let mut header =
        json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_key().to_jwk()});
    let mut claims = json!({
        "jti": firebreak_token::random_b64url(16),
        "htm": "POST",
        "htu": format!("{}/oauth2/token", h.url),
        "iat": h.now().as_secs(),
    });
    edit(&mut header, &mut claims);
    key.sign_raw(&header, &serde_json::to_vec(&claims).unwrap())
        .unwrap()
}

fn dpop_key(alg: firebreak_token::Algorithm) -> firebreak_token::SigningKey {
    firebreak_token::SigningKey::generate(alg).unwrap()
}

/// An exchange carrying one `DPoP` header per element of `proofs`.
async fn exchange_dpop(
    h: &Harness,
    subject: &str,
    ty: &str,
    proofs: &[&str],
) -> firebreak_testkit::Reply {
    let body = encode_pairs([
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ty),
        ("audience", TOOLS),
        ("scope", "read"),
    ]);
    let headers: Vec<(&str, &str)> = proofs.iter().map(|p| ("DPoP", *p)).collect();
    h.http
        .post_form(&format!("{}/oauth2/token", h.url), &headers, &body)
        .await
}

async fn audit_records(h: &Harness) -> (String, Vec<Value>) {
    let admin = format!("Bearer {}", h.admin);
    let export = h
        .http
        .get(
            &format!("{}/v1/audit/export", h.url),
            &[("authorization", &admin)],
        )
        .await;
    let text = String::from_utf8_lossy(&export.body).into_owned();
    let recs = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (text, recs)
}

/// A valid proof binds the issued token to its key (`cnf.jkt`, `token_type: DPoP`), and the audit
/// record names the thumbprint but never holds the proof. Without a proof: Bearer, no `cnf`.
#[tokio::test]
async fn dpop_bound_token_issued_with_cnf_jkt() {
    let h = Harness::start().await;
    let mut proofs = Vec::new();
    for alg in [
        firebreak_token::Algorithm::Es256,
        firebreak_token::Algorithm::EdDsa,
    ] {
        let key = dpop_key(alg);
        let proof = dpop_proof(&h, &key, |_, _| {});
        let r = exchange_dpop(&h, &h.subject(), JWT, &[&proof]).await;
        assert_eq!(r.status, 200, "{alg}: {}", r.json());
        let v = r.json();
        assert_eq!(v["token_type"], "DPoP");
        let c = claims_of(v["access_token"].as_str().unwrap());
        assert_eq!(c["cnf"], json!({"jkt": key.public_key().thumbprint()}));
        proofs.push((proof, key.public_key().thumbprint()));
    }
    // The positive twin: no proof, a bearer token.
    let r = exchange_dpop(&h, &h.subject(), JWT, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["token_type"], "Bearer");
    assert!(
        claims_of(r.json()["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none()
    );
    let (text, recs) = audit_records(&h).await;
    for (proof, jkt) in &proofs {
        assert!(
            recs.iter().any(|r| r["kind"] == "exchange"
                && r["decision"] == "allow"
                && r["dpop_jkt"] == jkt.as_str()),
            "the exchange record names the key"
        );
        for part in proof.split('.') {
            assert!(!text.contains(part), "no part of a proof in the audit log");
        }
    }
    assert_eq!(
        recs.iter().filter(|r| r.get("dpop_jkt").is_some()).count(),
        2,
        "only bound exchanges carry dpop_jkt"
    );
}

/// SECURITY-TESTS.md G12 (token endpoint): every defect of the proof itself answers 400
/// `invalid_dpop_proof`, before the subject token is looked at; the untouched proof passes.
#[tokio::test]
async fn g12_bad_dpop_proofs_refused_at_token_endpoint() {
    let h = Harness::start().await;
    let key = dpop_key(firebreak_token::Algorithm::Es256);
    let other = dpop_key(firebreak_token::Algorithm::Es256);
    let now = h.now().as_secs();
    let url = h.url.clone();
    type Edit = Box<dyn FnOnce(&mut Value, &mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("wrong htm", Box::new(|_, c| c["htm"] = json!("GET"))),
        (
            "wrong htu path",
            Box::new(move |_, c| c["htu"] = json!(format!("{url}/oauth2/introspect"))),
        ),
        (
            "wrong htu host",
            Box::new(|_, c| c["htu"] = json!("https://evil.example/oauth2/token")),
        ),
        // Window: 60 s max age plus the 60 s leeway.
        (
            "stale iat",
            Box::new(move |_, c| c["iat"] = json!(now - 121)),
        ),
        (
            "future iat",
            Box::new(move |_, c| c["iat"] = json!(now + 61)),
        ),
        (
            "missing jti",
            Box::new(|_, c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "missing jwk",
            Box::new(|hd, _| {
                hd.as_object_mut().unwrap().remove("jwk");
            }),
        ),
        (
            "private key in jwk",
            Box::new(|hd, _| hd["jwk"]["d"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
        ),
        (
            "oct jwk",
            Box::new(|hd, _| hd["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
        ),
        ("typ jwt", Box::new(|hd, _| hd["typ"] = json!("JWT"))),
        ("typ at+jwt", Box::new(|hd, _| hd["typ"] = json!("at+jwt"))),
        ("alg none", Box::new(|hd, _| hd["alg"] = json!("none"))),
        (
            "jku",
            Box::new(|hd, _| hd["jku"] = json!("http://169.254.169.254/")),
        ),
    ];
    for (name, edit) in cases {
        let proof = dpop_proof(&h, &key, edit);
        let r = exchange_dpop(&h, &h.subject(), JWT, &[&proof]).await;
        assert_eq!(r.json()["error"], "invalid_dpop_proof", "{name}");
        assert_oauth(&r, 400, "invalid_dpop_proof", "invalid_dpop_proof");
    }
    // Bad signature: signed by another key than the one in the header.
    let jwk = key.public_key().to_jwk();
    let forged = dpop_proof(&h, &other, |hd, _| hd["jwk"] = jwk);
    assert_oauth(
        &exchange_dpop(&h, &h.subject(), JWT, &[&forged]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    // Not a JWS at all.
    assert_oauth(
        &exchange_dpop(&h, &h.subject(), JWT, &["not-a-proof"]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    // Two DPoP headers, each valid on its own.
    let a = dpop_proof(&h, &key, |_, _| {});
    let b = dpop_proof(&h, &key, |_, _| {});
    assert_oauth(
        &exchange_dpop(&h, &h.subject(), JWT, &[&a, &b]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    // Replay: the same proof (same key and jti) a second time, even with a fresh subject token.
    let r = exchange_dpop(&h, &h.subject(), JWT, &[&a]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_oauth(
        &exchange_dpop(&h, &h.subject(), JWT, &[&a]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    // Positive twins: a fresh proof by the same key, one at the edge of the window, and one
    // naming the endpoint with a default-port spelling.
    assert_eq!(
        exchange_dpop(&h, &h.subject(), JWT, &[&b]).await.status,
        200
    );
    let edge = dpop_proof(&h, &key, move |_, c| c["iat"] = json!(now - 120));
    assert_eq!(
        exchange_dpop(&h, &h.subject(), JWT, &[&edge]).await.status,
        200
    );
    let upper = h.url.replace("http://", "HTTP://");
    let spelled = dpop_proof(&h, &key, move |_, c| {
        c["htu"] = json!(format!("{upper}/oauth2/token?x=1"))
    });
    assert_eq!(
        exchange_dpop(&h, &h.subject(), JWT, &[&spelled])
            .await
            .status,
        200
    );
}

/// A DPoP-bound token is exchanged for a child only with a proof by its key that names it in
/// `ath`; the child stays bound to that key. A bearer parent needs no proof (twin).
#[tokio::test]
async fn dpop_child_exchange_of_bound_token_needs_its_key() {
    let h = Harness::start().await;
    let key = dpop_key(firebreak_token::Algorithm::EdDsa);
    let wrong_key = dpop_key(firebreak_token::Algorithm::EdDsa);
    let r = exchange_dpop(&h, &h.subject(), JWT, &[&dpop_proof(&h, &key, |_, _| {})]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let parent = r.json()["access_token"].as_str().unwrap().to_owned();
    let ath = firebreak_token::sha256_b64url(parent.as_bytes());
    // No proof at all: the bound token is useless alone.
    assert_oauth(
        &exchange_dpop(&h, &parent, ACCESS, &[]).await,
        400,
        "invalid_request",
        "dpop_binding_mismatch",
    );
    // A valid proof by another key, even one naming this token.
    let a = ath.clone();
    let other = dpop_proof(&h, &wrong_key, move |_, c| c["ath"] = json!(a));
    assert_oauth(
        &exchange_dpop(&h, &parent, ACCESS, &[&other]).await,
        400,
        "invalid_request",
        "dpop_binding_mismatch",
    );
    // The right key, but no `ath`, or the `ath` of another token.
    let no_ath = dpop_proof(&h, &key, |_, _| {});
    assert_oauth(
        &exchange_dpop(&h, &parent, ACCESS, &[&no_ath]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    let wrong_ath = dpop_proof(&h, &key, |_, c| {
        c["ath"] = json!(firebreak_token::sha256_b64url(b"another token"))
    });
    assert_oauth(
        &exchange_dpop(&h, &parent, ACCESS, &[&wrong_ath]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    // The right key naming this token: allowed, and the child is bound to the same key.
    let a = ath.clone();
    let right = dpop_proof(&h, &key, move |_, c| c["ath"] = json!(a));
    let r = exchange_dpop(&h, &parent, ACCESS, &[&right]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["token_type"], "DPoP");
    let child = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims_of(&child)["cnf"],
        json!({"jkt": key.public_key().thumbprint()})
    );
    // A grandchild exchange with the child still needs the key, with the child's `ath`.
    assert_oauth(
        &exchange_dpop(&h, &child, ACCESS, &[]).await,
        400,
        "invalid_request",
        "dpop_binding_mismatch",
    );
    let child_ath = firebreak_token::sha256_b64url(child.as_bytes());
    let p = dpop_proof(&h, &key, move |_, c| c["ath"] = json!(child_ath));
    assert_eq!(exchange_dpop(&h, &child, ACCESS, &[&p]).await.status, 200);
    // Twin: a bearer parent is exchanged without a proof, as before.
    let bearer = h.tool_token(Some("read")).await;
    let r = exchange_dpop(&h, &bearer, ACCESS, &[]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["token_type"], "Bearer");
}

/// Introspection returns `cnf` for a bound token, and `token_type: DPoP` (RFC 9449 §6.2); a
/// bearer token has neither.
#[tokio::test]
async fn dpop_introspection_shows_cnf() {
    let h = Harness::start().await;
    let key = dpop_key(firebreak_token::Algorithm::Es256);
    let r = exchange_dpop(&h, &h.subject(), JWT, &[&dpop_proof(&h, &key, |_, _| {})]).await;
    let bound = r.json()["access_token"].as_str().unwrap().to_owned();
    let v = h.introspect(&bound, "rs-tools", CLIENT_SECRET).await.json();
    assert_eq!(v["active"], true);
    assert_eq!(v["cnf"], json!({"jkt": key.public_key().thumbprint()}));
    assert_eq!(v["token_type"], "DPoP");
    let bearer = h.tool_token(Some("read")).await;
    let v = h
        .introspect(&bearer, "rs-tools", CLIENT_SECRET)
        .await
        .json();
    assert_eq!(v["active"], true);
    assert!(v.get("cnf").is_none());
    assert_eq!(v["token_type"], "Bearer");
}

/// Both discovery documents advertise the proof algorithms the token endpoint accepts.
#[tokio::test]
async fn dpop_discovery_advertises_signing_algs() {
    let h = Harness::start().await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let v = h.http.get(&format!("{}{path}", h.url), &[]).await.json();
        assert_eq!(
            v["dpop_signing_alg_values_supported"],
            json!(["ES256", "EdDSA"]),
            "{path}"
        );
    }
    // And only those: an RS256 proof is refused although RS256 is a JOSE algorithm we know.
    let key = dpop_key(firebreak_token::Algorithm::Es256);
    let p = dpop_proof(&h, &key, |hd, _| hd["alg"] = json!("RS256"));
    assert_oauth(
        &exchange_dpop(&h, &h.subject(), JWT, &[&p]).await,
        400,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
}

/// `context.dpop_bound` is true for the exchange decision exactly when a valid proof came with
/// it: a policy that forbids unbound tokens for `tools` lets only the DPoP exchange through.
#[tokio::test]
async fn dpop_bound_reaches_the_policy_context() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("dpop.cedar"),
        r#"@id("tools-need-dpop")
forbid(principal, action == Action::"exchange", resource == Target::"tools")
unless { context.dpop_bound };
"#,
    )
    .unwrap();
    let extra = format!("\n[policy]\ndir = \"{}\"\n", pdir.display());
    let h = Harness::start_with(&extra, Some(dir), None).await;
    let r = exchange_dpop(&h, &h.subject(), JWT, &[]).await;
    assert_eq!(r.status, 400, "{}", r.json());
    assert_eq!(r.json()["error"], "invalid_target");
    let key = dpop_key(firebreak_token::Algorithm::EdDsa);
    let r = exchange_dpop(&h, &h.subject(), JWT, &[&dpop_proof(&h, &key, |_, _| {})]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["token_type"], "DPoP");
}
