//! The decision point: entities built once from the inventory, policies indexed by scope, and a
//! bounded cache of per-(principal, action, resource) slices so a decision evaluates only the
//! policies that can match it.
//!
//! INVARIANT (slice-superset): the slice for a request holds every policy whose scope can
//! match it. `scope_may_match` is a conservative over-approximation of Cedar's scope semantics
//! (an `in` or `is` it cannot rule out is kept), and Cedar still evaluates each kept policy's
//! scope itself, so a slice decides exactly as the whole set does; `decide_unsliced` and the
//! differential property test keep this honest.
//!
//! INVARIANT (errors-deny): any evaluation error of any policy in the slice is a `Deny`, before
//! Cedar's own decision is looked at, so an erroring `forbid` can never let a `permit` through.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Decision as CedarDecision, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, PrincipalConstraint,
    ResourceConstraint, RestrictedExpression, Schema,
};

use crate::decision::{NO_MATCHING_PERMIT, POLICY_ERROR, UNKNOWN_ENTITY};
use crate::load::{self, LoadedPolicy};
use crate::model::host_id;
use crate::{
    Action, Context, Decision, Inventory, PolicyError, Principal, ReasonRef, Request, Resource,
};

/// How many slices the cache keeps before it starts evicting.
const DEFAULT_CACHE_CAP: usize = 16_384;

/// The Cedar policy decision point for one policy version. Immutable once built (the slice
/// cache aside, which never changes an answer); swap an `Arc<Pdp>` to reload.
pub struct Pdp {
    version: Arc<str>,
    sources: Vec<(String, String)>,
    schema_text: String,
    schema: Schema,
    authorizer: Authorizer,
    /// Every policy, in file order, with its scope.
    policies: Vec<LoadedPolicy>,
    /// The whole set, for `decide_unsliced`.
    full_set: PolicySet,
    /// Ids of permits annotated `@approval("required")`.
    approval: HashSet<PolicyId>,
    /// Policies whose principal scope is `== uid`, by that uid.
    by_principal: HashMap<EntityUid, Vec<usize>>,
    /// All other policies (principal scope any, `in`, `is`).
    other_principal: Vec<usize>,
    /// Agents, targets and approvers from the inventory.
    known: HashMap<EntityUid, Entity>,
    /// All of `known` plus the schema's actions, for `decide_unsliced`.
    full_entities: Entities,
    types: Types,
    cache: RwLock<HashMap<SliceKey, Arc<Slice>>>,
    cache_cap: usize,
}

// The integrator shares one `Arc<Pdp>` across request tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pdp>();
};

impl std::fmt::Debug for Pdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdp")
            .field("version", &self.version)
            .field("policies", &self.policies.len())
            .field("entities", &self.known.len())
            .finish_non_exhaustive()
    }
}

struct Types {
    agent: EntityTypeName,
    target: EntityTypeName,
    tool: EntityTypeName,
    host: EntityTypeName,
    approver: EntityTypeName,
    /// `Action::"<name>"`, in `Action::ALL` order.
    actions: [EntityUid; 7],
}

impl Types {
    fn new() -> Result<Self, PolicyError> {
        let name = |n: &str| {
            EntityTypeName::from_str(n).map_err(|e| PolicyError::Schema {
                file: load::BUILTIN_SCHEMA_NAME.to_owned(),
                line: 1,
                message: e.to_string(),
            })
        };
        let action_type = name("Action")?;
        let actions = Action::ALL.map(|a| {
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()))
        });
        Ok(Types {
            agent: name("Agent")?,
            target: name("Target")?,
            tool: name("Tool")?,
            host: name("Host")?,
            approver: name("Approver")?,
            actions,
        })
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn action(&self, action: Action) -> &EntityUid {
        let [
            exchange,
            call_tool,
            http_request,
            egress_connect,
            elevate,
            approve,
            break_glass,
        ] = &self.actions;
        match action {
            Action::Exchange => exchange,
            Action::CallTool => call_tool,
            Action::HttpRequest => http_request,
            Action::EgressConnect => egress_connect,
            Action::Elevate => elevate,
            Action::Approve => approve,
            Action::BreakGlass => break_glass,
        }
    }
}

type SliceKey = (Action, EntityUid, EntityUid);

