//! `GET /v1/events` (DESIGN.md §9): the store-wide event stream as Server-Sent Events, and
//! `GET /v1/policy/bundle`, what an enforcement point needs to decide in-process.
//!
//! Each stream is one task: it opens with a `snapshot` (no `Last-Event-ID`, or one it cannot
//! resume from) or replays from the given id, then forwards every stored event in seq order and
//! sends a `heartbeat` each second. It reads the store, never an in-memory queue, so an event
//! committed by another replica (PostgreSQL) reaches it too: the store's `event_watch` only
//! wakes it early. A store error ends the stream: the client reconnects with `Last-Event-ID`,
//! and in the meantime its missing heartbeats make it fail closed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use firebreak_core::UnixTime;
use firebreak_store::{EventRow, NewEvent};
use serde_json::{Value, json};

use crate::broker::Broker;
use crate::config::Role;
use crate::error::{BrokerError, Problem};
use crate::form::Form;

/// Events per store read while catching up.
const PAGE: u32 = 1000;
/// A resume further behind than this gets a snapshot instead (cheaper than a long replay).
const MAX_REPLAY: u64 = 100_000;
/// Frames buffered per stream before it counts as too slow and is dropped.
const BUFFER: usize = 256;

/// The SSE body: frames from the stream's task.
struct SseBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|f| f.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// One SSE message. `data` is single-line JSON, so it needs no `data:` continuation lines.
fn frame(id: Option<u64>, event: &str, data: &Value) -> Bytes {
    let mut s = String::with_capacity(128);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(event);
    s.push_str("\ndata: ");
    s.push_str(&data.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

fn event_frame(e: &EventRow) -> Bytes {
    frame(Some(e.seq), e.kind.as_str(), &Value::Object(e.data.clone()))
}

/// Unix seconds with milliseconds, the broker's time in heartbeats and snapshots.
fn secs(t: UnixTime) -> Value {
    json!(t.as_millis() as f64 / 1000.0)
}

fn authorize(b: &Broker, headers: &HeaderMap) -> Result<(), BrokerError> {
    match b.client(headers, &Form::default())? {
        Some(c) if c.roles.contains(&Role::Stream) => Ok(()),
        Some(_) => Err(BrokerError::Forbidden),
        None if b.is_admin(headers) => Ok(()),
        None => Err(BrokerError::Unauthenticated),
    }
}

/// Where a new stream starts: resume after `Last-Event-ID`, or a snapshot.
fn resume_point(headers: &HeaderMap, head: u64) -> Option<u64> {
    let last = headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    // An id beyond the head comes from another database (or a reset one): start over.
    (last <= head && head - last <= MAX_REPLAY).then_some(last)
}

async fn snapshot(b: &Broker) -> Result<(u64, Bytes), BrokerError> {
    let now = b.clock.now();
    let (head, events) = b.store.event_snapshot(now).await?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| json!({ "event": e.kind.as_str(), "data": Value::Object(e.data.clone()) }))
        .collect();
    let data = json!({
        "head_seq": head,
        "time": secs(now),
        "policy_version": b.policy.pdp().version(),
        "events": events,
    });
    Ok((head, frame(Some(head), "snapshot", &data)))
}

/// `GET /v1/events`.
pub async fn handler(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&b, &headers) {
        return Problem(e).into_response();
    }
    let head = match b.store.event_head().await {
        Ok(h) => h,
        Err(e) => return Problem(BrokerError::Store(e)).into_response(),
    };
    let (start, first) = match resume_point(&headers, head) {
        Some(last) => (last, None),
        None => match snapshot(&b).await {
            Ok((seq, f)) => (seq, Some(f)),
            Err(e) => return Problem(e).into_response(),
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
    if let Some(f) = first {
        // The channel is new and empty: this cannot fail for lack of room.
        let _ = tx.try_send(f);
    }
    b.metrics.event_streams(1);
    tokio::spawn(run(Arc::clone(&b), tx, start));
    let mut resp = Response::new(Body::new(SseBody(rx)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn run(b: Arc<Broker>, tx: tokio::sync::mpsc::Sender<Bytes>, mut last: u64) {
    let mut watch = b.store.event_watch();
    let mut closing = b.closing();
    let mut beat = tokio::time::interval(std::time::Duration::from_secs(1));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome: Result<(), &'static str> = async {
        loop {
            let heartbeat = tokio::select! {
                _ = beat.tick() => true,
                r = watch.changed() => { r.map_err(|_| "store closed")?; false }
                _ = closing.changed() => return Err("broker shutting down"),
                () = tx.closed() => return Err("client gone"),
            };
            loop {
                let page = b
                    .store
                    .events_after(last, PAGE)
                    .await
                    .map_err(|_| "store read failed")?;
                let full = page.len() as u64 == u64::from(PAGE);
                for e in &page {
                    tx.try_send(event_frame(e)).map_err(|_| "client too slow")?;
                    last = e.seq;
                }
                if !full {
                    break;
                }
            }
            if heartbeat {
                let head = b
                    .store
                    .event_head()
                    .await
                    .map_err(|_| "store read failed")?;
                let data = json!({ "head_seq": head.max(last), "time": secs(b.clock.now()) });
                tx.try_send(frame(None, "heartbeat", &data))
                    .map_err(|_| "client too slow")?;
            }
        }
    }
    .await;
    if let Err(why) = outcome {
        tracing::debug!(why, last, "event stream ended");
    }
    b.metrics.event_streams(-1);
}

/// Publishes events, logging rather than failing: the change they announce has taken effect,
/// and a stream client that misses one will see the state in its next snapshot.
pub(crate) async fn publish(b: &Broker, events: Vec<NewEvent>) {
    if let Err(e) = b.store.append_events(events).await {
        tracing::error!(error = %e, "event not published; enforcement points see it at their next snapshot");
    }
}

/// `GET /v1/policy/bundle` (role `stream`): the policy set in force, its schema, the inventory
/// its entities come from and the targets, with `ETag` = the policy version.
pub async fn bundle(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&b, &headers) {
        return Problem(e).into_response();
    }
    let pdp = b.policy.pdp();
    let etag = format!("\"{}\"", pdp.version());
    let etag_value = HeaderValue::from_str(&etag).ok();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Some(v) = etag_value {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let sources: Vec<Value> = pdp
        .sources()
        .iter()
        .map(|(name, text)| json!({ "name": name, "text": text }))
        .collect();
    let targets: Vec<Value> = b
        .config
        .targets
        .iter()
        .map(|t| {
            json!({
                "id": t.id.as_str(),
                "audience": t.audience,
                "kind": t.kind.as_str(),
                "tenant": t.tenant,
                "environment": t.environment,
                "tier": t.tier,
            })
        })
        .collect();
    let body = json!({
        "policy_version": pdp.version(),
        "sources": sources,
        "schema": pdp.schema_text(),
        "inventory": crate::decider::inventory(&b.config),
        "targets": targets,
        "issuer": b.config.server.public_url,
    });
    let mut r = axum::Json(body).into_response();
    if let Some(v) = etag_value {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `POST /v1/dpop/claims` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    /// The proof key's thumbprint (`cnf.jkt`).
    jkt: String,
    /// The proof's `jti`.
    jti: String,
    /// Until when the proof could be accepted (Unix seconds): its `iat` + window + leeway.
    until: i64,
}

/// Longest claim an enforcement point may ask for: a DPoP proof is accepted for at most
/// `iat` + 300 s + leeway anywhere in Firebreak, so nothing needs a longer claim.
const MAX_CLAIM_SECS: i64 = 600;

/// `POST /v1/dpop/claims` (role `stream`): a standalone gateway claims a DPoP proof's `jti` in
/// the broker's store, so that a proof replayed at any other gateway behind the same `htu` is
/// refused (G12). `{"fresh": true}` the first time, `{"fresh": false}` for a replay.
pub async fn claim(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Body) -> Response {
    let r: Result<Value, BrokerError> = async {
        authorize(&b, &headers)?;
        let bytes = axum::body::to_bytes(body, 4096)
            .await
            .map_err(|_| BrokerError::BodyTooLarge)?;
        let c: ClaimBody = serde_json::from_slice(&bytes)
            .map_err(|_| BrokerError::BadRequest("body is not the expected JSON"))?;
        if c.jkt.is_empty() || c.jkt.len() > 128 || c.jti.is_empty() || c.jti.len() > 256 {
            return Err(BrokerError::BadRequest("jkt or jti out of bounds"));
        }
        let now = b.clock.now();
        if c.until <= now.as_secs() || c.until > now.as_secs().saturating_add(MAX_CLAIM_SECS) {
            return Err(BrokerError::BadRequest("until out of bounds"));
        }
        let key = firebreak_token::dpop_claim_key(&c.jkt, &c.jti);
        let fresh = b
            .store
            .claim_once(
                firebreak_token::DPOP_CLAIM_SCOPE,
                &key,
                UnixTime::from_secs(c.until),
                now,
            )
            .await?;
        Ok(json!({ "fresh": fresh }))
    }
    .await;
    crate::broker::admin_response(r)
}
