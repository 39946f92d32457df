//! The `/v1/events` client: one long-lived SSE request, resumed with `Last-Event-ID` after any
//! break, applied to the shared [`FeedState`]. Silence for `stale_after` (no frame at all) drops
//! the connection and reconnects, so a half-open TCP connection cannot keep a gateway "fresh";
//! freshness itself is judged by the heartbeat time in `FeedState` (fail closed).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Map, Value};

use crate::Enforcer;

/// Longest SSE line accepted; the broker's are far shorter (a snapshot is one line, so this
/// also bounds the snapshot).
const MAX_LINE: usize = 64 << 20;

/// Parses SSE frames out of a byte stream (WHATWG HTML §9.2.6, the subset the broker sends:
/// `id`, `event`, `data`, comments).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: BytesMut,
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// One dispatched message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseParser {
    /// Feeds bytes; returns the messages completed by them. `Err` when a line is too long.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseMessage>, &'static str> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(pos + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(SseMessage {
                        id: self.id.take(),
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => self.id = Some(value.to_owned()),
                "event" => self.event = Some(value.to_owned()),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err("line too long");
        }
        Ok(out)
    }
}

/// Runs the stream forever (until the enforcer is dropped).
pub(crate) async fn run(e: std::sync::Weak<Enforcer>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(enf) = e.upgrade() else { return };
        match connect_once(&enf).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(why) => {
                tracing::warn!(
                    broker = enf.link.base(),
                    error = why,
                    "event stream broken; reconnecting"
                );
            }
        }
        let stale = enf.stale_after;
        drop(enf);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1)).min(stale);
    }
}

async fn connect_once(enf: &Arc<Enforcer>) -> Result<(), String> {
    let last = {
        let s = enf.state();
        // Resume only from a state that came from a snapshot; else ask for one.
        s.last_beat.map(|_| s.last_seq)
    };
    let mut req = Request::builder()
        .uri(format!("{}/v1/events", enf.link.base()))
        .header(header::AUTHORIZATION, enf.link.auth().clone())
        .header(header::ACCEPT, "text/event-stream");
    if let Some(last) = last {
        req = req.header("last-event-id", last.to_string());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(enf.stale_after, enf.link.client().request(req))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut parser = SseParser::default();
    loop {
        let frame = tokio::time::timeout(enf.stale_after, body.frame())
            .await
            .map_err(|_| "no frame for stale_after".to_owned())?;
        let Some(frame) = frame else {
            return Err("stream ended".into());
        };
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for m in parser.feed(&data).map_err(str::to_owned)? {
            enf.on_message(&m.event, m.id.as_deref(), &m.data);
        }
    }
}

/// Parses a message's JSON object.
pub(crate) fn object(data: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(data) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;

    #[test]
    fn frames_split_across_chunks_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.feed(b"id: 4\r\nevent: rev").unwrap().is_empty());
        let m = p.feed(b"oke\r\ndata: {\"a\":1}\r\n\r\n: comment\n\nevent: heartbeat\ndata: x\ndata: y\n\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            SseMessage {
                id: Some("4".into()),
                event: "revoke".into(),
                data: "{\"a\":1}".into()
            }
        );
        assert_eq!(m[1].data, "x\ny");
        assert_eq!(m[1].id, None);
    }

    #[test]
    fn bad_bytes_are_an_error_not_a_panic() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: \xff\xfe\n").is_err());
    }
}
