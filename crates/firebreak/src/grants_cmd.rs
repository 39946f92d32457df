//! `firebreak policy test`, `elevation …`, `breakglass …`, `approver token`.

use firebreak_server::Config;
use http::Method;
use serde_json::{Value, json};

use crate::cli::{ApproverCommand, BreakglassCommand, ElevationCommand, Output, PolicyCommand};
use crate::commands::{CliError, broker_call, print_value};

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// `firebreak policy test`.
pub fn policy(cmd: PolicyCommand, out: Output) -> Result<(), CliError> {
    let PolicyCommand::Test { dir, config } = cmd;
    let mut cfg = Config::load(&config)?;
    if let Some(d) = dir {
        cfg.policy_dir = Some(d);
    }
    let Some(dir) = cfg.policy_dir.clone() else {
        return Err(CliError::Usage(
            "no policy dir: pass one, or set [policy] dir in the config".into(),
        ));
    };
    let pdp = firebreak_server::decider::load_pdp(&cfg).map_err(|e| config_error(&cfg, &e))?;
    let report = firebreak_policy::run_tests(&dir, &pdp).map_err(|e| config_error(&cfg, &e))?;
    match out {
        Output::Json => println!(
            "{}",
            json!({ "passed": report.passed(), "failed": report.failed(), "policy_version": pdp.version() })
        ),
        Output::Human => print!("{}", report.render_table()),
    }
    if report.failed() > 0 {
        return Err(CliError::Failed(format!(
            "{} policy test case(s) failed",
            report.failed()
        )));
    }
    Ok(())
}

fn config_error(cfg: &Config, e: &firebreak_policy::PolicyError) -> CliError {
    CliError::Config(firebreak_server::ConfigError {
        file: cfg.file.clone(),
        line: None,
        rule: "policy".into(),
        reason: e.to_string(),
    })
}

/// `firebreak elevation …`.
pub async fn elevation(cmd: ElevationCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        ElevationCommand::Request {
            agent,
            action,
            target,
            reason,
            justification,
            duration,
            single_use,
            session,
            broker,
        } => {
            let body = json!({
                "agent": agent, "action": action, "target": target, "reason_code": reason,
                "justification": justification, "duration": duration, "single_use": single_use, "session": session,
            });
            let v = broker_call(&broker, Method::POST, "/v1/elevations", Some(body)).await?;
            print_value(out, &v, |v| {
                format!(
                    "elevation {} {}{}\n",
                    v["id"].as_str().unwrap_or(""),
                    v["status"].as_str().unwrap_or(""),
                    v["approval_id"]
                        .as_str()
                        .map(|a| format!(" (approval {a} queued)"))
                        .unwrap_or_default()
                )
            });
            Ok(())
        }
        ElevationCommand::List { pending, broker } => {
            let path = if pending {
                "/v1/approvals?pending=true"
            } else {
                "/v1/elevations"
            };
            let v = broker_call(&broker, Method::GET, path, None).await?;
            print_value(out, &v, |v| {
                let mut s = String::new();
                for x in v["elevations"]
                    .as_array()
                    .or(v["approvals"].as_array())
                    .into_iter()
                    .flatten()
                {
                    s.push_str(&format!(
                        "{:<20} {:<9} agent={} action={} target={} reason={} {}\n",
                        x["id"].as_str().unwrap_or(""),
                        x["status"].as_str().unwrap_or(""),
                        x["agent"].as_str().unwrap_or("-"),
                        x["action"].as_str().unwrap_or("-"),
                        x["target"].as_str().unwrap_or("-"),
                        x["reason_code"].as_str().unwrap_or("-"),
                        x["expires_at"].as_str().unwrap_or("")
                    ));
                }
                s
            });
            Ok(())
        }
        ElevationCommand::Approve { id, why, broker } => {
            decide(&id, "approve", &why, &broker, out).await
        }
        ElevationCommand::Deny { id, why, broker } => decide(&id, "deny", &why, &broker, out).await,
    }
}

async fn decide(
    id: &str,
    verb: &str,
    why: &str,
    broker: &crate::cli::BrokerArgs,
    out: Output,
) -> Result<(), CliError> {
    let path = format!(
        "/v1/approvals/{}/{verb}",
        firebreak_server::form::encode(id)
    );
    let v = broker_call(broker, Method::POST, &path, Some(json!({ "why": why }))).await?;
    print_value(out, &v, |v| {
        format!(
            "elevation {} is now {}{}\n",
            v["id"].as_str().unwrap_or(""),
            v["status"].as_str().unwrap_or(""),
            v["expires_at"]
                .as_str()
                .map(|e| format!(" until {e}"))
                .unwrap_or_default()
        )
    });
    Ok(())
}

/// `firebreak breakglass …`.
pub async fn breakglass(cmd: BreakglassCommand, out: Output) -> Result<(), CliError> {
    match cmd {
        BreakglassCommand::Open {
            agent,
            reason,
            ttl,
            justification,
            broker,
        } => {
            let body = json!({ "agent": agent, "reason_code": reason, "duration": ttl, "justification": justification });
            let v = broker_call(&broker, Method::POST, "/v1/breakglass", Some(body)).await?;
            print_value(out, &v, |v| {
                format!(
                    "break-glass {} open for {} until {}\n",
                    v["id"].as_str().unwrap_or(""),
                    v["agent"].as_str().unwrap_or(""),
                    v["ends_at"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
        BreakglassCommand::Close { id, broker } => {
            let v = broker_call(
                &broker,
                Method::DELETE,
                &format!("/v1/breakglass/{}", firebreak_server::form::encode(&id)),
                None,
            )
            .await?;
            print_value(out, &v, |v| {
                format!("break-glass {} closed\n", v["id"].as_str().unwrap_or(""))
            });
            Ok(())
        }
    }
}

/// `firebreak approver token`.
pub fn approver(cmd: ApproverCommand, out: Output) -> Result<(), CliError> {
    let ApproverCommand::Token { id } = cmd;
    let token = firebreak_token::try_random_b64url(32).map_err(failed)?;
    let token = format!("fbapr_{token}");
    let hash = firebreak_token::sha256_hex(token.as_bytes());
    let v: Value = json!({ "approver": id, "token": token, "token_sha256": hash });
    print_value(out, &v, |_| {
        format!(
            "token for approver {id} (shown once; give it to them):\n  {token}\nput this in the config:\n  [[approver]]\n  id = \"{id}\"\n  token_sha256 = \"{hash}\"\n"
        )
    });
    Ok(())
}
