//! Command-line arguments. The doc comments are the `--help` text: written for a person at a
//! terminal, kept in step with the README and DESIGN.md §2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Zero-trust identity for AI agents and CI runners.
///
/// Firebreak exchanges an OIDC token from a trusted issuer (GitHub Actions, GitLab, Kubernetes,
/// any OIDC provider) for a short-lived, single-audience token bound to one registered agent,
/// one target, one tenant and one environment, inside a recorded session.
///
/// Data goes to stdout (`-o json` for machines), logs to stderr (`RUST_LOG`, `--log-format`).
/// Exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error.
#[derive(Debug, Parser)]
#[command(name = "firebreak", version, max_term_width = 100)]
pub struct Cli {
    /// Output format for data on stdout.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people.
    Human,
    /// One JSON document.
    Json,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the config is: `--config`, else `FIREBREAK_CONFIG`, else `./firebreak.toml`.
#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Config file.
    #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
    pub config: PathBuf,
}

/// `firebreak gateway`.
#[derive(Debug, Args, Clone)]
pub struct GatewayArgs {
    /// Config file.
    #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
    pub config: PathBuf,
    /// Print the gateway's audit public key as the `audit_key = { … }` line for its
    /// `[[client]]` in the broker's config (with `-o json`: the JWK), creating the key pair in
    /// `data_dir` if there is none yet, and exit without starting.
    #[arg(long)]
    pub print_audit_key: bool,
}

/// How to reach a running broker.
#[derive(Debug, Args, Clone)]
pub struct BrokerArgs {
    /// Broker URL (default: the config's server.public_url).
    #[arg(long, env = "FIREBREAK_URL")]
    pub broker: Option<String>,
    /// Bearer credential (else FIREBREAK_TOKEN, FIREBREAK_ADMIN_TOKEN, then <data_dir>/admin.token).
    #[arg(long, env = "FIREBREAK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Config file, used for the default URL and the admin token's location.
    #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
    pub config: PathBuf,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole flow locally in under a minute: a demo issuer, the broker on embedded
    /// SQLite in a temp dir, and a narrated exchange, inspection, refusal and revocation.
    ///
    /// Example: `firebreak demo`. Narration on stdout; exit 1 if any step does not behave as
    /// the narration says.
    Demo {
        /// Leave the demo running and print its URLs (Ctrl-C stops it).
        #[arg(long)]
        keep: bool,
    },
    /// Run the broker.
    ///
    /// Example: `firebreak serve --config /etc/firebreak/firebreak.toml`. Exits 78 when the
    /// config is refused (the message names the file, line and rule). SIGTERM or Ctrl-C stops
    /// it gracefully.
    Serve(ConfigArg),
    /// Validate a config without starting anything: issuers, agents, targets, clients and the
    /// trust-rule checks (wildcards, audience-only rules, ambiguous agents, TTL caps).
    ///
    /// Example: `firebreak check --config firebreak.toml`. Prints a summary; warnings to stderr;
    /// exit 0 when valid, 78 when not.
    Check(ConfigArg),
    /// Run a gateway alone, pointed at a broker (the scale-out shape).
    ///
    /// Example: `firebreak gateway --config gw.toml`, where the file holds only `[gateway]`
    /// (with `data_dir` for its own audit chain) and its `[[gateway.route]]`s. It authenticates
    /// to the broker as a `[[client]]` with role `stream`, decides in-process and fails closed
    /// when the broker's event stream goes quiet for `stale_after`. Exits 78 on a bad config.
    ///
    /// It writes its own audit chain (named by its `client_id`) in `data_dir`, each record
    /// durable before the request is forwarded, and ships it to the broker's
    /// `/v1/audit/ingest` in the background. The broker accepts it once the gateway's
    /// `[[client]]` there has role `stream` and `audit_key` set to the key that
    /// `firebreak gateway --config gw.toml --print-audit-key` prints.
    Gateway(GatewayArgs),
    /// Token helpers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The agent inventory.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Sessions and their lineage.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The tamper-evident audit log: verify, export, follow, replay a session, print the key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Cedar policies: run the policy test cases.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Just-in-time elevation and the approval queue.
    #[command(subcommand)]
    Elevation(ElevationCommand),
    /// Break-glass windows (approvers only).
    #[command(subcommand)]
    Breakglass(BreakglassCommand),
    /// Approver credentials.
    #[command(subcommand)]
    Approver(ApproverCommand),
}

