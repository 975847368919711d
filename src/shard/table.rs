//! What `vecodex-operator shards` prints: each shard's holder (from its Lease) and the
//! namespaces and sets it covers, then how the work is shared: per replica the shards it
//! holds, their namespaces and sets and its share of all sets, and the imbalance (max/mean
//! of sets per replica).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::hash::Scheme;
use super::lease::SCHEME_ANNOTATION;
use super::names::{group_selector, shard_lease_name};
use crate::crd::VecodexSet;

/// Lists the group's Leases and every set, and renders [`render`].
pub async fn shards_table(
    client: Client,
    lease_namespace: &str,
    group: &str,
    scheme: Scheme,
) -> Result<String, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease_namespace);
    let leases = leases
        .list(&ListParams::default().labels(&group_selector(group)))
        .await?
        .items;
    let sets: Api<VecodexSet> = Api::all(client);
    let namespaces: Vec<String> = sets
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|s| s.namespace().unwrap_or_default())
        .collect();
    Ok(render(scheme, group, &leases, &namespaces))
}

/// The table for `leases` of `group` and one namespace per set in `set_namespaces`.
pub fn render(scheme: Scheme, group: &str, leases: &[Lease], set_namespaces: &[String]) -> String {
    let by_name: BTreeMap<String, &Lease> = leases.iter().map(|l| (l.name_any(), l)).collect();
    let mut namespaces: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    let mut sets: BTreeMap<u32, usize> = BTreeMap::new();
    for ns in set_namespaces {
        let shard = scheme.shard_of(ns);
        namespaces.entry(shard).or_default().insert(ns);
        *sets.entry(shard).or_default() += 1;
    }
    let mut out = format!(
        "{:<6} {:<40} {:<50} {:>10} {:>6}  RENEWED\n",
        "SHARD", "LEASE", "HOLDER", "NAMESPACES", "SETS"
    );
    // Per holder: shards, namespaces, sets.
    let mut replicas: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut other_schemes = BTreeSet::new();
    for shard in 0..scheme.shards {
        let name = shard_lease_name(group, shard, scheme.shards);
        let lease = by_name.get(&name);
        let spec = lease.and_then(|l| l.spec.clone()).unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        if holder.is_some()
            && let Some(recorded) = lease
                .and_then(|l| l.metadata.annotations.as_ref())
                .and_then(|a| a.get(SCHEME_ANNOTATION))
            && *recorded != scheme.id()
        {
            other_schemes.insert(recorded.clone());
        }
        let renewed = spec
            .renew_time
            .map_or_else(|| "-".to_owned(), |t| t.0.to_string());
        let (n, s) = (
            namespaces.get(&shard).map_or(0, BTreeSet::len),
            sets.get(&shard).copied().unwrap_or(0),
        );
        let who = holder.clone().unwrap_or_else(|| "<none>".to_owned());
        let entry = replicas.entry(who.clone()).or_default();
        entry.0 += 1;
        entry.1 += n;
        entry.2 += s;
        out.push_str(&format!(
            "{shard:<6} {name:<40} {who:<50} {n:>10} {s:>6}  {renewed}\n"
        ));
    }
    let total: usize = set_namespaces.len();
    out.push_str(&format!(
        "\n{:<50} {:>6} {:>10} {:>6} {:>7}\n",
        "REPLICA", "SHARDS", "NAMESPACES", "SETS", "SHARE"
    ));
    for (who, (shards, ns, s)) in &replicas {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * *s as f64 / total as f64
        };
        out.push_str(&format!(
            "{who:<50} {shards:>6} {ns:>10} {s:>6} {share:>6.1}%\n"
        ));
    }
    let held: Vec<usize> = replicas
        .iter()
        .filter(|(who, _)| *who != "<none>")
        .map(|(_, (_, _, s))| *s)
        .collect();
    if held.is_empty() {
        out.push_str("\nimbalance: no replica holds a shard\n");
    } else {
        let mean = held.iter().sum::<usize>() as f64 / held.len() as f64;
        let max = held.iter().copied().max().unwrap_or(0) as f64;
        let ratio = if mean > 0.0 { max / mean } else { 1.0 };
        out.push_str(&format!(
            "\nimbalance: {ratio:.2} (max/mean of sets per replica; {} replicas, mean {mean:.1} sets)\n",
            held.len()
        ));
    }
    out.push_str(&format!("scheme: {scheme}\n"));
    for other in other_schemes {
        out.push_str(&format!(
            "note: some Leases are held under shard scheme {other}, not {scheme}: pass its --shards and --shard-hash\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::shard::hash::ShardHash;

    fn lease(group: &str, shard: u32, shards: u32, holder: &str, scheme: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {
                "name": shard_lease_name(group, shard, shards),
                "annotations": {SCHEME_ANNOTATION: scheme},
            },
            "spec": {"holderIdentity": holder, "renewTime": "2026-12-03T10:00:00.000000Z"},
        }))
        .unwrap()
    }

    #[test]
    fn the_table_shows_each_replicas_share_and_the_imbalance() {
        let scheme = Scheme::new(ShardHash::Mixed, 4);
        let leases: Vec<Lease> = (0..4)
            .map(|s| lease("g", s, 4, if s < 3 { "a" } else { "b" }, "mixed/4"))
            .collect();
        let namespaces: Vec<String> = (0..40).map(|i| format!("tenant-{}", i % 10)).collect();
        let out = render(scheme, "g", &leases, &namespaces);
        let mut per_replica = BTreeMap::new();
        for ns in &namespaces {
            let who = if scheme.shard_of(ns) < 3 { "a" } else { "b" };
            *per_replica.entry(who).or_insert(0usize) += 1;
        }
        let a = per_replica.get("a").copied().unwrap_or(0);
        let b = per_replica.get("b").copied().unwrap_or(0);
        let line_a = out.lines().find(|l| l.starts_with("a ")).expect(&out);
        let fields: Vec<&str> = line_a.split_whitespace().collect();
        assert_eq!(fields[1], "3", "{out}");
        assert_eq!(fields[3], a.to_string(), "{out}");
        assert_eq!(
            fields[4],
            format!("{:.1}%", 100.0 * a as f64 / 40.0),
            "{out}"
        );
        let ratio = a.max(b) as f64 / ((a + b) as f64 / 2.0);
        assert!(out.contains(&format!("imbalance: {ratio:.2} ")), "{out}");
        assert!(out.contains("scheme: mixed/4"), "{out}");
        assert!(!out.contains("note:"), "{out}");
    }

    #[test]
    fn the_table_names_leases_of_another_scheme() {
        let scheme = Scheme::new(ShardHash::Mixed, 2);
        let leases = vec![lease("g", 0, 2, "old", "fnv1a/2")];
        let out = render(scheme, "g", &leases, &[]);
        assert!(
            out.contains("note: some Leases are held under shard scheme fnv1a/2"),
            "{out}"
        );
        assert!(out.contains("<none>"), "{out}");
    }
}
