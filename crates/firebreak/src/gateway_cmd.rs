//! Wiring of the enforcement points: the gateway inside `serve` (writing to the broker's chain)
//! and `firebreak gateway --config` standalone (its own durable chain in its `data_dir`).

use std::path::Path;
use std::sync::Arc;

use firebreak_core::Clock;
use firebreak_enforce::{EnforceConfig, Enforcer};
use firebreak_gateway::{Gateway, GatewayConfig};
use firebreak_server::ConfigError;
use firebreak_store::{SqliteStore, Store};

use crate::commands::{CliError, failed};

/// Checks a `[gateway]` table, reading its secrets from the environment; 78 on error.
pub fn gateway_config(table: toml::Table, file: &Path) -> Result<GatewayConfig, CliError> {
    let env = |k: &str| std::env::var(k).ok();
    GatewayConfig::from_toml(table, &env).map_err(|e| {
        CliError::Config(ConfigError {
            file: file.to_owned(),
            line: None,
            rule: format!("gateway {}", e.rule),
            reason: e.reason,
        })
    })
}

/// Checks an `[egress]` table; 78 on error.
pub fn egress_config(
    table: toml::Table,
    file: &Path,
) -> Result<(std::net::SocketAddr, firebreak_egress::EgressConfig), CliError> {
    let err = |reason: String| {
        CliError::Config(ConfigError {
            file: file.to_owned(),
            line: None,
            rule: "egress".into(),
            reason,
        })
    };
    let section: firebreak_egress::EgressSection = table
        .try_into()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let listen = section.listen;
    let cfg = firebreak_egress::EgressConfig::try_from(section).map_err(|e| err(e.to_string()))?;
    Ok((listen, cfg))
}

/// Starts the egress proxy on the gateway's enforcement core (it shares the broker link, the
/// event stream and the policy bundle).
pub async fn start_egress(
    listen: std::net::SocketAddr,
    cfg: firebreak_egress::EgressConfig,
    enforcer: Arc<Enforcer>,
    audit: Arc<dyn Store>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| failed(format!("bind {listen}: {e}")))?;
    let local = listener.local_addr().map_err(failed)?;
    tracing::info!(%local, target = cfg.target, "egress proxy listening");
    Ok(tokio::spawn(firebreak_egress::serve(
        listener,
        cfg,
        enforcer,
        audit,
        Arc::new(firebreak_egress::SystemResolver),
        shutdown,
    )))
}

/// Starts the enforcement core and the gateway listener; returns the gateway and the serve task.
pub async fn start(
    cfg: GatewayConfig,
    audit: Arc<dyn Store>,
    chain: String,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Arc<Gateway>, tokio::task::JoinHandle<std::io::Result<()>>), CliError> {
    let enforcer = Enforcer::start(
        EnforceConfig {
            broker: cfg.broker.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            stale_after: cfg.stale_after.as_std(),
            danger_allow_http: cfg.danger_allow_http,
            leeway_secs: 60,
        },
        clock,
    )
    .map_err(failed)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| failed(format!("bind {}: {e}", cfg.listen)))?;
    let local = listener.local_addr().map_err(failed)?;
    tracing::info!(%local, broker = cfg.broker, routes = cfg.routes.len(), "gateway listening");
    let gw = Gateway::new(cfg, enforcer, audit, chain);
    let task = tokio::spawn(firebreak_gateway::serve(
        Arc::clone(&gw),
        listener,
        shutdown,
    ));
    Ok((gw, task))
}

/// `firebreak gateway --config FILE`: a file holding `[gateway]` (with `data_dir`).
pub async fn standalone(path: &Path) -> Result<(), CliError> {
    let cfg_err = |rule: &str, reason: String| {
        CliError::Config(ConfigError {
            file: path.to_owned(),
            line: None,
            rule: rule.into(),
            reason,
        })
    };
    let text = std::fs::read_to_string(path).map_err(|e| cfg_err("file", e.to_string()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| cfg_err("syntax", e.to_string()))?;
    if let Some(k) = table
        .keys()
        .find(|k| k.as_str() != "gateway" && k.as_str() != "egress")
    {
        return Err(cfg_err(
            k,
            "a standalone gateway config holds only [gateway] and [egress]".into(),
        ));
    }
    let egress = match table.remove("egress") {
        Some(toml::Value::Table(t)) => Some(egress_config(t, path)?),
        Some(_) => return Err(cfg_err("egress", "must be a table".into())),
        None => None,
    };
    let Some(toml::Value::Table(section)) = table.remove("gateway") else {
        return Err(cfg_err("gateway", "no [gateway] table".into()));
    };
    let cfg = gateway_config(section, path)?;
    let Some(data_dir) = cfg.data_dir.clone() else {
        return Err(cfg_err(
            "gateway data_dir",
            "a standalone gateway needs data_dir for its own audit chain".into(),
        ));
    };
    let clock: Arc<dyn Clock> = Arc::new(firebreak_core::SystemClock);
    std::fs::create_dir_all(&data_dir).map_err(failed)?;
    let key = firebreak_server::audit::load_or_create_key(&data_dir).map_err(failed)?;
    let settings = firebreak_store::AuditSettings {
        key,
        checkpoint_every: 1000,
        checkpoint_interval_ms: 10_000,
        clock: Arc::clone(&clock),
        queue: 8192,
    };
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&data_dir.join("gateway.db"), settings).map_err(failed)?);
    let chain = cfg.client_id.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (gw, task) = start(cfg, Arc::clone(&store), chain, clock, stopped()).await?;
    let egress_task = match egress {
        Some((listen, ecfg)) => {
            Some(start_egress(listen, ecfg, Arc::clone(gw.enforcer()), store, stopped()).await?)
        }
        None => None,
    };
    crate::commands::shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(t) = egress_task {
        let _ = t.await;
    }
    task.await.map_err(failed)?.map_err(failed)
}
