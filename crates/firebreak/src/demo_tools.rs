//! The demo's sample tool server: a tiny MCP server (Streamable HTTP, JSON answers) behind the
//! gateway, offering three tools. It records the `Authorization` it receives and the tools
//! called, so the demo can show the agent's token never arrived and a denied call never did.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the tool server saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// `Authorization` values received.
    pub authorizations: Vec<String>,
    /// Tools called.
    pub calls: Vec<String>,
}

/// The demo tools.
pub const TOOLS: [&str; 3] = ["list_issues", "read_file", "delete_repo"];

async fn answer(seen: Arc<Mutex<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut s = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
            s.authorizations.push(a.to_owned());
        }
        if msg.get("method").and_then(Value::as_str) == Some("tools/call")
            && let Some(name) = msg.pointer("/params/name").and_then(Value::as_str)
        {
            s.calls.push(name.to_owned());
        }
    }
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let result = match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "firebreak-demo-tools", "version": "1" }
        }),
        Some("tools/list") => json!({ "tools": TOOLS.iter().map(|t| json!({
            "name": t, "description": format!("demo tool {t}"), "inputSchema": { "type": "object" }
        })).collect::<Vec<_>>() }),
        Some("tools/call") => json!({ "content": [{ "type": "text", "text": format!(
            "{} done", msg.pointer("/params/name").and_then(Value::as_str).unwrap_or("?")
        ) }] }),
        // Notifications get 202 with no body (MCP Streamable HTTP).
        _ => return StatusCode::ACCEPTED.into_response(),
    };
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

/// Starts the tool server on loopback; returns its base URL and what it saw.
pub async fn start() -> std::io::Result<(String, Arc<Mutex<Seen>>)> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = Arc::clone(&seen);
    let app = Router::new().route(
        "/mcp",
        axum::routing::post(move |h: HeaderMap, b: Bytes| answer(Arc::clone(&s), h, b)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}
