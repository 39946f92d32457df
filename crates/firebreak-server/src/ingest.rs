//! `POST /v1/audit/ingest`: a standalone gateway ships its own audit chain (chain id = its client
//! id, DESIGN.md §8). Every record is checked as the offline verifier would (continuity, hash,
//! `prev_hash`), every checkpoint's signature under the key registered for that client and its
//! root against the chain's tree, before anything is stored; the batch lands atomically or not
//! at all. Re-sending records already stored (a retry) is accepted and skipped.

use firebreak_audit::merkle::{leaf_hash, root};
use firebreak_audit::{AuditPublicKey, canonicalize, hex, sha256, verify_checkpoint};
use firebreak_store::{IngestRecord, Store, StoreError};
use serde_json::Value;

/// Why an ingest was refused; the line is 1-based in the request body.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A line that is not a JSON object, or lacks a member the format requires.
    #[error("line {line}: malformed ({what})")]
    Malformed {
        /// Line.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A record or checkpoint names another chain than the client's.
    #[error("line {line}: chain is not the client's")]
    WrongChain {
        /// Line.
        line: usize,
    },
    /// A record does not continue the chain (gap, reorder, fork, edited content).
    #[error("line {line}: seq {seq} does not continue the chain ({what})")]
    Broken {
        /// Line.
        line: usize,
        /// The record's seq.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A checkpoint's signature or root is not right.
    #[error("line {line}: checkpoint refused ({what})")]
    Checkpoint {
        /// Line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The store failed or another ingest moved the head first.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Verifies and stores one batch for `chain`; returns (records accepted, new head seq).
///
/// # Errors
/// The first refused line, or the store's failure.
pub async fn ingest(
    store: &dyn Store,
    chain: &str,
    key: &AuditPublicKey,
    body: &str,
) -> Result<(u64, u64), IngestError> {
    let (head_seq, head_hash) = store
        .audit_head(chain)
        .await?
        .unwrap_or((0, firebreak_audit::GENESIS_HASH.to_owned()));
    let mut leaves = store.audit_leaf_hashes(chain, head_seq).await?;
    let mut seq = head_seq;
    let mut prev = head_hash;
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for (i, text) in body.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text).map_err(|_| IngestError::Malformed {
            line,
            what: "not JSON",
        })?;
        let obj = v.as_object().ok_or(IngestError::Malformed {
            line,
            what: "not an object",
        })?;
        if obj.get("chain").and_then(Value::as_str) != Some(chain) {
            return Err(IngestError::WrongChain { line });
        }
        if obj.get("kind").and_then(Value::as_str) == Some("checkpoint") {
            let cp = verify_checkpoint(&v, key).map_err(|e| IngestError::Checkpoint {
                line,
                what: e.to_string(),
            })?;
            let size = usize::try_from(cp.tree_size).unwrap_or(usize::MAX);
            let covered = leaves.get(..size).ok_or(IngestError::Checkpoint {
                line,
                what: format!("tree_size {} > log length {seq}", cp.tree_size),
            })?;
            if root(covered) != cp.root {
                return Err(IngestError::Checkpoint {
                    line,
                    what: "root mismatch".into(),
                });
            }
            checkpoints.push((cp.tree_size, text.to_owned()));
            continue;
        }
        let rseq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or(IngestError::Malformed { line, what: "seq" })?;
        if obj.get("v").and_then(Value::as_u64) != Some(firebreak_audit::FORMAT_VERSION) {
            return Err(IngestError::Malformed { line, what: "v" });
        }
        let hash = obj
            .get("hash")
            .and_then(Value::as_str)
            .ok_or(IngestError::Malformed { line, what: "hash" })?;
        let mut unhashed = obj.clone();
        unhashed.remove("hash");
        let leaf = canonicalize(&Value::Object(unhashed)).map_err(|_| IngestError::Malformed {
            line,
            what: "canonical form",
        })?;
        if hex(&sha256(&leaf)) != hash {
            return Err(IngestError::Broken {
                line,
                seq: rseq,
                what: "record hash mismatch",
            });
        }
        let lh = leaf_hash(&leaf);
        if rseq <= head_seq {
            // A retry of a record already stored: accepted only if it is that very record.
            let stored = leaves.get(usize::try_from(rseq).unwrap_or(usize::MAX).wrapping_sub(1));
            if stored != Some(&lh) {
                return Err(IngestError::Broken {
                    line,
                    seq: rseq,
                    what: "differs from the stored record",
                });
            }
            continue;
        }
        if rseq != seq + 1 {
            return Err(IngestError::Broken {
                line,
                seq: rseq,
                what: "gap or reorder",
            });
        }
        if obj.get("prev_hash").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(IngestError::Broken {
                line,
                seq: rseq,
                what: "prev_hash mismatch",
            });
        }
        seq = rseq;
        prev = hash.to_owned();
        leaves.push(lh);
        records.push(IngestRecord {
            seq: rseq,
            hash: hash.to_owned(),
            leaf_hash: lh,
            json: text.to_owned(),
            session: obj
                .get("session")
                .and_then(Value::as_str)
                .map(str::to_owned),
            time_ms: obj
                .get("time")
                .and_then(Value::as_str)
                .and_then(firebreak_core::parse_rfc3339_millis)
                .ok_or(IngestError::Malformed { line, what: "time" })?
                .as_millis(),
        });
    }
    let accepted = u64::try_from(records.len()).unwrap_or(u64::MAX);
    if accepted > 0 || !checkpoints.is_empty() {
        store
            .ingest_audit(chain, head_seq, records, checkpoints)
            .await?;
    }
    Ok((accepted, seq))
}
