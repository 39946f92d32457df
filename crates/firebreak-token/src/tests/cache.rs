//! The JWKS cache against a hand-written loopback HTTP/1.1 issuer: SECURITY-TESTS.md T07
//! (single flight, refetch spacing) and the verifier-level parts of F6 (last-known-good bound,
//! 500s, bad JSON, oversized bodies, a black-holed server, a removed key). Time moves only through
//! the `ManualClock`; the one real wait is the 200 ms fetch timeout of the black-hole case.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_core::{ManualClock, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;
use crate::{JwksCache, JwksCacheConfig, JwksSource, KeySet};

#[derive(Clone)]
enum Behaviour {
    /// 200 with this JSON body.
    Json(String),
    /// 200 with this JSON body, held until the test opens the gate.
    Gated(String),
    /// This status with an empty body.
    Status(u16),
    /// A 200 whose body is `n` bytes, with or without Content-Length.
    Big { n: usize, content_length: bool },
    /// 200 with `text/html`.
    NotJson,
    /// Accept the connection, read the request, never answer.
    BlackHole,
}

struct Issuer {
    base: String,
    jwks_requests: Arc<AtomicUsize>,
    all_requests: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    discovery_issuer: Arc<Mutex<Option<String>>>,
    gate: watch::Sender<bool>,
    arrived: watch::Receiver<usize>,
}

impl Issuer {
    async fn start(behaviour: Behaviour) -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (gate, gate_rx) = watch::channel(false);
        let (arrived_tx, arrived) = watch::channel(0usize);
        let issuer = Issuer {
            base: base.clone(),
            jwks_requests: Arc::default(),
            all_requests: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            discovery_issuer: Arc::new(Mutex::new(Some(base.clone()))),
            gate,
            arrived,
        };
        let (jwks_requests, all_requests) =
            (issuer.jwks_requests.clone(), issuer.all_requests.clone());
        let (behaviour, discovery_issuer) =
            (issuer.behaviour.clone(), issuer.discovery_issuer.clone());
        let arrived_tx = Arc::new(arrived_tx);
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let ctx = (
                    base.clone(),
                    jwks_requests.clone(),
                    all_requests.clone(),
                    behaviour.clone(),
                    discovery_issuer.clone(),
                    gate_rx.clone(),
                    arrived_tx.clone(),
                );
                tokio::spawn(async move {
                    let (
                        base,
                        jwks_requests,
                        all_requests,
                        behaviour,
                        discovery_issuer,
                        mut gate_rx,
                        arrived_tx,
                    ) = ctx;
                    serve(
                        sock,
                        &base,
                        &jwks_requests,
                        &all_requests,
                        &behaviour,
                        &discovery_issuer,
                        &mut gate_rx,
                        &arrived_tx,
                    )
                    .await;
                });
            }
        });
        issuer
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    fn jwks(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }
}

