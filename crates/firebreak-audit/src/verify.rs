//! Offline verification of an export: JSONL of records and checkpoints in the order written,
//! several chains interleaved. Everything is recomputed from the parsed JSON (hashes, Merkle
//! roots, signed bytes); nothing in the export is trusted but the keys the caller passes.
//!
//! The first failure in stream order is reported, naming its chain and seq (or the checkpoint's
//! tree size, or the line for a line that does not parse).

use crate::merkle::{self, PrefixTree};
use crate::{
    AuditPublicKey, FORMAT_VERSION, GENESIS_HASH, MAX_SAFE_INTEGER, canonicalize, hex,
    parse_hash_hex, sha256,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

/// What a verification trusts and how strict it is.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions<'a> {
    /// The audit public keys a checkpoint may be signed by (matched by `key_id`).
    pub keys: &'a [AuditPublicKey],
    /// Fail, rather than warn, when records follow a chain's last checkpoint.
    pub strict: bool,
}

/// The counts of a verified export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Records verified, over all chains.
    pub records: u64,
    /// Checkpoints verified, over all chains.
    pub checkpoints: u64,
    /// One entry per chain, in order of first appearance.
    pub chains: Vec<ChainReport>,
    /// Non-fatal findings, e.g. unanchored records outside `strict` mode.
    pub warnings: Vec<String>,
}

/// The counts of one verified chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// The chain id (`broker` or a gateway's client id).
    pub chain: String,
    /// Records in the chain.
    pub records: u64,
    /// Checkpoints of the chain.
    pub checkpoints: u64,
    /// Records after the chain's last checkpoint: verified as a chain, anchored by no signature.
    pub unanchored: u64,
}

/// Why an export does not verify. `Display` is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The input could not be read.
    #[error("line {line}: read error: {source}")]
    Read {
        /// 1-based line number.
        line: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line (or item) is not a JSON object.
    #[error("line {line}: not a JSON object: {detail}")]
    NotAnObject {
        /// 1-based line number (item index + 1 for [`verify_items`]).
        line: u64,
        /// The parser's message, or what was found instead of an object.
        detail: String,
    },
    /// A record lacks a member the format requires, or it has the wrong type.
    #[error("line {line}: record member `{field}` is missing or invalid")]
    MalformedRecord {
        /// 1-based line number.
        line: u64,
        /// The member.
        field: &'static str,
    },
    /// A checkpoint lacks a member, has one of the wrong type, or has one the format lacks.
    #[error("line {line}: checkpoint member `{field}` is missing, invalid or unknown")]
    MalformedCheckpoint {
        /// 1-based line number.
        line: u64,
        /// The member.
        field: String,
    },
    /// A record's `v` is not a format version this verifier knows.
    #[error("chain {chain} seq {seq}: unknown format version {version}")]
    UnknownVersion {
        /// The chain.
        chain: String,
        /// The record's seq.
        seq: u64,
        /// The `v` found, as JSON.
        version: String,
    },
    /// A seq is missing from the chain: the record that should come next never does.
    #[error("chain {chain} seq {expected}: gap (expected seq {expected}, found {found})")]
    Gap {
        /// The chain.
        chain: String,
        /// The missing seq.
        expected: u64,
        /// The seq found in its place.
        found: u64,
    },
    /// A record comes before one with a lower seq, or repeats a seq already seen.
    #[error("chain {chain} seq {seq}: out of order")]
    OutOfOrder {
        /// The chain.
        chain: String,
        /// The displaced seq.
        seq: u64,
    },
    /// A record's `hash` is not the SHA-256 of its own canonical form: its content was changed.
    #[error("chain {chain} seq {seq}: record hash mismatch")]
    HashMismatch {
        /// The chain.
        chain: String,
        /// The record's seq.
        seq: u64,
    },
    /// A record's `prev_hash` is not the `hash` of the record before it.
    #[error("chain {chain} seq {seq}: prev_hash mismatch")]
    PrevHashMismatch {
        /// The chain.
        chain: String,
        /// The record's seq.
        seq: u64,
    },
    /// A checkpoint names a `key_id` that is none of the trusted keys.
    #[error(
        "chain {chain} checkpoint at tree_size {tree_size}: signature not by a trusted key \
         (unknown key_id {key_id})"
    )]
    UntrustedKey {
        /// The chain.
        chain: String,
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The `key_id` it names.
        key_id: String,
    },
    /// A checkpoint's signature does not verify under the trusted key its `key_id` names.
    #[error(
        "chain {chain} checkpoint at tree_size {tree_size}: signature not by a trusted key \
         (invalid under key_id {key_id})"
    )]
    BadSignature {
        /// The chain.
        chain: String,
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The `key_id` it names.
        key_id: String,
    },
    /// A validly signed checkpoint's root is not the Merkle root of the records it covers: records
    /// up to its tree size were changed (even if consistently re-chained).
    #[error("chain {chain} checkpoint at tree_size {tree_size}: root mismatch")]
    RootMismatch {
        /// The chain.
        chain: String,
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// A checkpoint covers more records than the chain has: its tail was truncated.
    #[error("chain {chain} checkpoint tree_size {tree_size} > log length {length}")]
    CheckpointBeyondLog {
        /// The chain.
        chain: String,
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The records the chain has.
        length: u64,
    },
    /// Strict mode: records follow the chain's last checkpoint.
    #[error("chain {chain}: {count} records after the last checkpoint are unanchored (--strict)")]
    Unanchored {
        /// The chain.
        chain: String,
        /// How many records follow the last checkpoint.
        count: u64,
    },
}

