//! DPoP (RFC 9449): verification of a proof JWT (§4.3) and a bounded replay cache for proof
//! `jti`s (§11.1).
//!
//! A proof is the one JWS this crate verifies with a key the sender chose: the `jwk` header. That
//! is safe only because the result proves possession of *that* key and nothing else; the caller
//! binds a token to its thumbprint (`cnf.jkt`) or compares it with one. The general header rules
//! still refuse `jwk` everywhere else (T04): proofs go through their own crate-private parse
//! entry point, reached only from [`verify_dpop_proof`].
//!
//! Nothing here reads a clock: `now` is an argument, as everywhere in this crate.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use crate::claims::numeric_date;
use crate::{Algorithm, Limits, PublicKey, TokenError, UnverifiedJwt, sha256_b64url};
use crate::{verify_signature, web_uri};

/// The `typ` every proof carries (RFC 9449 §4.2). Compared exactly: an access token (`at+jwt`)
/// or ID token can never pass as a proof, nor a proof as either (T22).
pub const DPOP_TYP: &str = "dpop+jwt";

/// Longest `jti` accepted. RFC 9449 asks for at least 96 bits of randomness; 256 bytes leaves room
/// for any sane encoding and keeps the replay cache's memory per entry bounded.
pub const MAX_DPOP_JTI_BYTES: usize = 256;

/// Proofs are small (a header with one public key, five claims). 8 KiB fits an 8192-bit RSA key;
/// depth 4 fits the header, its `jwk` and a `key_ops` array.
const DPOP_LIMITS: Limits = Limits {
    max_token_bytes: 8 * 1024,
    max_json_depth: 4,
};

/// What the request the proof came with looks like.
#[derive(Debug, Clone)]
pub struct DpopExpect<'a> {
    /// The HTTP method, compared exactly with `htm` (methods are case-sensitive, RFC 9110 §9.1).
    pub method: &'a str,
    /// The request's URI as the client addressed it (for the broker: its public token endpoint).
    /// Compared with `htu` after [`normalize_htu`] of both, without query and fragment.
    pub uri: &'a str,
    /// With an access token (a resource request, or a bound token being exchanged), `ath` must be
    /// its base64url SHA-256 (RFC 9449 §4.3 step 11). `None`: `ath` is not checked.
    pub access_token: Option<&'a str>,
    /// The current time, Unix seconds.
    pub now: u64,
    /// How old a proof's `iat` may be.
    pub max_age_secs: u64,
    /// Clock skew allowed on both sides of the window.
    pub leeway_secs: u64,
    /// Allowed proof algorithms (asymmetric by construction: [`Algorithm`] cannot name `none` or
    /// HS*).
    pub algorithms: &'a [Algorithm],
    /// A server-provided nonce the proof must carry (§8), if the caller uses nonces.
    pub nonce: Option<&'a str>,
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url: the value of `cnf.jkt`.
    pub jkt: String,
    /// The proof's `jti`, for the replay cache.
    pub jti: String,
    /// The proof's `iat`, Unix seconds.
    pub iat: u64,
    /// The proof's `ath`, if it carries one (checked only when an access token was expected).
    pub ath: Option<String>,
}

impl DpopProof {
    /// Checks `ath` against `access_token` (RFC 9449 §4.3 step 11), for callers that learn only
    /// after [`verify_dpop_proof`] that the request's token is DPoP-bound.
    ///
    /// # Errors
    /// [`TokenError::MissingClaim`] without `ath`, [`TokenError::DpopClaimMismatch`] when it is
    /// the hash of another token.
    pub fn check_ath(&self, access_token: &str) -> Result<(), TokenError> {
        let ath = self
            .ath
            .as_deref()
            .ok_or(TokenError::MissingClaim { claim: "ath" })?;
        // The hash of a token is not secret (the token is), so a plain comparison is fine.
        if ath == sha256_b64url(access_token.as_bytes()) {
            Ok(())
        } else {
            Err(TokenError::DpopClaimMismatch { claim: "ath" })
        }
    }
}

