//! PDP benchmark: sliced `decide` against raw whole-set Cedar (`decide_unsliced`) on the same
//! requests in the same run, at 1, 100 and 1,000 policies. Prints JSON lines
//! (`{"metric","ours","peer","ratio","unit","notes"}`) for decisions/s and p99 latency.
//! Bounded: a fixed number of calls per size, a few seconds each.

use std::error::Error;
use std::time::{Duration, Instant};

use firebreak_policy::{
    Action, AgentAttrs, Context, Decision, Inventory, Pdp, Principal, Request, Resource,
    TargetAttrs,
};

const TARGETS: usize = 100;
const POOL: usize = 1_000;

fn inventory(agents: usize) -> Inventory {
    Inventory {
        agents: (0..agents)
            .map(|i| AgentAttrs {
                id: format!("agent-{i}"),
                owner: format!("owner-{}", i % 17),
                tenant: "acme".into(),
                environment: if i % 2 == 0 { "prod" } else { "staging" }.into(),
                tier: "standard".into(),
                purpose: "ci".into(),
            })
            .collect(),
        targets: (0..TARGETS)
            .map(|i| TargetAttrs {
                id: format!("target-{i}"),
                tenant: "acme".into(),
                environment: if i % 2 == 0 { "prod" } else { "staging" }.into(),
                tier: "standard".into(),
                kind: "mcp".into(),
            })
            .collect(),
        approvers: vec!["alice".into()],
    }
}

/// RBAC-ish: permit `i` names agent `i` and target `i % TARGETS`, with a scope condition;
/// plus three unscoped forbids (a policy set of size `n` has `n` policies in all).
fn policies(n: usize) -> String {
    let forbids = [
        "@id(\"forbid-cross-env\") forbid(principal is Agent, action, resource is Target) unless { principal.environment == resource.environment };\n",
        "@id(\"forbid-deep-sessions\") forbid(principal, action, resource) when { context has session && context.session.depth > 3 };\n",
        "@id(\"forbid-no-dpop\") forbid(principal, action == Action::\"exchange\", resource) when { !context.dpop_bound && !context.break_glass };\n",
    ];
    let mut text = String::new();
    let permits = n.saturating_sub(forbids.len()).max(1);
    for i in 0..permits {
        text.push_str(&format!(
            "@id(\"permit-{i}\") permit(principal == Agent::\"agent-{i}\", action == Action::\"exchange\", resource == Target::\"target-{}\") when {{ context.scope.contains(\"read\") }};\n",
            i % TARGETS
        ));
    }
    for f in forbids.iter().take(n.saturating_sub(permits)) {
        text.push_str(f);
    }
    text
}

/// A small deterministic generator, so runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        usize::try_from((self.0 >> 33) % (bound.max(1) as u64)).unwrap_or(0)
    }
}

struct Pooled {
    agent: String,
    target: String,
    context: Context,
}

fn pool(agents: usize, permits: usize) -> Vec<Pooled> {
    let mut rng = Lcg(42);
    (0..POOL)
        .map(|k| {
            // Half the requests hit an existing permit's (agent, target), half are random.
            let (agent, target) = if k % 2 == 0 {
                let i = rng.next(permits);
                (i, i % TARGETS)
            } else {
                (rng.next(agents), rng.next(TARGETS))
            };
            Pooled {
                agent: format!("agent-{agent}"),
                target: format!("target-{target}"),
                context: Context {
                    scope: vec!["read".into(), "write".into()],
                    session: Some(firebreak_policy::SessionCtx {
                        id: format!("s{k}"),
                        depth: i64::try_from(k % 5).unwrap_or(0),
                        age_seconds: 30,
                    }),
                    elevations: vec![],
                    dpop_bound: k % 7 != 0,
                    env: "prod".into(),
                    tenant: "acme".into(),
                    purpose: "ci".into(),
                    time: 1_700_000_000,
                    ..Context::default()
                },
            }
        })
        .collect()
}

