//! The Prometheus registry of the process: reconcile, work-queue, shard, Kubernetes client and
//! tracing metrics, and build info.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::queue::QueueMetrics;
use crate::shard::ShardMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// applied, noop, invalid, error, cancelled, gone
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub verb: String,
    pub resource: String,
}

fn request_latency() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub queue: QueueMetrics,
    pub shard: ShardMetrics,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: HistogramWithExemplars<TraceLabels>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub spans_dropped: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let queue = QueueMetrics::default();
        queue.register(&mut registry);
        let shard = ShardMetrics::default();
        shard.register(&mut registry);
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "vecodex_operator_reconciles",
            "Reconciles by result",
            reconciles.clone(),
        );
        // 1 ms .. ~65 s
        let reconcile_duration = HistogramWithExemplars::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "vecodex_operator_reconcile_duration_seconds",
            "Duration of one reconcile; exemplars carry the trace id",
            reconcile_duration.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "vecodex_operator_kube_requests",
            "Kubernetes API requests by verb, resource and status code",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(request_latency as fn() -> Histogram);
        registry.register(
            "vecodex_operator_kube_request_duration_seconds",
            "Kubernetes API request latency (for watches: until the response headers)",
            request_duration.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "vecodex_operator_spans_dropped",
            "Spans not exported: queue full, collector down or slow",
            spans_dropped.clone(),
        );
        registry.register(
            "vecodex_operator_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry: Arc::new(registry),
            queue,
            shard,
            reconciles,
            reconcile_duration,
            requests,
            request_duration,
            spans_dropped,
        }
    }
}

impl Metrics {
    /// The registry in Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn reconciled(&self, result: &str, took: Duration, trace_id: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.reconcile_duration.observe(
            took.as_secs_f64(),
            Some(TraceLabels {
                trace_id: trace_id.to_owned(),
            }),
            None,
        );
    }

    pub fn request(&self, verb: &str, resource: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.request_duration
            .get_or_create(&LatencyLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}
