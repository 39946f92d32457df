//! What each command does. Every command ends in `Ok(())` or one [`CliError`], whose variant
//! picks the exit code.

use std::path::Path;
use std::sync::Arc;

use firebreak_core::{SystemClock, UnixTime, format_rfc3339_millis};
use firebreak_server::form::encode_pairs;
use firebreak_server::{Broker, Config, ConfigError};
use firebreak_store::{PgPoolSettings, PgStore, SqliteStore, Store};
use firebreak_token::{KeySet, UnverifiedJwt, verify_signature};
use http::Method;
use serde_json::{Value, json};

use crate::cli::{
    AgentCommand, BrokerArgs, Cli, Command, KeysCommand, LogFormat, Output, SessionCommand,
    TokenCommand,
};
use crate::client::Client;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config was refused (exit 78).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Wrong arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code (DESIGN.md §2).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 78,
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

pub(crate) fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Sets up tracing on stderr.
pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.command {
            // The demo narrates on stdout; its logs would only interleave.
            Command::Demo { .. } => "warn",
            _ => "info",
        })
    });
    let ansi = std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let out = cli.output;
    match cli.command {
        Command::Demo { keep } => crate::demo::run(keep, out).await,
        Command::Serve(c) => serve(&c.config).await,
        Command::Gateway(c) if c.print_audit_key => {
            crate::gateway_cmd::print_audit_key(&c.config, out)
        }
        Command::Gateway(c) => crate::gateway_cmd::standalone(&c.config).await,
        Command::Check(c) => check(&c.config, out),
        Command::Token(TokenCommand::Exchange {
            subject_token,
            subject_token_type,
            audience,
            scope,
            actor_token,
            actor_token_type,
            broker,
            config,
        }) => {
            let url = broker_url(broker.as_deref(), &config)?;
            let subject = read_arg(&subject_token)?;
            let mut pairs = vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange".to_owned(),
                ),
                ("subject_token", subject),
                ("subject_token_type", subject_token_type.urn().to_owned()),
                ("audience", audience),
            ];
            if let Some(s) = scope {
                pairs.push(("scope", s));
            }
            if let Some(a) = actor_token {
                pairs.push(("actor_token", read_arg(&a)?));
                pairs.push(("actor_token_type", actor_token_type.urn().to_owned()));
            }
            let body = encode_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
            let reply = Client::new()
                .map_err(failed)?
                .post_form(&format!("{url}/oauth2/token"), &[], body)
                .await
                .map_err(failed)?;
            let v = reply.json();
            if !reply.status.is_success() {
                return Err(CliError::Failed(format!(
                    "exchange refused ({}): {}",
                    reply.status.as_u16(),
                    v
                )));
            }
            print_value(out, &v, |v| {
                format!(
                    "access_token: {}\ntoken_type:   {}\nexpires_in:   {}s\nscope:        {}\n",
                    v["access_token"].as_str().unwrap_or(""),
                    v["token_type"].as_str().unwrap_or(""),
                    v["expires_in"],
                    v["scope"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        Command::Token(TokenCommand::Inspect { jwt, broker }) => {
            inspect(&read_arg(&jwt)?, broker.as_deref(), out).await
        }
        Command::Agent(AgentCommand::List(b)) => {
            let v = admin(&b, Method::GET, "/v1/agents").await?;
            print_value(out, &v, |v| {
                let mut s = format!(
                    "{:<24} {:<28} {:<12} {:<24} {}\n",
                    "AGENT", "OWNER", "EXPIRES", "LAST USED", "PURPOSE"
                );
                for a in v["agents"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{:<24} {:<28} {:<12} {:<24} {}\n",
                        a["id"].as_str().unwrap_or(""),
                        a["owner"].as_str().unwrap_or(""),
                        a["expires"].as_str().unwrap_or(""),
                        a["last_used"].as_str().unwrap_or("never"),
                        a["purpose"].as_str().unwrap_or("")
                    ));
                }
                s
            });
            Ok(())
        }
        Command::Agent(AgentCommand::Show { id, broker }) => {
            let v = admin(
                &broker,
                Method::GET,
                &format!("/v1/agents/{}", path_seg(&id)),
            )
            .await?;
            print_value(out, &v, pretty);
            Ok(())
        }
        Command::Session(SessionCommand::List { agent, broker }) => {
            let q = agent
                .map(|a| format!("?agent={}", firebreak_server::form::encode(&a)))
                .unwrap_or_default();
            let v = admin(&broker, Method::GET, &format!("/v1/sessions{q}")).await?;
            print_value(out, &v, |v| {
                let mut s = format!(
                    "{:<28} {:<20} {:<16} {:<8} {:<28} {}\n",
                    "SESSION", "AGENT", "TARGET", "STATE", "PARENT", "EXPIRES"
                );
                for x in v["sessions"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{:<28} {:<20} {:<16} {:<8} {:<28} {}\n",
                        x["id"].as_str().unwrap_or(""),
                        x["agent"].as_str().unwrap_or(""),
                        x["target"].as_str().unwrap_or(""),
                        x["state"].as_str().unwrap_or(""),
                        x["parent"].as_str().unwrap_or("-"),
                        x["expires_at"].as_str().unwrap_or("")
                    ));
                }
                s
            });
            Ok(())
        }
        Command::Session(SessionCommand::Show { id, broker }) => {
            let v = admin(
                &broker,
                Method::GET,
                &format!("/v1/sessions/{}", path_seg(&id)),
            )
            .await?;
            print_value(out, &v, |v| {
                let mut s = pretty(v);
                s.push_str("lineage:\n");
                for a in v["ancestors"].as_array().into_iter().flatten().rev() {
                    s.push_str(&format!("  ancestor   {}\n", a.as_str().unwrap_or("")));
                }
                s.push_str(&format!(
                    "  this       {} ({})\n",
                    v["id"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or("")
                ));
                for d in v["descendants"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "  descendant {} depth {} ({})\n",
                        d["id"].as_str().unwrap_or(""),
                        d["depth"],
                        d["state"].as_str().unwrap_or("")
                    ));
                }
                s
            });
            Ok(())
        }
        Command::Session(SessionCommand::Revoke { id, broker }) => {
            let v = admin(
                &broker,
                Method::DELETE,
                &format!("/v1/sessions/{}", path_seg(&id)),
            )
            .await?;
            print_value(out, &v, |v| {
                let ids: Vec<&str> = v["revoked"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!("revoked {} session(s): {}\n", ids.len(), ids.join(" "))
            });
            Ok(())
        }
        Command::Audit(cmd) => crate::audit_cmd::run(cmd, out).await,
        Command::Policy(cmd) => crate::grants_cmd::policy(cmd, out),
        Command::Elevation(cmd) => crate::grants_cmd::elevation(cmd, out).await,
        Command::Breakglass(cmd) => crate::grants_cmd::breakglass(cmd, out).await,
        Command::Approver(cmd) => crate::grants_cmd::approver(cmd, out),
        Command::Keys(KeysCommand::List(b)) => {
            let v = admin(&b, Method::GET, "/v1/keys").await?;
            print_value(out, &v, |v| {
                let mut s = format!(
                    "{:<45} {:<6} {:<9} {:<26} {}\n",
                    "KID", "ALG", "STATE", "CREATED", "RETIRE AFTER"
                );
                for k in v["keys"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{:<45} {:<6} {:<9} {:<26} {}\n",
                        k["kid"].as_str().unwrap_or(""),
                        k["alg"].as_str().unwrap_or(""),
                        k["state"].as_str().unwrap_or(""),
                        k["created_at"].as_str().unwrap_or(""),
                        k["retire_after"].as_str().unwrap_or("-")
                    ));
                }
                s
            });
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { force, broker }) => {
            let path = if force {
                "/v1/keys/rotate?force=true"
            } else {
                "/v1/keys/rotate"
            };
            let v = admin(&broker, Method::POST, path).await?;
            print_value(out, &v, |v| {
                format!(
                    "rotated; active key is now {}\n",
                    v["active"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
    }
}

fn path_seg(s: &str) -> String {
    firebreak_server::form::encode(s)
}

fn pretty(v: &Value) -> String {
    let mut s = String::new();
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if k == "ancestors" || k == "descendants" {
                continue;
            }
            let shown = match x {
                Value::String(t) => t.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            s.push_str(&format!("{k:<16} {shown}\n"));
        }
    }
    s
}

pub(crate) fn print_value(out: Output, v: &Value, human: impl Fn(&Value) -> String) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Human => print!("{}", human(v)),
    }
}

