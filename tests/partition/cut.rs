//! The network cut: replica c3 behind a proxy that holds every byte for 15 s, then delivers
//! them late on the same connections.

use std::time::{Duration, Instant};

use crate::common::audit::{self, LeaseHistory};
use crate::common::fleet::{Fleet, assert_takeovers_after_expiry, record_leases};
use crate::common::proxy::{Mode, Proxy};
use crate::common::{self, shard_of};
use crate::common::{RELEASE_NS, sa_replica_options, wait_for};
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::shard::shard_lease_name;

use crate::*;

pub(crate) async fn network_cut(client: &Client, fleet: &Fleet) {
    let client = client.clone();
    let opts = sa_replica_options();
    let leases = record_leases(client.clone(), RELEASE_NS, GROUP);

    let proxy = Proxy::start(Proxy::upstream_of(&opts.kubeconfig));
    let proxied = common::cluster().dir.join("cut-c3.kubeconfig");
    proxy.kubeconfig(&opts.kubeconfig, &proxied);
    let started = Instant::now();
    let direct = opts.kubeconfig.clone();
    let replicas = three_replicas("c", GROUP, &opts, [direct.clone(), direct, proxied]);
    let ids = ["c1", "c2", "c3"];
    wait_for("3 replicas balanced", Duration::from_secs(30), || {
        settled(&client, &ids, fleet)
    })
    .await;
    fleet
        .converge(&client, "cold start", Duration::from_secs(240))
        .await;
    eprintln!(
        "{SETS} sets converged {:?} after the replicas started",
        started.elapsed()
    );

    // Churn, then the cut.
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c3_shards: Vec<u32> = holders(&client)
        .await
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_deref() == Some("c3"))
        .map(|(s, _)| s as u32)
        .collect();
    assert!(!c3_shards.is_empty(), "c3 holds shards before the cut");
    assert_eq!(shards_held(&replicas[2]), Some(c3_shards.len() as f64));
    let cut_ms = proxy.set(Mode::BlackHole);
    let cut = Instant::now();

    // c3 fences itself by its renew deadline (4 s; its gate is checked every 200 ms).
    let renew_deadline = Duration::from_secs(opts.renew_deadline_s);
    let seen = wait_for("c3 to fence itself", Duration::from_secs(15), || async {
        (shards_held(&replicas[2])? == 0.0).then(|| cut.elapsed())
    })
    .await;
    // When it fenced each shard, from its log (the gauge above is polled). The gate refuses
    // new work from the deadline on (every check compares with the clock); the fencer that
    // cancels work in flight runs every 200 ms, hence the slack (and scheduling on 2 cores).
    let cut_at = jiff::Timestamp::from_millisecond(cut_ms as i64).unwrap();
    let c3_log = replicas[2].log_text();
    let fenced_at: Vec<jiff::Timestamp> = c3_log
        .lines()
        .filter(|l| l.contains("lease not renewed within the renew deadline"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|t| *t >= cut_at)
        .collect();
    assert_eq!(
        fenced_at.len(),
        c3_shards.len(),
        "c3 logged the fencing of each of its shards"
    );
    let fenced = fenced_at
        .iter()
        .map(|t| t.duration_since(cut_at).unsigned_abs())
        .max()
        .unwrap();
    eprintln!(
        "c3 stopped serving its shards {fenced:?} after the cut (its gauge showed 0 after {seen:?})"
    );
    assert!(
        fenced <= renew_deadline + Duration::from_millis(500),
        "c3 fenced itself {fenced:?} after the cut, later than its renew deadline {renew_deadline:?}"
    );

    // c1 and c2 take c3's shards once its Leases expire (and then settle at 4 each).
    wait_for(
        "c1 and c2 hold c3's shards",
        Duration::from_secs(20),
        || async {
            let h = holders(&client).await;
            c3_shards
                .iter()
                .all(|s| matches!(h[*s as usize].as_deref(), Some("c1" | "c2")))
                .then_some(())
        },
    )
    .await;
    let takeover = cut.elapsed();
    let bound = common::failover_bound(opts.lease_duration_s);
    eprintln!("c1 and c2 hold c3's shards {takeover:?} after the cut (bound {bound:?})");
    assert!(takeover <= bound, "takeover took {takeover:?}");
    wait_for(
        "c1 and c2 to hold every shard",
        Duration::from_secs(20),
        || settled(&client, &["c1", "c2"], fleet),
    )
    .await;

    // While c3 is still cut off, a set on one of its former shards is served by the others.
    let (victim_i, (victim_ns, victim)) = (0..SETS)
        .map(|i| (i, fleet.place(i)))
        .find(|(_, (ns, _))| c3_shards.contains(&shard_of(ns, SHARDS)))
        .expect("a set on a shard c3 held");
    fleet.desired.lock().unwrap().insert(victim_i, 4);
    common::fleet::sets(&client, &victim_ns)
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"searcher": {"replicas": 4}}})),
        )
        .await
        .unwrap();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), &victim_ns);
    wait_for(
        "a set of c3's former shard to converge during the cut",
        Duration::from_secs(20),
        || async {
            let d = deployments.get(&format!("{victim}-searcher")).await.ok()?;
            (d.spec?.replicas == Some(4)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed())).await;

    assert!(
        c3_log.contains("lease not renewed within the renew deadline"),
        "c3 logged its fencing"
    );

    // Heal without closing anything: what c3 sent before and during the cut (renewals and
    // applies it gave up on when it fenced) is delivered now, late.
    let heal_ms = proxy.set(Mode::Pass);
    let heal = Instant::now();
    wait_for("3 replicas balanced again", Duration::from_secs(40), || {
        settled(&client, &ids, fleet)
    })
    .await;
    let rejoin = heal.elapsed();
    eprintln!("shards rebalanced over 3 replicas {rejoin:?} after the heal");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    fleet
        .converge(&client, "after the heal", Duration::from_secs(120))
        .await;
    eprintln!(
        "{applied} updates; all converged {:?} after the heal",
        heal.elapsed()
    );
    assert!(applied > 40, "churn went on ({applied} updates)");
    assert!(
        proxy.forwarded_since(heal_ms, true).0 > 0,
        "c3 talks to the API server again"
    );
    let (_, late_chunks) = proxy.counters();
    assert!(
        late_chunks > 0,
        "requests held by the cut were delivered after it"
    );

    // The witness: the API server's audit log. Every child and status write came from the
    // holder of its namespace's shard (Lease history from the same log), except writes of
    // c3 delivered late by the heal, which must be refused, or harmless: a write sent before
    // the cut and landing as the heal releases it (within a second), on a set that then
    // converged to its current spec (checked above). Late Lease renewals of c3 are refused.
    let records = audit::records();
    let lease_duration = Duration::from_secs(opts.lease_duration_s);
    let history = LeaseHistory::new(&records, &format!("{GROUP}-shard-"), lease_duration);
    let heal_at = jiff::Timestamp::from_millisecond(heal_ms as i64).unwrap();
    let late_window = heal_at + jiff::SignedDuration::from_secs(1);
    let lease_of = |replica: &str, ns: &str| {
        ids.contains(&replica)
            .then(|| shard_lease_name(GROUP, shard_of(ns, SHARDS), SHARDS))
    };
    let (checked, strays) = audit::writes_by_non_holders(&records, &history, lease_of);
    for r in &strays {
        let late = r.replica() == Some("c3") && r.received >= heal_at && r.received <= late_window;
        assert!(
            late,
            "{:?} wrote {} {} at {} without holding its shard (code {})",
            r.replica(),
            r.resource,
            r.key(),
            r.received,
            r.code
        );
    }
    // No Lease write of c3 after the heal (late renewals from before the cut included) took
    // a Lease while another replica held it.
    let c3_leases: Vec<&audit::Record> = records
        .iter()
        .filter(|r| r.resource == "leases" && r.lease_holder.as_deref() == Some("c3"))
        .filter(|r| r.received >= heal_at)
        .collect();
    let taken: Vec<String> = c3_leases
        .iter()
        .filter(|r| r.succeeded())
        .filter(|r| {
            let name = r.name.as_deref().unwrap_or_default();
            matches!(history.holder_at(name, r.received), Some(h) if h != "c3")
        })
        .map(|r| format!("{} {} at {}", r.key(), r.code, r.received))
        .collect();
    assert!(
        taken.is_empty(),
        "c3 took a Lease another replica held: {taken:?}"
    );
    let refused_late = c3_leases
        .iter()
        .filter(|r| r.received <= late_window && !r.succeeded())
        .count();
    eprintln!(
        "audit: {checked} writes checked against the Lease history; {} late child or status writes of c3 landed at the heal ({} refused); {refused_late} late Lease writes of c3 refused, none took a Lease; {late_chunks} chunks delivered late",
        strays.len(),
        strays.iter().filter(|r| !r.succeeded()).count(),
    );
    let after_heal = records
        .iter()
        .filter(|r| r.is_reconcile_write() && r.replica() == Some("c3") && r.received > late_window)
        .count();
    assert!(after_heal > 0, "c3 writes again as a holder after the heal");

    // Leases changed hands only after expiry or release.
    let takeovers = assert_takeovers_after_expiry(&leases, lease_duration);
    eprintln!("{takeovers} direct takeovers checked");
    assert!(takeovers >= 1, "the cut produced expiry takeovers");
    for r in replicas {
        for forbidden in ["Forbidden", "code=403"] {
            assert!(
                !r.log_text().contains(forbidden),
                "{}: no request forbidden with the chart's RBAC",
                r.identity
            );
        }
        terminate(r).await;
    }
}
