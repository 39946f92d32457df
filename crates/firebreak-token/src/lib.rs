//! JOSE for Firebreak: strict compact-JWS parsing, signature verification, JWK/JWKS loading, a
//! JWKS cache for trusted issuers, claim validation and token signing.
//!
//! This crate is the only JOSE user in the workspace, so every rule about what a token may look
//! like lives here. The order of checks is the security argument: size first, then structure
//! (three base64url segments, strict JSON without duplicate members), then the header (algorithm
//! allow-list, no embedded keys, no `crit`), then the signature with the *key's* algorithm, and only
//! then the claims. It leaves issuer configuration, replay tracking and the mapping of
//! [`TokenError`] onto a wire response to its callers.
//!
//! DPoP proofs (RFC 9449) are the one exception to "no embedded keys": [`verify_dpop_proof`]
//! parses them through a separate, crate-private header mode that requires `jwk`, and returns the
//! key's thumbprint for the caller to bind to. [`DpopReplayCache`] remembers used proofs.
#![forbid(unsafe_code)]

mod alg;
mod b64;
mod claims;
mod dpop;
mod error;
mod json;
mod jwk;
mod jwks_cache;
mod jwt;
mod sign;
mod web_uri;

pub use alg::Algorithm;
pub use claims::{ClaimRules, StandardClaims, TypExpectation, validate_claims};
pub use dpop::{
    DPOP_CLAIM_SCOPE, DPOP_TYP, DpopExpect, DpopProof, DpopReplayCache, MAX_DPOP_JTI_BYTES,
    dpop_claim_key, normalize_htu, verify_dpop_proof,
};
pub use error::{Segment, TokenError};
pub use jwk::{KeySet, PublicKey};
pub use jwks_cache::{JwksCache, JwksCacheConfig, JwksSource};
pub use jwt::{Header, Limits, UnverifiedJwt, verify_signature};
pub use sign::{SigningKey, random_b64url, sha256_b64url, sha256_hex, try_random_b64url};

#[cfg(test)]
mod tests;