/// What a request is evaluated against: its policies and the entities they can reach.
struct Slice {
    policies: PolicySet,
    entities: Entities,
}

/// The request's resource entity, before it is needed.
enum ResourceEntity<'p> {
    Known(&'p Entity),
    Tool { name: String, parent: &'p Entity },
    Host { name: String, port: u16 },
}

struct Resolved<'p> {
    action: Action,
    principal: EntityUid,
    resource: EntityUid,
    principal_entity: &'p Entity,
    resource_entity: ResourceEntity<'p>,
}

impl Pdp {
    /// Loads `dir`: every `*.cedar` file (sorted by name), and `schema.cedarschema` if present,
    /// else [`SCHEMA`](crate::SCHEMA). See [`Pdp::from_sources`] for what is checked.
    ///
    /// # Errors
    /// I/O and UTF-8 errors, and everything [`Pdp::from_sources`] refuses.
    pub fn load(dir: &Path, inventory: &Inventory) -> Result<Pdp, PolicyError> {
        let (files, schema) = load::read_dir(dir)?;
        Pdp::from_sources(&files, schema.as_deref(), inventory)
    }

    /// Builds a PDP from `(file name, text)` pairs (sorted here by name) and an optional schema
    /// text (else [`SCHEMA`](crate::SCHEMA)). Every policy must carry a unique, non-empty
    /// `@id("…")`; `@approval("required")` on a permit turns its allow into
    /// `require_approval`, and any other `@approval` value is refused; other annotations are
    /// ignored. Templates are refused. The set is validated strictly against the schema, and the
    /// inventory's entities must conform to it.
    ///
    /// # Errors
    /// [`PolicyError::Parse`], [`Schema`](PolicyError::Schema),
    /// [`Validation`](PolicyError::Validation), [`MissingId`](PolicyError::MissingId),
    /// [`DuplicateId`](PolicyError::DuplicateId), [`Template`](PolicyError::Template),
    /// [`ApprovalAnnotation`](PolicyError::ApprovalAnnotation),
    /// [`DuplicateFile`](PolicyError::DuplicateFile),
    /// [`DuplicateInventory`](PolicyError::DuplicateInventory),
    /// [`InventoryMismatch`](PolicyError::InventoryMismatch).
    pub fn from_sources(
        files: &[(String, String)],
        schema: Option<&str>,
        inventory: &Inventory,
    ) -> Result<Pdp, PolicyError> {
        let loaded = load::load(files, schema)?;
        let types = Types::new()?;
        let known = build_inventory(inventory, &types)?;
        let full_entities = Entities::from_entities(known.values().cloned(), Some(&loaded.schema))
            .map_err(|e| PolicyError::InventoryMismatch {
                message: e.to_string(),
            })?;

        let mut by_principal: HashMap<EntityUid, Vec<usize>> = HashMap::new();
        let mut other_principal = Vec::new();
        let mut approval = HashSet::new();
        for (ix, policy) in loaded.policies.iter().enumerate() {
            match &policy.principal {
                PrincipalConstraint::Eq(uid) => {
                    by_principal.entry(uid.clone()).or_default().push(ix)
                }
                PrincipalConstraint::Any
                | PrincipalConstraint::In(_)
                | PrincipalConstraint::Is(_)
                | PrincipalConstraint::IsIn(_, _) => other_principal.push(ix),
            }
            if policy.approval_required {
                approval.insert(PolicyId::new(&policy.id));
            }
        }

        Ok(Pdp {
            version: Arc::from(loaded.version),
            sources: loaded.sources,
            schema_text: loaded.schema_text,
            schema: loaded.schema,
            authorizer: Authorizer::new(),
            policies: loaded.policies,
            full_set: loaded.set,
            approval,
            by_principal,
            other_principal,
            known,
            full_entities,
            types,
            cache: RwLock::new(HashMap::new()),
            cache_cap: DEFAULT_CACHE_CAP,
        })
    }

