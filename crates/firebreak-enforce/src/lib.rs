//! What every Firebreak enforcement point (the gateway, the egress proxy) shares, so neither
//! copies the other: the authenticated link to the broker, the `/v1/events` client and the
//! state it keeps (revocations, elevations, break-glass), the stale-feed rule, the policy
//! bundle decided on in-process, and the verified-token cache.
//!
//! [`Enforcer::start`] returns at once; until the first snapshot and bundle arrive, and
//! whenever heartbeats stop for `stale_after`, [`Enforcer::admit`] refuses everything with
//! `event_stream_stale` (fail closed). Nothing here reads the system clock except through the
//! injected [`Clock`].
#![forbid(unsafe_code)]

mod link;
mod metrics;
mod state;
mod stream;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use firebreak_core::{Clock, Reason, UnixTime};
use firebreak_policy::{
    Action, Context, Decision, Inventory, Pdp, Principal, Request, Resource, SessionCtx,
};
use http::{Method, StatusCode};
use serde_json::Value;

pub use link::{Answer, BrokerLink, is_loopback_url};
pub use metrics::Histogram;
pub use state::{ActiveElevation, FeedState, Revoked};
pub use tokens::{TokenRefusal, TokenVerifier, Verified};

/// Why the enforcement layer could not do something (never sent to a peer as is).
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// The broker could not be reached or answered wrongly.
    #[error("broker: {0}")]
    Broker(String),
    /// The policy bundle did not load.
    #[error("policy bundle: {0}")]
    Bundle(String),
}

/// How an enforcement point reaches the broker.
#[derive(Debug, Clone)]
pub struct EnforceConfig {
    /// The broker's base URL.
    pub broker: String,
    /// This enforcement point's `[[client]]` id (role `stream`).
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// No heartbeat for this long → deny everything.
    pub stale_after: Duration,
    /// Permit `http://` to a broker off loopback.
    pub danger_allow_http: bool,
    /// Clock skew accepted on `exp`/`nbf`/`iat`.
    pub leeway_secs: i64,
}

/// A target as the bundle describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Target id.
    pub id: String,
    /// The audience its tokens carry.
    pub audience: String,
    /// `http`, `mcp`, `egress`, `broker`.
    pub kind: String,
    /// Tenant.
    pub tenant: String,
    /// Environment.
    pub environment: String,
}

/// The policy bundle in force.
#[derive(Debug)]
pub struct Bundle {
    /// The PDP built from it.
    pub pdp: Pdp,
    /// Targets by id.
    pub targets: HashMap<String, TargetInfo>,
    /// The broker's issuer (`iss` of its tokens).
    pub issuer: String,
    etag: Option<String>,
}

/// A refusal before any policy ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The feed or the bundle is missing or stale: fail closed.
    Stale,
    /// The identity was revoked.
    Revoked(Revoked),
    /// The local clock is off the broker's by more than the leeway (F8): fail closed.
    ClockSkew,
}

impl Refusal {
    /// The reason code.
    pub fn reason(self) -> Reason {
        match self {
            Refusal::Stale => Reason::EventStreamStale,
            Refusal::Revoked(_) => Reason::Revoked,
            Refusal::ClockSkew => Reason::ClockSkew,
        }
    }
}

/// The broker's time as this process estimates it: the local clock minus the skew measured
/// against the `time` of the broker's heartbeats (F8). Tokens, elevations, revocation ends and
/// audit records all carry the broker's time, so they are judged on it: a gateway whose clock
/// is 30 s slow still refuses a token at `exp` + leeway, not 30 s later.
///
/// INVARIANT (skew-bounded): the correction is at most the leeway; a larger skew is not
/// corrected but refused ([`Refusal::ClockSkew`]), because a clock that far off is broken, and
/// trusting the broker's time blindly would let a delayed feed move our notion of "now".
#[derive(Debug)]
pub struct BrokerTime {
    local: Arc<dyn Clock>,
    /// Local minus broker, in ms, as last applied.
    skew_ms: std::sync::atomic::AtomicI64,
}

impl Clock for BrokerTime {
    fn now(&self) -> UnixTime {
        let skew = self.skew_ms.load(std::sync::atomic::Ordering::Relaxed);
        UnixTime::from_millis(self.local.now().as_millis().saturating_sub(skew))
    }
}

/// `measured_skew_ms` before any heartbeat carried a `time`.
const NO_SKEW: i64 = i64::MIN;

