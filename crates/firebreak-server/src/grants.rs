//! Elevations, approvals and break-glass at the broker (DESIGN.md §6): the HTTP API, and the
//! in-memory snapshot of what is in force that every decision reads. The store is the truth;
//! the snapshot is reloaded from it after every change this broker makes and on each upkeep
//! tick, and expiry is judged against the clock at use, so a stale snapshot can only be
//! stricter than the store, never looser: a use still goes through `Store::use_elevation`.

use firebreak_core::{AgentId, SessionId, UnixTime};
use firebreak_store::{BreakGlassRow, ElevationRow, ElevationStatus, Store, StoreError};

/// What is in force: approved elevations and open break-glass windows.
#[derive(Debug, Default)]
pub struct GrantSnapshot {
    elevations: Vec<ElevationRow>,
    break_glass: Vec<BreakGlassRow>,
}

fn applies(e: &ElevationRow, agent: &AgentId, session: Option<&SessionId>, now: UnixTime) -> bool {
    e.status == ElevationStatus::Approved
        && &e.agent == agent
        && e.expires_at.is_some_and(|x| x > now)
        && (e.session.is_none() || e.session.as_ref() == session)
}

impl GrantSnapshot {
    /// Loads it.
    ///
    /// # Errors
    /// The store's.
    pub async fn load(store: &dyn Store, now: UnixTime) -> Result<Self, StoreError> {
        let elevations = store
            .elevations(None, 100_000)
            .await?
            .into_iter()
            .filter(|e| {
                e.status == ElevationStatus::Approved && e.expires_at.is_some_and(|x| x > now)
            })
            .collect();
        let break_glass = store
            .breakglass_list(10_000)
            .await?
            .into_iter()
            .filter(|b| b.closed_at.is_none() && b.ends_at > now)
            .collect();
        Ok(Self {
            elevations,
            break_glass,
        })
    }

