//! `firebreak.toml`: the raw TOML shape (`Raw*`, `deny_unknown_fields`) and the checked form
//! (`Config`) the broker runs on. Everything unsafe is refused here, at load, with the file, the
//! line and the rule (DESIGN.md §4, SECURITY-TESTS.md X01, X09, T12): a config that loads is one
//! whose trust rules cannot match more than their author meant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use firebreak_core::{AgentId, ConfigDuration, TargetId, UnixTime, parse_date};
use firebreak_token::Algorithm;
use serde::Deserialize;

/// A config that could not be loaded: where, which rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The table or rule concerned, e.g. `agent "deploy-bot" identity`.
    pub rule: String,
    /// What is wrong, in words a person can act on.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{l}: {}: {}",
                self.file.display(),
                self.rule,
                self.reason
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.rule, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// Raw TOML
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "issuer")]
    issuers: Vec<RawIssuer>,
    #[serde(default, rename = "agent")]
    agents: Vec<RawAgent>,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
    #[serde(default)]
    audit: RawAudit,
    policy: Option<RawPolicy>,
    #[serde(default)]
    elevation: RawElevation,
    #[serde(default)]
    breakglass: RawBreakglass,
    #[serde(default, rename = "approver")]
    approvers: Vec<RawApprover>,
    /// Checked by the gateway crate (the binary wires it); kept raw here so the broker's config
    /// does not depend on the enforcement points.
    gateway: Option<toml::Table>,
    /// Checked by the egress crate.
    egress: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElevation {
    #[serde(default = "d_reason_codes")]
    reason_codes: Vec<String>,
    #[serde(default = "d_elevation_max")]
    max_duration: ConfigDuration,
}

fn d_reason_codes() -> Vec<String> {
    vec!["incident".into(), "change-ticket".into(), "on-call".into()]
}
fn d_elevation_max() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}

impl Default for RawElevation {
    fn default() -> Self {
        Self {
            reason_codes: d_reason_codes(),
            max_duration: d_elevation_max(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakglass {
    #[serde(default = "d_bg_default")]
    default_duration: ConfigDuration,
    #[serde(default = "d_bg_max")]
    max_duration: ConfigDuration,
}

fn d_bg_default() -> ConfigDuration {
    ConfigDuration::from_secs(1800)
}
fn d_bg_max() -> ConfigDuration {
    ConfigDuration::from_secs(7200)
}

impl Default for RawBreakglass {
    fn default() -> Self {
        Self {
            default_duration: d_bg_default(),
            max_duration: d_bg_max(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    id: String,
    token_sha256: String,
    expires: toml::value::Datetime,
    #[serde(default)]
    identities: Vec<RawIdentityRef>,
    #[serde(default)]
    emails: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityRef {
    iss: String,
    sub: String,
}

/// `[elevation]`.
#[derive(Debug, Clone)]
pub struct ElevationConfig {
    /// Accepted reason codes (also for break-glass).
    pub reason_codes: Vec<String>,
    /// Longest elevation.
    pub max_duration: ConfigDuration,
}

/// `[breakglass]`.
#[derive(Debug, Clone, Copy)]
pub struct BreakglassConfig {
    /// Duration when none is asked for.
    pub default_duration: ConfigDuration,
    /// Longest window; never extended past it without a new opening.
    pub max_duration: ConfigDuration,
}

/// A human who may approve elevations and open break-glass.
#[derive(Debug, Clone)]
pub struct Approver {
    /// Approver id (`Approver::"<id>"`).
    pub id: String,
    /// SHA-256 of their bearer token.
    pub token_sha256: [u8; 32],
    /// End of the registration.
    pub expires: UnixTime,
    /// Their identities as `iss sub` pairs (compared exactly).
    pub identities: Vec<(String, String)>,
    /// Their e-mail addresses (compared case-insensitively).
    pub emails: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "d_write_deadline")]
    write_deadline: ConfigDuration,
    #[serde(default = "d_checkpoint_every")]
    checkpoint_every: u64,
    #[serde(default = "d_checkpoint_interval")]
    checkpoint_interval: ConfigDuration,
}

fn d_write_deadline() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn d_checkpoint_every() -> u64 {
    1000
}
fn d_checkpoint_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            write_deadline: d_write_deadline(),
            checkpoint_every: d_checkpoint_every(),
            checkpoint_interval: d_checkpoint_interval(),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Copy)]
pub struct AuditConfig {
    /// A record not durable by then fails its request (503).
    pub write_deadline: ConfigDuration,
    /// A signed checkpoint every this many records …
    pub checkpoint_every: u64,
    /// … or this often, whichever comes first.
    pub checkpoint_interval: ConfigDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    public_url: String,
    data_dir: PathBuf,
    #[serde(default = "default_signing_alg")]
    signing_alg: Algorithm,
    #[serde(default)]
    danger_allow_http: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8440))
}

fn default_signing_alg() -> Algorithm {
    Algorithm::EdDsa
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    key_encryption_key_file: Option<PathBuf>,
    /// PostgreSQL only: pooled connections per broker (the audit writer and the event listener
    /// have one each besides).
    #[serde(default = "d_pool_size")]
    pool_size: usize,
    /// PostgreSQL only: opening one connection may take this long.
    #[serde(default = "d_connect_timeout")]
    connect_timeout: ConfigDuration,
    /// PostgreSQL only: the server-side `statement_timeout` of every statement.
    #[serde(default = "d_statement_timeout")]
    statement_timeout: ConfigDuration,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: None,
            key_encryption_key_file: None,
            pool_size: d_pool_size(),
            connect_timeout: d_connect_timeout(),
            statement_timeout: d_statement_timeout(),
        }
    }
}

