//! Several real `firebreak serve` processes on one PostgreSQL schema (DESIGN.md §8): replay
//! refused across replicas (X04), revocation on one replica reaching a gateway on another (F9),
//! one verifiable chain under concurrent writers, and recovery after PostgreSQL ends every
//! broker connection (F4). PostgreSQL comes from `FIREBREAK_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`); an unreachable server FAILS these tests.
//!
//! Each test gets a fresh schema (dropped by a guard), temp data dirs, loopback ports, and kills
//! its children when it ends. The tests take one lock, so replicas of different tests do not
//! compete for the CPU and the printed numbers mean something (debug builds: indicative only).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use common::{PgSchema, Server, free_port, serve_with_env, wait_for_local};
use firebreak_server::form::encode_pairs;
use firebreak_testkit::{Clock, HttpClient, Reply, SystemClock, TestIssuer};
use firebreak_token::Algorithm;
use serde_json::Value;

const AUD: &str = "https://fb.test";
const TOOLS: &str = "https://gw.test/tools";
const GW_CLIENT: &str = "gw-1";
const GW_SECRET: &str = "replicas-gateway-secret-value";
const GW_SECRET_ENV: &str = "FIREBREAK_TEST_GW_SECRET";

/// One test at a time in this binary (each starts up to three brokers on two shared cores).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POLICY: &str = r#"@id("gw-tools")
permit(principal == Agent::"deploy-bot", action == Action::"http_request", resource == Target::"tools");
"#;

fn config_text(
    data: &Path,
    policies: &Path,
    store_url: &str,
    issuer: &str,
    listen: &str,
    store_extra: &str,
    gateway: &str,
) -> String {
    format!(
        r#"[server]
listen = "{listen}"
public_url = "{AUD}"
data_dir = "{data}"

[store]
url = "{store_url}"
{store_extra}

[audit]
write_deadline = "1s"
checkpoint_every = 100
checkpoint_interval = "500ms"

[policy]
dir = "{policies}"

[[issuer]]
id = "gh"
url = "{issuer}"
audience = "{AUD}"
profile = "github-actions"
algorithms = ["ES256"]
danger_allow_http = true

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy"
expires = 2099-01-01
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "gh", claims = {{ repository = "acme/api", repository_id = "4242", ref = "refs/heads/main" }}, events = ["push"] }}
grants = [{{ target = "tools", scopes = ["read"] }}]

[[client]]
id = "{GW_CLIENT}"
secret_sha256 = "{secret_hash}"
roles = ["stream", "evaluate"]

[[target]]
id = "tools"
audience = "{TOOLS}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
{gateway}
"#,
        data = data.display(),
        policies = policies.display(),
        secret_hash = firebreak_token::sha256_hex(GW_SECRET.as_bytes()),
    )
}

struct Replica {
    name: &'static str,
    server: Server,
    config: PathBuf,
    admin: String,
}

impl Replica {
    fn url(&self) -> &str {
        &self.server.url
    }
}

