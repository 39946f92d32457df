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
