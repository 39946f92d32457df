//! `run`: the whole benchmark, in one process pinned (by `bench/run`) to CPU 1, which is also
//! the load generator's core. Servers are children pinned to CPU 0 with `taskset -c 0`: the
//! broker, the hello-world route, the limit route, and the oidc-provider peer. Every child is
//! stopped when the run ends, on error too (the guard's `Drop`), and its pid is listed in
//! `<run dir>/children.pids` for `bench/run`'s trap.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::keys::{self, Alg};
use crate::load::{self, Bodies, Outcome, Pool, Spec};

/// Options of `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Measured seconds per round and target.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Interleaved rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Warm-up seconds per target before the first round.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Smoke run: 1 round of 2 s, 1 s warm-up, short limits.
    #[arg(long)]
    quick: bool,
    /// Connection counts for the broker and the limit route.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Connections for hello_rps and the peer.
    #[arg(long, default_value_t = 64)]
    throughput_connections: usize,
    /// The firebreak binary (default: beside this one).
    #[arg(long)]
    firebreak: Option<PathBuf>,
    /// The shared bench kit (peers/, load).
    #[arg(long, env = "FIREBREAK_BENCH_KIT", default_value = "../shared/bench")]
    kit: PathBuf,
    /// Skip the oidc-provider peer.
    #[arg(long)]
    no_peer: bool,
    /// Seconds per crypto limit per round.
    #[arg(long, default_value_t = 1.0)]
    limit_seconds: f64,
}

pub(crate) const SERVER_CPU: &str = "0";

pub(crate) fn log(msg: &str) {
    eprintln!("firebreak-bench: {msg}");
}

// ------------------------------------------------------------------------------------------
// Children
// ------------------------------------------------------------------------------------------

/// Every process this run started; stopped on drop.
pub(crate) struct Kids {
    pub(crate) list: Vec<(String, Child)>,
    pub(crate) pidfile: PathBuf,
    pub(crate) peer: Option<(PathBuf, u16)>,
}