fn d_pool_size() -> usize {
    8
}
fn d_connect_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
fn d_statement_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "d_max_ttl")]
    max_ttl: ConfigDuration,
    #[serde(default = "d_default_ttl")]
    default_ttl: ConfigDuration,
    #[serde(default = "d_leeway")]
    leeway: ConfigDuration,
    #[serde(default = "d_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default = "d_max_act_depth")]
    max_act_depth: u32,
    #[serde(default = "d_dpop_max_age")]
    dpop_max_age: ConfigDuration,
}

fn d_max_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}
fn d_default_ttl() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
fn d_leeway() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
fn d_max_token_bytes() -> usize {
    16_384
}
fn d_max_act_depth() -> u32 {
    4
}
fn d_dpop_max_age() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_ttl: d_max_ttl(),
            default_ttl: d_default_ttl(),
            leeway: d_leeway(),
            max_token_bytes: d_max_token_bytes(),
            max_act_depth: d_max_act_depth(),
            dpop_max_age: d_dpop_max_age(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    id: String,
    url: String,
    audience: Option<String>,
    #[serde(default)]
    profile: Profile,
    algorithms: Vec<String>,
    jwks_uri: Option<String>,
    #[serde(default)]
    allow_multiple_audiences: bool,
    #[serde(default = "d_max_token_age")]
    max_token_age: ConfigDuration,
    #[serde(default)]
    danger_allow_http: bool,
}

fn d_max_token_age() -> ConfigDuration {
    ConfigDuration::from_secs(600)
}

/// Which identity provider's claim conventions an issuer follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// GitHub Actions OIDC (`token.actions.githubusercontent.com`).
    GithubActions,
    /// GitLab CI `id_tokens`.
    Gitlab,
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// Any other OIDC provider.
    #[default]
    Generic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    owner: String,
    purpose: String,
    expires: toml::value::Datetime,
    tenant: String,
    environment: String,
    #[serde(default = "d_tier")]
    tier: String,
    identity: RawIdentity,
    #[serde(default)]
    grants: Vec<RawGrant>,
}

fn d_tier() -> String {
    "read".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    issuer: String,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    allow_pull_request_target: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    target: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    id: String,
    audience: String,
    kind: TargetKind,
    tenant: String,
    environment: String,
    #[serde(default = "d_tier")]
    tier: String,
    max_ttl: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    secret_sha256: String,
    roles: Vec<Role>,
    #[serde(default)]
    audiences: Vec<String>,
    /// The client's own audit public key (Ed25519 JWK): a standalone gateway's chain is only
    /// ingested when its checkpoints verify under it.
    audit_key: Option<toml::Table>,
}

// ---------------------------------------------------------------------------------------------
// Checked form
// ---------------------------------------------------------------------------------------------

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from.
    pub file: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[limits]`.
    pub limits: Limits,
    /// `[[issuer]]`, in file order.
    pub issuers: Vec<Issuer>,
    /// `[[agent]]`, in file order.
    pub agents: Vec<Agent>,
    /// `[[target]]` plus the built-in broker target (last).
    pub targets: Vec<Target>,
    /// `[[client]]`.
    pub clients: Vec<Client>,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[policy] dir`: Cedar policies beside the ones generated from `grants`.
    pub policy_dir: Option<PathBuf>,
    /// `[elevation]`.
    pub elevation: ElevationConfig,
    /// `[breakglass]`.
    pub breakglass: BreakglassConfig,
    /// `[[approver]]`.
    pub approvers: Vec<Approver>,
    /// Things that load but deserve a look (e.g. a rule pinned by name but not by id).
    pub warnings: Vec<String>,
    /// `[gateway]`, unchecked (see `firebreak_gateway::GatewayConfig::from_toml`).
    pub gateway: Option<toml::Table>,
    /// `[egress]`, unchecked (see the egress crate).
    pub egress: Option<toml::Table>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// `iss` of issued tokens and audience of the broker's own target; no trailing slash.
    pub public_url: String,
    /// Data directory (SQLite file, admin token).
    pub data_dir: PathBuf,
    /// Signing algorithm for issued tokens.
    pub signing_alg: Algorithm,
    /// TLS certificate chain and key (PEM); plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://…`, `postgres://…` or `postgresql://…`.
    pub url: String,
    /// Key-encryption key for signing keys at rest.
    pub key_encryption_key_file: Option<PathBuf>,
    /// PostgreSQL: pooled connections (1–256).
    pub pool_size: usize,
    /// PostgreSQL: connect timeout (100 ms – 60 s).
    pub connect_timeout: ConfigDuration,
    /// PostgreSQL: statement timeout (100 ms – 60 s).
    pub statement_timeout: ConfigDuration,
}

