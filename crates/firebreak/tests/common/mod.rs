//! The built binary as a server: start `firebreak serve`, wait for its readiness line, kill it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness shared by several test binaries"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub url: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `firebreak serve` and waits for its "broker listening" line (a readiness signal).
pub fn serve(config: &Path) -> Server {
    serve_with(config, "info")
}

pub fn serve_with(config: &Path, log: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let collected: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(local) = v["fields"]["local"].as_str()
            {
                let _ = tx.send(local.to_owned());
                sent = true;
            }
        }
    });
    let local = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("broker did not start");
    Server {
        child,
        url: format!("http://{local}"),
        stderr: collected,
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL for the multi-replica tests (tests/replicas.rs).
//
// This crate has no PostgreSQL client among its dev-dependencies, so the few statements a test
// needs (create and drop its schema, end backends) go over a minimal client of the wire
// protocol (v3, simple query; trust or cleartext-password authentication only).

/// The tests' PostgreSQL (`FIREBREAK_TEST_PG`, DESIGN.md §9).
pub fn pg_url() -> String {
    std::env::var("FIREBREAK_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `postgres://user[:password]@host[:port][/db][?…]` → (user, password, host:port, db).
fn pg_parts(url: &str) -> (String, Option<String>, String, String) {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .expect("FIREBREAK_TEST_PG must be a postgres:// URL");
    let rest = rest.split('?').next().unwrap_or(rest);
    let (auth, hostdb) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let (user, password) = match auth.split_once(':') {
        Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
        None => (auth.to_owned(), None),
    };
    let (host, db) = hostdb.split_once('/').unwrap_or((hostdb, "postgres"));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let db = if db.is_empty() { "postgres" } else { db };
    (user, password, host, db.to_owned())
}

fn pg_read_msg(s: &mut std::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

fn pg_error_text(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .filter(|f| f.first() == Some(&b'M') || f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Runs `sql` (one or more statements, simple query protocol) on the tests' PostgreSQL as its
/// own connection; returns the rows of the last result set as text. Bounded by 10 s timeouts.
pub fn pg_exec(sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    use std::io::Write;
    let url = pg_url();
    let (user, password, host, db) = pg_parts(&url);
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("PostgreSQL at {url} is required: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let io = |e: std::io::Error| format!("PostgreSQL at {url}: {e}");
    let mut start = Vec::new();
    start.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in [
        ("user", user.as_str()),
        ("database", db.as_str()),
        ("application_name", "firebreak-test-admin"),
    ] {
        start.extend_from_slice(k.as_bytes());
        start.push(0);
        start.extend_from_slice(v.as_bytes());
        start.push(0);
    }
    start.push(0);
    let mut msg = u32::try_from(start.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    msg.extend_from_slice(&start);
    s.write_all(&msg).map_err(io)?;
    loop {
        let (t, body) = pg_read_msg(&mut s).map_err(io)?;
        match t {
            b'R' => match u32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                0 => {}
                3 => {
                    let p = password.clone().ok_or("server wants a password")?;
                    let mut m = vec![b'p'];
                    m.extend_from_slice(&u32::try_from(p.len() + 5).unwrap().to_be_bytes());
                    m.extend_from_slice(p.as_bytes());
                    m.push(0);
                    s.write_all(&m).map_err(io)?;
                }
                n => {
                    return Err(format!(
                        "authentication method {n} is not supported by the test client (use trust or password)"
                    ));
                }
            },
            b'E' => return Err(pg_error_text(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&u32::try_from(sql.len() + 5).unwrap().to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q).map_err(io)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (t, body) = pg_read_msg(&mut s).map_err(io)?;
        match t {
            b'T' => rows.clear(),
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut at = 2;
                let mut row = Vec::with_capacity(n);
                for _ in 0..n {
                    let len =
                        i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                    at += 4;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let len = usize::try_from(len).unwrap();
                        row.push(Some(
                            String::from_utf8_lossy(&body[at..at + len]).into_owned(),
                        ));
                        at += len;
                    }
                }
                rows.push(row);
            }
            b'E' => error = Some(pg_error_text(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// A fresh schema of its own for one test, dropped (with its tables) when the guard goes, also
/// when the test fails. Connections whose `application_name` ends with the schema's name are
/// ended first, so that a broker still running cannot hold a lock the DROP waits for.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    /// Creates the schema; panics (the test FAILS) when PostgreSQL is unreachable.
    pub fn create(tag: &str) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let name = format!("fbr_{tag}_{:012x}", h.finish() & 0xffff_ffff_ffff);
        pg_exec(&format!("CREATE SCHEMA {name}"))
            .unwrap_or_else(|e| panic!("PostgreSQL is required for these tests: {e}"));
        Self { name }
    }

    /// A `[store] url` on this schema; `app` names the connections (`<app>_<schema>`).
    pub fn store_url(&self, app: &str) -> String {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!(
            "{base}{sep}application_name={app}_{name}&options=-csearch_path%3D{name}",
            name = self.name
        )
    }

    /// Ends every backend whose `application_name` is `<app>_<schema>` (or any app of this
    /// schema when `app` is `None`); returns how many.
    pub fn terminate(&self, app: Option<&str>) -> usize {
        let pattern = match app {
            Some(a) => format!("{a}_{}", self.name),
            None => format!("%_{}", self.name),
        };
        pg_exec(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name LIKE '{pattern}' AND pid <> pg_backend_pid()"
        ))
        .unwrap()
        .len()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.terminate(None));
        let _ = pg_exec(&format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        ));
    }
}

/// A free loopback port (bound, then released for the child to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) for a JSON log line of `server` whose message is `message` and returns its
/// `fields.local` (e.g. "gateway listening").
pub fn wait_for_local(server: &Server, message: &str, timeout: Duration) -> String {
    let started = firebreak_core::clock::Stopwatch::start();
    loop {
        for line in server.stderr.lock().unwrap().iter() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v["fields"]["message"] == message
                && let Some(local) = v["fields"]["local"].as_str()
            {
                return local.to_owned();
            }
        }
        assert!(
            started.elapsed_secs() < timeout.as_secs_f64(),
            "no {message:?} line within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `serve_with`, with extra environment variables for the child (e.g. a gateway's secret).
pub fn serve_with_env(config: &Path, log: &str, envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let collected: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "broker listening"
                && let Some(local) = v["fields"]["local"].as_str()
            {
                let _ = tx.send(local.to_owned());
                sent = true;
            }
        }
    });
    let Ok(local) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "broker did not start:\n{}",
            collected.lock().unwrap().join("\n")
        );
    };
    Server {
        child,
        url: format!("http://{local}"),
        stderr: collected,
    }
}
