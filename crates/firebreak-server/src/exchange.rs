//! `POST /oauth2/token`: RFC 8693 token exchange, read as one ordered function (DESIGN.md §1):
//! parse → verify the subject and match one agent → resolve the target → decide → bound the
//! lifetime → record the session durably → sign. The order is the security argument.

use firebreak_core::clock::Stopwatch;
use firebreak_core::{Jti, SessionId};
use firebreak_store::{NewExchange, SessionRow, StoreError, TokenRow};
use firebreak_token::random_b64url;
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::Record;
use crate::broker::Broker;
use crate::config::{Target, TargetKind};
use crate::decider::{Decider, Decision, ExchangeQuery};
use crate::error::BrokerError;
use crate::form::Form;
use crate::scope::parse_scope;
use crate::subject::{Subject, TokenType};
use firebreak_policy::{Context, SessionCtx};

/// RFC 8693 §2.1 grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3 issued token type.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A parsed token request.
#[derive(Debug)]
pub struct TokenRequest {
    subject_token: String,
    subject_type: TokenType,
    actor: Option<(String, TokenType)>,
    targets: Vec<String>,
    scope: Option<Vec<String>>,
    purpose: Option<String>,
    elevation: Option<String>,
    break_glass: Option<String>,
}

impl TokenRequest {
    /// Parses the form. `audience` and `resource` may repeat only to be refused as naming more
    /// than one target (`invalid_target`, X09); every other parameter repeated is
    /// `invalid_request` (X16).
    pub fn parse(body: &[u8]) -> Result<(Self, Form), BrokerError> {
        let form = Form::parse(body, &["audience", "resource"])?;
        match form.get("grant_type") {
            None => return Err(BrokerError::Missing("grant_type")),
            Some(GRANT_TOKEN_EXCHANGE) => {}
            Some(_) => return Err(BrokerError::UnsupportedGrantType),
        }
        let subject_token = form
            .get("subject_token")
            .ok_or(BrokerError::Missing("subject_token"))?;
        let subject_type = form
            .get("subject_token_type")
            .ok_or(BrokerError::Missing("subject_token_type"))?;
        let subject_type =
            TokenType::parse(subject_type).ok_or(BrokerError::UnsupportedTokenType)?;
        let actor = match (form.get("actor_token"), form.get("actor_token_type")) {
            (None, None) => None,
            (Some(t), Some(ty)) => Some((
                t.to_owned(),
                TokenType::parse(ty).ok_or(BrokerError::UnsupportedTokenType)?,
            )),
            // RFC 8693 §2.1: actor_token_type is REQUIRED when actor_token is present, and
            // MUST NOT be included otherwise.
            (Some(_), None) => return Err(BrokerError::Missing("actor_token_type")),
            (None, Some(_)) => return Err(BrokerError::Missing("actor_token")),
        };
        let mut targets = Vec::new();
        for r in form.all("resource") {
            // RFC 8707 §2: an absolute URI without a fragment.
            if !r.contains("://") || r.contains('#') {
                return Err(BrokerError::TargetNotRegistered);
            }
            targets.push(r.to_owned());
        }
        targets.extend(form.all("audience").into_iter().map(str::to_owned));
        let scope = form.get("scope").map(parse_scope).transpose()?;
        let purpose = form.get("purpose").map(str::to_owned);
        if purpose
            .as_ref()
            .is_some_and(|p| p.len() > 256 || p.chars().any(char::is_control))
        {
            return Err(BrokerError::BadRequest("purpose"));
        }
        Ok((
            Self {
                subject_token: subject_token.to_owned(),
                subject_type,
                actor,
                targets,
                scope,
                purpose,
                elevation: form.get("elevation").map(str::to_owned),
                break_glass: form.get("break_glass").map(str::to_owned),
            },
            form,
        ))
    }
}

/// The success response (RFC 8693 §2.2.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The issued token.
    pub access_token: String,
    /// Always the access-token URN.
    pub issued_token_type: &'static str,
    /// `Bearer`, or `DPoP` when the token is bound to the request's proof key (RFC 9449 §5).
    pub token_type: &'static str,
    /// Seconds until `exp`.
    pub expires_in: i64,
    /// Granted scopes (omitted when none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// What one exchange decided, for logs and metrics whatever the outcome.
