//! The Lease protocol under contention, and `--shards 1` (classic leader election with a hot
//! standby) on a real control plane.

mod common;

use std::time::{Duration, Instant};

use common::{
    LEASE_DURATION_S, Replica, ReplicaOptions, client, failover_bound, seed_example, shard_holders,
    wait_for,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;
use vecodex_operator::shard::lease::{Attempt, LeaseClient, Op};

async fn contend(clients: &mut [LeaseClient], name: &str) -> usize {
    for c in clients.iter_mut() {
        c.refresh().await.expect("list leases");
    }
    // The manager's own call: one exchange per replica, planned from the list above.
    let ops = [(name.to_owned(), Op::Acquire("shard"))];
    let attempts = futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.exchange(&ops, Duration::from_secs(10))),
    )
    .await;
    attempts
        .into_iter()
        .filter(|(_, results)| matches!(results.as_slice(), [Some(Ok(Attempt::Held))]))
        .count()
}

fn lease(name: &str, holder: Option<&str>, duration_s: i32) -> Lease {
    let now = MicroTime(jiff::Timestamp::now());
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app.kubernetes.io/name".to_owned(), "race".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration_s),
            renew_time: Some(now.clone()),
            acquire_time: Some(now),
            lease_transitions: Some(3),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn exactly_one_of_five_contenders_wins_each_round() {
    common::cluster();
    let client = client().await;
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut clients: Vec<LeaseClient> = (0..5)
        .map(|i| {
            LeaseClient::new(
                client.clone(),
                "default",
                &format!("c{i}"),
                "mixed/32",
                Duration::from_secs(15),
                "race",
            )
        })
        .collect();
    // 100 rounds over a released Lease, free for everyone at once.
    for round in 0..100 {
        let name = format!("race-{round}");
        api.create(&PostParams::default(), &lease(&name, None, 1))
            .await
            .unwrap();
        let winners = contend(&mut clients, &name).await;
        assert_eq!(winners, 1, "round {round}: {winners} winners");
        let won = api.get(&name).await.unwrap().spec.unwrap();
        assert_eq!(
            won.lease_transitions,
            Some(4),
            "a takeover counts a transition"
        );
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    // And over a Lease whose holder stopped renewing: everyone waits out its duration as they
    // observed it, then exactly one takes it.
    for round in 0..3 {
        let name = format!("expired-{round}");
        api.create(&PostParams::default(), &lease(&name, Some("ghost"), 1))
            .await
            .unwrap();
        assert_eq!(
            contend(&mut clients, &name).await,
            0,
            "not expired yet as observed here"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            contend(&mut clients, &name).await,
            1,
            "expired round {round}"
        );
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test]
async fn one_shard_is_classic_leader_election() {
    common::cluster();
    let client = client().await;
    let ns = common::namespace(&client, "leader").await;
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<VecodexSet>(&()));
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(seed_example(&ns, "one")).unwrap(),
    )
    .await
    .unwrap();
    // Warm standby off: the standby caches no child, and its takeover lists the shard.
    let cold = ReplicaOptions {
        extra_args: vec!["--warm-standby=false".to_owned()],
        ..ReplicaOptions::default()
    };
    let a = Replica::start_with("leader-a", "solo", 1, &cold);
    let b = Replica::start_with("leader-b", "solo", 1, &cold);
    wait_for("a leader", Duration::from_secs(20), || async {
        shard_holders(&client, "solo", 1).await.remove(0)
    })
    .await;
    let converged = |generation: i64| {
        let sets = sets.clone();
        async move {
            let v = serde_json::to_value(sets.get("one").await.ok()?).ok()?;
            (v["status"]["observedGeneration"] == json!(generation)).then_some(())
        }
    };
    wait_for("the leader to reconcile", Duration::from_secs(30), || {
        converged(1)
    })
    .await;
    // The first holder hands the Lease over if the rendezvous hash prefers the other replica
    // once it sees its heartbeat: the leader is the holder that stays for 3 s.
    let leader = wait_for("a stable leader", Duration::from_secs(30), || async {
        let first = shard_holders(&client, "solo", 1).await.remove(0)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let then = shard_holders(&client, "solo", 1).await.remove(0)?;
        (first == then).then_some(then)
    })
    .await;
    let (leader_replica, standby) = if leader == a.identity {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // Leader and standby: every write in the audit log came from the holder of the one
    // shard (the standby may have held it first and handed it over), checked at the end.

    // With warm standby on, the standby would cache the shard's children a Lease duration
    // after the members settled, once the fleet caught up (the set has converged): give it
    // that long and more, then it must not have.
    tokio::time::sleep(Duration::from_secs(LEASE_DURATION_S + 4)).await;
    assert!(
        !standby
            .log_text()
            .contains("every standby shard's children are cached"),
        "the standby cached the shard's children with --warm-standby=false"
    );

    // The standby may have held the shard first: its takeover is the line said after the kill.
    let listed = "queueing its sets shard=0 warm=false";
    let listed_before = standby.log_text().matches(listed).count();
    leader_replica.signal(libc::SIGKILL);
    let killed = Instant::now();
    let bound = failover_bound(LEASE_DURATION_S);
    wait_for(
        "the standby to lead",
        bound + Duration::from_secs(5),
        || async {
            (shard_holders(&client, "solo", 1).await[0].as_deref()
                == Some(standby.identity.as_str()))
            .then_some(())
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("leadership moved {took:?} after kill -9 (bound {bound:?})");
    assert!(took <= bound, "leadership moved after {took:?}");
    wait_for(
        "the new leader to list the shard it took over",
        Duration::from_secs(10),
        || async { (standby.log_text().matches(listed).count() > listed_before).then_some(()) },
    )
    .await;
    sets.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"writer": {"replicas": 2}}})),
    )
    .await
    .unwrap();
    wait_for(
        "the new leader to reconcile",
        Duration::from_secs(30),
        || converged(2),
    )
    .await;
    // The witness: the audit log. Every write of a set's children or status came from the
    // replica holding the one shard at that moment, by the Lease writes of the same log.
    let ids = [a.identity.as_str(), b.identity.as_str()];
    let lease_duration = Duration::from_secs(LEASE_DURATION_S);
    let checked =
        common::audit::assert_group_writes_by_holders("solo", lease_duration, |replica, _| {
            ids.contains(&replica)
                .then(|| vecodex_operator::shard::shard_lease_name("solo", 0, 1))
        });
    eprintln!("audit: {checked} writes, each by the leader of the moment");
    standby.signal(libc::SIGTERM);
}
