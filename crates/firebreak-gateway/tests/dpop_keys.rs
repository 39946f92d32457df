//! DPoP at the gateway (G12) and signing-key rotation under load (F7).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

#[allow(
    unused_imports,
    reason = "the shared harness re-exports more than this file uses"
)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use firebreak_core::Clock as _;
use firebreak_token::{Algorithm, SigningKey, random_b64url, sha256_b64url};
use serde_json::{Value, json};

fn proof(
    key: &SigningKey,
    htm: &str,
    htu: &str,
    iat: i64,
    token: Option<&str>,
    edit: impl FnOnce(&mut Value, &mut Value),
) -> String {
    let mut header =
        json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_key().to_jwk()});
    let mut claims = json!({"jti": random_b64url(16), "htm": htm, "htu": htu, "iat": iat});
    if let Some(t) = token {
        claims["ath"] = json!(sha256_b64url(t.as_bytes()));
    }
    edit(&mut header, &mut claims);
    key.sign_raw(&header, &serde_json::to_vec(&claims).unwrap())
        .unwrap()
}

/// A DPoP-bound token for TOOLS from the broker.
async fn bound_token(s: &Stack, key: &SigningKey) -> String {
    let p = proof(
        key,
        "POST",
        &format!("{}/oauth2/token", s.h.url),
        s.h.now().as_secs(),
        None,
        |_, _| {},
    );
    let r =
        s.h.exchange_raw("acme/api", TOOLS, None, &[("dpop", p.as_str())])
            .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["token_type"], "DPoP");
    r.json()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn g12_dpop_misuse_at_the_gateway() {
    let s = Stack::start().await;
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let t = bound_token(&s, &key).await;
    let htu = format!("{}/tools/a", s.url);
    let now = s.h.now().as_secs();
    let call = |p: String, scheme: &'static str| {
        let (s, t) = (&s, t.clone());
        async move {
            let auth = format!("{scheme} {t}");
            s.send(
                "GET",
                "/tools/a",
                &[("authorization", &auth), ("dpop", &p)],
                "",
            )
            .await
        }
    };
    // The good case.
    let good = proof(&key, "GET", &htu, now, Some(&t), |_, _| {});
    let r = call(good.clone(), "DPoP").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Replayed proof (same jti).
    let r = call(good, "DPoP").await;
    assert_eq!(r.status, 401);
    assert!(
        www(&r).starts_with("DPoP") && www(&r).contains("invalid_dpop_proof"),
        "{}",
        www(&r)
    );
    // Proof defects: invalid_dpop_proof.
    let other = SigningKey::generate(Algorithm::Es256).unwrap();
    let defects: Vec<(&str, String)> = vec![
        (
            "wrong htm",
            proof(&key, "POST", &htu, now, Some(&t), |_, _| {}),
        ),
        (
            "wrong htu",
            proof(
                &key,
                "GET",
                &format!("{}/tools/b", s.url),
                now,
                Some(&t),
                |_, _| {},
            ),
        ),
        (
            "stale iat",
            proof(&key, "GET", &htu, now - 600, Some(&t), |_, _| {}),
        ),
        (
            "future iat",
            proof(&key, "GET", &htu, now + 600, Some(&t), |_, _| {}),
        ),
        ("no ath", proof(&key, "GET", &htu, now, None, |_, _| {})),
        (
            "wrong ath",
            proof(&key, "GET", &htu, now, Some("another-token"), |_, _| {}),
        ),
        (
            "private jwk",
            proof(&key, "GET", &htu, now, Some(&t), |h, _| {
                h["jwk"]["d"] = json!("AAAA");
            }),
        ),
        ("garbage", "not.a.proof".to_owned()),
    ];
    for (what, p) in defects {
        let r = call(p, "DPoP").await;
        assert_eq!(r.status, 401, "{what}");
        assert!(
            www(&r).contains("error=\"invalid_dpop_proof\""),
            "{what}: {}",
            www(&r)
        );
    }
    // A proof by another key: the token's binding fails → invalid_token.
    let r = call(proof(&other, "GET", &htu, now, Some(&t), |_, _| {}), "DPoP").await;
    assert_eq!(r.status, 401);
    assert!(www(&r).contains("invalid_token"), "{}", www(&r));
    // The Bearer downgrade of a bound token → invalid_token.
    let r = call(proof(&key, "GET", &htu, now, Some(&t), |_, _| {}), "Bearer").await;
    assert_eq!(r.status, 401);
    assert!(www(&r).contains("invalid_token"));
    assert_eq!(
        s.upstream.count(),
        1,
        "only the one good call reached upstream"
    );
}

/// Another gateway with the first one's config (so the same `public_url`, hence the same
/// `htu`), writing to `store` on `chain`; returns its base URL.
async fn sibling(s: &Stack, store: Arc<dyn firebreak_store::Store>, chain: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let gw = firebreak_gateway::Gateway::new(
        s.gw.config().clone(),
        Arc::clone(&s.enforcer),
        store,
        chain.into(),
    );
    tokio::spawn(firebreak_gateway::serve(gw, l, std::future::pending()));
    url
}