    /// `sha256:<hex>` over the sorted (file name, text) pairs and the schema text.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// How many policies the set holds.
    #[must_use]
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The policy files as loaded, sorted by name (for `GET /v1/policy/bundle`).
    #[must_use]
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }

    /// The schema text the set was validated against (the built-in one if the dir had none).
    #[must_use]
    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// Whether the policy `@id("<id>")` scopes its resource as exactly `resource == <this
    /// resource>`: not `in`, not `is`, not unscoped. An enforcement point uses it to tell a
    /// permit that names one destination from a broad one, e.g. the egress proxy admits a
    /// private address only under a permit that names `Host::"<ip>:<port>"` itself. The host
    /// is normalised as [`Resource::Host`] says, so a spelling cannot match or dodge it.
    #[must_use]
    pub fn names_resource(&self, id: &str, resource: Resource<'_>) -> bool {
        let t = &self.types;
        let uid = match resource {
            Resource::Target(target) => Types::uid(&t.target, target),
            Resource::Agent(agent) => Types::uid(&t.agent, agent),
            Resource::Tool { target, tool } => Types::uid(&t.tool, &format!("{target}/{tool}")),
            Resource::Host { host, port } => Types::uid(&t.host, &host_id(host, port)),
        };
        self.policies.iter().any(|p| {
            p.id == id && matches!(&p.resource, ResourceConstraint::Eq(scoped) if *scoped == uid)
        })
    }

    /// One decision, evaluating only the policies whose scope can match.
    ///
    /// - No permit matches → `Deny` with code `no_matching_permit`.
    /// - A forbid matches → `Deny` with the matching forbids' ids.
    /// - Permits match → `Allow` with their ids, or `RequireApproval` (same reasons) when any of
    ///   them has `@approval("required")`.
    /// - Any policy fails to evaluate → `Deny` with code `policy_error` followed by the ids of
    ///   the erroring policies, whatever else matched.
    /// - The principal or resource is not in the inventory (a tool counts as known when its
    ///   target is) → `Deny` with code `unknown_entity`, without evaluating anything: a policy
    ///   such as `permit(principal, action, resource)` must not admit an unregistered agent.
    /// - The request does not fit the schema (e.g. `call_tool` on a `Target`) → `Deny` with
    ///   code `policy_error`.
    ///
    /// Policy ids in reasons are sorted.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let resolved = match self.resolve(req) {
            Ok(resolved) => resolved,
            Err(denial) => return denial,
        };
        let Some(request) = self.cedar_request(&resolved, &req.context) else {
            return self.policy_error(Vec::new());
        };
        let Some(slice) = self.slice(&resolved) else {
            return self.policy_error(Vec::new());
        };
        let response = self
            .authorizer
            .is_authorized(&request, &slice.policies, &slice.entities);
        self.decision(&response)
    }

    /// The same decision through Cedar over the whole policy set and every inventory entity,
    /// with no slicing and no cache: the reference for the differential test and the benchmark.
    pub fn decide_unsliced(&self, req: &Request<'_>) -> Decision {
        let resolved = match self.resolve(req) {
            Ok(resolved) => resolved,
            Err(denial) => return denial,
        };
        let Some(request) = self.cedar_request(&resolved, &req.context) else {
            return self.policy_error(Vec::new());
        };
        let response = match &resolved.resource_entity {
            ResourceEntity::Known(_) => {
                self.authorizer
                    .is_authorized(&request, &self.full_set, &self.full_entities)
            }
            made @ (ResourceEntity::Tool { .. } | ResourceEntity::Host { .. }) => {
                let Some(entity) = self.made_entity(&resolved.resource, made) else {
                    return self.policy_error(Vec::new());
                };
                let Ok(entities) = self
                    .full_entities
                    .clone()
                    .add_entities([entity], Some(&self.schema))
                else {
                    return self.policy_error(Vec::new());
                };
                self.authorizer
                    .is_authorized(&request, &self.full_set, &entities)
            }
        };
        self.decision(&response)
    }

    /// Maps the request's principal and resource to Cedar uids and inventory entities.
    fn resolve<'p>(&'p self, req: &Request<'_>) -> Result<Resolved<'p>, Decision> {
        let t = &self.types;
        let principal = match req.principal {
            Principal::Agent(id) => Types::uid(&t.agent, id),
            Principal::Approver(id) => Types::uid(&t.approver, id),
        };
        let Some(principal_entity) = self.known.get(&principal) else {
            return Err(self.unknown());
        };
        let (resource, resource_entity) = match req.resource {
            Resource::Target(id) | Resource::Agent(id) => {
                let ty = match req.resource {
                    Resource::Agent(_) => &t.agent,
                    Resource::Target(_) | Resource::Tool { .. } | Resource::Host { .. } => {
                        &t.target
                    }
                };
                let uid = Types::uid(ty, id);
                match self.known.get(&uid) {
                    Some(entity) => (uid, ResourceEntity::Known(entity)),
                    None => return Err(self.unknown()),
                }
            }
            Resource::Tool { target, tool } => {
                let Some(parent) = self.known.get(&Types::uid(&t.target, target)) else {
                    return Err(self.unknown());
                };
                let uid = Types::uid(&t.tool, &format!("{target}/{tool}"));
                let name = tool.to_owned();
                (uid, ResourceEntity::Tool { name, parent })
            }
            Resource::Host { host, port } => {
                let id = host_id(host, port);
                let uid = Types::uid(&t.host, &id);
                let name = id
                    .rsplit_once(':')
                    .map_or_else(|| id.clone(), |(h, _)| h.to_owned());
                (uid, ResourceEntity::Host { name, port })
            }
        };
        Ok(Resolved {
            action: req.action,
            principal,
            resource,
            principal_entity,
            resource_entity,
        })
    }

    /// The Cedar request, validated against the schema; `None` if it does not fit.
    fn cedar_request(&self, r: &Resolved<'_>, ctx: &Context) -> Option<cedar_policy::Request> {
        let context = cedar_context(ctx)?;
        cedar_policy::Request::new(
            r.principal.clone(),
            self.types.action(r.action).clone(),
            r.resource.clone(),
            context,
            Some(&self.schema),
        )
        .ok()
    }

    /// The cached slice for this (principal, action, resource), built on a miss.
    fn slice(&self, r: &Resolved<'_>) -> Option<Arc<Slice>> {
        let key: SliceKey = (r.action, r.principal.clone(), r.resource.clone());
        // A poisoned lock only loses the cache: decide without it rather than fail.
        if let Ok(cache) = self.cache.read()
            && let Some(slice) = cache.get(&key)
        {
            return Some(Arc::clone(slice));
        }
        let slice = Arc::new(self.build_slice(r)?);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= self.cache_cap {
                // Bounded: evict an arbitrary entry (HashMap order is effectively random).
                if let Some(victim) = cache.keys().next().cloned() {
                    cache.remove(&victim);
                }
            }
            cache.insert(key, Arc::clone(&slice));
        }
        Some(slice)
    }

    fn build_slice(&self, r: &Resolved<'_>) -> Option<Slice> {
        let action = self.types.action(r.action);
        let resource_ancestors: Vec<EntityUid> = match &r.resource_entity {
            ResourceEntity::Tool { parent, .. } => vec![parent.uid()],
            ResourceEntity::Known(_) | ResourceEntity::Host { .. } => Vec::new(),
        };
        let mut candidates: Vec<usize> = self
            .by_principal
            .get(&r.principal)
            .into_iter()
            .flatten()
            .chain(self.other_principal.iter())
            .copied()
            .filter(|&ix| {
                self.policies.get(ix).is_some_and(|p| {
                    principal_may_match(&p.principal, &r.principal)
                        && action_may_match(&p.action, action, &self.types.actions)
                        && resource_may_match(&p.resource, &r.resource, &resource_ancestors)
                })
            })
            .collect();
        candidates.sort_unstable();

        let chosen: Vec<&LoadedPolicy> = candidates
            .iter()
            .filter_map(|&ix| self.policies.get(ix))
            .collect();
        let policies = PolicySet::from_policies(chosen.iter().map(|p| p.policy.clone())).ok()?;

        // The entities this slice can reach: principal, resource and its parent, and any
        // inventory entity a chosen policy names literally (e.g. `Agent::"x".tier`).
        let mut entities: HashMap<EntityUid, Entity> = HashMap::new();
        entities.insert(r.principal.clone(), r.principal_entity.clone());
        match &r.resource_entity {
            ResourceEntity::Known(entity) => {
                entities.insert(r.resource.clone(), (*entity).clone());
            }
            made @ ResourceEntity::Tool { parent, .. } => {
                entities.insert(parent.uid(), (*parent).clone());
                entities.insert(r.resource.clone(), self.made_entity(&r.resource, made)?);
            }
            made @ ResourceEntity::Host { .. } => {
                entities.insert(r.resource.clone(), self.made_entity(&r.resource, made)?);
            }
        }
        for uid in chosen.iter().flat_map(|p| p.literals.iter()) {
            if !entities.contains_key(uid)
                && let Some(entity) = self.known.get(uid)
            {
                entities.insert(uid.clone(), entity.clone());
            }
        }
        let entities = Entities::from_entities(entities.into_values(), Some(&self.schema)).ok()?;
        Some(Slice { policies, entities })
    }

    /// A tool or host entity, made for the request.
    fn made_entity(&self, uid: &EntityUid, made: &ResourceEntity<'_>) -> Option<Entity> {
        match made {
            ResourceEntity::Known(entity) => Some((*entity).clone()),
            ResourceEntity::Tool { name, parent } => Entity::new(
                uid.clone(),
                HashMap::from([(
                    "name".to_owned(),
                    RestrictedExpression::new_string(name.clone()),
                )]),
                HashSet::from([parent.uid()]),
            )
            .ok(),
            ResourceEntity::Host { name, port } => Entity::new(
                uid.clone(),
                HashMap::from([
                    (
                        "name".to_owned(),
                        RestrictedExpression::new_string(name.clone()),
                    ),
                    (
                        "port".to_owned(),
                        RestrictedExpression::new_long(i64::from(*port)),
                    ),
                ]),
                HashSet::new(),
            )
            .ok(),
        }
    }

    fn decision(&self, response: &cedar_policy::Response) -> Decision {
        let diagnostics = response.diagnostics();
        // INVARIANT (errors-deny): checked before Cedar's decision is looked at.
        let mut erroring: Vec<&str> = diagnostics
            .errors()
            .map(|err| match err {
                AuthorizationError::PolicyEvaluationError(e) => AsRef::<str>::as_ref(e.policy_id()),
            })
            .collect();
        if !erroring.is_empty() {
            erroring.sort_unstable();
            erroring.dedup();
            return self.policy_error(erroring);
        }
        let mut ids: Vec<&PolicyId> = diagnostics.reason().collect();
        ids.sort_unstable_by(|a, b| AsRef::<str>::as_ref(*a).cmp(AsRef::<str>::as_ref(*b)));
        let needs_approval = ids.iter().any(|id| self.approval.contains(*id));
        let reasons: Vec<ReasonRef> = ids
            .iter()
            .map(|id| ReasonRef::policy(AsRef::<str>::as_ref(*id)))
            .collect();
        match response.decision() {
            CedarDecision::Deny if reasons.is_empty() => {
                Decision::deny(&self.version, vec![ReasonRef::code(NO_MATCHING_PERMIT)])
            }
            CedarDecision::Deny => Decision::deny(&self.version, reasons),
            // Cedar always names the permits behind an allow; an allow with none is not one.
            CedarDecision::Allow if reasons.is_empty() => self.policy_error(Vec::new()),
            CedarDecision::Allow if needs_approval => {
                Decision::require_approval(&self.version, reasons)
            }
            CedarDecision::Allow => Decision::allow(&self.version, reasons),
        }
    }

    fn policy_error(&self, erroring: Vec<&str>) -> Decision {
        let mut reasons = Vec::with_capacity(erroring.len().saturating_add(1));
        reasons.push(ReasonRef::code(POLICY_ERROR));
        reasons.extend(erroring.into_iter().map(ReasonRef::policy));
        Decision::deny(&self.version, reasons)
    }

    fn unknown(&self) -> Decision {
        Decision::deny(&self.version, vec![ReasonRef::code(UNKNOWN_ENTITY)])
    }

    #[cfg(test)]
    pub(crate) fn cached_slices(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn slice_len(&self, req: &Request<'_>) -> Option<usize> {
        let resolved = self.resolve(req).ok()?;
        Some(self.slice(&resolved)?.policies.policies().count())
    }
}

