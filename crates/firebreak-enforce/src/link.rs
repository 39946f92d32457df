//! The enforcement point's HTTP link to the broker: client authentication (RFC 6749 §2.3.1
//! Basic), bounded bodies, timeouts, `https` unless the broker is on loopback or the operator
//! said `danger_allow_http`. The event stream has its own long-lived request (`stream.rs`).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::ConfigBuilderExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::EnforceError;

pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest broker answer read (a policy bundle with thousands of policies fits).
const MAX_BODY: usize = 16 << 20;

/// Builds the client every broker call uses: rustls on aws-lc-rs with the web PKI roots, HTTP/1.
pub(crate) fn https_client(allow_http: bool) -> Result<HttpsClient, EnforceError> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnforceError::Config(format!("TLS: {e}")))?
        .with_webpki_roots()
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let connector = if allow_http {
        builder.https_or_http().enable_http1().build()
    } else {
        builder.https_only().enable_http1().build()
    };
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Whether `url` names a loopback host (where plain HTTP cannot be intercepted off-machine).
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where the broker is and how to authenticate to it.
#[derive(Clone)]
pub struct BrokerLink {
    base: String,
    auth: HeaderValue,
    client: HttpsClient,
    timeout: Duration,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential.
        f.debug_struct("BrokerLink")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A broker answer.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// `ETag`, if any.
    pub etag: Option<String>,
    /// The body (bounded).
    pub body: Bytes,
}

impl BrokerLink {
    /// A link to `base` (e.g. `https://firebreak.acme.example`), authenticating as
    /// `client_id`/`secret`.
    ///
    /// # Errors
    /// `Config` for a non-https URL off loopback without `allow_http`, or a bad URL.
    pub fn new(
        base: &str,
        client_id: &str,
        secret: &str,
        danger_allow_http: bool,
    ) -> Result<Self, EnforceError> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| EnforceError::Config(format!("broker URL {base:?} does not parse")))?;
        let allow_http = match uri.scheme_str() {
            Some("https") => false,
            Some("http") if danger_allow_http || is_loopback_url(&base) => true,
            Some("http") => {
                return Err(EnforceError::Config(format!(
                    "broker URL {base:?} is plain http off loopback; use https or set danger_allow_http"
                )));
            }
            _ => {
                return Err(EnforceError::Config(format!(
                    "broker URL {base:?} must be http(s)"
                )));
            }
        };
        // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
        let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
        let auth = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
        .map_err(|_| EnforceError::Config("client credentials are not header-safe".into()))?;
        Ok(Self {
            base,
            auth,
            client: https_client(allow_http)?,
            timeout: Duration::from_secs(5),
        })
    }

    /// The broker's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn client(&self) -> &HttpsClient {
        &self.client
    }

    pub(crate) fn auth(&self) -> &HeaderValue {
        &self.auth
    }

    /// One request with a JSON (or empty) body; the answer read to its end within the timeout.
    ///
    /// # Errors
    /// `Broker` when the broker cannot be reached, times out or sends more than the bound.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_none_match: Option<&str>,
    ) -> Result<Answer, EnforceError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::ACCEPT, "application/json");
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| EnforceError::Broker(format!("request: {e}")))?;
        self.round_trip(req, path).await
    }

    /// One request with a body of type `content_type` (the audit ingest's JSONL, for one); the
    /// answer read to its end within the timeout, whatever its status.
    ///
    /// # Errors
    /// `Broker` when the broker cannot be reached, times out or sends more than the bound.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer, EnforceError> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| EnforceError::Broker(format!("request: {e}")))?;
        self.round_trip(req, path).await
    }

    async fn round_trip(
        &self,
        req: Request<Full<Bytes>>,
        path: &str,
    ) -> Result<Answer, EnforceError> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| EnforceError::Broker(format!("{path}: {e}")))?;
            let status = resp.status();
            let etag = resp
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| EnforceError::Broker(format!("{path}: body: {e}")))?
                .to_bytes();
            Ok(Answer { status, etag, body })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| EnforceError::Broker(format!("{path}: timed out")))?
    }

    /// A JSON answer with a 2xx status.
    ///
    /// # Errors
    /// `Broker` for any other status or a body that is not JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EnforceError> {
        let a = self.call(method, path, body, None).await?;
        if !a.status.is_success() {
            return Err(EnforceError::Broker(format!("{path}: HTTP {}", a.status)));
        }
        serde_json::from_slice(&a.body)
            .map_err(|e| EnforceError::Broker(format!("{path}: not JSON: {e}")))
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://127.0.0.1:8440"));
        assert!(is_loopback_url("http://[::1]:8440"));
        assert!(is_loopback_url("http://localhost:1"));
        assert!(!is_loopback_url("http://10.0.0.1"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.example"));
    }

    #[test]
    fn plain_http_off_loopback_is_refused() {
        assert!(BrokerLink::new("http://broker.example", "gw", "s", false).is_err());
        assert!(BrokerLink::new("http://broker.example", "gw", "s", true).is_ok());
        assert!(BrokerLink::new("https://broker.example", "gw", "s", false).is_ok());
        assert!(BrokerLink::new("ftp://broker.example", "gw", "s", true).is_err());
    }

    #[test]
    fn credentials_are_form_encoded() {
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
