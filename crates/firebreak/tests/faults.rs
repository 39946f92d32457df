//! Fault tests (SECURITY-TESTS.md F1–F3) against the built binary: crash under load, audit
//! storage failing, audit sink stalled. They need real time, so they use short configured
//! bounds and live in one test binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "fault tests: a failed step should stop the test loudly"
)]

mod common;

use common::{serve, serve_with};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_server::form::encode_pairs;
use firebreak_testkit::{Clock, HttpClient, SystemClock, TestIssuer};
use firebreak_token::Algorithm;
use serde_json::Value;

const AUD: &str = "https://fb.test";
const TOOLS: &str = "https://gw.test/tools";
const CLIENT_SECRET: &str = "a06-client-secret-value";

fn config(dir: &Path, issuer: &str, deadline: &str) -> PathBuf {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
public_url = "{AUD}"
data_dir = "{data}"

[audit]
write_deadline = "{deadline}"
checkpoint_every = 50
checkpoint_interval = "200ms"

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
id = "rs"
secret_sha256 = "{secret_hash}"
roles = ["introspect", "revoke"]
audiences = ["{TOOLS}"]

[[target]]
id = "tools"
audience = "{TOOLS}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
"#,
        data = dir.join("data").display(),
        secret_hash = firebreak_token::sha256_hex(CLIENT_SECRET.as_bytes()),
    );
    let p = dir.join("firebreak.toml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn exchange(http: &HttpClient, url: &str, issuer: &TestIssuer) -> firebreak_testkit::Reply {
    let claims = issuer.github_claims(AUD, "acme/api", "refs/heads/main", SystemClock.now());
    let t = issuer.sign(&claims);
    let body = encode_pairs([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", t.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", TOOLS),
    ]);
    http.post_form(&format!("{url}/oauth2/token"), &[], &body)
        .await
}

fn jti_of(token: &str) -> String {
    use base64::Engine as _;
    let p = token.split('.').nth(1).unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap();
    v["jti"].as_str().unwrap().to_owned()
}

fn audit(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// SECURITY-TESTS.md F1: kill -9 under exchange load; after restart every exchange a client saw
/// succeed has its record, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_kill_9_under_load_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start(Algorithm::Es256).await;
    let cfg = config(dir.path(), &issuer.url, "1s");
    let mut server = serve(&cfg);
    let url = server.url.clone();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (url, issuer, seen, stop) = (
            url.clone(),
            issuer.clone(),
            Arc::clone(&seen),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let http = HttpClient::default();
            // Bounded: at most 2,000 requests per client, and the kill ends it sooner.
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let r =
                    tokio::time::timeout(Duration::from_secs(3), exchange(&http, &url, &issuer))
                        .await;
                match r {
                    Ok(r) if r.status == 200 => {
                        let t = r.json()["access_token"].as_str().unwrap().to_owned();
                        seen.lock().unwrap().push(jti_of(&t));
                    }
                    _ => break, // the broker died under us
                }
            }
        }));
    }
    // Let load build, then SIGKILL at a moment that depends on progress, not on a timer alone.
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    let _ = server.child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 50,
        "load too light to mean anything: {}",
        seen.len()
    );

    // Restart: ready again, and nothing the clients saw is missing.
    let server = serve(&cfg);
    let http = HttpClient::default();
    assert_eq!(
        http.get(&format!("{}/readyz", server.url), &[])
            .await
            .status,
        200
    );
    let out = audit(&cfg, &["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = String::from_utf8(audit(&cfg, &["export"]).stdout).unwrap();
    let recorded: std::collections::HashSet<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["jti"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = seen.iter().filter(|j| !recorded.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} successful exchanges have no record",
        missing.len(),
        seen.len()
    );
    assert_eq!(exchange(&http, &server.url, &issuer).await.status, 200);
}

/// SECURITY-TESTS.md F2: the audit write fails (an INSERT trigger raising, as a full disk
/// would); exchanges get 503 with Retry-After and no token, /readyz is not ready; after the
/// fault clears, service resumes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_audit_write_failure_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start(Algorithm::Es256).await;
    let cfg = config(dir.path(), &issuer.url, "500ms");
    let server = serve(&cfg);
    let http = HttpClient::default();
    assert_eq!(exchange(&http, &server.url, &issuer).await.status, 200);
    let db = rusqlite::Connection::open(dir.path().join("data/firebreak.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("CREATE TRIGGER fb_fail BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'disk full'); END;").unwrap();
    let r = exchange(&http, &server.url, &issuer).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(r.json()["error_description"], "audit_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.json().get("access_token").is_none());
    assert_eq!(
        http.get(&format!("{}/readyz", server.url), &[])
            .await
            .status,
        503
    );
    // Nothing was issued: no session row exists for the failed attempt.
    let sessions: i64 = db
        .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 1);
    db.execute_batch("DROP TRIGGER fb_fail;").unwrap();
    assert_eq!(
        http.get(&format!("{}/readyz", server.url), &[])
            .await
            .status,
        200
    );
    assert_eq!(exchange(&http, &server.url, &issuer).await.status, 200);
    assert_eq!(audit(&cfg, &["verify"]).status.code(), Some(0));
}

/// SECURITY-TESTS.md F3: another connection holds the write lock; each exchange ends within
/// 2 s with 503 and no token; service is normal soon after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_stalled_audit_sink_fails_within_bound() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start(Algorithm::Es256).await;
    let cfg = config(dir.path(), &issuer.url, "300ms");
    let server = serve(&cfg);
    let http = HttpClient::default();
    assert_eq!(exchange(&http, &server.url, &issuer).await.status, 200);
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let db_path = dir.path().join("data/firebreak.db");
    let holder = std::thread::spawn(move || {
        let db = rusqlite::Connection::open(db_path).unwrap();
        db.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
        db.execute_batch("COMMIT;").unwrap();
    });
    locked_rx.recv().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, issuer) = (http.clone(), server.url.clone(), issuer.clone());
        tasks.push(tokio::spawn(async move {
            let started = firebreak_core::clock::Stopwatch::start();
            let r = exchange(&http, &url, &issuer).await;
            (
                r.status,
                r.json().get("access_token").is_some(),
                started.elapsed_secs(),
            )
        }));
    }
    for t in tasks {
        let (status, token, secs) = t.await.unwrap();
        assert_eq!((status, token), (503, false));
        assert!(secs < 2.0, "took {secs}s");
    }
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // Within 2 s of the release the service is normal again.
    let mut ok = false;
    for _ in 0..20 {
        if exchange(&http, &server.url, &issuer).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "did not recover within 2 s of the release");
    assert_eq!(audit(&cfg, &["verify"]).status.code(), Some(0));
}