fn request(p: &Pooled) -> Request<'_> {
    Request {
        principal: Principal::Agent(&p.agent),
        action: Action::Exchange,
        resource: Resource::Target(&p.target),
        context: p.context.clone(),
    }
}

struct Run {
    per_sec: f64,
    p99_us: f64,
    mean_us: f64,
}

#[allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time; no Clock here"
)]
fn measure(pool: &[Pooled], calls: usize, f: impl Fn(&Request<'_>) -> Decision) -> Run {
    let mut lat = Vec::with_capacity(calls);
    let start = Instant::now();
    for (k, p) in pool.iter().cycle().take(calls).enumerate() {
        // Request construction (the context clone) is inside the timing, as on the hot path.
        let t = Instant::now();
        let d = f(&request(p));
        lat.push(t.elapsed());
        let _ = std::hint::black_box((k, d));
    }
    let total = start.elapsed();
    lat.sort_unstable();
    let p99 = lat
        .get(lat.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or(Duration::ZERO);
    Run {
        per_sec: calls as f64 / total.as_secs_f64(),
        p99_us: p99.as_secs_f64() * 1e6,
        mean_us: total.as_secs_f64() * 1e6 / calls as f64,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    for n in [1usize, 100, 1_000] {
        let agents = n.max(TARGETS);
        let text = policies(n);
        let inv = inventory(agents);
        let pdp = Pdp::from_sources(&[("bench.cedar".into(), text)], None, &inv)?;
        let permits = n.saturating_sub(3).max(1);
        let pool = pool(agents, permits);

        // Agreement and decision mix on the pool, before timing anything.
        let mut mismatches = 0usize;
        let mut allows = 0usize;
        for p in &pool {
            let (s, u) = (pdp.decide(&request(p)), pdp.decide_unsliced(&request(p)));
            if s != u {
                mismatches += 1;
            }
            if matches!(s, Decision::Allow(_)) {
                allows += 1;
            }
        }
        // The pass above filled the slice cache (every key once); measure a cold pass too.
        let cold = {
            let fresh = Pdp::from_sources(&[("bench.cedar".into(), policies(n))], None, &inv)?;
            measure(&pool, pool.len(), |r| fresh.decide(r))
        };
        let sliced_calls = 200_000;
        let whole_calls = match n {
            1 => 200_000,
            100 => 20_000,
            _ => 3_000,
        };
        let ours = measure(&pool, sliced_calls, |r| pdp.decide(r));
        let peer = measure(&pool, whole_calls, |r| pdp.decide_unsliced(r));
        let notes = format!(
            "{} policies; pool {POOL} exchange requests, {allows} allow; sliced vs whole-set mismatches {mismatches}; peer = raw Cedar is_authorized over the whole set (decide_unsliced); {sliced_calls}/{whole_calls} calls; warm slice cache; mean us ours {:.2} peer {:.2}",
            pdp.policy_count(),
            ours.mean_us,
            peer.mean_us
        );
        println!(
            "{{\"metric\":\"pdp_decide_{n}\",\"ours\":{:.0},\"peer\":{:.0},\"ratio\":{:.2},\"unit\":\"decisions/s\",\"notes\":{:?}}}",
            ours.per_sec,
            peer.per_sec,
            ours.per_sec / peer.per_sec,
            notes
        );
        println!(
            "{{\"metric\":\"pdp_decide_{n}_p99\",\"ours\":{:.2},\"peer\":{:.2},\"ratio\":{:.2},\"unit\":\"us\",\"notes\":\"p99 per-call latency; ratio = peer/ours\"}}",
            ours.p99_us,
            peer.p99_us,
            peer.p99_us / ours.p99_us
        );
        println!(
            "{{\"metric\":\"pdp_decide_{n}_cold_p99\",\"ours\":{:.2},\"peer\":{:.2},\"ratio\":{:.2},\"unit\":\"us\",\"notes\":\"first decision per (principal, action, resource): slice built and cached; peer = warm whole-set p99\"}}",
            cold.p99_us,
            peer.p99_us,
            peer.p99_us / cold.p99_us
        );
    }
    Ok(())
}
