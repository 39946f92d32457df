//! G03: request smuggling at the gateway, over raw TCP so that the bytes are exactly the
//! hostile ones. Every case is answered once and the connection is closed: 400 with nothing
//! upstream, except CL together with TE, which hyper reads as chunked and then closes (RFC 9112
//! §6.1): that one well-framed request may go upstream, never the bytes smuggled behind it.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

#[allow(
    unused_imports,
    reason = "the shared harness re-exports more than this file uses"
)]
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `bytes` on a fresh connection; returns everything the gateway sent back before it
/// closed the connection. Fails the test if the gateway keeps it open for 5 s.
async fn exchange(s: &Stack, bytes: &[u8]) -> String {
    let addr = s.url.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "connection left open after: {:?}\nreply so far: {}",
        String::from_utf8_lossy(bytes),
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn host(s: &Stack) -> String {
    s.url.strip_prefix("http://").unwrap().to_owned()
}

/// The number of HTTP responses in `reply`.
fn responses(reply: &str) -> usize {
    reply.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn g03_smuggling_forms_get_400_and_a_closed_connection() {
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    let h = host(&s);
    // Each case ends with a second, smuggled request for a path the agent may not reach; if the
    // gateway ever read it as a request, the upstream would see /api/b.
    let smuggled =
        format!("GET /tools/b HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {t}\r\n\r\n");
    let head = format!("GET /tools/a HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {t}\r\n");
    let cases = [
        (
            "CL and TE together",
            format!(
                "{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE and CL together (other order)",
            format!(
                "{head}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two differing Content-Length",
            format!("{head}Content-Length: 0\r\nContent-Length: 10\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length list",
            format!("{head}Content-Length: 0, 0\r\n\r\n{smuggled}"),
        ),
        (
            "chunked, identity",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "xchunked",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunked twice",
            format!(
                "{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "space before the colon",
            format!("{head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            format!("{head}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "bad chunk size",
            format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunk size overflow",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bare LF line ends in the chunked body",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{smuggled}"),
        ),
    ];
    for (what, bytes) in cases {
        let before = s.upstream.count();
        let reply = exchange(&s, bytes.as_bytes()).await;
        let status = reply.lines().next().unwrap_or("(nothing)");
        // CL with TE: hyper drops the Content-Length, reads the body as chunked and closes the
        // connection after answering (RFC 9112 §6.1 allows exactly this), so the handler never
        // sees the two together. The one well-framed request goes upstream, re-framed with its
        // own length; the bytes after it are never read as a request.
        let cl_te = what.starts_with("CL and TE") || what.starts_with("TE and CL");
        if cl_te {
            assert!(status.starts_with("HTTP/1.1 200"), "{what}: {status}");
            assert_eq!(s.upstream.count(), before + 1, "{what}");
            let r = &s.upstream.seen()[before];
            assert_eq!(
                (r.uri.as_str(), r.body.as_slice()),
                ("/api/a", b"".as_slice()),
                "{what}"
            );
            assert!(r.header("transfer-encoding").is_empty(), "{what}");
        } else {
            assert!(status.starts_with("HTTP/1.1 400"), "{what}: {status}");
            assert_eq!(
                s.upstream.count(),
                before,
                "{what}: {:?}",
                s.upstream.seen()
            );
        }
        assert_eq!(
            responses(&reply),
            1,
            "{what}: the smuggled request was answered: {reply}"
        );
        assert!(
            s.upstream.seen().iter().all(|r| r.uri != "/api/b"),
            "{what}: /tools/b reached the upstream"
        );
    }
}

#[tokio::test]
async fn g03_well_framed_requests_still_pass_and_keep_alive_is_kept() {
    // The refusals above are about framing, not about bodies or pipelining: a chunked body, a
    // Content-Length body and two pipelined requests all pass, each upstream once.
    let s = Stack::start().await;
    let t = s.h.token(TOOLS, None).await;
    let h = host(&s);
    let addr = s.url.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /tools/a HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         GET /tools/a/x HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {t}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&out);
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[1].body, b"abc");
    assert!(
        seen.iter()
            .all(|r| r.header("transfer-encoding").len() <= 1)
    );
}

#[tokio::test]
async fn g03_http2_is_not_spoken_so_its_framing_cannot_be_confused() {
    // The gateway serves HTTP/1.1 only. An HTTP/2 prior-knowledge preface (where
    // `transfer-encoding` or a content-length mismatch would be the h2 forms of G03) is refused,
    // and nothing reaches the upstream.
    let s = Stack::start().await;
    let reply = exchange(&s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
        "{reply}"
    );
    assert_eq!(s.upstream.count(), 0);
}