/// Replicas on one schema. Fields drop in order: the brokers first, then the schema, then the
/// temp dir.
struct Cluster {
    replicas: Vec<Replica>,
    /// `[gateway]` inside replica B's `serve`, when asked for.
    gateway: Option<String>,
    schema: PgSchema,
    issuer: TestIssuer,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Options {
    replicas: usize,
    /// An upstream base URL: replica B also runs a gateway with a route `/tools` to it.
    upstream: Option<String>,
    /// Extra `[store]` keys.
    store_extra: &'static str,
}

impl Cluster {
    async fn start(tag: &str, o: Options) -> Cluster {
        const NAMES: [&str; 3] = ["ra", "rb", "rc"];
        let schema = PgSchema::create(tag);
        let issuer = TestIssuer::start(Algorithm::Es256).await;
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("gw.cedar"), POLICY).unwrap();
        let mut replicas: Vec<Replica> = Vec::new();
        let mut gateway = None;
        for (i, name) in NAMES.iter().copied().enumerate().take(o.replicas) {
            let data = dir.path().join(name).join("data");
            std::fs::create_dir_all(&data).unwrap();
            if let Some(a) = replicas.first() {
                // Every replica signs checkpoints with the same audit key, pinned the same way.
                let a_data = a.config.parent().unwrap().join("data");
                for f in [
                    firebreak_server::audit::KEY_FILE,
                    firebreak_server::audit::PUBLIC_FILE,
                ] {
                    std::fs::copy(a_data.join(f), data.join(f)).unwrap();
                }
            }
            let (listen, gw) = match (&o.upstream, i) {
                (Some(up), 1) => {
                    // The gateway needs its broker's address before the broker starts.
                    let port = free_port();
                    let gw_port = free_port();
                    gateway = Some(format!("http://127.0.0.1:{gw_port}"));
                    (
                        format!("127.0.0.1:{port}"),
                        format!(
                            r#"
[gateway]
listen = "127.0.0.1:{gw_port}"
broker = "http://127.0.0.1:{port}"
client_id = "{GW_CLIENT}"
client_secret_env = "{GW_SECRET_ENV}"
stale_after = "3s"

[[gateway.route]]
target = "tools"
path = "/tools"
upstream = "{up}/api"
"#
                        ),
                    )
                }
                _ => ("127.0.0.1:0".to_owned(), String::new()),
            };
            let text = config_text(
                &data,
                &policies,
                &schema.store_url(name),
                &issuer.url,
                &listen,
                o.store_extra,
                &gw,
            );
            let config = dir.path().join(name).join("firebreak.toml");
            std::fs::write(&config, text).unwrap();
            let server = serve_with_env(&config, "info", &[(GW_SECRET_ENV, GW_SECRET)]);
            if !gw.is_empty() {
                wait_for_local(&server, "gateway listening", Duration::from_secs(10));
            }
            let admin = std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned();
            replicas.push(Replica {
                name,
                server,
                config,
                admin,
            });
        }
        Cluster {
            replicas,
            gateway,
            schema,
            issuer,
            _dir: dir,
        }
    }

    fn subject(&self) -> String {
        subject(&self.issuer)
    }
}

fn subject(issuer: &TestIssuer) -> String {
    issuer.sign(&issuer.github_claims(AUD, "acme/api", "refs/heads/main", SystemClock.now()))
}