#[derive(Debug, Default)]
pub struct ExchangeTrace {
    /// The elevation the request named.
    pub elevation: Option<String>,
    /// The break-glass window the request named.
    pub break_glass: Option<String>,
    /// The request id (logs, `X-Request-Id`, audit).
    pub request_id: String,
    /// The matched agent, once known.
    pub agent: Option<String>,
    /// The resolved target, once known.
    pub target: Option<String>,
    /// The issued token's jti.
    pub jti: Option<String>,
    /// The session opened.
    pub session: Option<String>,
    /// The thumbprint of the request's verified DPoP proof key (never the proof).
    pub dpop_jkt: Option<String>,
}

impl Broker {
    /// One token exchange.
    pub async fn exchange(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        trace: &mut ExchangeTrace,
    ) -> Result<TokenResponse, BrokerError> {
        let timer = Stopwatch::start();
        let result = self.exchange_inner(headers, body, trace).await;
        if let Err(e) = &result {
            self.audit_refusal(e, trace).await;
        }
        let secs = timer.elapsed_secs();
        match &result {
            Ok(r) => {
                self.metrics.exchange("issued", "ok", secs);
                self.metrics.issued_ttl(r.expires_in as f64);
            }
            Err(e) => {
                let outcome = if e.oauth().0.is_server_error() {
                    "error"
                } else {
                    "denied"
                };
                self.metrics.exchange(outcome, e.reason().as_str(), secs);
            }
        }
        result
    }

    /// Records a refused exchange. A refusal stands whether or not its record lands, so a failed
    /// append is logged, not escalated; our own outages are not decisions and get no record.
    async fn audit_refusal(&self, e: &BrokerError, trace: &ExchangeTrace) {
        if e.oauth().0.is_server_error() {
            return;
        }
        let record = Record::new("exchange", self.clock.now())
            .field("action", Some("exchange"))
            .field("agent", trace.agent.clone())
            .field("target", trace.target.clone())
            .field("request_id", Some(trace.request_id.clone()))
            .field("elevation", trace.elevation.clone())
            .field("break_glass", trace.break_glass.clone())
            .field("dpop_jkt", trace.dpop_jkt.clone());
        let record = match e {
            // A policy decision: its own reasons and version (and what it asked for).
            BrokerError::Denied(d) => record.decision(
                match d.kind {
                    crate::decider::DenialKind::Approval => "require_approval",
                    crate::decider::DenialKind::Target(_)
                    | crate::decider::DenialKind::Scope(_) => "deny",
                },
                json!(d.reasons),
                Some(&d.policy_version),
            ),
            _ => record.decision(
                "deny",
                json!([{ "code": e.reason().as_str() }]),
                Some(&self.policy.policy_version()),
            ),
        };
        if let Err(err) = self.append(record).await {
            tracing::warn!(request_id = trace.request_id, error = %err, "refusal not recorded in the audit log");
        }
    }

