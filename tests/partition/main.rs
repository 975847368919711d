//! A network cut between one replica and the API server, under churn of 210 sets over 30
//! namespaces with 3 replicas running with the chart's least-privilege ServiceAccount.
//!
//! Replica c3 reaches the API server only through a TCP proxy the test controls
//! (`tests/common/proxy.rs`). The proxy black-holes it: c3 must stop reconciling its shards
//! no later than its renew deadline (its shard gate, seen in `/metrics`, and its log), c1
//! and c2 take the shards only after the Leases expire, and when the cut heals (without
//! closing a connection, so what c3 sent before and during the cut lands late) c3 rejoins,
//! the shards rebalance and every update converges. The API server's audit log is the
//! witness: every child and status write came from the holder of its namespace's shard,
//! but for c3's late writes released by the heal, which are refused or land at the heal on
//! sets that then converge; c3's late Lease renewals take no Lease.

#[path = "../common/mod.rs"]
mod common;
mod cut;
mod revoked;
mod slow;

use cut::network_cut;
use revoked::lease_access_revoked;
use slow::slow_api_server;

use std::time::Duration;

use common::fleet::Fleet;
use common::{
    RELEASE_NS, Replica, ReplicaOptions, client, metric, replica_http, shard_holders_in, wait_for,
};
use kube::Client;

pub(crate) const GROUP: &str = "cut";
pub(crate) const SHARDS: u32 = 8;
pub(crate) const SETS: usize = 210;
pub(crate) const NAMESPACES: usize = 30;

pub(crate) async fn holders(client: &Client) -> Vec<Option<String>> {
    shard_holders_in(client, RELEASE_NS, GROUP, SHARDS).await
}

/// Every shard of `group` held by one of `ids`, the fleet settled (see `settled_in`).
pub(crate) async fn settled_in(
    client: &Client,
    group: &str,
    ids: &[&str],
    fleet: &Fleet,
) -> Option<()> {
    common::settled_in(client, RELEASE_NS, group, ids, &fleet.loads(SHARDS)).await
}

pub(crate) async fn settled(client: &Client, ids: &[&str], fleet: &Fleet) -> Option<()> {
    settled_in(client, GROUP, ids, fleet).await
}

pub(crate) fn shards_held(r: &Replica) -> Option<f64> {
    metric(
        &replica_http(&r.log, "/metrics")?,
        "vecodex_operator_shards_held",
    )
}

/// Replicas `{prefix}1`–`{prefix}3` of `group` with `opts`, each through its kubeconfig of
/// `kubeconfigs` (a phase cuts off, slows or revokes the access a kubeconfig gives).
pub(crate) fn three_replicas(
    prefix: &str,
    group: &str,
    opts: &ReplicaOptions,
    kubeconfigs: [std::path::PathBuf; 3],
) -> [Replica; 3] {
    let mut n = 0;
    kubeconfigs.map(|kubeconfig| {
        n += 1;
        let opts = ReplicaOptions {
            kubeconfig,
            ..opts.clone()
        };
        Replica::start_with(&format!("{prefix}{n}"), group, SHARDS, &opts)
    })
}

#[tokio::test]
async fn network_cut_and_slow_api_server_under_churn() {
    common::cluster();
    let client = client().await;
    let fleet = Fleet::new("net", SETS, NAMESPACES);
    fleet.create(&client).await;
    network_cut(&client, &fleet).await;
    slow_api_server(&client, &fleet).await;
    lease_access_revoked(&client, &fleet).await;
}

/// Waits for a replica to exit after SIGTERM.
pub(crate) async fn terminate(mut r: Replica) {
    r.signal(libc::SIGTERM);
    let status = wait_for("a replica to exit", Duration::from_secs(30), || {
        let s = r.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "{} exits cleanly: {status}", r.identity);
}
