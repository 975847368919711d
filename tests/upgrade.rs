//! A rolling upgrade that changes the shard scheme, on a real control plane: three replicas
//! hash namespaces with FNV-1a alone (`--shard-hash fnv1a`), and are replaced one by one by
//! replicas of the default scheme, under churn. Shard numbers mean other namespaces under
//! the two schemes, so a new replica must take no shard while an old one serves: the old
//! ones keep every shard until the last is gone, the new ones take over within a lease
//! duration plus 5 s of its `kill -9`, every write in the audit log came from the holder of
//! its namespace's shard under the writer's scheme, and every set converges with its
//! children relabelled for the new scheme.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::audit;
use common::fleet::{Fleet, assert_takeovers_after_expiry, record_leases};
use common::{
    LEASE_DURATION_S, Replica, ReplicaOptions, client, failover_bound, metric, replica_http,
    shard_holders, shard_of, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use vecodex_operator::children::{LABEL_SHARD, managed_selector};
use vecodex_operator::shard::lease::SCHEME_ANNOTATION;
use vecodex_operator::shard::{Scheme, ShardHash, shard_lease_name};

const GROUP: &str = "upgrade";
const SHARDS: u32 = 8;
const SETS: usize = 60;
const NAMESPACES: usize = 30;

/// Waits until every shard Lease is held by one of `holders`.
async fn wait_held_by(client: &Client, holders: &[&str], timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("every shard held by one of {holders:?}"),
        timeout,
        || async {
            shard_holders(client, GROUP, SHARDS)
                .await
                .iter()
                .all(|h| h.as_deref().is_some_and(|h| holders.contains(&h)))
                .then_some(())
        },
    )
    .await;
    start.elapsed()
}

/// The scheme each shard Lease records.
async fn recorded_schemes(client: &Client) -> Vec<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut out = Vec::new();
    for shard in 0..SHARDS {
        let lease = leases
            .get(&shard_lease_name(GROUP, shard, SHARDS))
            .await
            .unwrap();
        out.push(lease.annotations().get(SCHEME_ANNOTATION).cloned());
    }
    out
}

