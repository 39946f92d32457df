//! The egress proxy against a real broker (firebreak-harness): curl interop for CONNECT and
//! absolute-form, authentication (407), policy (403), SSRF by IP-literal spelling (G08), DNS
//! rebinding (G09), request-head limits, per-agent limits, the stale feed, revocation, audit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_egress::{BoxFuture, EgressConfig, Resolve, render_metrics, serve};
use firebreak_enforce::{EnforceConfig, Enforcer};
use firebreak_harness::{BrokerHarness, EGRESS, GW_CLIENT, GW_SECRET, Setup, TOOLS, claims_of};
use firebreak_store::Store as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A resolver answering from a map; each name has a list of answers, one per lookup (the last
/// repeats), and lookups are counted.
#[derive(Default)]
struct FakeResolver {
    answers: Mutex<HashMap<String, Vec<Vec<IpAddr>>>>,
    lookups: AtomicUsize,
}

impl FakeResolver {
    fn set(&self, name: &str, answers: &[&[&str]]) {
        let parsed = answers
            .iter()
            .map(|a| a.iter().map(|s| s.parse().unwrap()).collect())
            .collect();
        self.answers.lock().unwrap().insert(name.into(), parsed);
    }
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Resolve for FakeResolver {
    fn resolve(&self, host: &str, _port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut map = self.answers.lock().unwrap();
        let answer = match map.get_mut(host) {
            Some(list) if list.len() > 1 => Ok(list.remove(0)),
            Some(list) => Ok(list[0].clone()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
        };
        Box::pin(async move { answer })
    }
}

/// A destination on loopback that counts connections: `echo` sends back what it gets;
/// otherwise it answers one HTTP request with `hello` and records the request head.
struct Dest {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Dest {
    async fn start(ip: &str, port: u16, echo: bool) -> Dest {
        let l = TcpListener::bind((ip, port)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, hd) = (Arc::clone(&conns), Arc::clone(&heads));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let hd = Arc::clone(&hd);
                tokio::spawn(async move {
                    if echo {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    } else {
                        let head = read_until_blank(&mut s).await;
                        hd.lock().unwrap().push(head);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
                            .await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        Dest { addr, conns, heads }
    }
    fn port(&self) -> u16 {
        self.addr.port()
    }
    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn read_until_blank(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => buf.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn permit(id: &str, host_id: &str) -> String {
    format!(
        "@id(\"{id}\")\npermit(principal == Agent::\"deploy-bot\", action == Action::\"egress_connect\", resource == Host::\"{host_id}\");\n"
    )
}

struct Env {
    h: BrokerHarness,
    e: Arc<Enforcer>,
    proxy: SocketAddr,
    resolver: Arc<FakeResolver>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(policies: &str, cfg: EgressConfig) -> Env {
    let h = BrokerHarness::start(Setup {
        policies: vec![("egress.cedar".into(), policies.to_owned())],
        ..Setup::default()
    })
    .await;
    let e = Enforcer::start(
        EnforceConfig {
            broker: h.url.clone(),
            client_id: GW_CLIENT.into(),
            client_secret: GW_SECRET.into(),
            stale_after: Duration::from_secs(5),
            danger_allow_http: false,
            leeway_secs: 60,
        },
        Arc::new(h.clock.clone()),
    )
    .unwrap();
    eventually("enforcer ready", Duration::from_secs(10), || e.ready()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let resolver = Arc::new(FakeResolver::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        cfg,
        Arc::clone(&e),
        h.store.clone(),
        resolver.clone(),
        async {
            let _ = rx.await;
        },
    ));
    Env {
        h,
        e,
        proxy,
        resolver,
        _stop: tx,
    }
}

fn cfg() -> EgressConfig {
    EgressConfig::new("egress")
}

/// Polls (real time, bounded) until `f` holds.
async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A parsed proxy answer and the stream (a tunnel when the status is 200 on CONNECT).
struct Answer {
    status: u16,
    head: String,
    body: Value,
    stream: TcpStream,
}

/// Sends `request` raw and reads the answer's head (and a problem body when there is one).
async fn send(proxy: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let head = read_until_blank(&mut s).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if len > 0 {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
    }
    Answer {
        status,
        head,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        stream: s,
    }
}

async fn connect(proxy: SocketAddr, authority: &str, token: Option<&str>) -> Answer {
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    send(
        proxy,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n").as_bytes(),
    )
    .await
}

fn reason(a: &Answer) -> &str {
    a.body["reason"].as_str().unwrap_or("")
}

/// Sends bytes through an open tunnel and reads the echo.
async fn echo_through(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

async fn audit_records(h: &BrokerHarness) -> Vec<Value> {
    h.store
        .audit_lines("broker", 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !l.checkpoint)
        .map(|l| serde_json::from_str(&l.json).unwrap())
        .collect()
}

async fn records_of(h: &BrokerHarness, kind: &str) -> Vec<Value> {
    audit_records(h)
        .await
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// other-bot's egress token (its identity rule pins `repository_id` 4343, which
/// `BrokerHarness::token_of` does not set).
async fn other_bot_token(h: &BrokerHarness) -> String {
    let mut claims = h
        .issuer
        .github_claims(&h.url, "acme/other", "refs/heads/main", h.now());
    claims["repository_id"] = serde_json::json!("4343");
    let subject = h.issuer.sign(&claims);
    let body = firebreak_server::form::encode_pairs(vec![
        ("grant_type", firebreak_harness::EXCHANGE),
        ("subject_token", subject.as_str()),
        ("subject_token_type", firebreak_harness::JWT),
        ("audience", EGRESS),
    ]);
    let r = h
        .http
        .post_form(&format!("{}/oauth2/token", h.url), &[], &body)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn curl(args: &[String]) -> (String, String, bool) {
    // curl is an implementation we did not write: if it is missing, this fails (no skip).
    let out = std::process::Command::new("curl")
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl must be installed for the interop tests");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn curl_args(proxy: SocketAddr, token: &str, url: &str, tunnel: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--noproxy".into(),
        String::new(),
        "-x".into(),
        format!("http://{proxy}"),
        "--proxy-header".into(),
        format!("Proxy-Authorization: Bearer {token}"),
    ];
    if tunnel {
        a.push("--proxytunnel".into());
    }
    a.push(url.into());
    a
}

// ---------------------------------------------------------------------------------------------
// Interop and the happy paths

#[tokio::test]
async fn curl_absolute_form_reaches_an_allowed_local_host_without_our_credentials() {
    let dest = Dest::start("127.0.0.1", 0, false).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    let url = format!("http://127.0.0.1:{}/hello?x=1", dest.port());
    let args = curl_args(env.proxy, &token, &url, false);
    let (out, err, ok) = tokio::task::spawn_blocking(move || curl(&args))
        .await
        .unwrap();
    assert!(ok, "curl failed: {err}");
    assert_eq!(out, "hello");
    let heads = dest.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    assert!(head.starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("proxy-authorization"), "{head}");
    assert!(
        !lower.contains(&token.to_ascii_lowercase()),
        "token forwarded"
    );
    assert!(!lower.contains("proxy-connection"), "{head}");
    assert!(lower.contains("connection: close"), "{head}");
    assert!(
        lower.contains(&format!("host: 127.0.0.1:{}", dest.port())),
        "{head}"
    );
}

#[tokio::test]
async fn curl_connect_tunnel_reaches_an_allowed_local_host() {
    let dest = Dest::start("127.0.0.1", 0, false).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    let url = format!("http://127.0.0.1:{}/through", dest.port());
    let args = curl_args(env.proxy, &token, &url, true);
    let (out, err, ok) = tokio::task::spawn_blocking(move || curl(&args))
        .await
        .unwrap();
    assert!(ok, "curl failed: {err}");
    assert_eq!(out, "hello");
    // Inside a tunnel the bytes are the agent's own: the origin got curl's request as sent.
    let heads = dest.heads.lock().unwrap().clone();
    assert!(heads[0].starts_with("GET /through HTTP/1.1"), "{heads:?}");
    assert!(
        !heads[0]
            .to_ascii_lowercase()
            .contains("proxy-authorization")
    );
    let m = render_metrics();
    assert!(m.contains("firebreak_egress_connections_total{decision=\"allow\"}"));
    assert!(m.contains("firebreak_egress_open_tunnels"));
    assert!(m.contains("firebreak_egress_bytes_up_total"));
}

#[tokio::test]
async fn raw_connect_tunnel_half_closes_and_audits_open_then_close() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    let jti = claims_of(&token)["jti"].as_str().unwrap().to_owned();
    // Bytes sent right after the CONNECT head (as a TLS ClientHello may be) are forwarded too.
    let authority = format!("127.0.0.1:{}", dest.port());
    let mut a = send(
        env.proxy,
        format!("CONNECT {authority} HTTP/1.1\r\nProxy-Authorization: Bearer {token}\r\n\r\nearly")
            .as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.head);
    let mut back = [0u8; 5];
    a.stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"early");
    echo_through(&mut a.stream, b"0123456789").await;
    // Half-close: our EOF reaches the destination, whose EOF comes back to us.
    a.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), a.stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());

    for _ in 0..500 {
        if !records_of(&env.h, "egress_close").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = audit_records(&env.h).await;
    let open_at = all.iter().position(|r| r["kind"] == "egress_open").unwrap();
    let close_at = all
        .iter()
        .position(|r| r["kind"] == "egress_close")
        .unwrap();
    assert!(open_at < close_at);
    let (open, close) = (&all[open_at], &all[close_at]);
    assert_eq!(open["decision"], "allow");
    assert_eq!(open["agent"], "deploy-bot");
    assert_eq!(open["session"], sid.as_str());
    assert_eq!(open["jti"], jti.as_str());
    assert_eq!(open["target"], "egress");
    assert_eq!(open["destination"], authority.as_str());
    assert_eq!(open["resolved_ip"], "127.0.0.1");
    assert_eq!(open["mode"], "connect");
    assert_eq!(
        open["reasons"],
        serde_json::json!([{"policy": "egress-local"}])
    );
    assert!(
        open["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(close["request_id"], open["request_id"]);
    assert_eq!(close["bytes_up"], 15);
    assert_eq!(close["bytes_down"], 15);
    assert_eq!(close["destination"], authority.as_str());
    assert_eq!(close["session"], sid.as_str());
    assert!(close["duration_ms"].is_u64());
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&token), "the token is never recorded");
    // The chain still verifies offline under the pinned key.
    let lines = env.h.store.audit_lines("broker", 0, 10_000).await.unwrap();
    let items: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(&l.json).unwrap())
        .collect();
    let pinned = firebreak_server::audit::pinned_public(&env.h.dir.path().join("data")).unwrap();
    let report = firebreak_audit::verify_items(
        &items,
        &firebreak_audit::VerifyOptions {
            keys: &[pinned],
            strict: false,
        },
    )
    .unwrap();
    assert!(report.records >= 3);
}

// ---------------------------------------------------------------------------------------------
// Authentication and policy

#[tokio::test]
async fn disallowed_host_is_403_and_never_connected() {
    let allowed = Dest::start("127.0.0.1", 0, true).await;
    let other = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", allowed.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    let a = connect(
        env.proxy,
        &format!("127.0.0.1:{}", other.port()),
        Some(&token),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.head);
    assert_eq!(a.body["type"], "about:blank");
    assert_eq!(a.body["title"], "Forbidden");
    assert_eq!(a.body["status"], 403);
    assert_eq!(reason(&a), "no_matching_permit");
    // A name nobody permits, too (and it is never looked up).
    let a = connect(env.proxy, "elsewhere.example.test:443", Some(&token)).await;
    assert_eq!((a.status, reason(&a)), (403, "no_matching_permit"));
    assert_eq!(env.resolver.lookups(), 0);
    assert_eq!(other.connections(), 0);
    let denies = records_of(&env.h, "egress_open").await;
    assert!(
        denies.iter().any(|r| r["decision"] == "deny"
            && r["destination"] == format!("127.0.0.1:{}", other.port()))
    );
}

#[tokio::test]
async fn no_token_or_another_audience_is_407_with_a_bearer_challenge() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let authority = format!("127.0.0.1:{}", dest.port());
    let a = connect(env.proxy, &authority, None).await;
    assert_eq!(a.status, 407, "{}", a.head);
    assert!(
        a.head
            .contains("Proxy-Authenticate: Bearer realm=\"firebreak-egress\"\r\n"),
        "{}",
        a.head
    );
    // Another audience's token, a garbage token, a Basic credential.
    let tools = env.h.token(TOOLS, Some("read")).await;
    let a = connect(env.proxy, &authority, Some(&tools)).await;
    assert_eq!((a.status, reason(&a)), (407, "audience_mismatch"));
    assert!(a.head.contains("error=\"invalid_token\""), "{}", a.head);
    let a = connect(env.proxy, &authority, Some("not.a.jwt")).await;
    assert_eq!((a.status, reason(&a)), (407, "invalid_token"));
    assert!(a.head.contains("error=\"invalid_token\""));
    let a = send(
        env.proxy,
        format!("CONNECT {authority} HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(a.status, 407);
    assert_eq!(dest.connections(), 0);
}

#[tokio::test]
async fn revoked_session_is_refused_within_1s_and_its_open_tunnel_ends() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let authority = format!("127.0.0.1:{}", dest.port());
    let token = env.h.token(EGRESS, None).await;
    let mut live = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!(live.status, 200);
    echo_through(&mut live.stream, b"before").await;
    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    let t0 = tokio::time::Instant::now();
    env.h.revoke_session(&sid).await;
    loop {
        let a = connect(env.proxy, &authority, Some(&token)).await;
        if a.status == 407 {
            assert_eq!(reason(&a), "revoked");
            assert!(a.head.contains("error=\"invalid_token\""));
            break;
        }
        assert_eq!(a.status, 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "not refused within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The tunnel opened before the revocation is closed by the proxy.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), live.stream.read_to_end(&mut rest))
        .await
        .expect("revoked tunnel not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut closes = Vec::new();
    for _ in 0..500 {
        closes = records_of(&env.h, "egress_close").await;
        if closes.iter().any(|c| c["end"] == "revoked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closes.iter().any(|c| c["end"] == "revoked"), "{closes:?}");
}

#[tokio::test]
async fn stale_feed_is_503_and_nothing_connects() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let authority = format!("127.0.0.1:{}", dest.port());
    let token = env.h.token(EGRESS, None).await;
    let mut ok = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!(ok.status, 200);
    echo_through(&mut ok.stream, b"x").await;
    drop(ok);
    eventually("first tunnel closed", Duration::from_secs(5), || {
        dest.connections() == 1
    })
    .await;
    let Env {
        h,
        e,
        proxy,
        _stop: stop,
        ..
    } = env;
    let clock = h.clock.clone();
    let _ = h.stop().await;
    clock.advance_secs(6);
    assert!(!e.ready());
    let a = connect(proxy, &authority, Some(&token)).await;
    assert_eq!(
        (a.status, reason(&a)),
        (503, "event_stream_stale"),
        "{}",
        a.head
    );
    assert_eq!(dest.connections(), 1);
    drop(stop);
}

// ---------------------------------------------------------------------------------------------
// G08: IP literals in every spelling

/// SECURITY-TESTS.md G08: the agent may reach only `api.example.test:443`; every spelling of
/// loopback, metadata and other internal addresses is refused (403), the listeners see nothing,
/// and the audit record holds the normalised destination; no token → 407.
#[tokio::test]
async fn g08_ip_literal_spellings_of_internal_hosts_are_refused() {
    let listener = Dest::start("127.0.0.1", 0, true).await;
    let p = listener.port();
    let env = start(&permit("api-only", "api.example.test:443"), cfg()).await;
    env.resolver.set("api.example.test", &[&["93.184.216.34"]]);
    let token = env.h.token(EGRESS, None).await;
    let spellings = [
        format!("127.0.0.1:{p}"),
        format!("2130706433:{p}"),
        format!("0x7f000001:{p}"),
        format!("0177.0.0.1:{p}"),
        format!("127.1:{p}"),
        format!("0x7f.1:{p}"),
        format!("[::1]:{p}"),
        format!("[::ffff:127.0.0.1]:{p}"),
        format!("[::ffff:a9fe:a9fe]:{p}"),
        format!("[64:ff9b::a9fe:a9fe]:{p}"),
        format!("169.254.169.254:{p}"),
        format!("2852039166:{p}"),
        format!("0xa9.0xfe.0xa9.0xfe:{p}"),
        format!("0251.0376.0251.0376:{p}"),
        format!("169.16689662:{p}"),
        format!("0.0.0.0:{p}"),
        format!("[fe80::1%25lo]:{p}"),
        "api.example.test:22".to_owned(),
        "api.example.test@127.0.0.1:443".to_owned(),
        format!("api.example.test@127.0.0.1:{p}"),
    ];
    for s in &spellings {
        let a = connect(env.proxy, s, Some(&token)).await;
        assert_eq!(a.status, 403, "{s}: {}", a.head);
        let r = reason(&a);
        assert!(
            r == "no_matching_permit" || r == "destination_not_allowed",
            "{s}: {r}"
        );
        // The same destination without a token: 407 before anything else.
        let a = connect(env.proxy, s, None).await;
        assert_eq!(a.status, 407, "{s}");
    }
    // Absolute-form with the same spellings.
    for host in ["2130706433", "0x7f.1", "[::ffff:127.0.0.1]"] {
        let a = send(
            env.proxy,
            format!(
                "GET http://{host}:{p}/ HTTP/1.1\r\nProxy-Authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(a.status, 403, "{host}");
    }
    assert_eq!(listener.connections(), 0);
    assert_eq!(
        env.resolver.lookups(),
        0,
        "only api.example.test:443 may be looked up"
    );
    let opens = records_of(&env.h, "egress_open").await;
    let dests: Vec<&str> = opens
        .iter()
        .filter_map(|r| r["destination"].as_str())
        .collect();
    let loopback = format!("127.0.0.1:{p}");
    let metadata = format!("169.254.169.254:{p}");
    assert!(
        dests.iter().filter(|d| **d == loopback).count() >= 8,
        "{dests:?}"
    );
    assert!(
        dests.iter().filter(|d| **d == metadata).count() >= 6,
        "{dests:?}"
    );
    assert!(opens.iter().all(|r| r["decision"] == "deny"));
}

/// SECURITY-TESTS.md G08: a broad permit over every host is about the internet: it does not
/// open loopback or metadata in any spelling.
#[tokio::test]
async fn g08_a_broad_permit_does_not_open_internal_addresses() {
    let listener = Dest::start("127.0.0.1", 0, true).await;
    let p = listener.port();
    let broad = "@id(\"anywhere\")\npermit(principal == Agent::\"deploy-bot\", action == Action::\"egress_connect\", resource);\n\
                 @id(\"typed\")\npermit(principal, action == Action::\"egress_connect\", resource is Host) when { resource.port == 443 || resource.port > 0 };\n";
    let env = start(broad, cfg()).await;
    let token = env.h.token(EGRESS, None).await;
    for s in [
        format!("127.0.0.1:{p}"),
        format!("2130706433:{p}"),
        format!("[::ffff:127.0.0.1]:{p}"),
        format!("169.254.169.254:{p}"),
        format!("10.0.0.1:{p}"),
        format!("[::1]:{p}"),
    ] {
        let a = connect(env.proxy, &s, Some(&token)).await;
        assert_eq!(
            (a.status, reason(&a)),
            (403, "destination_not_allowed"),
            "{s}"
        );
    }
    assert_eq!(listener.connections(), 0);
}

/// G08's counterpart: a permit naming `Host::"127.0.0.1:<port>"` opens exactly that, in any
/// spelling, and not another port on the same address.
#[tokio::test]
async fn g08_an_explicit_permit_of_a_loopback_address_is_honoured_in_any_spelling() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let other = Dest::start("127.0.0.1", 0, true).await;
    let p = dest.port();
    let env = start(&permit("local", &format!("127.0.0.1:{p}")), cfg()).await;
    let token = env.h.token(EGRESS, None).await;
    for s in [
        format!("127.0.0.1:{p}"),
        format!("2130706433:{p}"),
        format!("[::ffff:127.0.0.1]:{p}"),
    ] {
        let mut a = connect(env.proxy, &s, Some(&token)).await;
        assert_eq!(a.status, 200, "{s}: {}", a.head);
        echo_through(&mut a.stream, s.as_bytes()).await;
    }
    let a = connect(
        env.proxy,
        &format!("127.0.0.1:{}", other.port()),
        Some(&token),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(other.connections(), 0);
    let opens = records_of(&env.h, "egress_open").await;
    let allowed: Vec<&Value> = opens.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 3);
    assert!(
        allowed
            .iter()
            .all(|r| r["destination"] == format!("127.0.0.1:{p}"))
    );
}

// ---------------------------------------------------------------------------------------------
// G09: DNS rebinding

/// SECURITY-TESTS.md G09: the allowed name answers with a permitted address first and another
/// next; exactly one lookup per CONNECT, and the tunnel goes to the address that was checked.
/// Loopback stands in for both: 127.0.0.1 (named by a permit) is "public", 127.0.0.2 internal.
#[tokio::test]
async fn g09_rebinding_gets_one_lookup_and_the_tunnel_goes_to_the_checked_address() {
    let public = Dest::start("127.0.0.1", 0, true).await;
    let p = public.port();
    let internal = Dest::start("127.0.0.2", p, true).await;
    let policies = permit("api", &format!("api.example.test:{p}"))
        + &permit("api-address", &format!("127.0.0.1:{p}"));
    let env = start(&policies, cfg()).await;
    env.resolver.set(
        "api.example.test",
        &[&["127.0.0.1"], &["127.0.0.2"], &["127.0.0.2"]],
    );
    let token = env.h.token(EGRESS, None).await;
    let authority = format!("api.example.test:{p}");
    let mut a = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.head);
    echo_through(&mut a.stream, b"checked").await;
    assert_eq!(env.resolver.lookups(), 1, "exactly one lookup per CONNECT");
    assert_eq!(public.connections(), 1);
    // The next lookup answers the internal address: refused, never connected.
    let a = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!((a.status, reason(&a)), (403, "destination_not_allowed"));
    assert_eq!(env.resolver.lookups(), 2);
    assert_eq!(internal.connections(), 0);
    let opens = records_of(&env.h, "egress_open").await;
    let allow = opens.iter().find(|r| r["decision"] == "allow").unwrap();
    assert_eq!(allow["destination"], authority.as_str());
    assert_eq!(allow["resolved_ip"], "127.0.0.1");
    assert_eq!(
        allow["reasons"],
        serde_json::json!([{"policy": "api"}, {"policy": "api-address"}])
    );
}

/// SECURITY-TESTS.md G09: if any resolved address is internal (two A records, one of them
/// metadata; fd00:ec2::254; a name for an internal address; IPv4-mapped loopback): 403, and
/// the internal listener sees nothing.
#[tokio::test]
async fn g09_any_internal_answer_refuses_the_connect() {
    let internal = Dest::start("127.0.0.1", 0, true).await;
    let p = internal.port();
    let names = [
        "two.example.test",
        "v6.example.test",
        "cname.example.test",
        "mapped.example.test",
        "lo.example.test",
        "ten.example.test",
    ];
    let mut policies = String::new();
    for (i, n) in names.iter().enumerate() {
        policies.push_str(&permit(&format!("n{i}"), &format!("{n}:{p}")));
    }
    let env = start(&policies, cfg()).await;
    env.resolver
        .set("two.example.test", &[&["93.184.216.34", "169.254.169.254"]]);
    env.resolver.set("v6.example.test", &[&["fd00:ec2::254"]]);
    // The resolver followed a CNAME to an internal name; the proxy sees its address.
    env.resolver.set("cname.example.test", &[&["10.0.0.1"]]);
    env.resolver
        .set("mapped.example.test", &[&["::ffff:127.0.0.1"]]);
    env.resolver.set("lo.example.test", &[&["127.0.0.1"]]);
    env.resolver.set("ten.example.test", &[&["100.64.0.1"]]);
    let token = env.h.token(EGRESS, None).await;
    for n in names {
        let a = connect(env.proxy, &format!("{n}:{p}"), Some(&token)).await;
        assert_eq!(
            (a.status, reason(&a)),
            (403, "destination_not_allowed"),
            "{n}"
        );
    }
    assert_eq!(env.resolver.lookups(), names.len());
    assert_eq!(internal.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// Request-head limits

#[tokio::test]
async fn malformed_requests_are_400_and_nothing_panics() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    let auth = format!("Proxy-Authorization: Bearer {token}\r\n");
    let port = dest.port();
    let cases: Vec<String> = vec![
        format!("CONNECT 127.0.0.1 HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT 127.0.0.1: HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT 127.0.0.1:0 HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT 127.0.0.1:99999 HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT ::1:{port} HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT [::1] HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT :{port} HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT http://127.0.0.1:{port}/ HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT  127.0.0.1:{port} HTTP/1.1\r\n{auth}\r\n"),
        format!("CONNECT 127.0.0.1:{port}\r\n{auth}\r\n"),
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n"),
        format!("GET https://127.0.0.1:{port}/ HTTP/1.1\r\n{auth}\r\n"),
        format!(
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        ),
        format!(
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\n{auth}Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ),
        format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n{auth}Content-Length: -1\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{auth}{auth}\r\n"),
        "GARBAGE\r\n\r\n".into(),
        "C\0NNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n".into(),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nBad Header: x\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nX: a\0b\r\n\r\n"),
    ];
    for c in &cases {
        let a = send(env.proxy, c.as_bytes()).await;
        assert_eq!(a.status, 400, "{c:?}: {}", a.head);
        assert_eq!(reason(&a), "malformed_request", "{c:?}");
    }
    // Missing port is 400 even without a token (the line is malformed whoever sends it).
    let a = send(env.proxy, b"CONNECT api.example.test HTTP/1.1\r\n\r\n").await;
    assert_eq!(a.status, 400);
    assert_eq!(dest.connections(), 0);
    // The proxy is still serving.
    let mut ok = connect(env.proxy, &format!("127.0.0.1:{port}"), Some(&token)).await;
    assert_eq!(ok.status, 200);
    echo_through(&mut ok.stream, b"alive").await;
}

#[tokio::test]
async fn huge_headers_are_431_and_slow_headers_are_cut_off() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let mut c = cfg();
    c.header_timeout = Duration::from_millis(300);
    c.max_header_bytes = 4096;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        c,
    )
    .await;
    let big = format!(
        "CONNECT 127.0.0.1:{} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        dest.port(),
        "a".repeat(5000)
    );
    let a = send(env.proxy, big.as_bytes()).await;
    assert_eq!(a.status, 431, "{}", a.head);
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let a = send(
        env.proxy,
        format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n{many}\r\n", dest.port()).as_bytes(),
    )
    .await;
    assert_eq!(a.status, 431, "{}", a.head);
    // Slowloris: half a head, then silence. Answered 408 and closed, within the bound.
    let t0 = tokio::time::Instant::now();
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    s.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("slow head not cut off")
        .unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408 "));
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Dribbling a byte at a time does not extend the bound.
    let t0 = tokio::time::Instant::now();
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    let mut closed = false;
    for b in b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            assert!(n == 0 || probe.starts_with(b"HTTP/1.1 408"));
            closed = true;
            break;
        }
    }
    assert!(closed, "a dribbled head outlived header_timeout");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(dest.connections(), 0);
}

#[tokio::test]
async fn per_agent_connection_limit_is_429_and_frees_on_close() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let mut c = cfg();
    c.max_conns_per_agent = 2;
    let policies = permit("egress-local", &format!("127.0.0.1:{}", dest.port()))
        + &format!(
            "@id(\"other\")\npermit(principal == Agent::\"other-bot\", action == Action::\"egress_connect\", resource == Host::\"127.0.0.1:{}\");\n",
            dest.port()
        );
    let env = start(&policies, c).await;
    let token = env.h.token(EGRESS, None).await;
    let other = other_bot_token(&env.h).await;
    let authority = format!("127.0.0.1:{}", dest.port());
    let mut one = connect(env.proxy, &authority, Some(&token)).await;
    let mut two = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!((one.status, two.status), (200, 200));
    echo_through(&mut one.stream, b"1").await;
    echo_through(&mut two.stream, b"2").await;
    let three = connect(env.proxy, &authority, Some(&token)).await;
    assert_eq!((three.status, reason(&three)), (429, "connection_limit"));
    // Another agent has its own budget.
    let mut theirs = connect(env.proxy, &authority, Some(&other)).await;
    assert_eq!(theirs.status, 200);
    echo_through(&mut theirs.stream, b"o").await;
    drop(one);
    let start = tokio::time::Instant::now();
    loop {
        let mut a = connect(env.proxy, &authority, Some(&token)).await;
        if a.status == 200 {
            echo_through(&mut a.stream, b"again").await;
            break;
        }
        assert_eq!(a.status, 429);
        assert!(start.elapsed() < Duration::from_secs(5), "slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unresolvable_name_is_502_and_a_closed_port_is_502_after_egress_open() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = closed.local_addr().unwrap().port();
    drop(closed);
    let policies = permit("gone", &format!("gone.example.test:{p}"))
        + &permit("closed", &format!("127.0.0.1:{p}"));
    let env = start(&policies, cfg()).await;
    let token = env.h.token(EGRESS, None).await;
    let a = connect(env.proxy, &format!("gone.example.test:{p}"), Some(&token)).await;
    assert_eq!((a.status, reason(&a)), (502, "upstream_unavailable"));
    let a = connect(env.proxy, &format!("127.0.0.1:{p}"), Some(&token)).await;
    assert_eq!((a.status, reason(&a)), (502, "upstream_unavailable"));
    let closes = records_of(&env.h, "egress_close").await;
    assert!(closes.iter().any(|c| c["end"] == "connect_failed"));
}

#[tokio::test]
async fn audit_not_durable_in_time_is_503_and_nothing_connects() {
    let dest = Dest::start("127.0.0.1", 0, true).await;
    let env = start(
        &permit("egress-local", &format!("127.0.0.1:{}", dest.port())),
        cfg(),
    )
    .await;
    let token = env.h.token(EGRESS, None).await;
    // The audit table refuses every insert from now on (a full disk, a broken volume).
    let db = rusqlite::Connection::open(env.h.dir.path().join("data/firebreak.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fb_fail BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let a = connect(
        env.proxy,
        &format!("127.0.0.1:{}", dest.port()),
        Some(&token),
    )
    .await;
    assert_eq!(
        (a.status, reason(&a)),
        (503, "audit_unavailable"),
        "{}",
        a.head
    );
    assert_eq!(dest.connections(), 0);
}