fn build_inventory(
    inventory: &Inventory,
    types: &Types,
) -> Result<HashMap<EntityUid, Entity>, PolicyError> {
    let mut known = HashMap::new();
    let mismatch = |e: cedar_policy::EntityAttrEvaluationError| PolicyError::InventoryMismatch {
        message: e.to_string(),
    };
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let mut add = |kind: &'static str, id: &str, entity: Entity| {
        if known.insert(entity.uid(), entity).is_some() {
            return Err(PolicyError::DuplicateInventory {
                kind,
                id: id.to_owned(),
            });
        }
        Ok(())
    };
    for a in &inventory.agents {
        let attrs = HashMap::from([
            ("owner".to_owned(), s(&a.owner)),
            ("tenant".to_owned(), s(&a.tenant)),
            ("environment".to_owned(), s(&a.environment)),
            ("tier".to_owned(), s(&a.tier)),
            ("purpose".to_owned(), s(&a.purpose)),
        ]);
        let entity = Entity::new(Types::uid(&types.agent, &a.id), attrs, HashSet::new())
            .map_err(mismatch)?;
        add("agent", &a.id, entity)?;
    }
    for t in &inventory.targets {
        let attrs = HashMap::from([
            ("tenant".to_owned(), s(&t.tenant)),
            ("environment".to_owned(), s(&t.environment)),
            ("tier".to_owned(), s(&t.tier)),
            ("kind".to_owned(), s(&t.kind)),
        ]);
        let entity = Entity::new(Types::uid(&types.target, &t.id), attrs, HashSet::new())
            .map_err(mismatch)?;
        add("target", &t.id, entity)?;
    }
    for id in &inventory.approvers {
        let entity = Entity::new_no_attrs(Types::uid(&types.approver, id), HashSet::new());
        add("approver", id, entity)?;
    }
    Ok(known)
}

