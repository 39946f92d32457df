//! Compact JWS parsing (strict, unverified) and signature verification.
//!
//! `UnverifiedJwt::parse` applies every structural and header rule before any key is looked up:
//! size, segment count, canonical base64url, strict JSON, the algorithm allow-list, and the header
//! members we refuse outright. `verify_signature` then checks the signature with the algorithm of
//! the *key*, never the one the token asks for.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::{Segment, TokenError};
use crate::jwk::PublicKey;
use crate::{Algorithm, b64, json};

/// Size and depth bounds applied before and during parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest compact token accepted, in bytes; checked before any decoding.
    pub max_token_bytes: usize,
    /// Deepest JSON nesting accepted in the header and payload (containers counted).
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: 16 * 1024,
            max_json_depth: 32,
        }
    }
}

/// The protected header members this crate reads. `alg` is the raw string from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg` exactly as written in the token (already known to be one of the allowed names).
    pub alg: String,
    /// `typ`, if present.
    pub typ: Option<String>,
    /// `kid`, if present (1..=256 printable ASCII characters).
    pub kid: Option<String>,
    /// `cty`, if present (never `JWT`).
    pub cty: Option<String>,
}

/// A strictly parsed compact JWS whose payload need not be JSON. Internal: the JWT type adds the
/// payload-is-an-object rule; the Wycheproof JWS vectors use this directly.
pub(crate) struct CompactJws {
    pub(crate) header: Header,
    pub(crate) alg: Algorithm,
    pub(crate) payload: Vec<u8>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the bytes the signature covers.
    pub(crate) signing_input: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    /// The `jwk` header member; only ever `Some` when parsed in [`HeaderMode::DpopProof`].
    pub(crate) embedded_jwk: Option<Value>,
}

/// Which header rules apply. There is deliberately no public way to choose the DPoP mode: only
/// [`crate::verify_dpop_proof`] parses with it, so an access or ID token carrying `jwk` is
/// refused by every other path (T04).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderMode {
    /// Subject, access and ID tokens: every key member (`jwk`, `jku`, `x5u`, `x5c`) is refused.
    Token,
    /// RFC 9449 proofs: `jwk` is required (the proof is verified with it, and the caller binds
    /// the result to its thumbprint); `jku`, `x5u` and `x5c` are still refused.
    DpopProof,
}

/// Header members that carry or point to a key. A subject or access token carrying one is refused
/// outright (RFC 8725 §3.10): trusting them lets the token choose its own verifier, and fetching
/// `jku`/`x5u` would be an SSRF.
const KEY_MEMBERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Members that only make sense in a JWE header. Seeing them in a three-part token means someone
/// is trying to get a JWE header processed (CVE-2022-39227-style polyglots).
const JWE_MEMBERS: [&str; 5] = ["enc", "zip", "epk", "p2s", "p2c"];

fn optional_string(
    header: &Map<String, Value>,
    member: &'static str,
) -> Result<Option<String>, TokenError> {
    match header.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::HeaderMemberType { member }),
    }
}

/// True for a `kid` we are willing to use as a map key: 1..=256 bytes of printable ASCII. It is
/// never a path, query or URL, but a NUL or a 10 KiB string has no business in a log line either.
pub(crate) fn kid_is_acceptable(kid: &str) -> bool {
    (1..=256).contains(&kid.len()) && kid.bytes().all(|b| (0x20..=0x7E).contains(&b))
}

type ParsedHeader = (Header, Algorithm, Option<Value>);

