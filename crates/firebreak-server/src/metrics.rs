//! Prometheus metrics, kept by hand: a few labelled counters and histograms do not justify a
//! metrics framework in the dependency tree. Label values are reason codes and outcomes (closed
//! sets), never request data, so cardinality stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const WAIT_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];
const TTL_BUCKETS: [f64; 8] = [30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.len() != buckets.len() {
            self.counts = vec![0; buckets.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(buckets) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, buckets: &[f64]) {
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    elevations: BTreeMap<(String, String), u64>,
    approval_wait: Histogram,
    exchanges: BTreeMap<(&'static str, &'static str), u64>,
    denied: BTreeMap<&'static str, u64>,
    exchange_duration: Histogram,
    issued_ttl: Histogram,
    event_streams: i64,
}

/// The broker's metrics.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One finished exchange: `outcome` is `issued`, `denied` or `error`.
    pub fn exchange(&self, outcome: &'static str, reason: &'static str, seconds: f64) {
        let mut m = self.inner();
        *m.exchanges.entry((outcome, reason)).or_default() += 1;
        m.exchange_duration.observe(&LATENCY_BUCKETS, seconds);
        if outcome == "denied" {
            *m.denied.entry(reason).or_default() += 1;
        }
    }

    /// A refusal at another decision point of the broker (introspection, revocation, admin).
    pub fn denied(&self, reason: &'static str) {
        *self.inner().denied.entry(reason).or_default() += 1;
    }

    /// An elevation outcome (`approved`, `denied`, `pending`, `expired`) by reason code.
    pub fn elevation(&self, outcome: &str, reason: &str) {
        *self
            .inner()
            .elevations
            .entry((outcome.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    /// Time from an approval's request to its approval (MTTA is sum / count).
    pub fn approval_wait(&self, seconds: f64) {
        self.inner().approval_wait.observe(&WAIT_BUCKETS, seconds);
    }

    /// An event stream opened (+1) or closed (-1).
    pub fn event_streams(&self, delta: i64) {
        self.inner().event_streams += delta;
    }

    /// The lifetime of an issued token.
    pub fn issued_ttl(&self, seconds: f64) {
        self.inner().issued_ttl.observe(&TTL_BUCKETS, seconds);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.inner();
        let mut out = String::new();
        out.push_str("# HELP firebreak_event_streams Open /v1/events streams.\n");
        out.push_str("# TYPE firebreak_event_streams gauge\n");
        let _ = writeln!(out, "firebreak_event_streams {}", m.event_streams);
        out.push_str("# HELP firebreak_exchanges_total Token exchanges by outcome and reason.\n");
        out.push_str("# TYPE firebreak_exchanges_total counter\n");
        for ((outcome, reason), n) in &m.exchanges {
            let _ = writeln!(
                out,
                "firebreak_exchanges_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP firebreak_denied_total Refusals at a decision point, by reason code.\n",
        );
        out.push_str("# TYPE firebreak_denied_total counter\n");
        for (reason, n) in &m.denied {
            let _ = writeln!(out, "firebreak_denied_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# HELP firebreak_elevations_total Elevations by outcome and reason code.\n");
        out.push_str("# TYPE firebreak_elevations_total counter\n");
        for ((outcome, reason), n) in &m.elevations {
            let _ = writeln!(
                out,
                "firebreak_elevations_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP firebreak_approval_wait_seconds Time from request to approval (mean = MTTA).\n",
        );
        out.push_str("# TYPE firebreak_approval_wait_seconds histogram\n");
        m.approval_wait
            .render(&mut out, "firebreak_approval_wait_seconds", &WAIT_BUCKETS);
        out.push_str(
            "# HELP firebreak_exchange_duration_seconds Time to answer a token exchange.\n",
        );
        out.push_str("# TYPE firebreak_exchange_duration_seconds histogram\n");
        m.exchange_duration.render(
            &mut out,
            "firebreak_exchange_duration_seconds",
            &LATENCY_BUCKETS,
        );
        out.push_str("# HELP firebreak_issued_token_ttl_seconds Lifetime of issued tokens.\n");
        out.push_str("# TYPE firebreak_issued_token_ttl_seconds histogram\n");
        m.issued_ttl
            .render(&mut out, "firebreak_issued_token_ttl_seconds", &TTL_BUCKETS);
        out
    }
}
