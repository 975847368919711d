//! High availability on a real control plane: operator replicas share 8 shards of 30
//! namespaces through Leases; a replica is killed, one is stopped, others join; no two
//! replicas ever reconcile the same shard at overlapping times, and a Lease changes hands only
//! when released or expired.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::fleet::{assert_no_overlap, assert_takeovers_after_expiry, record_leases};
use common::{
    LEASE_DURATION_S, Replica, client, failover_bound, seed_example, shard_holders, wait_for,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;
use vecodex_operator::shard::shard_of;

const GROUP: &str = "ha";
const SHARDS: u32 = 8;
const NAMESPACES: usize = 30;

fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

async fn all_converged(client: &Client) -> bool {
    let all: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<VecodexSet>(&()));
    let Ok(list) = all.list(&ListParams::default()).await else {
        return false;
    };
    list.items.len() == NAMESPACES
        && list.items.iter().all(|s| {
            let v = serde_json::to_value(s).unwrap_or_default();
            v["status"]["observedGeneration"] == v["metadata"]["generation"]
        })
}

fn loads(holders: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in holders.iter().flatten() {
        *m.entry(h.clone()).or_insert(0) += 1;
    }
    m
}

/// Waits until every shard is held by one of `replicas` with each holding `min..=max`.
async fn wait_balanced(
    client: &Client,
    replicas: &[&str],
    min: usize,
    max: usize,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("shards balanced over {replicas:?}"),
        timeout,
        || async {
            let holders = shard_holders(client, GROUP, SHARDS).await;
            let l = loads(&holders);
            let ok = holders
                .iter()
                .all(|h| h.as_deref().is_some_and(|h| replicas.contains(&h)))
                && replicas
                    .iter()
                    .all(|r| (min..=max).contains(&l.get(*r).copied().unwrap_or(0)));
            ok.then_some(())
        },
    )
    .await;
    start.elapsed()
}

