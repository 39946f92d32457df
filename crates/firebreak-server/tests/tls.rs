//! The broker's listener with `[server] tls_cert`/`tls_key`: a rustls client that trusts the
//! certificate gets a TLS 1.3 connection and a normal answer; a plain-HTTP client does not.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

mod common;

use std::sync::Arc;

use firebreak_server::{Broker, Config};
use firebreak_testkit::{ManualClock, SystemClock, TestIssuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn tls_listener_serves_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let issuer = TestIssuer::start(firebreak_token::Algorithm::Es256).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = dir.path().join("data");
    let text = common::config_text(
        "https://localhost",
        &issuer.url,
        &data.display().to_string(),
        "",
    )
    .replacen(
        "[server]\n",
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
        1,
    );
    let path = dir.path().join("firebreak.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let clock = ManualClock::new(firebreak_testkit::Clock::now(&SystemClock));
    let store = Arc::new(common::open_store(&data, &clock));
    let broker = Broker::new(config, store, Arc::new(clock)).await.unwrap();
    tokio::spawn(firebreak_server::serve(
        broker,
        listener,
        std::future::pending(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"keys\""));

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}