/// SECURITY-TESTS.md A06: with trace logging, no raw subject token, access token, client secret
/// or admin token (nor any of the tokens' base64 segments) appears in stderr, the audit store,
/// exports, /metrics or problem bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a06_secrets_never_in_clear() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::start(Algorithm::Es256).await;
    let cfg = config(dir.path(), &issuer.url, "1s");
    let server = serve_with(&cfg, "trace");
    let http = HttpClient::default();
    let url = server.url.clone();
    let claims = issuer.github_claims(AUD, "acme/api", "refs/heads/main", SystemClock.now());
    let subject = issuer.sign(&claims);
    let body = encode_pairs([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", TOOLS),
    ]);
    let r = http
        .post_form(&format!("{url}/oauth2/token"), &[], &body)
        .await;
    assert_eq!(r.status, 200);
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let mut bodies = Vec::new();
    // A replay (refused), an introspection and a revocation with client credentials.
    bodies.push(
        http.post_form(&format!("{url}/oauth2/token"), &[], &body)
            .await
            .body,
    );
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("rs:{CLIENT_SECRET}"))
    );
    let tb = encode_pairs([("token", access.as_str())]);
    bodies.push(
        http.post_form(
            &format!("{url}/oauth2/introspect"),
            &[("authorization", &auth)],
            &tb,
        )
        .await
        .body,
    );
    bodies.push(
        http.post_form(
            &format!("{url}/oauth2/revoke"),
            &[("authorization", &auth)],
            &tb,
        )
        .await
        .body,
    );
    bodies.push(
        http.get(
            &format!("{url}/v1/agents"),
            &[("authorization", &format!("Bearer {access}"))],
        )
        .await
        .body,
    );
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let auth_admin = format!("Bearer {}", admin.trim());
    bodies.push(
        http.get(
            &format!("{url}/v1/sessions"),
            &[("authorization", &auth_admin)],
        )
        .await
        .body,
    );
    let metrics = http.get(&format!("{url}/metrics"), &[]).await.body;
    let stderr = Arc::clone(&server.stderr);
    drop(server);

    let mut haystack = String::new();
    haystack.push_str(&String::from_utf8_lossy(&audit(&cfg, &["export"]).stdout));
    haystack.push_str(&String::from_utf8_lossy(
        &audit(&cfg, &["export", "--format", "ocsf"]).stdout,
    ));
    for b in bodies.iter().chain(std::iter::once(&metrics)) {
        haystack.push_str(&String::from_utf8_lossy(b));
    }
    for f in ["firebreak.db", "firebreak.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join("data").join(f)) {
            haystack.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    // Everything the server wrote to stderr at trace level (its reader thread collected it).
    let logs = stderr.lock().unwrap().join("\n");
    assert!(logs.contains("exchange issued"), "trace logs were captured");
    haystack.push_str(&logs);
    let mut secrets = vec![
        subject.clone(),
        access.clone(),
        CLIENT_SECRET.to_owned(),
        admin.trim().to_owned(),
    ];
    for t in [&subject, &access] {
        // Payload and signature segments are secret material; the header is shared by design.
        secrets.extend(t.split('.').skip(1).map(str::to_owned));
    }
    for s in &secrets {
        assert!(
            !haystack.contains(s.as_str()),
            "secret material found in output: {}…",
            &s[..12.min(s.len())]
        );
    }
}