fn parse_header(map: &Map<String, Value>, mode: HeaderMode) -> Result<ParsedHeader, TokenError> {
    // The algorithm first: `none` (any case), HS*, PS* and unknown names end here, before any
    // other member is looked at and long before a key is.
    let alg = match map.get("alg") {
        None => return Err(TokenError::MissingAlgorithm),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(TokenError::HeaderMemberType { member: "alg" }),
    };
    let algorithm: Algorithm = alg.parse()?;
    let embedded_jwk = match mode {
        HeaderMode::Token => {
            // INVARIANT (no-embedded-keys): a token never names its own verifier. Only the
            // DPoP mode below, which `UnverifiedJwt::parse` cannot select, lets `jwk` through.
            if KEY_MEMBERS.iter().any(|m| map.contains_key(*m)) {
                return Err(TokenError::EmbeddedKeyRefused);
            }
            None
        }
        HeaderMode::DpopProof => {
            // A key *location* is still an SSRF and a second key source; only the inline key
            // that the proof is bound to is allowed.
            if KEY_MEMBERS
                .iter()
                .any(|m| *m != "jwk" && map.contains_key(*m))
            {
                return Err(TokenError::EmbeddedKeyRefused);
            }
            match map.get("jwk") {
                None => return Err(TokenError::DpopKeyMissing),
                Some(v @ Value::Object(_)) => Some(v.clone()),
                Some(_) => return Err(TokenError::HeaderMemberType { member: "jwk" }),
            }
        }
    };
    // We implement no JWS extension, so any `crit` (even `[]`, which RFC 7515 forbids) is refused.
    if map.contains_key("crit") {
        return Err(TokenError::UnsupportedCritical);
    }
    if map.contains_key("b64") {
        return Err(TokenError::UnencodedPayloadRefused);
    }
    if JWE_MEMBERS.iter().any(|m| map.contains_key(*m)) {
        return Err(TokenError::JweNotSupported);
    }
    let typ = optional_string(map, "typ")?;
    let cty = optional_string(map, "cty")?;
    // RFC 7519 §5.2: `cty: JWT` announces a nested token; media types compare case-insensitively.
    if let Some(c) = &cty
        && (c.eq_ignore_ascii_case("JWT") || c.eq_ignore_ascii_case("application/jwt"))
    {
        return Err(TokenError::NestedJwtRefused);
    }
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(s)) if kid_is_acceptable(s) => Some(s.clone()),
        Some(_) => return Err(TokenError::BadKid),
    };
    Ok((Header { alg, typ, kid, cty }, algorithm, embedded_jwk))
}

impl CompactJws {
    /// The token-mode parse, for the tests that reach below `UnverifiedJwt` (Wycheproof JWS).
    #[cfg(test)]
    pub(crate) fn parse(token: &str, limits: &Limits) -> Result<Self, TokenError> {
        Self::parse_with(token, limits, HeaderMode::Token)
    }

