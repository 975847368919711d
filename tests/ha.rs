//! High availability on a real control plane: operator replicas share 8 shards of 30
//! namespaces through Leases; a replica is killed, one is stopped, others join; no two
//! replicas ever reconcile the same shard at overlapping times, and a Lease changes hands only
//! when released or expired.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    LEASE_DURATION_S, RETRY_PERIOD_S, Replica, client, seed_example, shard_holders, wait_for,
};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use vecodex_operator::crd::VecodexSet;
use vecodex_operator::shard::shard_of;

const GROUP: &str = "ha";
const SHARDS: u32 = 8;
const NAMESPACES: usize = 30;

/// A holder change seen on a shard Lease: (lease, holder, acquireTime, renewTime) in order.
type LeaseLog = Arc<Mutex<Vec<(String, Option<String>, Option<String>, Option<String>)>>>;

fn record_leases(client: Client) -> LeaseLog {
    let log: LeaseLog = Arc::default();
    let out = log.clone();
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, "default");
        let config = watcher::Config::default().labels(&format!("app.kubernetes.io/name={GROUP}"));
        let mut stream = std::pin::pin!(watcher::watcher(api, config));
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) = event {
                let spec = l.spec.clone().unwrap_or_default();
                out.lock().unwrap().push((
                    l.name_any(),
                    spec.holder_identity.filter(|h| !h.is_empty()),
                    spec.acquire_time.map(|t| t.0.to_string()),
                    spec.renew_time.map(|t| t.0.to_string()),
                ));
            }
        }
    });
    log
}

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

/// Parses `reconcile interval shard=N started_ms=A finished_ms=B` lines.
fn intervals(log: &str) -> Vec<(u32, u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.rsplit(&format!(" {name}="))
            .next()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("reconcile interval"))
        .filter_map(|l| {
            Some((
                field(l, "shard")? as u32,
                field(l, "started_ms")?,
                field(l, "finished_ms")?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn shards_spread_fail_over_hand_over_and_never_overlap() {
    common::cluster();
    let client = client().await;
    let leases = record_leases(client.clone());
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

    // 2. kill -9 r1: survivors hold its shards within lease duration + retry period + 2 s,
    //    and a set changed during the outage converges.
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
    let bound = Duration::from_secs(LEASE_DURATION_S + RETRY_PERIOD_S + 2);
    wait_balanced(&client, &["r2", "r3"], 4, 4, bound + Duration::from_secs(5)).await;
    let failover = killed.elapsed();
    eprintln!("failover after kill -9 took {failover:?} (bound {bound:?})");
    assert!(
        failover <= bound,
        "failover took {failover:?}, more than {bound:?}"
    );
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
    let mut by_shard: BTreeMap<u32, Vec<(u64, u64, String)>> = BTreeMap::new();
    for (id, r) in &replicas {
        for (shard, start, end) in intervals(&r.log_text()) {
            by_shard
                .entry(shard)
                .or_default()
                .push((start, end, id.to_string()));
        }
    }
    let total: usize = by_shard.values().map(Vec::len).sum();
    assert!(
        total >= NAMESPACES,
        "reconcile intervals were recorded ({total})"
    );
    for (shard, mut list) in by_shard {
        list.sort();
        for pair in list.windows(2) {
            let ((_, end_a, a), (start_b, _, b)) = (&pair[0], &pair[1]);
            assert!(
                a == b || end_a <= start_b,
                "shard {shard}: {a} until {end_a} overlaps {b} from {start_b}"
            );
        }
    }

    // 5b. A Lease changed hands only after a release or an expiry.
    let log = leases.lock().unwrap().clone();
    let mut last: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let mut changes = 0;
    for (lease, holder, acquired, renewed) in log {
        if !lease.contains("-shard-") {
            continue;
        }
        if let Some((Some(prev), prev_renew)) = last.get(&lease)
            && let Some(new) = &holder
            && new != prev
        {
            changes += 1;
            let (Some(prev_renew), Some(acquired)) = (prev_renew.as_deref(), acquired.as_deref())
            else {
                panic!("{lease}: holder change without times");
            };
            let prev_t: jiff::Timestamp = prev_renew.parse().unwrap();
            let acq_t: jiff::Timestamp = acquired.parse().unwrap();
            let gap = acq_t.duration_since(prev_t);
            assert!(
                gap >= jiff::SignedDuration::from_secs(LEASE_DURATION_S as i64),
                "{lease}: {new} took over from {prev} {gap:?} after its last renewal, while it was still valid"
            );
        }
        last.insert(lease, (holder, renewed));
    }
    eprintln!("{changes} direct takeovers checked");
    assert!(changes >= 1, "the kill -9 produced expiry takeovers");

    for r in replicas.values() {
        r.signal(libc::SIGTERM);
    }
}
