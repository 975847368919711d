//! Shard ownership metrics.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct ShardMetrics {
    held: Gauge,
    acquisitions: Counter,
    losses: Counter,
    handovers: Counter,
    time_to_acquire: Histogram,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            held: Gauge::default(),
            acquisitions: Counter::default(),
            losses: Counter::default(),
            handovers: Counter::default(),
            // 10 ms .. ~160 s
            time_to_acquire: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
        }
    }
}

impl ShardMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vecodex_operator_shards_held",
            "Shards this replica holds",
            self.held.clone(),
        );
        registry.register(
            "vecodex_operator_shard_acquisitions",
            "Shard leases acquired by this replica",
            self.acquisitions.clone(),
        );
        registry.register(
            "vecodex_operator_shard_losses",
            "Shards lost without a hand-over (renew deadline passed, or another replica took the lease)",
            self.losses.clone(),
        );
        registry.register(
            "vecodex_operator_shard_handovers",
            "Shards handed over to a preferred replica",
            self.handovers.clone(),
        );
        registry.register(
            "vecodex_operator_shard_time_to_acquire_seconds",
            "From becoming the preferred owner of a shard to holding its lease",
            self.time_to_acquire.clone(),
        );
    }

    pub fn held(&self, n: usize) {
        self.held.set(n as i64);
    }

    pub fn acquired(&self, waited: Duration) {
        self.acquisitions.inc();
        self.time_to_acquire.observe(waited.as_secs_f64());
    }

    pub fn lost(&self) {
        self.losses.inc();
    }

    pub fn handed_over(&self) {
        self.handovers.inc();
    }
}
