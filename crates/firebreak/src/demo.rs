//! `firebreak demo`: the whole flow on one machine, narrated. A demo OIDC issuer (standing in for
//! GitHub Actions) and the broker run on ephemeral loopback ports with embedded SQLite in a temp
//! dir. Each step checks that the broker behaved as the narration says and fails the demo
//! otherwise, so the demo doubles as an end-to-end smoke test.
//!
//! The demo issuer lives here, binds loopback only and is unreachable from `serve`.
#![expect(
    clippy::indexing_slicing,
    reason = "only serde_json::Value is indexed here, by key, which yields Null and never panics"
)]

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use firebreak_core::{Clock, SystemClock, civil_from_days};
use firebreak_server::form::encode_pairs;
use firebreak_server::{Broker, Config};
use firebreak_token::{Algorithm, SigningKey, random_b64url, sha256_hex};
use serde_json::{Value, json};

use crate::cli::Output;
use crate::client::{Client, Reply};
use crate::commands::{CliError, open_store};
use crate::demo_tools;

const TOOL_AUDIENCE: &str = "https://gw.acme.example/mcp/github";
const EGRESS_AUDIENCE: &str = "https://egress.acme.example/";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn fail(step: &str, what: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!(
        "demo step '{step}' did not behave as expected: {what}"
    ))
}

/// The demo's stand-in for GitHub's OIDC issuer.
struct DemoIssuer {
    url: String,
    key: SigningKey,
    clock: SystemClock,
}

impl DemoIssuer {
    async fn start() -> Result<Self, CliError> {
        let key = SigningKey::generate(Algorithm::Es256).map_err(|e| fail("start issuer", e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail("start issuer", e))?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| fail("start issuer", e))?
        );
        let discovery = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks.json") });
        let jwks = json!({ "keys": [key.public_key().to_jwk()] });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route("/jwks.json", get(move || async move { axum::Json(jwks) }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            key,
            clock: SystemClock,
        })
    }

    /// A GitHub Actions-style ID token for `acme/api` on `git_ref`.
    fn mint(&self, audience: &str, git_ref: &str) -> Result<String, CliError> {
        let now = self.clock.now().as_secs();
        let claims = json!({
            "iss": self.url,
            "aud": audience,
            "sub": format!("repo:acme/api:ref:{git_ref}"),
            "repository": "acme/api",
            "repository_id": "123456",
            "repository_owner": "acme",
            "ref": git_ref,
            "environment": "production",
            "event_name": "push",
            "workflow_ref": format!("acme/api/.github/workflows/deploy.yml@{git_ref}"),
            "job_workflow_ref": format!("acme/api/.github/workflows/deploy.yml@{git_ref}"),
            "runner_environment": "github-hosted",
            "jti": random_b64url(16),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        });
        self.key
            .sign_jwt("JWT", &claims)
            .map_err(|e| fail("mint", e))
    }
}

