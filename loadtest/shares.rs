//! How the work is shared among the replicas of a run: per replica the shards it holds (from
//! the shard Leases), the sets in them (the run's sets hashed as the operator hashes them),
//! the reconciles it ran, its CPU, its CPU per reconcile and its queue wait p99 (from its
//! `/metrics`), and the imbalance: max/mean of sets per replica.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client};
use vecodex_operator::shard::{Scheme, shard_lease_name};

use crate::cluster::Replica;
use crate::results::{Share, Shares};

/// The Lease namespace and group of the load test's replicas (their defaults).
const LEASE_NAMESPACE: &str = "default";
const GROUP: &str = "vecodex-operator";

/// The p99 of a Prometheus histogram `name` in `/metrics` text: the upper bound of the first
/// bucket holding 99 % of the observations (`None` without observations). Above the top
/// finite bucket it is that bucket's bound, as a lower bound of the p99 (see
/// [`histogram_p99_exceeds_buckets`]).
pub fn histogram_p99(metrics: &str, name: &str) -> Option<f64> {
    let bucket = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&bucket))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let top = buckets.iter().rev().find(|(le, _)| le.is_finite())?.0;
    (total > 0.0)
        .then(|| {
            buckets
                .iter()
                .find(|(_, n)| *n >= 0.99 * total)
                .map(|(le, _)| le.min(top))
        })
        .flatten()
}

/// Whether more than 1 % of the observations of histogram `name` lie above its top finite
/// bucket (the p99 of [`histogram_p99`] is then only a lower bound).
pub fn histogram_p99_exceeds_buckets(metrics: &str, name: &str) -> bool {
    let bucket = format!("{name}_bucket{{");
    let counts: Vec<(bool, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&bucket))
        .filter_map(|l| {
            let finite = !l.contains("le=\"+Inf\"");
            Some((finite, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = counts
        .iter()
        .filter(|(f, _)| !f)
        .map(|(_, n)| *n)
        .fold(0.0, f64::max);
    let below = counts
        .iter()
        .filter(|(f, _)| *f)
        .map(|(_, n)| *n)
        .fold(0.0, f64::max);
    total > 0.0 && below < 0.99 * total
}

/// Who holds a shard's Lease, and when they acquired it (the holder's own clock).
pub struct Holder {
    pub identity: String,
    pub acquired: Option<jiff::Timestamp>,
}

/// Each shard's holder (index = shard), from the run's shard Leases.
pub async fn shard_holders(client: &Client, shards: u32) -> anyhow::Result<Vec<Option<Holder>>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let list = leases
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={GROUP}")))
        .await?;
    let holder = |shard: u32| -> Option<Holder> {
        let name = shard_lease_name(GROUP, shard, shards);
        let spec = list
            .items
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(name.as_str()))?
            .spec
            .as_ref()?;
        Some(Holder {
            identity: spec.holder_identity.clone().filter(|h| !h.is_empty())?,
            acquired: spec.acquire_time.as_ref().map(|t| t.0),
        })
    };
    Ok((0..shards).map(holder).collect())
}

/// Each replica's share of the sets `set_namespaces` (one entry per set) under `scheme`, with
/// its reconciles and CPU, and the imbalance.
pub async fn shares(
    client: &Client,
    replicas: &[Replica],
    scheme: Scheme,
    set_namespaces: &[String],
) -> anyhow::Result<Shares> {
    let holders: Vec<Option<String>> = shard_holders(client, scheme.shards)
        .await?
        .into_iter()
        .map(|h| h.map(|h| h.identity))
        .collect();
    let mut sets = vec![0usize; replicas.len()];
    let mut unheld = 0usize;
    for ns in set_namespaces {
        let owner = holders[scheme.shard_of(ns) as usize].as_deref();
        match replicas
            .iter()
            .position(|r| Some(r.identity.as_str()) == owner)
        {
            Some(i) => sets[i] += 1,
            None => unheld += 1,
        }
    }
    let total_sets = set_namespaces.len().max(1) as f64;
    let mut rows = Vec::new();
    let mut reconciles = Vec::new();
    for r in replicas {
        reconciles.push(r.reconciles().await);
    }
    let total_reconciles: f64 = reconciles.iter().sum::<f64>().max(1.0);
    for (i, r) in replicas.iter().enumerate() {
        let stats = r.stats();
        let metrics = r.metrics().await.unwrap_or_default();
        let shards = holders
            .iter()
            .filter(|h| h.as_deref() == Some(r.identity.as_str()))
            .count();
        rows.push(Share {
            identity: r.identity.clone(),
            shards,
            sets: sets[i],
            share_of_sets: sets[i] as f64 / total_sets,
            reconciles: reconciles[i],
            share_of_reconciles: reconciles[i] / total_reconciles,
            cpu_seconds: stats.cpu_seconds,
            cpu_ms_per_reconcile: 1000.0 * stats.cpu_seconds / reconciles[i].max(1.0),
            queue_wait_p99_seconds: histogram_p99(&metrics, "workqueue_queue_duration_seconds"),
            queue_wait_p99_above_top_bucket: histogram_p99_exceeds_buckets(
                &metrics,
                "workqueue_queue_duration_seconds",
            ),
            peak_rss_mib: stats.peak_rss_mib,
        });
    }
    let mean = sets.iter().sum::<usize>() as f64 / sets.len().max(1) as f64;
    let max = sets.iter().copied().max().unwrap_or(0) as f64;
    let min = sets.iter().copied().min().unwrap_or(0) as f64;
    Ok(Shares {
        scheme: scheme.id(),
        per_replica: rows,
        sets_unheld: unheld,
        max_over_mean_sets: if mean > 0.0 { max / mean } else { f64::NAN },
        min_over_mean_sets: if mean > 0.0 { min / mean } else { f64::NAN },
    })
}

#[cfg(test)]
mod tests {
    use super::{histogram_p99, histogram_p99_exceeds_buckets};

    #[test]
    fn p99_is_the_bucket_holding_99_percent() {
        let text = "x_bucket{name=\"q\",le=\"0.1\"} 50\nx_bucket{name=\"q\",le=\"1.0\"} 99\nx_bucket{name=\"q\",le=\"+Inf\"} 100\n";
        assert_eq!(histogram_p99(text, "x"), Some(1.0));
        assert!(!histogram_p99_exceeds_buckets(text, "x"));
        let slow = "x_bucket{le=\"0.1\"} 50\nx_bucket{le=\"1.0\"} 90\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_p99(slow, "x"), Some(1.0));
        assert!(histogram_p99_exceeds_buckets(slow, "x"));
        assert_eq!(histogram_p99("", "x"), None);
    }
}