#[tokio::test]
async fn g12_a_proof_replayed_at_a_second_gateway_behind_the_same_htu_is_refused() {
    let s = Stack::start().await;
    let key = SigningKey::generate(Algorithm::Es256).unwrap();
    let t = bound_token(&s, &key).await;
    // The first gateway's public URL: every gateway here serves that one htu.
    let htu = format!("{}/tools/a", s.url);
    // gw2: another gateway inside `serve` on the same store; gw3: a standalone gateway with
    // its own audit store, which claims proofs at the broker.
    let gw2 = sibling(&s, s.h.store.clone(), firebreak_store::BROKER_CHAIN).await;
    let dir = tempfile::tempdir().unwrap();
    let own = firebreak_store::SqliteStore::open(
        &dir.path().join("gw3.db"),
        firebreak_store::AuditSettings {
            key: firebreak_audit::AuditKey::generate().unwrap(),
            checkpoint_every: 100,
            checkpoint_interval_ms: 10_000,
            clock: Arc::new(s.h.clock.clone()),
            queue: 64,
            chain: "gw-3".into(),
        },
    )
    .unwrap();
    let gw3 = sibling(&s, Arc::new(own), "gw-3").await;
    let call = |base: String, p: String| {
        let (s, t) = (&s, t.clone());
        async move {
            let auth = format!("DPoP {t}");
            let r =
                s.h.http
                    .send(
                        "GET",
                        &format!("{base}/tools/a"),
                        &[
                            ("authorization", &auth),
                            ("dpop", &p),
                            ("host", &s.url[7..]),
                        ],
                        Vec::new(),
                    )
                    .await;
            (r.status, www(&r))
        }
    };
    let fresh = || proof(&key, "GET", &htu, s.h.now().as_secs(), Some(&t), |_, _| {});
    let refused = |(status, www): (u16, String), what: &str| {
        assert_eq!(status, 401, "{what}");
        assert!(www.contains("invalid_dpop_proof"), "{what}: {www}");
    };
    // Used at gw1, replayed at gw2 and gw3.
    let p1 = fresh();
    assert_eq!(call(s.url.clone(), p1.clone()).await.0, 200);
    refused(call(gw2.clone(), p1.clone()).await, "p1 at gw2");
    refused(call(gw3.clone(), p1).await, "p1 at gw3");
    // Used first at the standalone gw3, replayed at gw1 and gw2.
    let p2 = fresh();
    assert_eq!(call(gw3.clone(), p2.clone()).await.0, 200);
    refused(call(s.url.clone(), p2.clone()).await, "p2 at gw1");
    refused(call(gw2.clone(), p2).await, "p2 at gw2");
    // Used first at gw2, replayed at gw3.
    let p3 = fresh();
    assert_eq!(call(gw2, p3.clone()).await.0, 200);
    refused(call(gw3, p3).await, "p3 at gw3");
    assert_eq!(
        s.upstream.count(),
        3,
        "each proof reached the upstream once"
    );
}

#[tokio::test]
async fn require_dpop_route_refuses_bearer_tokens() {
    let s = Stack::start_with(
        Setup { policies: policies(), ..Setup::default() },
        "",
        "[[route]]\ntarget = \"tools\"\npath = \"/strict\"\nupstream = \"http://127.0.0.1:9/x\"\nrequire_dpop = true\n",
    )
    .await;
    let t = s.h.token(TOOLS, None).await;
    let r = s.get("/strict/a", &t).await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("dpop_required"))
    );
    assert!(www(&r).starts_with("DPoP"), "{}", www(&r));
    let r = s
        .send(
            "GET",
            "/.well-known/oauth-protected-resource/strict",
            &[],
            "",
        )
        .await;
    assert_eq!(r.json()["dpop_bound_access_tokens_required"], true);
    // Bearer is still fine where the route does not require DPoP.
    assert_eq!(s.get("/tools/a", &t).await.status, 200);
}

#[tokio::test]
async fn f7_key_rotation_under_load_causes_no_verification_failure() {
    let s = Arc::new(Stack::start().await);
    let fresh = Arc::new(tokio::sync::RwLock::new(s.h.token(TOOLS, None).await));
    let stop = Arc::new(tokio::sync::Notify::new());
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (s, fresh, stop, ok, refused) = (
            s.clone(),
            fresh.clone(),
            stop.clone(),
            ok.clone(),
            refused.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let t = fresh.read().await.clone();
                tokio::select! {
                    r = s.get("/tools/a", &t) => match r.status {
                        200 => { ok.fetch_add(1, Ordering::Relaxed); }
                        // 503 = the feed looks stale for the instant the test jumps the manual
                        // clock; not a verification outcome.
                        503 => {}
                        other => { refused.fetch_add(1, Ordering::Relaxed); eprintln!("refused: {other} {}", String::from_utf8_lossy(&r.body)); }
                    },
                    () = stop.notified() => return,
                }
            }
        }));
    }
    let mut kids = Vec::new();
    for _ in 0..3 {
        // Publish-before-use: the broker rotates only once `next` is older than the JWKS max-age.
        s.h.clock.advance_secs(61);
        let r = s.h.admin("POST", "/v1/keys/rotate", None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let t = s.h.token(TOOLS, None).await;
        kids.push(claims_kid(&t));
        *fresh.write().await = t;
        // The clock jump makes the feed look stale until the next heartbeat; then wait until
        // the new key's token has carried real load (bounded, however slow the machine).
        let before = ok.load(Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        while ok.load(Ordering::Relaxed) < before + 20 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "no load got through after a rotation"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    stop.notify_waiters();
    for w in workers {
        w.abort();
    }
    kids.dedup();
    assert_eq!(
        kids.len(),
        3,
        "each rotation signs with a new key: {kids:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "verification failures during rotation"
    );
    let _ = s.h.clock.now();
}

fn claims_kid(jwt: &str) -> String {
    use base64::Engine as _;
    let h = jwt.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}