#[tokio::test]
async fn a_new_shard_scheme_serves_only_once_the_old_replicas_are_gone() {
    common::cluster();
    let client = client().await;
    let leases = record_leases(client.clone(), "default", GROUP);
    let fleet = Fleet::new("team", SETS, NAMESPACES);
    fleet.create(&client).await;

    let old = ReplicaOptions {
        extra_args: vec!["--shard-hash".into(), "fnv1a".into()],
        ..ReplicaOptions::default()
    };
    let new = ReplicaOptions::default();
    let mut replicas: HashMap<&str, Replica> = HashMap::new();
    for id in ["o1", "o2", "o3"] {
        replicas.insert(id, Replica::start_with(id, GROUP, SHARDS, &old));
    }
    wait_held_by(&client, &["o1", "o2", "o3"], Duration::from_secs(30)).await;
    fleet
        .converge(
            &client,
            "the old scheme's cold start",
            Duration::from_secs(120),
        )
        .await;
    let stop = CancellationToken::new();
    let churn = fleet.churn(client.clone(), 4, stop.clone());

    // 1. A replica of the new scheme beside them takes nothing and says why.
    replicas.insert("n1", Replica::start_with("n1", GROUP, SHARDS, &new));
    wait_for(
        "n1 to wait for the old scheme",
        Duration::from_secs(20),
        || async {
            let metrics = replica_http(&replicas["n1"].log, "/metrics")?;
            (metric(&metrics, "vecodex_operator_shard_scheme_waiting") == Some(1.0)
                && replicas["n1"]
                    .log_text()
                    .contains("waiting for the replicas of another shard scheme"))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(LEASE_DURATION_S)).await;
    let holders = shard_holders(&client, GROUP, SHARDS).await;
    assert!(
        holders
            .iter()
            .all(|h| matches!(h.as_deref(), Some("o1" | "o2" | "o3"))),
        "the old replicas keep every shard beside a new one: {holders:?}"
    );
    assert!(
        recorded_schemes(&client)
            .await
            .iter()
            .all(|s| s.as_deref() == Some("fnv1a/8")),
        "every shard Lease records the old scheme"
    );

    // 2. Rolling: each old replica is stopped and a new one started.
    replicas["o1"].signal(libc::SIGTERM);
    wait_held_by(&client, &["o2", "o3"], Duration::from_secs(15)).await;
    replicas.insert("n2", Replica::start_with("n2", GROUP, SHARDS, &new));
    replicas["o2"].signal(libc::SIGTERM);
    wait_held_by(&client, &["o3"], Duration::from_secs(15)).await;
    replicas.insert("n3", Replica::start_with("n3", GROUP, SHARDS, &new));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holders = shard_holders(&client, GROUP, SHARDS).await;
    assert!(
        holders.iter().all(|h| h.as_deref() == Some("o3")),
        "the last old replica serves alone while it lives: {holders:?}"
    );

    // 3. The last old replica dies: the new scheme takes every shard within a lease
    //    duration plus 5 s.
    replicas["o3"].signal(libc::SIGKILL);
    let killed = Instant::now();
    let bound = failover_bound(LEASE_DURATION_S);
    wait_held_by(
        &client,
        &["n1", "n2", "n3"],
        bound + Duration::from_secs(10),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the new scheme held every shard {took:?} after the last old replica died");
    assert!(
        took <= bound,
        "the new scheme took over after {took:?} (bound {bound:?})"
    );
    assert!(
        recorded_schemes(&client)
            .await
            .iter()
            .all(|s| s.as_deref() == Some("mixed/8")),
        "every shard Lease records the new scheme"
    );
    // Each replica clears its waiting gauge at its next heartbeat round (a retry period).
    for id in ["n1", "n2", "n3"] {
        wait_for(
            &format!("{id} to stop waiting"),
            Duration::from_secs(5),
            || async {
                let metrics = replica_http(&replicas[id].log, "/metrics")?;
                (metric(&metrics, "vecodex_operator_shard_scheme_waiting")? == 0.0).then_some(())
            },
        )
        .await;
    }
    stop.cancel();
    let updates = churn.await.unwrap();
    assert!(
        updates > 20,
        "the churn ran through the upgrade ({updates} updates)"
    );
    fleet
        .converge(&client, "after the upgrade", Duration::from_secs(90))
        .await;

    // 4. Every child carries its namespace's shard under the new scheme. A set whose
    //    status already reports its generation (an old replica applied and reported it before
    //    the hand-over) is relabelled by the new holder's takeover sweep, at low priority,
    //    after the fleet reads as converged: the labels are waited for, not read once.
    let deployments: Api<Deployment> = Api::all(client.clone());
    let stale = || async {
        deployments
            .list(&ListParams::default().labels(&managed_selector()))
            .await
            .unwrap()
            .into_iter()
            .filter(|d| {
                let ns = d.namespace().unwrap_or_default();
                ns.starts_with("team-")
                    && d.labels().get(LABEL_SHARD) != Some(&shard_of(&ns, SHARDS).to_string())
            })
            .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
            .collect::<Vec<String>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left = stale().await;
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        left = stale().await;
    }
    assert!(
        left.is_empty(),
        "children not relabelled for the new scheme 60 s after the fleet converged: {left:?}"
    );

    // 5. The audit log: every child and status write came from the replica holding its
    //    namespace's shard under that replica's own scheme, by the Lease writes of the same
    //    log, so no namespace was ever served under two schemes; and no shard Lease changed
    //    hands before a release or an expiry.
    let lease_duration = Duration::from_secs(LEASE_DURATION_S);
    let checked = audit::assert_group_writes_by_holders(GROUP, lease_duration, |replica, ns| {
        let hash = match replica {
            "o1" | "o2" | "o3" => ShardHash::Fnv1a,
            "n1" | "n2" | "n3" => ShardHash::Mixed,
            _ => return None,
        };
        let shard = Scheme::new(hash, SHARDS).shard_of(ns);
        Some(shard_lease_name(GROUP, shard, SHARDS))
    });
    eprintln!("audit: {checked} writes, each by the holder of its shard under its scheme");
    assert!(
        checked >= SETS,
        "the replicas' writes were audited ({checked})"
    );
    let changes = assert_takeovers_after_expiry(&leases, Duration::from_secs(LEASE_DURATION_S));
    assert!(changes >= 1, "the kill -9 produced expiry takeovers");
    for r in replicas.values() {
        r.signal(libc::SIGTERM);
    }
}
