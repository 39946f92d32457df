//! `firebreak audit …`: offline verification, export (JSONL, OCSF), tail, session replay and
//! the pinned key. These read the database file (or the shared PostgreSQL) read-only, so they
//! work while brokers run, and they trust only the pinned public key (or `--key`), never a key
//! found in the store.

use std::collections::BTreeSet;
use std::path::Path;

use firebreak_audit::{AuditPublicKey, VerifyOptions, verify_items, verify_lines};
use firebreak_core::SessionId;
use firebreak_server::Config;
use firebreak_store::{AuditLine, PgStore, SessionRow, SqliteStore, Store};
use serde_json::{Value, json};

use crate::cli::{AuditCommand, ExportFormat, Output};
use crate::commands::CliError;

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Where the audit log is read from: the database file read-only, or the shared PostgreSQL
/// through the `Store` trait's audit read methods (read-only transactions, no audit writer).
enum Source {
    Sqlite(firebreak_store::sqlite::AuditReader),
    Pg(PgStore),
}

impl Source {
    async fn chains(&self) -> Result<Vec<String>, CliError> {
        match self {
            Self::Sqlite(r) => r.chains().map_err(failed),
            Self::Pg(s) => s.audit_chains().await.map_err(failed),
        }
    }

    async fn lines(&self, chain: &str, after: u64, limit: u32) -> Result<Vec<AuditLine>, CliError> {
        match self {
            Self::Sqlite(r) => r.lines(chain, after, limit).map_err(failed),
            Self::Pg(s) => s.audit_lines(chain, after, limit).await.map_err(failed),
        }
    }

    async fn for_sessions(&self, ids: &[SessionId]) -> Result<Vec<AuditLine>, CliError> {
        match self {
            Self::Sqlite(r) => r.for_sessions(ids).map_err(failed),
            Self::Pg(s) => s.audit_for_sessions(ids.to_vec()).await.map_err(failed),
        }
    }

    async fn session(&self, id: &SessionId) -> Result<Option<SessionRow>, CliError> {
        match self {
            Self::Sqlite(r) => r.session(id).map_err(failed),
            Self::Pg(s) => s.session(id).await.map_err(failed),
        }
    }

    async fn children(&self, id: &SessionId) -> Result<Vec<SessionRow>, CliError> {
        match self {
            Self::Sqlite(r) => r.children(id).map_err(failed),
            Self::Pg(s) => s.children(id).await.map_err(failed),
        }
    }
}

async fn reader(config: &Path) -> Result<(Config, Source), CliError> {
    let cfg = Config::load(config)?;
    if cfg.store.is_postgres() {
        let s = PgStore::connect_reader(&cfg.store.url, crate::commands::pg_pool(&cfg))
            .await
            .map_err(failed)?;
        return Ok((cfg, Source::Pg(s)));
    }
    let path = SqliteStore::path_from_url(&cfg.store.url).ok_or_else(|| {
        CliError::Failed(format!(
            "{}: not a sqlite:// or postgres:// store",
            cfg.store.url
        ))
    })?;
    let r = SqliteStore::open_reader(&path).map_err(failed)?;
    Ok((cfg, Source::Sqlite(r)))
}

async fn all_lines(r: &Source, chain: Option<&str>) -> Result<Vec<AuditLine>, CliError> {
    let chains = match chain {
        Some(c) => vec![c.to_owned()],
        None => r.chains().await?,
    };
    // One query per chain, as the broker's export does: verification needs every line anyway.
    let mut out = Vec::new();
    for c in chains {
        out.extend(r.lines(&c, 0, u32::MAX).await?);
    }
    Ok(out)
}