impl StoreConfig {
    /// Whether `url` names PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        firebreak_store::PgStore::is_postgres_url(&self.url)
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No target may set more.
    pub max_ttl: ConfigDuration,
    /// Lifetime of an issued token unless a bound is smaller.
    pub default_ttl: ConfigDuration,
    /// Clock skew accepted on exp/nbf/iat (≤ 60 s).
    pub leeway: ConfigDuration,
    /// Largest compact JWT accepted.
    pub max_token_bytes: usize,
    /// Deepest `act` chain accepted.
    pub max_act_depth: u32,
    /// How old a DPoP proof's `iat` may be (plus `leeway`), at the token endpoint.
    pub dpop_max_age: ConfigDuration,
}

/// A trusted issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Config id, used in agent identity rules.
    pub id: String,
    /// `iss`, compared byte for byte.
    pub url: String,
    /// Required audience of its tokens.
    pub audience: String,
    /// Claim conventions.
    pub profile: Profile,
    /// Algorithm allow-list.
    pub algorithms: Vec<Algorithm>,
    /// JWKS location; discovery when `None`.
    pub jwks_uri: Option<String>,
    /// Accept an `aud` array containing our audience.
    pub allow_multiple_audiences: bool,
    /// Oldest `iat` accepted.
    pub max_token_age: ConfigDuration,
    /// Plain HTTP allowed (loopback test issuers).
    pub danger_allow_http: bool,
}

/// Tiers in increasing privilege. A target's tier must not exceed its agent's.
pub const TIERS: [&str; 3] = ["read", "write", "admin"];

fn tier_rank(t: &str) -> Option<usize> {
    TIERS.iter().position(|x| *x == t)
}

/// An inventory entry.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Agent id (`sub` of issued tokens).
    pub id: AgentId,
    /// Accountable human or team.
    pub owner: String,
    /// Why it exists.
    pub purpose: String,
    /// End of the registration (exclusive: the agent is expired from this instant on).
    pub expires: UnixTime,
    /// Tenant.
    pub tenant: String,
    /// Environment.
    pub environment: String,
    /// Highest tier it may reach.
    pub tier: String,
    /// How its subject tokens are recognised.
    pub identity: Identity,
    /// What it may get, per target (the simple allow-list `Decider`).
    pub grants: HashMap<TargetId, Vec<String>>,
    /// The `expires` value as written.
    pub expires_text: String,
}

impl Agent {
    /// Whether this agent's tier allows a target of tier `t`.
    pub fn tier_allows(&self, t: &str) -> bool {
        matches!((tier_rank(&self.tier), tier_rank(t)), (Some(a), Some(b)) if b <= a)
    }
}

/// An identity binding: exact claim values from one issuer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Issuer config id.
    pub issuer: String,
    /// Claim → exact value.
    pub claims: BTreeMap<String, String>,
    /// Accepted `event_name`s (GitHub); empty = no event condition (other profiles).
    pub events: Vec<String>,
}

/// Kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// HTTP tool behind the gateway.
    Http,
    /// MCP server behind the gateway.
    Mcp,
    /// The egress proxy.
    Egress,
    /// The broker itself (built in).
    Broker,
}

impl TargetKind {
    /// The config and Cedar name (`Target.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Http => "http",
            TargetKind::Mcp => "mcp",
            TargetKind::Egress => "egress",
            TargetKind::Broker => "broker",
        }
    }
}

/// An audience tokens can be minted for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Target id.
    pub id: TargetId,
    /// Audience string (exact).
    pub audience: String,
    /// Kind.
    pub kind: TargetKind,
    /// Tenant (empty for the broker target, which has none).
    pub tenant: String,
    /// Environment (empty for the broker target).
    pub environment: String,
    /// Tier.
    pub tier: String,
    /// Longest token lifetime for it.
    pub max_ttl: ConfigDuration,
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `POST /oauth2/introspect`.
    Introspect,
    /// `POST /oauth2/revoke` for any token.
    Revoke,
    /// `POST /access/v1/evaluation` (policy issue).
    Evaluate,
    /// `GET /v1/events`, `/v1/policy/bundle` (gateway issue).
    Stream,
}

/// A registered client (resource server, enforcement point).
#[derive(Debug, Clone)]
pub struct Client {
    /// Client id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Roles.
    pub roles: Vec<Role>,
    /// Audiences whose tokens it may introspect.
    pub audiences: Vec<String>,
    /// Its audit key, for `POST /v1/audit/ingest` and `audit verify` of its chain.
    pub audit_key: Option<firebreak_audit::AuditPublicKey>,
}

/// Id of the built-in broker target.
pub const BROKER_TARGET: &str = "firebreak";

