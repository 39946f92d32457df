//! A standalone `firebreak gateway --config` against a real `firebreak serve` (DESIGN.md §8):
//! the gateway writes its own chain (named by its client id) in its `data_dir`, ships it to
//! the broker's `POST /v1/audit/ingest` in the background, keeps serving while the broker is
//! down and ships what accumulated once it is back (no loss, no duplicates), ships its last
//! records when it stops, and `firebreak audit verify` on the broker checks both chains, each
//! under its own key. The gateway's key comes from `firebreak gateway --print-audit-key`.
//!
//! Hermetic: temp dirs, loopback ports, children killed when the test ends; every wait is a
//! bounded poll.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use common::{Server, free_port, serve_with_env, wait_for_local};
use firebreak_server::form::encode_pairs;
use firebreak_testkit::{Clock, HttpClient, SystemClock, TestIssuer};
use firebreak_token::Algorithm;
use serde_json::Value;

const AUD: &str = "https://fb.test";
const TOOLS: &str = "https://gw.test/tools";
const GW_CLIENT: &str = "gw-1";
const GW_SECRET: &str = "standalone-gateway-secret-value";
const GW_SECRET_ENV: &str = "FIREBREAK_TEST_GW_SECRET";
const LAG: &str = "firebreak_audit_ship_lag_records";
const FAILURES: &str = "firebreak_audit_ship_failures_total";

/// GET is allowed, anything else denied (and recorded as denied).
const POLICY: &str = r#"@id("gw-tools-read")
permit(principal == Agent::"deploy-bot", action == Action::"http_request", resource == Target::"tools")
when { context has http && context.http.method == "GET" };
"#;

fn broker_config(data: &Path, policies: &Path, issuer: &str, port: u16, audit_key: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "{AUD}"
data_dir = "{data}"

[audit]
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
{audit_key}

[[target]]
id = "tools"
audience = "{TOOLS}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
"#,
        data = data.display(),
        policies = policies.display(),
        secret_hash = firebreak_token::sha256_hex(GW_SECRET.as_bytes()),
    )
}

fn gateway_config(data: &Path, broker_port: u16, gw_port: u16, upstream: &str) -> String {
    // stale_after is long so that the gateway keeps deciding while the broker is down for a
    // few seconds; checkpoint_interval is short so that the chain gets checkpoints in the test.
    format!(
        r#"[gateway]
listen = "127.0.0.1:{gw_port}"
broker = "http://127.0.0.1:{broker_port}"
client_id = "{GW_CLIENT}"
client_secret_env = "{GW_SECRET_ENV}"
stale_after = "60s"
data_dir = "{data}"
checkpoint_interval = "300ms"

[[gateway.route]]
target = "tools"
path = "/tools"
upstream = "{upstream}/api"
"#,
        data = data.display(),
    )
}