/// A skew change smaller than this is not applied, so network jitter between heartbeats never
/// moves the estimated broker time back and forth.
const SKEW_HYSTERESIS_MS: i64 = 1_000;

/// The shared enforcement core. One per process; cheap to share behind `Arc`.
pub struct Enforcer {
    link: BrokerLink,
    stale_after: Duration,
    leeway_secs: i64,
    danger_allow_http: bool,
    /// The local clock: heartbeat arrival and freshness are measured on it alone.
    local: Arc<dyn Clock>,
    /// The broker's time (a [`BrokerTime`] over `local`): every decision uses it.
    clock: Arc<dyn Clock>,
    broker_time: Arc<BrokerTime>,
    /// Local minus broker as last measured (ms); `None` before the first heartbeat.
    /// [`NO_SKEW`] before the first heartbeat. Atomics, not a lock: read on every request.
    measured_skew_ms: std::sync::atomic::AtomicI64,
    /// Whether that skew is beyond the leeway: derived once per heartbeat, not per request.
    skewed: std::sync::atomic::AtomicBool,
    state: RwLock<FeedState>,
    bundle: RwLock<Option<Arc<Bundle>>>,
    tokens: std::sync::OnceLock<TokenVerifier>,
    bundle_wake: tokio::sync::Notify,
    lag: std::sync::Mutex<Histogram>,
    beats: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("broker", &self.link.base())
            .finish_non_exhaustive()
    }
}