impl VerifyFailure {
    /// The seq of the record blamed (for a gap, the missing seq); `None` for checkpoint, line and
    /// whole-chain failures.
    pub fn seq(&self) -> Option<u64> {
        use VerifyFailure as F;
        match self {
            F::UnknownVersion { seq, .. }
            | F::OutOfOrder { seq, .. }
            | F::HashMismatch { seq, .. }
            | F::PrevHashMismatch { seq, .. } => Some(*seq),
            F::Gap { expected, .. } => Some(*expected),
            F::Read { .. }
            | F::NotAnObject { .. }
            | F::MalformedRecord { .. }
            | F::MalformedCheckpoint { .. }
            | F::UntrustedKey { .. }
            | F::BadSignature { .. }
            | F::RootMismatch { .. }
            | F::CheckpointBeyondLog { .. }
            | F::Unanchored { .. } => None,
        }
    }

    /// The chain blamed; `None` for failures located only by line.
    pub fn chain(&self) -> Option<&str> {
        use VerifyFailure as F;
        match self {
            F::UnknownVersion { chain, .. }
            | F::Gap { chain, .. }
            | F::OutOfOrder { chain, .. }
            | F::HashMismatch { chain, .. }
            | F::PrevHashMismatch { chain, .. }
            | F::UntrustedKey { chain, .. }
            | F::BadSignature { chain, .. }
            | F::RootMismatch { chain, .. }
            | F::CheckpointBeyondLog { chain, .. }
            | F::Unanchored { chain, .. } => Some(chain),
            F::Read { .. }
            | F::NotAnObject { .. }
            | F::MalformedRecord { .. }
            | F::MalformedCheckpoint { .. } => None,
        }
    }

    /// The tree size of the checkpoint blamed, for checkpoint failures.
    pub fn tree_size(&self) -> Option<u64> {
        use VerifyFailure as F;
        match self {
            F::UntrustedKey { tree_size, .. }
            | F::BadSignature { tree_size, .. }
            | F::RootMismatch { tree_size, .. }
            | F::CheckpointBeyondLog { tree_size, .. } => Some(*tree_size),
            F::Read { .. }
            | F::NotAnObject { .. }
            | F::MalformedRecord { .. }
            | F::MalformedCheckpoint { .. }
            | F::UnknownVersion { .. }
            | F::Gap { .. }
            | F::OutOfOrder { .. }
            | F::HashMismatch { .. }
            | F::PrevHashMismatch { .. }
            | F::Unanchored { .. } => None,
        }
    }