fn string_claim<'a>(
    claims: &'a serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'a str>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::ClaimType { claim }),
    }
}

fn required_string<'a>(
    claims: &'a serde_json::Map<String, Value>,
    claim: &'static str,
) -> Result<&'a str, TokenError> {
    string_claim(claims, claim)?.ok_or(TokenError::MissingClaim { claim })
}

/// Verifies a DPoP proof JWT (RFC 9449 §4.3) for one request.
///
/// In order: size and structure (the crate's strict parser, with `jwk` required and `jku`/`x5u`/
/// `x5c` refused), `typ` exactly `dpop+jwt`, `alg` in `expect.algorithms`, the `jwk` loaded by
/// [`PublicKey::from_jwk`] (no private members, no `oct`, no weak keys), the signature with that
/// key, then the claims `jti`, `htm`, `htu`, `iat` (window `[now - max_age - leeway, now +
/// leeway]`), `ath` when an access token is expected, and `nonce` when one is expected. Replay is
/// the caller's job ([`DpopReplayCache`]), after everything else about the request holds.
///
/// # Errors
/// The parser's variants, `WrongTokenType`, `AlgorithmNotAllowed`, `DpopKeyMissing`, the key
/// variants of [`PublicKey::from_jwk`], `AlgorithmMismatch`, `SignatureLength`, `BadSignature`,
/// `MissingClaim`, `ClaimType`, `NumericDateOutOfRange`, `DpopBadJti`, `DpopClaimMismatch`,
/// `IssuedInFuture`, `TooOld`, `TimeOverflow`, and `ApiMisuse` when `expect.uri` is not an
/// absolute http(s) URI.
pub fn verify_dpop_proof(proof: &str, expect: &DpopExpect<'_>) -> Result<DpopProof, TokenError> {
    let want_htu = normalize_htu(expect.uri).ok_or(TokenError::ApiMisuse(
        "DpopExpect::uri is not an absolute http(s) URI",
    ))?;
    let jwt = UnverifiedJwt::parse_dpop(proof, &DPOP_LIMITS)?;
    if jwt.header().typ.as_deref() != Some(DPOP_TYP) {
        return Err(TokenError::WrongTokenType);
    }
    // Already known to be one of ours (the parser refused everything else); now it must also be
    // one this caller allows.
    let alg: Algorithm = jwt.header().alg.parse()?;
    if !expect.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let jwk = jwt.embedded_jwk().ok_or(TokenError::DpopKeyMissing)?;
    let key = PublicKey::from_jwk(jwk)?;
    // INVARIANT (alg-from-key): as for every token, the key's algorithm decides the verifier and
    // the header must agree with it.
    verify_signature(&jwt, &key, expect.algorithms)?;

    let claims = jwt.claims();
    let jti = required_string(claims, "jti")?;
    if jti.is_empty() || jti.len() > MAX_DPOP_JTI_BYTES || jti.chars().any(char::is_control) {
        return Err(TokenError::DpopBadJti);
    }
    if required_string(claims, "htm")? != expect.method {
        return Err(TokenError::DpopClaimMismatch { claim: "htm" });
    }
    let htu = required_string(claims, "htu")?;
    if normalize_htu(htu).as_deref() != Some(want_htu.as_str()) {
        return Err(TokenError::DpopClaimMismatch { claim: "htu" });
    }
    let iat = numeric_date(claims, "iat")?.ok_or(TokenError::MissingClaim { claim: "iat" })?;
    let iat = u64::try_from(iat).map_err(|_| TokenError::NumericDateOutOfRange { claim: "iat" })?;
    let latest = expect
        .now
        .checked_add(expect.leeway_secs)
        .ok_or(TokenError::TimeOverflow)?;
    if iat > latest {
        return Err(TokenError::IssuedInFuture);
    }
    let oldest = expect
        .now
        .saturating_sub(expect.max_age_secs.saturating_add(expect.leeway_secs));
    if iat < oldest {
        return Err(TokenError::TooOld);
    }
    let ath = string_claim(claims, "ath")?.map(str::to_owned);
    if let Some(want) = expect.nonce {
        let nonce = required_string(claims, "nonce")?;
        if nonce != want {
            return Err(TokenError::DpopClaimMismatch { claim: "nonce" });
        }
    }
    let verified = DpopProof {
        jkt: key.thumbprint(),
        jti: jti.to_owned(),
        iat,
        ath,
    };
    if let Some(token) = expect.access_token {
        verified.check_ath(token)?;
    }
    Ok(verified)
}

