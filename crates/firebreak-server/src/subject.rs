//! Subject and actor tokens: an issuer's JWT or a Firebreak access token becomes a `Subject`
//! (the one agent it proves, plus what bounds a child) or a named refusal.

use std::collections::HashMap;
use std::sync::Arc;

use firebreak_core::{AgentId, Clock, Jti, SessionId, UnixTime};
use firebreak_store::{ReplayGuard, Store, TokenStatus};
use firebreak_token::{
    ClaimRules, JwksCache, Limits as TokenLimits, TokenError, TypExpectation, UnverifiedJwt,
    sha256_hex, validate_claims, verify_signature,
};
use serde_json::{Map, Value};

use crate::config::{Agent, Config, Issuer};
use crate::error::SubjectError;
use crate::keys::KeyRing;

/// The three token types we accept (RFC 8693 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// `urn:ietf:params:oauth:token-type:jwt`: an issuer's JWT.
    Jwt,
    /// `urn:ietf:params:oauth:token-type:id_token`: an issuer's ID token.
    IdToken,
    /// `urn:ietf:params:oauth:token-type:access_token`: a Firebreak token (child session).
    AccessToken,
}

impl TokenType {
    /// Parses the URN.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "urn:ietf:params:oauth:token-type:jwt" => Some(Self::Jwt),
            "urn:ietf:params:oauth:token-type:id_token" => Some(Self::IdToken),
            "urn:ietf:params:oauth:token-type:access_token" => Some(Self::AccessToken),
            _ => None,
        }
    }
}

/// A verified Firebreak access token.
#[derive(Debug, Clone)]
pub struct OwnToken {
    /// `sub`.
    pub agent: AgentId,
    /// `sid`.
    pub session: SessionId,
    /// `jti`.
    pub jti: Jti,
    /// `aud`.
    pub audience: String,
    /// `scope`, split.
    pub scopes: Vec<String>,
    /// `exp`.
    pub exp: i64,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// What a verified subject token proves.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The one agent it matched.
    pub agent: Agent,
    /// Its `exp`.
    pub exp: i64,
    /// The replay guard to record (external tokens only).
    pub replay: Option<ReplayGuard>,
    /// For a Firebreak token: the parent session, its scopes, depth and `act`.
    pub parent: Option<OwnToken>,
    /// The issuer id (`firebreak` for our own tokens).
    pub issuer_id: String,
    /// The token's claims (`may_act`, …).
    pub claims: Map<String, Value>,
}

/// An issuer with its key cache.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Its config.
    pub config: Issuer,
    /// Its keys.
    pub keys: JwksCache,
}

/// Verifies subject, actor and own tokens.
#[derive(Debug)]
pub struct Verifier {
    pub(crate) config: Arc<Config>,
    pub(crate) issuers: HashMap<String, TrustedIssuer>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) store: Arc<dyn Store>,
}

impl Verifier {
    fn token_limits(&self) -> TokenLimits {
        TokenLimits {
            max_token_bytes: self.config.limits.max_token_bytes,
            ..TokenLimits::default()
        }
    }

    fn leeway(&self) -> i64 {
        i64::try_from(self.config.limits.leeway.as_secs()).unwrap_or(60)
    }