// ---------------------------------------------------------------------------------------------
// Loading and checks
// ---------------------------------------------------------------------------------------------

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn err(
        &self,
        rule: impl Into<String>,
        needle: Option<&str>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: needle.and_then(|n| self.line_of(n)),
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    /// A TOML date (`2027-06-30`, no time) as the start of that day, UTC.
    fn date(
        &self,
        rule: &str,
        id: &str,
        v: &toml::value::Datetime,
    ) -> Result<UnixTime, ConfigError> {
        let text = v.to_string();
        match (v.date, v.time) {
            (Some(_), None) => parse_date(&text),
            _ => None,
        }
        .ok_or_else(|| {
            self.err(
                rule,
                Some(id),
                format!("expires must be a date like 2027-06-30, not {text:?}"),
            )
        })
    }

    /// The line of `id = "<id>"` (how every table names itself), for messages.
    fn line_of(&self, id: &str) -> Option<usize> {
        let quoted = format!("\"{id}\"");
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                (l.starts_with("id ") || l.starts_with("id=")) && l.contains(&quoted)
            })
            .map(|i| i + 1)
    }
}

fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "127.0.0.1" || host == "localhost" || host == "[::1]"
}

fn check_url(
    c: &Checker<'_>,
    rule: &str,
    id: &str,
    url: &str,
    allow_http: bool,
) -> Result<(), ConfigError> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if url.starts_with("http://") && (allow_http || is_loopback_http(url)) {
        return Ok(());
    }
    Err(c.err(
        rule,
        Some(id),
        format!("{url:?} must be an https:// URL (http:// only for loopback, or with danger_allow_http = true)"),
    ))
}

/// Characters that make a claim value look like a pattern. Matching is exact, so a value holding
/// them is either a mistake or a belief that wildcards work; both are refused.
fn looks_like_pattern(v: &str) -> bool {
    v.contains('*') || v.contains(".*") || v.contains('?') || v.starts_with('^') || v.ends_with('$')
}