    /// The 1-based line blamed, for failures located only by line.
    pub fn line(&self) -> Option<u64> {
        use VerifyFailure as F;
        match self {
            F::Read { line, .. }
            | F::NotAnObject { line, .. }
            | F::MalformedRecord { line, .. }
            | F::MalformedCheckpoint { line, .. } => Some(*line),
            F::UnknownVersion { .. }
            | F::Gap { .. }
            | F::OutOfOrder { .. }
            | F::HashMismatch { .. }
            | F::PrevHashMismatch { .. }
            | F::UntrustedKey { .. }
            | F::BadSignature { .. }
            | F::RootMismatch { .. }
            | F::CheckpointBeyondLog { .. }
            | F::Unanchored { .. } => None,
        }
    }
}

/// Verifies a JSONL export read from `input`. Blank lines are skipped; every other line must be
/// one JSON object, a record or a checkpoint (`"kind": "checkpoint"`).
///
/// # Errors
/// The first [`VerifyFailure`] in stream order; end-of-stream checks (a checkpoint beyond the
/// log, unanchored records under `strict`) come last.
pub fn verify_lines<R: BufRead>(
    input: R,
    opts: &VerifyOptions<'_>,
) -> Result<Report, VerifyFailure> {
    let items = input
        .split(b'\n')
        .zip(1u64..)
        .filter_map(|(bytes, line)| match bytes {
            Err(source) => Some(Err(VerifyFailure::Read { line, source })),
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => None,
            Ok(bytes) => Some(
                serde_json::from_slice::<Value>(&bytes)
                    .map(|v| (line, v))
                    .map_err(|e| VerifyFailure::NotAnObject {
                        line,
                        detail: e.to_string(),
                    }),
            ),
        });
    run(items, opts)
}

/// [`verify_lines`] over items already parsed; item `i` is reported as line `i + 1`.
///
/// # Errors
/// As [`verify_lines`].
pub fn verify_items(items: &[Value], opts: &VerifyOptions<'_>) -> Result<Report, VerifyFailure> {
    run(
        items.iter().zip(1u64..).map(|(v, line)| Ok((line, v))),
        opts,
    )
}

