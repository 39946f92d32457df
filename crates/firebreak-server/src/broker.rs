//! The broker's state and its HTTP surface. Handlers are thin: they parse the transport, call one
//! method, and map the error through `OAuthError` or `Problem` (error.rs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use firebreak_core::{AgentId, Clock, Jti, SessionId, UnixTime};
use firebreak_store::{KeyState, Store, TokenStatus};
use firebreak_token::{JwksCache, JwksCacheConfig, JwksSource, UnverifiedJwt, random_b64url};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, Role};
use crate::decider::PolicyEngine;
use crate::error::{BrokerError, OAuthError, Problem};
use crate::exchange::{ExchangeTrace, GRANT_TOKEN_EXCHANGE};
use crate::form::Form;
use crate::keys::{Kek, KeyError, KeyRing, new_key_row};
use crate::metrics::Metrics;
use crate::subject::{TrustedIssuer, Verifier};

/// Largest request body on any endpoint (SECURITY-TESTS.md §0: 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a `next` key is published before a rotation may make it sign: at least the JWKS
/// `Cache-Control` max-age we announce, so every verifier has had the chance to fetch it.
pub const JWKS_MAX_AGE_SECS: i64 = 60;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] firebreak_store::StoreError),
    /// The signing keys failed.
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// The policy set was refused.
    #[error("policy: {0}")]
    Policy(#[from] firebreak_policy::PolicyError),
    /// The data directory or admin token could not be set up.
    #[error("{0}")]
    DataDir(String),
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) verifier: Verifier,
    pub(crate) policy: PolicyEngine,
    grants: RwLock<Arc<crate::grants::GrantSnapshot>>,
    pub(crate) metrics: Metrics,
    keys: RwLock<Arc<KeyRing>>,
    kek: Option<Kek>,
    admin_token_sha256: [u8; 32],
    /// False after an audit write failed or missed its deadline, until one succeeds again:
    /// `/readyz` reports it.
    audit_ok: std::sync::atomic::AtomicBool,
    audit_public: firebreak_audit::AuditPublicKey,
    /// Set at shutdown: long-lived responses (event streams) end so the server can drain.
    closing: tokio::sync::watch::Sender<bool>,
    /// `{public_url}/oauth2/token`: the `htu` every DPoP proof sent to us must name.
    pub(crate) token_endpoint: String,
    /// Proof `jti`s seen by this node (RFC 9449 §11.1).
    pub(crate) dpop_replay: crate::dpop::DpopReplay,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads `<data_dir>/admin.token`, creating it (mode 0600, 32 random bytes) at first start.
