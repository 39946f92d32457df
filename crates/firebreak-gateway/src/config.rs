//! The `[gateway]` section (DESIGN.md §4): parsed strictly, checked once at load, secrets read
//! from the environment at load so a missing one is a config error, not a runtime 500.

use std::collections::HashSet;
use std::path::PathBuf;

use firebreak_core::ConfigDuration;
use serde::Deserialize;

/// A refused `[gateway]` section.
#[derive(Debug, thiserror::Error)]
#[error("[gateway] {rule}: {reason}")]
pub struct GatewayConfigError {
    /// Where.
    pub rule: String,
    /// Why.
    pub reason: String,
}

fn bad(rule: impl Into<String>, reason: impl Into<String>) -> GatewayConfigError {
    GatewayConfigError {
        rule: rule.into(),
        reason: reason.into(),
    }
}

fn default_listen() -> String {
    "127.0.0.1:8441".into()
}
fn default_stale() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_hold() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_connect() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn default_response() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_deadline() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_checkpoint_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

/// `[gateway]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    #[serde(default = "default_listen")]
    listen: String,
    broker: String,
    client_id: String,
    client_secret_env: String,
    #[serde(default = "default_stale")]
    stale_after: ConfigDuration,
    #[serde(default = "default_hold")]
    approval_hold: ConfigDuration,
    data_dir: Option<PathBuf>,
    /// The URL agents use to reach this gateway (DPoP `htu`, RFC 9728 metadata).
    public_url: Option<String>,
    /// `Origin` values accepted (MCP DNS-rebinding defence); none by default.
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// Extra `Host` values accepted besides the listen address and public URL host.
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_connect")]
    upstream_connect_timeout: ConfigDuration,
    #[serde(default = "default_response")]
    upstream_response_timeout: ConfigDuration,
    #[serde(default = "default_deadline")]
    audit_write_deadline: ConfigDuration,
    /// Standalone: the longest a record of its own chain waits for a signed checkpoint.
    #[serde(default = "default_checkpoint_interval")]
    checkpoint_interval: ConfigDuration,
    #[serde(default)]
    danger_allow_http: bool,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    target: String,
    path: String,
    upstream: String,
    credential: Option<RawCredential>,
    #[serde(default)]
    require_dpop: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    header: String,
    value_env: String,
    #[serde(default)]
    prefix: String,
}

/// An upstream credential the gateway injects (the agent never sees it).
#[derive(Clone)]
pub struct Credential {
    /// Header name.
    pub header: http::HeaderName,
    /// Full header value (prefix + secret).
    pub value: http::HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// One route: a path prefix in front of one target's upstream.
#[derive(Debug, Clone)]
pub struct Route {
    /// The target id (its audience and kind come from the policy bundle).
    pub target: String,
    /// Path prefix, `/`-led, no trailing `/`.
    pub path: String,
    /// Upstream base URL.
    pub upstream: http::Uri,
    /// Injected credential.
    pub credential: Option<Credential>,
    /// Refuse bearer (unbound) tokens on this route.
    pub require_dpop: bool,
}

/// The checked gateway config.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Listen address.
    pub listen: String,
    /// Broker base URL.
    pub broker: String,
    /// `[[client]]` id at the broker.
    pub client_id: String,
    /// Its secret (from the environment).
    pub client_secret: String,
    /// Fail closed after this much feed silence.
    pub stale_after: ConfigDuration,
    /// Longest hold of a `require_approval` call.
    pub approval_hold: ConfigDuration,
    /// Standalone audit chain directory.
    pub data_dir: Option<PathBuf>,
    /// Public base URL (no trailing `/`).
    pub public_url: String,
    /// Accepted `Origin`s.
    pub allowed_origins: HashSet<String>,
    /// Accepted `Host`s (lower-case).
    pub allowed_hosts: HashSet<String>,
    /// Largest request body (HTTP and MCP routes; bodies are read whole before forwarding).
    pub max_body_bytes: usize,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: ConfigDuration,
    /// Upstream response-head timeout.
    pub upstream_response_timeout: ConfigDuration,
    /// A record not durable by then fails the request.
    pub audit_write_deadline: ConfigDuration,
    /// Standalone: a checkpoint of its own chain at least this often while records arrive.
    pub checkpoint_interval: ConfigDuration,
    /// Plain-http broker off loopback.
    pub danger_allow_http: bool,
    /// Routes, longest path first.
    pub routes: Vec<Route>,
}

fn host_of(url: &str) -> Option<String> {
    url.parse::<http::Uri>()
        .ok()?
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
}

