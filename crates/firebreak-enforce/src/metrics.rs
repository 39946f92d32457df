//! A Prometheus histogram, kept by hand like the broker's (no metrics framework).

use std::fmt::Write as _;

/// Cumulative bucket counts, sum and count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Records one value.
    pub fn observe(&mut self, buckets: &[f64], v: f64) {
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

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends the exposition lines for `name`.
    pub fn render(&self, out: &mut String, name: &str, buckets: &[f64]) {
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}