#[expect(clippy::too_many_arguments, reason = "test server plumbing")]
async fn serve(
    mut sock: TcpStream,
    base: &str,
    jwks_requests: &AtomicUsize,
    all_requests: &AtomicUsize,
    behaviour: &Mutex<Behaviour>,
    discovery_issuer: &Mutex<Option<String>>,
    gate_rx: &mut watch::Receiver<bool>,
    arrived_tx: &watch::Sender<usize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    all_requests.fetch_add(1, Ordering::SeqCst);
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if path == "/.well-known/openid-configuration" {
        let issuer = discovery_issuer.lock().unwrap().clone();
        let doc =
            serde_json::json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks")}).to_string();
        respond(
            &mut sock,
            "200 OK",
            "application/json",
            doc.as_bytes(),
            true,
        )
        .await;
        return;
    }
    jwks_requests.fetch_add(1, Ordering::SeqCst);
    arrived_tx.send_modify(|n| *n += 1);
    let b = behaviour.lock().unwrap().clone();
    match b {
        Behaviour::Json(body) => {
            respond(
                &mut sock,
                "200 OK",
                "application/jwk-set+json",
                body.as_bytes(),
                true,
            )
            .await
        }
        Behaviour::Gated(body) => {
            let _ = gate_rx.wait_for(|open| *open).await;
            respond(
                &mut sock,
                "200 OK",
                "application/json",
                body.as_bytes(),
                true,
            )
            .await;
        }
        Behaviour::Status(code) => {
            let status = match code {
                302 => "302 Found",
                _ => "500 Internal Server Error",
            };
            respond(&mut sock, status, "application/json", b"", true).await;
        }
        Behaviour::Big { n, content_length } => {
            let body = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "a".repeat(n));
            respond(
                &mut sock,
                "200 OK",
                "application/json",
                body.as_bytes(),
                content_length,
            )
            .await;
        }
        Behaviour::NotJson => {
            respond(&mut sock, "200 OK", "text/html", b"{\"keys\":[]}", true).await
        }
        Behaviour::BlackHole => std::future::pending::<()>().await,
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    content_length: bool,
) {
    let length = if content_length {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    let head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{length}Connection: close\r\n\r\n");
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.shutdown().await;
}

fn named(kid: &str) -> SigningKey {
    SigningKey::from_pkcs8(Algorithm::EdDsa, kid.into(), ed_key().pkcs8_der()).unwrap()
}

fn jwks_of(keys: &[&SigningKey]) -> String {
    KeySet::from_keys(keys.iter().map(|k| k.public_key()).collect())
        .to_jwks()
        .to_string()
}

fn cache(issuer: &Issuer, clock: &ManualClock, config: JwksCacheConfig) -> JwksCache {
    JwksCache::new(
        JwksSource::Uri(format!("{}/jwks", issuer.base)),
        true,
        config,
        Arc::new(clock.clone()),
    )
}

fn config() -> JwksCacheConfig {
    JwksCacheConfig {
        last_known_good_secs: 3,
        ..JwksCacheConfig::default()
    }
}

/// SECURITY-TESTS.md T07: 1,000 concurrent lookups of random unknown kids cause one fetch; a
/// valid kid resolves during the flood and while a later fetch is still in flight; no refetch
/// within 30 s, one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_unknown_kid_flood_single_flight() {
    let k1 = named("k1");
    let issuer = Issuer::start(Behaviour::Json(jwks_of(&[&k1]))).await;
    let clock = ManualClock::new(UnixTime::from_secs(NOW));
    let cfg = JwksCacheConfig {
        last_known_good_secs: 3600,
        ..JwksCacheConfig::default()
    };
    let cache = cache(&issuer, &clock, cfg);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = cache.clone();
        let kid = format!("unknown-{i}-{}", crate::random_b64url(8));
        tasks.push(tokio::spawn(async move { c.key(&kid).await }));
    }
    let valid = {
        let c = cache.clone();
        tokio::spawn(async move { c.key("k1").await })
    };
    for t in tasks {
        assert_eq!(t.await.unwrap().err(), Some(TokenError::UnknownKey));
    }
    assert_eq!(valid.await.unwrap().unwrap().kid(), "k1");
    assert_eq!(issuer.jwks(), 1);
    assert_eq!(cache.fetch_count(), 1);

    // Inside the 30 s window an unknown kid is refused without a fetch.
    clock.advance_secs(29);
    assert_eq!(
        cache.key("unknown-late").await.err(),
        Some(TokenError::UnknownKey)
    );
    assert_eq!(issuer.jwks(), 1);
    // After it, one new fetch.
    clock.advance_secs(2);
    assert_eq!(
        cache.key("unknown-later").await.err(),
        Some(TokenError::UnknownKey)
    );
    assert_eq!(issuer.jwks(), 2);

    // A fetch held open by the issuer does not delay a kid the cached set knows.
    issuer.set(Behaviour::Gated(jwks_of(&[&k1])));
    clock.advance_secs(31);
    let slow = {
        let c = cache.clone();
        tokio::spawn(async move { c.key("unknown-during-slow-fetch").await })
    };
    let mut arrived = issuer.arrived.clone();
    arrived.wait_for(|n| *n >= 3).await.unwrap();
    assert_eq!(cache.key("k1").await.unwrap().kid(), "k1");
    issuer.gate.send(true).unwrap();
    assert_eq!(slow.await.unwrap().err(), Some(TokenError::UnknownKey));
    assert_eq!(issuer.jwks(), 3);
}

/// SECURITY-TESTS.md F6 (verifier part): failed fetches keep the last good set for the bound
/// only, then the issuer is refused; a successful fetch that drops a key stops trusting it.
#[tokio::test]
async fn f6_last_known_good_bounded_and_key_removal() {
    let k1 = named("k1");
    let k2 = named("k2");
    let issuer = Issuer::start(Behaviour::Json(jwks_of(&[&k1]))).await;
    let clock = ManualClock::new(UnixTime::from_secs(NOW));
    // LKG 3600 s as in production, refresh after 300 s, refetch spacing 30 s.
    let cfg = JwksCacheConfig::default();
    let cache = cache(&issuer, &clock, cfg);
    assert_eq!(cache.key("k1").await.unwrap(), k1.public_key());

    // Every kind of failed fetch keeps the last good set while it is young enough.
    for (step, failure) in [
        Behaviour::Status(500),
        Behaviour::Json("{not json".into()),
        Behaviour::NotJson,
        Behaviour::Status(302),
    ]
    .into_iter()
    .enumerate()
    {
        issuer.set(failure);
        clock.advance_secs(301);
        assert_eq!(cache.key("k1").await.unwrap().kid(), "k1", "step {step}");
        assert_eq!(cache.fetch_count(), 2 + step as u64);
    }
    // 4 × 301 s = 1204 s; move past the 3600 s bound.
    clock.advance_secs(3600 - 1204 + 1);
    assert_eq!(
        cache.key("k1").await.err(),
        Some(TokenError::IssuerKeysUnavailable)
    );
    // Recovery with k1 removed: k1 is refused at once, k2 works.
    issuer.set(Behaviour::Json(jwks_of(&[&k2])));
    clock.advance_secs(31);
    assert_eq!(cache.key("k1").await.err(), Some(TokenError::UnknownKey));
    assert_eq!(cache.key("k2").await.unwrap().kid(), "k2");
}

