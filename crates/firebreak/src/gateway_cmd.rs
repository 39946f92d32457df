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

/// How long a stopping gateway keeps trying to ship what its chain holds beyond the broker's
/// copy. What is left ships at the next start: the records are durable in `data_dir`.
const FINAL_SHIP_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

fn file_err(path: &Path) -> impl Fn(&str, String) -> CliError + '_ {
    move |rule: &str, reason: String| {
        CliError::Config(ConfigError {
            file: path.to_owned(),
            line: None,
            rule: rule.into(),
            reason,
        })
    }
}

/// Reads a standalone gateway's file: only `[gateway]` and `[egress]` tables.
fn read_standalone(path: &Path) -> Result<toml::Table, CliError> {
    let cfg_err = file_err(path);
    let text = std::fs::read_to_string(path).map_err(|e| cfg_err("file", e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| cfg_err("syntax", e.to_string()))?;
    if let Some(k) = table
        .keys()
        .find(|k| k.as_str() != "gateway" && k.as_str() != "egress")
    {
        return Err(cfg_err(
            k,
            "a standalone gateway config holds only [gateway] and [egress]".into(),
        ));
    }
    Ok(table)
}

/// `firebreak gateway --config FILE --print-audit-key`: the public half of the key that signs
/// the gateway's checkpoints, as the broker's `[[client]] audit_key` takes it. Only `data_dir`
/// is read, so this works before the client secret is in the environment; the key pair is made
/// when there is none yet, so it can be registered before the first start.
pub fn print_audit_key(path: &Path, out: crate::cli::Output) -> Result<(), CliError> {
    let cfg_err = file_err(path);
    let table = read_standalone(path)?;
    let data_dir = table
        .get("gateway")
        .and_then(|g| g.get("data_dir"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            cfg_err(
                "gateway data_dir",
                "a standalone gateway needs data_dir for its own audit chain".into(),
            )
        })?;
    let key = firebreak_server::audit::load_or_create_key(Path::new(data_dir)).map_err(failed)?;
    let jwk = key.public().to_jwk();
    match out {
        crate::cli::Output::Json => {
            println!("{}", serde_json::to_string_pretty(&jwk).map_err(failed)?)
        }
        crate::cli::Output::Human => {
            let x = jwk
                .get("x")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            println!("audit_key = {{ kty = \"OKP\", crv = \"Ed25519\", x = \"{x}\" }}");
        }
    }
    Ok(())
}

/// `firebreak gateway --config FILE`: a file holding `[gateway]` (with `data_dir`).
pub async fn standalone(path: &Path) -> Result<(), CliError> {
    let cfg_err = file_err(path);
    let mut table = read_standalone(path)?;
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
    // Its own chain, named by its client id: the name the broker files it under at ingest.
    let chain = cfg.client_id.clone();
    let settings = firebreak_store::AuditSettings {
        chain: chain.clone(),
        key,
        checkpoint_every: 1000,
        checkpoint_interval_ms: cfg.checkpoint_interval.as_millis(),
        clock: Arc::clone(&clock),
        queue: 8192,
    };
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&data_dir.join("gateway.db"), settings).map_err(failed)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (gw, task) = start(cfg, Arc::clone(&store), chain.clone(), clock, stopped()).await?;
    let shipper = firebreak_gateway::ship::Shipper::new(
        Arc::clone(&store),
        gw.enforcer().link().clone(),
        firebreak_gateway::ship::ShipConfig::new(chain, data_dir.join("shipped.seq")),
    );
    gw.report_shipping(shipper.metrics());
    let (ship_stop, ship_stopped) = tokio::sync::watch::channel(false);
    let ship_task = tokio::spawn(shipper.run(ship_stopped, FINAL_SHIP_WITHIN));
    let egress_task = match egress {
        Some((listen, ecfg)) => Some(
            start_egress(
                listen,
                ecfg,
                Arc::clone(gw.enforcer()),
                Arc::clone(&store),
                stopped(),
            )
            .await?,
        ),
        None => None,
    };
    crate::commands::shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Some(t) = egress_task {
        let _ = t.await;
    }
    let served = task.await;
    // The listeners have drained, so the chain holds its last record: ship it before exiting.
    let _ = ship_stop.send(true);
    let _ = ship_task.await;
    served.map_err(failed)?.map_err(failed)
}
