//! The Firebreak gateway (DESIGN.md §1, §3, §9): a reverse proxy in front of HTTP and MCP tools.
//! Per request, in one ordered path: Host/Origin check → route → token (broker JWKS, cached
//! signature, audience, time) → DPoP proof when bound → revocation and feed freshness →
//! in-process Cedar decision → durable audit record → the agent's credentials and spoofable
//! headers stripped, identity headers and the route's upstream credential set → forward →
//! response streamed back (MCP `tools/list` answers filtered).
//!
//! INVARIANT (no-token-passthrough): the agent's `Authorization`, `DPoP`, `Cookie` and
//! `access_token` query parameter never reach an upstream; only the route's credential does.
//! INVARIANT (record-before-forward): an allowed request is forwarded only after its record is
//! durable; a record that cannot be written within the deadline fails the request (503).
#![forbid(unsafe_code)]

pub mod config;
pub mod mcp;
pub mod path;
pub mod ship;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use firebreak_core::{Reason, SessionId, UnixTime};
use firebreak_enforce::{Bundle, Enforcer, Refusal, TargetInfo, TokenRefusal, Verified};
use firebreak_policy::{Action, Decision, Resource};
use firebreak_store::{AuditDraft, Store};
use firebreak_token::{Algorithm, DpopExpect, DpopReplayCache, verify_dpop_proof};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

pub use config::{GatewayConfig, GatewayConfigError, Route};

/// DPoP proof algorithms accepted (as the broker).
const DPOP_ALGS: [Algorithm; 2] = [Algorithm::Es256, Algorithm::EdDsa];
/// Proof age accepted (RFC 9449 §11.1), plus the leeway.
const DPOP_MAX_AGE: u64 = 60;
/// Largest upstream `tools/list` answer buffered for filtering.
const MAX_LIST_BODY: usize = 8 << 20;

/// Request headers never forwarded: the agent's credentials, spoofable forwarding and identity
/// headers, and hop-by-hop headers (RFC 9110 §7.6.1).
const STRIPPED: [&str; 17] = [
    "authorization",
    "dpop",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type Upstream = Client<HttpConnector, Body>;

#[derive(Debug, Default)]
struct Counters {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: firebreak_enforce::Histogram,
}

const LATENCY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// The gateway.
pub struct Gateway {
    cfg: GatewayConfig,
    enforcer: Arc<Enforcer>,
    audit: Arc<dyn Store>,
    chain: String,
    upstream: Upstream,
    dpop_replay: Mutex<DpopReplayCache>,
    /// Where proofs that passed the local cache are claimed for every gateway (G12).
    shared_replay: SharedReplay,
    counters: Mutex<Counters>,
    /// Standalone only: how shipping its own chain to the broker goes.
    shipping: std::sync::OnceLock<Arc<ship::ShipMetrics>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.cfg.listen)
            .finish_non_exhaustive()
    }
}

/// How the agent presented its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    DPoP,
}

/// Where a DPoP proof is claimed after the node-local replay cache let it pass.
///
/// INVARIANT (one-proof-one-use-everywhere): a DPoP-bound request is forwarded only after its
/// proof's (jkt, jti) was claimed in the broker's store, which every gateway on that broker
/// shares, so a proof replayed at a second gateway behind the same `htu` is refused (G12). The
/// local cache only saves the round trip for replays at this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SharedReplay {
    /// The gateway's store is the broker's: claim in it directly.
    Store,
    /// A standalone gateway: claim through `POST /v1/dpop/claims`.
    Broker,
}

/// A proof that passed the local checks and still has to be claimed for every gateway.
struct ProofClaim {
    jkt: String,
    jti: String,
    until: i64,
}

/// A refusal on the wire.
struct Refuse {
    status: StatusCode,
    reason: Reason,
    /// `WWW-Authenticate` challenge, for 401.
    challenge: Option<String>,
    /// Close the connection after answering (a request whose framing is in doubt).
    close: bool,
}

