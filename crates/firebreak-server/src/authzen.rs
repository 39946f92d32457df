//! `POST /access/v1/evaluation` (OpenID AuthZEN Authorization API 1.0, Access Evaluation): the
//! PDP as a service for enforcement points that cannot embed it. The broker fills in what it
//! owns (active elevations, break-glass, time) so the answer is the one the broker itself would
//! give; the caller supplies the rest of the context.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use firebreak_policy::{Action, Context, Principal, Request, Resource, SessionCtx};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::broker::{Broker, MAX_BODY};
use crate::config::Role;
use crate::error::{BrokerError, Problem};

#[derive(Debug, Deserialize)]
struct Entity {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted per AuthZEN; attributes come from the inventory"
    )]
    properties: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ActionRef {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted per AuthZEN")]
    properties: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    method: String,
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Session {
    id: String,
    #[serde(default)]
    depth: i64,
    #[serde(default)]
    age_seconds: i64,
}

/// The caller-supplied part of the context. Elevations, break-glass and time are the broker's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerContext {
    #[serde(default)]
    scope: Vec<String>,
    http: Option<Http>,
    session: Option<Session>,
    purpose: Option<String>,
    #[serde(default)]
    dpop_bound: bool,
}

#[derive(Debug, Deserialize)]
struct Evaluation {
    subject: Entity,
    action: ActionRef,
    resource: Entity,
    #[serde(default)]
    context: Option<CallerContext>,
}

async fn evaluate(
    b: &Broker,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Value, BrokerError> {
    if !b.is_admin(headers) {
        match b.client(headers, &crate::form::Form::default())? {
            Some(c) if c.roles.contains(&Role::Evaluate) => {}
            Some(_) => return Err(BrokerError::Forbidden),
            None => return Err(BrokerError::ClientAuth { basic: true }),
        }
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| BrokerError::BodyTooLarge)?;
    let req: Evaluation = serde_json::from_slice(&bytes)
        .map_err(|_| BrokerError::BadRequest("not an AuthZEN evaluation request"))?;
    let action: Action = req
        .action
        .name
        .parse()
        .map_err(|_| BrokerError::BadRequest("unknown action"))?;
    let principal = match req.subject.kind.as_str() {
        "agent" => Principal::Agent(&req.subject.id),
        "approver" => Principal::Approver(&req.subject.id),
        _ => {
            return Err(BrokerError::BadRequest(
                "subject.type must be agent or approver",
            ));
        }
    };
    let host;
    let resource = match req.resource.kind.as_str() {
        "target" => Resource::Target(&req.resource.id),
        "agent" => Resource::Agent(&req.resource.id),
        "tool" => {
            let (target, tool) = req
                .resource
                .id
                .split_once('/')
                .ok_or(BrokerError::BadRequest("tool id is <target>/<tool>"))?;
            Resource::Tool { target, tool }
        }
        "host" => {
            let (h, p) = req
                .resource
                .id
                .rsplit_once(':')
                .ok_or(BrokerError::BadRequest("host id is <host>:<port>"))?;
            host = h.to_owned();
            Resource::Host {
                host: &host,
                port: p.parse().map_err(|_| BrokerError::BadRequest("port"))?,
            }
        }
        _ => {
            return Err(BrokerError::BadRequest(
                "resource.type must be target, tool, host or agent",
            ));
        }
    };
    let cc = req.context.unwrap_or_default();
    let now = b.clock.now();
    let session_id = cc
        .session
        .as_ref()
        .and_then(|s| firebreak_core::SessionId::try_from(s.id.as_str()).ok());
    let mut context = match &principal {
        Principal::Agent(id) => match b.config.agents.iter().find(|a| a.id.as_str() == *id) {
            Some(agent) => b.grant_context(agent, session_id.as_ref(), now),
            None => Context {
                time: now.as_secs(),
                ..Context::default()
            },
        },
        Principal::Approver(_) => Context {
            time: now.as_secs(),
            ..Context::default()
        },
    };
    context.scope = cc.scope;
    context.http = cc.http.map(|h| (h.method, h.path));
    context.session = cc.session.map(|s| SessionCtx {
        id: s.id,
        depth: s.depth,
        age_seconds: s.age_seconds,
    });
    if let Some(p) = cc.purpose {
        context.purpose = p;
    }
    context.dpop_bound = cc.dpop_bound;
    let pdp = b.policy.pdp();
    let d = pdp.decide(&Request {
        principal,
        action,
        resource,
        context,
    });
    Ok(json!({
        "decision": matches!(d, firebreak_policy::Decision::Allow(_)),
        "context": {
            "decision": d.wire(),
            "reasons": d.reasons(),
            "policy_version": d.policy_version(),
        }
    }))
}

/// `POST /access/v1/evaluation`.
pub(crate) async fn handler(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match evaluate(&b, &headers, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            b.metrics.denied(e.reason().as_str());
            Problem(e).into_response()
        }
    }
}