fn date_in_days(days: i64) -> String {
    let today = SystemClock.now().as_secs().div_euclid(86_400);
    let (y, m, d) = civil_from_days(today + days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn demo_config(
    broker: &str,
    listen: &str,
    issuer: &str,
    data_dir: &str,
    client_secret: &str,
    approver_token: &str,
    policy_dir: &str,
) -> String {
    format!(
        r#"[server]
listen = "{listen}"
public_url = "{broker}"
data_dir = "{data_dir}"

[audit]
checkpoint_interval = "100ms"   # the demo is short; production default is 10s

[[issuer]]
id = "demo-github"
url = "{issuer}"
audience = "{broker}"
profile = "github-actions"
algorithms = ["ES256"]
danger_allow_http = true      # the demo issuer is on loopback

[[agent]]
id = "deploy-bot"
owner = "platform@acme.example"
purpose = "deploy acme/api"
expires = {expires}
tenant = "acme"
environment = "production"
tier = "write"
identity = {{ issuer = "demo-github", claims = {{ repository = "acme/api", repository_id = "123456", ref = "refs/heads/main", environment = "production" }}, events = ["push", "workflow_dispatch"] }}
grants = [{{ target = "github-tools", scopes = ["repo:read", "repo:write"] }}, {{ target = "egress", scopes = [] }}]

[[target]]
id = "egress"
audience = "{EGRESS_AUDIENCE}"
kind = "egress"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[target]]
id = "github-tools"
audience = "{TOOL_AUDIENCE}"
kind = "mcp"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"

[[client]]
id = "demo-gateway"
secret_sha256 = "{secret_hash}"
roles = ["introspect", "revoke", "stream", "evaluate"]
audiences = ["{TOOL_AUDIENCE}"]

[policy]
dir = "{policy_dir}"

[elevation]
reason_codes = ["incident", "change-ticket"]
max_duration = "1h"

[[approver]]
id = "alice"
token_sha256 = "{approver_hash}"
expires = {expires}
identities = [{{ iss = "https://idp.acme.example", sub = "alice" }}]
emails = ["alice@acme.example"]
"#,
        expires = date_in_days(180),
        secret_hash = sha256_hex(client_secret.as_bytes()),
        approver_hash = sha256_hex(approver_token.as_bytes()),
    )
}

/// The demo's Cedar policies, beside those generated from `grants`.
const DEMO_POLICIES: &str = r#"// repo:admin is never granted outright: only inside an approved elevation.
@id("admin-only-when-elevated")
permit(principal == Agent::"deploy-bot", action == Action::"exchange", resource == Target::"github-tools")
when { context.scope.contains("repo:admin") && context.elevations.contains("exchange:github-tools") };

// Tools through the gateway: reading is fine, deleting a repository never is.
@id("github-read-tools")
permit(principal == Agent::"deploy-bot", action == Action::"call_tool", resource in Target::"github-tools")
when { resource == Tool::"github-tools/list_issues" || resource == Tool::"github-tools/read_file" };

@id("never-delete-repos")
forbid(principal, action == Action::"call_tool", resource == Tool::"github-tools/delete_repo");

// Every elevation needs a human.
@id("elevations-need-a-human")
@approval("required")
permit(principal, action == Action::"elevate", resource);
"#;

struct Narrator {
    out: Output,
    steps: Vec<Value>,
    n: usize,
}

impl Narrator {
    fn step(&mut self, title: &str, text: &str) {
        self.n += 1;
        if self.out == Output::Human {
            println!("\n{}. {title}", self.n);
            for line in text.lines() {
                println!("   {line}");
            }
        }
        self.steps
            .push(json!({ "step": self.n, "title": title, "detail": text }));
    }
}

async fn exchange(
    client: &Client,
    broker: &str,
    subject: &str,
    audience: &str,
    scope: Option<&str>,
) -> Result<Reply, CliError> {
    let mut pairs = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", JWT_TYPE),
        ("audience", audience),
    ];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    client
        .post_form(&format!("{broker}/oauth2/token"), &[], encode_pairs(pairs))
        .await
        .map_err(|e| fail("exchange", e))
}

fn access_claims_sid(token: &str) -> String {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("sid").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

fn basic(id: &str, secret: &str) -> (&'static str, String) {
    use base64::Engine as _;
    (
        "authorization",
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        ),
    )
}