/// G03 (RFC 9112 §6.1, §6.3): hyper parses the framing and refuses most malformed forms itself
/// (a space before the colon, obs-fold, differing `Content-Length`s, a final coding that is not
/// `chunked`, a bad chunk size). `Transfer-Encoding` with `Content-Length` it reads as chunked,
/// drops the length and closes the connection after answering, as §6.1 allows. What it
/// tolerates but another parser might read differently is refused here: a `Transfer-Encoding`
/// other than exactly one `chunked` line, and a `Content-Length` that is listed ("0, 0") or
/// still repeated; a TE with a CL is refused too should hyper ever pass one through. The answer
/// closes the connection, so no bytes after this request are ever read as another request.
fn check_framing(headers: &HeaderMap) -> Result<(), Refuse> {
    // On the hot path: iterators, no allocation.
    let mut cls = headers.get_all(header::CONTENT_LENGTH).iter();
    // hyper accepts a list of equal values ("5, 5"); one plain number is the only form taken.
    let cl_ok = match (cls.next(), cls.next()) {
        (None, _) => true,
        (Some(v), None) => !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit),
        (Some(_), Some(_)) => false,
    };
    let has_cl = headers.contains_key(header::CONTENT_LENGTH);
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let te_ok = match (te.next(), te.next()) {
        (None, _) => true,
        (Some(one), None) => one.as_bytes().eq_ignore_ascii_case(b"chunked") && !has_cl,
        (Some(_), Some(_)) => false,
    };
    if te_ok && cl_ok {
        return Ok(());
    }
    Err(Refuse {
        close: true,
        ..Refuse::new(StatusCode::BAD_REQUEST, Reason::MalformedRequest)
    })
}

fn problem(status: StatusCode, reason: Reason) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "reason": reason.as_str(),
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

impl Refuse {
    fn new(status: StatusCode, reason: Reason) -> Self {
        Self {
            status,
            reason,
            challenge: None,
            close: false,
        }
    }
    fn into_response(self) -> Response {
        let mut r = problem(self.status, self.reason);
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        r
    }
}

fn reasons_json(d: &Decision) -> Value {
    serde_json::to_value(d.reasons()).unwrap_or(Value::Null)
}

fn jsonrpc(status: StatusCode, body: Bytes) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What one request is about, for its record.
struct Subject<'a> {
    v: &'a Verified,
    route: &'a Route,
    request_id: &'a str,
    dpop_bound: bool,
}

