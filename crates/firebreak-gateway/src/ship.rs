//! A standalone gateway ships its own audit chain to the broker (DESIGN.md §8): a background
//! task reads the store's lines of the chain from the last acknowledged seq and posts them as
//! JSONL, exactly as `firebreak audit export` prints them, to `POST /v1/audit/ingest`, as the
//! gateway's `[[client]]`.
//!
//! Nothing here is on the request path: each record is durable in the gateway's own store before
//! its request is forwarded, so a broker that is down or refuses the chain costs lag, not
//! records. The acknowledged seq is kept in `shipped.seq` beside the store, written only after
//! the broker answered 200. The broker skips records it already holds, so a stale file (a crash
//! between the answer and the rename) only re-sends a batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use firebreak_enforce::BrokerLink;
use firebreak_store::{AuditLine, Store};
use http::{Method, StatusCode};
use serde_json::Value;

/// The broker's endpoint for another chain.
const INGEST_PATH: &str = "/v1/audit/ingest";

/// How the shipper paces itself.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    /// The chain shipped: the gateway's client id, which the broker also takes it as.
    pub chain: String,
    /// Where the acknowledged seq is kept (`<data_dir>/shipped.seq`).
    pub state_file: PathBuf,
    /// At most this many records per request.
    pub batch_records: u32,
    /// At most about this many body bytes per request (the broker refuses bodies over 8 MiB;
    /// a batch always holds at least one record).
    pub batch_bytes: usize,
    /// The pause when everything is shipped.
    pub idle: Duration,
    /// The longest pause between tries while the broker cannot be reached (doubling from
    /// `idle`).
    pub max_backoff: Duration,
    /// The pause after the broker refused a batch (a 4xx: key not registered, role missing, a
    /// chain it does not accept). Someone has to fix the config, so try seldom, but keep trying.
    pub refused_retry: Duration,
}

impl ShipConfig {
    /// The defaults for `chain`, keeping its state in `state_file`.
    pub fn new(chain: String, state_file: PathBuf) -> Self {
        Self {
            chain,
            state_file,
            batch_records: 1000,
            batch_bytes: 4 << 20,
            idle: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            refused_retry: Duration::from_secs(30),
        }
    }
}

/// What the metrics page shows of the shipper.
#[derive(Debug, Default)]
pub struct ShipMetrics {
    /// Records of the chain the broker has not acknowledged
    /// (`firebreak_audit_ship_lag_records`).
    lag: AtomicU64,
    /// Tries that shipped nothing because the broker failed or refused
    /// (`firebreak_audit_ship_failures_total`).
    failures: AtomicU64,
}

impl ShipMetrics {
    /// Records not acknowledged yet.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Failed tries so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The shipping task's state.
pub struct Shipper {
    store: Arc<dyn Store>,
    link: BrokerLink,
    cfg: ShipConfig,
    metrics: Arc<ShipMetrics>,
    /// The broker's head of the chain as last acknowledged.
    acked: u64,
    /// The largest checkpoint tree size acknowledged (in memory: re-sending one is harmless).
    acked_checkpoint: u64,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("chain", &self.cfg.chain)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

/// Why one round did not ship.
#[derive(Debug)]
enum Failure {
    /// The broker could not be reached, timed out, failed (5xx), or the store failed.
    Unreachable(String),
    /// Another ingest of this chain moved the broker's head first: retry at once.
    HeadMoved,
    /// The broker refused the batch (4xx): its status and problem detail.
    Refused(StatusCode, String),
}

/// What one successful round did.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Sent a batch; there may be more.
    Shipped,
    /// Nothing new.
    Idle,
}

impl Shipper {
    /// A shipper for `cfg.chain` of `store`, starting from the seq in `cfg.state_file`.
    pub fn new(store: Arc<dyn Store>, link: BrokerLink, cfg: ShipConfig) -> Self {
        let acked = read_state(&cfg.state_file);
        Self {
            store,
            link,
            cfg,
            metrics: Arc::default(),
            acked,
            acked_checkpoint: 0,
        }
    }