/// Buckets for `firebreak_revocation_lag_seconds`.
pub const LAG_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl Enforcer {
    /// Starts the event stream and the bundle refresher; returns at once (not ready until the
    /// first snapshot and bundle arrive).
    ///
    /// # Errors
    /// `Config` for an unusable broker URL or credentials.
    pub fn start(cfg: EnforceConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, EnforceError> {
        let link = BrokerLink::new(
            &cfg.broker,
            &cfg.client_id,
            &cfg.client_secret,
            cfg.danger_allow_http,
        )?;
        let broker_time = Arc::new(BrokerTime {
            local: Arc::clone(&clock),
            skew_ms: std::sync::atomic::AtomicI64::new(0),
        });
        let e = Arc::new(Self {
            link,
            stale_after: cfg.stale_after,
            leeway_secs: cfg.leeway_secs,
            danger_allow_http: cfg.danger_allow_http,
            local: clock,
            clock: Arc::clone(&broker_time) as Arc<dyn Clock>,
            broker_time,
            measured_skew_ms: std::sync::atomic::AtomicI64::new(NO_SKEW),
            skewed: std::sync::atomic::AtomicBool::new(false),
            state: RwLock::new(FeedState::default()),
            bundle: RwLock::new(None),
            tokens: std::sync::OnceLock::new(),
            bundle_wake: tokio::sync::Notify::new(),
            lag: std::sync::Mutex::new(Histogram::default()),
            beats: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(stream::run(Arc::downgrade(&e)));
        tokio::spawn(refresh_bundle(Arc::downgrade(&e)));
        Ok(e)
    }

    /// The broker link (approvals, elevation use).
    pub fn link(&self) -> &BrokerLink {
        &self.link
    }

    /// The clock decisions use: the broker's time (see [`BrokerTime`]).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The feed state (read lock).
    pub fn state(&self) -> RwLockReadGuard<'_, FeedState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bundle in force, if one loaded.
    pub fn bundle(&self) -> Option<Arc<Bundle>> {
        self.bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wakes on every heartbeat, snapshot and event (the value counts them).
    pub fn beats(&self) -> tokio::sync::watch::Receiver<u64> {
        self.beats.subscribe()
    }

    /// Ready = a bundle is loaded, the feed is fresh and the clock agrees with the broker's.
    pub fn ready(&self) -> bool {
        self.bundle().is_some() && self.fresh() && !self.skewed()
    }

    fn fresh(&self) -> bool {
        let ms = i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX);
        self.state().fresh(self.local.now(), ms)
    }

    /// Local minus broker time (ms) as the last heartbeat measured it.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        let s = self
            .measured_skew_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        (s != NO_SKEW).then_some(s)
    }

    /// Refuses while the clock is off the broker's beyond the leeway (F8). Callers check this
    /// before verifying a token: on a clock that far off, every time check would be wrong.
    ///
    /// # Errors
    /// [`Refusal::ClockSkew`].
    pub fn check_clock(&self) -> Result<(), Refusal> {
        if self.skewed() {
            Err(Refusal::ClockSkew)
        } else {
            Ok(())
        }
    }

    /// Whether the measured skew is beyond the leeway (F8).
    fn skewed(&self) -> bool {
        self.skewed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the skew a heartbeat or snapshot shows (`time`: the broker's Unix seconds, with
    /// milliseconds) and corrects the broker-time clock within the leeway.
    fn observe_broker_time(&self, d: &serde_json::Map<String, Value>, local: UnixTime) {
        let Some(t) = d
            .get("time")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite())
        else {
            return;
        };
        // f64 seconds with ms precision; far-off values saturate instead of wrapping.
        let broker_ms = (t * 1000.0).round().clamp(i64::MIN as f64, i64::MAX as f64) as i64;
        // Never the sentinel: that would read as "not measured".
        let skew = local.as_millis().saturating_sub(broker_ms).max(NO_SKEW + 1);
        let limit = self.leeway_secs.saturating_mul(1000);
        self.measured_skew_ms
            .store(skew, std::sync::atomic::Ordering::Relaxed);
        let is_skewed = skew.unsigned_abs() > limit.unsigned_abs();
        let was_skewed = self
            .skewed
            .swap(is_skewed, std::sync::atomic::Ordering::Relaxed);
        if is_skewed {
            if !was_skewed {
                tracing::warn!(
                    skew_ms = skew,
                    leeway_secs = self.leeway_secs,
                    "clock differs from the broker's beyond the leeway; refusing until it agrees"
                );
            }
            return;
        }
        if was_skewed {
            tracing::info!(skew_ms = skew, "clock agrees with the broker's again");
        }
        let applied = self
            .broker_time
            .skew_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if skew.saturating_sub(applied).abs() >= SKEW_HYSTERESIS_MS {
            self.broker_time.skew_ms.store(
                skew.clamp(-limit, limit),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// The token verifier (present once the first bundle named the issuer).
    pub fn tokens(&self) -> Option<&TokenVerifier> {
        self.tokens.get()
    }

    /// Refuses when the feed is stale or the identity revoked; else the bundle to decide with.
    ///
    /// # Errors
    /// A [`Refusal`].
    pub fn admit(&self, v: &Verified) -> Result<Arc<Bundle>, Refusal> {
        let bundle = self.bundle().ok_or(Refusal::Stale)?;
        let now_s = self.clock.now().as_secs();
        let ms = i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX);
        if self.skewed() {
            return Err(Refusal::ClockSkew);
        }
        let s = self.state();
        // INVARIANT (fail-closed-when-stale): see state.rs.
        if !s.fresh(self.local.now(), ms) {
            return Err(Refusal::Stale);
        }
        match s.revoked(v.session.as_deref(), &v.agent, &v.jti, &v.kid, now_s) {
            Some(r) => Err(Refusal::Revoked(r)),
            None => Ok(bundle),
        }
    }

    /// The Cedar context for a request by `v`.
    pub fn context(
        &self,
        v: &Verified,
        http: Option<(String, String)>,
        dpop_bound: bool,
    ) -> Context {
        let now = self.clock.now().as_secs();
        let s = self.state();
        Context {
            scope: v.scope.clone(),
            http,
            session: v.session.as_ref().map(|id| SessionCtx {
                id: id.clone(),
                depth: v.act_depth,
                age_seconds: now.saturating_sub(v.iat).max(0),
            }),
            elevations: s.elevation_strings(&v.agent, v.session.as_deref(), now),
            break_glass: s.break_glass(&v.agent, now),
            env: v.env.clone(),
            tenant: v.tenant.clone(),
            purpose: v.purpose.clone(),
            dpop_bound,
            time: now,
        }
    }

    /// Decides `action` by `v` on `resource`, after [`Enforcer::admit`].
    pub fn decide(
        &self,
        bundle: &Bundle,
        v: &Verified,
        action: Action,
        resource: Resource<'_>,
        context: Context,
    ) -> Decision {
        bundle.pdp.decide(&Request {
            principal: Principal::Agent(&v.agent),
            action,
            resource,
            context,
        })
    }

    /// The approved elevation `id`, if usable now by `v`.
    pub fn elevation(&self, id: &str, v: &Verified) -> Option<ActiveElevation> {
        self.state().elevation(
            id,
            &v.agent,
            v.session.as_deref(),
            self.clock.now().as_secs(),
        )
    }

    /// Asks the broker for an approval of a held action (`POST /v1/approvals`); returns
    /// (approval id, elevation id).
    ///
    /// # Errors
    /// `Broker` when it cannot be created.
    pub async fn request_approval(
        &self,
        v: &Verified,
        action: Action,
        target: &str,
        resource: &str,
    ) -> Result<(String, String), EnforceError> {
        let body = serde_json::json!({
            "agent": v.agent,
            "session": v.session,
            "action": action.as_str(),
            "target": target,
            "resource": resource,
        });
        let a = self
            .link
            .json(Method::POST, "/v1/approvals", Some(&body))
            .await?;
        match (
            a.get("id").and_then(Value::as_str),
            a.get("elevation").and_then(Value::as_str),
        ) {
            (Some(id), Some(el)) => Ok((id.to_owned(), el.to_owned())),
            _ => Err(EnforceError::Broker("approval answer without ids".into())),
        }
    }

    /// Claims a DPoP proof (its key's thumbprint and `jti`, until `until` Unix seconds) at the
    /// broker, where every gateway on that broker claims too (G12): `true` the first time.
    ///
    /// # Errors
    /// `Broker` when the broker is unreachable or answers otherwise.
    pub async fn claim_dpop(&self, jkt: &str, jti: &str, until: i64) -> Result<bool, EnforceError> {
        let body = serde_json::json!({ "jkt": jkt, "jti": jti, "until": until });
        let v = self
            .link
            .json(Method::POST, "/v1/dpop/claims", Some(&body))
            .await?;
        v.get("fresh")
            .and_then(Value::as_bool)
            .ok_or_else(|| EnforceError::Broker("/v1/dpop/claims: no \"fresh\"".into()))
    }

    /// Consumes a single-use elevation at the broker before the action it allows.
    ///
    /// # Errors
    /// `Broker` when it was not usable (already used, expired) or the broker is unreachable.
    pub async fn use_elevation(&self, id: &str, v: &Verified) -> Result<(), EnforceError> {
        let body = serde_json::json!({ "agent": v.agent, "session": v.session });
        let a = self
            .link
            .call(
                Method::POST,
                &format!("/v1/elevations/{id}/use"),
                Some(&body),
                None,
            )
            .await?;
        if a.status == StatusCode::OK {
            Ok(())
        } else {
            Err(EnforceError::Broker(format!(
                "elevation use: HTTP {}",
                a.status
            )))
        }
    }

    /// `firebreak_revocation_lag_seconds` and the feed gauges, Prometheus text.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP firebreak_revocation_lag_seconds Time from a revocation at the broker to its arrival here.\n");
        out.push_str("# TYPE firebreak_revocation_lag_seconds histogram\n");
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .render(&mut out, "firebreak_revocation_lag_seconds", &LAG_BUCKETS);
        let s = self.state();
        out.push_str("# HELP firebreak_event_stream_fresh 1 when the broker's feed is fresh.\n");
        out.push_str("# TYPE firebreak_event_stream_fresh gauge\n");
        drop(s);
        out.push_str(&format!(
            "firebreak_event_stream_fresh {}\n",
            u8::from(self.fresh())
        ));
        if let Some(skew) = self.clock_skew_ms() {
            out.push_str("# HELP firebreak_clock_skew_seconds Local clock minus the broker's, from its heartbeats.\n");
            out.push_str("# TYPE firebreak_clock_skew_seconds gauge\n");
            out.push_str(&format!(
                "firebreak_clock_skew_seconds {:.3}\n",
                skew as f64 / 1000.0
            ));
        }
        let s = self.state();
        out.push_str("# TYPE firebreak_revoked_entries gauge\n");
        out.push_str(&format!("firebreak_revoked_entries {}\n", s.revoked_len()));
        out.push_str("# TYPE firebreak_event_last_seq gauge\n");
        out.push_str(&format!("firebreak_event_last_seq {}\n", s.last_seq));
        out
    }

    fn on_message(&self, event: &str, id: Option<&str>, data: &str) {
        let Some(d) = stream::object(data) else {
            tracing::warn!(event, "event stream: data is not a JSON object; ignored");
            return;
        };
        // Heartbeat arrival is local time (freshness); broker-stamped ends are broker time.
        let local = self.local.now();
        if event == "heartbeat" || event == "snapshot" {
            self.observe_broker_time(&d, local);
        }
        let now = self.clock.now();
        let announced = {
            let mut s = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match event {
                "snapshot" => s.apply_snapshot(&d, local),
                "heartbeat" => s.last_beat = Some(local),
                kind => {
                    s.apply(kind, &d);
                    if let Some(seq) = id.and_then(|i| i.parse::<u64>().ok()) {
                        s.last_seq = s.last_seq.max(seq);
                    }
                    if kind == "revoke"
                        && let Some(at) = d.get("at_ms").and_then(Value::as_i64)
                    {
                        let lag = now.as_millis().saturating_sub(at).max(0) as f64 / 1000.0;
                        self.lag
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .observe(&LAG_BUCKETS, lag);
                    }
                }
            }
            if event == "heartbeat" && s.revoked_len() > 10_000 {
                s.prune(now.as_secs());
            }
            s.policy_version.clone()
        };
        let current = self.bundle().map(|b| b.pdp.version().to_owned());
        if announced.is_some() && announced != current {
            self.bundle_wake.notify_one();
        }
        self.beats.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn load_bundle(&self) -> Result<(), EnforceError> {
        let etag = self.bundle().and_then(|b| b.etag.clone());
        let a = self
            .link
            .call(Method::GET, "/v1/policy/bundle", None, etag.as_deref())
            .await?;
        if a.status == StatusCode::NOT_MODIFIED {
            return Ok(());
        }
        if !a.status.is_success() {
            return Err(EnforceError::Broker(format!(
                "policy bundle: HTTP {}",
                a.status
            )));
        }
        let b = parse_bundle(&a.body, a.etag)?;
        let issuer = b.issuer.clone();
        tracing::info!(policy_version = b.pdp.version(), "policy bundle loaded");
        *self
            .bundle
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(b));
        let allow_http = self.danger_allow_http || is_loopback_url(self.link.base());
        let _ = self.tokens.get_or_init(|| {
            TokenVerifier::new(
                issuer,
                format!("{}/jwks.json", self.link.base()),
                allow_http,
                self.leeway_secs,
                Arc::clone(&self.clock),
            )
        });
        Ok(())
    }
}

fn parse_bundle(body: &[u8], etag: Option<String>) -> Result<Bundle, EnforceError> {
    #[derive(serde::Deserialize)]
    struct Source {
        name: String,
        text: String,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        id: String,
        audience: String,
        kind: String,
        tenant: String,
        environment: String,
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        policy_version: String,
        sources: Vec<Source>,
        schema: String,
        inventory: Inventory,
        targets: Vec<Target>,
        issuer: String,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| EnforceError::Bundle(e.to_string()))?;
    let files: Vec<(String, String)> = raw.sources.into_iter().map(|s| (s.name, s.text)).collect();
    let pdp = Pdp::from_sources(&files, Some(&raw.schema), &raw.inventory)
        .map_err(|e| EnforceError::Bundle(e.to_string()))?;
    // The set we built must be the set the broker announced, byte for byte.
    if pdp.version() != raw.policy_version {
        return Err(EnforceError::Bundle(format!(
            "built version {} but the broker announced {}",
            pdp.version(),
            raw.policy_version
        )));
    }
    Ok(Bundle {
        pdp,
        targets: raw
            .targets
            .into_iter()
            .map(|t| {
                (
                    t.id.clone(),
                    TargetInfo {
                        id: t.id,
                        audience: t.audience,
                        kind: t.kind,
                        tenant: t.tenant,
                        environment: t.environment,
                    },
                )
            })
            .collect(),
        issuer: raw.issuer,
        etag,
    })
}

async fn refresh_bundle(e: std::sync::Weak<Enforcer>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(enf) = e.upgrade() else { return };
        let wait = match enf.load_bundle().await {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                Duration::from_secs(30)
            }
            Err(err) => {
                tracing::warn!(error = %err, "policy bundle not loaded; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                backoff
            }
        };
        // Holding the Arc while waiting is fine: the wait is bounded, and the next turn
        // re-checks that the enforcer is still alive.
        let _ = tokio::time::timeout(wait, enf.bundle_wake.notified()).await;
        drop(enf);
    }
}

/// A decision's reason code for a refusal, from the PDP's reasons.
pub fn denial_reason(d: &Decision) -> Reason {
    use firebreak_policy::ReasonRef;
    let code = d.reasons().iter().find_map(|r| match r {
        ReasonRef::Code { code } => Some(code.as_str()),
        ReasonRef::Policy { .. } => None,
    });
    match (d, code) {
        (Decision::RequireApproval(_), _) => Reason::ApprovalRequired,
        (_, Some(firebreak_policy::POLICY_ERROR)) => Reason::PolicyError,
        (_, Some(_)) => Reason::NoMatchingPermit,
        (_, None) if !d.reasons().is_empty() => Reason::ForbiddenByPolicy,
        _ => Reason::NoMatchingPermit,
    }
}