impl Gateway {
    /// A gateway writing its records to `audit` on chain `chain` (the broker's store inside
    /// `serve`; its own SQLite file when standalone).
    pub fn new(
        cfg: GatewayConfig,
        enforcer: Arc<Enforcer>,
        audit: Arc<dyn Store>,
        chain: String,
    ) -> Arc<Self> {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.upstream_connect_timeout.as_std()));
        conn.set_nodelay(true);
        let upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        // Inside `serve` the store is the broker's own (shared by its replicas on PostgreSQL);
        // a standalone gateway's store is its private file, so it claims at the broker.
        let shared_replay = if chain == firebreak_store::BROKER_CHAIN {
            SharedReplay::Store
        } else {
            SharedReplay::Broker
        };
        Arc::new(Self {
            cfg,
            enforcer,
            audit,
            chain,
            shared_replay,
            upstream,
            dpop_replay: Mutex::new(DpopReplayCache::new(65_536)),
            counters: Mutex::new(Counters::default()),
            shipping: std::sync::OnceLock::new(),
        })
    }

    /// Shows `m` (from [`ship::Shipper::metrics`]) on the metrics page; only a standalone
    /// gateway, which ships its own chain, has them. A second call is ignored.
    pub fn report_shipping(&self, m: Arc<ship::ShipMetrics>) {
        let _ = self.shipping.set(m);
    }

    /// The checked config.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The enforcement core.
    pub fn enforcer(&self) -> &Arc<Enforcer> {
        &self.enforcer
    }

    fn now(&self) -> UnixTime {
        self.enforcer.clock().now()
    }

    fn count(&self, decision: &'static str, reason: &'static str) {
        *self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .requests
            .entry((decision, reason))
            .or_default() += 1;
    }

    fn resource_metadata(&self, route: &Route) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            self.cfg.public_url, route.path
        )
    }

    fn unauthorized(&self, route: &Route, reason: Reason, presented: bool) -> Refuse {
        let mut c = format!(
            "Bearer realm=\"firebreak\", resource_metadata=\"{}\"",
            self.resource_metadata(route)
        );
        if presented {
            c.push_str(", error=\"invalid_token\"");
        }
        Refuse {
            status: StatusCode::UNAUTHORIZED,
            reason,
            challenge: Some(c),
            close: false,
        }
    }

    fn dpop_challenge(&self, error: &str, reason: Reason) -> Refuse {
        Refuse {
            status: StatusCode::UNAUTHORIZED,
            reason,
            challenge: Some(format!("DPoP error=\"{error}\", algs=\"ES256 EdDSA\"")),
            close: false,
        }
    }

    /// Host and Origin (MCP DNS-rebinding defence, G07): an `Origin` must be listed; `Host`
    /// must be one this gateway serves.
    fn check_origin(&self, h: &HeaderMap) -> Result<(), Refuse> {
        let deny = || Refuse::new(StatusCode::FORBIDDEN, Reason::OriginNotAllowed);
        let mut hosts = h.get_all(header::HOST).iter();
        let host = hosts.next().ok_or_else(deny)?;
        if hosts.next().is_some() {
            return Err(deny());
        }
        let host = host.to_str().map_err(|_| deny())?.to_ascii_lowercase();
        if !self.cfg.allowed_hosts.contains(&host) {
            return Err(deny());
        }
        let mut origins = h.get_all(header::ORIGIN).iter();
        if let Some(o) = origins.next() {
            let o = o.to_str().map_err(|_| deny())?;
            if origins.next().is_some() || !self.cfg.allowed_origins.contains(o) {
                return Err(deny());
            }
        }
        Ok(())
    }

    /// The token and how it came (RFC 6750 §2.1, RFC 9449 §7.1). A query `access_token` is
    /// never read (RFC 9700 §2.4: no tokens in URLs); it is stripped before forwarding.
    fn credentials<'h>(
        &self,
        h: &'h HeaderMap,
        route: &Route,
    ) -> Result<(Scheme, &'h str), Refuse> {
        let mut all = h.get_all(header::AUTHORIZATION).iter();
        let Some(v) = all.next() else {
            return Err(self.unauthorized(route, Reason::InvalidToken, false));
        };
        if all.next().is_some() {
            return Err(Refuse::new(
                StatusCode::BAD_REQUEST,
                Reason::MalformedRequest,
            ));
        }
        let v = v
            .to_str()
            .map_err(|_| self.unauthorized(route, Reason::InvalidToken, true))?;
        let (scheme, rest) = v
            .split_once(' ')
            .ok_or_else(|| self.unauthorized(route, Reason::InvalidToken, true))?;
        let token = rest.trim();
        if token.is_empty() || token.contains(' ') {
            return Err(self.unauthorized(route, Reason::InvalidToken, true));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            Ok((Scheme::Bearer, token))
        } else if scheme.eq_ignore_ascii_case("dpop") {
            Ok((Scheme::DPoP, token))
        } else {
            Err(self.unauthorized(route, Reason::InvalidToken, false))
        }
    }

    /// RFC 9449 §7: a bound token needs the `DPoP` scheme and a proof of its key for this
    /// request. Returns whether the request is DPoP-bound.
    fn check_dpop(
        &self,
        parts: &http::request::Parts,
        scheme: Scheme,
        token: &str,
        v: &Verified,
        route: &Route,
    ) -> Result<Option<ProofClaim>, Refuse> {
        let jkt = match (&v.jkt, scheme) {
            (Some(j), Scheme::DPoP) => j,
            // The Bearer downgrade of a bound token, and DPoP with an unbound one: both are the
            // token's defect (G12).
            (Some(_), Scheme::Bearer) | (None, Scheme::DPoP) => {
                return Err(self.unauthorized(route, Reason::DpopRequired, true));
            }
            (None, Scheme::Bearer) if route.require_dpop => {
                return Err(self.dpop_challenge("invalid_token", Reason::DpopRequired));
            }
            (None, Scheme::Bearer) => return Ok(None),
        };
        let mut proofs = parts.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (Some(p), None) => p
                .to_str()
                .map_err(|_| self.dpop_challenge("invalid_dpop_proof", Reason::InvalidDpopProof))?,
            _ => return Err(self.dpop_challenge("invalid_dpop_proof", Reason::InvalidDpopProof)),
        };
        let uri = format!("{}{}", self.cfg.public_url, parts.uri.path());
        let now = u64::try_from(self.now().as_secs()).unwrap_or(0);
        let expect = DpopExpect {
            method: parts.method.as_str(),
            uri: &uri,
            access_token: Some(token),
            now,
            max_age_secs: DPOP_MAX_AGE,
            leeway_secs: 60,
            algorithms: &DPOP_ALGS,
            nonce: None,
        };
        let p = verify_dpop_proof(proof, &expect).map_err(|e| {
            tracing::debug!(error = %e, "DPoP proof refused");
            self.dpop_challenge("invalid_dpop_proof", Reason::InvalidDpopProof)
        })?;
        if &p.jkt != jkt {
            return Err(self.unauthorized(route, Reason::DpopBindingMismatch, true));
        }
        self.dpop_replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check_and_insert(&p, &expect)
            .map_err(|_| self.dpop_challenge("invalid_dpop_proof", Reason::InvalidDpopProof))?;
        let until = i64::try_from(p.iat.saturating_add(DPOP_MAX_AGE).saturating_add(60))
            .unwrap_or(i64::MAX);
        Ok(Some(ProofClaim {
            jkt: p.jkt,
            jti: p.jti,
            until,
        }))
    }

    /// Claims a proof for every gateway (INVARIANT (one-proof-one-use-everywhere)). A replay is
    /// the proof's defect (401 `invalid_dpop_proof`); an unreachable store or broker is ours,
    /// and fails closed (503).
    async fn claim_proof(&self, c: &ProofClaim) -> Result<(), Refuse> {
        let unavailable = || Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::StoreUnavailable);
        let fresh = match self.shared_replay {
            SharedReplay::Store => {
                let key = firebreak_token::dpop_claim_key(&c.jkt, &c.jti);
                self.audit
                    .claim_once(
                        firebreak_token::DPOP_CLAIM_SCOPE,
                        &key,
                        firebreak_core::UnixTime::from_secs(c.until),
                        self.now(),
                    )
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "DPoP proof claim failed");
                        unavailable()
                    })?
            }
            SharedReplay::Broker => self
                .enforcer
                .claim_dpop(&c.jkt, &c.jti, c.until)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "DPoP proof claim at the broker failed");
                    unavailable()
                })?,
        };
        if fresh {
            Ok(())
        } else {
            Err(self.dpop_challenge("invalid_dpop_proof", Reason::InvalidDpopProof))
        }
    }

    /// Appends the request's record; `Err` when it is not durable within the deadline.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat call per decision point reads better than a builder used once each"
    )]
    async fn record(
        &self,
        s: &Subject<'_>,
        action: &str,
        tool: Option<&str>,
        http: Option<(&str, &str)>,
        decision: &str,
        reasons: Value,
        policy_version: &str,
        extra: Option<(&str, Value)>,
    ) -> Result<(), ()> {
        let mut f = Map::new();
        f.insert("kind".into(), "decision".into());
        f.insert("enforcer".into(), self.chain.clone().into());
        f.insert("agent".into(), s.v.agent.clone().into());
        f.insert("session".into(), s.v.session.clone().into());
        f.insert("jti".into(), s.v.jti.clone().into());
        f.insert("action".into(), action.into());
        f.insert("target".into(), s.route.target.clone().into());
        if let Some(t) = tool {
            f.insert("tool".into(), t.into());
        }
        if let Some((m, p)) = http {
            f.insert("method".into(), m.into());
            f.insert("path".into(), p.into());
        }
        f.insert("decision".into(), decision.into());
        f.insert("reasons".into(), reasons);
        f.insert("policy_version".into(), policy_version.into());
        f.insert("request_id".into(), s.request_id.into());
        f.insert("dpop_bound".into(), s.dpop_bound.into());
        if let Some((k, v)) = extra {
            f.insert(k.into(), v);
        }
        let draft = AuditDraft {
            fields: f,
            time: self.now(),
            session: s
                .v
                .session
                .as_deref()
                .and_then(|id| SessionId::try_from(id).ok()),
        };
        match tokio::time::timeout(
            self.cfg.audit_write_deadline.as_std(),
            self.audit.append_audit(draft),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "gateway audit write failed");
                Err(())
            }
            Err(_) => {
                tracing::error!("gateway audit write missed its deadline");
                Err(())
            }
        }
    }

    /// Handles one proxied request.
    pub async fn handle(self: Arc<Self>, req: Request<Body>) -> Response {
        let sw = firebreak_core::clock::Stopwatch::start();
        let resp = match self.handle_inner(req).await {
            Ok(r) => r,
            Err(refuse) => {
                self.count("deny", refuse.reason.as_str());
                refuse.into_response()
            }
        };
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .latency
            .observe(&LATENCY_BUCKETS, sw.elapsed_secs());
        resp
    }

    async fn handle_inner(self: &Arc<Self>, req: Request<Body>) -> Result<Response, Refuse> {
        let (parts, body) = req.into_parts();
        check_framing(&parts.headers)?;
        self.check_origin(&parts.headers)?;
        let raw_path = parts.uri.path().to_owned();
        let route = self
            .cfg
            .route(&raw_path)
            .ok_or_else(|| Refuse::new(StatusCode::NOT_FOUND, Reason::AudienceNotRegistered))?
            .clone();
        // G13: decide on the normalised path, and forward that same path.
        let norm = path::normalize(&raw_path)
            .map_err(|_| Refuse::new(StatusCode::BAD_REQUEST, Reason::MalformedRequest))?;
        if self.cfg.route(&norm).map(|r| r.path.as_str()) != Some(route.path.as_str()) {
            return Err(Refuse::new(
                StatusCode::BAD_REQUEST,
                Reason::MalformedRequest,
            ));
        }
        let stale = || Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::EventStreamStale);
        let bundle = self.enforcer.bundle().ok_or_else(stale)?;
        let target: TargetInfo = bundle
            .targets
            .get(&route.target)
            .cloned()
            .ok_or_else(stale)?;
        self.enforcer
            .check_clock()
            .map_err(|_| Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::ClockSkew))?;
        let (scheme, token) = self.credentials(&parts.headers, &route)?;
        let tokens = self.enforcer.tokens().ok_or_else(stale)?;
        let v = tokens
            .verify(token, &target.audience)
            .await
            .map_err(|e| match e {
                TokenRefusal::Audience => self.unauthorized(&route, Reason::AudienceMismatch, true),
                TokenRefusal::Expired => self.unauthorized(&route, Reason::TokenExpired, true),
                TokenRefusal::KeysUnavailable => Refuse::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::IssuerKeysUnavailable,
                ),
                TokenRefusal::Invalid(why) => {
                    tracing::debug!(why, "gateway token refused");
                    self.unauthorized(&route, Reason::InvalidToken, true)
                }
            })?;
        // X08: a shared audience must not carry another tenant's or environment's token.
        if v.tenant != target.tenant || v.env != target.environment {
            return Err(Refuse::new(StatusCode::FORBIDDEN, Reason::CrossEnvironment));
        }
        let proof = self.check_dpop(&parts, scheme, token, &v, &route)?;
        let bundle = self.enforcer.admit(&v).map_err(|r| match r {
            Refusal::Stale => stale(),
            Refusal::ClockSkew => Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::ClockSkew),
            Refusal::Revoked(_) => self.unauthorized(&route, Reason::Revoked, true),
        })?;
        let dpop_bound = match &proof {
            Some(c) => {
                self.claim_proof(c).await?;
                true
            }
            None => false,
        };
        let request_id = format!("gw_{}", firebreak_token::random_b64url(12));
        let s = Subject {
            v: &v,
            route: &route,
            request_id: &request_id,
            dpop_bound,
        };
        let is_mcp = target.kind == "mcp";
        let mut resp = if is_mcp {
            self.mcp(&s, &bundle, parts, body, &norm).await?
        } else {
            self.http(&s, &bundle, parts, body, &norm).await?
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("firebreak-request-id", v);
        }
        Ok(resp)
    }

    async fn http(
        self: &Arc<Self>,
        s: &Subject<'_>,
        bundle: &Bundle,
        parts: http::request::Parts,
        body: Body,
        norm: &str,
    ) -> Result<Response, Refuse> {
        let http = Some((parts.method.as_str().to_owned(), norm.to_owned()));
        let decide = |e: &Self| {
            e.enforcer.decide(
                bundle,
                s.v,
                Action::HttpRequest,
                Resource::Target(&s.route.target),
                e.enforcer.context(s.v, http.clone(), s.dpop_bound),
            )
        };
        let d = decide(self);
        let method = parts.method.as_str().to_owned();
        let approval = match &d {
            Decision::Allow(_) => None,
            Decision::RequireApproval(_) => {
                let res = format!("{}:{norm}", method);
                match self.hold(s, Action::HttpRequest, &res).await {
                    Ok(id) => Some(id),
                    Err((reason, id)) => {
                        let _ = self
                            .record(
                                s,
                                "http_request",
                                None,
                                Some((&method, norm)),
                                "deny",
                                reasons_json(&d),
                                d.policy_version(),
                                id.map(|i| ("approval_id", i.into())),
                            )
                            .await;
                        return Err(Refuse::new(StatusCode::FORBIDDEN, reason));
                    }
                }
            }
            Decision::Deny(_) => {
                let reason = firebreak_enforce::denial_reason(&d);
                let _ = self
                    .record(
                        s,
                        "http_request",
                        None,
                        Some((&method, norm)),
                        "deny",
                        reasons_json(&d),
                        d.policy_version(),
                        None,
                    )
                    .await;
                return Err(Refuse::new(StatusCode::FORBIDDEN, reason));
            }
        };
        // Whole before it is recorded as allowed: a request that never arrived is not forwarded.
        let bytes = self.read_body(body).await?;
        self.record(
            s,
            "http_request",
            None,
            Some((&method, norm)),
            "allow",
            reasons_json(&d),
            d.policy_version(),
            approval.map(|a| ("approval_id", a.into())),
        )
        .await
        .map_err(|()| Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::AuditUnavailable))?;
        self.count("allow", "-");
        self.forward(s, parts, Body::from(bytes), norm).await
    }

    /// Reads a request body whole, up to `max_body_bytes` (413 beyond). Like nginx's request
    /// buffering, this means the upstream only ever receives a request whose body arrived
    /// completely and well framed: a bad chunk or a truncated body is a 400 here, with the
    /// connection closed (G03), never a half-sent request upstream.
    async fn read_body(&self, body: Body) -> Result<Bytes, Refuse> {
        match http_body_util::Limited::new(body, self.cfg.max_body_bytes)
            .collect()
            .await
        {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refuse::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::MalformedRequest,
            )),
            Err(_) => Err(Refuse {
                close: true,
                ..Refuse::new(StatusCode::BAD_REQUEST, Reason::MalformedRequest)
            }),
        }
    }

    async fn mcp(
        self: &Arc<Self>,
        s: &Subject<'_>,
        bundle: &Bundle,
        parts: http::request::Parts,
        body: Body,
        norm: &str,
    ) -> Result<Response, Refuse> {
        let version = bundle.pdp.version().to_owned();
        if parts.method != Method::POST {
            // GET opens the server's notification stream, DELETE ends the session: protocol,
            // not tool use; the token's audience already limits them to this server.
            self.record(
                s,
                "mcp",
                None,
                Some((parts.method.as_str(), norm)),
                "allow",
                json!([]),
                &version,
                None,
            )
            .await
            .map_err(|()| Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::AuditUnavailable))?;
            return self.forward(s, parts, body, norm).await;
        }
        let bytes = self.read_body(body).await?;
        let msg = match mcp::parse(&bytes) {
            Ok(m) => m,
            Err(mcp::Refused::Batch) => {
                self.count("deny", Reason::ProtocolViolation.as_str());
                return Ok(jsonrpc(
                    StatusCode::BAD_REQUEST,
                    mcp::error(
                        None,
                        mcp::INVALID_REQUEST,
                        "batches are not supported",
                        None,
                    ),
                ));
            }
            Err(mcp::Refused::Parse) => {
                return Ok(jsonrpc(
                    StatusCode::BAD_REQUEST,
                    mcp::error(None, mcp::PARSE_ERROR, "parse error", None),
                ));
            }
            Err(mcp::Refused::Invalid(id)) => {
                return Ok(jsonrpc(
                    StatusCode::BAD_REQUEST,
                    mcp::error(id.as_ref(), mcp::INVALID_REQUEST, "invalid request", None),
                ));
            }
        };
        let method_name = msg.method.clone().unwrap_or_default();
        let forwarded = Bytes::from(Value::Object(msg.body.clone()).to_string());
        let mut approval = None;
        let mut reasons = json!([]);
        if let Some(tool) = &msg.tool {
            let d = self.enforcer.decide(
                bundle,
                s.v,
                Action::CallTool,
                Resource::Tool {
                    target: &s.route.target,
                    tool,
                },
                self.enforcer.context(s.v, None, s.dpop_bound),
            );
            reasons = reasons_json(&d);
            let refused = |reason: Reason, approval_id: Option<String>| {
                let mut data = json!({ "reason": reason.as_str() });
                if let (Some(id), Some(o)) = (approval_id, data.as_object_mut()) {
                    o.insert("approval_id".into(), id.into());
                }
                // G04: one answer for "not allowed" and "unknown", so it reveals nothing.
                jsonrpc(
                    StatusCode::OK,
                    mcp::error(
                        msg.id.as_ref(),
                        mcp::INVALID_PARAMS,
                        "Unknown tool",
                        Some(data),
                    ),
                )
            };
            match &d {
                Decision::Allow(_) => {}
                Decision::RequireApproval(_) => {
                    let res = format!("{}/{tool}", s.route.target);
                    match self.hold(s, Action::CallTool, &res).await {
                        Ok(id) => approval = Some(id),
                        Err((reason, id)) => {
                            let _ = self
                                .record(
                                    s,
                                    "call_tool",
                                    Some(tool),
                                    None,
                                    "deny",
                                    reasons.clone(),
                                    d.policy_version(),
                                    id.clone().map(|i| ("approval_id", i.into())),
                                )
                                .await;
                            self.count("deny", reason.as_str());
                            return Ok(refused(reason, id));
                        }
                    }
                }
                Decision::Deny(_) => {
                    let reason = firebreak_enforce::denial_reason(&d);
                    let _ = self
                        .record(
                            s,
                            "call_tool",
                            Some(tool),
                            None,
                            "deny",
                            reasons,
                            d.policy_version(),
                            None,
                        )
                        .await;
                    self.count("deny", reason.as_str());
                    return Ok(refused(reason, None));
                }
            }
        }
        let action = if msg.tool.is_some() {
            "call_tool"
        } else {
            "mcp"
        };
        self.record(
            s,
            action,
            msg.tool.as_deref(),
            Some(("POST", &method_name)),
            "allow",
            reasons,
            &version,
            approval.map(|a| ("approval_id", a.into())),
        )
        .await
        .map_err(|()| Refuse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::AuditUnavailable))?;
        self.count("allow", "-");
        let mut parts = parts;
        parts.headers.remove(header::CONTENT_LENGTH);
        let resp = self.forward(s, parts, Body::from(forwarded), norm).await?;
        if method_name == "tools/list" {
            return Ok(self.filter_list(s, bundle, resp).await);
        }
        Ok(resp)
    }

    /// G05: a `tools/list` answer keeps only the tools the agent may call.
    async fn filter_list(&self, s: &Subject<'_>, bundle: &Bundle, resp: Response) -> Response {
        let (mut parts, body) = resp.into_parts();
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let Ok(collected) = http_body_util::Limited::new(body, MAX_LIST_BODY)
            .collect()
            .await
        else {
            return problem(StatusCode::BAD_GATEWAY, Reason::UpstreamUnavailable);
        };
        let ctx = self.enforcer.context(s.v, None, s.dpop_bound);
        let keep = |name: &str| {
            matches!(
                self.enforcer.decide(
                    bundle,
                    s.v,
                    Action::CallTool,
                    Resource::Tool {
                        target: &s.route.target,
                        tool: name
                    },
                    ctx.clone()
                ),
                Decision::Allow(_) | Decision::RequireApproval(_)
            )
        };
        let out = mcp::filter_tools_list(&collected.to_bytes(), sse, &keep);
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Body::from(out))
    }

    /// Holds a `require_approval` action: asks the broker for an approval, waits for its
    /// elevation on the event stream up to `approval_hold`, consumes it. `Ok(approval id)`.
    async fn hold(
        &self,
        s: &Subject<'_>,
        action: Action,
        resource: &str,
    ) -> Result<String, (Reason, Option<String>)> {
        let (ap, el) = self
            .enforcer
            .request_approval(s.v, action, &s.route.target, resource)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "approval request failed");
                (Reason::StoreUnavailable, None)
            })?;
        let deadline = tokio::time::Instant::now() + self.cfg.approval_hold.as_std();
        let mut beats = self.enforcer.beats();
        loop {
            match self.enforcer.state().elevation_status(&el) {
                Some("approved") => break,
                Some("pending") | None => {}
                Some(_) => return Err((Reason::ApprovalPending, Some(ap))),
            }
            if tokio::time::timeout_at(deadline, beats.changed())
                .await
                .is_err()
            {
                return Err((Reason::ApprovalPending, Some(ap)));
            }
        }
        self.enforcer
            .use_elevation(&el, s.v)
            .await
            .map_err(|_| (Reason::GrantUnusable, Some(ap.clone())))?;
        Ok(ap)
    }

    fn upstream_uri(route: &Route, norm: &str, query: Option<&str>) -> Option<http::Uri> {
        let base = route.upstream.path().trim_end_matches('/');
        let suffix = norm.get(route.path.len()..).unwrap_or("");
        let mut p = format!("{base}{suffix}");
        if p.is_empty() {
            p.push('/');
        }
        // G01: an `access_token` query parameter never travels on.
        if let Some(q) = query {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|kv| {
                    let k = kv.split('=').next().unwrap_or("");
                    !k.eq_ignore_ascii_case("access_token")
                        && !k.eq_ignore_ascii_case("access%5ftoken")
                })
                .collect();
            if !kept.is_empty() {
                p.push('?');
                p.push_str(&kept.join("&"));
            }
        }
        http::Uri::builder()
            .scheme("http")
            .authority(route.upstream.authority()?.clone())
            .path_and_query(p)
            .build()
            .ok()
    }

    async fn forward(
        &self,
        s: &Subject<'_>,
        parts: http::request::Parts,
        body: Body,
        norm: &str,
    ) -> Result<Response, Refuse> {
        let uri = Self::upstream_uri(s.route, norm, parts.uri.query())
            .ok_or_else(|| Refuse::new(StatusCode::BAD_REQUEST, Reason::MalformedRequest))?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
        // Headers the client listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
        let listed: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if STRIPPED.contains(&n)
                || n.starts_with("firebreak-")
                || n == "host"
                || listed.iter().any(|l| l == n)
            {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if let Some(c) = &s.route.credential {
            headers.insert(c.header.clone(), c.value.clone());
        }
        let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(k), v);
            }
        };
        set(&mut headers, "firebreak-agent", &s.v.agent);
        set(
            &mut headers,
            "firebreak-session",
            s.v.session.as_deref().unwrap_or(""),
        );
        set(&mut headers, "firebreak-request-id", s.request_id);
        if let Some(a) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, a);
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let resp = match tokio::time::timeout(
            self.cfg.upstream_response_timeout.as_std(),
            self.upstream.request(req),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(route = s.route.path, error = %e, "upstream unreachable");
                return Err(Refuse::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::UpstreamUnavailable,
                ));
            }
            Err(_) => {
                return Err(Refuse::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Reason::UpstreamUnavailable,
                ));
            }
        };
        let (mut rparts, rbody) = resp.into_parts();
        for h in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
        ] {
            rparts.headers.remove(h);
        }
        Ok(Response::from_parts(rparts, Body::new(rbody)))
    }

    /// `/.well-known/oauth-protected-resource<route path>` (RFC 9728).
    fn metadata(&self, route_path: &str) -> Response {
        let path = if route_path == "/" { "" } else { route_path };
        let Some(route) = self.cfg.routes.iter().find(|r| r.path == path) else {
            return problem(StatusCode::NOT_FOUND, Reason::AudienceNotRegistered);
        };
        let Some(target) = self
            .enforcer
            .bundle()
            .and_then(|b| b.targets.get(&route.target).cloned())
        else {
            return problem(StatusCode::SERVICE_UNAVAILABLE, Reason::EventStreamStale);
        };
        let issuer = self
            .enforcer
            .bundle()
            .map(|b| b.issuer.clone())
            .unwrap_or_default();
        let mut body = json!({
            "resource": target.audience,
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        });
        if route.require_dpop
            && let Some(o) = body.as_object_mut()
        {
            o.insert("dpop_bound_access_tokens_required".into(), true.into());
        }
        axum::Json(body).into_response()
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        out.push_str("# HELP firebreak_gateway_requests_total Gateway requests by decision and reason.\n# TYPE firebreak_gateway_requests_total counter\n");
        for ((d, r), n) in &c.requests {
            let _ = writeln!(
                out,
                "firebreak_gateway_requests_total{{decision=\"{d}\",reason=\"{r}\"}} {n}"
            );
        }
        out.push_str("# HELP firebreak_gateway_request_duration_seconds Time in the gateway, upstream included.\n# TYPE firebreak_gateway_request_duration_seconds histogram\n");
        c.latency.render(
            &mut out,
            "firebreak_gateway_request_duration_seconds",
            &LATENCY_BUCKETS,
        );
        drop(c);
        if let Some(m) = self.shipping.get() {
            let _ = writeln!(
                out,
                "# HELP firebreak_audit_ship_lag_records Records of this gateway's audit chain the broker has not acknowledged.\n# TYPE firebreak_audit_ship_lag_records gauge\nfirebreak_audit_ship_lag_records {}",
                m.lag()
            );
            let _ = writeln!(
                out,
                "# HELP firebreak_audit_ship_failures_total Tries to ship this gateway's audit chain that the broker failed or refused.\n# TYPE firebreak_audit_ship_failures_total counter\nfirebreak_audit_ship_failures_total {}",
                m.failures()
            );
        }
        out.push_str(&self.enforcer.render_metrics());
        out
    }
}