async fn exchange(http: &HttpClient, url: &str, subject: &str) -> Reply {
    let body = encode_pairs([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", TOOLS),
    ]);
    http.post_form(&format!("{url}/oauth2/token"), &[], &body)
        .await
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

fn access_token(r: &Reply) -> String {
    r.json()["access_token"].as_str().unwrap().to_owned()
}

fn assert_replay(r: &Reply) {
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(r.json()["error_description"], "replay");
}

/// `n` exchanges, each with a fresh subject token, over `urls` round-robin by `workers`
/// concurrent clients. Returns (url index, reply status, jti of the issued token) per request.
async fn load(
    issuer: &TestIssuer,
    urls: &[String],
    n: usize,
    workers: usize,
) -> Vec<(usize, u16, Option<String>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (issuer, urls, next) = (issuer.clone(), urls.to_vec(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let http = HttpClient::default();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = urls.len();
                let which = i % r;
                let reply = exchange(&http, &urls[which], &subject(&issuer)).await;
                let jti = (reply.status == 200).then(|| {
                    claims(&access_token(&reply))["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                });
                out.push((which, reply.status, jti));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn audit_verify(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// The broker chain's records (not checkpoints) through `GET /v1/audit/export`.
async fn export_records(http: &HttpClient, r: &Replica) -> Vec<Value> {
    let auth = format!("Bearer {}", r.admin);
    let reply = http
        .get(
            &format!("{}/v1/audit/export?chain=broker", r.url()),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] != "checkpoint")
        .collect()
}

/// Every exchange a client saw succeed has exactly one allow record (by `jti`), no allow record
/// exists without one, and the chain's seqs are 1..=n.
fn check_records(records: &[Value], issued: &[String]) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["chain"], "broker");
        assert_eq!(
            r["seq"].as_u64(),
            Some(i as u64 + 1),
            "gap or reorder at {i}"
        );
    }
    let mut allow: HashMap<&str, usize> = HashMap::new();
    for r in records {
        if r["kind"] == "exchange" && r["decision"] == "allow" {
            *allow.entry(r["jti"].as_str().unwrap()).or_default() += 1;
        }
    }
    let issued_set: HashSet<&str> = issued.iter().map(String::as_str).collect();
    assert_eq!(issued_set.len(), issued.len(), "a jti was issued twice");
    for j in issued {
        assert_eq!(allow.get(j.as_str()), Some(&1), "jti {j}: records");
    }
    assert_eq!(
        allow.len(),
        issued.len(),
        "allow records without a 200 behind them"
    );
}

/// SECURITY-TESTS.md X04 over HTTP: a subject token spent at one replica is refused at another,
/// and the same token sent to three replicas at the same instant gets exactly one 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x04_g12_subject_token_and_dpop_proof_replay_refused_across_replicas() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(
        "x04",
        Options {
            replicas: 3,
            ..Options::default()
        },
    )
    .await;
    let http = HttpClient::default();
    let (a, b) = (&c.replicas[0], &c.replicas[1]);

    // Sequential: A, then B, then A again.
    let t = c.subject();
    let first = exchange(&http, a.url(), &t).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_replay(&exchange(&http, b.url(), &t).await);
    assert_replay(&exchange(&http, a.url(), &t).await);

    // At a barrier: one token, three replicas, the same instant; several rounds.
    let urls: Vec<String> = c.replicas.iter().map(|r| r.url().to_owned()).collect();
    for round in 0..10 {
        let t = c.subject();
        let barrier = Arc::new(tokio::sync::Barrier::new(urls.len()));
        let mut tasks = Vec::new();
        for url in &urls {
            let (http, url, t, barrier) =
                (http.clone(), url.clone(), t.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                exchange(&http, &url, &t).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let r = task.await.unwrap();
            if r.status == 200 {
                ok += 1;
            } else {
                assert_replay(&r);
            }
        }
        assert_eq!(
            ok, 1,
            "round {round}: {ok} replicas issued for one subject token"
        );
        // Once more, to one of them.
        assert_replay(&exchange(&http, &urls[round % urls.len()], &t).await);
    }

    // G12 at the token endpoint: a DPoP proof spent at A is refused at B and C (all three
    // serve one public URL, so one htu), although each replica's own cache never saw it.
    let key = firebreak_token::SigningKey::generate(Algorithm::Es256).unwrap();
    let header =
        serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_key().to_jwk()});
    let claims = serde_json::json!({
        "jti": firebreak_token::random_b64url(16), "htm": "POST",
        "htu": format!("{AUD}/oauth2/token"), "iat": SystemClock.now().as_secs(),
    });
    let proof = key
        .sign_raw(&header, &serde_json::to_vec(&claims).unwrap())
        .unwrap();
    let with_proof = |url: String| {
        let (http, subject, proof) = (http.clone(), c.subject(), proof.clone());
        async move {
            let body = encode_pairs([
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", subject.as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("audience", TOOLS),
            ]);
            http.post_form(
                &format!("{url}/oauth2/token"),
                &[("dpop", proof.as_str())],
                &body,
            )
            .await
        }
    };
    let first = with_proof(urls[0].clone()).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["token_type"], "DPoP");
    for url in &urls[1..] {
        let r = with_proof(url.clone()).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A recording upstream: counts requests, answers 200.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move || {
        let s = Arc::clone(&s);
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), seen)
}

/// SECURITY-TESTS.md F9 (one revocation, measured): a session revoked at replica A reaches the
/// gateway that replica B runs (fed by B's `/v1/events`, fed by PostgreSQL LISTEN/NOTIFY)
/// within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_revoke_on_one_replica_reaches_a_gateway_on_another_within_1s() {
    let _serial = SERIAL.lock().await;
    let (up, seen) = upstream().await;
    let c = Cluster::start(
        "f9",
        Options {
            replicas: 2,
            upstream: Some(up),
            ..Options::default()
        },
    )
    .await;
    let http = HttpClient::default();
    let a = &c.replicas[0];
    let gw = c.gateway.clone().unwrap();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let r = exchange(&http, a.url(), &c.subject()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let token = access_token(&r);
        let sid = claims(&token)["sid"].as_str().unwrap().to_owned();
        let bearer = format!("Bearer {token}");
        let gw_url = format!("{gw}/tools/x");
        let headers = [("authorization", bearer.as_str())];
        let call = || http.get(&gw_url, &headers);
        // The gateway answers once it has its first bundle and snapshot (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = call().await;
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never allowed: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = seen.load(Ordering::SeqCst);
        assert!(before >= 1);

        let started = Instant::now();
        let d = http
            .send(
                "DELETE",
                &format!("{}/v1/sessions/{sid}", a.url()),
                &[("authorization", &format!("Bearer {}", a.admin))],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(d.status, 200, "{}", String::from_utf8_lossy(&d.body));
        let committed = started.elapsed();
        let propagated = loop {
            let r = call().await;
            if r.status == 401 {
                assert!(r.headers.contains_key("www-authenticate"));
                break started.elapsed();
            }
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "revocation at A did not reach the gateway on B within 1 s"
            );
        };
        println!(
            "F9: revoke at replica A → first 401 at the gateway on replica B: {:.1} ms \
             (DELETE answered after {:.1} ms)",
            propagated.as_secs_f64() * 1000.0,
            committed.as_secs_f64() * 1000.0
        );
        samples.push(propagated);
        // Refused calls never reached the upstream.
        let after = seen.load(Ordering::SeqCst);
        let r = call().await;
        assert_eq!(r.status, 401);
        assert_eq!(seen.load(Ordering::SeqCst), after);
    }
    samples.sort();
    println!(
        "F9: {} revocations, propagation min {:.1} ms, max {:.1} ms (debug build)",
        samples.len(),
        samples[0].as_secs_f64() * 1000.0,
        samples[samples.len() - 1].as_secs_f64() * 1000.0
    );
}

