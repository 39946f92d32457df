//! Sealing a record: the chain members are added, the record is canonicalised, and its hash links
//! it to the one before. Storing it and advancing the head are the caller's job.

use crate::{
    AuditError, FORMAT_VERSION, GENESIS_HASH, MAX_SAFE_INTEGER, hex, jcs::canonical_string, merkle,
    parse_hash_hex, sha256,
};
use firebreak_core::{UnixTime, format_rfc3339_millis};
use serde_json::{Map, Value};

/// Members that [`seal`] writes itself; the record fields may not set them.
pub(crate) const RESERVED: [&str; 6] = ["v", "seq", "chain", "time", "prev_hash", "hash"];

/// The last record of a chain (seq 0 and [`GENESIS_HASH`] for an empty chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// The seq of the last record; 0 before the first.
    pub seq: u64,
    /// The `hash` of the last record, lower hex; [`GENESIS_HASH`] before the first.
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// A record ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The record's seq (the head's plus one).
    pub seq: u64,
    /// Lower-hex SHA-256 of `leaf`.
    pub hash: String,
    /// JCS of the record without `hash`: the Merkle leaf data.
    pub leaf: Vec<u8>,
    /// RFC 9162 leaf hash, SHA-256(0x00 ‖ `leaf`).
    pub leaf_hash: [u8; 32],
    /// JCS of the full record with `hash`: what is stored and exported.
    pub json: String,
}

/// Seals one record.
///
/// Adds `v` = [`FORMAT_VERSION`], `seq` = `head.seq + 1`, `chain`, `time` (RFC 3339 UTC with
/// milliseconds), `prev_hash` = `head.hash`, then `hash`. `fields` holds the kind-specific
/// members (`kind`, `agent`, `session`, `decision`, `reasons`, …). The caller advances its head to
/// `(sealed.seq, sealed.hash)` once the record is stored.
///
/// # Errors
/// [`AuditError::ReservedField`] if `fields` sets one of `v`, `seq`, `chain`, `time`,
/// `prev_hash`, `hash`; [`AuditError::CheckpointKind`] for `kind: "checkpoint"`;
/// [`AuditError::EmptyChain`], [`AuditError::InvalidHeadHash`], [`AuditError::SeqOverflow`] for a
/// bad chain or head; [`AuditError::NonFiniteNumber`] from canonicalisation.
pub fn seal(
    mut fields: Map<String, Value>,
    chain: &str,
    time: UnixTime,
    head: &ChainHead,
) -> Result<Sealed, AuditError> {
    if let Some(reserved) = RESERVED.iter().find(|k| fields.contains_key(**k)) {
        return Err(AuditError::ReservedField((*reserved).to_owned()));
    }
    if fields.get("kind").and_then(Value::as_str) == Some("checkpoint") {
        return Err(AuditError::CheckpointKind);
    }
    if chain.is_empty() {
        return Err(AuditError::EmptyChain);
    }
    if parse_hash_hex(&head.hash).is_none() {
        return Err(AuditError::InvalidHeadHash);
    }
    let seq = head
        .seq
        .checked_add(1)
        .filter(|s| *s <= MAX_SAFE_INTEGER)
        .ok_or(AuditError::SeqOverflow(head.seq))?;

    fields.insert("v".to_owned(), Value::from(FORMAT_VERSION));
    fields.insert("seq".to_owned(), Value::from(seq));
    fields.insert("chain".to_owned(), Value::from(chain));
    fields.insert("time".to_owned(), Value::from(format_rfc3339_millis(time)));
    fields.insert("prev_hash".to_owned(), Value::from(head.hash.as_str()));
    // INVARIANT (leaf = hashed bytes): the Merkle leaf and the chain hash cover the same bytes,
    // the JCS of the record without `hash`, so a checkpoint anchors exactly what the chain links.
    // The hash is not known before the leaf is, so the leaf is serialised first and the stored
    // form is the leaf with `hash` spliced in at its sorted place (one serialisation of each
    // member, checked against a full re-serialisation in the tests).
    let members = crate::jcs::Members::of(&fields)?;
    let leaf = members.join().into_bytes();
    let hash = hex(&sha256(&leaf));
    let leaf_hash = merkle::leaf_hash(&leaf);
    let json = members.join_with("hash", &hash);
    debug_assert_eq!(
        Some(json.as_str()),
        canonical_string(&{
            let mut f = fields.clone();
            f.insert("hash".to_owned(), Value::from(hash.as_str()));
            Value::Object(f)
        })
        .ok()
        .as_deref()
    );
    Ok(Sealed {
        seq,
        hash,
        leaf,
        leaf_hash,
        json,
    })
}
