//! The crate's one error type. Each variant names a cause; callers map them onto their wire
//! format with one exhaustive `match` (STYLE.md §4). Nothing here carries token or key bytes, so a
//! variant is safe to log.

/// Which part of a compact JWS a structural error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// The protected header (first segment).
    Header,
    /// The payload (second segment).
    Payload,
    /// The signature (third segment).
    Signature,
    /// A JWK or JWKS document (not part of a token).
    KeyDocument,
}

/// Why fetching an issuer's keys failed. Logged, never shown to a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    /// The URL did not parse, or lacks a host.
    #[error("the URL is not a valid absolute http(s) URL")]
    BadUrl,
    /// The URL is `http://` but plain HTTP was not allowed for this issuer.
    #[error("plain http is not allowed for this issuer")]
    HttpNotAllowed,
    /// The TLS client could not be built.
    #[error("the TLS client could not be built")]
    TlsSetup,
    /// Connecting or sending the request failed.
    #[error("the request failed: {0}")]
    Request(String),
    /// No complete answer within the configured fetch timeout.
    #[error("no answer within the fetch timeout")]
    Timeout,
    /// The server answered with a redirect; redirects are never followed.
    #[error("the server redirected (status {0}); redirects are not followed")]
    Redirect(u16),
    /// The server answered with a status other than 200.
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// The body exceeded `max_body_bytes`.
    #[error("the body is larger than {max} bytes")]
    BodyTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// Reading the body failed.
    #[error("reading the body failed")]
    Body,
    /// The `Content-Type` is not JSON.
    #[error("the content type is not JSON")]
    NotJson,
    /// The body is not the expected JSON document.
    #[error("the document is not valid: {0}")]
    BadDocument(Box<TokenError>),
    /// The discovery document's `issuer` differs from the configured issuer URL.
    #[error("the discovery document names a different issuer")]
    IssuerMismatch,
    /// The discovery document has no usable `jwks_uri`.
    #[error("the discovery document has no usable jwks_uri")]
    MissingJwksUri,
}

