//! A broker, an enforcer, a gateway and a recording upstream, all on loopback.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness"
)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use firebreak_enforce::{EnforceConfig, Enforcer};
use firebreak_gateway::{Gateway, GatewayConfig};
pub use firebreak_harness::{BrokerHarness, GW_CLIENT, GW_SECRET, MCP, Setup, TOOLS, claims_of};
use http::Request;
use serde_json::{Value, json};

pub const UPSTREAM_SECRET: &str = "upstream-secret-xyz";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An upstream that records every request. On `/mcp` it answers like a tiny MCP server with
/// tools `tools` (a shared list the test may change); elsewhere it echoes.
#[derive(Clone, Default)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub tools: Arc<Mutex<Vec<String>>>,
    pub sse: Arc<Mutex<bool>>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let me = me.clone();
            async move { me.answer(req).await }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }
    async fn answer(&self, req: Request<Body>) -> axum::response::Response {
        let (parts, body) = req.into_parts();
        // A body that does not arrive whole is not a request the upstream received (G03).
        let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
            return (http::StatusCode::BAD_REQUEST, "incomplete body").into_response();
        };
        let body = body.to_vec();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                .collect(),
            body: body.clone(),
        });
        if parts.uri.path().starts_with("/mcp") && parts.method == http::Method::POST {
            let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = msg.get("id").cloned().unwrap_or(Value::Null);
            let result = match msg["method"].as_str() {
                Some("initialize") => {
                    json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": true}}, "serverInfo": {"name": "rec", "version": "1"}})
                }
                Some("tools/list") => {
                    let tools: Vec<Value> = self
                        .tools
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
                        .collect();
                    json!({"tools": tools})
                }
                Some("tools/call") => {
                    json!({"content": [{"type": "text", "text": format!("called {}", msg["params"]["name"])}]})
                }
                _ => {
                    return (http::StatusCode::ACCEPTED, "").into_response();
                }
            };
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
            if *self.sse.lock().unwrap() {
                let mut r = format!("event: message\ndata: {reply}\n\n").into_response();
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                return r;
            }
            let mut r = reply.into_response();
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        axum::Json(json!({"path": parts.uri.to_string()})).into_response()
    }
}

/// The broker's manual clock shifted by an offset the test changes while running (F8).
#[derive(Debug)]
pub struct OffsetClock {
    pub base: firebreak_core::ManualClock,
    pub offset_ms: Arc<AtomicI64>,
}

impl firebreak_core::Clock for OffsetClock {
    fn now(&self) -> firebreak_core::UnixTime {
        let t = firebreak_core::Clock::now(&self.base).as_millis();
        firebreak_core::UnixTime::from_millis(t + self.offset_ms.load(Ordering::SeqCst))
    }
}