    /// Verifies a subject (or actor) token of type `ty` and matches exactly one agent.
    pub async fn subject(
        &self,
        token: &str,
        ty: TokenType,
        keys: &KeyRing,
    ) -> Result<Subject, SubjectError> {
        // Parse first: size, structure, strict JSON, header rules. Nothing is fetched yet.
        let jwt = UnverifiedJwt::parse(token, &self.token_limits())?;
        let iss = jwt
            .issuer()
            .ok_or(SubjectError::Token(TokenError::MissingClaim {
                claim: "iss",
            }))?;
        if iss == self.config.server.public_url {
            if ty != TokenType::AccessToken {
                return Err(SubjectError::TypeMismatch);
            }
            let own = self.own_parsed(&jwt, None, keys).await?;
            let agent = self.live_agent(&own.agent).await?;
            return Ok(Subject {
                agent,
                exp: own.exp,
                replay: None,
                issuer_id: "firebreak".into(),
                claims: own.claims.clone(),
                parent: Some(own),
            });
        }
        if ty == TokenType::AccessToken {
            // Only Firebreak tokens are exchanged as access tokens; an issuer's ID token sent
            // as one is a confusion we refuse (SECURITY-TESTS.md T22).
            return Err(SubjectError::TypeMismatch);
        }
        let issuer = self.issuers.get(iss).ok_or(SubjectError::UnknownIssuer)?;
        let cfg = &issuer.config;
        // The algorithm is allow-listed before any key lookup (T01, T02): `none` or HS* never
        // reach the cache, let alone a verifier.
        let alg: firebreak_token::Algorithm = jwt
            .header()
            .alg
            .parse()
            .map_err(|_| SubjectError::Token(TokenError::AlgorithmNotAllowed))?;
        if !cfg.algorithms.contains(&alg) {
            return Err(SubjectError::Token(TokenError::AlgorithmNotAllowed));
        }
        let kid = jwt
            .header()
            .kid
            .as_deref()
            .ok_or(SubjectError::Token(TokenError::UnknownKey))?;
        let key = issuer.keys.key(kid).await.map_err(|e| match e {
            TokenError::IssuerKeysUnavailable => SubjectError::KeysUnavailable,
            other => SubjectError::Token(other),
        })?;
        verify_signature(&jwt, &key, &cfg.algorithms)?;
        let now = self.clock.now().as_secs();
        let claims = validate_claims(
            &jwt,
            &ClaimRules {
                issuer: &cfg.url,
                audience: &cfg.audience,
                allow_multiple_audiences: cfg.allow_multiple_audiences,
                // OIDC Core §3.1.3.7 (5): an `azp` must be us, as this issuer knows us.
                azp_expected: Some(&cfg.audience),
                leeway_secs: self.leeway(),
                max_age_secs: Some(i64::try_from(cfg.max_token_age.as_secs()).unwrap_or(i64::MAX)),
                now_secs: now,
                expected_typ: TypExpectation::IdToken,
            },
        )?;
        let agent = self.match_agent(cfg, jwt.claims())?.clone();
        if agent.expires.as_secs() <= now {
            return Err(SubjectError::AgentExpired);
        }
        // A revoked agent is refused inside the commit transaction (`commit_exchange`), where
        // the check cannot race the revocation; reading it here as well would cost a store
        // round trip per exchange and prove less.
        let replay_key = claims
            .jti
            .clone()
            .unwrap_or_else(|| sha256_hex(token.as_bytes()));
        Ok(Subject {
            agent,
            exp: claims.exp,
            replay: Some(ReplayGuard {
                issuer: cfg.id.clone(),
                key: replay_key,
                expires_at: UnixTime::from_secs(claims.exp.saturating_add(self.leeway())),
            }),
            parent: None,
            issuer_id: cfg.id.clone(),
            claims: jwt.claims().clone(),
        })
    }

