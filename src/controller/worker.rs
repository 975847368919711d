//! The workers: each takes a key from the queue, reconciles it while its shard is served
//! here (as one trace), and tells the queue how it went.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::{Metrics, results};
use crate::queue::{Item, Priority, Trigger, WorkQueue};
use crate::reconcile::{Context, Report, reconcile};
use crate::shard::{ShardGate, WorkGuard};

pub(super) async fn worker(
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    metrics: Metrics,
    timeout: Duration,
) {
    while let Some(item) = queue.get().await {
        let key = item.key.clone();
        // Only while this replica holds the key's shard; a lost shard cancels the reconcile.
        let Some(guard) = gate.begin(&key) else {
            queue.done(&key);
            continue;
        };
        let shard = gate.shard_of_key(&key);
        work(&ctx, &queue, &metrics, item, shard, guard, timeout).await;
        queue.done(&key);
    }
}

/// One reconcile as one trace: a root span `reconcile` with the set, shard, trigger, queue
/// wait and attempt, and, when it ends, the outcome and requeue delay.
async fn work(
    ctx: &Context,
    queue: &WorkQueue,
    metrics: &Metrics,
    item: Item,
    shard: u32,
    guard: WorkGuard,
    timeout: Duration,
) {
    let (ns, name) = (item.key.namespace(), item.key.name());
    let span = info_span!(
        parent: None,
        "reconcile",
        otel.name = "reconcile",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        key = %item.key,
        "k8s.namespace.name" = ns,
        "vecodex.set.name" = name,
        "vecodex.set.uid" = tracing::field::Empty,
        "vecodex.set.generation" = tracing::field::Empty,
        "vecodex.shard" = i64::from(shard),
        "vecodex.trigger" = item.trigger.as_str(),
        "vecodex.priority" = ?item.priority,
        "vecodex.queue_wait_ms" = item.waited.as_millis() as i64,
        "vecodex.attempt" = i64::from(item.attempt),
        "vecodex.outcome" = tracing::field::Empty,
        "vecodex.requeue_delay_ms" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let (trace_id, span_id) = crate::telemetry::ids(&span);
    span.record("trace_id", tracing::field::display(&trace_id));
    span.record("span_id", tracing::field::display(&span_id));

    let started = std::time::Instant::now();
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, reconcile(ctx, &item.key)).instrument(span.clone()) =>
            Some(r.unwrap_or(Err(crate::reconcile::Error::Timeout(timeout)))),
        _ = guard.token.cancelled() => None,
    };
    drop(guard);
    let (outcome, result_label) = match &result {
        None => ("cancelled: shard lost".to_owned(), results::CANCELLED),
        Some(Ok(Report::Gone)) => ("gone".to_owned(), results::GONE),
        Some(Ok(Report::NotSynced)) => (
            "shard's caches not listed yet".to_owned(),
            results::NOT_SYNCED,
        ),
        Some(Ok(Report::Invalid)) => ("invalid".to_owned(), results::INVALID),
        Some(Ok(Report::Applied {
            writes: 0,
            status_patched: false,
            ..
        })) => ("no-op".to_owned(), results::NOOP),
        Some(Ok(Report::Applied {
            writes,
            status_patched,
            ..
        })) => (
            format!("applied {} objects", writes + usize::from(*status_patched)),
            results::APPLIED,
        ),
        Some(Err(_)) => ("error".to_owned(), results::ERROR),
    };
    span.record("vecodex.outcome", outcome.as_str());
    metrics.reconciled(result_label, started.elapsed(), &trace_id);
    span.in_scope(|| {
        match result {
            None => warn!("shard lost: reconcile cancelled"),
            Some(Ok(report)) => {
                queue.forget(&item.key);
                if let Report::Applied {
                    status_after: Some(refresh),
                    ..
                } = report
                {
                    // A new set's first status finishes it, and goes before starting the
                    // next set: during a cold start sets complete one by one. Any other
                    // refresh is low priority: under load the next spec change (someone
                    // waits for its children) goes first, and the status follows when a
                    // worker is free.
                    let priority = if refresh.first {
                        Priority::Finish
                    } else {
                        Priority::Low
                    };
                    queue.add_after(&item.key, refresh.after, priority, Trigger::ChildStatus);
                }
                match report {
                    Report::Applied {
                        writes: 0,
                        status_patched: false,
                        ..
                    } => debug!("no change"),
                    Report::NotSynced => debug!("the shard's children are still being listed"),
                    Report::Invalid => {
                        span.record("otel.status_code", "ERROR");
                        span.record("otel.status_message", "invalid spec");
                        info!(?report, "reconciled");
                    }
                    report => info!(?report, "reconciled"),
                }
            }
            Some(Err(err)) => {
                let delay = queue.retry(&item.key, item.priority);
                span.record("vecodex.requeue_delay_ms", delay.as_millis() as i64);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_message", err.to_string().as_str());
                error!(error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
            }
        }
    });
}
