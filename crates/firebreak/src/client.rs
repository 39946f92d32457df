//! A small HTTP client for talking to a broker (CLI commands, the demo). One connection pool,
//! rustls with aws-lc-rs and the webpki roots for https; plain http for loopback.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP response, read whole (bounded).
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request failed before an answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection, TLS or protocol failure.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The URL or a header is malformed.
    #[error("bad request to {0}")]
    Build(String),
    /// The answer was larger than 4 MiB.
    #[error("response from {0} too large")]
    TooLarge(String),
}

/// The client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// A client with the webpki roots.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub fn new() -> Result<Self, ClientError> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| ClientError::Build(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Sends one request.
    ///
    /// # Errors
    /// A [`ClientError`] when no answer arrives.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Reply, ClientError> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let body = match body {
            Some((ct, b)) => {
                req = req.header(header::CONTENT_TYPE, ct);
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|_| ClientError::Build(url.to_owned()))?;
        let fut = self.inner.request(req);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), fut)
            .await
            .map_err(|_| ClientError::Transport {
                url: url.to_owned(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Transport {
                url: url.to_owned(),
                reason: error_chain(&e),
            })?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), 4 << 20);
        let body = limited
            .collect()
            .await
            .map_err(|_| ClientError::TooLarge(url.to_owned()))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// `GET url`.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Reply, ClientError> {
        let h: Vec<(&str, String)> = bearer
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        self.send(Method::GET, url, &h, None).await
    }

    /// `POST url` with a form body.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn post_form(
        &self,
        url: &str,
        headers: &[(&str, String)],
        form: String,
    ) -> Result<Reply, ClientError> {
        self.send(
            Method::POST,
            url,
            headers,
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        )
        .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
