//! Test fixtures shared by the workspace's tests: a scriptable OIDC test issuer that signs
//! arbitrary headers and payloads and serves its JWKS on loopback, a counting TCP listener, and
//! a minimal HTTP client. A dev-dependency of any crate, a normal dependency of none.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test fixtures: a broken fixture should stop the test loudly"
)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use bytes::Bytes;
use firebreak_token::{Algorithm, SigningKey, random_b64url};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub use firebreak_core::{Clock, ManualClock, SystemClock, UnixTime};

/// How the test issuer's JWKS endpoint behaves.
#[derive(Debug, Clone)]
pub enum JwksFault {
    /// Serve the current JWKS.
    None,
    /// Answer 500.
    ServerError,
    /// Answer with this body.
    Body(String),
}

#[derive(Debug)]
struct IssuerState {
    url: Mutex<String>,
    jwks: Mutex<Value>,
    fault: Mutex<JwksFault>,
    jwks_fetches: AtomicU64,
}

/// A loopback OIDC issuer for tests.
#[derive(Debug, Clone)]
pub struct TestIssuer {
    /// Its `iss` (`http://127.0.0.1:PORT`).
    pub url: String,
    key: Arc<SigningKey>,
    state: Arc<IssuerState>,
}

async fn discovery(State(s): State<Arc<IssuerState>>) -> Response {
    let url = s.url.lock().unwrap().clone();
    axum::Json(json!({ "issuer": url, "jwks_uri": format!("{url}/jwks.json") })).into_response()
}

async fn jwks(State(s): State<Arc<IssuerState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let fault = s.fault.lock().unwrap().clone();
    match fault {
        JwksFault::None => axum::Json(s.jwks.lock().unwrap().clone()).into_response(),
        JwksFault::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        JwksFault::Body(b) => ([("content-type", "application/json")], b).into_response(),
    }
}

impl TestIssuer {
    /// Starts an issuer with a fresh key (`EdDsa` or `Es256`) on 127.0.0.1:0.
    pub async fn start(alg: Algorithm) -> Self {
        let key = SigningKey::generate(alg).unwrap();
        let state = Arc::new(IssuerState {
            url: Mutex::new(String::new()),
            jwks: Mutex::new(json!({ "keys": [key.public_key().to_jwk()] })),
            fault: Mutex::new(JwksFault::None),
            jwks_fetches: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.url.lock().unwrap() = url.clone();
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            key: Arc::new(key),
            state,
        }
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Replaces the served JWKS.
    pub fn set_jwks(&self, v: Value) {
        *self.state.jwks.lock().unwrap() = v;
    }

    /// Scripts the JWKS endpoint.
    pub fn set_fault(&self, f: JwksFault) {
        *self.state.fault.lock().unwrap() = f;
    }

    /// GitHub Actions-style claims for `repository` on `git_ref`, valid at `now` for 5 minutes.
    pub fn github_claims(
        &self,
        aud: &str,
        repository: &str,
        git_ref: &str,
        now: UnixTime,
    ) -> Value {
        let t = now.as_secs();
        json!({
            "iss": self.url,
            "aud": aud,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository,
            "repository_id": "4242",
            "repository_owner": repository.split('/').next().unwrap_or(""),
            "ref": git_ref,
            "environment": "production",
            "event_name": "push",
            "job_workflow_ref": format!("{repository}/.github/workflows/ci.yml@{git_ref}"),
            "runner_environment": "github-hosted",
            "jti": random_b64url(12),
            "iat": t,
            "nbf": t,
            "exp": t + 300,
        })
    }

    /// Signs `claims` with the standard header `{alg, typ: JWT, kid}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign_jwt("JWT", claims).unwrap()
    }

    /// The standard header, for tests that modify it.
    pub fn header(&self) -> Value {
        json!({ "alg": self.key.alg().as_str(), "typ": "JWT", "kid": self.key.kid() })
    }

    /// Signs arbitrary header and payload JSON *text* (duplicate members, odd spacing and
    /// all) with the issuer's key: the signature is over exactly these bytes.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!("{}.{}", b.encode(header), b.encode(payload));
        format!("{input}.{}", b.encode(self.sign_bytes(input.as_bytes())))
    }

    /// A raw signature over `msg` with the issuer's key.
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        let der = self.key.pkcs8_der();
        match self.key.alg() {
            Algorithm::EdDsa => {
                let kp = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der).unwrap();
                kp.sign(msg).as_ref().to_vec()
            }
            Algorithm::Es256 | Algorithm::Rs256 => {
                use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).unwrap();
                kp.sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }
        }
    }
}

/// A loopback listener that counts connections and never answers (T05: a `jku` target).
#[derive(Debug, Clone)]
pub struct CountingListener {
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    count: Arc<AtomicU64>,
}

impl CountingListener {
    /// Starts it.
    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Self { addr, count }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A plain-HTTP client for loopback tests.
#[derive(Debug, Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl Default for HttpClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl HttpClient {
    /// Sends a request.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .0
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POSTs a form body.
    pub async fn post_form(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        self.send("POST", url, &h, body.to_owned()).await
    }

    /// GETs.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", url, headers, Bytes::new()).await
    }
}