/// DESIGN.md §8 "the broker chain stays one chain": ~200 exchanges over three replicas at once
/// make one chain that `firebreak audit verify` accepts, with exactly one allow record per 200.
/// Also prints the exchange throughput with 1, 2 and 3 replicas (debug build: indicative).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_on_all_replicas_form_one_verifiable_chain() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(
        "chain",
        Options {
            replicas: 3,
            ..Options::default()
        },
    )
    .await;
    let http = HttpClient::default();
    let urls: Vec<String> = c.replicas.iter().map(|r| r.url().to_owned()).collect();
    let mut issued = Vec::new();

    let results = load(&c.issuer, &urls, 210, 24).await;
    let mut per_replica = [0usize; 3];
    for (which, status, jti) in results {
        assert_eq!(status, 200, "replica {}", c.replicas[which].name);
        per_replica[which] += 1;
        issued.push(jti.unwrap());
    }
    assert!(per_replica.iter().all(|n| *n >= 60), "{per_replica:?}");

    // Throughput with 1, 2 and 3 replicas: the same fixed load, the same cluster.
    for n in 1..=3 {
        let started = Instant::now();
        let results = load(&c.issuer, &urls[..n], 300, 16).await;
        let secs = started.elapsed().as_secs_f64();
        for (which, status, jti) in results {
            assert_eq!(status, 200, "replica {}", c.replicas[which].name);
            issued.push(jti.unwrap());
        }
        println!(
            "throughput: {n} replica(s): 300 exchanges at concurrency 16 in {secs:.2} s = \
             {:.0}/s (debug build, 2 shared cores: indicative only)",
            300.0 / secs
        );
    }

    let out = audit_verify(&c.replicas[0].config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every replica exports the same chain.
    let records = export_records(&http, &c.replicas[0]).await;
    check_records(&records, &issued);
    let from_c = export_records(&http, &c.replicas[2]).await;
    assert!(from_c.len() >= records.len());
    assert_eq!(from_c[..records.len()], records[..]);
}

