//! The decision point for the broker: the Cedar PDP (`firebreak-policy`) behind the `Decider`
//! trait the exchange calls. Its policy set is the `[policy] dir` plus the policies generated
//! from config (`[[agent]] grants`, the broker's own target, approvers' default rights), so
//! every decision, whatever its source, comes from Cedar with reasons and one policy version.
//! A reload swaps the whole set atomically; a bad set keeps the old one.

use std::path::Path;
use std::sync::{Arc, RwLock};

use firebreak_core::Reason;
use firebreak_policy::{
    Action, AgentAttrs, Context, Decision as PdpDecision, Inventory, Pdp, PolicyError, Principal,
    ReasonRef, Request, Resource, TargetAttrs,
};

use crate::config::{Agent, Config, Target};

/// What an exchange asks: may `agent` get a token for `target` with these scopes, now?
#[derive(Debug)]
pub struct ExchangeQuery<'a> {
    /// The matched agent.
    pub agent: &'a Agent,
    /// The resolved target.
    pub target: &'a Target,
    /// The requested scopes (empty: none requested).
    pub scopes: &'a [String],
    /// Everything else the PDP sees (elevations, break-glass, session, time…); `scope` is set
    /// by the decider.
    pub context: Context,
}

/// Proof of an allow. Only a `Decider` builds one.
#[derive(Debug)]
pub struct Permit {
    scopes: Vec<String>,
    policy_version: String,
    reasons: Vec<ReasonRef>,
}

impl Permit {
    /// The scopes to issue.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
    /// The version of the rules that allowed it (`fb_pv`).
    pub fn policy_version(&self) -> &str {
        &self.policy_version
    }
    /// The policies that allowed it.
    pub fn reasons(&self) -> &[ReasonRef] {
        &self.reasons
    }
}

/// Why a decider said no, which OAuth answer fits, and the PDP's reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The answer class.
    pub kind: DenialKind,
    /// The PDP's reasons.
    pub reasons: Vec<ReasonRef>,
    /// The policy version that decided.
    pub policy_version: String,
}

/// The answer class of a refused exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// Not allowed to get this target at all → `invalid_target`.
    Target(Reason),
    /// Allowed the target, not these scopes → `invalid_scope`.
    Scope(Reason),
    /// Allowed only with a human's approval: ask for an elevation → `invalid_target`.
    Approval,
}

/// The answer.
#[must_use]
#[derive(Debug)]
pub enum Decision {
    /// Issue, with the permit's scopes.
    Allow(Permit),
    /// Refuse.
    Deny(Denial),
}

/// A policy decision point for exchanges.
pub trait Decider: Send + Sync + std::fmt::Debug {
    /// Decides one exchange.
    fn decide_exchange(&self, q: ExchangeQuery<'_>) -> Decision;
    /// The version of the rules in force.
    fn policy_version(&self) -> String;
}

/// The Cedar decider, reloadable.
#[derive(Debug)]
pub struct PolicyEngine {
    pdp: RwLock<Arc<Pdp>>,
}

fn reason_of(reasons: &[ReasonRef]) -> Reason {
    let code = reasons.iter().find_map(|r| match r {
        ReasonRef::Code { code } => Some(code.as_str()),
        ReasonRef::Policy { .. } => None,
    });
    match code {
        Some(firebreak_policy::POLICY_ERROR) => Reason::PolicyError,
        Some(_) => Reason::NoMatchingPermit,
        // Only policy ids: a forbid matched.
        None if !reasons.is_empty() => Reason::ForbiddenByPolicy,
        None => Reason::NoMatchingPermit,
    }
}

impl PolicyEngine {
    /// Loads the policy set for `config`.
    ///
    /// # Errors
    /// The PDP's refusal (file, line, Cedar's message).
    pub fn new(config: &Config) -> Result<Self, PolicyError> {
        Ok(Self {
            pdp: RwLock::new(Arc::new(load_pdp(config)?)),
        })
    }

