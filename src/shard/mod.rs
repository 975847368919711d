//! Namespace sharding across operator replicas, each shard guarded by a Lease that exactly
//! one replica holds at a time (`--shards 1` is classic leader election with hot standbys).

pub mod gate;
pub mod hash;
pub mod lease;
pub mod manager;
pub mod metrics;

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

pub use gate::{ShardEvent, ShardGate, WorkGuard};
pub use hash::shard_of;
pub use manager::{ShardConfig, ShardManager, default_identity, shard_lease_name};
pub use metrics::ShardMetrics;

use crate::crd::VecodexSet;

/// The table `vecodex-operator shards` prints: each shard's holder (from its Lease) and how
/// many namespaces and sets it covers.
pub async fn shards_table(
    client: Client,
    lease_namespace: &str,
    group: &str,
    shards: u32,
) -> Result<String, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_namespace);
    let leases = leases
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={group}")))
        .await?;
    let by_name: BTreeMap<String, Lease> = leases
        .items
        .into_iter()
        .map(|l| (l.name_any(), l))
        .collect();
    let sets: Api<VecodexSet> = Api::all(client);
    let mut namespaces: BTreeMap<u32, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for set in sets.list(&ListParams::default()).await?.items {
        let ns = set.namespace().unwrap_or_default();
        let shard = shard_of(&ns, shards);
        namespaces.entry(shard).or_default().insert(ns);
        *counts.entry(shard).or_default() += 1;
    }
    let mut out = format!(
        "{:<6} {:<40} {:<50} {:>10} {:>6}  {}\n",
        "SHARD", "LEASE", "HOLDER", "NAMESPACES", "SETS", "RENEWED"
    );
    for shard in 0..shards.max(1) {
        let name = shard_lease_name(group, shard, shards);
        let spec = by_name
            .get(&name)
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let holder = spec
            .holder_identity
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "<none>".to_owned());
        let renewed = spec
            .renew_time
            .map_or_else(|| "-".to_owned(), |t| t.0.to_string());
        out.push_str(&format!(
            "{:<6} {:<40} {:<50} {:>10} {:>6}  {}\n",
            shard,
            name,
            holder,
            namespaces.get(&shard).map_or(0, |n| n.len()),
            counts.get(&shard).copied().unwrap_or(0),
            renewed
        ));
    }
    Ok(out)
}
