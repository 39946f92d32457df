//! The broker's signing keys: loaded from the store, sealed at rest with the key-encryption key
//! when one is configured, and rotated in the order that never makes a verifier miss a key
//! (SPIRE's): a key is published as `next` before it signs, and stays published as `retiring`
//! until every token it signed has expired.

use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use firebreak_core::UnixTime;
use firebreak_store::{KeyRow, KeyState};
use firebreak_token::{Algorithm, PublicKey, SigningKey};

/// Why the key ring could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key-encryption key file is missing or not 32 bytes (raw or 64 hex characters).
    #[error("key-encryption key {path}: {reason}")]
    Kek {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored key is sealed but no key-encryption key is configured, or it does not open.
    #[error("signing key {0} cannot be unsealed (wrong or missing key_encryption_key_file)")]
    Unseal(String),
    /// A stored key does not parse.
    #[error("signing key {kid}: {reason}")]
    Corrupt {
        /// The key.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// The store holds no active key (or more than one).
    #[error("the store holds {0} active signing keys; exactly one is required")]
    ActiveCount(usize),
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// Seals and opens PKCS#8 documents with AES-256-GCM; the kid is the associated data, so a
/// sealed key cannot be swapped onto another row.
#[derive(Clone)]
pub struct Kek(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

impl Kek {
    /// Reads a key file: 32 raw bytes, or 64 hex characters (whitespace trimmed).
    ///
    /// # Errors
    /// [`KeyError::Kek`] when the file is unreadable or not a 256-bit key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError::Kek {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let key: Vec<u8> = if bytes.len() == 32 {
            bytes
        } else {
            let text = String::from_utf8_lossy(&bytes);
            let hex = text.trim();
            if hex.len() != 64 {
                return Err(err("expected 32 bytes or 64 hex characters".into()));
            }
            (0..32)
                .map(|i| {
                    hex.get(i * 2..i * 2 + 2)
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| err("not hex".into()))?
        };
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| err("bad key".into()))?;
        Ok(Self(std::sync::Arc::new(LessSafeKey::new(unbound))))
    }

    fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Generate("rng".into()))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Generate("seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let (nonce, ct) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| KeyError::Unseal(kid.into()))?;
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal(kid.into()))?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Unseal(kid.into()))?;
        Ok(plain.to_vec())
    }
}

/// Makes a new key row in state `state`, sealed when `kek` is set.
///
/// # Errors
/// [`KeyError::Generate`] when the RNG or signer fails.
pub fn new_key_row(
    alg: Algorithm,
    state: KeyState,
    kek: Option<&Kek>,
    now: UnixTime,
) -> Result<KeyRow, KeyError> {
    let key = SigningKey::generate(alg).map_err(|e| KeyError::Generate(e.to_string()))?;
    let kid = key.kid().to_owned();
    let (secret, sealed) = match kek {
        Some(k) => (k.seal(&kid, key.pkcs8_der())?, true),
        None => (key.pkcs8_der().to_vec(), false),
    };
    Ok(KeyRow {
        kid,
        alg: alg.as_str().to_owned(),
        state,
        secret,
        sealed,
        public_jwk: key.public_key().to_jwk().to_string(),
        created_at: now,
        activated_at: (state == KeyState::Active).then_some(now),
        retiring_at: None,
        retire_after: None,
    })
}

/// The keys in memory: the one that signs, and every key a verifier may still meet.
#[derive(Debug)]
pub struct KeyRing {
    active: SigningKey,
    /// INVARIANT (publish-before-sign, keep-until-expired): holds next + active + retiring
    /// keys; `/jwks.json` serves exactly this list, and our own verification uses it too.
    published: Vec<PublicKey>,
    by_kid: HashMap<String, PublicKey>,
    rows: Vec<KeyRow>,
}

impl KeyRing {
    /// Builds the ring from stored rows.
    ///
    /// # Errors
    /// A [`KeyError`] when a key does not open or parse, or there is not exactly one active key.
    pub fn from_rows(rows: Vec<KeyRow>, kek: Option<&Kek>) -> Result<Self, KeyError> {
        let mut active = Vec::new();
        let mut published = Vec::new();
        for row in &rows {
            if row.state == KeyState::Retired {
                continue;
            }
            let corrupt = |reason: String| KeyError::Corrupt {
                kid: row.kid.clone(),
                reason,
            };
            let alg: Algorithm = row
                .alg
                .parse()
                .map_err(|_| corrupt(format!("algorithm {:?}", row.alg)))?;
            let der = match (row.sealed, kek) {
                (true, Some(k)) => k.open(&row.kid, &row.secret)?,
                (true, None) => return Err(KeyError::Unseal(row.kid.clone())),
                (false, _) => row.secret.clone(),
            };
            let key = SigningKey::from_pkcs8(alg, row.kid.clone(), &der)
                .map_err(|e| corrupt(e.to_string()))?;
            published.push(key.public_key());
            if row.state == KeyState::Active {
                active.push(key);
            }
        }
        let n = active.len();
        let Some(active) = active.pop().filter(|_| n == 1) else {
            return Err(KeyError::ActiveCount(n));
        };
        let by_kid = published
            .iter()
            .map(|k| (k.kid().to_owned(), k.clone()))
            .collect();
        Ok(Self {
            active,
            published,
            by_kid,
            rows,
        })
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// A published key by kid (for verifying our own tokens).
    pub fn verifier(&self, kid: &str) -> Option<&PublicKey> {
        self.by_kid.get(kid)
    }

    /// The JWKS document (`{"keys": [...]}`) of every published key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.published.iter().map(PublicKey::to_jwk).collect::<Vec<_>>() })
    }

    /// The stored rows (for `keys list`).
    pub fn rows(&self) -> &[KeyRow] {
        &self.rows
    }

    /// The `next` key's row.
    pub fn next_row(&self) -> Option<&KeyRow> {
        self.rows.iter().find(|r| r.state == KeyState::Next)
    }
}