/// Waits (bounded) until the enforcer has taken `n` more heartbeats, snapshots or events.
pub async fn next_beats(e: &Enforcer, n: u64) {
    let mut rx = e.beats();
    let start = *rx.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(5), async {
        while rx.borrow_and_update().wrapping_sub(start) < n {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("no heartbeat within 5 s");
}

pub struct Stack {
    pub h: BrokerHarness,
    pub enforcer: Arc<Enforcer>,
    pub gw: Arc<Gateway>,
    pub url: String,
    pub upstream: Upstream,
}

/// Route config lines for `upstream`.
pub fn routes(upstream: &str, extra: &str) -> String {
    format!(
        r#"[[route]]
target = "tools"
path = "/tools"
upstream = "{upstream}/api"
credential = {{ header = "Authorization", value_env = "UP", prefix = "Bearer " }}

[[route]]
target = "mcp-tools"
path = "/mcp"
upstream = "{upstream}/mcp"
credential = {{ header = "Authorization", value_env = "UP", prefix = "Bearer " }}
{extra}"#
    )
}

/// Policies most gateway tests use: deploy-bot may GET under /tools/a and call `echo` and
/// `search`; other-bot nothing; `deploy` needs approval.
pub fn policies() -> Vec<(String, String)> {
    vec![(
        "gw.cedar".into(),
        r#"@id("http-a")
permit(principal == Agent::"deploy-bot", action == Action::"http_request", resource == Target::"tools")
when { context has http && context.http.method == "GET" && (context.http.path == "/tools/a" || context.http.path like "/tools/a/*") };

@id("tools-read")
permit(principal == Agent::"deploy-bot", action == Action::"call_tool", resource in Target::"mcp-tools")
when { resource == Tool::"mcp-tools/echo" || resource == Tool::"mcp-tools/search" };

@id("deploy-needs-approval")
@approval("required")
permit(principal == Agent::"deploy-bot", action == Action::"call_tool", resource == Tool::"mcp-tools/deploy");
"#
        .into(),
    )]
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(
            Setup {
                policies: policies(),
                ..Setup::default()
            },
            "",
            "",
        )
        .await
    }

    /// `gateway_extra` is appended to `[gateway]` keys, `route_extra` after the routes.
    pub async fn start_with(setup: Setup, gateway_extra: &str, route_extra: &str) -> Self {
        Self::start_full(setup, gateway_extra, route_extra, None).await
    }

    /// As `start_with`; the gateway's clock is the broker's shifted by `skew` when given (F8).
    pub async fn start_full(
        setup: Setup,
        gateway_extra: &str,
        route_extra: &str,
        skew: Option<Arc<AtomicI64>>,
    ) -> Self {
        let h = BrokerHarness::start(setup).await;
        let upstream = Upstream::default();
        *upstream.tools.lock().unwrap() = ["echo", "search", "rm", "deploy", "Echo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let up = upstream.start().await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let text = format!(
            "listen = \"{addr}\"\nbroker = \"{}\"\nclient_id = \"{GW_CLIENT}\"\nclient_secret_env = \"GWS\"\napproval_hold = \"2s\"\n{gateway_extra}\n{}",
            h.url,
            routes(&up, route_extra)
        );
        let table: toml::Table = toml::from_str(&text).unwrap();
        let env = |k: &str| match k {
            "GWS" => Some(GW_SECRET.to_owned()),
            "UP" => Some(UPSTREAM_SECRET.to_owned()),
            _ => None,
        };
        let cfg = GatewayConfig::from_toml(table, &env).unwrap();
        let enforcer = Enforcer::start(
            EnforceConfig {
                broker: h.url.clone(),
                client_id: GW_CLIENT.into(),
                client_secret: GW_SECRET.into(),
                stale_after: cfg.stale_after.as_std(),
                danger_allow_http: false,
                leeway_secs: 60,
            },
            match skew {
                Some(offset_ms) => Arc::new(OffsetClock {
                    base: h.clock.clone(),
                    offset_ms,
                }),
                None => Arc::new(h.clock.clone()),
            },
        )
        .unwrap();
        let gw = Gateway::new(cfg, Arc::clone(&enforcer), h.store.clone(), "broker".into());
        tokio::spawn(firebreak_gateway::serve(
            Arc::clone(&gw),
            l,
            std::future::pending(),
        ));
        let start = tokio::time::Instant::now();
        while !enforcer.ready() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "gateway never ready"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            h,
            enforcer,
            gw,
            url: format!("http://{addr}"),
            upstream,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> firebreak_harness::Reply {
        self.h
            .http
            .send(
                method,
                &format!("{}{path}", self.url),
                headers,
                body.as_bytes().to_vec(),
            )
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> firebreak_harness::Reply {
        let auth = format!("Bearer {token}");
        self.send("GET", path, &[("authorization", &auth)], "")
            .await
    }

    pub async fn rpc(&self, token: &str, body: &Value) -> firebreak_harness::Reply {
        let auth = format!("Bearer {token}");
        self.send(
            "POST",
            "/mcp",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            &body.to_string(),
        )
        .await
    }

    pub async fn call_tool(&self, token: &str, name: &str) -> firebreak_harness::Reply {
        self.rpc(token, &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}}})).await
    }
}

/// The `WWW-Authenticate` header of a reply.
pub fn www(r: &firebreak_harness::Reply) -> String {
    r.headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
