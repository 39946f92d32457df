//! Firebreak's audit log format, and nothing else: RFC 8785 canonical JSON, the per-chain hash
//! chain, the RFC 9162 Merkle tree over a chain's records, Ed25519-signed checkpoints, and the
//! offline verifier for exports. `docs/audit-format.md` specifies the same rules for an
//! independent reimplementation.
//!
//! This crate does no I/O of its own beyond reading the `BufRead` handed to [`verify_lines`]:
//! storage, group commit, the checkpoint schedule and the HTTP/CLI surfaces belong to the crates
//! that use it. It never sees a token key: checkpoints are signed by an [`AuditKey`] only.
#![forbid(unsafe_code)]

mod jcs;
mod key;
pub mod merkle;
mod record;
mod verify;

pub use jcs::canonicalize;
pub use key::{AuditKey, AuditPublicKey, CheckedCheckpoint, sign_checkpoint, verify_checkpoint};
pub use record::{ChainHead, Sealed, seal};
pub use verify::{ChainReport, Report, VerifyFailure, VerifyOptions, verify_items, verify_lines};

/// The record format version written as `v` by [`seal`]; the verifier refuses any other.
pub const FORMAT_VERSION: u64 = 1;

/// `prev_hash` of the first record of every chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The largest integer JSON numbers carry exactly (2^53 − 1, ECMAScript's
/// `Number.MAX_SAFE_INTEGER`); JCS writes every number as an IEEE-754 double.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Everything this crate can refuse, outside offline verification (which reports a
/// [`VerifyFailure`] naming the chain and seq instead).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// JSON numbers must be finite: RFC 8785 has no form for NaN or ±Infinity.
    #[error("number is not a finite IEEE-754 double")]
    NonFiniteNumber,
    /// Caller bug: `fields` passed to [`seal`] set a member that `seal` itself writes.
    #[error("field `{0}` is written by seal and must not be in the record fields")]
    ReservedField(String),
    /// Caller bug: a record's `kind` may not be `checkpoint`, which marks checkpoints in exports.
    #[error("a record may not have kind `checkpoint`")]
    CheckpointKind,
    /// A checkpoint offered for verification is malformed or its signature does not verify
    /// under the given key; the member named is the first that failed.
    #[error("checkpoint not valid: {0}")]
    CheckpointInvalid(&'static str),
    /// Caller bug: the chain id is empty.
    #[error("chain id is empty")]
    EmptyChain,
    /// Caller bug: the chain head's hash is not 64 lower-hex characters.
    #[error("chain head hash is not 64 lower-hex characters")]
    InvalidHeadHash,
    /// The next seq (or a checkpoint's tree size) would exceed 2^53 − 1, the largest integer a
    /// JCS number represents exactly.
    #[error("sequence number or tree size {0} is beyond 2^53 - 1")]
    SeqOverflow(u64),
    /// A Merkle leaf index is not below the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    MerkleIndexOutOfRange {
        /// The 0-based leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof was asked for between sizes in the wrong order (`first > second`).
    #[error("tree size {first} is larger than tree size {second}")]
    MerkleSizesOutOfOrder {
        /// The older tree size.
        first: u64,
        /// The newer tree size.
        second: u64,
    },
    /// A Merkle proof has the wrong number of hashes for its index and sizes.
    #[error("Merkle proof has the wrong length")]
    MerkleProofLength,
    /// A Merkle proof does not lead to the expected root (or roots).
    #[error("Merkle proof does not match the root")]
    MerkleRootMismatch,
    /// The random generator or key generation in aws-lc-rs failed.
    #[error("audit key generation failed")]
    KeyGeneration,
    /// The PKCS#8 document is not an acceptable Ed25519 private key.
    #[error("audit key rejected: {0}")]
    KeyRejected(String),
    /// A JWK is not a JSON object.
    #[error("JWK is not a JSON object")]
    JwkNotObject,
    /// A JWK's `kty` is not `OKP` or its `crv` is not `Ed25519`.
    #[error("JWK is not an Ed25519 OKP key")]
    JwkNotEd25519,
    /// A JWK carries private key material (`d`); an audit verifier takes public keys only.
    #[error("JWK contains private key member `{0}`")]
    JwkPrivateMember(&'static str),
    /// A JWK's `x` is missing, not base64url without padding, or not 32 bytes.
    #[error("JWK `x` is not a base64url 32-byte Ed25519 public key")]
    JwkBadX,
    /// A JWK's `use`, `alg` or `key_ops` says it is not an EdDSA signature key.
    #[error("JWK member `{0}` does not allow EdDSA signatures")]
    JwkWrongUse(&'static str),
    /// A JWK's `kid` differs from its RFC 7638 thumbprint.
    #[error("JWK kid is not the key's RFC 7638 thumbprint")]
    JwkKidMismatch,
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            // A nibble is below 16, so the lookup always succeeds.
            if let Some(c) = DIGITS.get(usize::from(nibble)) {
                s.push(char::from(*c));
            }
        }
    }
    s
}

/// Parses exactly 64 lower-hex characters into 32 bytes; `None` for anything else (upper case
/// included, so that one hash has one spelling).
pub(crate) fn parse_hash_hex(s: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = sha256(b"abc");
        assert_eq!(
            hex(&h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hash_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hash_hex(&hex(&h).to_uppercase()), None);
        assert_eq!(parse_hash_hex("00"), None);
        assert_eq!(parse_hash_hex(GENESIS_HASH), Some([0u8; 32]));
    }
}