/// SECURITY-TESTS.md F4 over HTTP: under load on three replicas, PostgreSQL ends every broker
/// connection (pool, writer, listener). Exchanges fail only with 503 and only briefly, then
/// succeed again on every replica without a restart; `/readyz` is ready again; the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_postgres_outage_errors_then_recovers_without_restart() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(
        "f4",
        Options {
            replicas: 3,
            store_extra: "pool_size = 4\nconnect_timeout = \"1s\"\nstatement_timeout = \"2s\"",
            ..Options::default()
        },
    )
    .await;
    let http = HttpClient::default();
    let urls: Vec<String> = c.replicas.iter().map(|r| r.url().to_owned()).collect();
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Outcome = (Duration, usize, u16, Option<String>);
    let mut tasks = Vec::new();
    for w in 0..12usize {
        let (issuer, urls, stop) = (c.issuer.clone(), urls.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let http = HttpClient::default();
            let mut out: Vec<Outcome> = Vec::new();
            // Bounded: at most 3,000 requests per client, and the stop flag ends it sooner.
            for i in w..w + 3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let which = i % urls.len();
                let r = exchange(&http, &urls[which], &subject(&issuer)).await;
                let jti = (r.status == 200).then(|| {
                    claims(&access_token(&r))["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                });
                if r.status != 200 {
                    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
                    assert_eq!(r.json()["error"], "temporarily_unavailable");
                    assert!(r.json().get("access_token").is_none());
                }
                out.push((t0.elapsed(), which, r.status, jti));
            }
            out
        }));
    }
    // A /readyz prober on every replica.
    let readyz = {
        let (urls, stop, http) = (urls.clone(), Arc::clone(&stop), http.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (which, u) in urls.iter().enumerate() {
                    let r = http.get(&format!("{u}/readyz"), &[]).await;
                    seen.push((t0.elapsed(), which, r.status));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = t0.elapsed();
    let killed = c.schema.terminate(None);
    // Each replica: pooled connections in use, the writer and the LISTEN connection.
    assert!(killed >= 3 * 2, "only {killed} backends ended");
    // Run on until every replica has succeeded again well after the kill, or give up.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let elapsed = t0.elapsed();
        let mut ok = [false; 3];
        // Probe directly: a fresh exchange at each replica.
        for (which, u) in urls.iter().enumerate() {
            ok[which] = exchange(&http, u, &c.subject()).await.status == 200;
        }
        if ok.iter().all(|o| *o) && elapsed > killed_at + Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery on all replicas: {ok:?}"
        );
    }
    let recovered_at = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes: Vec<Outcome> = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let readyz = readyz.await.unwrap();

    let errors: Vec<&Outcome> = outcomes.iter().filter(|o| o.2 != 200).collect();
    for e in &errors {
        assert!(
            e.0 >= killed_at && e.0 <= recovered_at + Duration::from_secs(5),
            "a 503 outside the outage window at {:?} (kill at {killed_at:?})",
            e.0
        );
    }
    for which in 0..3 {
        assert!(
            outcomes
                .iter()
                .any(|o| o.1 == which && o.2 == 200 && o.0 > killed_at),
            "replica {} never succeeded after the kill",
            c.replicas[which].name
        );
    }
    let ok_count = outcomes.iter().filter(|o| o.2 == 200).count();
    let not_ready: Vec<_> = readyz
        .iter()
        .filter(|r| r.2 != 200)
        .map(|r| (r.0.as_millis(), c.replicas[r.1].name, r.2))
        .collect();
    for r in &readyz {
        assert!(matches!(r.2, 200 | 503), "/readyz answered {}", r.2);
    }
    println!(
        "F4: {killed} backends ended at {:.0} ms; {} exchanges, {} 503s (first at {:?} ms, last at {:?} ms), \
         all replicas recovered by {:.0} ms; /readyz not ready {} times: {:?}",
        killed_at.as_secs_f64() * 1000.0,
        outcomes.len(),
        errors.len(),
        errors.iter().map(|e| e.0.as_millis()).min(),
        errors.iter().map(|e| e.0.as_millis()).max(),
        recovered_at.as_secs_f64() * 1000.0,
        not_ready.len(),
        not_ready.iter().take(10).collect::<Vec<_>>()
    );
    assert!(ok_count > 0);
    for r in &c.replicas {
        assert_eq!(
            http.get(&format!("{}/readyz", r.url()), &[]).await.status,
            200,
            "{} not ready after recovery",
            r.name
        );
    }
    // Each replica is back to its writer, its listener and at most `pool_size` (4) pooled
    // connections: nothing leaked and nothing stayed closed.
    let rows = common::pg_exec(&format!(
        "SELECT application_name, count(*) FROM pg_stat_activity \
         WHERE application_name LIKE '%_{}' GROUP BY 1 ORDER BY 1",
        c.schema.name
    ))
    .unwrap();
    println!("F4: connections after recovery: {rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        let n: usize = row[1].as_deref().unwrap().parse().unwrap();
        assert!((2..=6).contains(&n), "{row:?}");
    }
    let out = audit_verify(&c.replicas[0].config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No 200 without its record, even across the outage.
    let issued: Vec<String> = outcomes.iter().filter_map(|o| o.3.clone()).collect();
    let records = export_records(&http, &c.replicas[1]).await;
    let allow: HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "exchange" && r["decision"] == "allow")
        .filter_map(|r| r["jti"].as_str())
        .collect();
    for j in &issued {
        assert!(allow.contains(j.as_str()), "jti {j} has no record");
    }
}
