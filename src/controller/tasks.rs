//! The periodic tasks beside the watches and workers: the resync, the set census and the
//! queue's unfinished-work gauges.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::census;
use crate::metrics::Metrics;
use crate::queue::{Priority, Trigger, WorkQueue};
use crate::shard::ShardGate;
use crate::stores::Stores;

/// Re-queues every set every `period` ±10 %, at low priority.
pub(super) async fn resync(
    stores: Stores,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    period: Duration,
    shutdown: CancellationToken,
) {
    loop {
        // Jitter from the clock's nanoseconds: replicas started together spread out.
        let nanos = jiff::Timestamp::now().subsec_nanosecond().unsigned_abs();
        let jitter = 0.9 + 0.2 * (f64::from(nanos) / 1e9);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period.mul_f64(jitter)) => {}
        }
        let sets = stores.sets.state();
        debug!(sets = sets.len(), "resync");
        for set in sets {
            if let Some(key) = set.key().filter(|k| gate.accepts(k)) {
                queue.add(&key, Priority::Low, Trigger::Resync).await;
            }
        }
    }
}

/// How often the queue's unfinished-work gauges are refreshed (client-go: every 500 ms).
const UNFINISHED_WORK_PERIOD: Duration = Duration::from_millis(500);

/// Refreshes the queue's unfinished-work gauges until `shutdown`.
pub(super) async fn unfinished_work(queue: Arc<WorkQueue>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UNFINISHED_WORK_PERIOD);
    while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
        queue.update_unfinished_work();
    }
}

/// How often the census gauges of the served sets are refreshed.
const CENSUS_PERIOD: Duration = Duration::from_secs(15);

/// Refreshes the census gauges (`vecodex_operator_sets`) from the set cache: the sets of the
/// shards held now, by their Ready condition.
pub(super) async fn take_census(
    stores: Stores,
    gate: Arc<ShardGate>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CENSUS_PERIOD);
    while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
        let mut held = vec![false; stores.scheme.shards as usize];
        for shard in gate.held() {
            held[shard as usize] = true;
        }
        let sets = stores.sets.state();
        let served: Vec<_> = sets
            .iter()
            .filter(|s| {
                s.namespace()
                    .is_some_and(|ns| held[stores.scheme.shard_of(ns) as usize])
            })
            .map(|s| {
                let status = s.parts::<serde::de::IgnoredAny, census::ReadyOnly>().status;
                (s.generation, s.observed_generation, status)
            })
            .collect();
        let tally = census::count(
            served
                .iter()
                .map(|(generation, observed, status)| census::Entry {
                    generation: *generation,
                    observed_generation: *observed,
                    status: status.as_ref(),
                }),
            jiff::Timestamp::now().as_second(),
        );
        metrics.census(&tally);
    }
}