    async fn exchange_inner(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        trace: &mut ExchangeTrace,
    ) -> Result<TokenResponse, BrokerError> {
        // Parse: strict form, one value per parameter.
        let (req, form) = TokenRequest::parse(body)?;
        // Client authentication is optional in RFC 8693, but presented credentials must hold.
        self.client(headers, &form)?;
        // DPoP (RFC 9449 §5): a proof, if any, is verified before the subject token, so a bad
        // one costs no key fetch. Its replay check waits until the request is otherwise allowed.
        let dpop = self.dpop_proof(headers)?;
        trace.dpop_jkt = dpop.as_ref().map(|p| p.jkt.clone());
        // One snapshot of the key ring for the whole request: the key that verifies a parent
        // token and the key that signs are from the same moment, whatever a rotation does.
        let keys = self.keys();
        // Authenticate the subject: verify the token and match exactly one agent.
        let subject = self
            .verifier
            .subject(&req.subject_token, req.subject_type, &keys)
            .await
            .map_err(BrokerError::subject)?;
        trace.agent = Some(subject.agent.id.to_string());
        // A DPoP-bound parent is exchanged only with a proof by its key that names it (`ath`);
        // the child is then bound to the same key (below: `cnf` is the proof's `jkt`).
        if let Some(p) = &subject.parent {
            Self::dpop_binding(
                &p.claims,
                dpop.as_ref(),
                Some(&req.subject_token),
                BrokerError::subject,
            )?;
        }
        // Delegation: the actor must be one the subject names in `may_act`.
        let act = match &req.actor {
            None => subject
                .parent
                .as_ref()
                .and_then(|p| p.claims.get("act").cloned()),
            Some((token, ty)) => Some(
                self.delegation(&subject, token, *ty, &keys, dpop.as_ref())
                    .await?,
            ),
        };
        // Target: exactly one registered target, in the agent's tenant and environment.
        let target = self.resolve_target(&req.targets)?;
        trace.target = Some(target.id.to_string());
        if target.kind != TargetKind::Broker
            && (target.tenant != subject.agent.tenant
                || target.environment != subject.agent.environment
                || !subject.agent.tier_allows(&target.tier))
        {
            return Err(BrokerError::CrossEnvironment);
        }
        let parent = subject.parent.as_ref();
        // Decide. A child may only narrow: what it asks must also be in its parent's scope.
        let requested = match (&req.scope, &subject.parent) {
            (Some(s), Some(p)) => {
                if s.iter().any(|x| !p.scopes.contains(x)) {
                    return Err(BrokerError::Scope(firebreak_core::Reason::ScopeNotGranted));
                }
                Some(s.clone())
            }
            (Some(s), None) => Some(s.clone()),
            (None, Some(p)) => Some(p.scopes.clone()),
            (None, None) => None,
        };
        // Grants in force: active elevations and break-glass, from the in-memory snapshot the
        // broker refreshes on every change. A named one (`elevation=`, `break_glass=`) must be
        // usable right now by this agent in this session, or nothing is issued (X13, X15).
        let now = self.clock.now();
        let now_s = now.as_secs();
        let agent_id = &subject.agent.id;
        let parent_session = subject.parent.as_ref().map(|p| &p.session);
        let grants = self.grants();
        let elevation = match &req.elevation {
            None => None,
            Some(id) => {
                trace.elevation = Some(id.clone());
                Some(
                    grants
                        .usable_elevation(id, agent_id, parent_session, now)
                        .ok_or(BrokerError::GrantUnusable)?,
                )
            }
        };
        let break_glass = match &req.break_glass {
            None => grants.break_glass(agent_id, now),
            Some(id) => {
                trace.break_glass = Some(id.clone());
                Some(
                    grants
                        .break_glass(agent_id, now)
                        .filter(|b| &b.id == id)
                        .ok_or(BrokerError::GrantUnusable)?,
                )
            }
        };
        // The parent session's depth, read once: the decision's context and the new row use it.
        let parent_depth = match parent {
            Some(p) => Some(self.session_depth(&p.session).await?),
            None => None,
        };
        let context = Context {
            elevations: grants.elevation_strings(agent_id, parent_session, now),
            break_glass: break_glass.is_some(),
            env: subject.agent.environment.clone(),
            tenant: subject.agent.tenant.clone(),
            purpose: req
                .purpose
                .clone()
                .unwrap_or_else(|| subject.agent.purpose.clone()),
            time: now_s,
            dpop_bound: dpop.is_some(),
            session: parent.map(|p| SessionCtx {
                id: p.session.to_string(),
                depth: i64::from(parent_depth.unwrap_or_default()),
                age_seconds: now_s
                    .saturating_sub(p.claims.get("iat").and_then(Value::as_i64).unwrap_or(now_s)),
            }),
            ..Context::default()
        };
        let requested = requested.unwrap_or_default();
        let decision = self.policy.decide_exchange(ExchangeQuery {
            agent: &subject.agent,
            target: &target,
            scopes: &requested,
            context,
        });
        let permit = match decision {
            Decision::Allow(p) => p,
            Decision::Deny(d) => return Err(BrokerError::Denied(Box::new(d))),
        };
        // The proof is spent only by a request that was allowed, so nobody but an authorised
        // agent can fill the replay cache (which then refuses, never evicts). Before a single-use
        // elevation is consumed: a replayed proof must not use it up.
        if let Some(p) = &dpop {
            self.dpop_seen(p).await?;
        }
        // A single-use elevation is consumed by the exchange it allowed.
        if let Some(e) = &elevation
            && e.single_use
        {
            if self
                .store
                .use_elevation(&e.id, agent_id, parent_session, now)
                .await?
                .is_none()
            {
                return Err(BrokerError::GrantUnusable);
            }
            let mut used = e.clone();
            used.status = firebreak_store::ElevationStatus::Used;
            crate::events::publish(self, vec![crate::grants::elevation_event(&used, now)]).await;
        }
        // Lifetime: the smallest of every bound (X07); nothing left means nothing issued.
        let limit = |ms: u64| now_s.saturating_add(i64::try_from(ms / 1000).unwrap_or(i64::MAX));
        let exp = [
            limit(self.config.limits.default_ttl.as_millis()),
            limit(target.max_ttl.as_millis()),
            subject.exp,
            subject.agent.expires.as_secs(),
            elevation
                .as_ref()
                .and_then(|e| e.expires_at)
                .map_or(i64::MAX, |t| t.as_secs()),
            break_glass
                .as_ref()
                .map_or(i64::MAX, |b| b.ends_at.as_secs()),
        ]
        .into_iter()
        .min()
        .unwrap_or(now_s);
        if exp <= now_s {
            return Err(BrokerError::NoLifetime);
        }
        // Session: a child records its parent, depth and actor chain.
        // Ids lead with the time so that the store's indexes grow at their right edge (one page
        // written per batch instead of one per exchange); 15 random bytes keep them unguessable.
        let stamp = format!("{:011x}", now.as_millis().max(0));
        let session_id = SessionId::try_from(format!("s_{stamp}{}", random_b64url(15)))
            .map_err(|_| BrokerError::Signing("session id".into()))?;
        let jti = Jti::try_from(format!("t_{stamp}{}", random_b64url(15)))
            .map_err(|_| BrokerError::Signing("jti".into()))?;
        let depth = parent_depth.map_or(0, |d| d.saturating_add(1));
        let scope = permit.scopes().join(" ");
        let purpose = req
            .purpose
            .clone()
            .unwrap_or_else(|| subject.agent.purpose.clone());
        let kid = keys.active().kid().to_owned();
        let mut claims = json!({
            "iss": self.config.server.public_url,
            "sub": subject.agent.id.as_str(),
            "aud": target.audience,
            "exp": exp,
            "iat": now_s,
            "nbf": now_s,
            "jti": jti.as_str(),
            "client_id": subject.agent.id.as_str(),
            "sid": session_id.as_str(),
            "tenant": subject.agent.tenant,
            "env": subject.agent.environment,
            "tier": target.tier,
            "purpose": purpose,
            "fb_pv": permit.policy_version(),
        });
        if let Some(obj) = claims.as_object_mut() {
            if !scope.is_empty() {
                obj.insert("scope".into(), Value::String(scope.clone()));
            }
            if let Some(a) = &act {
                obj.insert("act".into(), a.clone());
            }
            // RFC 9449 §6.1: the token is bound to the proof key. INVARIANT (bound-stays-bound):
            // for a bound parent, `dpop_binding` above let the request through only with a proof
            // by the parent's key, so a child of a bound token is bound to the same `jkt`.
            if let Some(p) = &dpop {
                obj.insert("cnf".into(), json!({ "jkt": p.jkt }));
            }
        }
        let exchange = NewExchange {
            replay: subject.replay.clone(),
            session: SessionRow {
                id: session_id.clone(),
                agent: subject.agent.id.clone(),
                parent: parent.map(|p| p.session.clone()),
                depth,
                target: target.id.clone(),
                audience: target.audience.clone(),
                scope: scope.clone(),
                act: act.clone().unwrap_or(Value::Null),
                subject_issuer: subject.issuer_id.clone(),
                created_at: now,
                expires_at: firebreak_core::UnixTime::from_secs(exp),
                revoked_at: None,
            },
            token: TokenRow {
                jti: jti.clone(),
                session: session_id.clone(),
                agent: subject.agent.id.clone(),
                audience: target.audience.clone(),
                kid,
                issued_at: now,
                expires_at: firebreak_core::UnixTime::from_secs(exp),
                revoked_at: None,
            },
        };
        let record = Record::new("exchange", now)
            .field("action", Some("exchange"))
            .field("agent", Some(subject.agent.id.as_str()))
            .session(Some(&session_id))
            .field("parent_session", parent.map(|p| p.session.as_str()))
            .field("depth", Some(depth))
            .field("target", Some(target.id.as_str()))
            .field("audience", Some(target.audience.as_str()))
            .field("jti", Some(jti.as_str()))
            .field("scope", Some(scope.as_str()))
            .field("exp", Some(exp))
            .field("subject_issuer", Some(subject.issuer_id.as_str()))
            .field("act", act.clone())
            .field("request_id", Some(trace.request_id.as_str()))
            .field("elevation", elevation.as_ref().map(|e| e.id.as_str()))
            // The key the token is bound to; never the proof itself.
            .field("dpop_jkt", dpop.as_ref().map(|p| p.jkt.as_str()))
            // Every decision under break-glass names the window and who opened it.
            .field(
                "break_glass",
                break_glass
                    .as_ref()
                    .map(|b| json!({ "id": b.id, "opened_by": b.opened_by })),
            )
            .decision(
                "allow",
                json!(permit.reasons()),
                Some(permit.policy_version()),
            );
        // Record: the session and its audit record are durable, together, before the token
        // exists (INVARIANT record-with-act). A replayed subject token or a parent revoked in the
        // meantime fails here, inside the same transaction; no durable record within the write
        // deadline means no token (503).
        let deadline = self.config.audit.write_deadline.as_std();
        match tokio::time::timeout(
            deadline,
            self.store.commit_exchange(exchange, record.draft()),
        )
        .await
        {
            Ok(Ok(_receipt)) => self.audit_healthy(true),
            Ok(Err(StoreError::Replay)) => return Err(BrokerError::Replay),
            Ok(Err(StoreError::ParentRevoked(_) | StoreError::ParentMissing(_))) => {
                return Err(BrokerError::Subject(crate::error::SubjectError::Revoked));
            }
            Ok(Err(e)) => {
                self.audit_healthy(false);
                return Err(BrokerError::AuditUnavailable(e.to_string()));
            }
            Err(_) => {
                self.audit_healthy(false);
                return Err(BrokerError::AuditUnavailable(
                    "write deadline passed".into(),
                ));
            }
        }
        trace.jti = Some(jti.to_string());
        trace.session = Some(session_id.to_string());
        // Sign: the last step, with the key of the snapshot taken at the start.
        let access_token = keys
            .active()
            .sign_jwt("at+jwt", &claims)
            .map_err(|e| BrokerError::Signing(e.to_string()))?;
        Ok(TokenResponse {
            access_token,
            issued_token_type: TOKEN_TYPE_ACCESS,
            token_type: if dpop.is_some() { "DPoP" } else { "Bearer" },
            expires_in: exp.saturating_sub(now_s),
            scope,
        })
    }