/// Every way a token, key or key set can be refused, plus the caller bugs (`ApiMisuse`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    // --- structure -------------------------------------------------------------------------
    /// The token is longer than `Limits::max_token_bytes`; nothing was decoded.
    #[error("the token is larger than the limit")]
    TokenTooLarge,
    /// The token is not three `.`-separated segments with a non-empty header and payload.
    #[error("the token is not a compact JWS")]
    Malformed,
    /// The token has five segments (a JWE) or a JWE-only header member; JWE is never decrypted.
    #[error("JWE is not supported")]
    JweNotSupported,
    /// The token uses the JWS JSON serialisation; only the compact form is accepted.
    #[error("the JWS JSON serialisation is not supported")]
    JsonSerializationNotSupported,
    /// A segment is not canonical unpadded base64url.
    #[error("a segment of the {0:?} is not canonical base64url")]
    BadBase64(Segment),
    /// A segment is not UTF-8 JSON (syntax error, BOM, invalid UTF-8, lone surrogate).
    #[error("the {0:?} is not valid JSON")]
    BadJson(Segment),
    /// The header or payload is JSON but not an object.
    #[error("the {0:?} is not a JSON object")]
    NotAnObject(Segment),
    /// A JSON object repeats a member name (after unescaping), at any depth.
    #[error("the {0:?} repeats a JSON member name")]
    DuplicateMember(Segment),
    /// JSON nesting is deeper than `Limits::max_json_depth`.
    #[error("the {0:?} nests JSON too deeply")]
    JsonTooDeep(Segment),

    // --- header ----------------------------------------------------------------------------
    /// The header has no `alg`.
    #[error("the header has no alg")]
    MissingAlgorithm,
    /// The algorithm is `none`, symmetric, or otherwise not in the allow-list.
    #[error("the algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The header `alg` differs from the algorithm configured for the key.
    #[error("the header alg does not match the key's algorithm {key:?}")]
    AlgorithmMismatch {
        /// The key's algorithm, which is the one that counts.
        key: crate::Algorithm,
    },
    /// The header carries a key or a key location (`jwk`, `jku`, `x5u`, `x5c`); never trusted.
    #[error("the header embeds or points to a key")]
    EmbeddedKeyRefused,
    /// The header has `crit`; this verifier understands no extensions.
    #[error("the header has crit")]
    UnsupportedCritical,
    /// The header has `b64` (RFC 7797 unencoded payload).
    #[error("the header has b64")]
    UnencodedPayloadRefused,
    /// `cty` is `JWT`: nested tokens are not accepted.
    #[error("nested JWTs are not accepted")]
    NestedJwtRefused,
    /// A header member has the wrong JSON type.
    #[error("the header member {member} has the wrong type")]
    HeaderMemberType {
        /// The member's name.
        member: &'static str,
    },
    /// `kid` is not a string of 1 to 256 printable ASCII characters.
    #[error("the kid is not 1..=256 printable ASCII characters")]
    BadKid,
    /// No trusted key has this `kid` (for this issuer).
    #[error("no trusted key has this kid")]
    UnknownKey,

    // --- signature -------------------------------------------------------------------------
    /// The signature has the wrong length for the algorithm (for example a DER ECDSA signature).
    #[error("the signature has the wrong length")]
    SignatureLength,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,

    // --- keys ------------------------------------------------------------------------------
    /// A JWK or JWKS is not the expected JSON shape (not an object, no `keys` array, ...).
    #[error("the key document is not a JWK or JWKS")]
    BadKeyDocument,
    /// A JWK member has the wrong JSON type or is missing.
    #[error("the JWK member {member} is missing or has the wrong type")]
    JwkMember {
        /// The member's name.
        member: &'static str,
    },
    /// `kty` is not RSA, EC or OKP (`oct` is always refused).
    #[error("the key type is not supported")]
    UnsupportedKeyType,
    /// The curve is not P-256 (EC) or Ed25519 (OKP).
    #[error("the curve is not supported")]
    UnsupportedCurve,
    /// The JWK carries private key material.
    #[error("the JWK carries private key material")]
    PrivateKeyMaterial,
    /// `use` is present and not `sig`.
    #[error("the key's use is not sig")]
    KeyUseNotSig,
    /// `key_ops` is present and lacks `verify`.
    #[error("the key's key_ops lack verify")]
    KeyOpsNoVerify,
    /// The JWK's `alg` is not allowed or does not fit its `kty`/`crv`.
    #[error("the key's alg is not allowed for its type")]
    KeyAlgorithmMismatch,
    /// The key bytes are malformed: wrong length, off the curve, a small-order point, even modulus.
    #[error("the key material is malformed")]
    BadKeyMaterial,
    /// An RSA modulus outside 2048..=8192 bits.
    #[error("the RSA key has {bits} bits, outside 2048..=8192")]
    RsaKeySize {
        /// The modulus length in bits.
        bits: usize,
    },
    /// An RSA public exponent that is 1, even, or too large.
    #[error("the RSA public exponent is not acceptable")]
    RsaExponent,
    /// The RSA modulus has the ROCA (CVE-2017-15361) fingerprint.
    #[error("the RSA key has the ROCA fingerprint")]
    RsaRocaVulnerable,

    // --- claims ----------------------------------------------------------------------------
    /// A required claim is absent.
    #[error("the claim {claim} is missing")]
    MissingClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// A claim has the wrong JSON type (a wrong type is never treated as absent).
    #[error("the claim {claim} has the wrong type")]
    ClaimType {
        /// The claim's name.
        claim: &'static str,
    },
    /// A NumericDate outside 0..=253402300799.
    #[error("the claim {claim} is out of range")]
    NumericDateOutOfRange {
        /// The claim's name.
        claim: &'static str,
    },
    /// `exp` is at or before now minus the leeway.
    #[error("the token has expired")]
    TokenExpired,
    /// `nbf` is after now plus the leeway.
    #[error("the token is not yet valid")]
    NotYetValid,
    /// `iat` is after now plus the leeway.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `iat` is older than the maximum token age plus the leeway.
    #[error("the token is older than the maximum age")]
    TooOld,
    /// Time arithmetic overflowed; refused rather than wrapped.
    #[error("time arithmetic overflowed")]
    TimeOverflow,
    /// `iss` differs (byte-exact) from the expected issuer.
    #[error("the issuer does not match")]
    IssuerMismatch,
    /// `aud` does not name the expected audience.
    #[error("the audience does not match")]
    AudienceMismatch,
    /// `aud` is an array and this issuer does not allow multiple audiences.
    #[error("multiple audiences are not allowed")]
    MultipleAudiencesRefused,
    /// `azp` is present and differs from the expected authorised party.
    #[error("the authorised party does not match")]
    AuthorizedPartyMismatch,
    /// `typ` is not what this kind of token must carry (access token vs ID token confusion).
    #[error("the token type does not match")]
    WrongTokenType,

    // --- DPoP proofs (RFC 9449) ---------------------------------------------------------------
    /// A DPoP proof has no `jwk` header (it must carry the key it is bound to).
    #[error("the DPoP proof has no jwk header")]
    DpopKeyMissing,
    /// A DPoP proof's `jti` is empty, too long or holds control characters.
    #[error("the DPoP proof's jti is not acceptable")]
    DpopBadJti,
    /// A DPoP proof claim (`htm`, `htu`, `ath`, `nonce`) does not match the request.
    #[error("the DPoP proof's {claim} does not match the request")]
    DpopClaimMismatch {
        /// The claim's name.
        claim: &'static str,
    },
    /// A DPoP proof with this key and `jti` was already accepted within its window.
    #[error("the DPoP proof was already used")]
    DpopReplayed,
    /// The replay cache is full of live entries; new proofs are refused rather than letting an
    /// eviction reopen a replay window.
    #[error("the DPoP replay cache is full")]
    DpopReplayCacheFull,

    // --- signing and key sources -----------------------------------------------------------
    /// Signing with this algorithm is not supported (Firebreak signs with EdDSA or ES256).
    #[error("signing with this algorithm is not supported")]
    UnsupportedSigningAlgorithm,
    /// The PKCS#8 document was refused for this algorithm.
    #[error("the private key was refused")]
    PrivateKeyRejected,
    /// The signing operation or random generator failed.
    #[error("signing failed")]
    SigningFailed,
    /// The issuer's keys could not be fetched and no last-known-good set is young enough.
    #[error("the issuer's keys are unavailable")]
    IssuerKeysUnavailable,

    // --- caller bugs -----------------------------------------------------------------------
    /// The caller passed inconsistent arguments (for example a negative leeway).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
}
