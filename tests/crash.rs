//! The operator killed (SIGKILL) in the middle of applying sets' children, again and again,
//! during a cold start of 210 sets over 30 namespaces under churn (4 spec updates per second
//! from the first start to the last restart), with 3 replicas running with the chart's
//! least-privilege ServiceAccount. After the last restart every set converges to its last
//! confirmed update, every child is what the builders make of its set's current spec, and no
//! replica (the killed ones included) had a request forbidden.
//!
//! The replicas reach the API server through a TCP proxy that adds [`LATENCY`] to every
//! response (`tests/common/proxy.rs`). A reconcile applies a set's children in two rounds
//! (Services, then Deployments and the Ingress once the Services answered); on a local
//! control plane a round trip takes milliseconds, so a kill at a random moment mostly lands
//! between two sets' applies. With the latency every reconcile leaves its set half-applied
//! for a while, and the kills interrupt some of them for certain.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::proxy::{Mode, Proxy};
use common::shard_of;
use common::{
    RELEASE_NS, Replica, ReplicaOptions, client, sa_replica_options, shard_holders_in, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

const GROUP: &str = "crash";
const SHARDS: u32 = 8;
const SETS: usize = 210;
const NAMESPACES: usize = 30;
const KILLS: usize = 8;
/// Added to every response the replicas get: a set stays half-applied this long in each
/// reconcile (a fraction of the Leases' renew deadline, so no replica loses its shards).
const LATENCY: Duration = Duration::from_millis(300);

/// Children per set so far (namespace, set) → count, from the managed label's instance.
async fn children_per_set(client: &Client) -> HashMap<(String, String), usize> {
    let lp = ListParams::default().labels(&vecodex_operator::children::managed_selector());
    let mut out: HashMap<(String, String), usize> = HashMap::new();
    let mut add = |ns: Option<String>, labels: &std::collections::BTreeMap<String, String>| {
        if let Some(instance) = labels.get("app.kubernetes.io/instance") {
            *out.entry((ns.unwrap_or_default(), instance.clone()))
                .or_default() += 1;
        }
    };
    for d in Api::<Deployment>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
    {
        add(d.namespace(), d.labels());
    }
    for s in Api::<Service>::all(client.clone()).list(&lp).await.unwrap() {
        add(s.namespace(), s.labels());
    }
    for i in Api::<Ingress>::all(client.clone()).list(&lp).await.unwrap() {
        add(i.namespace(), i.labels());
    }
    out
}

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a
/// failing sequence of kill points can be replayed with `VECODEX_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn killed_mid_apply_again_and_again_then_converges_with_every_child_owned() {
    common::cluster();
    let client = client().await;
    let base = sa_replica_options();
    let proxy = Proxy::start(Proxy::upstream_of(&base.kubeconfig));
    let kubeconfig = common::cluster().dir.join("crash-latency.kubeconfig");
    proxy.kubeconfig(&base.kubeconfig, &kubeconfig);
    proxy.set(Mode::Delay(LATENCY));
    let opts = ReplicaOptions { kubeconfig, ..base };
    let fleet = Fleet::new("crash", SETS, NAMESPACES);
    fleet.create(&client).await;
    let seed = std::env::var("VECODEX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill points from VECODEX_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let started = Instant::now();
    // Spec updates land on sets being applied, on sets whose replica was just killed and on
    // sets still waiting for their first reconcile: each must end as its last confirmed one.
    let stop_churn = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop_churn.clone());
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::start_with(&format!("k{i}-0"), GROUP, SHARDS, &opts))
        .collect();
    let mut logs: Vec<std::path::PathBuf> = replicas.iter().map(|r| r.log.clone()).collect();
    let mut partial_at_kill = 0;
    for kill in 1..=KILLS {
        // Wait until some children exist (the first kill lands once applying has begun),
        // then a random 0.5–2.5 s more.
        wait_for("applying to begin", Duration::from_secs(60), || async {
            (children_per_set(&client).await.values().sum::<usize>() > 0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2000))).await;
        // A replica in the middle of applying, picked at random: one that holds a shard
        // with sets not yet complete (or any holder, or anyone, if there is none).
        let holders = shard_holders_in(&client, RELEASE_NS, GROUP, SHARDS).await;
        let counts = children_per_set(&client).await;
        let unfinished: Vec<u32> = (0..fleet.count)
            .map(|i| fleet.place(i))
            .filter(|set| counts.get(set).copied().unwrap_or(0) < 7)
            .map(|(ns, _)| shard_of(&ns, SHARDS))
            .collect();
        // The shards each replica holds.
        let held: Vec<Vec<u32>> = replicas
            .iter()
            .map(|r| {
                (0..SHARDS)
                    .filter(|s| holders[*s as usize].as_deref() == Some(r.identity.as_str()))
                    .collect()
            })
            .collect();
        let applying: Vec<usize> = (0..replicas.len())
            .filter(|i| held[*i].iter().any(|s| unfinished.contains(s)))
            .collect();
        let busy: Vec<usize> = (0..replicas.len())
            .filter(|i| !held[*i].is_empty())
            .collect();
        let pool = if applying.is_empty() {
            &busy
        } else {
            &applying
        };
        let i = if pool.is_empty() {
            rng.below(3) as usize
        } else {
            pool[rng.below(pool.len() as u64) as usize]
        };
        let held = &held[i];
        let victim = &mut replicas[i];
        victim.signal(libc::SIGKILL);
        let _ = victim.child.wait();
        // Sets of the victim's shards with some but not all of their 7 children: it died in
        // the middle of applying them (nobody else may touch them until its Leases expire).
        let counts = children_per_set(&client).await;
        let total: usize = counts.values().sum();
        let partial = counts
            .iter()
            .filter(|((ns, _), n)| held.contains(&shard_of(ns, SHARDS)) && **n < 7)
            .count();
        partial_at_kill += partial;
        eprintln!(
            "kill {kill} at {:?}: {} (shards {held:?}) killed with {total} of {} children applied, {partial} of its sets half-applied",
            started.elapsed(),
            victim.identity,
            SETS * 7
        );
        // The first half of the kills interrupt the cold start; on a fast machine the later
        // ones may come after it, and then interrupt the churn's applies instead.
        assert!(
            kill > KILLS / 2 || total < SETS * 7,
            "kill {kill} landed during the cold start (not after it)"
        );
        replicas[i] = Replica::start_with(&format!("k{i}-{kill}"), GROUP, SHARDS, &opts);
        logs.push(replicas[i].log.clone());
    }
    assert!(
        partial_at_kill >= 1,
        "at least one kill interrupted a set's children half-way"
    );
    stop_churn.cancel();
    let updates = churner.await.unwrap();
    assert!(
        updates > 20,
        "churn went on during the kills ({updates} updates)"
    );

    let took = fleet
        .converge(
            &client,
            "every set after the last restart",
            Duration::from_secs(240),
        )
        .await;
    eprintln!(
        "{KILLS} kills ({partial_at_kill} half-applied sets in all, {updates} spec updates meanwhile); every set converged {took:?} after the last restart ({:?} after the first start)",
        started.elapsed()
    );
    // Every child is what the builders make of its set's current spec, field for field:
    // no kill left a child of an older spec or a half-made one behind.
    let matched = fleet
        .children_match_specs(&client, SHARDS)
        .await
        .unwrap_or_else(|e| panic!("after the kills: {e}"));
    eprintln!("{matched} children match their sets' current specs");
    // No replica, the killed ones included, had a request forbidden.
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains("Forbidden") && !text.contains("code=403"),
            "{}: no request forbidden with the chart's RBAC",
            log.display()
        );
    }
    for r in &replicas {
        r.signal(libc::SIGTERM);
    }
}
