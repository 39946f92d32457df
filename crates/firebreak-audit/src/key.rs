//! The dedicated audit signing key (Ed25519, never a token key), its public JWK, and signed
//! checkpoints. Keeping this key apart means a leaked token key cannot forge the log's anchors.

use crate::{AuditError, MAX_SAFE_INTEGER, canonicalize, hex, sha256};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use firebreak_core::{UnixTime, format_rfc3339_millis};
use serde_json::{Map, Value, json};

/// The dedicated audit signing key (never a token key).
pub struct AuditKey {
    pair: Ed25519KeyPair,
    // The PKCS#8 document the pair came from, kept so the caller can store it (sealed).
    pkcs8: Vec<u8>,
    public: AuditPublicKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.public.key_id())
            .field("pkcs8", &"[redacted]")
            .finish()
    }
}

impl AuditKey {
    /// A fresh Ed25519 key from the system random generator.
    ///
    /// # Errors
    /// [`AuditError::KeyGeneration`] if aws-lc-rs cannot generate one.
    pub fn generate() -> Result<Self, AuditError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuditError::KeyGeneration)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a PKCS#8 (v1 or v2) Ed25519 private key.
    ///
    /// # Errors
    /// [`AuditError::KeyRejected`] if it is not one.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AuditError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(der).map_err(|e| AuditError::KeyRejected(e.to_string()))?;
        let x = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| AuditError::KeyRejected("public key is not 32 bytes".to_owned()))?;
        Ok(Self {
            pair,
            pkcs8: der.to_vec(),
            public: AuditPublicKey { x },
        })
    }

    /// The PKCS#8 document: secret material, to be stored sealed and never logged.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, for verifiers.
    pub fn public(&self) -> AuditPublicKey {
        self.public.clone()
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// An audit public key: what a verifier trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPublicKey {
    x: [u8; 32],
}

impl AuditPublicKey {
    /// Parses a public Ed25519 JWK (`{"kty":"OKP","crv":"Ed25519","x":…}`).
    ///
    /// Refuses private members (`d`), a `use` other than `sig`, an `alg` other than `EdDSA`, a
    /// `key_ops` without `verify`, and a `kid` that is not the RFC 7638 thumbprint.
    ///
    /// # Errors
    /// The `Jwk*` variants of [`AuditError`].
    pub fn from_jwk(jwk: &Value) -> Result<Self, AuditError> {
        let obj = jwk.as_object().ok_or(AuditError::JwkNotObject)?;
        let member = |k: &str| obj.get(k).and_then(Value::as_str);
        if member("kty") != Some("OKP") || member("crv") != Some("Ed25519") {
            return Err(AuditError::JwkNotEd25519);
        }
        if obj.contains_key("d") {
            return Err(AuditError::JwkPrivateMember("d"));
        }
        if obj.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            return Err(AuditError::JwkWrongUse("use"));
        }
        if obj.get("alg").is_some_and(|a| a.as_str() != Some("EdDSA")) {
            return Err(AuditError::JwkWrongUse("alg"));
        }
        if let Some(ops) = obj.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
            if !verifies {
                return Err(AuditError::JwkWrongUse("key_ops"));
            }
        }
        let x = member("x")
            .filter(|x| !x.contains('='))
            .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or(AuditError::JwkBadX)?;
        let key = Self { x };
        if obj
            .get("kid")
            .is_some_and(|kid| kid.as_str() != Some(key.key_id().as_str()))
        {
            return Err(AuditError::JwkKidMismatch);
        }
        Ok(key)
    }

    /// The public JWK: `kty`, `crv`, `x`, `kid` (= [`Self::key_id`]), `use: "sig"`,
    /// `alg: "EdDSA"`.
    pub fn to_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.x),
            "kid": self.key_id(),
            "use": "sig",
            "alg": "EdDSA",
        })
    }

    /// The RFC 7638 thumbprint (RFC 8037 §2 members `crv`, `kty`, `x`), base64url without padding.
    pub fn key_id(&self) -> String {
        // The required members in lexicographic order, without whitespace (RFC 7638 §3.2). These
        // values need no escaping, so this is also their JCS form.
        let members = format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(self.x)
        );
        URL_SAFE_NO_PAD.encode(sha256(members.as_bytes()))
    }

    /// Whether `signature` is this key's Ed25519 signature of `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.x)
            .verify(msg, signature)
            .is_ok()
    }
}

