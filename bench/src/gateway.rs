//! `gateway`: the gateway benchmark (issue "Gateway enforcement point", section Benchmark). One
//! `firebreak serve` pinned to CPU 0 runs the broker and, in the same process, `[gateway]` with
//! one `kind = "http"` route to the shared kit's upstream (nginx on 127.0.0.1:9001), a Cedar
//! policy permitting `GET /` and an injected upstream credential; its audit records go onto the
//! broker's durable chain (SQLite, WAL, `synchronous=FULL`) in the bench cache. Then:
//!
//! 1. `../shared/bench/compare --ours <gateway> -H "Authorization: Bearer <token>"`: direct vs
//!    nginx-proxy vs the gateway, interleaved, 64 connections for throughput and 1 for latency;
//!    its JSON lines are passed through and goal lines added (BENCH.md, Targets: gateway);
//! 2. revocation propagation broker → gateway: per round a fresh session, allowed once through
//!    the gateway, revoked at the broker's admin API while the gateway is polled until it
//!    answers 401; p50/p99 beside the 100 ms limit, the gateway's own
//!    `firebreak_revocation_lag_seconds` histogram as a cross-check;
//! 3. with `--profile`, a `perf record -e cpu-clock` of the server under the same 64-connection
//!    load, summarised by symbol and by component.
//!
//! This process (the orchestrator, the bench issuer and the revocation poller) runs on CPU 1,
//! beside the load generator (`bench/gateway` pins it).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};

use crate::keys::{self, Alg};
use crate::run::{
    Kids, Out, SERVER_CPU, blocking_output, cache_dir, free_port, fs_type, log, machine, pinned,
    r3, status_kb, wait_port,
};

/// Options of `gateway`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Seconds per measured `compare` run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// `compare` rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Revocations measured (one fresh session each).
    #[arg(long, default_value_t = 100)]
    revocations: usize,
    /// The upstream's port (the kit's `peers/upstream`, started by `bench/gateway`).
    #[arg(long, default_value_t = 9001)]
    upstream_port: u16,
    /// The gateway's port (default: a free one).
    #[arg(long)]
    gateway_port: Option<u16>,
    /// Skip `compare` (revocation only; for a quick check).
    #[arg(long)]
    no_compare: bool,
    /// Record a `perf` profile of the server under 64-connection load (needs `perf`).
    #[arg(long)]
    profile: bool,
    /// Seconds of the profiled load.
    #[arg(long, default_value_t = 10)]
    profile_seconds: u32,
    /// Commit being measured (for the JSON lines).
    #[arg(long, env = "FIREBREAK_BENCH_COMMIT", default_value = "unknown")]
    commit: String,
    /// The firebreak binary (default: beside this one).
    #[arg(long)]
    firebreak: Option<PathBuf>,
    /// The shared bench kit (peers/, load, compare).
    #[arg(long, env = "FIREBREAK_BENCH_KIT", default_value = "../shared/bench")]
    kit: PathBuf,
}

/// The gateway's `[[client]]` at the broker, and the upstream credential it injects: fixed,
/// loopback-only bench values, handed to the server through the environment as in production.
const GW_CLIENT: &str = "bench-gateway";
const GW_SECRET: &str = "bench-gateway-secret-not-for-production";
const UPSTREAM_TOKEN: &str = "bench-upstream-credential";
/// Revocation propagation limit (BENCH.md, Targets: revocation).
const REVOCATION_LIMIT_MS: f64 = 100.0;
/// Longest wait for one revocation to reach the gateway before the round counts as a miss.
const REVOCATION_GIVE_UP: Duration = Duration::from_secs(5);

fn config(broker_port: u16, gw_port: u16, up_port: u16, issuer: &str, data: &Path) -> String {
    let broker = format!("http://127.0.0.1:{broker_port}");
    format!(
        r#"[server]
listen = "127.0.0.1:{broker_port}"
public_url = "{broker}"
data_dir = "{data}"

[limits]
default_ttl = "1h"            # one access token serves the whole compare run

[policy]
dir = "{policies}"

[[issuer]]
id = "bench-github"
url = "{issuer}"
audience = "{broker}"
profile = "github-actions"
algorithms = ["RS256", "EdDSA"]
max_token_age = "4h"
danger_allow_http = true      # the bench issuer is on loopback

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy acme/api"
expires = 2099-12-31
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "bench-github", claims = {{ repository = "acme/api", repository_id = "123456", ref = "refs/heads/main", environment = "production" }}, events = ["push"] }}
grants = [{{ target = "tools", scopes = ["repo:read"] }}]