/// Runs one audit command.
pub async fn run(cmd: AuditCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify {
            file,
            key,
            strict,
            config,
        } => verify(file.as_deref(), key.as_deref(), strict, &config, out).await,
        AuditCommand::Export {
            format,
            chain,
            config,
        } => {
            let (_, r) = reader(&config).await?;
            for l in all_lines(&r, chain.as_deref()).await? {
                match format {
                    ExportFormat::Jsonl => println!("{}", l.json),
                    ExportFormat::Ocsf => {
                        if !l.checkpoint {
                            let v: Value = serde_json::from_str(&l.json).map_err(failed)?;
                            println!("{}", ocsf(&v));
                        }
                    }
                }
            }
            Ok(())
        }
        AuditCommand::Tail {
            follow,
            lines,
            config,
        } => {
            let (_, r) = reader(&config).await?;
            let chain = firebreak_store::BROKER_CHAIN;
            let all = all_lines(&r, Some(chain)).await?;
            let records: Vec<&AuditLine> = all.iter().filter(|l| !l.checkpoint).collect();
            let skip = records
                .len()
                .saturating_sub(usize::try_from(lines).unwrap_or(usize::MAX));
            let mut last = 0;
            for l in records.iter().skip(skip) {
                print_line(l, out);
                last = l.seq;
            }
            if let Some(l) = records.last() {
                last = last.max(l.seq);
            }
            if !follow {
                return Ok(());
            }
            // One signal listener for the whole follow, so a Ctrl-C between polls is not lost.
            let stop = crate::commands::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    () = &mut stop => return Ok(()),
                }
                for l in r.lines(chain, last, 10_000).await? {
                    if !l.checkpoint {
                        print_line(&l, out);
                        last = l.seq;
                    }
                }
            }
        }
        AuditCommand::Replay { session, config } => replay(&session, &config, out).await,
        AuditCommand::Key { config } => {
            let cfg = Config::load(&config)?;
            let k = firebreak_server::audit::pinned_public(&cfg.server.data_dir).map_err(failed)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k.to_jwk()).unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn print_line(l: &AuditLine, out: Output) {
    match out {
        Output::Json => println!("{}", l.json),
        Output::Human => {
            let v: Value = serde_json::from_str(&l.json).unwrap_or(Value::Null);
            println!("{}", summary(&v));
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn summary(v: &Value) -> String {
    let reasons = v.get("reasons").map(reasons_text).unwrap_or_default();
    format!(
        "{:>6} {} {:<12} {:<8} agent={} session={} target={} {}{}",
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s(v, "time"),
        s(v, "kind"),
        s(v, "decision"),
        s(v, "agent"),
        s(v, "session"),
        s(v, "target"),
        reasons,
        v.get("policy_version")
            .and_then(Value::as_str)
            .map(|p| format!(" policy_version={p}"))
            .unwrap_or_default()
    )
}

fn reasons_text(r: &Value) -> String {
    let items: Vec<String> = r
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            match (
                x.get("policy").and_then(Value::as_str),
                x.get("code").and_then(Value::as_str),
            ) {
                (Some(p), _) => format!("policy:{p}"),
                (None, Some(c)) => format!("code:{c}"),
                _ => x.to_string(),
            }
        })
        .collect();
    if items.is_empty() {
        String::new()
    } else {
        format!("reasons=[{}]", items.join(", "))
    }
}

fn load_keys(
    key: Option<&Path>,
    pinned_dir: Option<&Path>,
) -> Result<Vec<AuditPublicKey>, CliError> {
    let k = match (key, pinned_dir) {
        (Some(k), _) => firebreak_server::audit::read_public(k),
        (None, Some(dir)) => firebreak_server::audit::pinned_public(dir),
        (None, None) => {
            return Err(CliError::Usage(
                "--file needs --key: an export carries no key worth trusting".into(),
            ));
        }
    }
    .map_err(failed)?;
    Ok(vec![k])
}

async fn verify(
    file: Option<&Path>,
    key: Option<&Path>,
    strict: bool,
    config: &Path,
    out: Output,
) -> Result<(), CliError> {
    let report = match file {
        Some(f) => {
            let keys = load_keys(key, None)?;
            let opts = VerifyOptions {
                keys: &keys,
                strict,
            };
            let fh = std::fs::File::open(f).map_err(|e| failed(format!("{}: {e}", f.display())))?;
            verify_lines(std::io::BufReader::new(fh), &opts)
        }
        None => {
            // Each chain is verified under its own key only: the broker's chain under the pinned
            // key (or --key), a gateway's chain under the key registered for that client. A
            // gateway key can therefore never vouch for the broker's chain.
            let (cfg, r) = reader(config).await?;
            let broker_keys = load_keys(key, Some(&cfg.server.data_dir))?;
            let mut total = firebreak_audit::Report {
                records: 0,
                checkpoints: 0,
                chains: Vec::new(),
                warnings: Vec::new(),
            };
            let mut failure = None;
            for chain in r.chains().await? {
                let keys: Vec<AuditPublicKey> = if chain == firebreak_store::BROKER_CHAIN {
                    broker_keys.clone()
                } else {
                    match cfg
                        .clients
                        .iter()
                        .find(|c| c.id == chain)
                        .and_then(|c| c.audit_key.clone())
                    {
                        Some(k) => vec![k],
                        None => {
                            return Err(CliError::Failed(format!(
                                "audit verification FAILED: chain {chain} has no [[client]] audit_key in the config to verify it with"
                            )));
                        }
                    }
                };
                let opts = VerifyOptions {
                    keys: &keys,
                    strict,
                };
                let mut items = Vec::new();
                for l in all_lines(&r, Some(&chain)).await? {
                    // A row whose text no longer parses is tampering too; the verifier names it.
                    items.push(
                        serde_json::from_str::<Value>(&l.json).unwrap_or(Value::String(l.json)),
                    );
                }
                match verify_items(&items, &opts) {
                    Ok(rep) => {
                        total.records += rep.records;
                        total.checkpoints += rep.checkpoints;
                        total.chains.extend(rep.chains);
                        total.warnings.extend(rep.warnings);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                Some(e) => Err(e),
                None => Ok(total),
            }
        }
    };
    match report {
        Ok(rep) => {
            for w in &rep.warnings {
                eprintln!("warning: {w}");
            }
            match out {
                Output::Json => println!(
                    "{}",
                    json!({ "ok": true, "records": rep.records, "checkpoints": rep.checkpoints, "chains": rep.chains.iter().map(|c| json!({"chain": c.chain, "records": c.records, "checkpoints": c.checkpoints, "unanchored": c.unanchored})).collect::<Vec<_>>(), "warnings": rep.warnings })
                ),
                Output::Human => println!(
                    "audit log OK: {} records and {} checkpoints verified in {} chain(s)",
                    rep.records,
                    rep.checkpoints,
                    rep.chains.len()
                ),
            }
            Ok(())
        }
        Err(e) => Err(CliError::Failed(format!("audit verification FAILED: {e}"))),
    }
}

async fn replay(session: &str, config: &Path, out: Output) -> Result<(), CliError> {
    let (_, r) = reader(config).await?;
    let id =
        SessionId::try_from(session).map_err(|e| CliError::Usage(format!("session id: {e}")))?;
    let this = r
        .session(&id)
        .await?
        .ok_or_else(|| CliError::Failed(format!("no session {session}")))?;
    // Lineage: the ancestors up to the root, then every descendant.
    let mut ancestors = Vec::new();
    let mut cur = this.parent.clone();
    while let Some(p) = cur {
        match r.session(&p).await? {
            Some(row) => {
                cur = row.parent.clone();
                ancestors.push(row);
            }
            None => break,
        }
    }
    ancestors.reverse();
    let mut descendants = Vec::new();
    let mut stack = vec![id.clone()];
    while let Some(p) = stack.pop() {
        for c in r.children(&p).await? {
            stack.push(c.id.clone());
            descendants.push(c);
        }
    }
    let mut ids: BTreeSet<SessionId> = BTreeSet::new();
    ids.insert(id.clone());
    ids.extend(ancestors.iter().map(|a| a.id.clone()));
    ids.extend(descendants.iter().map(|d| d.id.clone()));
    let mut records: Vec<Value> = r
        .for_sessions(&ids.iter().cloned().collect::<Vec<_>>())
        .await?
        .iter()
        .filter_map(|l| serde_json::from_str(&l.json).ok())
        .collect();
    records.sort_by_key(|v| {
        (
            v.get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        )
    });
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "session": this,
                "ancestors": ancestors,
                "descendants": descendants,
                "records": records,
            }))
            .unwrap_or_default()
        ),
        Output::Human => {
            println!(
                "session {} (agent {}, target {}, depth {})",
                this.id, this.agent, this.target, this.depth
            );
            println!("lineage:");
            for a in &ancestors {
                println!("  ancestor    {} depth {} agent {}", a.id, a.depth, a.agent);
            }
            println!(
                "  this        {} depth {}{}",
                this.id,
                this.depth,
                if this.revoked_at.is_some() {
                    " (revoked)"
                } else {
                    ""
                }
            );
            for d in &descendants {
                println!(
                    "  descendant  {} depth {} agent {}{}",
                    d.id,
                    d.depth,
                    d.agent,
                    if d.revoked_at.is_some() {
                        " (revoked)"
                    } else {
                        ""
                    }
                );
            }
            println!("timeline ({} records):", records.len());
            for v in &records {
                println!("  {}", summary(v));
            }
        }
    }
    Ok(())
}

/// One record as an OCSF 1.3 event: exchanges are Authorize Session (3003) events, everything
/// else API Activity (6003); the original record rides along in `unmapped`.
fn ocsf(v: &Value) -> Value {
    let kind = s(v, "kind");
    let (class_uid, category_uid, class_name, activity_id) = match kind {
        "exchange" => (3003, 3, "Authorize Session", 1),
        "revocation" => (3003, 3, "Authorize Session", 99),
        _ => (6003, 6, "API Activity", 99),
    };
    let success = v.get("decision").and_then(Value::as_str) != Some("deny");
    let time = v.get("time").and_then(Value::as_str).unwrap_or("");
    json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": if success { 1 } else { 3 },
        "status": if success { "Success" } else { "Failure" },
        "status_id": if success { 1 } else { 2 },
        "time_dt": time,
        "message": format!("firebreak {kind}"),
        "actor": { "user": { "uid": v.get("agent"), "type": "Service" } },
        "session": { "uid": v.get("session") },
        "metadata": {
            "version": "1.3.0",
            "product": { "name": "Firebreak", "vendor_name": "Firebreak" },
            "uid": v.get("hash"),
            "sequence": v.get("seq"),
            "log_name": v.get("chain"),
        },
        "unmapped": v,
    })
}
