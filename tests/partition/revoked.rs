//! Lease access revoked: one replica's Lease RoleBinding deleted under churn.

use std::time::Duration;

use crate::common::audit::{self, LeaseHistory};
use crate::common::fleet::Fleet;
use crate::common::{self, shard_of};
use crate::common::{RELEASE_NS, sa_replica_options, wait_for};
use kube::Client;
use tokio_util::sync::CancellationToken;
use vecodex_operator::shard::shard_lease_name;

use crate::*;

const REVOKED_GROUP: &str = "revoked";
/// The ServiceAccount of the replica whose Lease access is taken away, bound to the chart's
/// ClusterRole and Lease Role like the chart's own.
const REVOCABLE: &str = "revocable";

fn revocable_rbac() -> String {
    [
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {REVOCABLE}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: vecodex-operator\nsubjects:\n- kind: ServiceAccount\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {REVOCABLE}-leases\n  namespace: {RELEASE_NS}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: vecodex-operator-leases\nsubjects:\n- kind: ServiceAccount\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
    ]
    .join("---\n")
}

/// One replica loses the right to touch Leases (its RoleBinding deleted) while it keeps
/// reaching the API server for everything else, under churn: its Lease writes stop
/// succeeding, but its child writes still would. The audit log is the witness that it fenced
/// itself: no child or status write of it reached the API server later than its last
/// successful Lease write plus its renew deadline (and a second for a write in flight), and
/// every write of the group came from the holder of its shard at that moment. When the
/// binding is back, it rejoins and the sets converge.
pub(crate) async fn lease_access_revoked(client: &Client, fleet: &Fleet) {
    common::kubectl_apply_stdin(&revocable_rbac());
    let out = common::kubectl([
        "-n",
        RELEASE_NS,
        "create",
        "token",
        REVOCABLE,
        "--duration",
        "1h",
    ]);
    assert!(out.status.success(), "kubectl create token {REVOCABLE}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let cluster = common::cluster();
    let kubeconfig = cluster.dir.join("revocable.kubeconfig");
    common::token_kubeconfig(&cluster.kubeconfig, &token, &kubeconfig);

    let opts = sa_replica_options();
    let direct = opts.kubeconfig.clone();
    let replicas = three_replicas(
        "r",
        REVOKED_GROUP,
        &opts,
        [direct.clone(), direct, kubeconfig],
    );
    let ids = ["r1", "r2", "r3"];
    wait_for("r1..r3 balanced", Duration::from_secs(60), || {
        settled_in(client, REVOKED_GROUP, &ids, fleet)
    })
    .await;
    fleet
        .converge(client, "before the revocation", Duration::from_secs(60))
        .await;
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;

    let revoked = jiff::Timestamp::now();
    let out = common::kubectl([
        "-n",
        RELEASE_NS,
        "delete",
        "rolebinding",
        &format!("{REVOCABLE}-leases"),
    ]);
    assert!(out.status.success(), "the Lease RoleBinding is deleted");
    wait_for(
        "r1 and r2 to hold every shard",
        Duration::from_secs(30),
        || settled_in(client, REVOKED_GROUP, &["r1", "r2"], fleet),
    )
    .await;
    // r3's shards are served by the others for a while before the binding returns.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restored = jiff::Timestamp::now();
    common::kubectl_apply_stdin(&revocable_rbac());
    wait_for("r1..r3 balanced again", Duration::from_secs(60), || {
        settled_in(client, REVOKED_GROUP, &ids, fleet)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    fleet
        .converge(
            client,
            "after the binding is back",
            Duration::from_secs(120),
        )
        .await;
    assert!(applied > 40, "churn went on ({applied} updates)");

    let records = audit::records();
    let r3_writes = |from: jiff::Timestamp, to: jiff::Timestamp| -> Vec<&audit::Record> {
        records
            .iter()
            .filter(|r| r.replica() == Some("r3") && r.is_reconcile_write())
            .filter(|r| r.received >= from && r.received < to)
            .collect()
    };
    let last_renewal = records
        .iter()
        .filter(|r| r.is_lease_traffic() && r.replica() == Some("r3") && r.succeeded())
        .filter(|r| r.received < restored)
        .map(|r| r.received)
        .max()
        .expect("r3 wrote Leases before the revocation");
    assert!(
        last_renewal >= revoked - jiff::SignedDuration::from_secs(2),
        "r3 renewed its Leases until the revocation (last {last_renewal}, revoked {revoked})"
    );
    let fence = last_renewal
        + jiff::SignedDuration::from_secs(opts.renew_deadline_s as i64)
        + jiff::SignedDuration::from_secs(1);
    let before = r3_writes(revoked - jiff::SignedDuration::from_secs(5), revoked).len();
    assert!(before > 0, "r3 served churn before the revocation");
    let unfenced: Vec<String> = r3_writes(fence, restored)
        .iter()
        .map(|r| format!("{} {} at {} ({})", r.resource, r.key(), r.received, r.code))
        .collect();
    assert!(
        unfenced.is_empty(),
        "r3 wrote after its last Lease renewal ({last_renewal}) plus its renew deadline: {unfenced:?}"
    );
    let lease_duration = Duration::from_secs(opts.lease_duration_s);
    let history = LeaseHistory::new(&records, &format!("{REVOKED_GROUP}-shard-"), lease_duration);
    let checked = audit::assert_writes_by_holders(&records, &history, |replica, ns| {
        ids.contains(&replica)
            .then(|| shard_lease_name(REVOKED_GROUP, shard_of(ns, SHARDS), SHARDS))
    });
    eprintln!(
        "Lease access revoked: r3's last Lease write at {last_renewal}, {before} writes of r3 in the 5 s before, none after {fence}; {checked} writes checked against the Lease history; {applied} updates"
    );
    for r in replicas {
        terminate(r).await;
    }
}