    /// `context.elevations` for a decision about `agent` (in `session`): `"<action>:<target>"`.
    pub fn elevation_strings(
        &self,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> Vec<String> {
        let mut v: Vec<String> = self
            .elevations
            .iter()
            .filter(|e| applies(e, agent, session, now))
            .map(|e| format!("{}:{}", e.action, e.target))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The elevation `id` if it is usable now by `agent` in `session`.
    pub fn usable_elevation(
        &self,
        id: &str,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> Option<ElevationRow> {
        self.elevations
            .iter()
            .find(|e| e.id == id && applies(e, agent, session, now))
            .cloned()
    }

    /// The open break-glass window of `agent`.
    pub fn break_glass(&self, agent: &AgentId, now: UnixTime) -> Option<BreakGlassRow> {
        self.break_glass
            .iter()
            .find(|b| &b.agent == agent && b.closed_at.is_none() && b.ends_at > now)
            .cloned()
    }

    /// Windows that were open in this snapshot but have ended by `now` (for the close alert).
    pub fn ended(&self, now: UnixTime) -> Vec<BreakGlassRow> {
        self.break_glass
            .iter()
            .filter(|b| b.ends_at <= now)
            .cloned()
            .collect()
    }
}

/// The `elevation` event announcing `e`'s state (DESIGN.md §9): enforcement points keep
/// approved ones in `context.elevations` until `until` and drop them on any other status.
pub(crate) fn elevation_event(e: &ElevationRow, now: UnixTime) -> firebreak_store::NewEvent {
    let until = e.expires_at.unwrap_or(now).max(now);
    let mut data = serde_json::Map::new();
    data.insert("id".into(), e.id.clone().into());
    data.insert("agent".into(), e.agent.as_str().into());
    data.insert(
        "session".into(),
        e.session.as_ref().map(|s| s.as_str()).into(),
    );
    data.insert("action".into(), e.action.clone().into());
    data.insert("target".into(), e.target.clone().into());
    data.insert("resource".into(), e.resource.clone().into());
    data.insert(
        "status".into(),
        serde_json::to_value(e.status).unwrap_or(serde_json::Value::Null),
    );
    data.insert("single_use".into(), e.single_use.into());
    data.insert("until".into(), until.as_secs().into());
    data.insert("at".into(), now.as_secs().into());
    firebreak_store::NewEvent {
        kind: firebreak_store::EventKind::Elevation,
        data,
        until,
    }
}

/// An `elevation` event for an id whose row is not at hand (expiry): status only.
fn elevation_expired_event(id: &str, now: UnixTime) -> firebreak_store::NewEvent {
    let mut data = serde_json::Map::new();
    data.insert("id".into(), id.into());
    data.insert("status".into(), "expired".into());
    data.insert("until".into(), now.as_secs().into());
    data.insert("at".into(), now.as_secs().into());
    firebreak_store::NewEvent {
        kind: firebreak_store::EventKind::Elevation,
        data,
        // Kept a day so a gateway resuming from an old id still hears of it.
        until: now.plus_secs(86_400),
    }
}

/// The `breakglass` event for a window opening (`open`) or closing.
pub(crate) fn breakglass_event(
    w: &BreakGlassRow,
    open: bool,
    now: UnixTime,
) -> firebreak_store::NewEvent {
    let mut data = serde_json::Map::new();
    data.insert("id".into(), w.id.clone().into());
    data.insert("agent".into(), w.agent.as_str().into());
    data.insert("open".into(), open.into());
    data.insert("until".into(), w.ends_at.as_secs().into());
    data.insert("at".into(), now.as_secs().into());
    firebreak_store::NewEvent {
        kind: firebreak_store::EventKind::BreakGlass,
        data,
        until: w.ends_at.max(now),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------

use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use firebreak_core::{ConfigDuration, Reason};
use firebreak_policy::{Action, Context, Decision, Principal, Request, Resource};
use firebreak_store::{ApprovalRow, ApprovalStatus};
use firebreak_token::random_b64url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::Record;
use crate::broker::{Broker, admin_response, bearer};
use crate::config::{Agent, Approver, Role};
use crate::decider::Decider;
use crate::error::BrokerError;

fn time(t: Option<UnixTime>) -> Value {
    t.map_or(Value::Null, |t| {
        json!(firebreak_core::format_rfc3339_millis(t))
    })
}

/// The wire form of an elevation (`GET /v1/elevations/{id}`).
pub fn elevation_json(e: &ElevationRow, now: UnixTime) -> Value {
    // An approved elevation past its end reads as expired even before upkeep marks it.
    let status = match e.status {
        ElevationStatus::Approved if e.expires_at.is_some_and(|x| x <= now) => "expired",
        s => s.as_str(),
    };
    json!({
        "id": e.id,
        "status": status,
        "agent": e.agent.as_str(),
        "session": e.session.as_ref().map(SessionId::as_str),
        "action": e.action,
        "target": e.target,
        "resource": e.resource,
        "reason_code": e.reason_code,
        "justification": e.justification,
        "duration_seconds": e.duration_ms / 1000,
        "single_use": e.single_use,
        "requested_by": e.requested_by,
        "created_at": time(Some(e.created_at)),
        "expires_at": time(e.expires_at),
        "decided_by": e.decided_by,
        "decided_at": time(e.decided_at),
        "decision_reason": e.decision_reason,
        "used_at": time(e.used_at),
        "approval_id": e.approval_id,
    })
}

fn approval_json(a: &ApprovalRow, now: UnixTime) -> Value {
    json!({
        "id": a.id,
        "elevation": a.elevation,
        "status": a.status.as_str(),
        "requested_by": a.requested_by,
        "age_seconds": now.as_secs().saturating_sub(a.created_at.as_secs()),
        "created_at": time(Some(a.created_at)),
        "expires_at": time(Some(a.expires_at)),
        "decided_by": a.decided_by,
        "decided_at": time(a.decided_at),
        "why": a.why,
    })
}

/// Who is calling a grant endpoint.
enum Caller {
    Admin,
    Agent { id: AgentId, act: Option<Value> },
    Approver(Approver),
    Client(String),
}

impl Caller {
    fn label(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::Agent { id, .. } => format!("agent:{id}"),
            Self::Approver(a) => format!("approver:{}", a.id),
            Self::Client(c) => format!("client:{c}"),
        }
    }
}

impl Broker {
    /// The approver whose bearer token this is, if it is registered and unexpired. Every
    /// registered digest is compared, so timing does not tell which approvers exist.
    fn approver(&self, headers: &HeaderMap) -> Option<Approver> {
        let t = bearer(headers)?;
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        let mut found = None;
        for a in &self.config.approvers {
            if verify_slices_are_equal(d.as_ref(), &a.token_sha256).is_ok() {
                found = Some(a.clone());
            }
        }
        found.filter(|a| a.expires > self.clock.now())
    }

    async fn caller(&self, headers: &HeaderMap) -> Result<Caller, BrokerError> {
        if self.is_admin(headers) {
            return Ok(Caller::Admin);
        }
        if let Some(a) = self.approver(headers) {
            return Ok(Caller::Approver(a));
        }
        if let Some(t) = bearer(headers) {
            // An agent acts with a Firebreak token for the broker's own audience.
            let own = self
                .verifier
                .own(t, Some(&self.config.server.public_url), &self.keys())
                .await
                .map_err(|_| BrokerError::Unauthenticated)?;
            return Ok(Caller::Agent {
                id: own.agent,
                act: own.claims.get("act").cloned(),
            });
        }
        match self.client(headers, &crate::form::Form::default())? {
            Some(c) if c.roles.contains(&Role::Evaluate) => Ok(Caller::Client(c.id.clone())),
            Some(_) => Err(BrokerError::Forbidden),
            None => Err(BrokerError::Unauthenticated),
        }
    }

    fn agent(&self, id: &str) -> Result<&Agent, BrokerError> {
        self.config
            .agents
            .iter()
            .find(|a| a.id.as_str() == id)
            .ok_or(BrokerError::BadRequest("unknown agent"))
    }

    /// The context every grant decision about `agent` sees.
    pub(crate) fn grant_context(
        &self,
        agent: &Agent,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> Context {
        let g = self.grants();
        Context {
            elevations: g.elevation_strings(&agent.id, session, now),
            break_glass: g.break_glass(&agent.id, now).is_some(),
            env: agent.environment.clone(),
            tenant: agent.tenant.clone(),
            purpose: agent.purpose.clone(),
            time: now.as_secs(),
            ..Context::default()
        }
    }

    /// Everyone who may not approve a request about `agent`: the requester, the agent, its
    /// owner, and every agent (and owner) in the `act` chain (DESIGN.md §6).
    fn involved(&self, agent: &Agent, requester: &str, act: Option<&Value>) -> Vec<String> {
        let mut v = vec![
            requester.to_owned(),
            format!("agent:{}", agent.id),
            agent.owner.to_ascii_lowercase(),
        ];
        let mut cur = act;
        while let Some(a) = cur {
            if let Some(sub) = a.get("sub").and_then(Value::as_str) {
                v.push(format!("agent:{sub}"));
                if let Some(o) = self.config.agents.iter().find(|x| x.id.as_str() == sub) {
                    v.push(o.owner.to_ascii_lowercase());
                }
            }
            cur = a.get("act");
        }
        v.sort();
        v.dedup();
        v
    }

    fn check_reason_code(&self, code: Option<&str>) -> Result<String, BrokerError> {
        match code {
            Some(c) if self.config.elevation.reason_codes.iter().any(|r| r == c) => {
                Ok(c.to_owned())
            }
            Some(_) => Err(BrokerError::BadRequest("unknown reason_code")),
            None => Err(BrokerError::BadRequest("reason_code is required")),
        }
    }
}

fn parse_duration(
    s: Option<&str>,
    default: ConfigDuration,
    max: ConfigDuration,
) -> Result<ConfigDuration, BrokerError> {
    let d = match s {
        None => default,
        Some(s) => s
            .parse::<ConfigDuration>()
            .map_err(|_| BrokerError::BadRequest("duration"))?,
    };
    if d.as_millis() < 1000 {
        return Err(BrokerError::BadRequest("duration below 1s"));
    }
    if d > max {
        return Err(BrokerError::BadRequest(
            "duration above the configured maximum",
        ));
    }
    Ok(d)
}

fn justification(s: Option<&str>) -> Result<String, BrokerError> {
    match s.map(str::trim) {
        Some(j) if !j.is_empty() && j.len() <= 1000 && !j.chars().any(char::is_control) => {
            Ok(j.to_owned())
        }
        _ => Err(BrokerError::BadRequest(
            "justification (1 to 1000 characters) is required",
        )),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(bytes)
        .map_err(|_| BrokerError::BadRequest("body is not the expected JSON"))
}

/// `POST /v1/elevations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElevationRequest {
    agent: Option<String>,
    session: Option<String>,
    action: String,
    target: String,
    reason_code: Option<String>,
    justification: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    single_use: bool,
}

async fn create_elevation(
    b: &Broker,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, BrokerError> {
    let caller = b.caller(headers).await?;
    let req: ElevationRequest = json_body(body)?;
    let (agent, act) = match &caller {
        Caller::Agent { id, act } => {
            if req.agent.as_deref().is_some_and(|a| a != id.as_str()) {
                return Err(BrokerError::Forbidden);
            }
            (b.agent(id.as_str())?.clone(), act.clone())
        }
        Caller::Admin => (
            b.agent(
                req.agent
                    .as_deref()
                    .ok_or(BrokerError::BadRequest("agent"))?,
            )?
            .clone(),
            None,
        ),
        Caller::Approver(_) | Caller::Client(_) => return Err(BrokerError::Forbidden),
    };
    let action: Action = req
        .action
        .parse()
        .map_err(|_| BrokerError::BadRequest("unknown action"))?;
    let target = b
        .config
        .targets
        .iter()
        .find(|t| t.id.as_str() == req.target)
        .ok_or(BrokerError::BadRequest("unknown target"))?;
    if target.tenant != agent.tenant || target.environment != agent.environment {
        return Err(BrokerError::CrossEnvironment);
    }
    let reason_code = b.check_reason_code(req.reason_code.as_deref())?;
    let justification = justification(req.justification.as_deref())?;
    let max = b.config.elevation.max_duration;
    let duration = parse_duration(req.duration.as_deref(), max, max)?;
    let session = req
        .session
        .map(SessionId::try_from)
        .transpose()
        .map_err(|_| BrokerError::BadRequest("session"))?;
    let now = b.clock.now();
    let pdp = b.policy.pdp();
    let decision = pdp.decide(&Request {
        principal: Principal::Agent(agent.id.as_str()),
        action: Action::Elevate,
        resource: Resource::Target(target.id.as_str()),
        context: b.grant_context(&agent, session.as_ref(), now),
    });
    let requested_by = caller.label();
    let id = format!("el_{}", random_b64url(15));
    let reasons = json!(decision.reasons());
    let mut row = ElevationRow {
        id: id.clone(),
        agent: agent.id.clone(),
        session,
        action: action.as_str().to_owned(),
        target: target.id.to_string(),
        resource: None,
        reason_code,
        justification,
        duration_ms: duration.as_millis(),
        single_use: req.single_use,
        status: ElevationStatus::Pending,
        requested_by: requested_by.clone(),
        created_at: now,
        expires_at: None,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        used_at: None,
        approval_id: None,
    };
    let mut approval = None;
    let outcome = match &decision {
        Decision::Allow(_) => {
            row.status = ElevationStatus::Approved;
            row.expires_at =
                Some(now.plus_secs(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)));
            row.decided_by = Some("policy".into());
            row.decided_at = Some(now);
            row.decision_reason = Some(reasons.to_string());
            "approved"
        }
        Decision::Deny(_) => {
            row.status = ElevationStatus::Denied;
            row.decided_by = Some("policy".into());
            row.decided_at = Some(now);
            row.decision_reason = Some(reasons.to_string());
            "denied"
        }
        Decision::RequireApproval(_) => {
            let ap = new_approval(b, &row, &agent, &requested_by, act.as_ref(), now);
            row.approval_id = Some(ap.id.clone());
            approval = Some(ap);
            "pending"
        }
    };
    b.store.insert_elevation(row.clone(), approval).await?;
    b.metrics.elevation(outcome, &row.reason_code);
    b.refresh_grants().await?;
    crate::events::publish(b, vec![elevation_event(&row, now)]).await;
    b.record_done(
        Record::new("elevation", now)
            .field("action", Some("elevate"))
            .field("agent", Some(agent.id.as_str()))
            .session(row.session.as_ref())
            .field("target", Some(target.id.as_str()))
            .field("elevation", Some(id.as_str()))
            .field("elevated_action", Some(action.as_str()))
            .field("reason_code", Some(row.reason_code.as_str()))
            .field("status", Some(outcome))
            .field("approval_id", row.approval_id.clone())
            .field("requested_by", Some(requested_by))
            .decision(
                decision.wire(),
                reasons.clone(),
                Some(decision.policy_version()),
            ),
    )
    .await;
    let mut v = elevation_json(&row, now);
    if let Some(o) = v.as_object_mut() {
        o.insert("reasons".into(), reasons);
        o.insert("policy_version".into(), json!(decision.policy_version()));
    }
    Ok(v)
}

fn new_approval(
    b: &Broker,
    e: &ElevationRow,
    agent: &Agent,
    requested_by: &str,
    act: Option<&Value>,
    now: UnixTime,
) -> ApprovalRow {
    let lapse = i64::try_from(b.config.elevation.max_duration.as_secs()).unwrap_or(3600);
    ApprovalRow {
        id: format!("ap_{}", random_b64url(15)),
        elevation: e.id.clone(),
        requested_by: requested_by.to_owned(),
        involved: b.involved(agent, requested_by, act),
        status: ApprovalStatus::Pending,
        created_at: now,
        expires_at: now.plus_secs(lapse),
        decided_by: None,
        decided_at: None,
        why: None,
    }
}

/// `POST /v1/approvals`: an enforcement point holding a `require_approval` action asks for a
/// single-use elevation for exactly that action and resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldAction {
    agent: String,
    session: Option<String>,
    action: String,
    target: String,
    resource: Option<String>,
    reason_code: Option<String>,
    justification: Option<String>,
    act: Option<Value>,
}

async fn create_approval(
    b: &Broker,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, BrokerError> {
    let caller = b.caller(headers).await?;
    if !matches!(caller, Caller::Admin | Caller::Client(_)) {
        return Err(BrokerError::Forbidden);
    }
    let req: HeldAction = json_body(body)?;
    let agent = b.agent(&req.agent)?.clone();
    let action: Action = req
        .action
        .parse()
        .map_err(|_| BrokerError::BadRequest("unknown action"))?;
    let target = b
        .config
        .targets
        .iter()
        .find(|t| t.id.as_str() == req.target)
        .ok_or(BrokerError::BadRequest("unknown target"))?;
    let now = b.clock.now();
    let reason_code = match req.reason_code.as_deref() {
        None => b
            .config
            .elevation
            .reason_codes
            .first()
            .cloned()
            .unwrap_or_default(),
        Some(c) => b.check_reason_code(Some(c))?,
    };
    let row = ElevationRow {
        id: format!("el_{}", random_b64url(15)),
        agent: agent.id.clone(),
        session: req
            .session
            .map(SessionId::try_from)
            .transpose()
            .map_err(|_| BrokerError::BadRequest("session"))?,
        action: action.as_str().to_owned(),
        target: target.id.to_string(),
        resource: req.resource,
        reason_code,
        justification: req
            .justification
            .unwrap_or_else(|| "held by an enforcement point".into()),
        // The approved action is allowed once, promptly.
        duration_ms: b.config.elevation.max_duration.as_millis().min(300_000),
        single_use: true,
        status: ElevationStatus::Pending,
        requested_by: caller.label(),
        created_at: now,
        expires_at: None,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        used_at: None,
        approval_id: None,
    };
    let ap = new_approval(
        b,
        &row,
        &agent,
        &format!("agent:{}", agent.id),
        req.act.as_ref(),
        now,
    );
    let mut row = row;
    row.approval_id = Some(ap.id.clone());
    let out = json!({ "id": ap.id, "elevation": row.id, "status": "pending" });
    b.store.insert_elevation(row.clone(), Some(ap)).await?;
    b.metrics.elevation("pending", &row.reason_code);
    b.record_done(
        Record::new("approval", now)
            .field("action", Some("approval_requested"))
            .field("agent", Some(agent.id.as_str()))
            .session(row.session.as_ref())
            .field("target", Some(row.target.as_str()))
            .field("elevation", Some(row.id.as_str()))
            .field("approval_id", row.approval_id.clone())
            .field("held_action", Some(row.action.as_str()))
            .field("resource", row.resource.clone())
            .field("requested_by", Some(row.requested_by.clone()))
            .decision(
                "require_approval",
                json!([{ "code": "approval_required" }]),
                Some(&b.policy.policy_version()),
            ),
    )
    .await;
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    why: Option<String>,
}

async fn decide(
    b: &Broker,
    headers: &HeaderMap,
    id: &str,
    approve: bool,
    body: &[u8],
) -> Result<Value, BrokerError> {
    let approver = match b.caller(headers).await? {
        Caller::Approver(a) => a,
        _ => return Err(BrokerError::Forbidden),
    };
    let why = if body.is_empty() {
        DecisionBody::default()
    } else {
        json_body(body)?
    }
    .why
    .unwrap_or_default();
    if why.len() > 1000 {
        return Err(BrokerError::BadRequest(
            "why is longer than 1000 characters",
        ));
    }
    let ap = b.store.approval(id).await?.ok_or(BrokerError::NotFound)?;
    if ap.status != ApprovalStatus::Pending {
        return Err(BrokerError::Conflict("approval is no longer pending"));
    }
    let e = b
        .store
        .elevation(&ap.elevation)
        .await?
        .ok_or(BrokerError::NotFound)?;
    let now = b.clock.now();
    // INVARIANT (no self-approval): none of the approver's identities or e-mails may be among
    // those involved (requester, agent, owner, act chain); identities compare exactly, e-mails
    // case-insensitively.
    let mine: Vec<String> = approver
        .identities
        .iter()
        .map(|(iss, sub)| format!("{iss} {sub}"))
        .chain(approver.emails.iter().cloned())
        .chain([format!("approver:{}", approver.id)])
        .collect();
    if mine.iter().any(|m| ap.involved.contains(m)) {
        b.metrics.denied(Reason::SelfApproval.as_str());
        b.record_done(
            Record::new("approval", now)
                .field("action", Some(if approve { "approve" } else { "deny" }))
                .field("agent", Some(e.agent.as_str()))
                .field("approval_id", Some(ap.id.as_str()))
                .field("elevation", Some(e.id.as_str()))
                .field("approver", Some(approver.id.as_str()))
                .decision(
                    "deny",
                    json!([{ "code": "self_approval" }]),
                    Some(&b.policy.policy_version()),
                ),
        )
        .await;
        return Err(BrokerError::SelfApproval);
    }
    let pdp = b.policy.pdp();
    let decision = pdp.decide(&Request {
        principal: Principal::Approver(&approver.id),
        action: Action::Approve,
        resource: Resource::Target(&e.target),
        context: Context {
            time: now.as_secs(),
            ..Context::default()
        },
    });
    if !matches!(decision, Decision::Allow(_)) {
        return Err(BrokerError::Forbidden);
    }
    let by = format!("approver:{}", approver.id);
    let updated = b
        .store
        .decide_approval(id, approve, &by, &why, now)
        .await?
        .ok_or(BrokerError::Conflict("approval is no longer pending"))?;
    if approve {
        b.metrics.approval_wait(
            now.as_millis().saturating_sub(ap.created_at.as_millis()) as f64 / 1000.0,
        );
    }
    b.metrics
        .elevation(if approve { "approved" } else { "denied" }, &e.reason_code);
    b.refresh_grants().await?;
    crate::events::publish(b, vec![elevation_event(&updated, now)]).await;
    b.record_done(
        Record::new("approval", now)
            .field("action", Some(if approve { "approve" } else { "deny" }))
            .field("agent", Some(e.agent.as_str()))
            .session(e.session.as_ref())
            .field("target", Some(e.target.as_str()))
            .field("approval_id", Some(ap.id.as_str()))
            .field("elevation", Some(e.id.as_str()))
            .field("approver", Some(approver.id.as_str()))
            .field("why", Some(why.as_str()))
            .field("expires_at", updated.expires_at.map(|t| t.as_secs()))
            .decision(
                if approve { "allow" } else { "deny" },
                json!(decision.reasons()),
                Some(decision.policy_version()),
            ),
    )
    .await;
    Ok(elevation_json(&updated, now))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassRequest {
    agent: Option<String>,
    reason_code: Option<String>,
    justification: Option<String>,
    duration: Option<String>,
}

async fn open_breakglass(
    b: &Broker,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, BrokerError> {
    let approver = match b.caller(headers).await? {
        Caller::Approver(a) => a,
        _ => return Err(BrokerError::Forbidden),
    };
    let req: BreakGlassRequest = json_body(body)?;
    let agent = b
        .agent(
            req.agent
                .as_deref()
                .ok_or(BrokerError::BadRequest("agent"))?,
        )?
        .clone();
    // Free text alone is not a reason: a code from the configured list is required (X15).
    let reason_code = b.check_reason_code(req.reason_code.as_deref())?;
    let bg = b.config.breakglass;
    let duration = parse_duration(
        req.duration.as_deref(),
        bg.default_duration,
        bg.max_duration,
    )?;
    let now = b.clock.now();
    if b.grants().break_glass(&agent.id, now).is_some() {
        return Err(BrokerError::Conflict(
            "break-glass is already open for this agent; close it first",
        ));
    }
    let pdp = b.policy.pdp();
    let decision = pdp.decide(&Request {
        principal: Principal::Approver(&approver.id),
        action: Action::BreakGlass,
        resource: Resource::Agent(agent.id.as_str()),
        context: b.grant_context(&agent, None, now),
    });
    if !matches!(decision, Decision::Allow(_)) {
        return Err(BrokerError::Forbidden);
    }
    let row = BreakGlassRow {
        id: format!("bg_{}", random_b64url(15)),
        agent: agent.id.clone(),
        reason_code,
        justification: req.justification.unwrap_or_default(),
        opened_by: format!("approver:{}", approver.id),
        opened_at: now,
        ends_at: now.plus_secs(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
        closed_at: None,
        closed_by: None,
    };
    b.store.open_breakglass(row.clone()).await?;
    b.refresh_grants().await?;
    crate::events::publish(b, vec![breakglass_event(&row, true, now)]).await;
    tracing::warn!(alert = "break_glass_opened", id = row.id, agent = %agent.id, by = row.opened_by, until = %firebreak_core::format_rfc3339_millis(row.ends_at), reason = row.reason_code, "ALERT: break-glass opened");
    b.record_done(
        Record::new("break_glass", now)
            .field("action", Some("open"))
            .field("agent", Some(agent.id.as_str()))
            .field("break_glass", Some(row.id.as_str()))
            .field("opened_by", Some(row.opened_by.as_str()))
            .field("reason_code", Some(row.reason_code.as_str()))
            .field("ends_at", Some(row.ends_at.as_secs()))
            .decision(
                "allow",
                json!(decision.reasons()),
                Some(decision.policy_version()),
            ),
    )
    .await;
    Ok(breakglass_json(&row))
}

fn breakglass_json(r: &BreakGlassRow) -> Value {
    json!({
        "id": r.id,
        "agent": r.agent.as_str(),
        "reason_code": r.reason_code,
        "justification": r.justification,
        "opened_by": r.opened_by,
        "opened_at": time(Some(r.opened_at)),
        "ends_at": time(Some(r.ends_at)),
        "closed_at": time(r.closed_at),
        "closed_by": r.closed_by,
    })
}

async fn close_breakglass(b: &Broker, headers: &HeaderMap, id: &str) -> Result<Value, BrokerError> {
    let by = match b.caller(headers).await? {
        c @ (Caller::Approver(_) | Caller::Admin) => c.label(),
        _ => return Err(BrokerError::Forbidden),
    };
    let now = b.clock.now();
    let row = b
        .store
        .close_breakglass(id, &by, now)
        .await?
        .ok_or(BrokerError::NotFound)?;
    b.refresh_grants().await?;
    crate::events::publish(b, vec![breakglass_event(&row, false, now)]).await;
    tracing::warn!(alert = "break_glass_closed", id = row.id, agent = %row.agent, by, "ALERT: break-glass closed");
    b.record_done(
        Record::new("break_glass", now)
            .field("action", Some("close"))
            .field("agent", Some(row.agent.as_str()))
            .field("break_glass", Some(row.id.as_str()))
            .field("closed_by", Some(by.as_str())),
    )
    .await;
    Ok(breakglass_json(&row))
}

impl Broker {
    /// Upkeep for grants: expire elevations and lapsed approvals, record break-glass windows
    /// that ended by themselves (with the close alert), and refresh the snapshot.
    pub(crate) async fn maintain_grants(&self) -> Result<(), BrokerError> {
        let now = self.clock.now();
        for id in self.store.expire_elevations(now).await? {
            self.metrics.elevation("expired", "-");
            crate::events::publish(self, vec![elevation_expired_event(&id, now)]).await;
            self.record_done(
                Record::new("elevation", now)
                    .field("elevation", Some(id.as_str()))
                    .field("status", Some("expired")),
            )
            .await;
        }
        for b in self.grants().ended(now) {
            tracing::warn!(alert = "break_glass_closed", id = b.id, agent = %b.agent, "ALERT: break-glass ended (expired)");
            self.record_done(
                Record::new("break_glass", now)
                    .field("action", Some("expire"))
                    .field("agent", Some(b.agent.as_str()))
                    .field("break_glass", Some(b.id.as_str())),
            )
            .await;
        }
        self.refresh_grants().await
    }
}

/// `POST /v1/elevations/{id}/use` (an enforcement point, or admin): consumes a single-use
/// elevation for the held action it was approved for, just before that action proceeds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UseBody {
    agent: String,
    session: Option<String>,
}

async fn use_elevation(
    b: &Broker,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
) -> Result<Value, BrokerError> {
    let caller = b.caller(headers).await?;
    if !matches!(caller, Caller::Admin | Caller::Client(_)) {
        return Err(BrokerError::Forbidden);
    }
    let req: UseBody = json_body(body)?;
    let agent = AgentId::try_from(req.agent).map_err(|_| BrokerError::BadRequest("agent"))?;
    let session = req
        .session
        .map(SessionId::try_from)
        .transpose()
        .map_err(|_| BrokerError::BadRequest("session"))?;
    let now = b.clock.now();
    let Some(mut row) = b
        .store
        .use_elevation(id, &agent, session.as_ref(), now)
        .await?
    else {
        return Err(BrokerError::GrantUnusable);
    };
    if row.single_use {
        row.status = ElevationStatus::Used;
    }
    b.refresh_grants().await?;
    crate::events::publish(b, vec![elevation_event(&row, now)]).await;
    b.record_done(
        Record::new("elevation", now)
            .field("action", Some("use"))
            .field("agent", Some(agent.as_str()))
            .session(row.session.as_ref())
            .field("elevation", Some(id))
            .field("target", Some(row.target.as_str()))
            .field("used_by", Some(caller.label())),
    )
    .await;
    Ok(elevation_json(&row, now))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    agent: Option<String>,
    #[serde(default)]
    pending: bool,
}

async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, BrokerError> {
    axum::body::to_bytes(body, crate::broker::MAX_BODY)
        .await
        .map_err(|_| BrokerError::BodyTooLarge)
}

/// Axum handlers.
pub(crate) mod handlers {
    use super::*;
    use axum::response::IntoResponse;

    type B = State<Arc<Broker>>;

    fn created(r: Result<Value, BrokerError>) -> Response {
        match r {
            Ok(v) => (axum::http::StatusCode::CREATED, axum::Json(v)).into_response(),
            Err(e) => admin_response(Err(e)),
        }
    }

    /// `POST /v1/elevations`.
    pub async fn post_elevation(
        State(b): B,
        headers: HeaderMap,
        body: axum::body::Body,
    ) -> Response {
        let r = async { create_elevation(&b, &headers, &read_body(body).await?).await }.await;
        created(r)
    }

    /// `GET /v1/elevations`.
    pub async fn list_elevations(
        State(b): B,
        headers: HeaderMap,
        Query(q): Query<ListQuery>,
    ) -> Response {
        let r: Result<Value, BrokerError> = async {
            let caller = b.caller(&headers).await?;
            let agent = match (&caller, q.agent) {
                (Caller::Agent { id, .. }, _) => Some(id.clone()),
                (Caller::Admin | Caller::Approver(_), a) => a.map(AgentId::try_from).transpose().map_err(|_| BrokerError::BadRequest("agent"))?,
                (Caller::Client(_), _) => return Err(BrokerError::Forbidden),
            };
            let now = b.clock.now();
            let rows = b.store.elevations(agent.as_ref(), 1000).await?;
            Ok(json!({ "elevations": rows.iter().map(|e| elevation_json(e, now)).collect::<Vec<_>>() }))
        }
        .await;
        admin_response(r)
    }

    /// `GET /v1/elevations/{id}`.
    pub async fn get_elevation(
        State(b): B,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
    ) -> Response {
        let r: Result<Value, BrokerError> = async {
            let caller = b.caller(&headers).await?;
            let e = b.store.elevation(&id).await?.ok_or(BrokerError::NotFound)?;
            match &caller {
                Caller::Agent { id, .. } if *id != e.agent => return Err(BrokerError::NotFound),
                Caller::Client(_) => return Err(BrokerError::Forbidden),
                _ => {}
            }
            Ok(elevation_json(&e, b.clock.now()))
        }
        .await;
        admin_response(r)
    }

    /// `POST /v1/approvals`.
    pub async fn post_approval(
        State(b): B,
        headers: HeaderMap,
        body: axum::body::Body,
    ) -> Response {
        let r = async { create_approval(&b, &headers, &read_body(body).await?).await }.await;
        created(r)
    }

    /// `GET /v1/approvals`.
    pub async fn list_approvals(
        State(b): B,
        headers: HeaderMap,
        Query(q): Query<ListQuery>,
    ) -> Response {
        let r: Result<Value, BrokerError> = async {
            match b.caller(&headers).await? {
                Caller::Admin | Caller::Approver(_) => {}
                _ => return Err(BrokerError::Forbidden),
            }
            let now = b.clock.now();
            let rows = b.store.approvals(q.pending, 1000).await?;
            let mut out = Vec::new();
            for a in &rows {
                let mut v = approval_json(a, now);
                if let (Some(o), Some(e)) =
                    (v.as_object_mut(), b.store.elevation(&a.elevation).await?)
                {
                    o.insert("agent".into(), json!(e.agent.as_str()));
                    o.insert("action".into(), json!(e.action));
                    o.insert("target".into(), json!(e.target));
                    o.insert("resource".into(), json!(e.resource));
                    o.insert("reason_code".into(), json!(e.reason_code));
                    o.insert("justification".into(), json!(e.justification));
                }
                out.push(v);
            }
            Ok(json!({ "approvals": out }))
        }
        .await;
        admin_response(r)
    }

    /// `GET /v1/approvals/{id}`.
    pub async fn get_approval(
        State(b): B,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
    ) -> Response {
        let r: Result<Value, BrokerError> = async {
            match b.caller(&headers).await? {
                Caller::Admin | Caller::Approver(_) | Caller::Client(_) => {}
                Caller::Agent { .. } => return Err(BrokerError::Forbidden),
            }
            let a = b.store.approval(&id).await?.ok_or(BrokerError::NotFound)?;
            Ok(approval_json(&a, b.clock.now()))
        }
        .await;
        admin_response(r)
    }

    /// `POST /v1/approvals/{id}/approve`.
    pub async fn approve(
        State(b): B,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
        body: axum::body::Body,
    ) -> Response {
        let r = async { decide(&b, &headers, &id, true, &read_body(body).await?).await }.await;
        admin_response(r)
    }

    /// `POST /v1/approvals/{id}/deny`.
    pub async fn deny(
        State(b): B,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
        body: axum::body::Body,
    ) -> Response {
        let r = async { decide(&b, &headers, &id, false, &read_body(body).await?).await }.await;
        admin_response(r)
    }

    /// `POST /v1/breakglass`.
    pub async fn post_breakglass(
        State(b): B,
        headers: HeaderMap,
        body: axum::body::Body,
    ) -> Response {
        let r = async { open_breakglass(&b, &headers, &read_body(body).await?).await }.await;
        created(r)
    }

    /// `GET /v1/breakglass`.
    pub async fn use_elevation(
        State(b): B,
        UrlPath(id): UrlPath<String>,
        headers: HeaderMap,
        body: axum::body::Body,
    ) -> Response {
        let r = match read_body(body).await {
            Ok(bytes) => super::use_elevation(&b, &headers, &id, &bytes).await,
            Err(e) => Err(e),
        };
        admin_response(r)
    }

    pub async fn list_breakglass(State(b): B, headers: HeaderMap) -> Response {
        let r: Result<Value, BrokerError> = async {
            match b.caller(&headers).await? {
                Caller::Admin | Caller::Approver(_) => {}
                _ => return Err(BrokerError::Forbidden),
            }
            let rows = b.store.breakglass_list(1000).await?;
            Ok(json!({ "breakglass": rows.iter().map(breakglass_json).collect::<Vec<_>>() }))
        }
        .await;
        admin_response(r)
    }

    /// `DELETE /v1/breakglass/{id}`.
    pub async fn delete_breakglass(
        State(b): B,
        headers: HeaderMap,
        UrlPath(id): UrlPath<String>,
    ) -> Response {
        let r = async { close_breakglass(&b, &headers, &id).await }.await;
        admin_response(r)
    }
}
