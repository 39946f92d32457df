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

/// A TCP listener that writes `banner` to every connection and closes it; returns `host:port`.
pub async fn start_tcp_banner(banner: &'static str) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _ = s.write_all(banner.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// `CONNECT dest` through the egress proxy with `token`; returns the proxy's status and, on
/// 200, what the tunnel delivered.
pub async fn connect_via(
    proxy: std::net::SocketAddr,
    dest: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(proxy).await?;
        s.write_all(
            format!(
                "CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nProxy-Authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::other("egress proxy did not answer in 10 s"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