    /// Its lag and failure count, for the metrics page.
    pub fn metrics(&self) -> Arc<ShipMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Ships until `stop` turns true, then once more for at most `final_within` (records
    /// written while the listeners drained), and returns.
    pub async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        final_within: Duration,
    ) {
        tracing::info!(
            chain = self.cfg.chain,
            from_seq = self.acked,
            "audit shipping to the broker"
        );
        // One log line per failure streak (and per change of its kind), not one per try.
        let mut failing: Option<&'static str> = None;
        let mut backoff = self.cfg.idle;
        while !*stop.borrow() {
            let round = self.round().await;
            if matches!(round, Err(Failure::Unreachable(_) | Failure::Refused(..))) {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
            }
            let pause = match round {
                Ok(round) => {
                    if failing.take().is_some() {
                        tracing::info!(
                            chain = self.cfg.chain,
                            lag = self.metrics.lag(),
                            "audit shipping resumed"
                        );
                    }
                    backoff = self.cfg.idle;
                    match round {
                        Round::Shipped => Duration::ZERO,
                        Round::Idle => self.cfg.idle,
                    }
                }
                Err(Failure::HeadMoved) => {
                    tracing::debug!(chain = self.cfg.chain, "broker head moved; retrying");
                    Duration::from_millis(50)
                }
                Err(Failure::Unreachable(e)) => {
                    if failing != Some("unreachable") {
                        failing = Some("unreachable");
                        tracing::warn!(
                            chain = self.cfg.chain,
                            error = e,
                            lag = self.metrics.lag(),
                            "audit shipping failed; records stay in the local chain and ship once the broker answers"
                        );
                    }
                    let p = backoff;
                    backoff = backoff.saturating_mul(2).min(self.cfg.max_backoff);
                    p
                }
                Err(Failure::Refused(status, detail)) => {
                    if failing != Some("refused") {
                        failing = Some("refused");
                        tracing::error!(
                            chain = self.cfg.chain,
                            status = status.as_u16(),
                            problem = detail,
                            lag = self.metrics.lag(),
                            "the broker refused this gateway's audit chain (is this client's audit_key registered in its [[client]], with role stream?); records stay in the local chain"
                        );
                    }
                    self.cfg.refused_retry
                }
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                r = stop.changed() => if r.is_err() {
                    // The stopping side is gone: nobody can ask for the final batch any more.
                    break;
                },
            }
        }
        let flushed = tokio::time::timeout(final_within, async {
            loop {
                match self.round().await {
                    Ok(Round::Idle) => return true,
                    Ok(Round::Shipped) => {}
                    Err(Failure::HeadMoved | Failure::Unreachable(_)) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(Failure::Refused(..)) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let lag = self.metrics.lag();
        if flushed {
            tracing::info!(
                chain = self.cfg.chain,
                "audit shipping stopped; all shipped"
            );
        } else {
            tracing::warn!(
                chain = self.cfg.chain,
                lag,
                "audit shipping stopped with records not shipped; they ship at the next start"
            );
        }
    }

    /// Reads what the broker lacks and sends one batch of it.
    async fn round(&mut self) -> Result<Round, Failure> {
        let store_err =
            |e: firebreak_store::StoreError| Failure::Unreachable(format!("store: {e}"));
        let head = self
            .store
            .audit_head(&self.cfg.chain)
            .await
            .map_err(store_err)?
            .map_or(0, |(seq, _)| seq);
        if self.acked > head {
            // The state file belongs to another database (replaced, restored): start over, the
            // broker skips what it holds and refuses what differs.
            tracing::warn!(
                chain = self.cfg.chain,
                shipped = self.acked,
                head,
                "shipped.seq is ahead of the local chain; shipping from its start"
            );
            self.acked = 0;
            self.acked_checkpoint = 0;
        }
        self.metrics
            .lag
            .store(head.saturating_sub(self.acked), Ordering::Relaxed);
        // One record of overlap: a checkpoint cut by time after the last batch covers exactly
        // the last acknowledged record, and the store lists it only after that record.
        let lines = self
            .store
            .audit_lines(
                &self.cfg.chain,
                self.acked.saturating_sub(1),
                self.cfg.batch_records,
            )
            .await
            .map_err(store_err)?;
        let batch = Batch::of(
            &lines,
            self.acked,
            self.acked_checkpoint,
            self.cfg.batch_bytes,
        );
        if batch.is_empty() {
            return Ok(Round::Idle);
        }
        let answer = self
            .link
            .send(
                Method::POST,
                INGEST_PATH,
                "application/x-ndjson",
                Bytes::from(batch.body),
            )
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::CONFLICT => return Err(Failure::HeadMoved),
            s if s.is_client_error() => {
                if s == StatusCode::BAD_REQUEST {
                    // The chain was refused as it continued: the broker's copy may be behind the
                    // state file (restored from a backup). The next try starts at the chain's
                    // start; the broker skips what it already holds.
                    self.acked = 0;
                    self.acked_checkpoint = 0;
                }
                return Err(Failure::Refused(s, problem_detail(&answer.body)));
            }
            s => {
                return Err(Failure::Unreachable(format!(
                    "{INGEST_PATH}: HTTP {s}: {}",
                    problem_detail(&answer.body)
                )));
            }
        }
        let broker_head = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("head_seq").and_then(Value::as_u64))
            .ok_or_else(|| {
                Failure::Unreachable(format!("{INGEST_PATH}: answer without head_seq"))
            })?;
        // The broker's head, not what was sent: after a stale state file it may be further on.
        self.acked = broker_head;
        self.acked_checkpoint = self.acked_checkpoint.max(batch.last_checkpoint);
        self.metrics
            .lag
            .store(head.saturating_sub(self.acked), Ordering::Relaxed);
        tracing::debug!(
            chain = self.cfg.chain,
            records = batch.records,
            checkpoints = batch.checkpoints,
            acked = self.acked,
            lag = self.metrics.lag(),
            "audit batch shipped"
        );
        if let Err(e) = write_state(&self.cfg.state_file, self.acked).await {
            // Harmless for the broker (re-sent records are skipped); the next start re-sends.
            tracing::warn!(file = %self.cfg.state_file.display(), error = %e, "cannot record the shipped seq");
        }
        Ok(Round::Shipped)
    }
}

/// One request's worth of lines.
#[derive(Debug, Default)]
struct Batch {
    body: String,
    records: u64,
    checkpoints: u64,
    last_record: u64,
    last_checkpoint: u64,
}

impl Batch {
    /// The records after `acked` and the checkpoints after `acked_checkpoint` among `lines`
    /// (store order: each checkpoint right after the record it covers up to), cut at a record
    /// boundary once about `max_bytes` are in. A checkpoint beyond the records sent (committed
    /// between the store's two reads) waits for the batch that carries its records: the broker
    /// checks every checkpoint against the records it holds.
    fn of(lines: &[AuditLine], acked: u64, acked_checkpoint: u64, max_bytes: usize) -> Self {
        let mut b = Self {
            last_record: acked,
            ..Self::default()
        };
        for l in lines {
            if l.checkpoint {
                if l.seq > acked_checkpoint && l.seq <= b.last_record {
                    b.push(&l.json);
                    b.checkpoints += 1;
                    b.last_checkpoint = l.seq;
                }
                continue;
            }
            if l.seq <= acked {
                continue;
            }
            if b.records > 0 && b.body.len().saturating_add(l.json.len()) >= max_bytes {
                break;
            }
            b.push(&l.json);
            b.records += 1;
            b.last_record = l.seq;
        }
        b
    }

    fn push(&mut self, json: &str) {
        self.body.push_str(json);
        self.body.push('\n');
    }

    fn is_empty(&self) -> bool {
        self.records == 0 && self.checkpoints == 0
    }
}

/// The broker's problem `detail` (a reason code) with its `title`, or the start of the body.
fn problem_detail(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
            format!("{} ({})", field("detail"), field("title"))
        }
        Err(_) => String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
    }
}

/// The acknowledged seq, 0 when the file is missing or unreadable (re-sending is harmless).
fn read_state(path: &std::path::Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(file = %path.display(), "shipped.seq does not parse; shipping from the chain's start");
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read shipped.seq; shipping from the chain's start");
            0
        }
    }
}

