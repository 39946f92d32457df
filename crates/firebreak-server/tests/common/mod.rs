//! A real broker on loopback with a test issuer, for the integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness: each test binary uses a different subset, and a failed step should stop the test loudly"
)]

use std::sync::Arc;

use firebreak_core::{Clock, ManualClock, SystemClock, UnixTime};
use firebreak_server::form::encode_pairs;
use firebreak_server::{Broker, Config};
use firebreak_store::SqliteStore;
use firebreak_testkit::{HttpClient, Reply, TestIssuer};
use firebreak_token::{Algorithm, sha256_hex};
use serde_json::Value;

pub const TOOLS: &str = "https://gw.acme.example/tools";
pub const STAGING_TOOLS: &str = "https://gw.acme.example/staging-tools";
pub const GLOBEX_TOOLS: &str = "https://gw.globex.example/tools";
pub const CLIENT_SECRET: &str = "s3cret-introspector";
pub const OTHER_SECRET: &str = "s3cret-other";
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

pub struct Harness {
    pub url: String,
    pub issuer: TestIssuer,
    pub clock: ManualClock,
    pub http: HttpClient,
    pub admin: String,
    pub broker: Arc<Broker>,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn config_text(url: &str, issuer: &str, data_dir: &str, extra: &str) -> String {
    format!(
        r#"[server]
public_url = "{url}"
data_dir = "{data_dir}"

[limits]
leeway = "60s"

[[issuer]]
id = "gh"
url = "{issuer}"
audience = "{url}"
profile = "github-actions"
algorithms = ["ES256", "EdDSA"]
danger_allow_http = true

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy acme/api"
expires = 2099-01-01
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "gh", claims = {{ repository = "acme/api", repository_id = "4242", ref = "refs/heads/main", environment = "production" }}, events = ["push"] }}
grants = [{{ target = "tools", scopes = ["read", "write"] }}]

[[agent]]
id = "other-bot"
owner = "other@acme.example"
purpose = "other"
expires = 2099-01-01
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "gh", claims = {{ repository = "acme/other", repository_id = "4343", ref = "refs/heads/main", environment = "production" }}, events = ["push"] }}
grants = [{{ target = "tools", scopes = ["read"] }}]

[[target]]
id = "tools"
audience = "{TOOLS}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[target]]
id = "staging-tools"
audience = "{STAGING_TOOLS}"
kind = "http"
tenant = "acme"
environment = "staging"
tier = "write"
max_ttl = "10m"

[[target]]
id = "globex-tools"
audience = "{GLOBEX_TOOLS}"
kind = "http"
tenant = "globex"
environment = "production"
tier = "write"

[[client]]
id = "rs-tools"
secret_sha256 = "{h1}"
roles = ["introspect"]
audiences = ["{TOOLS}"]

[[client]]
id = "rs-other"
secret_sha256 = "{h2}"
roles = ["introspect", "revoke"]
audiences = ["https://elsewhere.example/"]
{extra}
"#,
        h1 = sha256_hex(CLIENT_SECRET.as_bytes()),
        h2 = sha256_hex(OTHER_SECRET.as_bytes()),
    )
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with("", None, None).await
    }

    /// Starts a broker; `dir`/`issuer` reuse a previous harness's data and issuer (restart).
    pub async fn start_with(
        extra: &str,
        dir: Option<Arc<tempfile::TempDir>>,
        issuer: Option<TestIssuer>,
    ) -> Self {
        let issuer = match issuer {
            Some(i) => i,
            None => TestIssuer::start(Algorithm::Es256).await,
        };
        let dir = dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = dir.path().join("data");
        let text = config_text(&url, &issuer.url, &data.display().to_string(), extra);
        let path = dir.path().join("firebreak.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let clock = ManualClock::new(SystemClock.now());
        let store = Arc::new(open_store(&data, &clock));
        let broker = Broker::new(config, store, Arc::new(clock.clone()))
            .await
            .unwrap();
        let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(firebreak_server::serve(
            Arc::clone(&broker),
            listener,
            async {
                let _ = rx.await;
            },
        ));
        Self {
            url,
            issuer,
            clock,
            http: HttpClient::default(),
            admin,
            broker,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> (Arc<tempfile::TempDir>, TestIssuer) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        (Arc::clone(&self.dir), self.issuer.clone())
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Good GitHub claims for deploy-bot.
    pub fn claims(&self) -> Value {
        self.issuer
            .github_claims(&self.url, "acme/api", "refs/heads/main", self.now())
    }

    pub fn subject(&self) -> String {
        self.issuer.sign(&self.claims())
    }

    pub async fn token_raw(&self, body: &str) -> Reply {
        self.http
            .post_form(&format!("{}/oauth2/token", self.url), &[], body)
            .await
    }

    pub async fn exchange(
        &self,
        subject: &str,
        ty: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> Reply {
        let mut pairs = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ty),
            ("audience", audience),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.token_raw(&encode_pairs(pairs)).await
    }

    /// A fresh tool token for deploy-bot.
    pub async fn tool_token(&self, scope: Option<&str>) -> String {
        let r = self.exchange(&self.subject(), JWT, TOOLS, scope).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn introspect(&self, token: &str, id: &str, secret: &str) -> Reply {
        let auth = basic(id, secret);
        self.http
            .post_form(
                &format!("{}/oauth2/introspect", self.url),
                &[("authorization", &auth)],
                &encode_pairs([("token", token)]),
            )
            .await
    }

    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        self.http.get(&format!("{}{path}", self.url), &h).await
    }

    pub async fn admin_delete(&self, path: &str) -> Reply {
        let auth = format!("Bearer {}", self.admin);
        self.http
            .send(
                "DELETE",
                &format!("{}{path}", self.url),
                &[("authorization", &auth)],
                Vec::new(),
            )
            .await
    }
}

/// The SQLite store with its audit writer, as `serve` opens it.
pub fn open_store(data: &std::path::Path, clock: &ManualClock) -> SqliteStore {
    let key = firebreak_server::audit::load_or_create_key(data).unwrap();
    let settings = firebreak_store::AuditSettings {
        chain: firebreak_store::BROKER_CHAIN.to_owned(),
        key,
        checkpoint_every: 100,
        checkpoint_interval_ms: 10_000,
        clock: Arc::new(clock.clone()),
        queue: 8192,
    };
    SqliteStore::open(&data.join("firebreak.db"), settings).unwrap()
}

pub fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// Asserts an OAuth error with this status, code and reason.
#[track_caller]
pub fn assert_oauth(r: &Reply, status: u16, error: &str, reason: &str) {
    let v = r.json();
    assert_eq!(
        (
            r.status,
            v["error"].as_str(),
            v["error_description"].as_str()
        ),
        (status, Some(error), Some(reason)),
        "body: {v}"
    );
}

/// Claims of a JWT without verifying (test use).
pub fn claims_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}
