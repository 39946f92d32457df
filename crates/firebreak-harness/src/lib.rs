//! Test-only: a real broker on loopback for the enforcement points' integration tests (gateway,
//! egress, enforce), with a test issuer, a manual clock, SQLite in a temp dir, targets of every
//! kind and a `stream` client. Never a dependency of the product.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "test harness: a failed step should stop the test loudly"
)]

use std::sync::Arc;

use firebreak_core::{Clock, ManualClock, SystemClock, UnixTime};
use firebreak_server::form::encode_pairs;
use firebreak_server::{Broker, Config};
use firebreak_store::SqliteStore;
pub use firebreak_testkit::{HttpClient, Reply, TestIssuer};
use firebreak_token::{Algorithm, sha256_hex};
use serde_json::Value;

pub const TOOLS: &str = "https://gw.acme.example/tools";
pub const MCP: &str = "https://gw.acme.example/mcp";
pub const EGRESS: &str = "https://egress.acme.example/";
pub const GW_CLIENT: &str = "gw-1";
pub const GW_SECRET: &str = "s3cret-gateway";
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// What a test adds: config text appended at the end, and policy files for `[policy] dir`.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    pub extra: String,
    pub policies: Vec<(String, String)>,
}

pub struct BrokerHarness {
    pub url: String,
    pub issuer: TestIssuer,
    pub clock: ManualClock,
    pub http: HttpClient,
    pub admin: String,
    pub broker: Arc<Broker>,
    pub store: Arc<SqliteStore>,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn config_text(
    url: &str,
    issuer: &str,
    data_dir: &str,
    policy_dir: &str,
    extra: &str,
) -> String {
    format!(
        r#"[server]
public_url = "{url}"
data_dir = "{data_dir}"

[limits]
leeway = "60s"

[policy]
dir = "{policy_dir}"

[elevation]
reason_codes = ["incident"]
max_duration = "1h"

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
grants = [{{ target = "tools", scopes = ["read", "write"] }}, {{ target = "mcp-tools", scopes = [] }}, {{ target = "egress", scopes = [] }}]

[[agent]]
id = "other-bot"
owner = "other@acme.example"
purpose = "other"
expires = 2099-01-01
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "gh", claims = {{ repository = "acme/other", repository_id = "4343", ref = "refs/heads/main", environment = "production" }}, events = ["push"] }}
grants = [{{ target = "tools", scopes = ["read"] }}, {{ target = "mcp-tools", scopes = [] }}, {{ target = "egress", scopes = [] }}]

[[target]]
id = "tools"
audience = "{TOOLS}"
kind = "http"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[target]]
id = "mcp-tools"
audience = "{MCP}"
kind = "mcp"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[target]]
id = "egress"
audience = "{EGRESS}"
kind = "egress"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[client]]
id = "{GW_CLIENT}"
secret_sha256 = "{h}"
roles = ["evaluate", "stream"]
{extra}
"#,
        h = sha256_hex(GW_SECRET.as_bytes()),
    )
}

impl BrokerHarness {
    pub async fn start(setup: Setup) -> Self {
        let issuer = TestIssuer::start(Algorithm::Es256).await;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(setup, dir, issuer, None).await
    }

    /// Starts a broker on `dir` (a restart when it holds a previous broker's data), on the
    /// given address when one is passed (to come back where a previous broker was).
    pub async fn start_in(
        setup: Setup,
        dir: Arc<tempfile::TempDir>,
        issuer: TestIssuer,
        addr: Option<std::net::SocketAddr>,
    ) -> Self {
        let listener = match addr {
            Some(a) => tokio::net::TcpListener::bind(a).await.unwrap(),
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = dir.path().join("data");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        for (name, text) in &setup.policies {
            std::fs::write(policies.join(name), text).unwrap();
        }
        let text = config_text(
            &url,
            &issuer.url,
            &data.display().to_string(),
            &policies.display().to_string(),
            &setup.extra,
        );
        let path = dir.path().join("firebreak.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let clock = ManualClock::new(SystemClock.now());
        std::fs::create_dir_all(&data).unwrap();
        let key = firebreak_server::audit::load_or_create_key(&data).unwrap();
        let settings = firebreak_store::AuditSettings {
            chain: firebreak_store::BROKER_CHAIN.to_owned(),
            key,
            checkpoint_every: 100,
            checkpoint_interval_ms: 10_000,
            clock: Arc::new(clock.clone()),
            queue: 8192,
        };
        let store = Arc::new(SqliteStore::open(&data.join("firebreak.db"), settings).unwrap());
        let broker = Broker::new(config, store.clone(), Arc::new(clock.clone()))
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
            store,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the broker (its streams end); returns what a restart needs.
    pub async fn stop(mut self) -> (Arc<tempfile::TempDir>, TestIssuer, std::net::SocketAddr) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let addr = self.url.trim_start_matches("http://").parse().unwrap();
        (Arc::clone(&self.dir), self.issuer.clone(), addr)
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// A GitHub subject token for `repo` (deploy-bot: `acme/api`, other-bot: `acme/other`).
    pub fn subject_for(&self, repo: &str) -> String {
        self.issuer.sign(
            &self
                .issuer
                .github_claims(&self.url, repo, "refs/heads/main", self.now()),
        )
    }

    /// Exchanges a fresh subject token of `repo` for `audience`; the raw reply.
    pub async fn exchange_raw(
        &self,
        repo: &str,
        audience: &str,
        scope: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let subject = self.subject_for(repo);
        let mut pairs = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", JWT),
            ("audience", audience),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.http
            .post_form(
                &format!("{}/oauth2/token", self.url),
                headers,
                &encode_pairs(pairs),
            )
            .await
    }

    /// A token of deploy-bot for `audience`.
    pub async fn token(&self, audience: &str, scope: Option<&str>) -> String {
        self.token_of("acme/api", audience, scope).await
    }

    /// A token of the agent bound to `repo`.
    pub async fn token_of(&self, repo: &str, audience: &str, scope: Option<&str>) -> String {
        let r = self.exchange_raw(repo, audience, scope, &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// An admin call.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.admin);
        let mut h = vec![("authorization", auth.as_str())];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        self.http
            .send(
                method,
                &format!("{}{path}", self.url),
                &h,
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            )
            .await
    }

    /// Revokes a session (cascade) through the admin API.
    pub async fn revoke_session(&self, sid: &str) {
        let r = self
            .admin("DELETE", &format!("/v1/sessions/{sid}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
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