/// SECURITY-TESTS.md F6: a body over max_body_bytes is an error (never truncated), declared or
/// not; with nothing cached the issuer is unavailable.
#[tokio::test]
async fn f6_oversized_jwks_body_refused() {
    for content_length in [true, false] {
        let issuer = Issuer::start(Behaviour::Big {
            n: 5 * 1024 * 1024,
            content_length,
        })
        .await;
        let clock = ManualClock::new(UnixTime::from_secs(NOW));
        let cache = cache(&issuer, &clock, config());
        assert_eq!(
            cache.key("k1").await.err(),
            Some(TokenError::IssuerKeysUnavailable)
        );
        // Positive twin: a body under the limit loads.
        let k1 = named("k1");
        issuer.set(Behaviour::Json(jwks_of(&[&k1])));
        clock.advance_secs(30);
        assert_eq!(cache.key("k1").await.unwrap().kid(), "k1");
    }
}

/// SECURITY-TESTS.md F6: a server that never answers costs at most the fetch timeout.
#[tokio::test]
async fn f6_black_holed_jwks_times_out() {
    let issuer = Issuer::start(Behaviour::BlackHole).await;
    let clock = ManualClock::new(UnixTime::from_secs(NOW));
    let cfg = JwksCacheConfig {
        fetch_timeout: Duration::from_millis(200),
        ..config()
    };
    let cache = cache(&issuer, &clock, cfg);
    let result = tokio::time::timeout(Duration::from_secs(5), cache.key("k1")).await;
    assert_eq!(
        result.expect("the fetch timeout did not fire").err(),
        Some(TokenError::IssuerKeysUnavailable)
    );
    assert_eq!(issuer.jwks(), 1);
}

/// The cache is shared between request tasks.
#[test]
fn cache_and_keys_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<JwksCache>();
    assert_send_sync::<PublicKey>();
    assert_send_sync::<SigningKey>();
    assert_send_sync::<KeySet>();
}

/// SECURITY-TESTS.md T06 at the cache: a malformed kid is refused without any fetch.
#[tokio::test]
async fn t06_hostile_kid_never_fetches() {
    let issuer = Issuer::start(Behaviour::Json(jwks_of(&[&named("k1")]))).await;
    let clock = ManualClock::new(UnixTime::from_secs(NOW));
    let cache = cache(&issuer, &clock, config());
    for kid in [String::new(), "a\u{0}b".to_owned(), "k".repeat(10 * 1024)] {
        assert_eq!(cache.key(&kid).await.err(), Some(TokenError::BadKid));
    }
    assert_eq!(issuer.jwks(), 0);
    assert_eq!(cache.key("k1").await.unwrap().kid(), "k1");
}

/// Discovery: the document's `issuer` must equal the configured issuer byte-exactly; plain http
/// is refused unless allowed, without a connection.
#[tokio::test]
async fn t15_discovery_issuer_checked_and_http_refused() {
    let k1 = named("k1");
    let issuer = Issuer::start(Behaviour::Json(jwks_of(&[&k1]))).await;
    let clock = ManualClock::new(UnixTime::from_secs(NOW));
    let discovery = |url: String, allow_http: bool| {
        JwksCache::new(
            JwksSource::Discovery { issuer_url: url },
            allow_http,
            config(),
            Arc::new(clock.clone()),
        )
    };
    assert_eq!(
        discovery(issuer.base.clone(), true)
            .key("k1")
            .await
            .unwrap()
            .kid(),
        "k1"
    );
    *issuer.discovery_issuer.lock().unwrap() = Some(format!("{}/", issuer.base));
    assert_eq!(
        discovery(issuer.base.clone(), true).key("k1").await.err(),
        Some(TokenError::IssuerKeysUnavailable)
    );
    let before = issuer.all_requests.load(Ordering::SeqCst);
    assert_eq!(
        discovery(issuer.base.clone(), false).key("k1").await.err(),
        Some(TokenError::IssuerKeysUnavailable)
    );
    assert_eq!(issuer.all_requests.load(Ordering::SeqCst), before);
}