fn read_arg(s: &str) -> Result<String, CliError> {
    if s == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).map_err(failed)?;
        Ok(buf.trim().to_owned())
    } else {
        Ok(s.to_owned())
    }
}

fn broker_url(flag: Option<&str>, config: &Path) -> Result<String, CliError> {
    if let Some(u) = flag {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    let cfg = Config::load(config).map_err(|e| {
        CliError::Usage(format!(
            "no --broker or FIREBREAK_URL, and the config gives none: {e}"
        ))
    })?;
    Ok(cfg.server.public_url)
}

fn admin_credential(b: &BrokerArgs) -> Result<String, CliError> {
    if let Some(t) = &b.token {
        return Ok(t.clone());
    }
    if let Ok(t) = std::env::var("FIREBREAK_ADMIN_TOKEN") {
        return Ok(t);
    }
    let cfg = Config::load(&b.config)
        .map_err(|e| CliError::Usage(format!("no --token, FIREBREAK_TOKEN or FIREBREAK_ADMIN_TOKEN, and no config to find admin.token: {e}")))?;
    let path = cfg.server.data_dir.join("admin.token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))
}

/// Calls the broker with the caller's bearer credential and an optional JSON body.
pub(crate) async fn broker_call(
    b: &BrokerArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let url = broker_url(b.broker.as_deref(), &b.config)?;
    let token = admin_credential(b)?;
    let headers = [("authorization", format!("Bearer {token}"))];
    let body = body.map(|v| ("application/json", v.to_string().into_bytes()));
    let reply = Client::new()
        .map_err(failed)?
        .send(method, &format!("{url}{path}"), &headers, body)
        .await
        .map_err(failed)?;
    let v = reply.json();
    if !reply.status.is_success() {
        let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
        let title = v.get("title").and_then(Value::as_str).unwrap_or("");
        return Err(CliError::Failed(format!(
            "{} {title} {detail}",
            reply.status.as_u16()
        )));
    }
    Ok(v)
}

async fn admin(b: &BrokerArgs, method: Method, path: &str) -> Result<Value, CliError> {
    broker_call(b, method, path, None).await
}

fn check(path: &Path, out: Output) -> Result<(), CliError> {
    let cfg = Config::load(path)?;
    if let Some(t) = cfg.gateway.clone() {
        crate::gateway_cmd::gateway_config(t, path)?;
    }
    if let Some(t) = cfg.egress.clone() {
        crate::gateway_cmd::egress_config(t, path)?;
    }
    // The policies too: generated from grants plus the [policy] dir, validated against the schema.
    let pdp =
        firebreak_server::decider::load_pdp(&cfg).map_err(|e| policy_config_error(&cfg, &e))?;
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    let v = json!({
        "file": path.display().to_string(),
        "issuers": cfg.issuers.len(),
        "agents": cfg.agents.len(),
        "targets": cfg.targets.len() - 1,
        "clients": cfg.clients.len(),
        "policies": pdp.policy_count(),
        "policy_version": pdp.version(),
        "warnings": cfg.warnings,
        "valid": true,
    });
    print_value(out, &v, |_| {
        format!(
            "{}: ok ({} issuers, {} agents, {} targets, {} clients, {} warnings)\n",
            path.display(),
            cfg.issuers.len(),
            cfg.agents.len(),
            cfg.targets.len() - 1,
            cfg.clients.len(),
            cfg.warnings.len()
        )
    });
    Ok(())
}

fn policy_config_error(cfg: &Config, e: &firebreak_policy::PolicyError) -> CliError {
    CliError::Config(ConfigError {
        file: cfg.file.clone(),
        line: None,
        rule: "policy".into(),
        reason: e.to_string(),
    })
}

/// Opens the store a config names, with the audit writer (creating the audit key at first start).
/// Several replicas on one PostgreSQL append to one broker chain, so they must share one audit
/// key (`<data_dir>/audit-key*`).
pub async fn open_store(
    cfg: &Config,
    clock: Arc<dyn firebreak_core::Clock>,
) -> Result<Arc<dyn Store>, CliError> {
    let url = &cfg.store.url;
    let settings = |key| firebreak_store::AuditSettings {
        chain: firebreak_store::BROKER_CHAIN.to_owned(),
        key,
        checkpoint_every: cfg.audit.checkpoint_every,
        checkpoint_interval_ms: cfg.audit.checkpoint_interval.as_millis(),
        clock,
        queue: 8192,
    };
    if let Some(p) = SqliteStore::path_from_url(url) {
        let key =
            firebreak_server::audit::load_or_create_key(&cfg.server.data_dir).map_err(failed)?;
        return Ok(Arc::new(
            SqliteStore::open(&p, settings(key)).map_err(failed)?,
        ));
    }
    if cfg.store.is_postgres() {
        let key =
            firebreak_server::audit::load_or_create_key(&cfg.server.data_dir).map_err(failed)?;
        let store = PgStore::connect(url, settings(key), pg_pool(cfg))
            .await
            .map_err(failed)?;
        return Ok(Arc::new(store));
    }
    Err(CliError::Config(ConfigError {
        file: cfg.file.clone(),
        line: None,
        rule: "store.url".into(),
        reason: format!("{url:?}: must be sqlite://PATH or postgres://…"),
    }))
}

/// The `[store]` pool settings for PostgreSQL.
pub fn pg_pool(cfg: &Config) -> PgPoolSettings {
    PgPoolSettings {
        size: cfg.store.pool_size,
        connect_timeout: cfg.store.connect_timeout.as_std(),
        statement_timeout: cfg.store.statement_timeout.as_std(),
        acquire_timeout: cfg.store.connect_timeout.as_std(),
        schema: None,
    }
}

async fn serve(path: &Path) -> Result<(), CliError> {
    let cfg = Config::load(path)?;
    let gateway = cfg
        .gateway
        .clone()
        .map(|t| crate::gateway_cmd::gateway_config(t, path))
        .transpose()?;
    let egress = cfg
        .egress
        .clone()
        .map(|t| crate::gateway_cmd::egress_config(t, path))
        .transpose()?;
    if egress.is_some() && gateway.is_none() {
        return Err(CliError::Config(ConfigError {
            file: path.to_owned(),
            line: None,
            rule: "egress".into(),
            reason: "[egress] uses [gateway]'s broker and client settings; add [gateway]".into(),
        }));
    }
    let clock: Arc<dyn firebreak_core::Clock> = Arc::new(SystemClock);
    let store = open_store(&cfg, Arc::clone(&clock)).await?;
    let listen = cfg.server.listen;
    #[cfg(feature = "danger-bench-no-audit")]
    tracing::error!(
        "DANGER: benchmark build without audit records (feature danger-bench-no-audit); never run this in production"
    );
    let store_for_gateway = Arc::clone(&store);
    let broker = match Broker::new(cfg, store, Arc::clone(&clock)).await {
        Ok(b) => b,
        // A policy set that does not load is a configuration error: exit 78.
        Err(firebreak_server::StartError::Policy(e)) => {
            return Err(CliError::Config(firebreak_server::ConfigError {
                file: path.to_owned(),
                line: None,
                rule: "policy".into(),
                reason: e.to_string(),
            }));
        }
        Err(e) => return Err(failed(e)),
    };
    // SIGHUP reloads the policy set; a bad set keeps the old one (and says why in the log).
    #[cfg(unix)]
    {
        let b = Arc::clone(&broker);
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = b.reload_policy().await;
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| failed(format!("bind {listen}: {e}")))?;
    let local = listener.local_addr().map_err(failed)?;
    tracing::info!(%local, issuer = broker.config().server.public_url, "broker listening");
    // Inside `serve` the gateway writes to the broker's own chain (DESIGN.md §8); it still
    // learns revocations and policy over the broker's HTTP API, so there is one code path.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gw_task = match gateway {
        Some(g) => {
            let mut rx = stop_rx.clone();
            let (gw, task) = crate::gateway_cmd::start(
                g,
                Arc::clone(&store_for_gateway),
                firebreak_store::BROKER_CHAIN.to_owned(),
                Arc::clone(&clock),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )
            .await?;
            if let Some((listen, ecfg)) = egress {
                let mut rx = stop_rx.clone();
                crate::gateway_cmd::start_egress(
                    listen,
                    ecfg,
                    Arc::clone(gw.enforcer()),
                    Arc::clone(&store_for_gateway),
                    async move {
                        let _ = rx.wait_for(|s| *s).await;
                    },
                )
                .await?;
            }
            Some(task)
        }
        None => None,
    };
    let r = firebreak_server::serve(broker, listener, async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await
    .map_err(failed);
    drop(stop_rx);
    if let Some(t) = gw_task {
        let _ = t.await;
    }
    r
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Decodes and explains a token; verifies it against `<broker>/jwks.json` when given.
pub async fn inspect(token: &str, broker: Option<&str>, out: Output) -> Result<(), CliError> {
    let jwt = UnverifiedJwt::parse(token, &firebreak_token::Limits::default())
        .map_err(|e| failed(format!("not a token Firebreak accepts: {e}")))?;
    let verified: Result<String, String> = match broker {
        None => Err("not verified: no --broker or FIREBREAK_URL given".into()),
        Some(url) => {
            let url = url.trim_end_matches('/');
            match Client::new()
                .map_err(failed)?
                .get(&format!("{url}/jwks.json"), None)
                .await
            {
                Err(e) => Err(format!("not verified: {e}")),
                Ok(r) => match KeySet::from_jwks_json(&r.body) {
                    Err(e) => Err(format!("not verified: bad JWKS: {e}")),
                    Ok((set, _)) => match jwt.header().kid.as_deref().and_then(|k| set.get(k)) {
                        None => Err("NOT VERIFIED: no published key has this kid".into()),
                        Some(k) => match verify_signature(&jwt, k, &[k.alg()]) {
                            Ok(()) => Ok(format!(
                                "signature verified with {url}/jwks.json key {}",
                                k.kid()
                            )),
                            Err(e) => Err(format!("SIGNATURE INVALID: {e}")),
                        },
                    },
                },
            }
        }
    };
    let now = firebreak_core::Clock::now(&SystemClock).as_secs();
    let claims = jwt.claims();
    let time = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_i64)
            .map(|t| format_rfc3339_millis(UnixTime::from_secs(t)))
    };
    let v = json!({
        "header": { "alg": jwt.header().alg, "typ": jwt.header().typ, "kid": jwt.header().kid },
        "claims": claims,
        "verified": verified.is_ok(),
        "verification": match &verified { Ok(s) | Err(s) => s },
        "expired": claims.get("exp").and_then(Value::as_i64).is_none_or(|e| e <= now),
    });
    print_value(out, &v, |v| {
        let mut s = format!(
            "header:   alg={} typ={} kid={}\n",
            jwt.header().alg,
            jwt.header().typ.as_deref().unwrap_or("-"),
            jwt.header().kid.as_deref().unwrap_or("-")
        );
        for (k, x) in claims {
            s.push_str(&format!("  {k:<10} {x}\n"));
        }
        if let (Some(i), Some(e)) = (time("iat"), time("exp")) {
            s.push_str(&format!(
                "issued {i}, expires {e}{}\n",
                if v["expired"] == true {
                    " (EXPIRED)"
                } else {
                    ""
                }
            ));
        }
        s.push_str(&format!("{}\n", v["verification"].as_str().unwrap_or("")));
        s
    });
    // Verification attempted and failed is a failure; not attempted is reported, not failed.
    match verified {
        Err(msg) if broker.is_some() => Err(CliError::Failed(msg)),
        _ => Ok(()),
    }
}