impl Config {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line (when known), rule and reason.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            rule: "file".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Checks config text; `path` is used in messages and to resolve relative paths.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line (when known), rule and reason.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let c = Checker { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                text.get(..s.start)
                    .map_or(1, |t| t.matches('\n').count() + 1)
            });
            ConfigError {
                file: path.to_owned(),
                line,
                rule: "syntax".into(),
                reason: e.message().to_owned(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut warnings = Vec::new();

        // [server]
        let public_url = raw.server.public_url.trim_end_matches('/').to_owned();
        check_url(
            &c,
            "server.public_url",
            "",
            &public_url,
            raw.server.danger_allow_http,
        )?;
        if matches!(raw.server.signing_alg, Algorithm::Rs256) {
            return Err(c.err(
                "server.signing_alg",
                None,
                "issued tokens are signed with EdDSA or ES256",
            ));
        }
        let data_dir = base.join(&raw.server.data_dir);
        let server = ServerConfig {
            listen: raw.server.listen,
            public_url: public_url.clone(),
            data_dir: data_dir.clone(),
            signing_alg: raw.server.signing_alg,
            tls: match (raw.server.tls_cert, raw.server.tls_key) {
                (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
                (None, None) => None,
                _ => return Err(c.err("server", None, "tls_cert and tls_key go together")),
            },
        };
        let store = StoreConfig {
            url: raw
                .store
                .url
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("firebreak.db").display())),
            key_encryption_key_file: raw.store.key_encryption_key_file.map(|p| base.join(p)),
            pool_size: raw.store.pool_size,
            connect_timeout: raw.store.connect_timeout,
            statement_timeout: raw.store.statement_timeout,
        };
        if firebreak_store::SqliteStore::path_from_url(&store.url).is_none() && !store.is_postgres()
        {
            return Err(c.err(
                "store.url",
                Some(&store.url),
                "must be sqlite://PATH, postgres://… or postgresql://…",
            ));
        }
        if !(1..=256).contains(&store.pool_size) {
            return Err(c.err("store.pool_size", None, "must be between 1 and 256"));
        }
        for (rule, d) in [
            ("store.connect_timeout", store.connect_timeout),
            ("store.statement_timeout", store.statement_timeout),
        ] {
            if !(100..=60_000).contains(&d.as_millis()) {
                return Err(c.err(rule, None, format!("{d} is outside 100ms..60s")));
            }
        }

        // [limits]
        let l = raw.limits;
        if l.leeway > ConfigDuration::from_secs(60) {
            return Err(c.err("limits.leeway", None, format!("{} is above the 60s maximum: clock skew that large hides replayed and expired tokens", l.leeway)));
        }
        if l.default_ttl > l.max_ttl || l.default_ttl.as_millis() < 1000 {
            return Err(c.err(
                "limits.default_ttl",
                None,
                "must be at least 1s and at most limits.max_ttl",
            ));
        }
        if !(1024..=65_536).contains(&l.max_token_bytes) {
            return Err(c.err(
                "limits.max_token_bytes",
                None,
                "must be between 1024 and 65536",
            ));
        }
        if l.max_act_depth > 16 {
            return Err(c.err("limits.max_act_depth", None, "must be at most 16"));
        }
        // A proof is a bearer credential for its window: minutes would let a captured one be
        // replayed elsewhere long after the request it was made for.
        if l.dpop_max_age.as_millis() < 1000 || l.dpop_max_age > ConfigDuration::from_secs(300) {
            return Err(c.err("limits.dpop_max_age", None, "must be between 1s and 300s"));
        }
        let limits = Limits {
            max_ttl: l.max_ttl,
            default_ttl: l.default_ttl,
            leeway: l.leeway,
            max_token_bytes: l.max_token_bytes,
            max_act_depth: l.max_act_depth,
            dpop_max_age: l.dpop_max_age,
        };

        // [[issuer]]
        let mut issuers = Vec::new();
        let mut seen = HashSet::new();
        for ri in raw.issuers {
            let rule = format!("issuer {:?}", ri.id);
            if !seen.insert(ri.id.clone()) {
                return Err(c.err(rule, Some(&ri.id), "duplicate issuer id"));
            }
            if ri.url == public_url {
                return Err(c.err(
                    rule,
                    Some(&ri.id),
                    "an issuer cannot share the broker's public_url",
                ));
            }
            check_url(&c, &rule, &ri.id, &ri.url, ri.danger_allow_http)?;
            if let Some(j) = &ri.jwks_uri {
                check_url(&c, &rule, &ri.id, j, ri.danger_allow_http)?;
            }
            let Some(audience) = ri.audience.filter(|a| !a.is_empty()) else {
                return Err(c.err(rule, Some(&ri.id), "audience is required: without it any token this issuer mints for anyone would be accepted"));
            };
            if ri.algorithms.is_empty() {
                return Err(c.err(
                    rule,
                    Some(&ri.id),
                    "algorithms must list at least one of RS256, ES256, EdDSA",
                ));
            }
            let mut algorithms = Vec::new();
            for a in &ri.algorithms {
                let alg: Algorithm = a.parse().map_err(|_| {
                    c.err(&rule, Some(&ri.id), format!("algorithm {a:?} is not allowed (use RS256, ES256 or EdDSA; never none or HS*)"))
                })?;
                algorithms.push(alg);
            }
            issuers.push(Issuer {
                id: ri.id,
                url: ri.url,
                audience,
                profile: ri.profile,
                algorithms,
                jwks_uri: ri.jwks_uri,
                allow_multiple_audiences: ri.allow_multiple_audiences,
                max_token_age: ri.max_token_age,
                danger_allow_http: ri.danger_allow_http,
            });
        }

        // [[target]]
        let mut targets: Vec<Target> = Vec::new();
        for rt in raw.targets {
            let rule = format!("target {:?}", rt.id);
            let id = TargetId::try_from(rt.id.clone())
                .map_err(|e| c.err(&rule, Some(&rt.id), e.to_string()))?;
            if rt.id == BROKER_TARGET {
                return Err(c.err(
                    rule,
                    Some(&rt.id),
                    "the id \"firebreak\" is the broker's built-in target",
                ));
            }
            if targets.iter().any(|t| t.id == id) {
                return Err(c.err(rule, Some(&rt.id), "duplicate target id"));
            }
            if targets.iter().any(|t| t.audience == rt.audience) || rt.audience == public_url {
                return Err(c.err(
                    rule,
                    Some(&rt.id),
                    format!(
                        "audience {:?} is already used: one audience is one target",
                        rt.audience
                    ),
                ));
            }
            if !rt.audience.contains("://") || rt.audience.contains('#') {
                return Err(c.err(
                    rule,
                    Some(&rt.id),
                    "audience must be an absolute URI without a fragment",
                ));
            }
            for (field, v) in [("tenant", &rt.tenant), ("environment", &rt.environment)] {
                if v.is_empty() || v.contains([',', '*', ' ']) {
                    return Err(c.err(
                        &rule,
                        Some(&rt.id),
                        format!("{field} must name exactly one {field} (no lists, no wildcards)"),
                    ));
                }
            }
            if tier_rank(&rt.tier).is_none() {
                return Err(c.err(
                    rule,
                    Some(&rt.id),
                    format!("tier must be one of {TIERS:?}: one target is one tier"),
                ));
            }
            let max_ttl = rt.max_ttl.unwrap_or(limits.default_ttl);
            if max_ttl > limits.max_ttl {
                return Err(c.err(
                    rule,
                    Some(&rt.id),
                    format!(
                        "max_ttl {max_ttl} is above limits.max_ttl {}",
                        limits.max_ttl
                    ),
                ));
            }
            if max_ttl.as_millis() < 1000 {
                return Err(c.err(rule, Some(&rt.id), "max_ttl must be at least 1s"));
            }
            targets.push(Target {
                id,
                audience: rt.audience,
                kind: rt.kind,
                tenant: rt.tenant,
                environment: rt.environment,
                tier: rt.tier,
                max_ttl,
            });
        }
        if targets.iter().any(|t| t.kind == TargetKind::Broker) {
            return Err(c.err(
                "target",
                None,
                "kind \"broker\" is reserved for the built-in target",
            ));
        }
        targets.push(Target {
            id: TargetId::try_from(BROKER_TARGET)
                .map_err(|e| c.err("target", None, e.to_string()))?,
            audience: public_url.clone(),
            kind: TargetKind::Broker,
            tenant: String::new(),
            environment: String::new(),
            tier: "read".into(),
            max_ttl: limits.default_ttl,
        });

        // [[agent]]
        let mut agents: Vec<Agent> = Vec::new();
        for ra in raw.agents {
            let rule = format!("agent {:?}", ra.id);
            let id = AgentId::try_from(ra.id.clone())
                .map_err(|e| c.err(&rule, Some(&ra.id), e.to_string()))?;
            if agents.iter().any(|a| a.id == id) {
                return Err(c.err(rule, Some(&ra.id), "duplicate agent id"));
            }
            let expires_text = ra.expires.to_string();
            let expires = c.date(&rule, &ra.id, &ra.expires)?;
            for (field, v) in [
                ("owner", &ra.owner),
                ("purpose", &ra.purpose),
                ("tenant", &ra.tenant),
                ("environment", &ra.environment),
            ] {
                if v.trim().is_empty() {
                    return Err(c.err(&rule, Some(&ra.id), format!("{field} is required")));
                }
            }
            if ra.environment.contains([',', '*', ' ']) || ra.tenant.contains([',', '*', ' ']) {
                return Err(c.err(
                    rule,
                    Some(&ra.id),
                    "an agent lives in exactly one tenant and one environment",
                ));
            }
            if tier_rank(&ra.tier).is_none() {
                return Err(c.err(rule, Some(&ra.id), format!("tier must be one of {TIERS:?}")));
            }
            let issuer = issuers
                .iter()
                .find(|i| i.id == ra.identity.issuer)
                .ok_or_else(|| {
                    c.err(
                        &rule,
                        Some(&ra.id),
                        format!(
                            "identity.issuer {:?} is not a configured [[issuer]]",
                            ra.identity.issuer
                        ),
                    )
                })?;
            let identity = check_identity(&c, &rule, &ra.id, issuer, ra.identity, &mut warnings)?;
            let mut grants = HashMap::new();
            for g in ra.grants {
                let Some(t) = targets.iter().find(|t| t.id.as_str() == g.target) else {
                    return Err(c.err(
                        &rule,
                        Some(&ra.id),
                        format!("grant for unknown target {:?}", g.target),
                    ));
                };
                if t.kind != TargetKind::Broker
                    && (t.tenant != ra.tenant || t.environment != ra.environment)
                {
                    return Err(c.err(&rule, Some(&ra.id), format!("grant for target {:?} in {}/{}, but the agent is in {}/{}: one token, one environment", t.id, t.tenant, t.environment, ra.tenant, ra.environment)));
                }
                let mut scopes = Vec::new();
                for s in g.scopes {
                    if !crate::scope::is_scope_token(&s) {
                        return Err(c.err(
                            &rule,
                            Some(&ra.id),
                            format!("scope {s:?} is not an RFC 6749 scope token"),
                        ));
                    }
                    if !scopes.contains(&s) {
                        scopes.push(s);
                    }
                }
                if grants.insert(t.id.clone(), scopes).is_some() {
                    return Err(c.err(
                        &rule,
                        Some(&ra.id),
                        format!("two grants for target {:?}", g.target),
                    ));
                }
            }
            let agent = Agent {
                id,
                owner: ra.owner,
                purpose: ra.purpose,
                expires,
                tenant: ra.tenant,
                environment: ra.environment,
                tier: ra.tier,
                identity,
                grants,
                expires_text,
            };
            for t in agent.grants.keys() {
                if let Some(t) = targets.iter().find(|x| &x.id == t)
                    && !agent.tier_allows(&t.tier)
                    && t.kind != TargetKind::Broker
                {
                    return Err(c.err(
                        &rule,
                        Some(agent.id.as_str()),
                        format!(
                            "grant for target {:?} of tier {:?} above the agent's tier {:?}",
                            t.id, t.tier, agent.tier
                        ),
                    ));
                }
            }
            if let Some(other) = agents
                .iter()
                .find(|o| identities_overlap(&o.identity, &agent.identity))
            {
                return Err(c.err(rule, Some(agent.id.as_str()), format!("its identity rule could match the same token as agent {:?}: add a claim that tells them apart", other.id)));
            }
            agents.push(agent);
        }

        // [[client]]
        let mut clients: Vec<Client> = Vec::new();
        for rc in raw.clients {
            let rule = format!("client {:?}", rc.id);
            if rc.id.is_empty() || rc.id.contains(':') {
                return Err(c.err(
                    rule,
                    Some(&rc.id),
                    "client id must be non-empty and without ':'",
                ));
            }
            if clients.iter().any(|x| x.id == rc.id) {
                return Err(c.err(rule, Some(&rc.id), "duplicate client id"));
            }
            let secret_sha256 = decode_hex32(&rc.secret_sha256).ok_or_else(|| {
                c.err(
                    &rule,
                    Some(&rc.id),
                    "secret_sha256 must be 64 hex characters (sha256 of the secret)",
                )
            })?;
            if rc.roles.is_empty() {
                return Err(c.err(rule, Some(&rc.id), "roles must list at least one role"));
            }
            if rc.roles.contains(&Role::Introspect) && rc.audiences.is_empty() {
                return Err(c.err(rule, Some(&rc.id), "a client with role introspect must list the audiences it serves (audiences = [...])"));
            }
            let audit_key = match rc.audit_key {
                None => None,
                Some(t) => {
                    let jwk = serde_json::to_value(&t)
                        .map_err(|e| c.err(&rule, Some(&rc.id), format!("audit_key: {e}")))?;
                    Some(
                        firebreak_audit::AuditPublicKey::from_jwk(&jwk).map_err(|e| {
                            c.err(
                                &rule,
                                Some(&rc.id),
                                format!("audit_key is not an Ed25519 public JWK: {e}"),
                            )
                        })?,
                    )
                }
            };
            if rc.id == firebreak_store::BROKER_CHAIN {
                return Err(c.err(
                    rule,
                    Some(&rc.id),
                    "the id \"broker\" names the broker's own audit chain",
                ));
            }
            clients.push(Client {
                id: rc.id,
                secret_sha256,
                roles: rc.roles,
                audiences: rc.audiences,
                audit_key,
            });
        }

        // [audit]
        let ra = raw.audit;
        if !(10..=1_000_000).contains(&ra.checkpoint_every) {
            return Err(c.err(
                "audit.checkpoint_every",
                None,
                "must be between 10 and 1000000 records",
            ));
        }
        if ra.checkpoint_interval.as_millis() < 100
            || ra.checkpoint_interval > ConfigDuration::from_secs(3600)
        {
            return Err(c.err(
                "audit.checkpoint_interval",
                None,
                "must be between 100ms and 1h",
            ));
        }
        // The request must end within 2 s (SECURITY-TESTS.md §0): the deadline leaves room.
        if ra.write_deadline.as_millis() < 10
            || ra.write_deadline > ConfigDuration::from_millis(1500)
        {
            return Err(c.err(
                "audit.write_deadline",
                None,
                "must be between 10ms and 1500ms",
            ));
        }
        let audit = AuditConfig {
            write_deadline: ra.write_deadline,
            checkpoint_every: ra.checkpoint_every,
            checkpoint_interval: ra.checkpoint_interval,
        };

        // [elevation], [breakglass], [[approver]]
        let re = raw.elevation;
        if re.reason_codes.is_empty()
            || re
                .reason_codes
                .iter()
                .any(|r| r.is_empty() || r.contains(char::is_whitespace))
        {
            return Err(c.err(
                "elevation.reason_codes",
                None,
                "must list at least one code, each without spaces",
            ));
        }
        if re.max_duration.as_millis() < 1000
            || re.max_duration > limits.max_ttl.max(ConfigDuration::from_secs(86_400))
        {
            return Err(c.err(
                "elevation.max_duration",
                None,
                "must be at least 1s and at most 24h",
            ));
        }
        let elevation = ElevationConfig {
            reason_codes: re.reason_codes,
            max_duration: re.max_duration,
        };
        let rb = raw.breakglass;
        if rb.default_duration > rb.max_duration || rb.default_duration.as_millis() < 1000 {
            return Err(c.err(
                "breakglass.default_duration",
                None,
                "must be at least 1s and at most breakglass.max_duration",
            ));
        }
        if rb.max_duration > ConfigDuration::from_secs(86_400) {
            return Err(c.err("breakglass.max_duration", None, "must be at most 24h"));
        }
        let breakglass = BreakglassConfig {
            default_duration: rb.default_duration,
            max_duration: rb.max_duration,
        };
        let mut approvers: Vec<Approver> = Vec::new();
        for ra in raw.approvers {
            let rule = format!("approver {:?}", ra.id);
            if ra.id.is_empty()
                || !ra
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
            {
                return Err(c.err(rule, Some(&ra.id), "approver id must be [A-Za-z0-9._@-]+"));
            }
            if approvers.iter().any(|a| a.id == ra.id) {
                return Err(c.err(rule, Some(&ra.id), "duplicate approver id"));
            }
            let token_sha256 = decode_hex32(&ra.token_sha256).ok_or_else(|| {
                c.err(
                    &rule,
                    Some(&ra.id),
                    "token_sha256 must be 64 hex characters (from `firebreak approver token`)",
                )
            })?;
            let expires = c.date(&rule, &ra.id, &ra.expires)?;
            if ra.identities.is_empty() && ra.emails.is_empty() {
                return Err(c.err(rule, Some(&ra.id), "list the approver's identities or emails: self-approval is checked against them"));
            }
            approvers.push(Approver {
                id: ra.id,
                token_sha256,
                expires,
                identities: ra.identities.into_iter().map(|i| (i.iss, i.sub)).collect(),
                emails: ra
                    .emails
                    .into_iter()
                    .map(|e| e.to_ascii_lowercase())
                    .collect(),
            });
        }
        let policy_dir = raw.policy.map(|p| base.join(p.dir));

        Ok(Config {
            policy_dir,
            elevation,
            breakglass,
            approvers,
            audit,
            file: path.to_owned(),
            server,
            store,
            limits,
            issuers,
            agents,
            targets,
            clients,
            warnings,
            gateway: raw.gateway,
            egress: raw.egress,
        })
    }

    /// The target with this audience.
    pub fn target_by_audience(&self, aud: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.audience == aud)
    }

    /// The built-in broker target.
    pub fn broker_target(&self) -> Option<&Target> {
        self.targets.iter().find(|t| t.kind == TargetKind::Broker)
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// GitHub's events under which code from a fork (or a PR head) runs with the base repository's
/// token: a rule must opt in explicitly.
const GITHUB_PWN_EVENTS: [&str; 2] = ["pull_request_target", "workflow_run"];

fn check_identity(
    c: &Checker<'_>,
    rule: &str,
    id: &str,
    issuer: &Issuer,
    ri: RawIdentity,
    warnings: &mut Vec<String>,
) -> Result<Identity, ConfigError> {
    let rule = format!("{rule} identity");
    for (k, v) in &ri.claims {
        if k == "aud" || k == "iss" {
            return Err(c.err(
                &rule,
                Some(id),
                format!("claim {k:?} is checked by the issuer; a rule on it adds nothing"),
            ));
        }
        if v.is_empty() || looks_like_pattern(v) {
            return Err(c.err(&rule, Some(id), format!("claim {k} = {v:?}: values are matched exactly; wildcards and patterns are refused")));
        }
    }
    if ri.claims.is_empty() {
        return Err(c.err(&rule, Some(id), "no claim conditions: a rule on the audience alone accepts every token the issuer mints for us"));
    }
    let has = |k: &str| ri.claims.contains_key(k);
    match issuer.profile {
        Profile::GithubActions => {
            if !has("repository") && !has("repository_id") && !has("sub") {
                return Err(c.err(
                    &rule,
                    Some(id),
                    "a github-actions rule must pin repository (or repository_id)",
                ));
            }
            if let Some(sub) = ri.claims.get("sub")
                && (!sub.starts_with("repo:") || sub.split(':').count() < 3)
            {
                return Err(c.err(&rule, Some(id), format!("sub {sub:?} must be a full GitHub subject like repo:owner/name:ref:refs/heads/main")));
            }
            if has("repository_owner") && !has("repository") && !has("repository_id") {
                return Err(c.err(
                    &rule,
                    Some(id),
                    "repository_owner alone admits every repository of the owner; pin repository",
                ));
            }
            if let Some(r) = ri.claims.get("repository")
                && !r.contains('/')
            {
                return Err(c.err(
                    &rule,
                    Some(id),
                    format!("repository {r:?} must be owner/name"),
                ));
            }
            if !has("repository_id") {
                warnings.push(format!("{}: {rule}: pinned by repository name but not repository_id; names can be recycled", c.file.display()));
            }
            if ri.events.is_empty() {
                return Err(c.err(
                    &rule,
                    Some(id),
                    "a github-actions rule must list the events it accepts (events = [\"push\"])",
                ));
            }
            for e in &ri.events {
                if GITHUB_PWN_EVENTS.contains(&e.as_str()) && !ri.allow_pull_request_target {
                    return Err(c.err(&rule, Some(id), format!("event {e:?} runs fork-controlled code with the base repository's identity; set allow_pull_request_target = true to accept it knowingly")));
                }
            }
        }
        Profile::Gitlab => {
            if !has("project_path") && !has("project_id") {
                return Err(c.err(
                    &rule,
                    Some(id),
                    "a gitlab rule must pin project_path (or project_id)",
                ));
            }
        }
        Profile::Kubernetes => {
            let sub_ok = ri.claims.get("sub").is_some_and(|s| {
                let parts: Vec<&str> = s.split(':').collect();
                parts.len() == 4
                    && parts.first() == Some(&"system")
                    && parts.get(1) == Some(&"serviceaccount")
            });
            if !sub_ok {
                return Err(c.err(
                    &rule,
                    Some(id),
                    "a kubernetes rule must pin sub = \"system:serviceaccount:<namespace>:<name>\"",
                ));
            }
        }
        Profile::Generic => {
            if !has("sub") {
                return Err(c.err(&rule, Some(id), "a generic OIDC rule must pin sub; iss + aud alone match every user of the issuer"));
            }
        }
    }
    if issuer.profile != Profile::GithubActions && !ri.events.is_empty() {
        return Err(c.err(
            &rule,
            Some(id),
            "events apply to github-actions issuers only",
        ));
    }
    Ok(Identity {
        issuer: ri.issuer,
        claims: ri.claims,
        events: ri.events,
    })
}

/// Whether one token could satisfy both rules: same issuer, equal values on every shared claim,
/// and (for GitHub) a common event.
fn identities_overlap(a: &Identity, b: &Identity) -> bool {
    if a.issuer != b.issuer {
        return false;
    }
    let claims_compatible = a
        .claims
        .iter()
        .all(|(k, v)| b.claims.get(k).is_none_or(|w| w == v));
    let events_compatible =
        a.events.is_empty() || b.events.is_empty() || a.events.iter().any(|e| b.events.contains(e));
    claims_compatible && events_compatible
}

#[cfg(test)]
mod tests;
