//! The Prometheus registry of the process and its text encoding.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::queue::QueueMetrics;
use crate::shard::ShardMetrics;

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub queue: QueueMetrics,
    pub shard: ShardMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let queue = QueueMetrics::default();
        queue.register(&mut registry);
        let shard = ShardMetrics::default();
        shard.register(&mut registry);
        registry.register(
            "vecodex_operator_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let up: Gauge = Gauge::default();
        up.set(1);
        registry.register("vecodex_operator_up", "1 while the process runs", up);
        Metrics {
            registry: Arc::new(registry),
            queue,
            shard,
        }
    }
}

impl Metrics {
    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
