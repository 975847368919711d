//! Steady state costs nothing: once converged, reconciles triggered by events that change
//! nothing send no write request (the API server's request counters, and its audit log). Its own test binary (and control plane), because it counts
//! the API server's global request metrics.

mod common;

use std::time::Duration;

use common::{client, namespace, operator, seed_example, wait_for, write_requests};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;

fn no_change_lines() -> usize {
    let log = common::cluster()
        .dir
        .join(format!("operator-{}.log", std::process::id()));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("no change")
        .count()
}

#[tokio::test]
async fn converged_sets_cost_no_writes() {
    operator();
    let client = client().await;
    let ns = namespace(&client, "steady").await;
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<VecodexSet>(&()));
    let mut with_config = seed_example(&ns, "configured");
    with_config["spec"]["searcher"]["config"] = json!({"indexes": [{"name": "docs"}]});
    for v in [seed_example(&ns, "plain"), with_config] {
        sets.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap();
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let our_events = || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("vecodex-operator"))
            .map(|e| {
                (
                    e.metadata.name.unwrap_or_default(),
                    e.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    // Converged: status written for the current generation, and nothing moves for a while.
    wait_for("convergence", Duration::from_secs(60), || async {
        for name in ["plain", "configured"] {
            let set = serde_json::to_value(sets.get(name).await.ok()?).ok()?;
            if set["status"]["observedGeneration"] != set["metadata"]["generation"] {
                return None;
            }
        }
        let before = write_requests(&client).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        (write_requests(&client).await == before).then_some(())
    })
    .await;

    let writes_before = write_requests(&client).await;
    let events_before = our_events().await;
    let window_start = jiff::Timestamp::now();
    let no_change_before = no_change_lines();

    // Events that change nothing the operator manages: a label on each set, an annotation by
    // another manager on a child. Each triggers a reconcile.
    for name in ["plain", "configured"] {
        sets.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    }
    // (Not a Deployment annotation: that bumps the Deployment's generation, and the status
    // rightly reports Progressing until the deployment controller has observed it.)
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch(
            "plain-writer",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"someone-else": "x"}}})),
        )
        .await
        .unwrap();
    wait_for(
        "the operator to reconcile the touched sets",
        Duration::from_secs(30),
        || async { (no_change_lines() >= no_change_before + 3).then_some(()) },
    )
    .await;
    // Longer than a Lease renewal period (4 s), so the audit log shows the replica alive.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let window_end = jiff::Timestamp::now();
    let writes_after = write_requests(&client).await;
    let mut delta: Vec<String> = writes_after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - writes_before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{k}: {d}"))
        })
        .collect();
    delta.sort();
    // Exactly the test's own three patches, nothing from the operator.
    assert_eq!(
        delta,
        ["PATCH services: 1", "PATCH vecodexsets: 2"],
        "write requests during steady state"
    );
    assert_eq!(
        our_events().await,
        events_before,
        "no Event written at steady state"
    );
    // The witness: the API server's audit log holds no write from the operator in the
    // window, of any resource, Events included (its Lease client renews Leases meanwhile,
    // which is not reconciling).
    let records = common::audit::records();
    let ours: Vec<String> = records
        .iter()
        .filter(|r| r.replica().is_some() && !r.is_lease_traffic())
        .filter(|r| r.received >= window_start && r.received <= window_end)
        .map(|r| format!("{} {} {} ({})", r.verb, r.resource, r.key(), r.user_agent))
        .collect();
    assert!(
        ours.is_empty(),
        "the operator wrote at steady state: {ours:?}"
    );
    let leases = records
        .iter()
        .filter(|r| r.is_lease_traffic() && r.received >= window_start && r.received <= window_end)
        .count();
    assert!(
        leases > 0,
        "the audit log shows the replica alive in the window (its Lease renewals)"
    );
}
