//! SECURITY-TESTS.md A01–A05 and A07 against the store: 1,000 records with a signed checkpoint
//! every 100, tampered by editing the SQLite file directly, caught by `firebreak audit verify`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use firebreak_store::{AuditDraft, AuditSettings, SqliteStore, Store};
use firebreak_testkit::{ManualClock, UnixTime};
use serde_json::json;

struct Log {
    _dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
}

/// Writes 1,000 records (checkpoint every 100) through the real writer, from 64 tasks.
async fn log_of_1000() -> Log {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\npublic_url = \"https://fb.test\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let key = firebreak_server::audit::load_or_create_key(&data).unwrap();
    let db = data.join("firebreak.db");
    let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
    let store = Arc::new(
        SqliteStore::open(
            &db,
            AuditSettings {
                chain: firebreak_store::BROKER_CHAIN.to_owned(),
                key,
                checkpoint_every: 100,
                checkpoint_interval_ms: 3_600_000,
                clock: Arc::new(clock),
                queue: 4096,
            },
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for i in 0..1000u64 {
                if i % 64 != w {
                    continue;
                }
                let mut fields = serde_json::Map::new();
                fields.insert("kind".into(), json!("decision"));
                fields.insert("agent".into(), json!(format!("agent-{w}")));
                fields.insert("decision".into(), json!("allow"));
                fields.insert("n".into(), json!(i));
                store
                    .append_audit(AuditDraft {
                        fields,
                        time: UnixTime::from_secs(1_800_000_000),
                        session: None,
                    })
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1000);
    drop(store);
    Log {
        _dir: dir,
        config,
        db,
    }
}

fn verify(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sql(db: &Path, stmt: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(stmt).unwrap();
}

#[tokio::test]
async fn clean_log_of_1000_verifies() {
    let log = log_of_1000().await;
    let (code, out, err) = verify(&log.config, &["--strict"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1000 records and 10 checkpoints"), "{out}");
}

/// A01: one field of seq 437 changed in the file, no hash touched.
#[tokio::test]
async fn a01_store_modified_record_named() {
    let log = log_of_1000().await;
    sql(
        &log.db,
        "UPDATE audit_records SET json = replace(json, '\"decision\":\"allow\"', '\"decision\":\"deny\"') WHERE seq = 437",
    );
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("seq 437") && err.contains("record hash mismatch"),
        "{err}"
    );
}

/// A02: seq 437 deleted.
#[tokio::test]
async fn a02_store_deleted_record_named() {
    let log = log_of_1000().await;
    sql(&log.db, "DELETE FROM audit_records WHERE seq = 437");
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("437"), "{err}");
}

/// A03: the stored positions of 437 and 438 exchanged (each keeps its own content).
#[tokio::test]
async fn a03_store_reordered_records_named() {
    let log = log_of_1000().await;
    sql(
        &log.db,
        "UPDATE audit_records SET json = CASE seq
             WHEN 437 THEN (SELECT json FROM audit_records WHERE seq = 438)
             WHEN 438 THEN (SELECT json FROM audit_records WHERE seq = 437) END
         WHERE seq IN (437, 438)",
    );
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("437"), "{err}");
}

/// A04: the tail after a checkpoint dropped; and a tail past the last checkpoint dropped.
#[tokio::test]
async fn a04_store_truncated_tail() {
    let log = log_of_1000().await;
    sql(&log.db, "DELETE FROM audit_records WHERE seq > 950");
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("checkpoint tree_size 1000 > log length 950"),
        "{err}"
    );
    // Second case: last checkpoint at 900, 981–1000 dropped → warning, and --strict fails.
    let log = log_of_1000().await;
    sql(
        &log.db,
        "DELETE FROM audit_checkpoints WHERE tree_size = 1000; DELETE FROM audit_records WHERE seq > 980",
    );
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("80 records after the last checkpoint are unanchored"),
        "{err}"
    );
    let (code, _, _) = verify(&log.config, &["--strict"]);
    assert_eq!(code, 1);
}