    /// Exactly one target named by every `audience`/`resource` value.
    fn resolve_target(&self, names: &[String]) -> Result<Target, BrokerError> {
        let mut found: Option<&Target> = None;
        if names.is_empty() {
            return Err(BrokerError::Missing("audience"));
        }
        for n in names {
            let t = self
                .config
                .target_by_audience(n)
                .ok_or(BrokerError::TargetNotRegistered)?;
            match found {
                Some(f) if f.id != t.id => return Err(BrokerError::TargetNotRegistered),
                _ => found = Some(t),
            }
        }
        found.cloned().ok_or(BrokerError::TargetNotRegistered)
    }

    async fn session_depth(&self, id: &SessionId) -> Result<u32, BrokerError> {
        match self.store.session(id).await? {
            Some(s) => Ok(s.depth),
            None => Err(BrokerError::Subject(crate::error::SubjectError::Revoked)),
        }
    }

    /// Verifies the actor and builds the issued `act` (RFC 8693 §4.1): the actor on top, the
    /// subject's existing chain nested beneath it.
    async fn delegation(
        &self,
        subject: &Subject,
        token: &str,
        ty: TokenType,
        keys: &crate::keys::KeyRing,
        dpop: Option<&firebreak_token::DpopProof>,
    ) -> Result<Value, BrokerError> {
        let actor = self
            .verifier
            .subject(token, ty, keys)
            .await
            .map_err(BrokerError::actor)?;
        // A DPoP-bound actor token needs a proof by its key too. One request has one proof and
        // `ath` names one token (the subject's, when that is bound), so the actor's is not
        // checked for `ath`; a subject and actor bound to different keys cannot be exchanged.
        if let Some(p) = &actor.parent {
            Self::dpop_binding(&p.claims, dpop, None, BrokerError::actor)?;
        }
        // RFC 8693 §4.4: `may_act` names who may act for the subject; without it, nobody.
        let may = subject
            .claims
            .get("may_act")
            .and_then(|m| m.get("sub"))
            .and_then(Value::as_str);
        if may != Some(actor.agent.id.as_str()) {
            return Err(BrokerError::Delegation);
        }
        let prior = subject
            .parent
            .as_ref()
            .and_then(|p| p.claims.get("act").cloned());
        let mut act = json!({ "sub": actor.agent.id.as_str() });
        let mut depth = 1u32;
        if let Some(p) = prior {
            let mut cur = Some(&p);
            while let Some(c) = cur {
                depth = depth.saturating_add(1);
                cur = c.get("act");
            }
            if let Some(o) = act.as_object_mut() {
                o.insert("act".into(), p);
            }
        }
        if depth > self.config.limits.max_act_depth {
            return Err(BrokerError::Delegation);
        }
        Ok(act)
    }
}
