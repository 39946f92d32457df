//! Token signing with Firebreak's own keys (EdDSA or ES256), and small hashing/random helpers.
//!
//! Key storage is the caller's job: `pkcs8_der` hands out the secret for encrypted or 0600
//! storage, and `Debug` never prints it.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::{Value, json};

use crate::jwt::kid_is_acceptable;
use crate::{Algorithm, PublicKey, TokenError, b64};

enum Signer {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A private signing key with its `kid` and algorithm. Cheap to clone.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    pkcs8: Arc<Vec<u8>>,
    signer: Arc<Signer>,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// Generates a fresh key. Its `kid` is the RFC 7638 thumbprint of its public key.
    ///
    /// # Errors
    /// [`TokenError::UnsupportedSigningAlgorithm`] for `Rs256`; [`TokenError::SigningFailed`] if
    /// the random generator fails.
    pub fn generate(alg: Algorithm) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let der = match alg {
            Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| TokenError::SigningFailed)?
                .as_ref()
                .to_vec(),
            Algorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| TokenError::SigningFailed)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::Rs256 => return Err(TokenError::UnsupportedSigningAlgorithm),
        };
        // `load` names the key by its thumbprint.
        Self::load(alg, der)
    }

    /// Loads a PKCS#8 private key for `alg` under the given `kid`.
    ///
    /// # Errors
    /// [`TokenError::UnsupportedSigningAlgorithm`] for `Rs256`, [`TokenError::BadKid`] for a kid
    /// that is not 1..=256 printable ASCII, [`TokenError::PrivateKeyRejected`] for a document that
    /// is not a key of that algorithm.
    pub fn from_pkcs8(alg: Algorithm, kid: String, der: &[u8]) -> Result<Self, TokenError> {
        if alg == Algorithm::Rs256 {
            return Err(TokenError::UnsupportedSigningAlgorithm);
        }
        if !kid_is_acceptable(&kid) {
            return Err(TokenError::BadKid);
        }
        let mut key = Self::load(alg, der.to_vec())?;
        key.public = key.public.clone().with_kid(kid.clone());
        key.kid = kid;
        Ok(key)
    }

    fn load(alg: Algorithm, der: Vec<u8>) -> Result<Self, TokenError> {
        let (signer, public_bytes) = match alg {
            Algorithm::EdDsa => {
                let kp =
                    Ed25519KeyPair::from_pkcs8(&der).map_err(|_| TokenError::PrivateKeyRejected)?;
                let pk = kp.public_key().as_ref().to_vec();
                (Signer::Ed25519(kp), pk)
            }
            Algorithm::Es256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|_| TokenError::PrivateKeyRejected)?;
                let pk = kp.public_key().as_ref().to_vec();
                (Signer::P256(kp), pk)
            }
            Algorithm::Rs256 => return Err(TokenError::UnsupportedSigningAlgorithm),
        };
        let public = PublicKey::from_public_bytes(alg, &public_bytes)?;
        Ok(SigningKey {
            alg,
            kid: public.kid().to_owned(),
            pkcs8: Arc::new(der),
            signer: Arc::new(signer),
            public,
        })
    }

    /// The PKCS#8 document. Secret: for the caller's encrypted or 0600 storage only.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key id placed in every header this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public half, with the same `kid` and `alg`, for `/jwks.json` and for verifiers.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// Signs `claims` as a compact JWS with header `{"alg", "kid", "typ": typ}`.
    ///
    /// # Errors
    /// [`TokenError::SigningFailed`] if serialisation or signing fails.
    pub fn sign_jwt(&self, typ: &str, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": self.alg.as_str(), "typ": typ, "kid": self.kid});
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::SigningFailed)?;
        self.sign_raw(&header, &payload)
    }

    /// Signs an arbitrary header and payload with this key, for test issuers that need to produce
    /// hostile tokens. It still signs only with this key's algorithm, whatever `header` says.
    ///
    /// # Errors
    /// [`TokenError::SigningFailed`] if serialisation or signing fails.
    pub fn sign_raw(&self, header: &Value, payload_bytes: &[u8]) -> Result<String, TokenError> {
        let header = serde_json::to_vec(header).map_err(|_| TokenError::SigningFailed)?;
        self.sign_raw_bytes(&header, payload_bytes)
    }

    /// Signs arbitrary header and payload bytes (a header with duplicate members, or one that is
    /// not JSON at all), for tests that need hostile tokens signed by a trusted key.
    ///
    /// # Errors
    /// [`TokenError::SigningFailed`] if signing fails.
    pub fn sign_raw_bytes(
        &self,
        header: &[u8],
        payload_bytes: &[u8],
    ) -> Result<String, TokenError> {
        let mut token = b64::encode(header);
        token.push('.');
        token.push_str(&b64::encode(payload_bytes));
        let signature = self.sign_bytes(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64::encode(&signature));
        Ok(token)
    }

    pub(crate) fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        match &*self.signer {
            Signer::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            // FIXED signing: the 64-byte r‖s form JWS ES256 requires (RFC 7518 §3.4).
            Signer::P256(kp) => kp
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TokenError::SigningFailed),
        }
    }
}

/// Base64url (unpadded) SHA-256 of `data`.
pub fn sha256_b64url(data: &[u8]) -> String {
    b64::encode(digest(&SHA256, data).as_ref())
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 0x0f), 16).unwrap_or('0'));
            s
        })
}

/// `nbytes` random bytes from the system CSPRNG, base64url encoded (for `jti`s, nonces, ids).
/// If the system generator fails the result is the empty string, which no Firebreak check
/// accepts as a `jti`; use [`try_random_b64url`] to handle that failure explicitly.
pub fn random_b64url(nbytes: usize) -> String {
    try_random_b64url(nbytes).unwrap_or_default()
}

/// Like [`random_b64url`], but reports a failing system generator.
///
/// # Errors
/// [`TokenError::SigningFailed`] when the system generator fails.
pub fn try_random_b64url(nbytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; nbytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::SigningFailed)?;
    Ok(b64::encode(&buf))
}