/// The gateway's router: its own endpoints, then every other path proxied.
pub fn router(gw: Arc<Gateway>) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::routing::get;
    async fn metadata(State(g): State<Arc<Gateway>>, Path(p): Path<String>) -> Response {
        g.metadata(&format!("/{p}"))
    }
    async fn metadata_root(State(g): State<Arc<Gateway>>) -> Response {
        g.metadata("/")
    }
    async fn readyz(State(g): State<Arc<Gateway>>) -> Response {
        if g.enforcer.ready() {
            (StatusCode::OK, "ready\n").into_response()
        } else {
            problem(StatusCode::SERVICE_UNAVAILABLE, Reason::EventStreamStale)
        }
    }
    async fn metrics(State(g): State<Arc<Gateway>>) -> Response {
        let mut r = g.render_metrics().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }
    async fn proxy(State(g): State<Arc<Gateway>>, req: Request<Body>) -> Response {
        g.handle(req).await
    }
    axum::Router::new()
        .route("/.well-known/oauth-protected-resource", get(metadata_root))
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(metadata),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(proxy)
        .with_state(gw)
}

/// Serves the gateway on `listener` until `shutdown`.
///
/// # Errors
/// The accept loop's I/O error.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gw);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // EMFILE and friends: back off instead of spinning; the listener stays.
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // HTTP/1.1 only, on purpose: the MCP transport needs nothing more, and one framing
        // grammar at the edge is one less place for a request-smuggling differential (G03).
        // The head must arrive within HEADER_READ_TIMEOUT (slowloris).
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(app.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    // In-flight requests finish; a long upstream stream (SSE) does not hold shutdown forever.
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway shutdown: connections still open after the drain; closing");
    }
    Ok(())
}

/// A request head must arrive within this (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
