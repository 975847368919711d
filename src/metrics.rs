//! The Prometheus registry of the process: reconcile, work-queue, shard, Kubernetes client and
//! tracing metrics, and build info.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::census::{self, Tally};
use crate::queue::QueueMetrics;
use crate::shard::ShardMetrics;

/// Values of the `result` label of `vecodex_operator_reconciles`.
pub mod results {
    pub const APPLIED: &str = "applied";
    pub const NOOP: &str = "noop";
    pub const INVALID: &str = "invalid";
    pub const ERROR: &str = "error";
    pub const CANCELLED: &str = "cancelled";
    pub const GONE: &str = "gone";
    pub const NOT_SYNCED: &str = "not_synced";
    /// Every result is exported from the start (at 0): an error ratio never lacks a series.
    pub const ALL: [&str; 7] = [APPLIED, NOOP, INVALID, ERROR, CANCELLED, GONE, NOT_SYNCED];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// One of [`results::ALL`].
    pub result: String,
}

/// A set's Ready condition: see `census`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    /// True, False or Unknown
    pub ready: String,
    pub reason: String,
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
    pub spans_exported: Counter<u64, AtomicU64>,
    pub spans_dropped: Counter<u64, AtomicU64>,
    pub sets: Family<SetLabels, Gauge>,
    pub sets_longest: Family<SetLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let queue = QueueMetrics::default();
        queue.register(&mut registry);
        let shard = ShardMetrics::default();
        shard.register(&mut registry);
        let reconciles = Family::<ResultLabels, Counter>::default();
        for result in results::ALL {
            reconciles
                .get_or_create(&ResultLabels {
                    result: result.to_owned(),
                })
                .inc_by(0);
        }
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
        let spans_exported = Counter::default();
        registry.register(
            "vecodex_operator_spans_exported",
            "Spans the OTLP collector accepted",
            spans_exported.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "vecodex_operator_spans_dropped",
            "Spans not exported: queue full, collector down or slow",
            spans_dropped.clone(),
        );
        let sets = Family::<SetLabels, Gauge>::default();
        registry.register(
            "vecodex_operator_sets",
            "Sets of the shards this replica holds, by their Ready condition's status and reason",
            sets.clone(),
        );
        let sets_longest = Family::<SetLabels, Gauge>::default();
        registry.register(
            "vecodex_operator_sets_longest_in_state_seconds",
            "Of those sets, the longest time one has had this Ready status (from its lastTransitionTime)",
            sets_longest.clone(),
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
            spans_exported,
            spans_dropped,
            sets,
            sets_longest,
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

    /// Sets every (ready, reason) pair, 0 for those with no set, so the series never vanish.
    pub fn census(&self, tally: &BTreeMap<(&'static str, &'static str), Tally>) {
        for ready in census::STATES {
            for reason in census::REASONS.iter().chain([&census::OTHER]) {
                let t = tally.get(&(ready, *reason)).cloned().unwrap_or_default();
                let labels = SetLabels {
                    ready: ready.to_owned(),
                    reason: (*reason).to_owned(),
                };
                self.sets.get_or_create(&labels).set(t.sets);
                self.sets_longest
                    .get_or_create(&labels)
                    .set(t.oldest_seconds);
            }
        }
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
