//! The enforcement core against a real broker: bundle, token verification, pushed revocation,
//! fail-closed when the feed goes quiet (F10) and recovery when it returns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::Duration;

use firebreak_core::Clock as _;
use firebreak_enforce::{EnforceConfig, Enforcer, Refusal, Revoked};
use firebreak_harness::{BrokerHarness, GW_CLIENT, GW_SECRET, Setup, TOOLS, claims_of};

fn config(url: &str) -> EnforceConfig {
    EnforceConfig {
        broker: url.to_owned(),
        client_id: GW_CLIENT.into(),
        client_secret: GW_SECRET.into(),
        stale_after: Duration::from_secs(5),
        danger_allow_http: false,
        leeway_secs: 60,
    }
}

/// Polls (real time, bounded) until `f` holds.
async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn f10_revocation_is_pushed_and_a_quiet_feed_fails_closed_then_recovers() {
    let h = BrokerHarness::start(Setup::default()).await;
    let e = Enforcer::start(config(&h.url), Arc::new(h.clock.clone())).unwrap();
    eventually("ready", Duration::from_secs(5), || e.ready()).await;
    let token = h.token(TOOLS, Some("read")).await;
    let v = e.tokens().unwrap().verify(&token, TOOLS).await.unwrap();
    assert_eq!(v.agent, "deploy-bot");
    assert!(e.admit(&v).is_ok());
    // Wrong audience is refused even from the cache.
    assert!(
        e.tokens()
            .unwrap()
            .verify(&token, "https://other/")
            .await
            .is_err()
    );

    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    let t0 = tokio::time::Instant::now();
    h.revoke_session(&sid).await;
    eventually("revocation pushed", Duration::from_secs(1), || {
        matches!(e.admit(&v), Err(Refusal::Revoked(Revoked::Session)))
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(
        e.render_metrics()
            .contains("firebreak_revocation_lag_seconds_count 1")
    );

    // A second, live token keeps working until the broker goes away.
    let other = h.token(TOOLS, None).await;
    let v2 = e.tokens().unwrap().verify(&other, TOOLS).await.unwrap();
    assert!(e.admit(&v2).is_ok());
    let clock = h.clock.clone();
    let (dir, issuer, addr) = h.stop().await;
    // No heartbeat: once stale_after passes on the clock, everything is refused.
    clock.advance_secs(6);
    assert_eq!(e.admit(&v2).unwrap_err(), Refusal::Stale);
    assert!(!e.ready());
    // The broker returns on the same address: the gateway recovers by itself, and the
    // revocation it learnt is still known (resumed or re-snapshotted).
    let h = BrokerHarness::start_in(Setup::default(), dir, issuer, Some(addr)).await;
    h.clock.set(clock.now());
    let e2 = Arc::clone(&e);
    eventually("recovered", Duration::from_secs(5), move || {
        e2.admit(&v2).is_ok()
    })
    .await;
    assert!(matches!(e.admit(&v), Err(Refusal::Revoked(_))));
}

#[tokio::test]
async fn bundle_version_matches_the_broker_and_bad_credentials_never_get_ready() {
    let h = BrokerHarness::start(Setup::default()).await;
    let e = Enforcer::start(config(&h.url), Arc::new(h.clock.clone())).unwrap();
    eventually("ready", Duration::from_secs(5), || e.ready()).await;
    let announced = e.state().policy_version.clone().unwrap();
    assert_eq!(e.bundle().unwrap().pdp.version(), announced);
    assert!(e.bundle().unwrap().targets.contains_key("mcp-tools"));
    let mut bad = config(&h.url);
    bad.client_secret = "wrong".into();
    let b = Enforcer::start(bad, Arc::new(h.clock.clone())).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.ready(), "an unauthenticated enforcer must stay closed");
    assert!(b.bundle().is_none());
}
