//! MCP over Streamable HTTP (JSON-RPC 2.0) as the gateway sees it: one message per POST body,
//! batches refused, `tools/call` named for the decision, `tools/list` answers filtered.
//!
//! INVARIANT (decide-on-what-is-forwarded): the gateway forwards the JSON it parsed, re-encoded,
//! never the raw bytes, so a duplicate member or odd encoding cannot make the upstream read a
//! different method or tool name than the one the PDP decided on (Z4).

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// JSON-RPC error codes used here.
pub const PARSE_ERROR: i64 = -32700;
/// Invalid request (also: batches, which MCP 2025-06-18 removed).
pub const INVALID_REQUEST: i64 = -32600;
/// Invalid params: a tool that is unknown or not allowed (one answer for both).
pub const INVALID_PARAMS: i64 = -32602;

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `id`, absent for a notification.
    pub id: Option<Value>,
    /// `method`, absent for a response the client sends back (to a server request).
    pub method: Option<String>,
    /// For `tools/call`: `params.name`.
    pub tool: Option<String>,
    /// The whole message, to forward re-encoded.
    pub body: Map<String, Value>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Not JSON.
    Parse,
    /// A JSON array (batch).
    Batch,
    /// Not a JSON-RPC 2.0 message (with the id to answer to, if one was readable).
    Invalid(Option<Value>),
}

/// Parses one POSTed message.
///
/// # Errors
/// A [`Refused`].
pub fn parse(body: &[u8]) -> Result<Message, Refused> {
    let v: Value = serde_json::from_slice(body).map_err(|_| Refused::Parse)?;
    let obj = match v {
        Value::Object(o) => o,
        Value::Array(_) => return Err(Refused::Batch),
        _ => return Err(Refused::Invalid(None)),
    };
    let id = obj.get("id").cloned();
    if !matches!(id, None | Some(Value::String(_) | Value::Number(_))) {
        return Err(Refused::Invalid(None));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Refused::Invalid(id));
    }
    let method = match obj.get("method") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(Refused::Invalid(id)),
    };
    if method.is_none() && !(obj.contains_key("result") || obj.contains_key("error")) {
        return Err(Refused::Invalid(id));
    }
    let tool = if method.as_deref() == Some("tools/call") {
        match obj.get("params").and_then(|p| p.get("name")) {
            Some(Value::String(n)) => Some(n.clone()),
            _ => return Err(Refused::Invalid(id)),
        }
    } else {
        None
    };
    Ok(Message {
        id,
        method,
        tool,
        body: obj,
    })
}

/// A JSON-RPC error answer.
pub fn error(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Bytes {
    let mut err = json!({ "code": code, "message": message });
    if let (Some(d), Some(o)) = (data, err.as_object_mut()) {
        o.insert("data".into(), d);
    }
    Bytes::from(
        json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err })
            .to_string(),
    )
}

/// Filters a `tools/list` result in one JSON-RPC message; `None` when it is not one.
fn filter_message(msg: &mut Value, keep: &dyn Fn(&str) -> bool) -> bool {
    let Some(tools) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    // A tool without a string name cannot be decided on: it goes.
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(keep));
    true
}

/// Filters a `tools/list` answer body, JSON or SSE. Bodies that are neither pass unchanged;
/// an SSE event whose data is not JSON passes unchanged (it cannot be a tools list).
pub fn filter_tools_list(body: &[u8], sse: bool, keep: &dyn Fn(&str) -> bool) -> Vec<u8> {
    if !sse {
        return match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                filter_message(&mut v, keep);
                v.to_string().into_bytes()
            }
            Err(_) => body.to_vec(),
        };
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    let mut out = String::with_capacity(text.len());
    for event in text.split_inclusive("\n\n") {
        let mut data = String::new();
        let mut other = Vec::new();
        for line in event.lines() {
            match line.strip_prefix("data:") {
                Some(d) => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
                None if !line.is_empty() => other.push(line),
                None => {}
            }
        }
        let mut parsed = serde_json::from_str::<Value>(&data).ok();
        let filtered = parsed.as_mut().is_some_and(|v| filter_message(v, keep));
        match parsed.filter(|_| filtered) {
            Some(v) => {
                for l in other {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str("data: ");
                out.push_str(&v.to_string());
                out.push_str("\n\n");
            }
            _ => out.push_str(event),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;

    #[test]
    fn z4_method_and_tool_are_what_is_forwarded() {
        // A duplicate member: serde keeps one; the forwarded body is the re-encoded one.
        let m = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        )
        .unwrap();
        let forwarded = Value::Object(m.body.clone());
        assert_eq!(forwarded["params"]["name"].as_str(), m.tool.as_deref());
        assert_eq!(parse(b"[{}]"), Err(Refused::Batch));
        assert_eq!(parse(b"{nope"), Err(Refused::Parse));
        assert_eq!(
            parse(br#"{"jsonrpc":"1.0","id":3,"method":"x"}"#),
            Err(Refused::Invalid(Some(json!(3))))
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            Err(Refused::Invalid(None))
        );
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#),
            Err(Refused::Invalid(_))
        ));
        let n = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!((n.id, n.tool), (None, None));
    }

    #[test]
    fn tools_lists_are_filtered_in_json_and_sse() {
        let keep = |n: &str| n == "echo";
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"rm"},{"x":1}]}}"#;
        let v: Value = serde_json::from_slice(&filter_tools_list(body, false, &keep)).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "echo"}]));
        let sse = "event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"rm\"},{\"name\":\"echo\"}]}}\n\n";
        let out = String::from_utf8(filter_tools_list(sse.as_bytes(), true, &keep)).unwrap();
        assert!(out.contains("event: message\nid: 7\n"));
        assert!(out.contains("echo") && !out.contains("rm"), "{out}");
    }
}
