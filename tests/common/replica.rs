//! The replicas of an HA test: starting them (with their Lease timings) and reading who holds
//! each shard.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;

use super::*;

/// The shard of a namespace under the default hash with `shards` shards, as the replicas
/// the tests start compute it.
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    vecodex_operator::shard::Scheme::new(Default::default(), shards).shard_of(namespace)
}

pub use super::shared::Replica;

/// Lease timings of the HA tests (shorter than the defaults, same proportions).
pub const LEASE_DURATION_S: u64 = 6;
pub const RETRY_PERIOD_S: u64 = 1;

/// How soon after a replica dies (or is cut off) the others must hold its shards: the load
/// test's failover bar, lease duration + 5 s. What it covers: they observe its last renewal
/// up to a retry period late, wait out the lease, then write the Leases (and may hand one
/// over to balance) on a 2-core machine that also runs the control plane, where lease +
/// retry + 2 s is too tight.
pub fn failover_bound(lease_duration_s: u64) -> Duration {
    Duration::from_secs(lease_duration_s + 5)
}

/// How to start a [`Replica`]: its kubeconfig, Lease namespace, timings and extra flags.
#[derive(Clone)]
pub struct ReplicaOptions {
    pub kubeconfig: PathBuf,
    pub lease_namespace: String,
    pub lease_duration_s: u64,
    pub renew_deadline_s: u64,
    pub retry_period_s: u64,
    pub extra_args: Vec<String>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            kubeconfig: cluster().kubeconfig.clone(),
            lease_namespace: "default".to_owned(),
            lease_duration_s: LEASE_DURATION_S,
            renew_deadline_s: 4,
            retry_period_s: RETRY_PERIOD_S,
            extra_args: Vec::new(),
        }
    }
}

impl Replica {
    /// Starts `vecodex-operator run` as `identity` in lease group `group` with `shards`.
    pub fn start(identity: &str, group: &str, shards: u32) -> Replica {
        Replica::start_with(identity, group, shards, &ReplicaOptions::default())
    }

    /// [`Replica::start`] with a kubeconfig, Lease namespace, timings and flags of its own.
    pub fn start_with(identity: &str, group: &str, shards: u32, opts: &ReplicaOptions) -> Replica {
        let cluster = cluster();
        let log = cluster.dir.join(format!("{group}-{identity}.log"));
        let mut args = shared::replica_flags(
            identity,
            shards,
            Duration::from_secs(opts.lease_duration_s),
            Duration::from_secs(opts.renew_deadline_s),
            Duration::from_secs(opts.retry_period_s),
        );
        args.extend(
            [
                "--lease-group",
                group,
                "--lease-namespace",
                &opts.lease_namespace,
            ]
            .map(str::to_owned),
        );
        args.extend(opts.extra_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = spawn_operator(&opts.kubeconfig, &log, &args);
        if let Ok(mut logs) = REPLICA_LOGS.lock()
            && !logs.contains(&log)
        {
            logs.push(log.clone());
        }
        Replica {
            identity: identity.to_owned(),
            child,
            log,
            metrics_port: None,
        }
    }
}

/// The holder of each shard Lease of `group` (None: missing or released).
pub async fn shard_holders(client: &Client, group: &str, shards: u32) -> Vec<Option<String>> {
    shard_holders_in(client, "default", group, shards).await
}

/// [`shard_holders`] of Leases in `namespace`.
pub async fn shard_holders_in(
    client: &Client,
    namespace: &str,
    group: &str,
    shards: u32,
) -> Vec<Option<String>> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for shard in 0..shards {
        let name = vecodex_operator::shard::shard_lease_name(group, shard, shards);
        let holder = leases
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty());
        out.push(holder);
    }
    out
}

/// `Some` once every shard Lease of `group` (in `lease_ns`, `loads.len()` shards) is held by
/// one of `ids`, each holds at least one, and the holders are what every replica computes
/// from them for these sets per shard: the fleet has settled.
pub async fn settled_in(
    client: &Client,
    lease_ns: &str,
    group: &str,
    ids: &[&str],
    loads: &[u64],
) -> Option<()> {
    let holders = shard_holders_in(client, lease_ns, group, loads.len() as u32).await;
    let members: Vec<String> = ids.iter().map(|r| r.to_string()).collect();
    let each = ids
        .iter()
        .all(|id| holders.iter().any(|h| h.as_deref() == Some(*id)));
    let all = holders
        .iter()
        .all(|h| h.as_deref().is_some_and(|h| ids.contains(&h)));
    let kept = vecodex_operator::shard::assign::assign(&members, loads, &holders)
        .into_iter()
        .map(Some)
        .eq(holders.iter().cloned());
    (each && all && kept).then_some(())
}