impl GatewayConfig {
    /// Checks a parsed section, reading secrets with `env`.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn from_raw(
        raw: RawGateway,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, GatewayConfigError> {
        let client_secret = env(&raw.client_secret_env)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                bad(
                    "client_secret_env",
                    format!("environment variable {} is not set", raw.client_secret_env),
                )
            })?;
        let listen: std::net::SocketAddr = raw
            .listen
            .parse()
            .map_err(|_| bad("listen", format!("{:?} is not host:port", raw.listen)))?;
        let broker = raw.broker.trim_end_matches('/').to_owned();
        match broker
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.scheme_str().map(str::to_owned))
        {
            Some(s) if s == "https" => {}
            Some(s)
                if s == "http"
                    && (raw.danger_allow_http || firebreak_enforce::is_loopback_url(&broker)) => {}
            _ => {
                return Err(bad(
                    "broker",
                    "must be https (http only on loopback or with danger_allow_http)",
                ));
            }
        }
        let public_url = raw
            .public_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let mut allowed_hosts: HashSet<String> = raw
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        allowed_hosts.insert(listen.to_string());
        if listen.ip().is_loopback() {
            allowed_hosts.insert(format!("localhost:{}", listen.port()));
        }
        allowed_hosts.extend(host_of(&public_url));
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let rule = format!("route[{i}] ({})", r.path);
            if !r.path.starts_with('/') || r.path.contains("..") || r.path.contains("//") {
                return Err(bad(rule, "path must start with / and hold no .. or //"));
            }
            let path = if r.path == "/" {
                String::new()
            } else {
                r.path.trim_end_matches('/').to_owned()
            };
            if path.starts_with("/.well-known")
                || ["/healthz", "/readyz", "/metrics"].contains(&path.as_str())
            {
                return Err(bad(rule, "path clashes with the gateway's own endpoints"));
            }
            if !seen.insert(path.clone()) {
                return Err(bad(rule, "two routes on one path"));
            }
            let upstream: http::Uri = r
                .upstream
                .parse()
                .map_err(|_| bad(&rule, "upstream does not parse"))?;
            if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
                return Err(bad(
                    &rule,
                    "upstream must be an http:// URL (TLS upstreams are not built yet)",
                ));
            }
            let credential = match r.credential {
                None => None,
                Some(c) => {
                    let secret = env(&c.value_env).filter(|s| !s.is_empty()).ok_or_else(|| {
                        bad(
                            &rule,
                            format!("environment variable {} is not set", c.value_env),
                        )
                    })?;
                    let header = http::HeaderName::from_bytes(c.header.as_bytes())
                        .map_err(|_| bad(&rule, "credential header name"))?;
                    let mut value =
                        http::HeaderValue::from_str(&format!("{}{secret}", c.prefix))
                            .map_err(|_| bad(&rule, "credential value is not header-safe"))?;
                    value.set_sensitive(true);
                    Some(Credential { header, value })
                }
            };
            routes.push(Route {
                target: r.target,
                path,
                upstream,
                credential,
                require_dpop: r.require_dpop,
            });
        }
        if routes.is_empty() {
            return Err(bad("route", "no [[gateway.route]]"));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        if raw.stale_after.as_millis() == 0 {
            return Err(bad("stale_after", "must be positive"));
        }
        if raw.checkpoint_interval.as_millis() == 0 {
            return Err(bad("checkpoint_interval", "must be positive"));
        }
        Ok(Self {
            listen: listen.to_string(),
            broker,
            client_id: raw.client_id,
            client_secret,
            stale_after: raw.stale_after,
            approval_hold: raw.approval_hold,
            data_dir: raw.data_dir,
            public_url,
            allowed_origins: raw.allowed_origins.into_iter().collect(),
            allowed_hosts,
            max_body_bytes: raw.max_body_bytes,
            upstream_connect_timeout: raw.upstream_connect_timeout,
            upstream_response_timeout: raw.upstream_response_timeout,
            audit_write_deadline: raw.audit_write_deadline,
            checkpoint_interval: raw.checkpoint_interval,
            danger_allow_http: raw.danger_allow_http,
            routes,
        })
    }

    /// Parses and checks the `[gateway]` table of a config file's text.
    ///
    /// # Errors
    /// TOML errors and broken rules, as messages.
    pub fn from_toml(
        table: toml_value::Table,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, GatewayConfigError> {
        let raw: RawGateway = table
            .try_into()
            .map_err(|e: toml_value::Error| bad("syntax", e.to_string()))?;
        Self::from_raw(raw, env)
    }

    /// The route serving `path`: the longest prefix at a segment boundary.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            path == r.path
                || (path.starts_with(&r.path) && path.as_bytes().get(r.path.len()) == Some(&b'/'))
        })
    }
}

/// Re-export so callers need not depend on `toml` to hand us a table.
pub mod toml_value {
    pub use toml::Table;
    pub use toml::de::Error;
}