    /// Exactly one agent bound to this issuer whose every claim condition holds.
    fn match_agent<'a>(
        &'a self,
        issuer: &Issuer,
        claims: &Map<String, Value>,
    ) -> Result<&'a Agent, SubjectError> {
        let mut matched: Vec<&Agent> = Vec::new();
        let mut first_miss: Option<String> = None;
        let mut bound = 0usize;
        for agent in self
            .config
            .agents
            .iter()
            .filter(|a| a.identity.issuer == issuer.id)
        {
            bound += 1;
            match first_mismatch(agent, claims) {
                None => matched.push(agent),
                Some(claim) => {
                    first_miss.get_or_insert(claim);
                }
            }
        }
        match matched.as_slice() {
            [one] => Ok(one),
            [] if bound == 0 => Err(SubjectError::NoAgentMatch),
            [] => Err(SubjectError::TrustRuleMismatch {
                claim: first_miss.unwrap_or_default(),
            }),
            _ => Err(SubjectError::AmbiguousAgent),
        }
    }

    /// The agent named by one of our tokens, if it is still registered, unexpired, unrevoked.
    async fn live_agent(&self, id: &AgentId) -> Result<Agent, SubjectError> {
        let agent = self
            .config
            .agents
            .iter()
            .find(|a| &a.id == id)
            .ok_or(SubjectError::Revoked)?;
        if agent.expires.as_secs() <= self.clock.now().as_secs() {
            return Err(SubjectError::AgentExpired);
        }
        Ok(agent.clone())
    }

    /// Verifies one of our own access tokens: signature by a published key, claims, `aud` when
    /// given, and that neither it, its session, an ancestor nor its agent is revoked.
    pub async fn own(
        &self,
        token: &str,
        audience: Option<&str>,
        keys: &KeyRing,
    ) -> Result<OwnToken, SubjectError> {
        let jwt = UnverifiedJwt::parse(token, &self.token_limits())?;
        self.own_parsed(&jwt, audience, keys).await
    }

    async fn own_parsed(
        &self,
        jwt: &UnverifiedJwt,
        audience: Option<&str>,
        keys: &KeyRing,
    ) -> Result<OwnToken, SubjectError> {
        let kid = jwt
            .header()
            .kid
            .as_deref()
            .ok_or(SubjectError::Token(TokenError::UnknownKey))?;
        let key = keys
            .verifier(kid)
            .ok_or(SubjectError::Token(TokenError::UnknownKey))?;
        let alg = [key.alg()];
        verify_signature(jwt, key, &alg)?;
        let claims = jwt.claims();
        let aud = match claims.get("aud") {
            Some(Value::String(a)) => a.clone(),
            // We issue `aud` as one string; an array is not ours (T14).
            _ => return Err(SubjectError::Token(TokenError::AudienceMismatch)),
        };
        if audience.is_some_and(|want| want != aud) {
            return Err(SubjectError::Token(TokenError::AudienceMismatch));
        }
        let std = validate_claims(
            jwt,
            &ClaimRules {
                issuer: &self.config.server.public_url,
                audience: &aud,
                allow_multiple_audiences: false,
                azp_expected: None,
                leeway_secs: self.leeway(),
                max_age_secs: None,
                now_secs: self.clock.now().as_secs(),
                expected_typ: TypExpectation::AccessToken,
            },
        )?;
        let str_claim = |name: &'static str| -> Result<String, SubjectError> {
            match claims.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(SubjectError::Token(TokenError::MissingClaim {
                    claim: name,
                })),
            }
        };
        let bad =
            |name: &'static str| SubjectError::Token(TokenError::MissingClaim { claim: name });
        let agent = AgentId::try_from(std.sub.clone()).map_err(|_| bad("sub"))?;
        let session = SessionId::try_from(str_claim("sid")?).map_err(|_| bad("sid"))?;
        let jti =
            Jti::try_from(std.jti.clone().ok_or_else(|| bad("jti"))?).map_err(|_| bad("jti"))?;
        let scope = match claims.get("scope") {
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
            Some(_) => return Err(bad("scope")),
        };
        match self.store.token(&jti).await {
            Ok(Some((row, TokenStatus::Live))) if row.session == session && row.agent == agent => {}
            // Unknown to the store (never issued, or issued without its record) or revoked.
            Ok(_) => return Err(SubjectError::Revoked),
            Err(_) => return Err(SubjectError::StoreUnavailable),
        }
        Ok(OwnToken {
            agent,
            session,
            jti,
            audience: aud,
            scopes: scope,
            exp: std.exp,
            claims: claims.clone(),
        })
    }
}

/// The first claim of `agent`'s rule that `claims` does not satisfy, or `None` when all hold.
/// Matching is exact: never by prefix, never case-folded.
fn first_mismatch(agent: &Agent, claims: &Map<String, Value>) -> Option<String> {
    for (name, want) in &agent.identity.claims {
        match claims.get(name) {
            Some(Value::String(got)) if got == want => {}
            _ => return Some(name.clone()),
        }
    }
    if !agent.identity.events.is_empty() {
        match claims.get("event_name") {
            Some(Value::String(e)) if agent.identity.events.contains(e) => {}
            _ => return Some("event_name".into()),
        }
    }
    None
}
