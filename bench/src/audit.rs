//! The audit benchmark: durable appends/s through the store's writer (canonical JSON, hash chain,
//! Merkle checkpoints, group commit, `synchronous=FULL`) from concurrent writers, beside raw
//! SQLite inserts of rows of the same size in 64-row transactions on the same disk, interleaved
//! round by round. One JSON line per figure on stdout.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use firebreak_core::{SystemClock, UnixTime};
use firebreak_store::{AuditDraft, AuditSettings, SqliteStore, Store};
use serde_json::json;

/// A record shaped like an exchange's.
fn draft(i: u64) -> AuditDraft {
    let mut f = serde_json::Map::new();
    f.insert("kind".into(), json!("exchange"));
    f.insert("action".into(), json!("exchange"));
    f.insert("agent".into(), json!("deploy-bot"));
    f.insert("session".into(), json!(format!("s_{i:024}")));
    f.insert("depth".into(), json!(0));
    f.insert("target".into(), json!("github-tools"));
    f.insert(
        "audience".into(),
        json!("https://gw.acme.example/mcp/github"),
    );
    f.insert("jti".into(), json!(format!("t_{i:024}")));
    f.insert("scope".into(), json!("repo:read"));
    f.insert("exp".into(), json!(1_800_000_300));
    f.insert("subject_issuer".into(), json!("github"));
    f.insert("request_id".into(), json!(format!("{i:016}")));
    f.insert("decision".into(), json!("allow"));
    f.insert(
        "reasons".into(),
        json!([{ "policy": "grant:deploy-bot:github-tools" }]),
    );
    f.insert("policy_version".into(), json!("allowlist-97fea1952bbd5597"));
    AuditDraft {
        fields: f,
        time: UnixTime::from_millis(1_800_000_000_000),
        session: None,
    }
}

fn ours_round(dir: &Path, round: usize, writers: usize, seconds: f64) -> (f64, usize) {
    let path = dir.join(format!("audit-ours-{round}.db"));
    let _ = std::fs::remove_file(&path);
    let settings = AuditSettings {
        chain: firebreak_store::BROKER_CHAIN.to_owned(),
        key: firebreak_audit::AuditKey::generate().unwrap(),
        checkpoint_every: 1000,
        checkpoint_interval_ms: 10_000,
        clock: Arc::new(SystemClock),
        queue: 65_536,
    };
    let store = Arc::new(SqliteStore::open(&path, settings).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (store, done, stop) = (Arc::clone(&store), Arc::clone(&done), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut i = w as u64;
                while !stop.load(Ordering::Relaxed) {
                    store.append_audit(draft(i)).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += writers as u64;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    // The row size the raw baseline must match: one sealed record's JSON.
    let sealed = firebreak_audit::seal(
        draft(0).fields,
        "broker",
        UnixTime::from_millis(0),
        &firebreak_audit::ChainHead::genesis(),
    )
    .unwrap();
    drop(store);
    let _ = std::fs::remove_file(&path);
    (n as f64 / secs, sealed.json.len())
}

fn raw_round(dir: &Path, round: usize, row_bytes: usize, seconds: f64) -> f64 {
    let path = dir.join(format!("audit-raw-{round}.db"));
    let _ = std::fs::remove_file(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE t (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, leaf BLOB NOT NULL, json TEXT NOT NULL);",
    )
    .unwrap();
    let row = "x".repeat(row_bytes);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t (seq, hash, leaf, json) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            for _ in 0..64 {
                n += 1;
                st.execute(rusqlite::params![
                    n as i64,
                    "0".repeat(64),
                    vec![0u8; 32],
                    row
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(c);
    let _ = std::fs::remove_file(&path);
    n as f64 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the audit benchmark.
pub fn audit_cmd(dir: &Path, writers: usize, seconds: f64, rounds: usize) {
    std::fs::create_dir_all(dir).unwrap();
    // Warm-up of both, not counted.
    let (_, row) = ours_round(dir, 99, writers, 1.0);
    raw_round(dir, 99, row, 1.0);
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for r in 0..rounds.max(1) {
        ours.push(ours_round(dir, r, writers, seconds).0);
        raw.push(raw_round(dir, r, row, seconds));
        eprintln!(
            "firebreak-bench: audit round {r}: ours {:.0}/s raw {:.0}/s",
            ours[r], raw[r]
        );
    }
    let (o, p) = (median(&mut ours.clone()), median(&mut raw.clone()));
    println!(
        "{}",
        json!({
            "metric": "audit_durable_appends",
            "ours": o.round(),
            "peer": p.round(),
            "ratio": (o / p * 1000.0).round() / 1000.0,
            "unit": "records/s",
            "peer_name": "raw SQLite inserts, 64-row transactions, WAL synchronous=FULL, same row size",
            "goal": "ours >= 50000 and ratio >= 0.25",
            "goal_met": o >= 50_000.0 && o / p >= 0.25,
            "rps_runs": ours,
            "peer_rps_runs": raw,
            "runs": rounds,
            "notes": format!("{writers} concurrent writers through SqliteStore::append_audit (JCS + SHA-256 chain + Merkle checkpoint every 1000 + group commit); row {row} bytes; {seconds} s rounds interleaved; process pinned by the caller; files in {}", dir.display()),
        })
    );
}