/// Runs the demo.
pub async fn run(keep: bool, out: Output) -> Result<(), CliError> {
    let started = firebreak_core::clock::Stopwatch::start();
    let dir = tempfile::tempdir().map_err(|e| fail("temp dir", e))?;
    let issuer = DemoIssuer::start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("bind broker", e))?;
    let addr = listener.local_addr().map_err(|e| fail("bind broker", e))?;
    let broker_url = format!("http://{addr}");
    let client_secret = random_b64url(24);
    let data_dir = dir.path().join("data");
    let config_path = dir.path().join("firebreak.toml");
    let approver_token = format!("fbapr_{}", random_b64url(32));
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).map_err(|e| fail("policy dir", e))?;
    std::fs::write(policy_dir.join("demo.cedar"), DEMO_POLICIES)
        .map_err(|e| fail("policies", e))?;
    // Two local "internet" hosts for the egress step: one the policy names, one it does not.
    let allowed_host = demo_tools::start_tcp_banner("allowed")
        .await
        .map_err(|e| fail("start egress hosts", e))?;
    let other_host = demo_tools::start_tcp_banner("not allowed")
        .await
        .map_err(|e| fail("start egress hosts", e))?;
    // A loopback address is internal: the egress proxy opens it only for a policy that names it
    // exactly (`resource == Host::"127.0.0.1:<port>"`).
    std::fs::write(
        policy_dir.join("egress.cedar"),
        format!(
            "@id(\"demo-egress-allowed-host\")\npermit(principal == Agent::\"deploy-bot\", action == Action::\"egress_connect\", resource == Host::\"{allowed_host}\");\n"
        ),
    )
    .map_err(|e| fail("policies", e))?;
    let config_text = demo_config(
        &broker_url,
        &addr.to_string(),
        &issuer.url,
        &data_dir.display().to_string(),
        &client_secret,
        &approver_token,
        &policy_dir.display().to_string(),
    );
    std::fs::write(&config_path, &config_text).map_err(|e| fail("write config", e))?;
    let cfg = Config::load(&config_path)?;
    let clock: Arc<dyn firebreak_core::Clock> = Arc::new(SystemClock);
    let store = open_store(&cfg, Arc::clone(&clock)).await?;
    let store_for_gateway = Arc::clone(&store);
    let broker = Broker::new(cfg, store, clock)
        .await
        .map_err(|e| fail("start broker", e))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(firebreak_server::serve(broker, listener, async {
        let _ = stop_rx.await;
    }));
    // The gateway in front of the sample MCP tool server, with the demo's upstream credential.
    let (tools_url, tools_seen) = crate::demo_tools::start()
        .await
        .map_err(|e| fail("start tool server", e))?;
    let upstream_secret = format!("ghs_demo_{}", random_b64url(12));
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("bind gateway", e))?;
    let gw_addr = gw_listener
        .local_addr()
        .map_err(|e| fail("bind gateway", e))?;
    drop(gw_listener);
    let gw_url = format!("http://{gw_addr}");
    let gw_table: toml::Table = toml::from_str(&format!(
        r#"listen = "{gw_addr}"
broker = "{broker_url}"
client_id = "demo-gateway"
client_secret_env = "DEMO_GW_SECRET"
stale_after = "5s"
[[route]]
target = "github-tools"
path = "/mcp/github"
upstream = "{tools_url}/mcp"
credential = {{ header = "Authorization", value_env = "DEMO_GITHUB_TOKEN", prefix = "Bearer " }}
"#
    ))
    .map_err(|e| fail("gateway config", e))?;
    let (secret_for_gw, up_for_gw) = (client_secret.clone(), upstream_secret.clone());
    let env = move |k: &str| match k {
        "DEMO_GW_SECRET" => Some(secret_for_gw.clone()),
        "DEMO_GITHUB_TOKEN" => Some(up_for_gw.clone()),
        _ => None,
    };
    let gw_cfg = firebreak_gateway::GatewayConfig::from_toml(gw_table, &env)
        .map_err(|e| fail("gateway config", e))?;
    let (gw_stop_tx, gw_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let egress_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("bind egress", e))?;
    let egress_addr = egress_listener
        .local_addr()
        .map_err(|e| fail("bind egress", e))?;
    drop(egress_listener);
    let (gateway, gw_task) = crate::gateway_cmd::start(
        gw_cfg,
        Arc::clone(&store_for_gateway),
        firebreak_store::BROKER_CHAIN.to_owned(),
        Arc::new(SystemClock),
        async {
            let _ = gw_stop_rx.await;
        },
    )
    .await?;
    let (eg_stop_tx, eg_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let egress_task = crate::gateway_cmd::start_egress(
        egress_addr,
        firebreak_egress::EgressConfig::new("egress"),
        Arc::clone(gateway.enforcer()),
        Arc::clone(&store_for_gateway),
        async {
            let _ = eg_stop_rx.await;
        },
    )
    .await?;
    let client = Client::new().map_err(|e| fail("client", e))?;
    let mut n = Narrator {
        out,
        steps: Vec::new(),
        n: 0,
    };
    if out == Output::Human {
        println!(
            "Firebreak demo: broker {broker_url}, demo OIDC issuer {}, SQLite in {}",
            issuer.url,
            dir.path().display()
        );
        println!("(the config it wrote: {})", config_path.display());
    }

    // 1. Federate: the CI runner's proof of identity.
    let oidc = issuer.mint(&broker_url, "refs/heads/main")?;
    n.step(
        "Federate: a CI job on acme/api@main gets an OIDC token from its issuer",
        "claims: repository=acme/api ref=refs/heads/main environment=production event_name=push\n\
         agent deploy-bot is bound to exactly these claims (no wildcards, no audience-only rule)",
    );

    // 2. Exchange.
    let r = exchange(
        &client,
        &broker_url,
        &oidc,
        TOOL_AUDIENCE,
        Some("repo:read"),
    )
    .await?;
    if r.status != 200 {
        return Err(fail(
            "exchange",
            format!("status {} {}", r.status, r.json()),
        ));
    }
    let v = r.json();
    let access = v["access_token"].as_str().unwrap_or_default().to_owned();
    n.step(
        "Exchange (RFC 8693): OIDC token → short-lived token for one tool",
        &format!(
            "POST /oauth2/token audience={TOOL_AUDIENCE} scope=repo:read\n→ 200 token_type={} expires_in={}s scope={}",
            v["token_type"].as_str().unwrap_or(""),
            v["expires_in"],
            v["scope"].as_str().unwrap_or("")
        ),
    );

    // 3. Inspect.
    n.step(
        &format!("Inspect the issued token (signature checked against {broker_url}/jwks.json)"),
        "one audience, one tenant (acme), one environment (production), 5-minute lifetime:",
    );
    crate::commands::inspect(&access, Some(&broker_url), out)
        .await
        .map_err(|e| fail("inspect", e))?;

    // 4. Replay refused.
    let r = exchange(
        &client,
        &broker_url,
        &oidc,
        TOOL_AUDIENCE,
        Some("repo:read"),
    )
    .await?;
    let e = r.json();
    if r.status != 400 || e["error"] != "invalid_request" || e["error_description"] != "replay" {
        return Err(fail("replay", format!("{} {e}", r.status)));
    }
    n.step(
        "Replay: the same OIDC token again",
        &format!("→ {} {e}", r.status.as_u16()),
    );

    // 5. Wrong branch refused.
    let wrong = issuer.mint(&broker_url, "refs/heads/feature")?;
    let r = exchange(&client, &broker_url, &wrong, TOOL_AUDIENCE, None).await?;
    let e = r.json();
    if r.status != 400 || e["error_description"] != "trust_rule_mismatch" {
        return Err(fail("wrong branch", format!("{} {e}", r.status)));
    }
    n.step(
        "Wrong branch (drill): a job on refs/heads/feature asks for the same tool",
        &format!("→ {} {e}\n(the failing claim, ref, is in the broker log; the client only gets the code)", r.status.as_u16()),
    );

    // 6. Scope escalation refused.
    let oidc2 = issuer.mint(&broker_url, "refs/heads/main")?;
    let r = exchange(
        &client,
        &broker_url,
        &oidc2,
        TOOL_AUDIENCE,
        Some("repo:admin"),
    )
    .await?;
    let e = r.json();
    if r.status != 400 || e["error"] != "invalid_scope" {
        return Err(fail("scope", format!("{} {e}", r.status)));
    }
    n.step(
        "Scope escalation: asking for repo:admin, which is not granted",
        &format!("→ {} {e}", r.status.as_u16()),
    );

    // 7–10. Just-in-time elevation: ask, a human approves, the call goes through, it expires.
    let oidc_b = issuer.mint(&broker_url, "refs/heads/main")?;
    let r = exchange(&client, &broker_url, &oidc_b, &broker_url, None).await?;
    let broker_token = r.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = json!({ "action": "exchange", "target": "github-tools", "reason_code": "incident",
                       "justification": "INC-42: hotfix needs repo:admin", "duration": "4s" });
    let r = client
        .send(
            http::Method::POST,
            &format!("{broker_url}/v1/elevations"),
            &[("authorization", format!("Bearer {broker_token}"))],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .map_err(|e| fail("elevation", e))?;
    let el = r.json();
    if r.status != 201 || el["status"] != "pending" {
        return Err(fail("elevation request", format!("{} {el}", r.status)));
    }
    let (el_id, ap_id) = (
        el["id"].as_str().unwrap_or_default().to_owned(),
        el["approval_id"].as_str().unwrap_or_default().to_owned(),
    );
    n.step(
        "Elevation: the agent asks for repo:admin for 4 s, reason code incident",
        &format!("POST /v1/elevations → 201 status=pending approval={ap_id}\n(policy elevations-need-a-human: @approval(\"required\"))"),
    );
    let r = client
        .send(
            http::Method::POST,
            &format!("{broker_url}/v1/approvals/{ap_id}/approve"),
            &[("authorization", format!("Bearer {approver_token}"))],
            Some((
                "application/json",
                json!({ "why": "on call, INC-42" }).to_string().into_bytes(),
            )),
        )
        .await
        .map_err(|e| fail("approve", e))?;
    let ap = r.json();
    if r.status != 200 || ap["status"] != "approved" {
        return Err(fail("approval", format!("{} {ap}", r.status)));
    }
    n.step(
        "Approval: approver alice approves (not the agent, its owner or anyone in its act chain)",
        &format!(
            "POST /v1/approvals/{ap_id}/approve → approved until {}",
            ap["expires_at"].as_str().unwrap_or("")
        ),
    );
    let elevated = |token: String| {
        let (client, url, id) = (client.clone(), broker_url.clone(), el_id.clone());
        async move {
            let pairs = [
                ("grant_type", EXCHANGE),
                ("subject_token", token.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("audience", TOOL_AUDIENCE),
                ("scope", "repo:admin"),
                ("elevation", id.as_str()),
            ];
            client
                .post_form(&format!("{url}/oauth2/token"), &[], encode_pairs(pairs))
                .await
        }
    };
    let r = elevated(issuer.mint(&broker_url, "refs/heads/main")?)
        .await
        .map_err(|e| fail("elevated exchange", e))?;
    let v = r.json();
    if r.status != 200 || v["scope"] != "repo:admin" {
        return Err(fail("elevated exchange", format!("{} {v}", r.status)));
    }
    n.step(
        "The same call, now allowed: repo:admin inside the elevation",
        &format!("→ 200 scope=repo:admin expires_in={}s (never past the elevation's end; policy admin-only-when-elevated)", v["expires_in"]),
    );
    // Wait (bounded) for the elevation's hard end.
    let mut expired = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = elevated(issuer.mint(&broker_url, "refs/heads/main")?)
            .await
            .map_err(|e| fail("expired elevation", e))?;
        if r.status == 400 {
            let e = r.json();
            // In the last second of the elevation nothing is left to issue (token_expired);
            // keep waiting for the elevation itself to end.
            if e["error_description"] == "token_expired" {
                continue;
            }
            if e["error"] != "invalid_grant" {
                return Err(fail("expired elevation", e));
            }
            n.step(
                "The elevation expires: the same request once more",
                &format!("→ 400 {e}"),
            );
            expired = true;
            break;
        }
    }
    if !expired {
        return Err(fail(
            "expired elevation",
            "still usable 6 s after a 4 s elevation",
        ));
    }

    // Introspection by the gateway (a registered client).
    let auth = basic("demo-gateway", &client_secret);
    let introspect = |token: String| {
        let client = client.clone();
        let url = format!("{broker_url}/oauth2/introspect");
        let auth = auth.clone();
        async move {
            client
                .post_form(&url, &[auth], encode_pairs([("token", token.as_str())]))
                .await
        }
    };
    let r = introspect(access.clone())
        .await
        .map_err(|e| fail("introspect", e))?;
    let iv = r.json();
    if iv["active"] != true {
        return Err(fail("introspect", iv));
    }
    n.step(
        "Introspect (RFC 7662) as the gateway client demo-gateway",
        &format!(
            "→ active=true sub={} sid={} scope={}",
            iv["sub"], iv["sid"], iv["scope"]
        ),
    );

    // 7b. Enforce: the gateway in front of the MCP tool server.
    for _ in 0..200 {
        if gateway.enforcer().ready() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if !gateway.enforcer().ready() {
        return Err(fail(
            "gateway ready",
            "no policy bundle or event stream within 2 s",
        ));
    }
    let rpc = |body: Value| {
        let (client, url, access) = (&client, format!("{gw_url}/mcp/github"), access.clone());
        async move {
            client
                .send(
                    http::Method::POST,
                    &url,
                    &[
                        ("authorization", format!("Bearer {access}")),
                        ("accept", "application/json, text/event-stream".to_owned()),
                    ],
                    Some(("application/json", body.to_string().into_bytes())),
                )
                .await
        }
    };
    let r = rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await
        .map_err(|e| fail("tools/list", e))?;
    let listed: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if listed != ["list_issues", "read_file"] {
        return Err(fail(
            "tools/list filtered",
            format!("{} {}", r.status, r.json()),
        ));
    }
    n.step(
        "Gateway: tools/list through the MCP-aware gateway",
        &format!(
            "POST {gw_url}/mcp/github tools/list → {listed:?}
(the server offers {:?}; policy hides the rest)",
            crate::demo_tools::TOOLS
        ),
    );
    let r = rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_issues", "arguments": {}}}))
        .await
        .map_err(|e| fail("tools/call allowed", e))?;
    let seen_auth = tools_seen
        .lock()
        .map(|s| s.authorizations.clone())
        .unwrap_or_default();
    if r.status != 200
        || r.json()["result"].is_null()
        || seen_auth.iter().any(|a| a.contains(&access))
        || !seen_auth
            .iter()
            .all(|a| a == &format!("Bearer {upstream_secret}"))
    {
        return Err(fail(
            "tools/call allowed",
            format!("{} {} {seen_auth:?}", r.status, r.json()),
        ));
    }
    n.step(
        "Gateway: tools/call list_issues → allowed (policy github-read-tools)",
        "the tool server received the gateway's own credential; the agent's token never left the gateway",
    );
    let r = rpc(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "delete_repo", "arguments": {}}}))
        .await
        .map_err(|e| fail("tools/call denied", e))?;
    let reached = tools_seen
        .lock()
        .map(|s| s.calls.iter().any(|c| c == "delete_repo"))
        .unwrap_or(true);
    if r.json()["error"]["code"] != -32602 || reached {
        return Err(fail("tools/call denied", r.json()));
    }
    n.step(
        "Gateway: tools/call delete_repo → refused (policy never-delete-repos)",
        &format!(
            "→ HTTP 200 JSON-RPC error {} reason={}; the tool server never saw the call",
            r.json()["error"]["code"],
            r.json()["error"]["data"]["reason"].as_str().unwrap_or("")
        ),
    );

    // 7c. Egress: outbound connections are tied to the agent's identity.
    let oidc_e = issuer.mint(&broker_url, "refs/heads/main")?;
    let r = exchange(&client, &broker_url, &oidc_e, EGRESS_AUDIENCE, None).await?;
    let egress_token = r.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, banner) = demo_tools::connect_via(egress_addr, &allowed_host, &egress_token)
        .await
        .map_err(|e| fail("egress allowed", e))?;
    if status != 200 || banner != "allowed" {
        return Err(fail("egress allowed", format!("{status} {banner:?}")));
    }
    n.step(
        "Egress: CONNECT through the identity-aware proxy to a host the policy names",
        &format!(
            "CONNECT {allowed_host} with Proxy-Authorization: Bearer <egress token> → 200, tunnel read {banner:?}\n(an egress_open record was durable before the proxy connected)"
        ),
    );
    let (status, _) = demo_tools::connect_via(egress_addr, &other_host, &egress_token)
        .await
        .map_err(|e| fail("egress refused", e))?;
    if status != 403 {
        return Err(fail("egress refused", status));
    }
    n.step(
        "Egress: CONNECT to a host the policy does not name",
        &format!("CONNECT {other_host} → 403 (destination_not_allowed: a loopback address needs a policy naming it)"),
    );

    // 8. Revoke: the agent revokes its own token with a token for the broker itself.
    let oidc3 = issuer.mint(&broker_url, "refs/heads/main")?;
    let r = exchange(&client, &broker_url, &oidc3, &broker_url, None).await?;
    let self_token = r.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = client
        .post_form(
            &format!("{broker_url}/oauth2/revoke"),
            &[("authorization", format!("Bearer {self_token}"))],
            encode_pairs([("token", access.as_str())]),
        )
        .await
        .map_err(|e| fail("revoke", e))?;
    if r.status != 200 {
        return Err(fail("revoke", format!("{} {}", r.status, r.json())));
    }
    n.step(
        "Revoke (RFC 7009): the agent revokes its own token",
        "POST /oauth2/revoke → 200 (the session and any child sessions are revoked)",
    );

    // 9. Introspection now says inactive.
    let r = introspect(access.clone())
        .await
        .map_err(|e| fail("introspect after revoke", e))?;
    let iv = r.json();
    if iv != json!({ "active": false }) {
        return Err(fail("introspect after revoke", iv));
    }
    // 9b. The revocation is pushed to the gateway: the next call is refused.
    let revoked_at = firebreak_core::clock::Stopwatch::start();
    let mut refused = None;
    for _ in 0..100 {
        let r = rpc(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "list_issues", "arguments": {}}}))
            .await
            .map_err(|e| fail("call after revoke", e))?;
        if r.status == 401 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let Some(r) = refused else {
        return Err(fail(
            "call after revoke",
            "the gateway still allowed the revoked token after 1 s",
        ));
    };
    n.step(
        "Gateway: the revoked token's next call is refused",
        &format!(
            "→ {} reason={} (revocation pushed over /v1/events within {:.0} ms)",
            r.status,
            r.json()["reason"].as_str().unwrap_or(""),
            revoked_at.elapsed_secs() * 1000.0
        ),
    );
    n.step(
        "Introspect again",
        &format!("→ {iv}: revoked tokens, unknown tokens and expired tokens all look the same"),
    );

    // 10. Record: the whole run is in the hash-chained log; verify it and replay the session.
    // The writer signs a checkpoint once records are 100 ms old; wait for it (bounded) so the
    // verification below covers every record with a signed root.
    let admin = std::fs::read_to_string(data_dir.join("admin.token"))
        .map_err(|e| fail("admin token", e))?;
    let mut anchored = false;
    for _ in 0..30 {
        let r = client
            .get(
                &format!("{broker_url}/v1/audit/checkpoints"),
                Some(admin.trim()),
            )
            .await
            .map_err(|e| fail("checkpoints", e))?;
        let cps = r.json();
        let newest = cps["checkpoints"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|c| c["tree_size"].as_u64())
            .unwrap_or(0);
        let export = client
            .get(&format!("{broker_url}/v1/audit/export"), Some(admin.trim()))
            .await
            .map_err(|e| fail("export", e))?;
        let records = String::from_utf8_lossy(&export.body)
            .lines()
            .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
            .count() as u64;
        if records > 0 && newest >= records {
            anchored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !anchored {
        return Err(fail(
            "audit checkpoint",
            "no signed checkpoint covered the demo's records within 3 s",
        ));
    }
    let sid = access_claims_sid(&access);
    n.step(
        "Audit: verify the hash chain, checkpoints and Merkle roots (firebreak audit verify)",
        "every exchange, refusal and revocation above is a record; the log is checked against the pinned audit key",
    );
    crate::audit_cmd::run(
        crate::cli::AuditCommand::Verify {
            file: None,
            key: None,
            strict: false,
            config: config_path.clone(),
        },
        out,
    )
    .await
    .map_err(|e| fail("audit verify", e))?;
    n.step(
        &format!("Replay the demo session {sid} (firebreak audit replay)"),
        "its lineage and every decision, with reasons and policy version:",
    );
    crate::audit_cmd::run(
        crate::cli::AuditCommand::Replay {
            session: sid,
            config: config_path.clone(),
        },
        out,
    )
    .await
    .map_err(|e| fail("audit replay", e))?;

    let secs = started.elapsed_secs();
    match out {
        Output::Human => {
            let mut s = String::new();
            let _ = write!(
                s,
                "\nDemo finished in {secs:.1}s: every step behaved as described."
            );
            println!("{s}");
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "ok": true, "seconds": secs, "steps": n.steps }))
                .unwrap_or_default()
        ),
    }
    if keep {
        println!(
            "\nStill running (Ctrl-C to stop):\n  broker  {broker_url}\n  issuer  {}\n  config  {}",
            issuer.url,
            config_path.display()
        );
        crate::commands::shutdown_signal().await;
    }
    let _ = eg_stop_tx.send(());
    let _ = egress_task.await;
    let _ = gw_stop_tx.send(());
    let _ = gw_task.await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}