    /// The PDP in force.
    pub fn pdp(&self) -> Arc<Pdp> {
        Arc::clone(
            &self
                .pdp
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reloads; on error the old set stays. Returns (old version, new version).
    ///
    /// # Errors
    /// The new set's refusal.
    pub fn reload(&self, config: &Config) -> Result<(String, String), PolicyError> {
        let new = load_pdp(config)?;
        let mut slot = self
            .pdp
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = slot.version().to_owned();
        let version = new.version().to_owned();
        *slot = Arc::new(new);
        Ok((old, version))
    }
}

impl Decider for PolicyEngine {
    fn decide_exchange(&self, mut q: ExchangeQuery<'_>) -> Decision {
        let pdp = self.pdp();
        q.context.scope = q.scopes.to_vec();
        let ask = |context: Context| {
            pdp.decide(&Request {
                principal: Principal::Agent(q.agent.id.as_str()),
                action: Action::Exchange,
                resource: Resource::Target(q.target.id.as_str()),
                context,
            })
        };
        let first = ask(q.context.clone());
        let version = first.policy_version().to_owned();
        match first {
            PdpDecision::Allow(p) => Decision::Allow(Permit {
                scopes: q.scopes.to_vec(),
                policy_version: version,
                reasons: p.reasons().to_vec(),
            }),
            PdpDecision::RequireApproval(p) => Decision::Deny(Denial {
                kind: DenialKind::Approval,
                reasons: p.reasons().to_vec(),
                policy_version: version,
            }),
            PdpDecision::Deny(d) => {
                let reasons = d.reasons().to_vec();
                // Target or scope? Ask again without scopes: allowed then means only the
                // scopes were refused (RFC 6749 invalid_scope), else the target (invalid_target).
                let scope_only = !q.scopes.is_empty() && {
                    let mut bare = q.context.clone();
                    bare.scope.clear();
                    matches!(ask(bare), PdpDecision::Allow(_))
                };
                let kind = if scope_only {
                    DenialKind::Scope(Reason::ScopeNotGranted)
                } else {
                    DenialKind::Target(reason_of(&reasons))
                };
                Decision::Deny(Denial {
                    kind,
                    reasons,
                    policy_version: version,
                })
            }
        }
    }

    fn policy_version(&self) -> String {
        self.pdp().version().to_owned()
    }
}

/// The inventory the PDP builds its entities from.
pub fn inventory(config: &Config) -> Inventory {
    Inventory {
        agents: config
            .agents
            .iter()
            .map(|a| AgentAttrs {
                id: a.id.to_string(),
                owner: a.owner.clone(),
                tenant: a.tenant.clone(),
                environment: a.environment.clone(),
                tier: a.tier.clone(),
                purpose: a.purpose.clone(),
            })
            .collect(),
        targets: config
            .targets
            .iter()
            .map(|t| TargetAttrs {
                id: t.id.to_string(),
                tenant: t.tenant.clone(),
                environment: t.environment.clone(),
                tier: t.tier.clone(),
                kind: t.kind.as_str().to_owned(),
            })
            .collect(),
        approvers: config.approvers.iter().map(|a| a.id.clone()).collect(),
    }
}

/// Name of the generated policy file (it sorts before user files and cannot clash with one:
/// user files must end in `.cedar` and live in the policy dir).
pub const GENERATED: &str = "000-firebreak-config.cedar";

/// Cedar for what the config says: one permit per `[[agent]] grants` entry (the scopes as an
/// upper bound), the broker's own target with no scope for every agent (so it can revoke its own
/// tokens and ask for elevations), and approvers' right to approve and open break-glass (add a
/// `forbid` to take it away).
pub fn generated_policies(config: &Config) -> String {
    let mut out =
        String::from("// Generated from the config's grants; edit the config, not this text.\n");
    for a in &config.agents {
        let mut grants: Vec<_> = a.grants.iter().collect();
        grants.sort_by(|x, y| x.0.cmp(y.0));
        for (t, scopes) in grants {
            let set = scopes
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ");
            // Cedar's strict validation refuses an empty set literal: no scopes granted means
            // only a scope-less token.
            let cond = if set.is_empty() {
                "context.scope.isEmpty()".to_owned()
            } else {
                format!("[{set}].containsAll(context.scope)")
            };
            out.push_str(&format!(
                "@id(\"grant:{a}:{t}\")\npermit(principal == Agent::\"{a}\", action == Action::\"exchange\", resource == Target::\"{t}\")\nwhen {{ {cond} }};\n",
                a = a.id
            ));
        }
    }
    if let Some(b) = config.broker_target() {
        out.push_str(&format!(
            "@id(\"builtin:broker-token\")\npermit(principal is Agent, action == Action::\"exchange\", resource == Target::\"{}\")\nwhen {{ context.scope.isEmpty() }};\n",
            b.id
        ));
    }
    out.push_str("@id(\"builtin:approvers-approve\")\npermit(principal is Approver, action == Action::\"approve\", resource);\n");
    out.push_str("@id(\"builtin:approvers-break-glass\")\npermit(principal is Approver, action == Action::\"break_glass\", resource);\n");
    out
}

/// Reads `*.cedar` and `schema.cedarschema` from a policy dir.
/// `(file name, text)` pairs.
type Sources = Vec<(String, String)>;

fn read_dir(dir: &Path) -> Result<(Sources, Option<String>), PolicyError> {
    let io = |source: std::io::Error| PolicyError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut schema = None;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let read = || {
            std::fs::read_to_string(&path).map_err(|source| PolicyError::ReadFile {
                path: path.clone(),
                source,
            })
        };
        if name == "schema.cedarschema" {
            schema = Some(read()?);
        } else if name.ends_with(".cedar") {
            files.push((name, read()?));
        }
    }
    Ok((files, schema))
}

/// The whole policy set: generated + `[policy] dir`.
///
/// # Errors
/// The PDP's refusal.
pub fn load_pdp(config: &Config) -> Result<Pdp, PolicyError> {
    let mut files = vec![(GENERATED.to_owned(), generated_policies(config))];
    let mut schema = None;
    if let Some(dir) = &config.policy_dir {
        let (user, s) = read_dir(dir)?;
        files.extend(user);
        schema = s;
    }
    Pdp::from_sources(&files, schema.as_deref(), &inventory(config))
}