fn run<I, T>(mut items: I, opts: &VerifyOptions<'_>) -> Result<Report, VerifyFailure>
where
    I: Iterator<Item = Result<(u64, T), VerifyFailure>>,
    T: Borrow<Value>,
{
    let mut state = State::new(opts);
    while let Some(item) = items.next() {
        let (line, value) = item?;
        match state.item(line, value.borrow()) {
            Ok(()) => {}
            Err(VerifyFailure::Gap {
                chain,
                expected,
                found,
            }) => {
                // A gap is only a deletion if the missing record never turns up; if it comes
                // later, the records were reordered. Either way the missing seq is named.
                let later = items
                    .any(|it| it.is_ok_and(|(_, v)| is_record_of(v.borrow(), &chain, expected)));
                return Err(if later {
                    VerifyFailure::OutOfOrder {
                        chain,
                        seq: expected,
                    }
                } else {
                    VerifyFailure::Gap {
                        chain,
                        expected,
                        found,
                    }
                });
            }
            Err(e) => return Err(e),
        }
    }
    state.finish()
}

fn is_record_of(v: &Value, chain: &str, seq: u64) -> bool {
    v.get("kind").and_then(Value::as_str) != Some("checkpoint")
        && v.get("chain").and_then(Value::as_str) == Some(chain)
        && v.get("seq").and_then(Value::as_u64) == Some(seq)
}

/// One chain as read so far.
struct Chain {
    name: String,
    records: u64,
    last_hash: String,
    tree: PrefixTree,
    checkpoints: u64,
    /// The largest tree size a verified checkpoint covers.
    anchored: u64,
    /// Checkpoints (already signature-checked) covering records not yet read, by tree size:
    /// the root they claim and their line.
    pending: BTreeMap<u64, Vec<([u8; 32], u64)>>,
}

impl Chain {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            records: 0,
            last_hash: GENESIS_HASH.to_owned(),
            tree: PrefixTree::default(),
            checkpoints: 0,
            anchored: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Checks a claimed root against the first `tree_size` leaves, which must all be read.
    fn anchor(&mut self, tree_size: u64, root: &[u8; 32]) -> Result<(), VerifyFailure> {
        if self.tree.prefix_root(tree_size).as_ref() != Some(root) {
            return Err(VerifyFailure::RootMismatch {
                chain: self.name.clone(),
                tree_size,
            });
        }
        self.anchored = self.anchored.max(tree_size);
        Ok(())
    }
}

struct State<'a> {
    opts: &'a VerifyOptions<'a>,
    key_ids: Vec<(String, &'a AuditPublicKey)>,
    chains: HashMap<String, Chain>,
    order: Vec<String>,
    records: u64,
    checkpoints: u64,
}

const CHECKPOINT_MEMBERS: [&str; 7] = [
    "kind",
    "chain",
    "tree_size",
    "root",
    "time",
    "key_id",
    "signature",
];

impl<'a> State<'a> {
    fn new(opts: &'a VerifyOptions<'a>) -> Self {
        Self {
            opts,
            key_ids: opts.keys.iter().map(|k| (k.key_id(), k)).collect(),
            chains: HashMap::new(),
            order: Vec::new(),
            records: 0,
            checkpoints: 0,
        }
    }

    fn chain(&mut self, name: &str) -> &mut Chain {
        let order = &mut self.order;
        self.chains.entry(name.to_owned()).or_insert_with(|| {
            order.push(name.to_owned());
            Chain::new(name)
        })
    }

    /// The chains in order of first appearance.
    fn in_order(&self) -> impl Iterator<Item = &Chain> {
        self.order.iter().filter_map(|name| self.chains.get(name))
    }

    fn item(&mut self, line: u64, value: &Value) -> Result<(), VerifyFailure> {
        let Some(obj) = value.as_object() else {
            return Err(VerifyFailure::NotAnObject {
                line,
                detail: found(value).to_owned(),
            });
        };
        if obj.get("kind").and_then(Value::as_str) == Some("checkpoint") {
            self.checkpoint(line, obj)
        } else {
            self.record(line, obj)
        }
    }

    fn record(&mut self, line: u64, obj: &Map<String, Value>) -> Result<(), VerifyFailure> {
        let malformed = |field| VerifyFailure::MalformedRecord { line, field };
        let chain = obj
            .get("chain")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or(malformed("chain"))?;
        let seq = obj
            .get("seq")
            .and_then(Value::as_u64)
            .filter(|s| (1..=MAX_SAFE_INTEGER).contains(s))
            .ok_or(malformed("seq"))?;
        let v = obj.get("v").ok_or(malformed("v"))?;
        if v.as_u64() != Some(FORMAT_VERSION) {
            return Err(VerifyFailure::UnknownVersion {
                chain: chain.to_owned(),
                seq,
                version: v.to_string(),
            });
        }
        let claimed = obj
            .get("hash")
            .and_then(Value::as_str)
            .ok_or(malformed("hash"))?;
        let prev = obj
            .get("prev_hash")
            .and_then(Value::as_str)
            .ok_or(malformed("prev_hash"))?;
        // The leaf: JCS of the record without `hash`, recomputed from what was parsed.
        let mut unhashed = obj.clone();
        unhashed.remove("hash");
        let leaf = canonicalize(&Value::Object(unhashed)).map_err(|_| malformed("number"))?;

        let c = self.chain(chain);
        let expected = c.records.saturating_add(1);
        if seq > expected {
            return Err(VerifyFailure::Gap {
                chain: c.name.clone(),
                expected,
                found: seq,
            });
        }
        if seq < expected {
            return Err(VerifyFailure::OutOfOrder {
                chain: c.name.clone(),
                seq,
            });
        }
        // Hash before prev_hash: an edited field is this record's fault, not its successor's.
        let hash = hex(&sha256(&leaf));
        if hash != claimed {
            return Err(VerifyFailure::HashMismatch {
                chain: c.name.clone(),
                seq,
            });
        }
        if prev != c.last_hash {
            return Err(VerifyFailure::PrevHashMismatch {
                chain: c.name.clone(),
                seq,
            });
        }
        c.tree.push(merkle::leaf_hash(&leaf));
        c.records = seq;
        c.last_hash = hash;
        // Checkpoints that arrived before the records they cover are checked the moment the
        // chain reaches their size.
        if let Some(waiting) = c.pending.remove(&seq) {
            for (root, _line) in waiting {
                c.anchor(seq, &root)?;
            }
        }
        self.records = self.records.saturating_add(1);
        Ok(())
    }

    fn checkpoint(&mut self, line: u64, obj: &Map<String, Value>) -> Result<(), VerifyFailure> {
        let malformed = |field: &str| VerifyFailure::MalformedCheckpoint {
            line,
            field: field.to_owned(),
        };
        if let Some(unknown) = obj
            .keys()
            .find(|k| !CHECKPOINT_MEMBERS.contains(&k.as_str()))
        {
            return Err(malformed(unknown));
        }
        let text = |field: &'static str| {
            obj.get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(field))
        };
        let chain = text("chain").and_then(|c| {
            if c.is_empty() {
                Err(malformed("chain"))
            } else {
                Ok(c)
            }
        })?;
        let tree_size = obj
            .get("tree_size")
            .and_then(Value::as_u64)
            .filter(|s| *s <= MAX_SAFE_INTEGER)
            .ok_or_else(|| malformed("tree_size"))?;
        let root = parse_hash_hex(text("root")?).ok_or_else(|| malformed("root"))?;
        text("time")?;
        let key_id = text("key_id")?;
        let signature = Some(text("signature")?)
            .filter(|s| !s.contains('='))
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| malformed("signature"))?;

        // INVARIANT (anchors are signed): a checkpoint counts only once its signature verifies
        // under a caller-supplied key; the export cannot introduce a key of its own.
        let Some((_, key)) = self.key_ids.iter().find(|(id, _)| id == key_id) else {
            return Err(VerifyFailure::UntrustedKey {
                chain: chain.to_owned(),
                tree_size,
                key_id: key_id.to_owned(),
            });
        };
        let mut unsigned = obj.clone();
        unsigned.remove("signature");
        let signed = canonicalize(&Value::Object(unsigned)).map_err(|_| malformed("tree_size"))?;
        if !key.verifies(&signed, &signature) {
            return Err(VerifyFailure::BadSignature {
                chain: chain.to_owned(),
                tree_size,
                key_id: key_id.to_owned(),
            });
        }

        let c = self.chain(chain);
        c.checkpoints = c.checkpoints.saturating_add(1);
        if tree_size <= c.records {
            c.anchor(tree_size, &root)?;
        } else {
            c.pending.entry(tree_size).or_default().push((root, line));
        }
        self.checkpoints = self.checkpoints.saturating_add(1);
        Ok(())
    }

    fn finish(self) -> Result<Report, VerifyFailure> {
        // A checkpoint still waiting covers records the export lacks: the tail was cut. Blame
        // the one that appeared first.
        let beyond = self
            .in_order()
            .flat_map(|c| {
                c.pending.iter().flat_map(move |(size, waiting)| {
                    waiting.iter().map(move |(_, line)| (*line, c, *size))
                })
            })
            .min_by_key(|(line, _, _)| *line);
        if let Some((_, c, tree_size)) = beyond {
            return Err(VerifyFailure::CheckpointBeyondLog {
                chain: c.name.clone(),
                tree_size,
                length: c.records,
            });
        }

        let mut report = Report {
            records: self.records,
            checkpoints: self.checkpoints,
            chains: Vec::with_capacity(self.order.len()),
            warnings: Vec::new(),
        };
        for c in self.in_order() {
            let unanchored = c.records.saturating_sub(c.anchored);
            if unanchored > 0 {
                if self.opts.strict {
                    return Err(VerifyFailure::Unanchored {
                        chain: c.name.clone(),
                        count: unanchored,
                    });
                }
                report.warnings.push(format!(
                    "chain {}: {unanchored} records after the last checkpoint are unanchored",
                    c.name
                ));
            }
            report.chains.push(ChainReport {
                chain: c.name.clone(),
                records: c.records,
                checkpoints: c.checkpoints,
                unanchored,
            });
        }
        Ok(report)
    }
}

fn found(v: &Value) -> &'static str {
    match v {
        Value::Null => "found null",
        Value::Bool(_) => "found a boolean",
        Value::Number(_) => "found a number",
        Value::String(_) => "found a string",
        Value::Array(_) => "found an array",
        Value::Object(_) => "found an object",
    }
}