/// The context record; `None` only if Cedar refuses to build it (it never should).
fn cedar_context(ctx: &Context) -> Option<cedar_policy::Context> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let set = |vs: &[String]| RestrictedExpression::new_set(vs.iter().map(|v| s(v)));
    let mut pairs = Vec::with_capacity(10);
    pairs.push(("scope".to_owned(), set(&ctx.scope)));
    if let Some((method, path)) = &ctx.http {
        let http = RestrictedExpression::new_record([
            ("method".to_owned(), s(method)),
            ("path".to_owned(), s(path)),
        ])
        .ok()?;
        pairs.push(("http".to_owned(), http));
    }
    if let Some(session) = &ctx.session {
        let record = RestrictedExpression::new_record([
            ("id".to_owned(), s(&session.id)),
            (
                "depth".to_owned(),
                RestrictedExpression::new_long(session.depth),
            ),
            (
                "age_seconds".to_owned(),
                RestrictedExpression::new_long(session.age_seconds),
            ),
        ])
        .ok()?;
        pairs.push(("session".to_owned(), record));
    }
    pairs.push(("elevations".to_owned(), set(&ctx.elevations)));
    pairs.push((
        "break_glass".to_owned(),
        RestrictedExpression::new_bool(ctx.break_glass),
    ));
    pairs.push(("env".to_owned(), s(&ctx.env)));
    pairs.push(("tenant".to_owned(), s(&ctx.tenant)));
    pairs.push(("purpose".to_owned(), s(&ctx.purpose)));
    pairs.push((
        "dpop_bound".to_owned(),
        RestrictedExpression::new_bool(ctx.dpop_bound),
    ));
    pairs.push(("time".to_owned(), RestrictedExpression::new_long(ctx.time)));
    cedar_policy::Context::from_pairs(pairs).ok()
}