/// `firebreak policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the `*.test.toml` cases beside the policies: each request against the policy set
    /// (the `[policy] dir` plus the policies generated from the config's grants), expected
    /// decision and reasons.
    ///
    /// Example: `firebreak policy test` (the config's dir) or `firebreak policy test ./policies`.
    /// Prints a table; exit 0 when every case passes, 1 on any mismatch, 78 when the policies
    /// or the config do not load.
    Test {
        /// Policy directory (default: the config's `[policy] dir`).
        dir: Option<PathBuf>,
        /// Config file (the inventory the policies are checked against).
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
}

/// `firebreak elevation …`.
#[derive(Debug, Subcommand)]
pub enum ElevationCommand {
    /// Ask for an elevation (with an agent's broker token, or as admin for an agent). Policy
    /// approves it, denies it or queues it for an approver.
    ///
    /// Example: `firebreak elevation request --agent deploy-bot --action exchange --target
    /// github-tools --reason incident --justification "INC-42" --duration 15m`.
    Request {
        /// The agent (required as admin; an agent's token implies it).
        #[arg(long)]
        agent: Option<String>,
        /// The action to elevate (exchange, call_tool, http_request, egress_connect).
        #[arg(long, default_value = "exchange")]
        action: String,
        /// The target id.
        #[arg(long)]
        target: String,
        /// A reason code from `[elevation] reason_codes`.
        #[arg(long)]
        reason: String,
        /// Why, in words.
        #[arg(long)]
        justification: String,
        /// How long (at most `[elevation] max_duration`).
        #[arg(long)]
        duration: Option<String>,
        /// Consumed by its first use.
        #[arg(long)]
        single_use: bool,
        /// Bind to this session.
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// List elevations (admin or approver) or the approval queue (`--pending`).
    List {
        /// Show the pending approvals instead.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Approve a pending approval (approver token in --token or FIREBREAK_TOKEN).
    Approve {
        /// Approval id (`ap_…`).
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        why: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Deny a pending approval (approver token).
    Deny {
        /// Approval id (`ap_…`).
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        why: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `firebreak breakglass …`.
#[derive(Debug, Subcommand)]
pub enum BreakglassCommand {
    /// Open a break-glass window for an agent (approver token). An alert is logged at open and
    /// close; tokens minted under it expire by its end.
    ///
    /// Example: `firebreak breakglass open --agent deploy-bot --reason incident --ttl 30m`.
    Open {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// A reason code from `[elevation] reason_codes`.
        #[arg(long)]
        reason: String,
        /// Duration (default `[breakglass] default_duration`, at most `max_duration`).
        #[arg(long)]
        ttl: Option<String>,
        /// Why, in words.
        #[arg(long, default_value = "")]
        justification: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Close a window early (approver or admin).
    Close {
        /// Window id (`bg_…`).
        id: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `firebreak approver …`.
#[derive(Debug, Subcommand)]
pub enum ApproverCommand {
    /// Print a fresh approver token and the `token_sha256` to put in its `[[approver]]` entry.
    /// The token is shown once; Firebreak stores only the hash.
    ///
    /// Example: `firebreak approver token alice`.
    Token {
        /// Approver id.
        id: String,
    },
}

/// `firebreak audit …`. These read the database file named by the config directly (read-only,
/// safe while the broker runs), or an export file.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify every chain: each record's hash, the prev_hash links, gap-free seqs, each
    /// checkpoint's signature and Merkle root.
    ///
    /// Example: `firebreak audit verify` (the store, trusting only the pinned
    /// <data_dir>/audit-key.pub.jwk or --key), or `firebreak audit verify --file export.jsonl
    /// --key audit-pub.jwk` (offline). Prints the counts verified; warnings to stderr. Exit 0
    /// when intact, 1 naming the first bad chain/seq.
    Verify {
        /// An export (JSONL) to verify instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key (JWK) to trust. Required with --file.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also fail when records follow the last checkpoint (unanchored).
        #[arg(long)]
        strict: bool,
        /// Config file (for the store and the pinned key).
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
    /// Export the log as JSONL (records and checkpoints in order), or as OCSF events.
    ///
    /// Example: `firebreak audit export > audit.jsonl`. Data on stdout.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only this chain.
        #[arg(long)]
        chain: Option<String>,
        /// Config file.
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
    /// Print the newest records; with -f keep following (Ctrl-C stops).
    Tail {
        /// Follow new records.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many records to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Config file.
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
    /// A session's timeline: its lineage (ancestors, descendants), each decision with its
    /// reasons and policy version, revocations.
    ///
    /// Example: `firebreak audit replay s_Y2bq…`.
    Replay {
        /// Session id.
        session: String,
        /// Config file.
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
    /// Print the pinned audit public key (JWK), for offline verification.
    Key {
        /// Config file.
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The records and checkpoints as stored (verifiable offline).
    Jsonl,
    /// OCSF 1.3 events (Authorize Session, API Activity), one per record; not verifiable.
    Ocsf,
}

/// `firebreak token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Exchange a subject token for a Firebreak access token (RFC 8693) at a broker.
    ///
    /// Example: `firebreak token exchange --subject-token "$ACTIONS_ID_TOKEN" --audience
    /// https://gw.acme.example/mcp/github --scope repo:read`. Prints the token response; exit 1
    /// with the OAuth error when refused.
    Exchange {
        /// The subject token (or `-` to read it from stdin).
        #[arg(long)]
        subject_token: String,
        /// Its type.
        #[arg(long, value_enum, default_value_t = TokenKind::Jwt)]
        subject_token_type: TokenKind,
        /// The target audience.
        #[arg(long)]
        audience: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// An actor token (delegation).
        #[arg(long)]
        actor_token: Option<String>,
        /// The actor token's type.
        #[arg(long, value_enum, default_value_t = TokenKind::Jwt)]
        actor_token_type: TokenKind,
        /// Broker URL (default: the config's server.public_url).
        #[arg(long, env = "FIREBREAK_URL")]
        broker: Option<String>,
        /// Config file, for the default broker URL.
        #[arg(long, env = "FIREBREAK_CONFIG", default_value = "firebreak.toml")]
        config: PathBuf,
    },
    /// Decode a JWT and explain it: header, claims, times; verifies the signature against the
    /// broker's JWKS when a broker is reachable, and says whether it did.
    ///
    /// Example: `firebreak token inspect "$TOKEN"`. Exit 1 when verification was attempted and
    /// failed.
    Inspect {
        /// The token (or `-` for stdin).
        jwt: String,
        /// Broker URL whose /jwks.json to verify against.
        #[arg(long, env = "FIREBREAK_URL")]
        broker: Option<String>,
    },
}

/// Token types on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenKind {
    /// An issuer JWT.
    Jwt,
    /// An OIDC ID token.
    IdToken,
    /// A Firebreak access token (child session).
    AccessToken,
}

impl TokenKind {
    /// The RFC 8693 URN.
    pub fn urn(self) -> &'static str {
        match self {
            Self::Jwt => "urn:ietf:params:oauth:token-type:jwt",
            Self::IdToken => "urn:ietf:params:oauth:token-type:id_token",
            Self::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
        }
    }
}

/// `firebreak agent …`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents: id, owner, purpose, expiry, last use (admin).
    List(BrokerArgs),
    /// Show one agent with its identity binding and grants (admin).
    Show {
        /// Agent id.
        id: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `firebreak session …`.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions, newest first (admin).
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Show a session with its ancestors and descendants (admin).
    Show {
        /// Session id.
        id: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Revoke a session and every descendant (admin).
    Revoke {
        /// Session id.
        id: String,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}

/// `firebreak keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys and their states (next, active, retiring, retired) (admin).
    List(BrokerArgs),
    /// Rotate: the published `next` key starts signing, the active key is kept published until
    /// every token it signed has expired, and a new `next` is published (admin). Refused while
    /// `next` has been published for less than the JWKS cache lifetime (60 s) unless --force.
    Rotate {
        /// Rotate even if the next key was published only just now.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        broker: BrokerArgs,
    },
}