///
/// # Errors
/// A message naming the file when it cannot be created or read.
pub fn admin_token(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let token = format!("fbadm_{}", random_b64url(32));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

impl Broker {
    /// Opens the broker on a checked config and a store.
    ///
    /// # Errors
    /// A [`StartError`] when keys or the data directory cannot be set up.
    pub async fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StartError> {
        let config = Arc::new(config);
        let audit_public =
            crate::audit::pinned_public(&config.server.data_dir).map_err(StartError::DataDir)?;
        let admin = admin_token(&config.server.data_dir).map_err(StartError::DataDir)?;
        let kek = config
            .store
            .key_encryption_key_file
            .as_deref()
            .map(Kek::load)
            .transpose()?;
        let now = clock.now();
        if store.keys().await?.is_empty() {
            let alg = config.server.signing_alg;
            let first = vec![
                new_key_row(alg, KeyState::Active, kek.as_ref(), now)?,
                new_key_row(alg, KeyState::Next, kek.as_ref(), now)?,
            ];
            // Another replica may have won the race; its keys are as good as ours.
            store.init_keys(first).await?;
        }
        store.retire_due_keys(now).await?;
        let ring = KeyRing::from_rows(store.keys().await?, kek.as_ref())?;
        let issuers = config
            .issuers
            .iter()
            .map(|i| {
                let source = match &i.jwks_uri {
                    Some(u) => JwksSource::Uri(u.clone()),
                    None => JwksSource::Discovery {
                        issuer_url: i.url.clone(),
                    },
                };
                let cache = JwksCache::new(
                    source,
                    i.danger_allow_http,
                    JwksCacheConfig::default(),
                    Arc::clone(&clock),
                );
                (
                    i.url.clone(),
                    TrustedIssuer {
                        config: i.clone(),
                        keys: cache,
                    },
                )
            })
            .collect::<HashMap<_, _>>();
        let policy = PolicyEngine::new(&config)?;
        let grants = crate::grants::GrantSnapshot::load(store.as_ref(), now).await?;
        let verifier = Verifier {
            config: Arc::clone(&config),
            issuers,
            clock: Arc::clone(&clock),
            store: Arc::clone(&store),
        };
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let token_endpoint = format!("{}/oauth2/token", config.server.public_url);
        Ok(Arc::new(Self {
            config,
            store,
            clock,
            verifier,
            policy,
            grants: RwLock::new(Arc::new(grants)),
            metrics: Metrics::default(),
            keys: RwLock::new(Arc::new(ring)),
            kek,
            admin_token_sha256: sha256(admin.as_bytes()),
            audit_ok: std::sync::atomic::AtomicBool::new(true),
            audit_public,
            closing: tokio::sync::watch::channel(false).0,
            token_endpoint,
            dpop_replay: crate::dpop::DpopReplay::default(),
        }))
    }

    /// Reloads the policy set atomically; a bad set keeps the old one. Audited either way.
    ///
    /// # Errors
    /// The refusal, as a message naming file and line.
    pub async fn reload_policy(&self) -> Result<(String, String), String> {
        let now = self.clock.now();
        match self.policy.reload(&self.config) {
            Ok((old, new)) => {
                tracing::info!(previous = old, policy_version = new, "policy set reloaded");
                let mut data = serde_json::Map::new();
                data.insert("version".into(), new.clone().into());
                data.insert("at".into(), now.as_secs().into());
                crate::events::publish(
                    self,
                    vec![firebreak_store::NewEvent {
                        kind: firebreak_store::EventKind::Policy,
                        data,
                        until: now.plus_secs(86_400),
                    }],
                )
                .await;
                self.record_done(
                    crate::audit::Record::new("policy_reload", now)
                        .field("previous", Some(old.as_str()))
                        .field("policy_version", Some(new.as_str()))
                        .field("outcome", Some("reloaded")),
                )
                .await;
                Ok((old, new))
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(
                    error = msg,
                    "policy reload refused; the previous set stays in force"
                );
                self.record_done(
                    crate::audit::Record::new("policy_reload", now)
                        .field("policy_version", Some(self.policy.pdp().version()))
                        .field("outcome", Some("refused")),
                )
                .await;
                Err(msg)
            }
        }
    }

    /// Ends every event stream (at shutdown, so a graceful drain can finish).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Changes when the broker starts shutting down.
    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Notes whether the last audit write succeeded (for `/readyz`).
    pub(crate) fn audit_healthy(&self, ok: bool) {
        self.audit_ok
            .store(ok, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends one record, durable within the write deadline or an error.
    pub(crate) async fn append(
        &self,
        record: crate::audit::Record,
    ) -> Result<firebreak_store::AuditReceipt, BrokerError> {
        let deadline = self.config.audit.write_deadline.as_std();
        let r = match tokio::time::timeout(deadline, self.store.append_audit(record.draft())).await
        {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => Err(BrokerError::AuditUnavailable(e.to_string())),
            Err(_) => Err(BrokerError::AuditUnavailable(
                "write deadline passed".into(),
            )),
        };
        self.audit_healthy(r.is_ok());
        r
    }

    /// Records an action that has already taken effect (a revocation, a rotation): the action
    /// stands either way, so a failure is logged rather than undoing it.
    pub(crate) async fn record_done(&self, record: crate::audit::Record) {
        if let Err(e) = self.append(record).await {
            tracing::error!(error = %e, "action taken but its audit record was not written");
        }
    }

    /// The grants in force.
    pub fn grants(&self) -> Arc<crate::grants::GrantSnapshot> {
        Arc::clone(
            &self
                .grants
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reloads the grants snapshot from the store.
    pub(crate) async fn refresh_grants(&self) -> Result<(), BrokerError> {
        let snap =
            crate::grants::GrantSnapshot::load(self.store.as_ref(), self.clock.now()).await?;
        *self
            .grants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(snap);
        Ok(())
    }

    /// The current key ring.
    pub fn keys(&self) -> Arc<KeyRing> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The checked config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn reload_keys(&self) -> Result<(), BrokerError> {
        let ring = KeyRing::from_rows(self.store.keys().await?, self.kek.as_ref())
            .map_err(|e| BrokerError::Signing(e.to_string()))?;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
        Ok(())
    }

    /// Rotates: `next` starts signing, the active key retires once every token it signed has
    /// expired (max TTL + leeway from now), and a new `next` is published. Refused while the
    /// current `next` has been published for less than the JWKS max-age, unless `force`.
    ///
    /// # Errors
    /// `Conflict` when too early; `Store`/`Signing` on failure.
    pub async fn rotate_keys(&self, force: bool) -> Result<(), BrokerError> {
        let now = self.clock.now();
        let ring = self.keys();
        let next = ring
            .next_row()
            .ok_or(BrokerError::Conflict("no next key"))?;
        if !force && next.created_at.plus_secs(JWKS_MAX_AGE_SECS) > now {
            return Err(BrokerError::Conflict("next key published too recently"));
        }
        let new = new_key_row(
            self.config.server.signing_alg,
            KeyState::Next,
            self.kek.as_ref(),
            now,
        )
        .map_err(|e| BrokerError::Signing(e.to_string()))?;
        let ttl = i64::try_from(self.config.limits.max_ttl.as_secs()).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.config.limits.leeway.as_secs()).unwrap_or(60);
        let retire_after = now.plus_secs(ttl.saturating_add(leeway));
        let retiring = ring.active().kid().to_owned();
        let activated = next.kid.clone();
        let published = new.kid.clone();
        self.store.rotate_keys(new, now, retire_after).await?;
        self.reload_keys().await?;
        tracing::info!(kid = self.keys().active().kid(), "signing key rotated");
        self.record_done(
            crate::audit::Record::new("key_rotation", now)
                .field("active", Some(activated))
                .field("retiring", Some(retiring))
                .field("next", Some(published))
                .field("retire_after", Some(retire_after.as_secs())),
        )
        .await;
        Ok(())
    }

    /// Periodic upkeep: retire keys whose tokens have all expired, forget expired replay guards.
    pub async fn maintain(&self) -> Result<(), BrokerError> {
        let now = self.clock.now();
        self.store.retire_due_keys(now).await?;
        // Another replica may have rotated (shared PostgreSQL): reload on every tick. A new
        // `next` is used only after the JWKS max-age (60 s), longer than this 30 s tick, so every
        // replica publishes it before any replica signs with it.
        self.reload_keys().await?;
        self.store.purge_replay(now).await?;
        self.maintain_grants().await
    }

    pub(crate) fn is_admin(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| {
            verify_slices_are_equal(&sha256(t.as_bytes()), &self.admin_token_sha256).is_ok()
        })
    }

    /// Client authentication (RFC 6749 §2.3.1): HTTP Basic, or `client_id`/`client_secret` in
    /// the form, never both. `Ok(None)`: no client credentials were presented.
    pub(crate) fn client(
        &self,
        headers: &HeaderMap,
        form: &Form,
    ) -> Result<Option<&crate::config::Client>, BrokerError> {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "));
        let (id, secret, is_basic) = match (basic, form.get("client_id"), form.get("client_secret"))
        {
            (Some(b), None, None) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|_| BrokerError::ClientAuth { basic: true })?;
                let raw =
                    String::from_utf8(raw).map_err(|_| BrokerError::ClientAuth { basic: true })?;
                let (id, secret) = raw
                    .split_once(':')
                    .ok_or(BrokerError::ClientAuth { basic: true })?;
                // RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
                let dec = |s: &str| {
                    Form::parse(format!("v={s}").as_bytes(), &[])
                        .ok()
                        .and_then(|f| f.get("v").map(str::to_owned))
                        .unwrap_or_default()
                };
                (dec(id), dec(secret), true)
            }
            (None, Some(id), Some(secret)) => (id.to_owned(), secret.to_owned(), false),
            (None, None, None) => return Ok(None),
            (Some(_), _, _) => return Err(BrokerError::ClientAuth { basic: true }),
            (None, _, _) => return Err(BrokerError::ClientAuth { basic: false }),
        };
        let digest = sha256(secret.as_bytes());
        // Compare against every client's digest so the time taken does not say which ids exist.
        let mut found = None;
        for c in &self.config.clients {
            let ok = verify_slices_are_equal(&digest, &c.secret_sha256).is_ok();
            if ok && c.id == id {
                found = Some(c);
            }
        }
        found
            .map(Some)
            .ok_or(BrokerError::ClientAuth { basic: is_basic })
    }

    /// `POST /oauth2/introspect` (RFC 7662).
    async fn introspect(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, BrokerError> {
        let form = Form::parse(body, &[])?;
        let admin = self.is_admin(headers);
        let client = if admin {
            None
        } else {
            match self.client(headers, &form)? {
                Some(c) if c.roles.contains(&Role::Introspect) => Some(c),
                Some(_) => return Err(BrokerError::Forbidden),
                None => return Err(BrokerError::ClientAuth { basic: true }),
            }
        };
        let token = form.get("token").ok_or(BrokerError::Missing("token"))?;
        let inactive = json!({ "active": false });
        // Unknown, malformed, expired, revoked and foreign tokens get the same answer (X11).
        let own = match self.verifier.own(token, None, &self.keys()).await {
            Ok(o) => o,
            Err(crate::error::SubjectError::StoreUnavailable) => {
                return Err(BrokerError::Store(firebreak_store::StoreError::Database(
                    "introspect".into(),
                )));
            }
            Err(_) => return Ok(inactive),
        };
        if let Some(c) = client
            && !c.audiences.contains(&own.audience)
        {
            return Ok(inactive);
        }
        // The claims include `cnf` for a DPoP-bound token, which tells the resource server to
        // demand a proof by that key (RFC 9449 §6.2); `token_type` says so too.
        let bound = matches!(crate::dpop::bound_jkt(&own.claims), Ok(Some(_)));
        let mut out = own.claims.clone();
        out.insert("active".into(), Value::Bool(true));
        out.insert(
            "token_type".into(),
            Value::String(if bound { "DPoP" } else { "Bearer" }.into()),
        );
        Ok(Value::Object(out))
    }

    /// `POST /oauth2/revoke` (RFC 7009): by the token's own agent (bearer token for the broker
    /// audience), a client with role `revoke`, or admin. Unknown tokens answer 200.
    async fn revoke(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), BrokerError> {
        let form = Form::parse(body, &[])?;
        let keys = self.keys();
        enum Caller {
            Admin,
            Client,
            Agent(AgentId),
        }
        let caller = if self.is_admin(headers) {
            Caller::Admin
        } else if let Some(b) = bearer(headers) {
            let own = self
                .verifier
                .own(b, Some(&self.config.server.public_url), &keys)
                .await
                .map_err(|_| BrokerError::Unauthenticated)?;
            Caller::Agent(own.agent)
        } else {
            match self.client(headers, &form)? {
                Some(c) if c.roles.contains(&Role::Revoke) => Caller::Client,
                Some(_) => return Err(BrokerError::Forbidden),
                None => return Err(BrokerError::ClientAuth { basic: true }),
            }
        };
        let token = form.get("token").ok_or(BrokerError::Missing("token"))?;
        // Identify the token by its jti only after its signature verifies: an attacker must not
        // be able to revoke by forging a jti.
        let jti = match UnverifiedJwt::parse(token, &firebreak_token::Limits::default()) {
            Ok(jwt) => {
                let kid = jwt.header().kid.clone().unwrap_or_default();
                match keys.verifier(&kid) {
                    Some(key)
                        if firebreak_token::verify_signature(&jwt, key, &[key.alg()]).is_ok() =>
                    {
                        jwt.claims()
                            .get("jti")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(jti) = jti.and_then(|j| Jti::try_from(j).ok()) else {
            return Ok(());
        };
        let Some((row, _)) = self.store.token(&jti).await? else {
            return Ok(());
        };
        if let Caller::Agent(a) = &caller
            && *a != row.agent
        {
            return Err(BrokerError::NotOwner);
        }
        let now = self.clock.now();
        let revoked = self.store.revoke_session_tree(&row.session, now).await?;
        tracing::info!(jti = %jti, sessions = revoked.len(), "token revoked");
        let by = match &caller {
            Caller::Admin => "admin".to_owned(),
            Caller::Client => "client".to_owned(),
            Caller::Agent(a) => format!("agent:{a}"),
        };
        self.record_done(
            crate::audit::Record::new("revocation", now)
                .field("action", Some("revoke"))
                .field("agent", Some(row.agent.as_str()))
                .session(Some(&row.session))
                .field("jti", Some(jti.as_str()))
                .field("revoked_sessions", Some(json!(revoked)))
                .field("by", Some(by)),
        )
        .await;
        Ok(())
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads a form body within [`MAX_BODY`]: 413 past it, 400 for another media type.
async fn form_body(headers: &HeaderMap, body: Body) -> Result<Bytes, BrokerError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BrokerError::BodyTooLarge);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| BrokerError::BodyTooLarge)?;
    if !is_form(headers) {
        return Err(BrokerError::NotForm);
    }
    Ok(bytes)
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub(crate) fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn token_handler(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = random_b64url(12);
    let body = match form_body(&headers, body).await {
        Ok(b) => b,
        Err(e) => return OAuthError(e).into_response(),
    };
    let mut trace = ExchangeTrace {
        request_id: request_id.clone(),
        ..ExchangeTrace::default()
    };
    match b.exchange(&headers, &body, &mut trace).await {
        Ok(r) => {
            // Every issued token has its audit record; the log line is for debugging only.
            tracing::debug!(
                request_id,
                agent = trace.agent,
                target = trace.target,
                jti = trace.jti,
                session = trace.session,
                "exchange issued"
            );
            with_request_id(no_store(axum::Json(r).into_response()), &request_id)
        }
        Err(e) => {
            tracing::info!(request_id, agent = trace.agent, target = trace.target, reason = e.reason().as_str(), detail = %e, "exchange refused");
            with_request_id(OAuthError(e).into_response(), &request_id)
        }
    }
}

async fn introspect_handler(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match form_body(&headers, body).await {
        Ok(body) => b.introspect(&headers, &body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => {
            b.metrics.denied(e.reason().as_str());
            OAuthError(e).into_response()
        }
    }
}

async fn revoke_handler(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let result = match form_body(&headers, body).await {
        Ok(body) => b.revoke(&headers, &body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => {
            b.metrics.denied(e.reason().as_str());
            OAuthError(e).into_response()
        }
    }
}

async fn discovery(State(b): State<Arc<Broker>>) -> Response {
    let base = &b.config.server.public_url;
    let doc = json!({
        "issuer": base,
        "jwks_uri": format!("{base}/jwks.json"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "grant_types_supported": [GRANT_TOKEN_EXCHANGE],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [b.config.server.signing_alg.as_str()],
        // RFC 9449 §5.1: the token endpoint takes proofs signed with these.
        "dpop_signing_alg_values_supported": crate::dpop::DPOP_ALGORITHMS.map(|a| a.as_str()),
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [],
    });
    let mut r = axum::Json(doc).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn jwks(State(b): State<Arc<Broker>>) -> Response {
    let mut r = axum::Json(b.keys().jwks()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE_SECS}"))
            .unwrap_or(HeaderValue::from_static("no-cache")),
    );
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(b): State<Arc<Broker>>) -> Response {
    // Ready = the store answers, a signing key is loaded (the ring cannot exist without one),
    // and the audit writer commits within the write deadline right now.
    if b.store.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
    }
    // After a failed write, only a real append proves recovery (a full disk or a failing
    // trigger would let an empty commit through); while healthy, an empty commit through the
    // writer proves it is alive without adding records.
    let healthy = if b.audit_ok.load(std::sync::atomic::Ordering::Relaxed) {
        let deadline = b.config.audit.write_deadline.as_std();
        let ok = matches!(
            tokio::time::timeout(deadline, b.store.audit_probe()).await,
            Ok(Ok(()))
        );
        b.audit_healthy(ok);
        ok
    } else {
        b.append(
            crate::audit::Record::new("audit_health", b.clock.now())
                .field("status", Some("recovered")),
        )
        .await
        .is_ok()
    };
    if !healthy {
        return (StatusCode::SERVICE_UNAVAILABLE, "audit unavailable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(b): State<Arc<Broker>>) -> Response {
    let mut r = b.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Admin API (/v1/*): admin bearer token only. An agent's access token is authenticated but not
// authorised here (403, X18).
// ---------------------------------------------------------------------------------------------

pub(crate) async fn require_admin(b: &Broker, headers: &HeaderMap) -> Result<(), BrokerError> {
    if b.is_admin(headers) {
        return Ok(());
    }
    match bearer(headers) {
        None => Err(BrokerError::Unauthenticated),
        Some(t) => match b.verifier.own(t, None, &b.keys()).await {
            Ok(_) => Err(BrokerError::Forbidden),
            Err(_) => Err(BrokerError::Unauthenticated),
        },
    }
}

async fn agent_json(b: &Broker, a: &crate::config::Agent) -> Result<Value, BrokerError> {
    let last = b.store.agent_last_used(&a.id).await?;
    let revoked = b.store.agent_revoked_at(&a.id).await?;
    let now = b.clock.now();
    Ok(json!({
        "id": a.id.as_str(),
        "owner": a.owner,
        "purpose": a.purpose,
        "expires": a.expires_text,
        "expired": a.expires <= now,
        "tenant": a.tenant,
        "environment": a.environment,
        "tier": a.tier,
        "identity": { "issuer": a.identity.issuer, "claims": a.identity.claims, "events": a.identity.events },
        "grants": a.grants.iter().map(|(t, s)| (t.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "last_used": last.map(firebreak_core::format_rfc3339_millis),
        "revoked_at": revoked.map(firebreak_core::format_rfc3339_millis),
    }))
}

async fn list_agents(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let mut out = Vec::new();
        for a in &b.config.agents {
            out.push(agent_json(&b, a).await?);
        }
        Ok(json!({ "agents": out }))
    }
    .await;
    admin_response(r)
}

async fn show_agent(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let a = b
            .config
            .agents
            .iter()
            .find(|a| a.id.as_str() == id)
            .ok_or(BrokerError::NotFound)?;
        agent_json(&b, a).await
    }
    .await;
    admin_response(r)
}

async fn revoke_agent(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let a = b
            .config
            .agents
            .iter()
            .find(|a| a.id.as_str() == id)
            .ok_or(BrokerError::NotFound)?;
        let now = b.clock.now();
        let sessions = b.store.revoke_agent(&a.id, now).await?;
        tracing::info!(agent = %a.id, sessions = sessions.len(), "agent revoked");
        b.record_done(
            crate::audit::Record::new("revocation", now)
                .field("action", Some("revoke_agent"))
                .field("agent", Some(a.id.as_str()))
                .field("revoked_sessions", Some(json!(sessions)))
                .field("by", Some("admin")),
        )
        .await;
        Ok(json!({ "agent": a.id.as_str(), "revoked_sessions": sessions }))
    }
    .await;
    admin_response(r)
}

fn session_json(s: &firebreak_store::SessionRow, status: TokenStatus, now: UnixTime) -> Value {
    let state = match status {
        TokenStatus::Revoked => "revoked",
        TokenStatus::Unknown => "unknown",
        TokenStatus::Live if s.expires_at <= now => "expired",
        TokenStatus::Live => "active",
    };
    json!({
        "id": s.id.as_str(),
        "agent": s.agent.as_str(),
        "parent": s.parent.as_ref().map(SessionId::as_str),
        "depth": s.depth,
        "target": s.target.as_str(),
        "audience": s.audience,
        "scope": s.scope,
        "act": s.act,
        "subject_issuer": s.subject_issuer,
        "created_at": firebreak_core::format_rfc3339_millis(s.created_at),
        "expires_at": firebreak_core::format_rfc3339_millis(s.expires_at),
        "revoked_at": s.revoked_at.map(firebreak_core::format_rfc3339_millis),
        "state": state,
    })
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    agent: Option<String>,
    limit: Option<u32>,
}

async fn list_sessions(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let agent = q
            .agent
            .map(AgentId::try_from)
            .transpose()
            .map_err(|_| BrokerError::BadRequest("agent"))?;
        let rows = b
            .store
            .sessions(agent.as_ref(), q.limit.unwrap_or(100).min(1000))
            .await?;
        let now = b.clock.now();
        let mut out = Vec::new();
        for s in &rows {
            let st = b.store.session_status(&s.id).await?;
            out.push(session_json(s, st, now));
        }
        Ok(json!({ "sessions": out }))
    }
    .await;
    admin_response(r)
}

/// A session with its lineage: ancestors up to the root, and the subtree below it.
async fn show_session(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let id = SessionId::try_from(id).map_err(|_| BrokerError::NotFound)?;
        let s = b.store.session(&id).await?.ok_or(BrokerError::NotFound)?;
        let now = b.clock.now();
        let mut ancestors = Vec::new();
        let mut cur = s.parent.clone();
        while let Some(p) = cur {
            let Some(row) = b.store.session(&p).await? else {
                break;
            };
            ancestors.push(row.id.to_string());
            cur = row.parent.clone();
        }
        let mut children = Vec::new();
        let mut stack = vec![s.id.clone()];
        while let Some(p) = stack.pop() {
            for c in b.store.children(&p).await? {
                let st = b.store.session_status(&c.id).await?;
                children.push(session_json(&c, st, now));
                stack.push(c.id.clone());
                if children.len() > 10_000 {
                    break;
                }
            }
        }
        let st = b.store.session_status(&s.id).await?;
        let mut v = session_json(&s, st, now);
        if let Some(o) = v.as_object_mut() {
            o.insert("ancestors".into(), json!(ancestors));
            o.insert("descendants".into(), json!(children));
        }
        Ok(v)
    }
    .await;
    admin_response(r)
}

async fn delete_session(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let id = SessionId::try_from(id).map_err(|_| BrokerError::NotFound)?;
        b.store.session(&id).await?.ok_or(BrokerError::NotFound)?;
        let now = b.clock.now();
        let revoked = b.store.revoke_session_tree(&id, now).await?;
        tracing::info!(session = %id, count = revoked.len(), "session revoked with descendants");
        b.record_done(
            crate::audit::Record::new("revocation", now)
                .field("action", Some("revoke_session"))
                .session(Some(&id))
                .field("revoked_sessions", Some(json!(revoked)))
                .field("by", Some("admin")),
        )
        .await;
        Ok(json!({ "revoked": revoked }))
    }
    .await;
    admin_response(r)
}

async fn list_keys(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let rows = b.store.keys().await?;
        let keys: Vec<Value> = rows
            .iter()
            .map(|k| {
                json!({
                    "kid": k.kid,
                    "alg": k.alg,
                    "state": k.state.as_str(),
                    "sealed": k.sealed,
                    "created_at": firebreak_core::format_rfc3339_millis(k.created_at),
                    "activated_at": k.activated_at.map(firebreak_core::format_rfc3339_millis),
                    "retiring_at": k.retiring_at.map(firebreak_core::format_rfc3339_millis),
                    "retire_after": k.retire_after.map(firebreak_core::format_rfc3339_millis),
                })
            })
            .collect();
        Ok(json!({ "keys": keys }))
    }
    .await;
    admin_response(r)
}

#[derive(Debug, Deserialize)]
struct RotateQuery {
    #[serde(default)]
    force: bool,
}

async fn rotate_keys(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<RotateQuery>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        b.rotate_keys(q.force).await?;
        Ok(json!({ "active": b.keys().active().kid() }))
    }
    .await;
    admin_response(r)
}

// ---------------------------------------------------------------------------------------------
// Audit (/v1/audit/*): export and proofs for admins; the public key for anyone.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct AuditQuery {
    chain: Option<String>,
    #[serde(default)]
    after: u64,
    seq: Option<u64>,
}

/// Every line of every chain (or of one), in export order.
pub async fn export_lines(
    store: &dyn Store,
    chain: Option<&str>,
    after: u64,
) -> Result<Vec<firebreak_store::AuditLine>, BrokerError> {
    let chains = match chain {
        Some(c) => vec![c.to_owned()],
        None => store.audit_chains().await?,
    };
    // One query per chain: the caller holds the whole export anyway, so paging would only add
    // a cursor to get right (the store appends trailing checkpoints to the last page).
    let mut out = Vec::new();
    for c in chains {
        out.extend(store.audit_lines(&c, after, u32::MAX).await?);
    }
    Ok(out)
}

async fn audit_export(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let r: Result<String, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let lines = export_lines(b.store.as_ref(), q.chain.as_deref(), q.after).await?;
        let mut body = String::new();
        for l in lines {
            body.push_str(&l.json);
            body.push('\n');
        }
        Ok(body)
    }
    .await;
    match r {
        Ok(body) => {
            let mut resp = body.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            no_store(resp)
        }
        Err(e) => Problem(e).into_response(),
    }
}

async fn audit_checkpoints(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let lines = export_lines(b.store.as_ref(), q.chain.as_deref(), q.after).await?;
        let cps: Vec<Value> = lines
            .iter()
            .filter(|l| l.checkpoint)
            .filter_map(|l| serde_json::from_str(&l.json).ok())
            .collect();
        Ok(json!({ "checkpoints": cps }))
    }
    .await;
    admin_response(r)
}

fn hexs(h: &[u8; 32]) -> String {
    firebreak_audit::hex(h)
}

/// An RFC 9162 inclusion proof of record `seq` in the tree of the newest checkpoint covering it
/// (or of the current tree when no checkpoint covers it yet).
async fn audit_proof(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let r: Result<Value, BrokerError> = async {
        require_admin(&b, &headers).await?;
        let chain = q
            .chain
            .unwrap_or_else(|| firebreak_store::BROKER_CHAIN.to_owned());
        let seq = q
            .seq
            .filter(|s| *s > 0)
            .ok_or(BrokerError::BadRequest("seq"))?;
        let lines = export_lines(b.store.as_ref(), Some(&chain), 0).await?;
        let checkpoint: Option<Value> = lines
            .iter()
            .rev()
            .filter(|l| l.checkpoint && l.seq >= seq)
            .find_map(|l| serde_json::from_str(&l.json).ok());
        let size = match &checkpoint {
            Some(c) => c
                .get("tree_size")
                .and_then(Value::as_u64)
                .ok_or(BrokerError::NotFound)?,
            None => lines
                .iter()
                .filter(|l| !l.checkpoint)
                .map(|l| l.seq)
                .max()
                .unwrap_or(0),
        };
        if seq > size {
            return Err(BrokerError::NotFound);
        }
        let leaves = b.store.audit_leaf_hashes(&chain, size).await?;
        let index = seq - 1;
        let proof = firebreak_audit::merkle::inclusion_proof(index, &leaves)
            .map_err(|_| BrokerError::NotFound)?;
        let leaf = leaves
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .ok_or(BrokerError::NotFound)?;
        Ok(json!({
            "chain": chain,
            "seq": seq,
            "leaf_index": index,
            "tree_size": size,
            "leaf_hash": hexs(leaf),
            "root": hexs(&firebreak_audit::merkle::root(&leaves)),
            "proof": proof.iter().map(hexs).collect::<Vec<_>>(),
            "checkpoint": checkpoint,
        }))
    }
    .await;
    admin_response(r)
}

/// Largest ingest batch.
const MAX_INGEST: usize = 8 << 20;

async fn audit_ingest(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let r: Result<Value, BrokerError> = async {
        let client = match b.client(&headers, &Form::default())? {
            Some(c) if c.roles.contains(&Role::Stream) => c,
            Some(_) => return Err(BrokerError::Forbidden),
            None => return Err(BrokerError::Unauthenticated),
        };
        // Without a registered key its checkpoints could not be checked: refuse the chain.
        let key = client.audit_key.as_ref().ok_or(BrokerError::Forbidden)?;
        let bytes = axum::body::to_bytes(body, MAX_INGEST)
            .await
            .map_err(|_| BrokerError::BodyTooLarge)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| BrokerError::BadRequest("utf-8"))?;
        match crate::ingest::ingest(b.store.as_ref(), &client.id, key, text).await {
            Ok((accepted, head)) => {
                Ok(json!({ "chain": client.id, "accepted": accepted, "head_seq": head }))
            }
            Err(crate::ingest::IngestError::Store(firebreak_store::StoreError::HeadMoved)) => {
                Err(BrokerError::Conflict("chain head moved; retry"))
            }
            Err(crate::ingest::IngestError::Store(e)) => Err(BrokerError::Store(e)),
            Err(e) => {
                tracing::warn!(chain = client.id, error = %e, "audit ingest refused");
                Err(BrokerError::IngestRefused(e.to_string()))
            }
        }
    }
    .await;
    admin_response(r)
}

async fn audit_key(State(b): State<Arc<Broker>>) -> Response {
    let mut r = axum::Json(b.audit_public.to_jwk()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk+json"),
    );
    r
}

pub(crate) fn admin_response(r: Result<Value, BrokerError>) -> Response {
    match r {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => Problem(e).into_response(),
    }
}

/// `POST /v1/policy/reload` (admin): the same as SIGHUP.
async fn policy_reload(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    if let Err(e) = require_admin(&b, &headers).await {
        return Problem(e).into_response();
    }
    match b.reload_policy().await {
        Ok((old, new)) => axum::Json(json!({ "reloaded": true, "previous": old, "policy_version": new })).into_response(),
        // The admin asked: the Cedar message (file, line) is for them, not an internal.
        Err(msg) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "reloaded": false, "error": msg, "policy_version": b.policy.pdp().version() })),
        )
            .into_response(),
    }
}

/// The broker's routes.
pub fn router(b: Arc<Broker>) -> Router {
    use crate::grants::handlers as grants;
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/jwks.json", get(jwks))
        .route("/oauth2/token", post(token_handler))
        .route("/oauth2/introspect", post(introspect_handler))
        .route("/oauth2/revoke", post(revoke_handler))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(show_agent).delete(revoke_agent))
        .route("/v1/sessions", get(list_sessions))
        .route(
            "/v1/sessions/{id}",
            get(show_session).delete(delete_session),
        )
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/audit/checkpoints", get(audit_checkpoints))
        .route("/v1/audit/proof", get(audit_proof))
        .route("/v1/audit/key", get(audit_key))
        .route("/v1/audit/ingest", post(audit_ingest))
        .route(
            "/v1/elevations",
            get(grants::list_elevations).post(grants::post_elevation),
        )
        .route("/v1/elevations/{id}", get(grants::get_elevation))
        .route("/v1/elevations/{id}/use", post(grants::use_elevation))
        .route(
            "/v1/approvals",
            get(grants::list_approvals).post(grants::post_approval),
        )
        .route("/v1/approvals/{id}", get(grants::get_approval))
        .route("/v1/approvals/{id}/approve", post(grants::approve))
        .route("/v1/approvals/{id}/deny", post(grants::deny))
        .route(
            "/v1/breakglass",
            get(grants::list_breakglass).post(grants::post_breakglass),
        )
        .route(
            "/v1/breakglass/{id}",
            axum::routing::delete(grants::delete_breakglass),
        )
        .route("/access/v1/evaluation", post(crate::authzen::handler))
        .route("/v1/policy/reload", post(policy_reload))
        .route("/v1/policy/bundle", get(crate::events::bundle))
        .route("/v1/events", get(crate::events::handler))
        .route("/v1/dpop/claims", post(crate::events::claim))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Bodies are read with our own 64 KiB bound (`form_body`), which answers 413 as OAuth
        // JSON; axum's default limit would answer first with plain text.
        .layer(DefaultBodyLimit::disable())
        .with_state(b)
}