[[target]]
id = "tools"
audience = "{tool}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "1h"

[[client]]
id = "{GW_CLIENT}"
secret_sha256 = "{secret_hash}"
roles = ["stream", "evaluate"]

[gateway]
listen = "127.0.0.1:{gw_port}"
broker = "{broker}"
client_id = "{GW_CLIENT}"
client_secret_env = "FIREBREAK_BENCH_GW_SECRET"

[[gateway.route]]
target = "tools"
path = "/"
upstream = "http://127.0.0.1:{up_port}"
credential = {{ header = "Authorization", value_env = "FIREBREAK_BENCH_UPSTREAM_TOKEN", prefix = "Bearer " }}
"#,
        data = data.display(),
        policies = data.with_file_name("policies").display(),
        tool = keys::TOOL_AUDIENCE,
        secret_hash = firebreak_token::sha256_hex(GW_SECRET.as_bytes()),
    )
}

/// The one `http_request` the benchmark sends: `GET /` through the route.
const POLICY: &str = r#"@id("bench-get-root")
permit(principal == Agent::"deploy-bot", action == Action::"http_request", resource == Target::"tools")
when { context has http && context.http.method == "GET" && context.http.path == "/" };
"#;

/// A keep-alive HTTP/1.1 connection, reopened when it closes.
struct Conn {
    addr: SocketAddr,
    send: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(port: u16) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            send: None,
        }
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (u16, Bytes) {
        if self.send.as_ref().is_none_or(SendRequest::is_closed) {
            self.send = Some(crate::load::connect(self.addr).await.expect("connect"));
        }
        let send = self.send.as_mut().expect("connection");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("request");
        send.ready().await.expect("connection ready");
        let resp = send.send_request(req).await.expect("send request");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("read body")
            .to_bytes();
        (status, body)
    }
}

fn claim(jwt: &str, name: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get(name).cloned()
}

/// A fresh subject token exchanged for an access token for the route's target; (token, sid).
async fn exchange(broker: &mut Conn, signer: &keys::Signer, issuer: &str) -> (String, String) {
    let audience = format!("http://{}", broker.addr);
    let form = keys::exchange_form(&signer.mint(issuer, &audience));
    let (status, body) = broker
        .call(
            "POST",
            "/oauth2/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(form),
        )
        .await;
    assert_eq!(
        status,
        200,
        "exchange failed: {}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).expect("exchange JSON");
    let token = v["access_token"].as_str().expect("access_token").to_owned();
    let sid = claim(&token, "sid")
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("sid claim");
    (token, sid)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "nearest-rank percentile index"
    )]
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `firebreak_revocation_lag_seconds` buckets, sum and count from a `/metrics` text.
#[derive(Default, Debug)]
struct Lag {
    buckets: BTreeMap<String, f64>,
    sum: f64,
    count: f64,
}

fn parse_lag(text: &str) -> Lag {
    let mut l = Lag::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("firebreak_revocation_lag_seconds") else {
            continue;
        };
        let Some((key, val)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(val) = val.parse::<f64>() else {
            continue;
        };
        if let Some(le) = key
            .strip_prefix("_bucket{le=\"")
            .and_then(|k| k.strip_suffix("\"}"))
        {
            l.buckets.insert(le.to_owned(), val);
        } else if key == "_sum" {
            l.sum = val;
        } else if key == "_count" {
            l.count = val;
        }
    }
    l
}

