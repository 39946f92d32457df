//! A closed-loop HTTP/1.1 load generator: N connections, each one keep-alive connection sending
//! its next request as soon as the previous answer is read. Exchange bodies come from a shared
//! pool of pre-minted tokens, so no subject token is ever sent twice to the broker; the limit
//! route, which keeps no replay state, may cycle through the pool. Per-request latency is kept
//! for every request; a run is bounded by its duration plus a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Where request bodies come from.
#[derive(Clone)]
pub enum Bodies {
    /// `GET`, no body.
    Get,
    /// `POST` of pre-built form bodies, taken in order by every connection.
    Pool(Arc<Pool>),
}

/// Pre-minted request bodies and the index of the next unused one.
pub struct Pool {
    items: Vec<Bytes>,
    next: AtomicUsize,
    cycle: bool,
}

impl Pool {
    /// A pool; with `cycle` it wraps around instead of running dry.
    pub fn new(items: Vec<Bytes>, cycle: bool) -> Self {
        Self {
            items,
            next: AtomicUsize::new(0),
            cycle,
        }
    }
    /// A pool holding `self`'s unused items followed by `more`.
    pub fn extended(&self, more: Vec<Bytes>) -> Self {
        let start = self.next.load(Ordering::Relaxed).min(self.items.len());
        let mut items = self.items[start..].to_vec();
        items.extend(more);
        Self::new(items, self.cycle)
    }
    /// Unused items left.
    pub fn remaining(&self) -> usize {
        self.items
            .len()
            .saturating_sub(self.next.load(Ordering::Relaxed))
    }
    fn take(&self) -> Option<Bytes> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.cycle {
            if self.items.is_empty() {
                return None;
            }
            return self.items.get(i % self.items.len()).cloned();
        }
        self.items.get(i).cloned()
    }
}

/// One load run.
#[derive(Clone)]
pub struct Spec {
    /// Server address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: &'static str,
    /// Bodies.
    pub bodies: Bodies,
    /// Open connections.
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
}

/// What one run measured. Latencies in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Successful (2xx) requests per second.
    pub rps: f64,
    /// Median latency of successful requests.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Successful requests.
    pub ok: u64,
    /// Non-2xx answers and transport errors.
    pub errors: u64,
    /// Measured seconds (shorter than asked when the pool ran dry).
    pub elapsed_s: f64,
    /// The pool ran dry before the duration ended.
    pub exhausted: bool,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
}

struct Worker {
    lat_ns: Vec<u64>,
    errors: u64,
    exhausted: bool,
    end: Instant,
    first_error: Option<String>,
}

pub(crate) async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn worker(
    spec: Arc<Spec>,
    start: Arc<tokio::sync::Barrier>,
    t0: Arc<std::sync::OnceLock<Instant>>,
) -> Worker {
    let host = spec.addr.to_string();
    let mut w = Worker {
        lat_ns: Vec::with_capacity(1 << 14),
        errors: 0,
        exhausted: false,
        end: Instant::now(),
        first_error: None,
    };
    let mut send = match connect(spec.addr).await {
        Ok(s) => Some(s),
        Err(e) => {
            w.errors += 1;
            w.first_error = Some(e);
            None
        }
    };
    start.wait().await;
    let begin = *t0.get_or_init(Instant::now);
    let deadline = begin + spec.duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let s = match send.as_mut() {
            Some(s) => s,
            None => match connect(spec.addr).await {
                Ok(s) => send.insert(s),
                Err(e) => {
                    w.errors += 1;
                    w.first_error.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = match &spec.bodies {
            Bodies::Get => Request::get(spec.path)
                .header("host", &host)
                .body(Full::new(Bytes::new())),
            Bodies::Pool(p) => {
                let Some(body) = p.take() else {
                    w.exhausted = true;
                    break;
                };
                Request::post(spec.path)
                    .header("host", &host)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(body))
            }
        }
        .expect("request");
        let t = Instant::now();
        let res = async {
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ))
            }
        }
        .await;
        match res {
            Ok(()) => w
                .lat_ns
                .push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            Err(e) => {
                w.errors += 1;
                w.first_error.get_or_insert(e);
                if send.as_ref().is_none_or(|s| s.is_closed()) {
                    send = None;
                }
            }
        }
    }
    w.end = Instant::now();
    w
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "percentile index"
    )]
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    #[allow(clippy::cast_precision_loss, reason = "nanoseconds to ms")]
    let v = sorted[i] as f64 / 1e6;
    v
}

/// Runs `spec` on the current runtime; bounded by its duration plus 15 s.
pub async fn run(spec: Spec) -> Outcome {
    let n = spec.connections.max(1);
    let spec = Arc::new(spec);
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let t0 = Arc::new(std::sync::OnceLock::new());
    let handles: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(worker(
                Arc::clone(&spec),
                Arc::clone(&barrier),
                Arc::clone(&t0),
            ))
        })
        .collect();
    let bound = spec.duration + Duration::from_secs(15);
    let mut workers = Vec::with_capacity(n);
    let all = async {
        for h in handles {
            workers.push(h.await.expect("load worker"));
        }
    };
    tokio::time::timeout(bound, all)
        .await
        .expect("load run exceeded its time bound");
    let begin = t0.get().copied().unwrap_or_else(Instant::now);
    let end = workers.iter().map(|w| w.end).max().unwrap_or(begin);
    let elapsed = end.saturating_duration_since(begin).as_secs_f64().max(1e-9);
    let mut lat: Vec<u64> = workers
        .iter()
        .flat_map(|w| w.lat_ns.iter().copied())
        .collect();
    lat.sort_unstable();
    let ok = lat.len() as u64;
    #[allow(
        clippy::cast_precision_loss,
        reason = "request counts are far below 2^52"
    )]
    let rps = ok as f64 / elapsed;
    Outcome {
        rps,
        p50_ms: pct(&lat, 0.50),
        p90_ms: pct(&lat, 0.90),
        p99_ms: pct(&lat, 0.99),
        max_ms: pct(&lat, 1.0),
        ok,
        errors: workers.iter().map(|w| w.errors).sum(),
        elapsed_s: elapsed,
        exhausted: workers.iter().any(|w| w.exhausted),
        first_error: workers.iter().find_map(|w| w.first_error.clone()),
    }
}
