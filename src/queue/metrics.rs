//! Work-queue metrics with client-go's names and meaning, labelled by queue name.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub name: String,
}

type Seconds = Gauge<f64, AtomicU64>;

fn durations() -> Histogram {
    // 10 µs .. ~170 s, as client-go's 1e-8 * 10^n buckets cover the useful range.
    Histogram::new(exponential_buckets(1e-5, 4.0, 13))
}

#[derive(Clone)]
pub struct QueueMetrics {
    pub depth: Family<QueueLabels, Gauge>,
    pub adds: Family<QueueLabels, Counter>,
    pub retries: Family<QueueLabels, Counter>,
    pub queue_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    pub work_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    pub unfinished_work: Family<QueueLabels, Seconds>,
    pub longest_running: Family<QueueLabels, Seconds>,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_duration: Family::new_with_constructor(durations),
            work_duration: Family::new_with_constructor(durations),
            unfinished_work: Family::default(),
            longest_running: Family::default(),
        }
    }
}

fn labels(name: &str) -> QueueLabels {
    QueueLabels {
        name: name.to_owned(),
    }
}

impl QueueMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workqueue_depth",
            "Current depth of the work queue",
            self.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Keys added to the work queue",
            self.adds.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Retries handled by the work queue",
            self.retries.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long a key stays in the queue before a worker takes it",
            self.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long processing a key takes",
            self.work_duration.clone(),
        );
        registry.register(
            "workqueue_unfinished_work_seconds",
            "Seconds of work in progress that has not been observed by work_duration; large values mean stuck workers",
            self.unfinished_work.clone(),
        );
        registry.register(
            "workqueue_longest_running_processor_seconds",
            "How long the longest-running worker has been processing its key",
            self.longest_running.clone(),
        );
    }

    /// Creates every series of queue `name` at zero, so they show before the first event.
    pub(super) fn init(&self, name: &str) {
        let l = labels(name);
        drop(self.depth.get_or_create(&l));
        drop(self.adds.get_or_create(&l));
        drop(self.retries.get_or_create(&l));
        drop(self.queue_duration.get_or_create(&l));
        drop(self.work_duration.get_or_create(&l));
        drop(self.unfinished_work.get_or_create(&l));
        drop(self.longest_running.get_or_create(&l));
    }

    pub(super) fn added(&self, name: &str, depth: usize) {
        let l = labels(name);
        self.adds.get_or_create(&l).inc();
        self.depth.get_or_create(&l).set(depth as i64);
    }

    pub(super) fn depth(&self, name: &str, depth: usize) {
        self.depth.get_or_create(&labels(name)).set(depth as i64);
    }

    pub(super) fn taken(&self, name: &str, depth: usize, waited: Duration) {
        let l = labels(name);
        self.depth.get_or_create(&l).set(depth as i64);
        self.queue_duration
            .get_or_create(&l)
            .observe(waited.as_secs_f64());
    }

    pub(super) fn worked(&self, name: &str, took: Duration) {
        self.work_duration
            .get_or_create(&labels(name))
            .observe(took.as_secs_f64());
    }

    pub(super) fn retried(&self, name: &str) {
        self.retries.get_or_create(&labels(name)).inc();
    }

    pub(super) fn unfinished(&self, name: &str, total: Duration, longest: Duration) {
        let l = labels(name);
        self.unfinished_work
            .get_or_create(&l)
            .set(total.as_secs_f64());
        self.longest_running
            .get_or_create(&l)
            .set(longest.as_secs_f64());
    }
}
