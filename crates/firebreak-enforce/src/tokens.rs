//! Firebreak access tokens at an enforcement point: verified against the broker's JWKS, with a
//! cache of verified signatures keyed by the token's SHA-256 (STYLE.md §6).
//!
//! INVARIANT (cache-only-skips-the-signature): a cache hit skips parsing and the signature
//! check only. Audience, `exp`/`nbf`, revocation, DPoP binding and policy are checked on every
//! request by the caller, from the cached claims and the current clock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use firebreak_core::Clock;
use firebreak_token::{
    Algorithm, ClaimRules, JwksCache, JwksCacheConfig, JwksSource, Limits, TokenError,
    TypExpectation, UnverifiedJwt, validate_claims, verify_signature,
};
use serde_json::Value;

/// Cache entries kept before the cache is emptied and refilled (bounded memory under a flood of
/// distinct, validly signed tokens; every entry is re-verifiable).
const CACHE_CAP: usize = 65_536;
/// Signature algorithms the broker signs with (DESIGN.md §3): nothing else is accepted.
const ALGS: [Algorithm; 2] = [Algorithm::EdDsa, Algorithm::Es256];

/// The claims of a verified Firebreak access token that enforcement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sub`: the agent id.
    pub agent: String,
    /// `sid`: the session.
    pub session: Option<String>,
    /// `jti`.
    pub jti: String,
    /// `aud` (one string).
    pub audience: String,
    /// `exp`, `iat`, `nbf` (Unix seconds).
    pub exp: i64,
    /// `iat`.
    pub iat: i64,
    /// `nbf`.
    pub nbf: Option<i64>,
    /// The signing key's id.
    pub kid: String,
    /// `cnf.jkt` when DPoP-bound.
    pub jkt: Option<String>,
    /// `scope`, split.
    pub scope: Vec<String>,
    /// `tenant`, `env`, `purpose` claims.
    pub tenant: String,
    /// `env`.
    pub env: String,
    /// `purpose`.
    pub purpose: String,
    /// Depth of the `act` chain (0 when the agent acts for itself).
    pub act_depth: i64,
}

/// Why a token was refused (mapped to 401 `invalid_token` by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Malformed, badly signed, wrong type or issuer.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Another audience.
    #[error("token is for another audience")]
    Audience,
    /// Expired or not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
    /// The broker's keys could not be fetched.
    #[error("broker keys unavailable")]
    KeysUnavailable,
}

/// Verifies Firebreak access tokens.
pub struct TokenVerifier {
    issuer: String,
    jwks: JwksCache,
    clock: Arc<dyn Clock>,
    leeway_secs: i64,
    limits: Limits,
    cache: RwLock<HashMap<[u8; 32], Arc<Verified>>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn str_claim(c: &serde_json::Map<String, Value>, k: &str) -> String {
    c.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl TokenVerifier {
    /// A verifier for tokens issued by `issuer` (the broker's `public_url`), with keys from
    /// `jwks_uri`.
    pub fn new(
        issuer: String,
        jwks_uri: String,
        allow_http: bool,
        leeway_secs: i64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let jwks = JwksCache::new(
            JwksSource::Uri(jwks_uri),
            allow_http,
            JwksCacheConfig::default(),
            Arc::clone(&clock),
        );
        Self {
            issuer,
            jwks,
            clock,
            leeway_secs,
            limits: Limits::default(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Verifies `token` for `audience` at the current time.
    ///
    /// # Errors
    /// A [`TokenRefusal`].
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Arc<Verified>, TokenRefusal> {
        let key = sha256(token.as_bytes());
        let hit = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let v = match hit {
            Some(v) => v,
            None => {
                let v = Arc::new(self.verify_uncached(token).await?);
                let mut cache = self
                    .cache
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= CACHE_CAP {
                    cache.clear();
                }
                cache.insert(key, Arc::clone(&v));
                v
            }
        };
        // Checked on every request, hit or miss (INVARIANT (cache-only-skips-the-signature)).
        if v.audience != audience {
            return Err(TokenRefusal::Audience);
        }
        let now = self.clock.now().as_secs();
        if now > v.exp.saturating_add(self.leeway_secs)
            || v.nbf
                .is_some_and(|n| n > now.saturating_add(self.leeway_secs))
            || v.iat > now.saturating_add(self.leeway_secs)
        {
            return Err(TokenRefusal::Expired);
        }
        Ok(v)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Verified, TokenRefusal> {
        let invalid = |e: TokenError| TokenRefusal::Invalid(e.to_string());
        let jwt = UnverifiedJwt::parse(token, &self.limits).map_err(invalid)?;
        let kid = jwt
            .header()
            .kid
            .clone()
            .ok_or_else(|| TokenRefusal::Invalid("no kid".into()))?;
        let key = match self.jwks.key(&kid).await {
            Ok(k) => k,
            Err(TokenError::IssuerKeysUnavailable) => return Err(TokenRefusal::KeysUnavailable),
            Err(e) => return Err(invalid(e)),
        };
        verify_signature(&jwt, &key, &ALGS).map_err(invalid)?;
        let claims = jwt.claims();
        let aud = match claims.get("aud") {
            Some(Value::String(a)) => a.clone(),
            // The broker issues `aud` as one string; an array is not its (T14).
            _ => return Err(TokenRefusal::Invalid("aud is not one string".into())),
        };
        // Time is checked per request; here a huge leeway keeps validate_claims to structure,
        // type and issuer, so an entry is valid for any request time.
        let std = validate_claims(
            &jwt,
            &ClaimRules {
                issuer: &self.issuer,
                audience: &aud,
                allow_multiple_audiences: false,
                azp_expected: None,
                leeway_secs: 0,
                max_age_secs: None,
                now_secs: claims
                    .get("iat")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
                expected_typ: TypExpectation::AccessToken,
            },
        )
        .map_err(|e| match e {
            TokenError::TokenExpired | TokenError::NotYetValid | TokenError::IssuedInFuture => {
                TokenRefusal::Expired
            }
            e => invalid(e),
        })?;
        let jkt = match claims.get("cnf") {
            None => None,
            Some(Value::Object(cnf)) => match cnf.get("jkt") {
                Some(Value::String(j)) if !j.is_empty() => Some(j.clone()),
                _ => return Err(TokenRefusal::Invalid("cnf without jkt".into())),
            },
            Some(_) => return Err(TokenRefusal::Invalid("cnf is not an object".into())),
        };
        let scope = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(TokenRefusal::Invalid("scope is not a string".into())),
        };
        let mut act_depth = 0;
        let mut cur = claims.get("act");
        while let Some(Value::Object(a)) = cur {
            act_depth += 1;
            cur = a.get("act");
        }
        Ok(Verified {
            agent: std.sub,
            session: claims.get("sid").and_then(Value::as_str).map(str::to_owned),
            jti: std.jti.unwrap_or_default(),
            audience: aud,
            exp: std.exp,
            iat: std.iat,
            nbf: std.nbf,
            kid,
            jkt,
            scope,
            tenant: str_claim(claims, "tenant"),
            env: str_claim(claims, "env"),
            purpose: str_claim(claims, "purpose"),
            act_depth,
        })
    }

    /// How many fetches of the broker's JWKS were started (T07: unknown kids must not amplify).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.fetch_count()
    }

    /// Number of cached verifications (for metrics and tests).
    pub fn cached(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}
