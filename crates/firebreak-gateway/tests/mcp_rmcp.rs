//! The gateway between a real MCP server and a real MCP client, both from the official Rust SDK
//! (`rmcp`) over streamable HTTP: sessions, SSE answers, the GET stream and DELETE at close all
//! go through the gateway, which filters `tools/list`, refuses tools the policy denies, keeps
//! the agent's token from the server and injects the route's credential.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

// Not every helper the shared harness re-exports is used here.
#[allow(unused_imports, reason = "shared test harness")]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use common::*;
use http::Request;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, ClientConfig, ServerCapabilities, ServerConfig};
use rmcp::service::ServiceError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt as _, schemars, tool, tool_handler, tool_router};
use serde_json::Value;

/// One request as the rmcp server's HTTP layer saw it, and the status it answered.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
    status: Option<u16>,
    /// The server's `Content-Type`.
    answer_type: String,
}

impl Hit {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The JSON-RPC method of a POST body, when it has one.
    fn rpc_method(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.body)
            .ok()?
            .get("method")?
            .as_str()
            .map(str::to_owned)
    }
}

#[derive(Clone, Default)]
struct Log {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Tool handler invocations by tool name.
    calls: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Log {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
    fn calls(&self, tool: &str) -> usize {
        self.calls.lock().unwrap().get(tool).copied().unwrap_or(0)
    }
    fn called(&self, tool: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(tool.to_owned())
            .or_default() += 1;
    }
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct EchoArgs {
    text: String,
}

#[derive(Clone)]
struct Tools {
    log: Log,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Echo the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.log.called("echo");
        format!("rmcp says: {text}")
    }
    #[tool(description = "Search")]
    fn search(&self) -> String {
        self.log.called("search");
        "no results".into()
    }
    #[tool(description = "Remove files")]
    fn rm(&self) -> String {
        self.log.called("rm");
        "removed everything".into()
    }
    #[tool(description = "Deploy")]
    fn deploy(&self) -> String {
        self.log.called("deploy");
        "deployed".into()
    }
    #[tool(description = "Read the secrets")]
    fn secrets(&self) -> String {
        self.log.called("secrets");
        "hunter2".into()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// Starts the rmcp server (default config: stateful sessions, SSE answers, GET stream) under
/// `/mcp` behind a layer recording every request; returns its base URL.
async fn start_rmcp(log: &Log) -> String {
    let l = log.clone();
    let service: StreamableHttpService<Tools, LocalSessionManager> = StreamableHttpService::new(
        move || {
            Ok(Tools {
                log: l.clone(),
                tool_router: Tools::tool_router(),
            })
        },
        Arc::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let rec = log.clone();
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(
            move |req: Request<Body>, next: axum::middleware::Next| {
                let rec = rec.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                    let i = {
                        let mut hits = rec.hits.lock().unwrap();
                        hits.push(Hit {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                                .collect(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                            status: None,
                            answer_type: String::new(),
                        });
                        hits.len() - 1
                    };
                    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
                    let mut hits = rec.hits.lock().unwrap();
                    hits[i].status = Some(resp.status().as_u16());
                    hits[i].answer_type = resp
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    drop(hits);
                    resp
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn mcp_code(e: &ServiceError) -> Option<i32> {
    match e {
        ServiceError::McpError(d) => Some(d.code.0),
        _ => None,
    }
}

#[tokio::test]
async fn rmcp_client_and_server_through_the_gateway() {
    tokio::time::timeout(Duration::from_secs(30), scenario())
        .await
        .expect("the rmcp scenario did not finish within 30s");
}

async fn scenario() {
    let log = Log::default();
    let rmcp_url = start_rmcp(&log).await;
    let route = format!(
        r#"
[[route]]
target = "mcp-tools"
path = "/rmcp"
upstream = "{rmcp_url}/mcp"
credential = {{ header = "Authorization", value_env = "UP", prefix = "Bearer " }}
"#
    );
    let s = Stack::start_with(
        Setup {
            policies: policies(),
            ..Setup::default()
        },
        "",
        &route,
    )
    .await;
    let token = s.h.token(MCP, None).await;

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/rmcp", s.url))
            .auth_header(token.clone()),
    );
    let client = match ClientConfig::default().serve(transport).await {
        Ok(c) => c,
        Err(e) => panic!(
            "initialize through the gateway failed: {e:?}\n{:#?}",
            log.hits()
        ),
    };
    let info = client.peer_info().expect("server info after initialize");
    assert!(info.capabilities.tools.is_some(), "{info:?}");

    // tools/list: filtered to what the agent may call (deploy after approval).
    let listed = client
        .list_all_tools()
        .await
        .unwrap_or_else(|e| panic!("tools/list failed: {e:?}\n{:#?}", log.hits()));
    let mut names: Vec<String> = listed.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["deploy", "echo", "search"]);

    // An allowed call reaches the server and its answer comes back.
    let args = serde_json::json!({"text": "hi"})
        .as_object()
        .cloned()
        .unwrap();
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("echo failed: {e:?}\n{:#?}", log.hits()));
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let text = serde_json::to_value(&r.content).unwrap().to_string();
    assert!(text.contains("rmcp says: hi"), "{text}");
    assert_eq!(log.calls("echo"), 1);

    // Denied calls: one "Unknown tool" answer (-32602) and the server never sees them.
    for name in ["rm", "secrets"] {
        let e = client
            .call_tool(CallToolRequestParams::new(name))
            .await
            .expect_err(name);
        assert_eq!(mcp_code(&e), Some(-32602), "{name}: {e:?}");
        assert_eq!(log.calls(name), 0, "{name} reached the server");
    }
    let hits = log.hits();
    for h in &hits {
        if h.rpc_method().as_deref() == Some("tools/call") {
            let body: Value = serde_json::from_str(&h.body).unwrap();
            let tool = body["params"]["name"].as_str().unwrap_or_default();
            assert!(tool == "echo", "a denied tools/call arrived: {}", h.body);
        }
    }

    // The session survives a refusal: a later allowed call still works.
    client
        .call_tool(CallToolRequestParams::new("search"))
        .await
        .unwrap_or_else(|e| panic!("search after a refusal failed: {e:?}"));
    assert_eq!(log.calls("search"), 1);

    // Close: the client ends its session (DELETE) through the gateway.
    client.cancel().await.unwrap();
    // The GET stream is opened by the client's worker on its own; wait for both, bounded.
    let answered = |m: &str| {
        log.hits()
            .iter()
            .any(|h| h.method == m && h.status.is_some())
    };
    eventually(
        "the GET stream and the DELETE that ends the session",
        Duration::from_secs(5),
        async || answered("GET") && answered("DELETE"),
    )
    .await;

    // What the server saw: never the agent's token, always the injected credential and the
    // agent's identity, and every request answered without error by the server.
    let hits = log.hits();
    let methods: Vec<String> = hits
        .iter()
        .map(|h| format!("{} {}", h.method, h.rpc_method().unwrap_or_default()))
        .collect();
    let wire: Vec<String> = hits
        .iter()
        .map(|h| {
            let m = h.rpc_method().unwrap_or_default();
            format!("{} {m} -> {:?} {}", h.method, h.status, h.answer_type)
        })
        .collect();
    // The whole streamable-HTTP exchange went through: SSE answers to POSTs (tools/list
    // filtered inside an SSE event), 202 for the notification, the GET stream, DELETE at close.
    let sse = |h: &Hit| h.answer_type.starts_with("text/event-stream");
    let saw = |f: &dyn Fn(&Hit) -> bool| hits.iter().any(f);
    assert!(
        saw(&|h| h.rpc_method().as_deref() == Some("tools/list") && sse(h)),
        "{wire:#?}"
    );
    assert!(
        saw(
            &|h| h.rpc_method().as_deref() == Some("notifications/initialized")
                && h.status == Some(202)
        ),
        "{wire:#?}"
    );
    assert!(saw(&|h| h.method == "GET" && sse(h)), "{wire:#?}");
    for m in [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ] {
        assert!(
            methods.iter().any(|x| x.ends_with(&format!(" {m}"))),
            "{m} never arrived: {methods:?}"
        );
    }
    let want_auth = format!("Bearer {UPSTREAM_SECRET}");
    for h in &hits {
        assert!(
            !format!("{h:?}").contains(&token),
            "the agent's token reached the MCP server: {h:?}"
        );
        assert_eq!(h.header("authorization"), [want_auth.as_str()], "{h:?}");
        assert_eq!(h.header("firebreak-agent"), ["deploy-bot"], "{h:?}");
        assert_eq!(h.header("firebreak-request-id").len(), 1, "{h:?}");
        assert!(h.uri.starts_with("/mcp"), "{h:?}");
        let st = h.status.unwrap_or(0);
        assert!((200..300).contains(&st), "server answered {st}: {h:?}");
    }
    // Every request after initialize carried the one session id the server gave (its answer
    // header made it back to the client through the gateway).
    let later: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.rpc_method().as_deref() != Some("initialize"))
        .collect();
    assert!(
        later.iter().all(|h| h.header("mcp-session-id").len() == 1),
        "{hits:#?}"
    );
    let sessions: std::collections::BTreeSet<&str> = later
        .iter()
        .flat_map(|h| h.header("mcp-session-id"))
        .collect();
    assert_eq!(sessions.len(), 1, "{hits:#?}");
    // The recording upstream behind `/mcp` saw nothing: everything went to the rmcp route.
    assert_eq!(s.upstream.count(), 0);
}