/// Writes the seq to a temp file and renames it over the state file, so a crash leaves the old
/// value or the new one, never a torn one.
async fn write_state(path: &std::path::Path, seq: u64) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, format!("{seq}\n")).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn rec(seq: u64) -> AuditLine {
        AuditLine {
            chain: "gw".into(),
            seq,
            checkpoint: false,
            json: format!("{{\"seq\":{seq}}}"),
        }
    }

    fn cp(size: u64) -> AuditLine {
        AuditLine {
            chain: "gw".into(),
            seq: size,
            checkpoint: true,
            json: format!("{{\"kind\":\"checkpoint\",\"tree_size\":{size}}}"),
        }
    }

    #[test]
    fn batches_skip_what_the_broker_holds_and_keep_late_checkpoints() {
        // Record 3 was acknowledged before its checkpoint was cut: the checkpoint still goes.
        let lines = [rec(3), cp(3), rec(4), rec(5), cp(5)];
        let b = Batch::of(&lines, 3, 0, usize::MAX);
        assert_eq!((b.records, b.checkpoints), (2, 2));
        assert_eq!((b.last_record, b.last_checkpoint), (5, 5));
        assert!(!b.body.contains("\"seq\":3}"));
        // Nothing new: empty.
        let b = Batch::of(&[rec(5), cp(5)], 5, 5, usize::MAX);
        assert!(b.is_empty());
        // A checkpoint beyond the records read waits.
        let b = Batch::of(&[rec(5), cp(6)], 5, 5, usize::MAX);
        assert!(b.is_empty());
    }

    #[test]
    fn batches_are_cut_at_a_record_but_never_empty() {
        let lines = [rec(1), rec(2), cp(2), rec(3)];
        let b = Batch::of(&lines, 0, 0, 1);
        assert_eq!((b.records, b.last_record), (1, 1));
        let b = Batch::of(&lines, 0, 0, 30);
        assert_eq!((b.records, b.checkpoints, b.last_record), (2, 1, 2));
    }

    #[test]
    fn problem_details_are_read_or_quoted() {
        let p = br#"{"type":"x","title":"Forbidden","status":403,"detail":"forbidden"}"#;
        assert_eq!(problem_detail(p), "forbidden (Forbidden)");
        assert_eq!(problem_detail(b"oops"), "oops");
    }

    #[tokio::test]
    async fn state_file_round_trips_and_tolerates_garbage() {
        let dir = std::env::temp_dir().join(format!("fb-ship-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("shipped.seq");
        assert_eq!(read_state(&f), 0);
        write_state(&f, 42).await.unwrap();
        assert_eq!(read_state(&f), 42);
        std::fs::write(&f, "nope").unwrap();
        assert_eq!(read_state(&f), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