#[tokio::test]
async fn shards_spread_fail_over_hand_over_and_never_overlap() {
    common::cluster();
    let client = client().await;
    let leases = record_leases(client.clone(), "default", GROUP);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // Namespaces chosen so that every shard covers a few (FNV-1a spreads similar names
    // unevenly over so few shards).
    let mut per_shard = [0usize; SHARDS as usize];
    let chosen: Vec<String> = (0..)
        .map(|i| format!("tenant-{i}"))
        .filter(|ns| {
            let s = shard_of(ns, SHARDS) as usize;
            per_shard[s] += 1;
            per_shard[s] <= NAMESPACES.div_ceil(SHARDS as usize)
        })
        .take(NAMESPACES)
        .collect();
    let mut names = Vec::new();
    for ns in chosen {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
        let set: DynamicObject = serde_json::from_value(seed_example(&ns, "search")).unwrap();
        sets(&client, &ns)
            .create(&PostParams::default(), &set)
            .await
            .unwrap();
        names.push(ns);
    }

    // 1. Three replicas: every shard gets one holder, each holds 2 or 3, every set converges.
    let mut replicas: HashMap<&str, Replica> = HashMap::new();
    for id in ["r1", "r2", "r3"] {
        replicas.insert(id, Replica::start(id, GROUP, SHARDS));
    }
    let took = wait_balanced(&client, &["r1", "r2", "r3"], 2, 3, Duration::from_secs(20)).await;
    eprintln!("3 replicas balanced in {took:?}");
    wait_for("every set converged", Duration::from_secs(60), || async {
        all_converged(&client).await.then_some(())
    })
    .await;

    // 2. kill -9 r1: survivors hold its shards within lease duration + 5 s,
    //    and a set changed during the outage converges. First the survivors warm the caches
    //    of the shards a failure would bring them (a Lease duration after the members last
    //    changed).
    for id in ["r2", "r3"] {
        wait_for(
            &format!("{id} to warm its standby shards"),
            Duration::from_secs(30),
            || async {
                // The last word on its standby shards, after the members last changed.
                replicas[id]
                    .log_text()
                    .lines()
                    .rfind(|l| l.contains("standby shard"))?
                    .contains("every standby shard's children are cached")
                    .then_some(())
            },
        )
        .await;
    }
    let holders = shard_holders(&client, GROUP, SHARDS).await;
    let r1_shard = holders
        .iter()
        .position(|h| h.as_deref() == Some("r1"))
        .expect("r1 holds a shard") as u32;
    let victim = names
        .iter()
        .find(|ns| shard_of(ns, SHARDS) == r1_shard)
        .expect("a namespace on r1's shard")
        .clone();
    replicas["r1"].signal(libc::SIGKILL);
    let killed = Instant::now();
    sets(&client, &victim)
        .patch(
            "search",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"searcher": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    let bound = failover_bound(LEASE_DURATION_S);
    wait_balanced(&client, &["r2", "r3"], 4, 4, bound + Duration::from_secs(5)).await;
    let failover = killed.elapsed();
    eprintln!("failover after kill -9 took {failover:?} (bound {bound:?})");
    assert!(
        failover <= bound,
        "failover took {failover:?}, more than {bound:?}"
    );
    // The survivors kept r1's shards warm: taking them over listed nothing.
    let r1_shards: Vec<u32> = (0..SHARDS)
        .filter(|&s| holders[s as usize].as_deref() == Some("r1"))
        .collect();
    for shard in &r1_shards {
        let line = format!("queueing its sets shard={shard} warm=true");
        wait_for(
            &format!("a survivor to take shard {shard} over from warm caches"),
            Duration::from_secs(10),
            || async {
                ["r2", "r3"]
                    .iter()
                    .any(|id| replicas[id].log_text().contains(&line))
                    .then_some(())
            },
        )
        .await;
    }
    wait_for(
        "the set changed during the outage to converge",
        Duration::from_secs(30),
        || async {
            let v = serde_json::to_value(sets(&client, &victim).get("search").await.ok()?).ok()?;
            (v["status"]["observedGeneration"] == v["metadata"]["generation"]
                && v["status"]["searcher"]["replicas"] == 2)
                .then_some(())
        },
    )
    .await;

    // A replica joins: three again, 2 or 3 each.
    replicas.insert("r4", Replica::start("r4", GROUP, SHARDS));
    wait_balanced(&client, &["r2", "r3", "r4"], 2, 3, Duration::from_secs(20)).await;

    // 3. SIGTERM r2: its shards move within 3 s.
    replicas["r2"].signal(libc::SIGTERM);
    let stopped = Instant::now();
    wait_balanced(&client, &["r3", "r4"], 4, 4, Duration::from_secs(10)).await;
    let handover = stopped.elapsed();
    eprintln!("hand-over after SIGTERM took {handover:?}");
    assert!(
        handover <= Duration::from_secs(3),
        "hand-over took {handover:?}"
    );
    let r2 = replicas.get_mut("r2").unwrap();
    let status = wait_for("r2 to exit", Duration::from_secs(15), || {
        let s = r2.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "r2 exits cleanly: {status}");

    // 4. More replicas join: four live replicas hold 2 shards each.
    replicas.insert("r5", Replica::start("r5", GROUP, SHARDS));
    replicas.insert("r6", Replica::start("r6", GROUP, SHARDS));
    let took = wait_balanced(
        &client,
        &["r3", "r4", "r5", "r6"],
        2,
        2,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("rebalanced to 4 replicas in {took:?}");
    wait_for(
        "every set converged at the end",
        Duration::from_secs(60),
        || async { all_converged(&client).await.then_some(()) },
    )
    .await;

    // 5a. No two replicas reconciled the same shard at overlapping times.
    let logs: Vec<(String, String)> = replicas
        .iter()
        .map(|(id, r)| (id.to_string(), r.log_text()))
        .collect();
    let total = assert_no_overlap(&logs);
    assert!(
        total >= NAMESPACES,
        "reconcile intervals were recorded ({total})"
    );

    // 5b. A Lease changed hands only after a release or an expiry.
    let changes = assert_takeovers_after_expiry(&leases, Duration::from_secs(LEASE_DURATION_S));
    eprintln!("{changes} direct takeovers checked");
    assert!(changes >= 1, "the kill -9 produced expiry takeovers");

    for r in replicas.values() {
        r.signal(libc::SIGTERM);
    }
}
