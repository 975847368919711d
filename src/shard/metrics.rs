//! Shard ownership metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone)]
pub struct ShardMetrics {
    /// Shards of this replica's scheme.
    configured: Gauge,
    held: Gauge,
    /// Per shard of the scheme: 1 while this replica holds it, else 0.
    held_by_shard: Family<ShardLabels, Gauge>,
    acquisitions: Counter,
    losses: Counter,
    handovers: Counter,
    time_to_acquire: Histogram,
    /// 1 while this replica takes no shard because of replicas of another shard scheme.
    waiting_for_scheme: Gauge,
    /// Unix seconds of the manager's last tick (0 before the first), for `/healthz`.
    last_tick: Gauge,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            configured: Gauge::default(),
            held: Gauge::default(),
            held_by_shard: Family::default(),
            acquisitions: Counter::default(),
            losses: Counter::default(),
            handovers: Counter::default(),
            // 10 ms .. ~160 s
            time_to_acquire: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            waiting_for_scheme: Gauge::default(),
            last_tick: Gauge::default(),
        }
    }
}

impl ShardMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vecodex_operator_shards_configured",
            "Shards of this replica's scheme (--shards)",
            self.configured.clone(),
        );
        registry.register(
            "vecodex_operator_shards_held",
            "Shards this replica holds",
            self.held.clone(),
        );
        registry.register(
            "vecodex_operator_shard_held",
            "1 while this replica holds the shard, else 0; summed over the replicas, 0 is a shard nobody serves",
            self.held_by_shard.clone(),
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
            "vecodex_operator_shard_scheme_waiting",
            "1 while this replica takes no shard because replicas of another shard scheme (hash and shard count) hold shards or started earlier",
            self.waiting_for_scheme.clone(),
        );
        registry.register(
            "vecodex_operator_shard_manager_last_tick_seconds",
            "Unix time of the shard manager's last tick",
            self.last_tick.clone(),
        );
        registry.register(
            "vecodex_operator_shard_time_to_acquire_seconds",
            "From becoming the preferred owner of a shard to holding its lease",
            self.time_to_acquire.clone(),
        );
    }

    pub fn ticked(&self) {
        self.last_tick.set(unix_now() as i64);
    }

    /// Seconds since the manager's last tick; `None` before it started.
    pub fn since_last_tick(&self) -> Option<u64> {
        let last = self.last_tick.get();
        (last > 0).then(|| unix_now().saturating_sub(last as u64))
    }

    /// Exports every shard of the scheme, held or not, so that a shard nobody holds shows
    /// as a sum of 0 rather than as a missing series.
    pub fn configured(&self, shards: u32) {
        self.configured.set(i64::from(shards));
        self.held(&[]);
    }

    pub fn held(&self, held: &[u32]) {
        self.held.set(held.len() as i64);
        for shard in 0..self.configured.get() {
            let labels = ShardLabels {
                shard: shard.to_string(),
            };
            let on = held.contains(&(shard as u32));
            self.held_by_shard.get_or_create(&labels).set(i64::from(on));
        }
    }

    pub fn acquired(&self, waited: Duration) {
        self.acquisitions.inc();
        self.time_to_acquire.observe(waited.as_secs_f64());
    }

    pub fn waiting_for_scheme(&self, waiting: bool) {
        self.waiting_for_scheme.set(i64::from(waiting));
    }

    pub fn lost(&self) {
        self.losses.inc();
    }

    pub fn handed_over(&self) {
        self.handovers.inc();
    }
}

fn unix_now() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0)
}