/// Signs a checkpoint: `{"kind":"checkpoint","chain","tree_size","root" (lower hex),"time",
/// "key_id","signature"}`, where `signature` is base64url (no padding) Ed25519 over the JCS of the
/// object without `signature`.
///
/// # Errors
/// [`AuditError::EmptyChain`]; [`AuditError::SeqOverflow`] if `tree_size` is beyond 2^53 − 1.
pub fn sign_checkpoint(
    chain: &str,
    tree_size: u64,
    root: &[u8; 32],
    time: UnixTime,
    key: &AuditKey,
) -> Result<Value, AuditError> {
    if chain.is_empty() {
        return Err(AuditError::EmptyChain);
    }
    if tree_size > MAX_SAFE_INTEGER {
        return Err(AuditError::SeqOverflow(tree_size));
    }
    let mut cp = Map::new();
    cp.insert("kind".to_owned(), Value::from("checkpoint"));
    cp.insert("chain".to_owned(), Value::from(chain));
    cp.insert("tree_size".to_owned(), Value::from(tree_size));
    cp.insert("root".to_owned(), Value::from(hex(root)));
    cp.insert("time".to_owned(), Value::from(format_rfc3339_millis(time)));
    cp.insert("key_id".to_owned(), Value::from(key.public.key_id()));
    let mut cp = Value::Object(cp);
    let signature = URL_SAFE_NO_PAD.encode(key.sign(&canonicalize(&cp)?));
    if let Value::Object(m) = &mut cp {
        m.insert("signature".to_owned(), Value::from(signature));
    }
    Ok(cp)
}

/// What a checkpoint verified by [`verify_checkpoint`] asserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCheckpoint {
    /// Its chain.
    pub chain: String,
    /// The tree size it signs.
    pub tree_size: u64,
    /// The root it signs.
    pub root: [u8; 32],
}

/// Checks one checkpoint on its own: exactly the seven members of the format, `key_id` naming
/// `key`, and a valid signature. The caller then compares `root` with its own tree (ingest of a
/// gateway's chain, where the whole log is not re-verified).
///
/// # Errors
/// [`AuditError::CheckpointInvalid`] naming the first member that failed.
pub fn verify_checkpoint(
    cp: &Value,
    key: &AuditPublicKey,
) -> Result<CheckedCheckpoint, AuditError> {
    let obj = cp
        .as_object()
        .ok_or(AuditError::CheckpointInvalid("object"))?;
    const MEMBERS: [&str; 7] = [
        "kind",
        "chain",
        "tree_size",
        "root",
        "time",
        "key_id",
        "signature",
    ];
    if obj.len() != MEMBERS.len() || MEMBERS.iter().any(|m| !obj.contains_key(*m)) {
        return Err(AuditError::CheckpointInvalid("members"));
    }
    let text = |k: &'static str| {
        obj.get(k)
            .and_then(Value::as_str)
            .ok_or(AuditError::CheckpointInvalid(k))
    };
    if text("kind")? != "checkpoint" {
        return Err(AuditError::CheckpointInvalid("kind"));
    }
    let chain = text("chain")?.to_owned();
    let tree_size = obj
        .get("tree_size")
        .and_then(Value::as_u64)
        .filter(|n| *n <= MAX_SAFE_INTEGER)
        .ok_or(AuditError::CheckpointInvalid("tree_size"))?;
    let root_hex = text("root")?;
    let mut root = [0u8; 32];
    if root_hex.len() != 64
        || !root_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(AuditError::CheckpointInvalid("root"));
    }
    for (i, r) in root.iter_mut().enumerate() {
        *r = root_hex
            .get(i * 2..i * 2 + 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or(AuditError::CheckpointInvalid("root"))?;
    }
    text("time")?;
    if text("key_id")? != key.key_id() {
        return Err(AuditError::CheckpointInvalid("key_id"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(text("signature")?)
        .map_err(|_| AuditError::CheckpointInvalid("signature"))?;
    let mut unsigned = obj.clone();
    unsigned.remove("signature");
    let msg = canonicalize(&Value::Object(unsigned))?;
    if !key.verifies(&msg, &sig) {
        return Err(AuditError::CheckpointInvalid("signature"));
    }
    Ok(CheckedCheckpoint {
        chain,
        tree_size,
        root,
    })
}
