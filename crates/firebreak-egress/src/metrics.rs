//! Process-wide egress counters, Prometheus text by hand (like the broker's; no framework).
//! One egress listener runs per process, so the counters are statics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const LABELS: [&str; 5] = ["allow", "deny", "require_approval", "refused", "error"];

static CONNECTIONS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static OPEN: AtomicI64 = AtomicI64::new(0);
static BYTES_UP: AtomicU64 = AtomicU64::new(0);
static BYTES_DOWN: AtomicU64 = AtomicU64::new(0);

pub(crate) fn count(decision: &str) {
    if let Some(c) = LABELS
        .iter()
        .position(|l| *l == decision)
        .and_then(|i| CONNECTIONS.get(i))
    {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn bytes(up: u64, down: u64) {
    BYTES_UP.fetch_add(up, Ordering::Relaxed);
    BYTES_DOWN.fetch_add(down, Ordering::Relaxed);
}

/// Counts one open tunnel for as long as it lives.
pub(crate) struct OpenTunnel;

impl OpenTunnel {
    pub(crate) fn new() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        OpenTunnel
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `firebreak_egress_connections_total{decision}`, `firebreak_egress_open_tunnels` and the
/// byte counters, as Prometheus text.
pub fn render_metrics() -> String {
    let mut out = String::new();
    out.push_str("# HELP firebreak_egress_connections_total Egress requests by outcome: allow, deny, require_approval (policy), refused (before policy: malformed, unauthenticated, stale, limited), error (resolve, connect, audit).\n");
    out.push_str("# TYPE firebreak_egress_connections_total counter\n");
    for (label, c) in LABELS.iter().zip(CONNECTIONS.iter()) {
        let _ = writeln!(
            out,
            "firebreak_egress_connections_total{{decision=\"{label}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    out.push_str(
        "# HELP firebreak_egress_open_tunnels Tunnels and forwarded requests in progress.\n",
    );
    out.push_str("# TYPE firebreak_egress_open_tunnels gauge\n");
    let _ = writeln!(
        out,
        "firebreak_egress_open_tunnels {}",
        OPEN.load(Ordering::Relaxed)
    );
    out.push_str("# HELP firebreak_egress_bytes_up_total Bytes from agents to destinations.\n");
    out.push_str("# TYPE firebreak_egress_bytes_up_total counter\n");
    let _ = writeln!(
        out,
        "firebreak_egress_bytes_up_total {}",
        BYTES_UP.load(Ordering::Relaxed)
    );
    out.push_str("# HELP firebreak_egress_bytes_down_total Bytes from destinations to agents.\n");
    out.push_str("# TYPE firebreak_egress_bytes_down_total counter\n");
    let _ = writeln!(
        out,
        "firebreak_egress_bytes_down_total {}",
        BYTES_DOWN.load(Ordering::Relaxed)
    );
    out
}