    pub(crate) fn parse_with(
        token: &str,
        limits: &Limits,
        mode: HeaderMode,
    ) -> Result<Self, TokenError> {
        // Size first, before a single byte is decoded.
        if token.len() > limits.max_token_bytes {
            return Err(TokenError::TokenTooLarge);
        }
        if token.trim_start().starts_with('{') {
            return Err(TokenError::JsonSerializationNotSupported);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        match parts.count() {
            0 => {}
            // Five segments is the JWE compact form; refused before any key derivation.
            2 => return Err(TokenError::JweNotSupported),
            _ => return Err(TokenError::Malformed),
        }
        // RFC 7515 allows an empty payload (detached content); a JWT never has one, so
        // `UnverifiedJwt::parse` refuses it before calling this.
        if h.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header_bytes = b64::decode(h).ok_or(TokenError::BadBase64(Segment::Header))?;
        let header_map = json::parse_object(&header_bytes, limits.max_json_depth, Segment::Header)?;
        let (header, alg, embedded_jwk) = parse_header(&header_map, mode)?;
        let payload = b64::decode(p).ok_or(TokenError::BadBase64(Segment::Payload))?;
        // An empty signature decodes to no bytes and fails verification by length.
        let signature = b64::decode(s).ok_or(TokenError::BadBase64(Segment::Signature))?;
        let mut signing_input =
            Vec::with_capacity(h.len().saturating_add(p.len()).saturating_add(1));
        signing_input.extend_from_slice(h.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(p.as_bytes());
        Ok(CompactJws {
            header,
            alg,
            payload,
            signing_input,
            signature,
            embedded_jwk,
        })
    }

    /// Checks the signature with `key`, whose algorithm must be allowed and equal the header's.
    pub(crate) fn verify(&self, key: &PublicKey, allowed: &[Algorithm]) -> Result<(), TokenError> {
        let key_alg = key.alg();
        // INVARIANT (alg-from-key): the verifier is chosen by the key's configured algorithm;
        // the header only has to agree with it.
        if !allowed.contains(&key_alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if self.header.alg != key_alg.as_str() || self.alg != key_alg {
            return Err(TokenError::AlgorithmMismatch { key: key_alg });
        }
        key.verify_raw(&self.signing_input, &self.signature)
    }
}

/// A compact JWS parsed strictly but NOT verified. Its claims must not be trusted until
/// [`verify_signature`] and [`crate::validate_claims`] have both succeeded.
pub struct UnverifiedJwt {
    jws: CompactJws,
    claims: Map<String, Value>,
}

impl fmt::Debug for UnverifiedJwt {
    // The claims may be personal data and the signing input is most of the token: print neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("header", &self.jws.header)
            .field("claims", &"[redacted]")
            .finish()
    }
}

impl UnverifiedJwt {
    /// Parses a compact JWS whose payload is a JSON object.
    ///
    /// # Errors
    /// [`TokenError::TokenTooLarge`] before anything else; then the structural variants
    /// (`Malformed`, `JweNotSupported`, `JsonSerializationNotSupported`, `BadBase64`, `BadJson`,
    /// `NotAnObject`, `DuplicateMember`, `JsonTooDeep`) and the header variants
    /// (`MissingAlgorithm`, `AlgorithmNotAllowed`, `EmbeddedKeyRefused`, `UnsupportedCritical`,
    /// `UnencodedPayloadRefused`, `NestedJwtRefused`, `HeaderMemberType`, `BadKid`).
    pub fn parse(token: &str, limits: &Limits) -> Result<Self, TokenError> {
        Self::parse_with(token, limits, HeaderMode::Token)
    }

    /// The one entry point that accepts a `jwk` header (and requires it): DPoP proofs only,
    /// reached through [`crate::verify_dpop_proof`]. Crate-private on purpose.
    pub(crate) fn parse_dpop(token: &str, limits: &Limits) -> Result<Self, TokenError> {
        Self::parse_with(token, limits, HeaderMode::DpopProof)
    }

    fn parse_with(token: &str, limits: &Limits, mode: HeaderMode) -> Result<Self, TokenError> {
        let jws = CompactJws::parse_with(token, limits, mode)?;
        // A JWT's payload is a JSON object, so an empty payload segment (the only way to decode to
        // no bytes) is structural garbage rather than bad JSON.
        if jws.payload.is_empty() {
            return Err(TokenError::Malformed);
        }
        let claims = json::parse_object(&jws.payload, limits.max_json_depth, Segment::Payload)?;
        Ok(UnverifiedJwt { jws, claims })
    }

    /// The parsed protected header.
    pub fn header(&self) -> &Header {
        &self.jws.header
    }

    /// The embedded `jwk` header member (DPoP proofs only; `None` for every other token).
    pub(crate) fn embedded_jwk(&self) -> Option<&Value> {
        self.jws.embedded_jwk.as_ref()
    }

    /// The payload's members, unverified.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The `iss` claim if it is a string; used to select the issuer BEFORE key lookup, so keys are
    /// found by (issuer, kid) and one issuer's key can never vouch for another's token.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Verifies the signature of `jwt` with `key`. The algorithm used is the key's (`key.alg()`),
/// which must be in `allowed`; the header `alg` must equal it exactly.
///
/// # Errors
/// [`TokenError::AlgorithmNotAllowed`] when the key's algorithm is not allowed,
/// [`TokenError::AlgorithmMismatch`] when the header names another algorithm,
/// [`TokenError::SignatureLength`] or [`TokenError::BadSignature`] when the signature is wrong.
pub fn verify_signature(
    jwt: &UnverifiedJwt,
    key: &PublicKey,
    allowed: &[Algorithm],
) -> Result<(), TokenError> {
    jwt.jws.verify(key, allowed)
}
