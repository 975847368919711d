//! High availability on a real control plane: operator replicas share 8 shards of 30
//! namespaces through Leases; a replica is killed, one is stopped, others join; every write
//! the audit log holds came from the holder of its namespace's shard at that moment, and a
//! Lease changes hands only when released or expired.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::audit;
use common::fleet::{assert_takeovers_after_expiry, record_leases};
use common::{
    LEASE_DURATION_S, Replica, client, failover_bound, seed_example, shard_holders, shard_of,
    wait_for,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;
use vecodex_operator::shard::shard_lease_name;

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

fn loads_of(holders: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in holders.iter().flatten() {
        *m.entry(h.clone()).or_insert(0) += 1;
    }
    m
}

/// Waits until every shard is held by one of `replicas`, each holds at least one, and the
/// holders are what every replica computes from them (the assignment for one set in each of
/// `namespaces` is kept as it is: the fleet has settled).
async fn wait_settled(
    client: &Client,
    replicas: &[&str],
    namespaces: &[String],
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut loads = vec![0u64; SHARDS as usize];
    for ns in namespaces {
        loads[shard_of(ns, SHARDS) as usize] += 1;
    }
    wait_for(
        &format!("shards settled over {replicas:?}"),
        timeout,
        || common::settled_in(client, "default", GROUP, replicas, &loads),
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
    let chosen: Vec<String> = (0..NAMESPACES).map(|i| format!("tenant-{i}")).collect();
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

    // 1. Three replicas: every shard gets one holder, the fleet settles on the assignment
    //    every replica computes, every set converges.
    let mut replicas: HashMap<&str, Replica> = HashMap::new();
    for id in ["r1", "r2", "r3"] {
        replicas.insert(id, Replica::start(id, GROUP, SHARDS));
    }
    let took = wait_settled(
        &client,
        &["r1", "r2", "r3"],
        &names,
        Duration::from_secs(20),
    )
    .await;
    eprintln!("3 replicas settled in {took:?}");
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
    wait_for(
        "the survivors to hold every shard",
        bound + Duration::from_secs(5),
        || async {
            shard_holders(&client, GROUP, SHARDS)
                .await
                .iter()
                .all(|h| matches!(h.as_deref(), Some("r2" | "r3")))
                .then_some(())
        },
    )
    .await;
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

    // A replica joins: three again.
    replicas.insert("r4", Replica::start("r4", GROUP, SHARDS));
    wait_settled(
        &client,
        &["r2", "r3", "r4"],
        &names,
        Duration::from_secs(20),
    )
    .await;

    // 3. SIGTERM r2: its shards move within 3 s.
    replicas["r2"].signal(libc::SIGTERM);
    let stopped = Instant::now();
    wait_for(
        "r3 and r4 to hold every shard",
        Duration::from_secs(10),
        || async {
            shard_holders(&client, GROUP, SHARDS)
                .await
                .iter()
                .all(|h| matches!(h.as_deref(), Some("r3" | "r4")))
                .then_some(())
        },
    )
    .await;
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

    // 4. More replicas join: four live replicas share the shards.
    replicas.insert("r5", Replica::start("r5", GROUP, SHARDS));
    replicas.insert("r6", Replica::start("r6", GROUP, SHARDS));
    let took = wait_settled(
        &client,
        &["r3", "r4", "r5", "r6"],
        &names,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("rebalanced to 4 replicas in {took:?}");

    // `vecodex-operator shards` shows how the work is shared: per replica the shards it
    // holds and its sets, their share, and max/mean as the imbalance.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vecodex-operator"))
        .args([
            "shards",
            "--shards",
            &SHARDS.to_string(),
            "--lease-group",
            GROUP,
        ])
        .env("KUBECONFIG", &common::cluster().kubeconfig)
        .output()
        .expect("vecodex-operator shards runs");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let holders = shard_holders(&client, GROUP, SHARDS).await;
    let mut per_replica: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ns in &names {
        let holder = holders[shard_of(ns, SHARDS) as usize]
            .clone()
            .unwrap_or_default();
        per_replica.entry(holder).or_default().1 += 1;
    }
    for (holder, shards) in loads_of(&holders) {
        per_replica.entry(holder).or_default().0 = shards;
    }
    for (holder, (shards, sets)) in &per_replica {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(holder.as_str()))
            .unwrap_or_else(|| panic!("a line for {holder}:\n{table}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], shards.to_string(), "{holder}'s shards:\n{table}");
        assert_eq!(fields[3], sets.to_string(), "{holder}'s sets:\n{table}");
        let share = format!("{:.1}%", 100.0 * *sets as f64 / NAMESPACES as f64);
        assert_eq!(fields[4], share, "{holder}'s share:\n{table}");
    }
    let max = per_replica.values().map(|(_, s)| *s).max().unwrap_or(0) as f64;
    let ratio = max / (NAMESPACES as f64 / per_replica.len() as f64);
    assert!(
        table.contains(&format!("imbalance: {ratio:.2} ")),
        "imbalance {ratio:.2}:\n{table}"
    );
    wait_for(
        "every set converged at the end",
        Duration::from_secs(60),
        || async { all_converged(&client).await.then_some(()) },
    )
    .await;

    // 5a. The API server's audit log: every child and status write came from the replica
    //     that held its namespace's shard at that moment, by the Lease writes of the same log.
    let lease_duration = Duration::from_secs(LEASE_DURATION_S);
    let checked = audit::assert_group_writes_by_holders(GROUP, lease_duration, |replica, ns| {
        replicas
            .contains_key(replica)
            .then(|| shard_lease_name(GROUP, shard_of(ns, SHARDS), SHARDS))
    });
    eprintln!("audit: {checked} writes, each by the holder of its shard");
    assert!(
        checked >= NAMESPACES,
        "the replicas' writes were audited ({checked})"
    );

    // 5b. A Lease changed hands only after a release or an expiry.
    let changes = assert_takeovers_after_expiry(&leases, Duration::from_secs(LEASE_DURATION_S));
    eprintln!("{changes} direct takeovers checked");
    assert!(changes >= 1, "the kill -9 produced expiry takeovers");

    for r in replicas.values() {
        r.signal(libc::SIGTERM);
    }
}