/// `firebreak gateway --config F`, with its JSON logs collected; waits for "gateway listening".
fn start_gateway(config: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["--log-format", "json", "gateway", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env(GW_SECRET_ENV, GW_SECRET)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let collected: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut server = Server {
        child,
        url: String::new(),
        stderr: collected,
    };
    let local = wait_for_local(&server, "gateway listening", Duration::from_secs(20));
    server.url = format!("http://{local}");
    server
}

/// How many log lines of `server` carry `message`.
fn logged(server: &Server, message: &str) -> usize {
    server
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .count()
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

async fn token(http: &HttpClient, broker: &str, issuer: &TestIssuer) -> String {
    let subject =
        issuer.sign(&issuer.github_claims(AUD, "acme/api", "refs/heads/main", SystemClock.now()));
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
        .post_form(&format!("{broker}/oauth2/token"), &[], &body)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// The gateway's own chain as its database holds it: (record JSON texts in seq order, the
/// largest checkpoint tree size).
fn local_chain(data: &Path) -> (Vec<String>, u64) {
    let db = rusqlite::Connection::open_with_flags(
        data.join("gateway.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.busy_timeout(Duration::from_secs(2)).unwrap();
    let mut st = db
        .prepare("SELECT seq, json, chain FROM audit_records ORDER BY seq")
        .unwrap();
    let rows: Vec<(i64, String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (i, (seq, _, chain)) in rows.iter().enumerate() {
        assert_eq!(
            chain, GW_CLIENT,
            "the gateway's store holds only its own chain"
        );
        assert_eq!(*seq, i as i64 + 1);
    }
    let cp: Option<i64> = db
        .query_row(
            "SELECT MAX(tree_size) FROM audit_checkpoints WHERE chain = ?1",
            [GW_CLIENT],
            |r| r.get(0),
        )
        .unwrap();
    (
        rows.into_iter().map(|(_, j, _)| j).collect(),
        cp.map_or(0, |c| c as u64),
    )
}

/// The gateway's chain as the broker holds it: (record JSON texts in order, checkpoint sizes).
async fn broker_chain(http: &HttpClient, broker: &str, admin: &str) -> (Vec<String>, Vec<u64>) {
    let auth = format!("Bearer {admin}");
    let r = http
        .get(
            &format!("{broker}/v1/audit/export?chain={GW_CLIENT}"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for l in String::from_utf8(r.body.to_vec()).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["chain"], GW_CLIENT);
        if v["kind"] == "checkpoint" {
            checkpoints.push(v["tree_size"].as_u64().unwrap());
        } else {
            records.push(l.to_owned());
        }
    }
    (records, checkpoints)
}

/// Polls (bounded) until the broker holds exactly the gateway's records, in order, and a
/// checkpoint covering all of them.
async fn wait_shipped(http: &HttpClient, broker: &str, admin: &str, gw_data: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (local, local_cp) = local_chain(gw_data);
        let (remote, cps) = broker_chain(http, broker, admin).await;
        // Never a record the gateway does not have, never one twice, never out of order.
        assert!(remote.len() <= local.len(), "{what}: more at the broker");
        assert_eq!(
            remote[..],
            local[..remote.len()],
            "{what}: broker copy differs"
        );
        let covered = cps.last().copied().unwrap_or(0);
        if remote.len() == local.len() && covered == local.len() as u64 && local_cp == covered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: broker holds {} of {} records, checkpoint {covered} (local {local_cp})",
            remote.len(),
            local.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric of the gateway's `/metrics` page.
async fn metric(http: &HttpClient, gateway: &str, name: &str) -> u64 {
    let r = http.get(&format!("{gateway}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn print_audit_key(gw_cfg: &Path, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    if json {
        cmd.args(["-o", "json"]);
    }
    // No client secret in the environment: printing the key must not need it.
    let out = cmd
        .args(["gateway", "--config"])
        .arg(gw_cfg)
        .arg("--print-audit-key")
        .env_remove(GW_SECRET_ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Setup {
    dir: tempfile::TempDir,
    broker_cfg: PathBuf,
    gw_cfg: PathBuf,
    gw_data: PathBuf,
    broker_data: PathBuf,
}

impl Setup {
    fn new(issuer: &TestIssuer, upstream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("gw.cedar"), POLICY).unwrap();
        let broker_data = dir.path().join("broker");
        let gw_data = dir.path().join("gateway");
        let port = free_port();
        let gw_cfg = dir.path().join("gw.toml");
        std::fs::write(
            &gw_cfg,
            gateway_config(&gw_data, port, free_port(), upstream),
        )
        .unwrap();
        // The operator's step: print the gateway's key and register it in its [[client]].
        let line = print_audit_key(&gw_cfg, false);
        assert!(
            line.starts_with("audit_key = { kty = \"OKP\", crv = \"Ed25519\", x = \""),
            "{line}"
        );
        let jwk: Value = serde_json::from_str(&print_audit_key(&gw_cfg, true)).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert!(
            line.contains(jwk["x"].as_str().unwrap()),
            "the same key twice"
        );
        let broker_cfg = dir.path().join("firebreak.toml");
        std::fs::write(
            &broker_cfg,
            broker_config(&broker_data, &policies, &issuer.url, port, &line),
        )
        .unwrap();
        Self {
            dir,
            broker_cfg,
            gw_cfg,
            gw_data,
            broker_data,
        }
    }

    fn admin(&self) -> String {
        std::fs::read_to_string(self.broker_data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_gateway_ships_its_chain_through_a_broker_outage() {
    let issuer = TestIssuer::start(Algorithm::Es256).await;
    let (up, seen) = upstream().await;
    let s = Setup::new(&issuer, &up);
    let http = HttpClient::default();
    let broker = serve_with_env(&s.broker_cfg, "info", &[]);
    let admin = s.admin();
    let gateway = start_gateway(&s.gw_cfg);
    let bearer = format!("Bearer {}", token(&http, &broker.url, &issuer).await);
    let auth = [("authorization", bearer.as_str())];
    let url = format!("{}/tools/x", gateway.url);

    // The gateway answers once it has its first bundle and snapshot (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(&url, &auth).await;
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
    for _ in 0..2 {
        assert_eq!(http.get(&url, &auth).await.status, 200);
        let denied = http.send("POST", &url, &auth, "{}").await;
        assert_eq!(
            denied.status,
            403,
            "{}",
            String::from_utf8_lossy(&denied.body)
        );
    }
    let (local, _) = local_chain(&s.gw_data);
    let decisions: Vec<Value> = local
        .iter()
        .map(|j| serde_json::from_str::<Value>(j).unwrap())
        .filter(|v| v["kind"] == "decision")
        .collect();
    assert!(
        decisions
            .iter()
            .filter(|v| v["decision"] == "allow")
            .count()
            >= 3
    );
    assert_eq!(
        decisions.iter().filter(|v| v["decision"] == "deny").count(),
        2
    );
    wait_shipped(&http, &broker.url, &admin, &s.gw_data, "first ship").await;
    assert_eq!(metric(&http, &gateway.url, LAG).await, 0);
    assert_eq!(
        logged(
            &gateway,
            "audit shipping failed; records stay in the local chain and ship once the broker answers"
        ),
        0
    );

    // The broker goes away: the gateway keeps deciding and recording, and the lag grows.
    drop(broker);
    let before = local_chain(&s.gw_data).0.len();
    for _ in 0..3 {
        assert_eq!(http.get(&url, &auth).await.status, 200);
        assert_eq!(http.send("POST", &url, &auth, "{}").await.status, 403);
    }
    let during = local_chain(&s.gw_data).0.len();
    assert_eq!(
        during,
        before + 6,
        "one record per call while the broker is down"
    );
    let failed =
        "audit shipping failed; records stay in the local chain and ship once the broker answers";
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(&gateway, failed) == 0 || metric(&http, &gateway.url, LAG).await < 6 {
        assert!(Instant::now() < deadline, "no shipping failure seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More tries fail (backoff 1 s, 2 s …), but the streak is logged once.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&http, &gateway.url, FAILURES).await < 3 {
        assert!(Instant::now() < deadline, "the shipper stopped trying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        logged(&gateway, failed),
        1,
        "one warning per failure streak"
    );
    assert_eq!(http.get(&url, &auth).await.status, 200);

    // The broker returns on the same address and data: everything ships, nothing twice.
    let broker = serve_with_env(&s.broker_cfg, "info", &[]);
    wait_shipped(&http, &broker.url, &admin, &s.gw_data, "after the outage").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(&gateway, "audit shipping resumed") == 0 {
        assert!(Instant::now() < deadline, "no resume line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&http, &gateway.url, LAG).await, 0);

    // A last call, then SIGTERM: the gateway ships it before it exits.
    assert_eq!(http.get(&url, &auth).await.status, 200);
    let pid = gateway.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut gateway = gateway;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (local, _) = local_chain(&s.gw_data);
    let (remote, _) = broker_chain(&http, &broker.url, &admin).await;
    assert_eq!(remote, local, "the last record shipped before exit");
    let shipped: u64 = std::fs::read_to_string(s.gw_data.join("shipped.seq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(shipped, local.len() as u64);
    assert!(
        seen.load(Ordering::SeqCst) >= 7,
        "allowed calls reached the upstream"
    );

    // Offline verification on the broker: both chains, each under its own key.
    drop(broker);
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["-o", "json", "audit", "verify", "--config"])
        .arg(&s.broker_cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let chains: Vec<&str> = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chain"].as_str().unwrap())
        .collect();
    assert!(chains.contains(&"broker"), "{report}");
    assert!(chains.contains(&GW_CLIENT), "{report}");
    let gw = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == GW_CLIENT)
        .unwrap();
    assert_eq!(gw["records"], local.len() as u64);
    drop(s.dir);
}