impl Kids {
    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command, log_file: &Path) -> u32 {
        let out = std::fs::File::create(log_file).expect("create child log");
        let err = out.try_clone().expect("clone log fd");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid = child.id();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pidfile)
            .expect("pidfile");
        writeln!(f, "{pid}").expect("write pidfile");
        self.list.push((name.to_owned(), child));
        pid
    }

    /// Fails loudly if a child already exited.
    pub(crate) fn check(&mut self, log_dir: &Path) {
        for (name, child) in &mut self.list {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(log_dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                panic!(
                    "{name} exited ({status}); last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for (name, child) in &mut self.list {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
            log(&format!("stopped {name} (pid {})", child.id()));
        }
        if let Some((kit, port)) = self.peer.take() {
            let _ = Command::new(kit.join("peers/stop"))
                .arg("oidc-provider")
                .arg(port.to_string())
                .stdout(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

pub(crate) fn pinned(cpus: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpus).arg(program);
    c
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn wait_port(kids: &mut Kids, port: u16, log_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        kids.check(log_dir);
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------------------------------
// Statistics and output
// ------------------------------------------------------------------------------------------

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

pub(crate) fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

pub(crate) fn r1(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

#[derive(Default, Clone)]
struct Series(Vec<Outcome>);

impl Series {
    fn med(&self, f: impl Fn(&Outcome) -> f64) -> f64 {
        median(&self.0.iter().map(f).collect::<Vec<_>>())
    }
    fn rps(&self) -> f64 {
        self.med(|o| o.rps)
    }
    fn p50(&self) -> f64 {
        self.med(|o| o.p50_ms)
    }
    fn p99(&self) -> f64 {
        self.med(|o| o.p99_ms)
    }
    fn runs(&self, f: impl Fn(&Outcome) -> f64) -> Value {
        Value::Array(self.0.iter().map(|o| r1(f(o))).collect())
    }
    fn errors(&self) -> u64 {
        self.0.iter().map(|o| o.errors).sum()
    }
}

pub(crate) struct Out {
    pub(crate) lines: Vec<Value>,
    pub(crate) common: Value,
}

impl Out {
    #[allow(clippy::too_many_arguments, reason = "one JSON line's fields")]
    pub(crate) fn emit(
        &mut self,
        metric: &str,
        ours: Option<f64>,
        peer: Option<f64>,
        unit: &str,
        peer_name: &str,
        notes: &str,
        extra: Value,
    ) {
        let ratio = match (ours, peer) {
            (Some(o), Some(p)) if p > 0.0 && o.is_finite() => r3(o / p),
            _ => Value::Null,
        };
        let mut line = json!({
            "metric": metric,
            "ours": ours.map_or(Value::Null, r3),
            "peer": peer.map_or(Value::Null, r3),
            "ratio": ratio,
            "unit": unit,
            "peer_name": peer_name,
            "notes": notes,
        });
        if let (Some(m), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        if let (Some(m), Some(c)) = (line.as_object_mut(), self.common.as_object()) {
            for (k, v) in c {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
        self.lines.push(line);
    }
}

// ------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------

pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("FIREBREAK_BENCH_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
                .join(".cache/firebreak-bench")
        },
        PathBuf::from,
    )
}

pub(crate) fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(String::new, |(_, m)| m.trim().to_owned());
    json!({ "nproc": nproc, "cpu": model })
}

fn broker_config(port: u16, issuer: &str, data_dir: &Path) -> String {
    let broker = format!("http://127.0.0.1:{port}");
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "{broker}"
data_dir = "{data}"

[[issuer]]
id = "bench-github"
url = "{issuer}"
audience = "{broker}"
profile = "github-actions"
algorithms = ["RS256", "EdDSA"]
max_token_age = "4h"          # subject tokens are pre-minted for the whole run
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
grants = [{{ target = "tools", scopes = ["repo:read", "repo:write"] }}]

[[target]]
id = "tools"
audience = "{tool}"
kind = "mcp"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"
"#,
        data = data_dir.display(),
        tool = keys::TOOL_AUDIENCE,
    )
}

struct Ctx {
    exe: PathBuf,
    dir: PathBuf,
    issuer: String,
    broker_url: String,
}

/// Mints `count` exchange bodies on both cores (a child under `taskset -c 0,1`; the servers are
/// idle meanwhile).
async fn mint(ctx: &Ctx, alg: Alg, count: usize) -> Vec<Bytes> {
    let out = ctx.dir.join(format!("minted-{}.txt", alg.tag()));
    let mut cmd = pinned("0,1", &ctx.exe);
    cmd.arg("mint")
        .arg("--keys")
        .arg(&ctx.dir)
        .args([
            "--alg",
            alg.arg(),
            "--issuer",
            &ctx.issuer,
            "--audience",
            &ctx.broker_url,
            "--threads",
            "2",
        ])
        .arg("--count")
        .arg(count.to_string())
        .arg("--out")
        .arg(&out);
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .expect("join")
        .expect("run mint");
    assert!(status.success(), "mint failed: {status}");
    let text = std::fs::read_to_string(&out).expect("read minted");
    let _ = std::fs::remove_file(&out);
    let v: Vec<Bytes> = text
        .lines()
        .map(|l| Bytes::copy_from_slice(l.as_bytes()))
        .collect();
    assert_eq!(v.len(), count, "minted count");
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    let rate = count as f64 / t.elapsed().as_secs_f64();
    log(&format!(
        "minted {count} {} subject tokens in {:.1} s ({rate:.0}/s on 2 cores)",
        alg.tag(),
        t.elapsed().as_secs_f64()
    ));
    v
}

pub(crate) async fn blocking_output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    tokio::task::spawn_blocking(move || cmd.stderr(Stdio::inherit()).output())
        .await
        .expect("join")
}

/// One request through the load generator's client, to fail early and loudly on a bad setup.
async fn sanity(addr: SocketAddr, body: Bytes, what: &str) {
    let pool = Arc::new(Pool::new(vec![body], false));
    let o = load::run(Spec {
        addr,
        path: "/oauth2/token",
        bodies: Bodies::Pool(pool),
        connections: 1,
        duration: Duration::from_secs(2),
    })
    .await;
    assert!(
        o.ok == 1 && o.errors == 0,
        "{what}: sanity request failed: {:?}",
        o.first_error
    );
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Ours,
    Limit,
}

fn peer_run(kit: &Path, port: u16, form: &Path, secs: f64, warmup: u64, conns: usize) -> Command {
    let mut c = Command::new(kit.join("load"));
    c.args(["-c", &conns.to_string(), "-w", &warmup.to_string()])
        .args(["-d", &format!("{}", secs.ceil().max(1.0))])
        .arg("--body-file")
        .arg(form)
        .args(["--cpus", "1", "--label", "oidc-provider"])
        .arg(format!("http://127.0.0.1:{port}/token"));
    c
}

fn parse_peer(out: &std::process::Output) -> Result<Outcome, String> {
    if !out.status.success() {
        return Err(format!("load exited {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("load printed no JSON")?;
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "error counts"
    )]
    let errors = f("errors").max(0.0) as u64;
    Ok(Outcome {
        rps: f("rps"),
        p50_ms: f("p50_ms"),
        p90_ms: f("p90_ms"),
        p99_ms: f("p99_ms"),
        max_ms: f("max_ms"),
        errors,
        ..Outcome::default()
    })
}

/// `load` subcommand.
pub fn load_cmd(port: u16, path: String, bodies: Option<&Path>, connections: usize, seconds: f64) {
    let bodies = match bodies {
        None => Bodies::Get,
        Some(f) => {
            let text = std::fs::read_to_string(f).expect("read bodies");
            let v = text
                .lines()
                .map(|l| Bytes::copy_from_slice(l.as_bytes()))
                .collect();
            Bodies::Pool(Arc::new(Pool::new(v, true)))
        }
    };
    let path: &'static str = Box::leak(path.into_boxed_str());
    let spec = Spec {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path,
        bodies,
        connections,
        duration: Duration::from_secs_f64(seconds),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let o = rt.block_on(load::run(spec));
    println!(
        "{}",
        json!({ "rps": r1(o.rps), "p50_ms": r3(o.p50_ms), "p90_ms": r3(o.p90_ms), "p99_ms": r3(o.p99_ms), "max_ms": r3(o.max_ms), "ok": o.ok, "errors": o.errors, "elapsed_s": r3(o.elapsed_s), "first_error": o.first_error })
    );
}

/// Entry point of `run`.
pub fn main(opts: &Opts) {
    let mut o = opts.clone();
    if o.quick {
        o.rounds = 1;
        o.seconds = o.seconds.min(2.0);
        o.warmup = o.warmup.min(1.0);
        o.limit_seconds = o.limit_seconds.min(0.3);
    }
    assert!(
        o.seconds > 0.0 && o.seconds <= 120.0,
        "--seconds must be in (0, 120]"
    );
    assert!((1..=10).contains(&o.rounds), "--rounds must be 1..=10");
    assert!(
        o.connections.iter().all(|c| (1..=1024).contains(c)),
        "--connections must be 1..=1024 each"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Bounded: a run that hangs is killed by bench/run's timeout; this is the inner bound.
    rt.block_on(run(&o));
}

#[allow(
    clippy::too_many_lines,
    reason = "the run reads top to bottom as the method in BENCH.md"
)]
async fn run(o: &Opts) {
    let started = Instant::now();
    let cache = cache_dir();
    let dir = cache.join("bench-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create run dir");
    let data_dir = dir.join("broker-data");
    std::fs::create_dir_all(&data_dir).expect("create data dir");
    let fs = fs_type(&data_dir);
    if fs == "tmpfs" || fs == "ramfs" {
        log(&format!(
            "WARNING: the broker's data dir {} is on {fs}: durable-store figures are meaningless",
            data_dir.display()
        ));
    }
    let exe = std::env::current_exe().expect("current exe");
    let firebreak = o
        .firebreak
        .clone()
        .unwrap_or_else(|| exe.with_file_name("firebreak"));
    assert!(
        firebreak.is_file(),
        "no firebreak binary at {}; build it or pass --firebreak",
        firebreak.display()
    );
    let mut kids = Kids {
        list: Vec::new(),
        pidfile: dir.join("children.pids"),
        peer: None,
    };

    // Keys, issuer, broker, hello, limit route.
    let jwks = keys::generate(&dir);
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_vec(&jwks).expect("jwks json")).expect("write jwks");
    let issuer = crate::servers::start_issuer(jwks).await;
    let (broker_port, hello_port, limit_port) = (free_port(), free_port(), free_port());
    let broker_url = format!("http://127.0.0.1:{broker_port}");
    let cfg = dir.join("firebreak.toml");
    std::fs::write(&cfg, broker_config(broker_port, &issuer, &data_dir)).expect("write config");
    let mut c = pinned(SERVER_CPU, &firebreak);
    c.arg("serve").arg("--config").arg(&cfg);
    let broker_pid = kids.spawn("broker", c, &dir.join("broker.log"));
    let mut c = pinned(SERVER_CPU, &exe);
    c.arg("serve-hello").arg(hello_port.to_string());
    kids.spawn("hello", c, &dir.join("hello.log"));
    let mut c = pinned(SERVER_CPU, &exe);
    c.arg("serve-limit")
        .arg(limit_port.to_string())
        .arg(&jwks_file);
    kids.spawn("limit", c, &dir.join("limit.log"));
    for p in [broker_port, hello_port, limit_port] {
        wait_port(&mut kids, p, &dir);
    }
    log(&format!(
        "broker {broker_url} (pid {broker_pid}, data {} on {fs}), hello :{hello_port}, limit :{limit_port}, issuer {issuer}",
        data_dir.display()
    ));
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let ctx = Ctx {
        exe: exe.clone(),
        dir: dir.clone(),
        issuer,
        broker_url: broker_url.clone(),
    };

    // The peer (installs node + oidc-provider into the cache on first use).
    let mut peer: Result<(u16, u32, PathBuf), String> = Err("skipped (--no-peer)".into());
    if !o.no_peer {
        let port = free_port();
        let mut c = Command::new("timeout");
        c.arg("900")
            .arg(o.kit.join("peers/oidc-provider"))
            .arg(port.to_string())
            .env("FIREBREAK_BENCH_SERVER_CPUS", SERVER_CPU);
        kids.peer = Some((o.kit.clone(), port));
        peer = match blocking_output(c).await {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let ready = text.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    if w.next() != Some("READY") {
                        return None;
                    }
                    Some((
                        w.next()?.parse::<u16>().ok()?,
                        w.next()?.parse::<u32>().ok()?,
                    ))
                });
                let form = cache.join(format!("peers/oidc-provider-{port}/grant.form"));
                match ready {
                    Some((p, pid)) if form.is_file() => Ok((p, pid, form)),
                    _ => Err(format!(
                        "oidc-provider printed no READY line or no grant.form: {text}"
                    )),
                }
            }
            Ok(out) => Err(format!(
                "oidc-provider could not be started here ({})",
                out.status
            )),
            Err(e) => Err(format!("oidc-provider script did not run: {e}")),
        };
        match &peer {
            Ok((p, pid, _)) => log(&format!(
                "oidc-provider on :{p} (pid {pid}, CPU {SERVER_CPU})"
            )),
            Err(e) => log(&format!("peer missing: {e}")),
        }
    }

    // Single-thread crypto limits on the servers' core (they are idle now).
    let mut c = pinned(SERVER_CPU, &exe);
    c.arg("limits")
        .arg("--seconds")
        .arg(o.limit_seconds.to_string())
        .arg("--rounds")
        .arg(o.rounds.to_string());
    let out = blocking_output(c).await.expect("run limits");
    assert!(out.status.success(), "limits failed");
    let limits: Value = serde_json::from_slice(&out.stdout).expect("limits JSON");
    log(&format!("limits: {limits}"));

    // Tokens: a first pool per algorithm, then sized from the warm-up rate.
    let algs = [Alg::Rs256, Alg::Eddsa];
    let mut pools: BTreeMap<&str, Arc<Pool>> = BTreeMap::new();
    let mut cycling: BTreeMap<&str, Arc<Pool>> = BTreeMap::new();
    for alg in algs {
        let first = match alg {
            Alg::Rs256 => 6_000,
            Alg::Eddsa => 30_000,
        };
        let tokens = mint(&ctx, alg, first).await;
        sanity(
            at(broker_port),
            tokens[0].clone(),
            &format!("broker {}", alg.tag()),
        )
        .await;
        sanity(
            at(limit_port),
            tokens[0].clone(),
            &format!("limit route {}", alg.tag()),
        )
        .await;
        // The limit route keeps no replay state: it may see the same token again.
        cycling.insert(alg.tag(), Arc::new(Pool::new(tokens.clone(), true)));
        pools.insert(alg.tag(), Arc::new(Pool::new(tokens[1..].to_vec(), false)));
    }

    let secs = Duration::from_secs_f64(o.seconds);
    let warm = Duration::from_secs_f64(o.warmup);
    let tp = o.throughput_connections;
    let spec = |port: u16, bodies: Bodies, connections: usize, duration: Duration| Spec {
        addr: at(port),
        path: if matches!(bodies, Bodies::Get) {
            "/"
        } else {
            "/oauth2/token"
        },
        bodies,
        connections,
        duration,
    };

    // Warm-up (and calibration of the token pools from the broker's rate).
    log(&format!(
        "warm-up: {:.1} s per target at {tp} connections",
        o.warmup
    ));
    let _ = load::run(spec(hello_port, Bodies::Get, tp, warm)).await;
    for alg in algs {
        let _ = load::run(spec(
            limit_port,
            Bodies::Pool(Arc::clone(&cycling[alg.tag()])),
            tp,
            warm,
        ))
        .await;
        let w = load::run(spec(
            broker_port,
            Bodies::Pool(Arc::clone(&pools[alg.tag()])),
            tp,
            warm,
        ))
        .await;
        assert!(
            w.ok > 0,
            "broker {} warm-up: no successful exchange: {:?}",
            alg.tag(),
            w.first_error
        );
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "pool size"
        )]
        let need =
            (w.rps * o.seconds * (o.rounds * o.connections.len()) as f64 * 1.3) as usize + 2_000;
        let have = pools[alg.tag()].remaining();
        log(&format!(
            "{} warm-up: broker {:.0}/s{}; pool needs {need}, has {have}",
            alg.tag(),
            w.rps,
            if w.exhausted { " (pool ran dry)" } else { "" }
        ));
        if need > have {
            let more = mint(&ctx, alg, need - have).await;
            let p = pools[alg.tag()].extended(more);
            pools.insert(alg.tag(), Arc::new(p));
        }
    }
    kids.check(&dir);

    // Rounds, interleaved: hello, then per algorithm and connection count ours then limit, then
    // the peer.
    let mut res: BTreeMap<(Target, &str, usize), Series> = BTreeMap::new();
    let mut hello = Series::default();
    let mut peer_series = Series::default();
    let mut peer_err: Option<String> = peer.as_ref().err().cloned();
    let mut exhausted = false;
    for round in 0..o.rounds {
        log(&format!("round {}/{}", round + 1, o.rounds));
        hello
            .0
            .push(load::run(spec(hello_port, Bodies::Get, tp, secs)).await);
        for alg in algs {
            for &c in &o.connections {
                let ours = load::run(spec(
                    broker_port,
                    Bodies::Pool(Arc::clone(&pools[alg.tag()])),
                    c,
                    secs,
                ))
                .await;
                if ours.exhausted {
                    exhausted = true;
                    log(&format!(
                        "broker {} c{c}: the token pool ran dry after {:.2} s",
                        alg.tag(),
                        ours.elapsed_s
                    ));
                }
                if let Some(e) = &ours.first_error {
                    log(&format!(
                        "broker {} c{c}: {} errors, first: {e}",
                        alg.tag(),
                        ours.errors
                    ));
                }
                let lim = load::run(spec(
                    limit_port,
                    Bodies::Pool(Arc::clone(&cycling[alg.tag()])),
                    c,
                    secs,
                ))
                .await;
                log(&format!(
                    "  {} c{c:<3} broker {:>8.0}/s p50 {:.3} p99 {:.3} ms | limit {:>8.0}/s p50 {:.3} p99 {:.3} ms",
                    alg.tag(),
                    ours.rps,
                    ours.p50_ms,
                    ours.p99_ms,
                    lim.rps,
                    lim.p50_ms,
                    lim.p99_ms
                ));
                res.entry((Target::Ours, alg.tag(), c))
                    .or_default()
                    .0
                    .push(ours);
                res.entry((Target::Limit, alg.tag(), c))
                    .or_default()
                    .0
                    .push(lim);
            }
        }
        if let (Ok((port, _, form)), None) = (&peer, &peer_err) {
            // Node's JIT needs a longer warm-up (BENCH.md): 5 s before the first round.
            let w = if round == 0 { 5 } else { 0 };
            match blocking_output(peer_run(&o.kit, *port, form, o.seconds, w, tp))
                .await
                .map_err(|e| e.to_string())
                .and_then(|out| parse_peer(&out))
            {
                Ok(p) => {
                    log(&format!(
                        "  oidc-provider c{tp} {:.0}/s p50 {:.3} p99 {:.3} ms",
                        p.rps, p.p50_ms, p.p99_ms
                    ));
                    peer_series.0.push(p);
                }
                Err(e) => {
                    log(&format!("peer load failed: {e}"));
                    peer_err = Some(format!("peer load failed: {e}"));
                }
            }
        }
        kids.check(&dir);
    }

    // Memory, before anything stops.
    let broker_hwm = status_kb(broker_pid, "VmHWM:").map(|k| k / 1024.0);
    let broker_rss = status_kb(broker_pid, "VmRSS:").map(|k| k / 1024.0);
    let peer_hwm = peer
        .as_ref()
        .ok()
        .and_then(|(_, pid, _)| status_kb(*pid, "VmHWM:"))
        .map(|k| k / 1024.0);
    let db_bytes: u64 = std::fs::read_dir(&data_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let broker_log = std::fs::metadata(dir.join("broker.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    drop(kids);

    // Output.
    let base = format!(
        "median of {} interleaved rounds of {} s after {} s warm-up; servers on CPU 0 (taskset -c 0), load generator on CPU 1",
        o.rounds, o.seconds, o.warmup
    );
    let mut out = Out {
        lines: Vec::new(),
        common: json!({ "runs": o.rounds, "machine": machine() }),
    };
    let lim_med = |name: &str| {
        limits
            .get(name)
            .and_then(Value::as_array)
            .map(|a| median(&a.iter().filter_map(Value::as_f64).collect::<Vec<_>>()))
    };
    for name in crate::limits::NAMES {
        out.emit(
            name,
            None,
            lim_med(name),
            "ops/s",
            "aws-lc-rs, one thread on CPU 0",
            &format!("limit (no ours): median of {} rounds of {} s; 493-byte signing input, pre-parsed public key", o.rounds, o.limit_seconds),
            json!({ "rps_runs": limits.get(name).cloned().unwrap_or(Value::Null) }),
        );
    }
    out.emit(
        "hello_rps",
        None,
        Some(hello.rps()),
        "req/s",
        "axum hello-world route (CPU 0)",
        &format!("limit (no ours): {tp} connections, GET /, {base}; the client is one thread, so this may be the client's ceiling"),
        json!({ "rps_runs": hello.runs(|o| o.rps), "p50_ms": r3(hello.p50()), "p99_ms": r3(hello.p99()), "errors": hello.errors() }),
    );
    let store_note = format!(
        "broker: firebreak serve, SQLite in {} ({fs}), default logging to a file; limit route: form parse + JWT parse + one signature verify + one Ed25519 sign + JSON reply, no store, no audit, fed the same pre-minted tokens cyclically",
        data_dir.display()
    );
    let mut table = String::new();
    for alg in algs {
        let a = alg.tag();
        for &c in &o.connections {
            let ours = &res[&(Target::Ours, a, c)];
            let lim = &res[&(Target::Limit, a, c)];
            let (goal, met) = if c == tp {
                (
                    "ratio >= 0.5 (exchanges/s vs the crypto+HTTP limit)",
                    json!(ours.rps() / lim.rps() >= 0.5),
                )
            } else {
                ("none at this connection count", Value::Null)
            };
            out.emit(
                &format!("exchange_{a}_rps_c{c}"),
                Some(ours.rps()),
                Some(lim.rps()),
                "req/s",
                &format!("limit route ({a} verify + Ed25519 sign + HTTP)"),
                &format!("{c} connections, POST /oauth2/token, distinct {a} subject token per request; {base}; {store_note}"),
                json!({
                    "goal": goal, "goal_met": met, "connections": c,
                    "rps_runs": ours.runs(|o| o.rps), "peer_rps_runs": lim.runs(|o| o.rps),
                    "ours_p50_ms": r3(ours.p50()), "ours_p90_ms": r3(ours.med(|o| o.p90_ms)), "ours_p99_ms": r3(ours.p99()), "ours_max_ms": r3(ours.med(|o| o.max_ms)),
                    "peer_p50_ms": r3(lim.p50()), "peer_p99_ms": r3(lim.p99()),
                    "errors": ours.errors(), "peer_errors": lim.errors(),
                }),
            );
            let _ = writeln!(
                table,
                "{a:<6} c{c:<3} broker {:>8.0}/s p50 {:>7.3} p99 {:>7.3} ms | limit {:>8.0}/s p50 {:>7.3} p99 {:>7.3} ms | ratio {:.3}",
                ours.rps(),
                ours.p50(),
                ours.p99(),
                lim.rps(),
                lim.p50(),
                lim.p99(),
                ours.rps() / lim.rps()
            );
        }
        if let Some(&c1) = o.connections.iter().min() {
            let ours = &res[&(Target::Ours, a, c1)];
            let lim = &res[&(Target::Limit, a, c1)];
            out.emit(
                &format!("exchange_{a}_p99_c{c1}"),
                Some(ours.p99()),
                Some(lim.p99()),
                "ms",
                "limit route, same connections",
                &format!("latency phase: {c1} connection, closed loop; {base}; lower is better"),
                json!({ "goal": "ratio <= 2.0", "goal_met": ours.p99() / lim.p99() <= 2.0, "ours_p99_us_runs": ours.runs(|o| o.p99_ms * 1000.0), "peer_p99_us_runs": lim.runs(|o| o.p99_ms * 1000.0) }),
            );
            out.emit(
                &format!("exchange_{a}_p50_c{c1}"),
                Some(ours.p50()),
                Some(lim.p50()),
                "ms",
                "limit route, same connections",
                &format!("latency phase: {c1} connection; {base}; lower is better"),
                json!({ "goal": "none (reported)", "goal_met": Value::Null }),
            );
        }
        if let Some(&cmax) = o.connections.iter().max() {
            let ours = &res[&(Target::Ours, a, cmax)];
            let lim = &res[&(Target::Limit, a, cmax)];
            out.emit(
                &format!("exchange_{a}_p99_c{cmax}"),
                Some(ours.p99()),
                Some(lim.p99()),
                "ms",
                "limit route, same connections",
                &format!("{cmax} connections closed loop: mostly queueing; {base}"),
                json!({ "goal": "none (reported)", "goal_met": Value::Null }),
            );
        }
        // Cross-check of the limit route: 1 / (1/verify + 1/sign + 1/hello).
        let verify = match alg {
            Alg::Rs256 => lim_med("rs256_verify"),
            Alg::Eddsa => lim_med("ed25519_verify"),
        };
        if let (Some(v), Some(s)) = (verify, lim_med("ed25519_sign")) {
            let est = 1.0 / (1.0 / v + 1.0 / s + 1.0 / hello.rps());
            let lim = &res[&(Target::Limit, a, tp)];
            out.emit(
                &format!("limit_route_{a}_vs_estimate"),
                Some(lim.rps()),
                Some(est),
                "req/s",
                "1/(1/verify + 1/sign + 1/hello_rps)",
                &format!("cross-check: the measured limit route ({tp} connections) against the estimate from the same run's limits"),
                json!({}),
            );
        }
    }
    let ours_rs = res.get(&(Target::Ours, "rs256", tp)).map(Series::rps);
    let ours_ed = res.get(&(Target::Ours, "eddsa", tp)).map(Series::rps);
    let (peer_rps, peer_note) = match (&peer_err, peer_series.0.is_empty()) {
        (None, false) => (Some(peer_series.rps()), String::new()),
        (Some(e), _) => (None, format!("PEER MISSING: {e}; ")),
        (None, true) => (None, "PEER MISSING: no peer round ran; ".into()),
    };
    let peer_extra = json!({
        "peer_rps_runs": peer_series.runs(|o| o.rps),
        "peer_p50_ms": r3(peer_series.p50()), "peer_p99_ms": r3(peer_series.p99()), "peer_errors": peer_series.errors(),
    });
    let mut e = peer_extra.clone();
    if let Some(m) = e.as_object_mut() {
        m.insert("goal".into(), json!("ratio >= 3"));
        m.insert(
            "goal_met".into(),
            peer_rps
                .zip(ours_rs)
                .map_or(Value::Null, |(p, r)| json!(r / p >= 3.0)),
        );
        m.insert(
            "rps_runs".into(),
            res.get(&(Target::Ours, "rs256", tp))
                .map_or(Value::Null, |s| s.runs(|o| o.rps)),
        );
    }
    let peer_how = format!(
        "{peer_note}ours: exchanges/s with an RS256 subject token, {tp} connections, our load generator on CPU 1; peer: oidc-provider 9 client_credentials grants/s, shared/bench/load (wrk) -c {tp} on CPU 1, 5 s warm-up, in-memory, no durable record; both on CPU 0; {base}"
    );
    out.emit(
        "exchange_rs256_vs_oidc_provider",
        ours_rs,
        peer_rps,
        "req/s",
        "oidc-provider 9.13.3 (node 22)",
        &peer_how,
        e,
    );
    let mut e = peer_extra;
    if let Some(m) = e.as_object_mut() {
        m.insert("goal".into(), json!("none (reported)"));
    }
    out.emit(
        "exchange_eddsa_vs_oidc_provider",
        ours_ed,
        peer_rps,
        "req/s",
        "oidc-provider 9.13.3 (node 22)",
        &peer_how.replace("RS256", "EdDSA"),
        e,
    );
    out.emit(
        "rss_peak_mb",
        broker_hwm,
        peer_hwm,
        "MB",
        "oidc-provider (VmHWM)",
        "VmHWM after all rounds; lower is better",
        json!({ "ours_rss_mb": broker_rss.map_or(Value::Null, r1), "broker_data_bytes": db_bytes, "broker_log_bytes": broker_log }),
    );

    // The human table.
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n== firebreak-bench ({:.0} s, {} rounds x {} s; servers CPU 0, load CPU 1) ==",
        started.elapsed().as_secs_f64(),
        o.rounds,
        o.seconds
    );
    for name in crate::limits::NAMES {
        let _ = writeln!(
            t,
            "{name:<16} {:>10.0} ops/s",
            lim_med(name).unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(t, "{:<16} {:>10.0} req/s (c{tp})", "hello_rps", hello.rps());
    t.push_str(&table);
    let _ = writeln!(
        t,
        "rs256 c{tp} vs oidc-provider: {:.0} / {} = {}",
        ours_rs.unwrap_or(f64::NAN),
        peer_rps.map_or("missing".into(), |p| format!("{p:.0}")),
        peer_rps
            .zip(ours_rs)
            .map_or("n/a".into(), |(p, r)| format!("{:.2}x (goal >= 3)", r / p))
    );
    let _ = writeln!(
        t,
        "broker peak RSS {:.1} MB, oidc-provider {:.1} MB",
        broker_hwm.unwrap_or(f64::NAN),
        peer_hwm.unwrap_or(f64::NAN)
    );
    if exhausted {
        let _ = writeln!(
            t,
            "NOTE: a broker run ran out of pre-minted tokens; its rate is over the shorter time it ran"
        );
    }
    eprint!("{t}");
}