/// The smallest bucket bound holding at least `q` of the values added between two scrapes.
fn lag_quantile_bound(before: &Lag, after: &Lag, q: f64) -> Option<f64> {
    let n = after.count - before.count;
    if n <= 0.0 {
        return None;
    }
    let mut bounds: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .filter_map(|(le, c)| {
            let b = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((b, c - before.buckets.get(le).copied().unwrap_or(0.0)))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    bounds
        .into_iter()
        .find(|(_, c)| *c >= q * n)
        .map(|(b, _)| b)
}

struct Revocations {
    /// Revoke request sent → first 401 from the gateway, ms.
    from_send: Vec<f64>,
    /// Revoke response received → first 401, ms (negative: the gateway refused before the
    /// broker's answer reached us).
    from_response: Vec<f64>,
    /// The revoke call itself, ms.
    call: Vec<f64>,
    /// Allowed requests seen while polling, per round.
    polls: Vec<f64>,
    missed: usize,
}

async fn revocations(
    n: usize,
    broker: &mut Conn,
    gw_port: u16,
    signer: &keys::Signer,
    issuer: &str,
    admin: &str,
) -> Revocations {
    let mut r = Revocations {
        from_send: Vec::with_capacity(n),
        from_response: Vec::with_capacity(n),
        call: Vec::with_capacity(n),
        polls: Vec::with_capacity(n),
        missed: 0,
    };
    let admin_auth = format!("Bearer {admin}");
    let mut admin_conn = Conn::new(broker.addr.port());
    let mut gw = Conn::new(gw_port);
    for i in 0..n {
        let (token, sid) = exchange(broker, signer, issuer).await;
        let auth = format!("Bearer {token}");
        let (status, body) = gw
            .call("GET", "/", &[("authorization", &auth)], Bytes::new())
            .await;
        assert_eq!(
            status,
            200,
            "round {i}: a fresh session is not allowed through the gateway: {}",
            String::from_utf8_lossy(&body)
        );
        let path = format!("/v1/sessions/{sid}");
        let t0 = Instant::now();
        // The revoke call and the poller run concurrently, so a refusal that arrives before
        // the broker's answer is seen at its time.
        let revoke = async {
            let (status, body) = admin_conn
                .call(
                    "DELETE",
                    &path,
                    &[("authorization", &admin_auth)],
                    Bytes::new(),
                )
                .await;
            assert_eq!(
                status,
                200,
                "revoke {sid}: {}",
                String::from_utf8_lossy(&body)
            );
            Instant::now()
        };
        let poll = async {
            let mut allowed = 0u32;
            loop {
                let (status, body) = gw
                    .call("GET", "/", &[("authorization", &auth)], Bytes::new())
                    .await;
                match status {
                    200 => allowed += 1,
                    401 => return (Some(Instant::now()), allowed),
                    s => panic!(
                        "round {i}: gateway answered {s} while polling: {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                if t0.elapsed() > REVOCATION_GIVE_UP {
                    return (None, allowed);
                }
            }
        };
        let (t_resp, (t_401, allowed)) = tokio::join!(revoke, poll);
        r.call.push(t_resp.duration_since(t0).as_secs_f64() * 1e3);
        r.polls.push(f64::from(allowed));
        match t_401 {
            Some(t) => {
                r.from_send.push(t.duration_since(t0).as_secs_f64() * 1e3);
                let after = if t >= t_resp {
                    t.duration_since(t_resp).as_secs_f64()
                } else {
                    -t_resp.duration_since(t).as_secs_f64()
                };
                r.from_response.push(after * 1e3);
            }
            None => {
                r.missed += 1;
                log(&format!(
                    "round {i}: the gateway still allowed session {sid} {} s after its revocation",
                    REVOCATION_GIVE_UP.as_secs()
                ));
            }
        }
    }
    for v in [&mut r.from_send, &mut r.from_response, &mut r.call] {
        v.sort_by(f64::total_cmp);
    }
    r
}

/// The durable-write floor of a 1-connection request: the record-before-forward invariant makes
/// every allowed request wait for one commit, which in WAL mode with `synchronous=FULL` is one
/// append to the WAL plus one `fdatasync`. Measured here, on the data dir's disk, as 512-byte
/// appends each followed by `sync_data`: p50 and p99 in µs.
fn fsync_floor(dir: &Path, n: usize) -> (f64, f64) {
    let path = dir.join("fsync-probe.bin");
    let mut f = std::fs::File::create(&path).expect("create fsync probe");
    let buf = [0x5au8; 512];
    let mut lat: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&buf).expect("write fsync probe");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_by(f64::total_cmp);
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

/// Runs `compare`, passing its lines through to stdout; returns them parsed.
fn compare(o: &Opts, gw_port: u16, token: &str) -> Vec<Value> {
    // Under `taskset -c 1` `nproc` says 1 and compare would not pin: give it both CPUs back; it
    // pins the peers to CPU 0 and wrk to CPU 1 itself.
    let mut c = Command::new("taskset");
    c.args(["-c", "0,1", "timeout", "--kill-after=10", "900"])
        .arg(o.kit.join("compare"))
        .arg("--ours")
        .arg(format!("http://127.0.0.1:{gw_port}/"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-d", &o.seconds.to_string(), "-r", &o.runs.to_string()])
        .args(["--upstream-port", &o.upstream_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().expect("run compare");
    let out = child.stdout.take().expect("compare stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("read compare output");
        println!("{line}");
        let _ = std::io::stdout().flush();
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            lines.push(v);
        }
    }
    let status = child.wait().expect("wait compare");
    assert!(status.success(), "compare failed: {status}");
    lines
}

fn find<'a>(lines: &'a [Value], key: &str, val: &str, subject: Option<&str>) -> Option<&'a Value> {
    lines.iter().find(|l| {
        l.get(key).and_then(Value::as_str) == Some(val)
            && subject.is_none_or(|s| {
                l.get("subject").and_then(Value::as_str) == Some(s)
                    || l.get("target").and_then(Value::as_str) == Some(s)
            })
    })
}

fn num(v: Option<&Value>, k: &str) -> Option<f64> {
    v?.get(k)?.as_f64()
}

/// Components a profile's symbols are grouped into (first match wins).
const COMPONENTS: [(&str, &[&str]); 12] = [
    ("kernel (syscalls, TCP loopback, futex, fsync)", &["[k]"]),
    (
        "sqlite",
        &[
            "sqlite3", "rusqlite", "wal", "Wal", "pcache", "pager", "Btree", "balance_", "Vdbe",
        ],
    ),
    ("cedar policy", &["cedar"]),
    ("aws-lc (sha256, signatures)", &["aws_lc", "aws-lc"]),
    ("serde_json", &["serde_json"]),
    (
        "hyper/http/axum",
        &["hyper", "http::", "axum", "httparse", "tower"],
    ),
    ("tokio runtime", &["tokio"]),
    (
        "allocator (glibc malloc/free)",
        &[
            "malloc",
            "free",
            "_int_",
            "realloc",
            "calloc",
            "unlink_chunk",
            "__rust_alloc",
            "__rust_dealloc",
        ],
    ),
    ("tracing", &["tracing"]),
    (
        "libc memcpy/memmove/str*",
        &["memcpy", "memmove", "memset", "memcmp", "strlen"],
    ),
    ("firebreak crates", &["firebreak"]),
    (
        "std collections and hashing (BTreeMap, HashMap, indexmap)",
        &[
            "btree",
            "hashbrown",
            "sip::Hasher",
            "indexmap",
            "BuildHasher",
        ],
    ),
];

fn component(sym: &str) -> &'static str {
    COMPONENTS
        .iter()
        .find(|(_, pats)| pats.iter().any(|p| sym.contains(p)))
        .map_or("other", |(name, _)| name)
}

/// `perf record -e cpu-clock` of `pid` while the kit's `load` runs 64 connections through the
/// gateway; returns (top symbols, components, load rps under perf, report path).
async fn profile(o: &Opts, dir: &Path, pid: u32, gw_port: u16, token: &str) -> Option<Value> {
    let data = dir.join("perf.data");
    let secs = o.profile_seconds.max(1);
    let mut rec = Command::new("timeout");
    rec.args(["--kill-after=10", &(u64::from(secs) + 60).to_string()])
        .args(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &(secs + 1).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut rec = match rec.spawn() {
        Ok(c) => c,
        Err(e) => {
            log(&format!("perf not runnable ({e}); no profile"));
            return None;
        }
    };
    let mut load = Command::new("taskset");
    load.args(["-c", "0,1"])
        .arg(o.kit.join("load"))
        .args([
            "-c",
            "64",
            "-w",
            "0",
            "-d",
            &secs.to_string(),
            "--cpus",
            "1",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--label", "ours-under-perf"])
        .arg(format!("http://127.0.0.1:{gw_port}/"));
    let out = blocking_output(load).await.ok()?;
    let load_line: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let status = tokio::task::spawn_blocking(move || rec.wait())
        .await
        .ok()?
        .ok()?;
    if !status.success() || !data.is_file() {
        log(&format!("perf record failed ({status}); no profile"));
        return None;
    }
    let mut rep = Command::new("perf");
    rep.arg("report").arg("-i").arg(&data).args([
        "--stdio",
        "--no-children",
        "--sort",
        "sym",
        "--percent-limit",
        "0.05",
    ]);
    let rep = blocking_output(rep).await.ok()?;
    let text = String::from_utf8_lossy(&rep.stdout).into_owned();
    let report = dir.join("perf-report.txt");
    std::fs::write(&report, &text).expect("write perf report");
    let mut syms: Vec<(f64, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('#') {
            continue;
        }
        let Some((p, rest)) = t.split_once('%') else {
            continue;
        };
        let Ok(p) = p.trim().parse::<f64>() else {
            continue;
        };
        syms.push((p, rest.trim().to_owned()));
    }
    // cpu-clock's event count is nanoseconds on CPU: per request, over the requests the load
    // completed while perf recorded (an upper bound: the window is 1 s longer than the load).
    let on_cpu_ns = text
        .lines()
        .find_map(|l| l.strip_prefix("# Event count (approx.): "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    let cpu_us_per_request = on_cpu_ns
        .zip(load_line["rps"].as_f64())
        .map(|(ns, rps)| ns / 1000.0 / (rps * f64::from(secs)));
    let mut comps: BTreeMap<&str, f64> = BTreeMap::new();
    for (p, s) in &syms {
        *comps.entry(component(s)).or_default() += p;
    }
    let mut comps: Vec<(&str, f64)> = comps.into_iter().collect();
    comps.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut t = format!(
        "\n== profile: perf record -e cpu-clock, whole server process: {:.0} us on CPU per request ==\n",
        cpu_us_per_request.unwrap_or(f64::NAN)
    );
    for (c, p) in &comps {
        t.push_str(&format!("{p:6.2}%  {c}\n"));
    }
    t.push_str("-- top symbols (self) --\n");
    for (p, s) in syms.iter().take(30) {
        t.push_str(&format!("{p:6.2}%  {s}\n"));
    }
    eprint!("{t}");
    Some(json!({
        "components": comps.iter().map(|(c, p)| json!({ "component": c, "pct": r3(*p) })).collect::<Vec<_>>(),
        "top_symbols": syms.iter().take(25).map(|(p, s)| json!({ "symbol": s, "pct": r3(*p) })).collect::<Vec<_>>(),
        "load_under_perf": load_line,
        "on_cpu_s": on_cpu_ns.map_or(Value::Null, |n| r3(n / 1e9)),
        "cpu_us_per_request": cpu_us_per_request.map_or(Value::Null, r3),
        "report": report.display().to_string(),
    }))
}

/// Entry point of `gateway`.
pub fn main(o: &Opts) {
    assert!((1..=60).contains(&o.seconds), "--seconds must be 1..=60");
    assert!((1..=9).contains(&o.runs), "--runs must be 1..=9");
    assert!(
        (1..=10_000).contains(&o.revocations),
        "--revocations must be 1..=10000"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(o));
}

#[allow(
    clippy::too_many_lines,
    reason = "the run reads top to bottom as the method in BENCH.md"
)]
async fn run(o: &Opts) {
    let started = Instant::now();
    let dir = cache_dir().join("bench-gateway");
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&data).expect("create data dir");
    std::fs::create_dir_all(&policies).expect("create policy dir");
    std::fs::write(policies.join("bench.cedar"), POLICY).expect("write policy");
    let fs = fs_type(&data);
    if fs == "tmpfs" || fs == "ramfs" {
        log(&format!(
            "WARNING: the data dir {} is on {fs}: the durable audit figures are meaningless",
            data.display()
        ));
    }
    let exe = std::env::current_exe().expect("current exe");
    let firebreak = o
        .firebreak
        .clone()
        .unwrap_or_else(|| exe.with_file_name("firebreak"));
    assert!(
        firebreak.is_file(),
        "no firebreak binary at {}",
        firebreak.display()
    );
    let mut kids = Kids {
        list: Vec::new(),
        pidfile: dir.join("children.pids"),
        peer: None,
    };

    // Issuer (in this process, CPU 1), then the server on CPU 0.
    let jwks = keys::generate(&dir);
    let issuer = crate::servers::start_issuer(jwks).await;
    let broker_port = free_port();
    let gw_port = o.gateway_port.unwrap_or_else(free_port);
    let cfg = dir.join("firebreak.toml");
    std::fs::write(
        &cfg,
        config(broker_port, gw_port, o.upstream_port, &issuer, &data),
    )
    .expect("write config");
    let mut c = pinned(SERVER_CPU, &firebreak);
    c.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("FIREBREAK_BENCH_GW_SECRET", GW_SECRET)
        .env("FIREBREAK_BENCH_UPSTREAM_TOKEN", UPSTREAM_TOKEN);
    let pid = kids.spawn("server", c, &dir.join("server.log"));
    wait_port(&mut kids, broker_port, &dir);
    wait_port(&mut kids, gw_port, &dir);
    let mut gw = Conn::new(gw_port);
    let t = Instant::now();
    loop {
        let (s, _) = gw.call("GET", "/readyz", &[], Bytes::new()).await;
        if s == 200 {
            break;
        }
        kids.check(&dir);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "gateway not ready after 30 s (see {}/server.log)",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log(&format!(
        "server pid {pid} on CPU {SERVER_CPU}: broker :{broker_port}, gateway :{gw_port} → upstream :{}, data {} ({fs}), issuer {issuer}",
        o.upstream_port,
        data.display()
    ));
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned();
    let signer = keys::load(&dir, Alg::Eddsa);
    let mut broker = Conn::new(broker_port);

    // One access token for the whole compare run; a sanity request through the gateway.
    let (token, sid) = exchange(&mut broker, &signer, &issuer).await;
    let exp = claim(&token, "exp").unwrap_or(Value::Null);
    let auth = format!("Bearer {token}");
    let (status, body) = gw
        .call("GET", "/", &[("authorization", &auth)], Bytes::new())
        .await;
    assert_eq!(
        status,
        200,
        "sanity GET / through the gateway: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = gw
        .call(
            "GET",
            "/",
            &[("authorization", "Bearer x.y.z")],
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 401, "a bad token must be refused");
    log(&format!(
        "token for session {sid} (exp {exp}), sanity GET / → 200 \"{}\"",
        String::from_utf8_lossy(&body)
    ));

    let mut out = Out {
        lines: Vec::new(),
        common: json!({
            "machine": machine(), "commit": o.commit, "date": date_utc(),
        }),
    };
    let pin = "servers (firebreak serve = broker + gateway, upstream, nginx-proxy) on CPU 0, load generator on CPU 1";

    // 1. compare.
    if o.no_compare {
        log("skipping compare (--no-compare)");
    } else {
        let gw_clone_token = token.clone();
        let opts = o.clone();
        let lines = tokio::task::spawn_blocking(move || compare(&opts, gw_port, &gw_clone_token))
            .await
            .expect("join compare");
        kids.check(&dir);
        let rps = find(&lines, "metric", "proxy_rps", Some("ours"));
        let ours_rps = num(rps, "ours");
        let nginx_rps = num(rps, "peer");
        let ratio = ours_rps.zip(nginx_rps).map(|(a, b)| a / b);
        let tp = |t: &str| find(&lines, "target", t, None).filter(|l| l["phase"] == "throughput");
        let lat = |t: &str| {
            lines
                .iter()
                .find(|l| l["phase"] == "latency" && l["target"] == t)
        };
        let errors: f64 = lines
            .iter()
            .filter(|l| l["target"] == "ours")
            .filter_map(|l| l["errors"].as_f64())
            .sum();
        let notes = format!(
            "../shared/bench/compare --ours: 64 connections, GET /, median of {} interleaved rounds of {} s after a 2 s warm-up; {pin}; gateway: token verify (signature cache) + revocation check + Cedar + durable audit record (SQLite WAL synchronous=FULL on {fs}) per request; nginx-proxy: no auth, no policy, no log",
            o.runs, o.seconds
        );
        out.emit(
            "gateway_rps_vs_nginx",
            ours_rps,
            nginx_rps,
            "req/s",
            "nginx-proxy",
            &notes,
            json!({
                "goal": "ratio >= 0.7 (stretch 1.0)",
                "goal_met": ratio.map_or(Value::Null, |r| json!(r >= 0.7)),
                "stretch_met": ratio.map_or(Value::Null, |r| json!(r >= 1.0)),
                "rps_runs": tp("ours").map_or(Value::Null, |l| l["rps_runs"].clone()),
                "peer_rps_runs": tp("nginx").map_or(Value::Null, |l| l["rps_runs"].clone()),
                "direct_rps": num(tp("direct"), "rps"),
                "errors": errors,
            }),
        );
        let added = |q: &str| {
            let d = num(lat("direct"), &format!("{q}_ms"))?;
            Some((
                (num(lat("ours"), &format!("{q}_ms"))? - d) * 1000.0,
                (num(lat("nginx"), &format!("{q}_ms"))? - d) * 1000.0,
                d * 1000.0,
            ))
        };
        let lat_notes = |q: &str| {
            format!(
                "1 connection, {q} over direct (closed loop, wrk), median of {} rounds of {} s; {pin}",
                o.runs, o.seconds
            )
        };
        // The fsync floor, right after the latency phase, on the same disk (servers idle).
        let (fs50, fs99) = fsync_floor(&data, 300);
        out.emit(
            "fsync_floor_us",
            None,
            Some(fs50),
            "us",
            "limit",
            &format!("limit (no ours): 512-byte append + fdatasync in the data dir ({fs}), 300 times, p50; every allowed request waits for one such commit of its audit record (record-before-forward), so at 1 connection added p50 >= this; harness on CPU 1"),
            json!({ "p99_us": r3(fs99), "goal": "none (limit)", "goal_met": Value::Null }),
        );
        if let Some((ours, nginx, direct)) = added("p50") {
            out.emit(
                "gateway_added_p50_us",
                Some(ours),
                Some(100.0),
                "us",
                "limit",
                &lat_notes("p50"),
                json!({
                    "goal": "ours < 100 us over direct",
                    "goal_met": ours < 100.0,
                    "nginx_added_us": r3(nginx),
                    "direct_p50_us": r3(direct),
                    "ours_p50_us": r3(direct + ours),
                    "fsync_floor_p50_us": r3(fs50),
                }),
            );
        }
        if let Some((ours, nginx, direct)) = added("p99") {
            out.emit(
                "gateway_added_p99_us",
                Some(ours),
                Some(nginx),
                "us",
                "nginx-proxy",
                &lat_notes("p99"),
                json!({
                    "goal": "none (reported; ratio = ours/nginx added p99)",
                    "goal_met": Value::Null,
                    "direct_p99_us": r3(direct),
                    "ours_p99_us": r3(direct + ours),
                }),
            );
        }
    }

    // 2. Revocation propagation.
    let before = parse_lag(&metrics(&mut gw).await);
    log(&format!(
        "revocation propagation: {} rounds (fresh session, allowed once, revoked, polled until 401)",
        o.revocations
    ));
    let rev = revocations(
        o.revocations,
        &mut broker,
        gw_port,
        &signer,
        &issuer,
        &admin,
    )
    .await;
    let after = parse_lag(&metrics(&mut gw).await);
    kids.check(&dir);
    let n_ok = rev.from_send.len();
    let p99_send = pct(&rev.from_send, 0.99);
    let rev_notes = format!(
        "{} revocations (DELETE /v1/sessions/{{sid}} at the broker's admin API, keep-alive) of fresh sessions, each allowed once through the gateway first; the gateway polled on one keep-alive connection concurrently until 401 (resolution: one allowed request, which includes its durable audit record); {} missed (no 401 within {} s); broker and gateway in one firebreak serve on CPU 0, client on CPU 1",
        o.revocations,
        rev.missed,
        REVOCATION_GIVE_UP.as_secs()
    );
    let mean = |v: &[f64]| {
        #[allow(clippy::cast_precision_loss, reason = "small counts")]
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        m
    };
    out.emit(
        "revocation_propagation_p99_ms",
        Some(p99_send),
        Some(REVOCATION_LIMIT_MS),
        "ms",
        "limit",
        &format!("revoke request sent → first 401 at the gateway, p99; {rev_notes}"),
        json!({
            "goal": "ours < 100 ms",
            "goal_met": rev.missed == 0 && p99_send < REVOCATION_LIMIT_MS,
            "n": n_ok, "missed": rev.missed,
            "p50_ms": r3(pct(&rev.from_send, 0.5)), "p90_ms": r3(pct(&rev.from_send, 0.9)),
            "max_ms": r3(pct(&rev.from_send, 1.0)), "mean_ms": r3(mean(&rev.from_send)),
            "revoke_call_p50_ms": r3(pct(&rev.call, 0.5)), "revoke_call_p99_ms": r3(pct(&rev.call, 0.99)),
            "allowed_polls_mean": r3(mean(&rev.polls)),
        }),
    );
    out.emit(
        "revocation_propagation_p50_ms",
        Some(pct(&rev.from_send, 0.5)),
        Some(REVOCATION_LIMIT_MS),
        "ms",
        "limit",
        &format!("revoke request sent → first 401 at the gateway, p50; {rev_notes}"),
        json!({ "goal": "none (the goal is on p99)", "goal_met": Value::Null, "n": n_ok }),
    );
    out.emit(
        "revocation_after_response_p99_ms",
        Some(pct(&rev.from_response, 0.99)),
        Some(REVOCATION_LIMIT_MS),
        "ms",
        "limit",
        &format!("revoke response received → first 401 at the gateway, p99 (negative: refused before the broker's answer arrived); {rev_notes}"),
        json!({
            "goal": "none (reported)", "goal_met": Value::Null, "n": n_ok,
            "p50_ms": r3(pct(&rev.from_response, 0.5)),
            "min_ms": r3(pct(&rev.from_response, 0.0)),
            "max_ms": r3(pct(&rev.from_response, 1.0)),
        }),
    );
    let dn = after.count - before.count;
    let lag_mean_ms = if dn > 0.0 {
        (after.sum - before.sum) / dn * 1000.0
    } else {
        f64::NAN
    };
    let p99_bound = lag_quantile_bound(&before, &after, 0.99);
    out.emit(
        "revocation_lag_metric_mean_ms",
        Some(lag_mean_ms),
        Some(REVOCATION_LIMIT_MS),
        "ms",
        "limit",
        "cross-check: the gateway's firebreak_revocation_lag_seconds (event's at_ms at the broker → applied at the gateway, ms resolution) over this phase: mean, and the bucket bound holding p99",
        json!({
            "goal": "none (cross-check)", "goal_met": Value::Null,
            "events": dn,
            "p99_bucket_le_ms": p99_bound.map_or(Value::Null, |b| if b.is_finite() { r3(b * 1000.0) } else { json!("+Inf") }),
            "p50_bucket_le_ms": lag_quantile_bound(&before, &after, 0.5).map_or(Value::Null, |b| if b.is_finite() { r3(b * 1000.0) } else { json!("+Inf") }),
        }),
    );

    // 3. Profile.
    if o.profile {
        log(&format!(
            "profiling: perf record -e cpu-clock on pid {pid} under 64 connections for {} s",
            o.profile_seconds
        ));
        match profile(o, &dir, pid, gw_port, &token).await {
            Some(p) => {
                let rps = p["load_under_perf"]["rps"].as_f64();
                out.emit(
                    "gateway_profile",
                    rps,
                    None,
                    "req/s",
                    "none",
                    "perf record -e cpu-clock -F 1999 of the whole firebreak serve process (broker + gateway + audit writer) while the kit's load (wrk, 64 connections, CPU 1) ran; ours = rps under perf; components group the self time of symbols by name",
                    p,
                );
            }
            None => log("no profile"),
        }
    }

    let hwm = status_kb(pid, "VmHWM:").map(|k| k / 1024.0);
    let rss = status_kb(pid, "VmRSS:").map(|k| k / 1024.0);
    let db: u64 = std::fs::read_dir(&data)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    out.emit(
        "gateway_server_rss_peak_mb",
        hwm,
        None,
        "MB",
        "none",
        "VmHWM of firebreak serve (broker + gateway) after all phases; reported",
        json!({ "ours_rss_mb": rss.map_or(Value::Null, r3), "data_bytes": db, "goal": "none (reported)", "goal_met": Value::Null }),
    );
    drop(kids);
    let mut t = format!(
        "\n== bench/gateway ({:.0} s) ==\n",
        started.elapsed().as_secs_f64()
    );
    for l in &out.lines {
        t.push_str(&format!(
            "{:<34} ours {:>10} peer {:>10} ({}) ratio {:>7} {}\n",
            l["metric"].as_str().unwrap_or(""),
            l["ours"].to_string(),
            l["peer"].to_string(),
            l["peer_name"].as_str().unwrap_or(""),
            l["ratio"].to_string(),
            l.get("goal_met")
                .filter(|g| !g.is_null())
                .map_or(String::new(), |g| format!("goal_met={g}")),
        ));
    }
    eprint!("{t}");
}

async fn metrics(gw: &mut Conn) -> String {
    let (s, body) = gw.call("GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(s, 200, "gateway /metrics");
    String::from_utf8_lossy(&body).into_owned()
}

/// Today's date (UTC), for the JSON lines.
fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