fn is_in(uid: &EntityUid, target: &EntityUid, ancestors: &[EntityUid]) -> bool {
    uid == target || ancestors.contains(target)
}

/// Whether a principal scope can match. Agents and approvers have no parents in Firebreak's
/// model, so `in` reduces to `==`.
fn principal_may_match(c: &PrincipalConstraint, p: &EntityUid) -> bool {
    match c {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) => uid == p,
        PrincipalConstraint::In(uid) => is_in(p, uid, &[]),
        PrincipalConstraint::Is(ty) => ty == p.type_name(),
        PrincipalConstraint::IsIn(ty, uid) => ty == p.type_name() && is_in(p, uid, &[]),
    }
}

/// Whether an action scope can match. Firebreak's schema has no action groups; an `in` list
/// naming anything but the seven actions is kept (a custom schema may group them).
fn action_may_match(c: &ActionConstraint, a: &EntityUid, known: &[EntityUid]) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => uid == a,
        ActionConstraint::In(uids) => uids.iter().any(|u| u == a || !known.contains(u)),
    }
}

fn resource_may_match(c: &ResourceConstraint, r: &EntityUid, ancestors: &[EntityUid]) -> bool {
    match c {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(uid) => uid == r,
        ResourceConstraint::In(uid) => is_in(r, uid, ancestors),
        ResourceConstraint::Is(ty) => ty == r.type_name(),
        ResourceConstraint::IsIn(ty, uid) => ty == r.type_name() && is_in(r, uid, ancestors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentAttrs, TargetAttrs};

    fn inventory(n: usize) -> Inventory {
        Inventory {
            agents: (0..n)
                .map(|i| AgentAttrs {
                    id: format!("a{i}"),
                    owner: "o".into(),
                    tenant: "t".into(),
                    environment: "prod".into(),
                    tier: "high".into(),
                    purpose: "p".into(),
                })
                .collect(),
            targets: (0..n)
                .map(|i| TargetAttrs {
                    id: format!("t{i}"),
                    tenant: "t".into(),
                    environment: "prod".into(),
                    tier: "high".into(),
                    kind: "mcp".into(),
                })
                .collect(),
            approvers: vec![],
        }
    }

    #[test]
    fn names_resource_only_for_an_exact_resource_scope() {
        let text = "@id(\"exact\") permit(principal, action == Action::\"egress_connect\", resource == Host::\"127.0.0.1:9000\");\n\
                    @id(\"broad\") permit(principal, action == Action::\"egress_connect\", resource);\n\
                    @id(\"typed\") permit(principal, action == Action::\"egress_connect\", resource is Host);\n";
        let pdp =
            Pdp::from_sources(&[("p.cedar".into(), text.into())], None, &inventory(1)).unwrap();
        let host = |h| Resource::Host {
            host: h,
            port: 9000,
        };
        assert!(pdp.names_resource("exact", host("127.0.0.1")));
        assert!(pdp.names_resource("exact", host("[::ffff:127.0.0.1]")));
        assert!(!pdp.names_resource("exact", host("127.0.0.2")));
        assert!(!pdp.names_resource("broad", host("127.0.0.1")));
        assert!(!pdp.names_resource("typed", host("127.0.0.1")));
        assert!(!pdp.names_resource("missing", host("127.0.0.1")));
    }

    #[test]
    fn slices_hold_only_policies_that_can_match_and_the_cache_is_bounded() {
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "@id(\"p{i}\") permit(principal == Agent::\"a{i}\", action == Action::\"exchange\", resource == Target::\"t{i}\");\n"
            ));
        }
        text.push_str(
            "@id(\"f\") forbid(principal, action, resource) when { context.break_glass };\n",
        );
        text.push_str("@id(\"tools\") permit(principal, action == Action::\"call_tool\", resource in Target::\"t3\");\n");
        let mut pdp = Pdp::from_sources(&[("p.cedar".into(), text)], None, &inventory(50)).unwrap();
        pdp.cache_cap = 4;
        let req = |a: &'static str, action, resource| Request {
            principal: Principal::Agent(a),
            action,
            resource,
            context: Context::default(),
        };
        // p3 and the unscoped forbid; not the other 49 permits or the call_tool permit.
        assert_eq!(
            pdp.slice_len(&req("a3", Action::Exchange, Resource::Target("t3"))),
            Some(2)
        );
        // A tool of t3 is `in Target::"t3"`.
        let tool = Resource::Tool {
            target: "t3",
            tool: "x",
        };
        assert_eq!(pdp.slice_len(&req("a1", Action::CallTool, tool)), Some(2));
        for i in 0..10 {
            let id: &'static str = Box::leak(format!("t{i}").into_boxed_str());
            let _ = pdp.decide(&req("a3", Action::Exchange, Resource::Target(id)));
        }
        assert!(pdp.cached_slices() <= 4);
        let d = pdp.decide(&req("a3", Action::Exchange, Resource::Target("t3")));
        assert_eq!(d.wire(), "allow");
    }
}