/// Normalises an HTTP(S) URI for `htu` comparison (RFC 9449 §4.3 step 9, RFC 3986 §6.2.2 and
/// §6.2.3): scheme and host lower-cased, the default port (and an empty one) dropped, percent-
/// encodings upper-cased and unreserved ones decoded, dot segments removed, an empty path made
/// `/`, and query and fragment dropped. `None` for anything that is not an absolute `http` or
/// `https` URI, or that has userinfo, a percent-encoded host, or characters a URI cannot hold.
pub fn normalize_htu(uri: &str) -> Option<String> {
    web_uri::normalize(uri)
}

/// A bounded set of proofs already accepted, keyed by (`jkt`, `jti`) (RFC 9449 §11.1).
///
/// An entry lives until its proof could no longer pass the `iat` window (`iat + max_age +
/// leeway`). When the cache is full of live entries it refuses new proofs ([`TokenError::
/// DpopReplayCacheFull`]) rather than evict one, because an evicted entry is a proof that can be
/// replayed. Times are arguments; the caller holds the lock.
#[derive(Debug)]
pub struct DpopReplayCache {
    capacity: usize,
    entries: HashSet<(String, String)>,
    by_expiry: BTreeSet<(u64, String, String)>,
}

impl DpopReplayCache {
    /// An empty cache holding at most `capacity` live proofs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashSet::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// How many proofs are remembered (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `proof` as used, with the window of `expect` (the same one it was verified
    /// against), or refuses it as a replay.
    ///
    /// # Errors
    /// [`TokenError::DpopReplayed`] when (`jkt`, `jti`) is already live;
    /// [`TokenError::DpopReplayCacheFull`] when `capacity` live proofs are held.
    pub fn check_and_insert(
        &mut self,
        proof: &DpopProof,
        expect: &DpopExpect<'_>,
    ) -> Result<(), TokenError> {
        let now = expect.now;
        // INVARIANT (no-early-forget): an entry is dropped only once `now` is past its expiry,
        // i.e. once `verify_dpop_proof` with this window would refuse its proof as `TooOld`.
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            if let Some((_, jkt, jti)) = self.by_expiry.pop_first() {
                self.entries.remove(&(jkt, jti));
            }
        }
        let key = (proof.jkt.clone(), proof.jti.clone());
        if self.entries.contains(&key) {
            return Err(TokenError::DpopReplayed);
        }
        if self.entries.len() >= self.capacity {
            return Err(TokenError::DpopReplayCacheFull);
        }
        let expires = proof
            .iat
            .saturating_add(expect.max_age_secs)
            .saturating_add(expect.leeway_secs);
        self.by_expiry
            .insert((expires, proof.jkt.clone(), proof.jti.clone()));
        self.entries.insert(key);
        Ok(())
    }
}

/// The store scope under which enforcement points claim DPoP proofs (`Store::claim_once`), so
/// that a proof replayed at a second gateway behind the same `htu` is refused (RFC 9449 §11.1,
/// G12).
pub const DPOP_CLAIM_SCOPE: &str = "dpop";

/// The claim key of a proof: its key's thumbprint and its `jti`, hashed to a fixed size (a `jti`
/// is the client's choice of up to the proof's size limit).
pub fn dpop_claim_key(jkt: &str, jti: &str) -> String {
    crate::sign::sha256_hex(format!("{jkt}\n{jti}").as_bytes())
}