/// A05: a checkpoint re-signed by another key, and one whose root is wrong.
#[tokio::test]
async fn a05_store_checkpoint_wrong_key_or_root() {
    let log = log_of_1000().await;
    let other = firebreak_audit::AuditKey::generate().unwrap();
    let forged = firebreak_audit::sign_checkpoint(
        "broker",
        500,
        &[7u8; 32],
        UnixTime::from_secs(1_800_000_000),
        &other,
    )
    .unwrap();
    let c = rusqlite::Connection::open(&log.db).unwrap();
    c.execute(
        "UPDATE audit_checkpoints SET json = ?1 WHERE tree_size = 500",
        [forged.to_string()],
    )
    .unwrap();
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("500") && err.contains("signature not by a trusted key"),
        "{err}"
    );
    // Correctly signed by the real key but over a wrong root.
    let log = log_of_1000().await;
    let data = log.config.parent().unwrap().join("data");
    let key = firebreak_server::audit::load_or_create_key(&data).unwrap();
    let wrong = firebreak_audit::sign_checkpoint(
        "broker",
        500,
        &[7u8; 32],
        UnixTime::from_secs(1_800_000_000),
        &key,
    )
    .unwrap();
    let c = rusqlite::Connection::open(&log.db).unwrap();
    c.execute(
        "UPDATE audit_checkpoints SET json = ?1 WHERE tree_size = 500",
        [wrong.to_string()],
    )
    .unwrap();
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("500") && err.contains("root mismatch"),
        "{err}"
    );
}

/// A07: seq 437 edited and every later prev_hash and hash recomputed (no signing key): the
/// first checkpoint covering 437 fails its root check.
#[tokio::test]
async fn a07_store_full_rechain_caught() {
    let log = log_of_1000().await;
    let c = rusqlite::Connection::open(&log.db).unwrap();
    let rows: Vec<(i64, String)> = {
        let mut s = c
            .prepare("SELECT seq, json FROM audit_records ORDER BY seq")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut prev = String::new();
    for (seq, json) in rows {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        if seq == 437 {
            v["decision"] = json!("deny");
        }
        if seq >= 437 {
            v["prev_hash"] = json!(prev);
            v.as_object_mut().unwrap().remove("hash");
            let bytes = firebreak_audit::canonicalize(&v).unwrap();
            let h = firebreak_audit::hex(&firebreak_audit::sha256(&bytes));
            v["hash"] = json!(h);
            c.execute(
                "UPDATE audit_records SET json = ?1 WHERE seq = ?2",
                rusqlite::params![
                    String::from_utf8(firebreak_audit::canonicalize(&v).unwrap()).unwrap(),
                    seq
                ],
            )
            .unwrap();
        }
        prev = v["hash"].as_str().unwrap().to_owned();
    }
    let (code, _, err) = verify(&log.config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("500") && err.contains("root mismatch"),
        "{err}"
    );
}

/// Export, then verify offline with only the public key; a corrupt line is named.
#[tokio::test]
async fn export_verifies_offline_and_corrupt_line_is_named() {
    let log = log_of_1000().await;
    let dir = log.config.parent().unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "export", "--config"])
        .arg(&log.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let export = dir.join("export.jsonl");
    std::fs::write(&export, &out.stdout).unwrap();
    let key = dir.join("pub.jwk");
    let k = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "key", "--config"])
        .arg(&log.config)
        .output()
        .unwrap();
    std::fs::write(&key, &k.stdout).unwrap();
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_firebreak"))
            .args(["audit", "verify", "--file"])
            .arg(file)
            .arg("--key")
            .arg(&key)
            .output()
            .unwrap()
    };
    let ok = run(&export);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[11] = "{not json";
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let r = run(&bad);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("line 12"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Without --key an export is refused: it carries no key worth trusting.
    let nokey = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "verify", "--file"])
        .arg(&export)
        .output()
        .unwrap();
    assert_eq!(nokey.status.code(), Some(2));
    // OCSF export: one event per record.
    let o = Command::new(env!("CARGO_BIN_EXE_firebreak"))
        .args(["audit", "export", "--format", "ocsf", "--config"])
        .arg(&log.config)
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1000);
    assert_eq!(events[0]["class_uid"], 6003);
}
